"""The thin shell every service shares: settings, logging, bus, health app, clean shutdown.

A service is an ``async def body(ctx)`` that runs until ``ctx.stop`` is set.  Bad configuration exits at
start with status 2 and a message naming the setting; SIGTERM/SIGINT stop the service cleanly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared.bus import BusNotProvisioned, close, connect
from shared.config import ConfigError, Settings, load_settings
from shared.credentials import CredentialError
from shared.events import install_event_bridge
from shared.health import RUN_ID_ENV, HealthState, Routes, start_health_server, stop_health_server
from shared.logging import error, info, setup_logging


@dataclass
class ServiceContext:
    name: str
    settings: Settings
    logger: logging.Logger
    nc: NATS
    js: JetStreamContext
    health: HealthState
    stop: asyncio.Event


ServiceBody = Callable[[ServiceContext], Awaitable[None]]


async def warm_decision_kernels(ctx: ServiceContext) -> bool:
    """Compile the numba decision kernels before the service takes work; False if stopped meanwhile.

    A cold compile takes tens of seconds.  Run inside the event loop it would stall the health app and the
    NATS pings for that long (a supervisor would see a hung process), so it runs in a daemon thread while
    /readyz reports ``kernels: compiling``.  Daemon, so a SIGTERM during the compile is not held up by it.
    """
    from aura.warmup import compile_decision_kernels  # numba import only in the services that decide

    ctx.health.checks["kernels"] = lambda: (False, "compiling decision kernels")
    compiled: concurrent.futures.Future[float] = concurrent.futures.Future()

    def work() -> None:
        try:
            compiled.set_result(compile_decision_kernels())
        except BaseException as exc:  # reported on the loop, where the service decides what it means
            compiled.set_exception(exc)

    threading.Thread(target=work, name=f"{ctx.name}-kernel-warmup", daemon=True).start()
    done = asyncio.wrap_future(compiled)
    stopped = asyncio.create_task(ctx.stop.wait())
    await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not done.done():
        return False
    seconds = done.result()
    ctx.health.checks["kernels"] = lambda: (True, f"compiled in {seconds:.1f}s")
    info(ctx.logger, "BOOT", "decision kernels ready", seconds=round(seconds, 2))
    return True


async def _run(name: str, settings: Settings, body: ServiceBody, logger: logging.Logger, routes: Routes | None,
               events: bool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The run id lets `aura up` (and `aura status`) tell this process's answers from a stranger's on the port.
    health = HealthState(service=name, run_id=os.environ.get(RUN_ID_ENV, ""))
    server = await start_health_server(health, settings.health_host, settings.port_for(name), routes)
    info(logger, "BOOT", f"{name} health app listening", host=settings.health_host, port=settings.port_for(name))

    def on_bus(up: bool) -> None:
        health.bus_connected = up

    nc = await connect(settings, name, logger, on_bus)
    js = nc.jetstream()
    # Tagged log lines an operator should hear about become events for the console's alerts (shared/events.py).
    bridge = install_event_bridge(logger, js, name, health) if events else None
    ctx = ServiceContext(name, settings, logger, nc, js, health, stop)
    body_task = asyncio.create_task(body(ctx), name=f"{name}-body")
    stop_task = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({body_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if body_task in done and body_task.exception() is not None:
        exc = body_task.exception()
        if isinstance(exc, CredentialError | BusNotProvisioned | ConfigError):
            error(logger, "FATAL", f"{name} could not start: {exc}")  # a setup problem, said plainly
        else:
            error(logger, "FATAL", f"{name} stopped on an unexpected error", error=f"{type(exc).__name__}: {exc}")
        code = 1
    stop.set()
    if not body_task.done():
        try:
            await asyncio.wait_for(body_task, timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            body_task.cancel()
    stop_task.cancel()
    info(logger, "SHUTDOWN", f"{name} stopping")
    if bridge is not None:
        await bridge.drain()
        logger.removeHandler(bridge)
    # Every publish was already confirmed by a PubAck, so a flush and close lose nothing; drain() would
    # wait on the pull subscriptions' in-flight fetches and stall shutdown.
    await close(nc)
    await stop_health_server(server)
    return code


def run_service(name: str, body: ServiceBody, routes: Routes | None = None, events: bool = True) -> int:
    """Run ``body`` as service ``name``; ``routes`` adds pages to its health app (the console's dashboard);
    ``events=False`` for a principal that may not publish events (the console)."""
    try:
        # Only the executor sends orders, so only it refuses live mode without the operator's per-order cap
        # (compose gives that cap to the executor alone; `aura up` checks its whole environment first).
        settings = load_settings(places_orders=name == "executor")
    except ConfigError as exc:
        print(f"aura-{name}: configuration error: {exc}", file=sys.stderr)
        return 2
    logger = setup_logging(name, settings.log_level)
    info(logger, "BOOT", f"{name} starting", nats_url=settings.nats_url or "(run file)", home=str(settings.home_path))
    try:
        return asyncio.run(_run(name, settings, body, logger, routes, events))
    except KeyboardInterrupt:
        return 0
    except (OSError, RuntimeError, SystemExit, ConfigError, CredentialError) as exc:
        # Start-up failures (port taken, NATS unreachable, missing key) end with one clear line, not a loop.
        error(logger, "FATAL", f"{name} could not start: {exc}")
        return 1

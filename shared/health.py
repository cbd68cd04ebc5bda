"""Health app every service runs: /healthz (alive), /readyz (bus + own readiness), /metrics (Prometheus).

The app runs inside the service's own event loop (uvicorn.Server as a task), so a service that is stuck
stops answering /healthz too, which is what a supervisor needs to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse


@dataclass
class HealthState:
    service: str
    bus_connected: bool = False
    started_at: float = field(default_factory=time.time)
    # Extra readiness conditions: name -> callable returning (ok, detail).  No secrets in details.
    checks: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)

    def inc(self, name: str, by: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + by

    def set(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def readiness(self) -> tuple[bool, dict[str, str]]:
        detail = {"bus": "connected" if self.bus_connected else "disconnected"}
        ok = self.bus_connected
        for name, check in self.checks.items():
            try:
                passed, text = check()
            except Exception as exc:  # a broken check means not ready, never a 500
                passed, text = False, f"check failed: {type(exc).__name__}"
            detail[name] = text
            ok = ok and passed
        return ok, detail

    def prometheus(self) -> str:
        lines = [f'aura_up{{service="{self.service}"}} 1',
                 f'aura_uptime_seconds{{service="{self.service}"}} {time.time() - self.started_at:.3f}',
                 f'aura_bus_connected{{service="{self.service}"}} {int(self.bus_connected)}']
        for kind, values in (("counter", self.counters), ("gauge", self.gauges)):
            for name, value in sorted(values.items()):
                metric = f"aura_{name}"
                lines.append(f"# TYPE {metric} {kind}")
                lines.append(f'{metric}{{service="{self.service}"}} {value}')
        return "\n".join(lines) + "\n"


def build_app(state: HealthState) -> FastAPI:
    app = FastAPI(title=f"aura-{state.service}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        return {"service": state.service, "status": "alive", "uptime_s": round(time.time() - state.started_at, 3)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, detail = state.readiness()
        return JSONResponse({"service": state.service, "ready": ok, "checks": detail}, status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.prometheus(), media_type="text/plain; version=0.0.4")

    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the service (it owns SIGTERM/SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def start_health_server(state: HealthState, host: str, port: int) -> _EmbeddedServer:
    config = uvicorn.Config(build_app(state), host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    server = _EmbeddedServer(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:
            # uvicorn reports a failed bind with sys.exit() inside the task; make it one clear error.
            raise RuntimeError(f"health server for {state.service} could not bind {host}:{port} "
                               f"(setting {state.service}_port / health_host)") from None

    task = asyncio.create_task(serve(), name=f"health-{state.service}")
    while not server.started:
        if task.done():
            raise task.exception() or RuntimeError("health server stopped")
        await asyncio.sleep(0.01)
    server._aura_task = task  # type: ignore[attr-defined]
    return server


async def stop_health_server(server: _EmbeddedServer) -> None:
    server.should_exit = True
    task = getattr(server, "_aura_task", None)
    if task is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)

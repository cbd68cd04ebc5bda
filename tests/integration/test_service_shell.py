"""The process shell every service shares: clean SIGTERM, clear start-up failures."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aura.natsd import free_port
from shared.config import load_settings
from shared.credentials import ensure_credentials
from tests.conftest import NatsEndpoint

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | extra


def test_sigterm_stops_a_consuming_service_promptly(nats_server: NatsEndpoint) -> None:
    port = free_port()
    # The bus's own AURA_HOME (signal's credential and pinned keys) and URL; the health port we poll.
    proc = subprocess.Popen([sys.executable, "-m", "services.signal"], stderr=subprocess.PIPE, text=True,
                            env=_env(**nats_server.env(AURA_SIGNAL_PORT=str(port))))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("signal never became ready")
        proc.send_signal(signal.SIGTERM)
        # A supervisor's grace period is ~10-20 s; a consuming service must not need it.
        assert proc.wait(timeout=8) == 0
        assert "[SHUTDOWN]" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_taken_health_port_is_one_clear_fatal_line(tmp_path: Path) -> None:
    """The failure under test is the health port: the optimizer has its credentials (so a missing key cannot
    be what stops it) and no bus is reachable (it must stop on the port before it ever tries one)."""
    home = tmp_path / "home"
    ensure_credentials(load_settings({"AURA_HOME": str(home)}).keys)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "services.optimizer"], capture_output=True, text=True,
                              timeout=60, env=_env(AURA_OPTIMIZER_PORT=str(port), AURA_HOME=str(home),
                                                   AURA_NATS_URL="nats://127.0.0.1:1"))
    assert proc.returncode == 1
    fatal = [line for line in proc.stderr.splitlines() if "[FATAL]" in line]
    assert len(fatal) == 1 and "optimizer_port" in fatal[0] and str(port) in fatal[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "credential" not in proc.stderr and "could not connect" not in proc.stderr, proc.stderr

"""`aura up` beside other systems: whose answer on a health port counts as its service's.

An audit saw a second `aura up` print "all 6 processes ready" with the URLs of the FIRST system (another
AURA_HOME) on the default ports, then die on the optimizer's bind: any 200 on the port was taken for readiness.
Here a stranger answers 200 on the ports (tests/fake_occupant.py); the launcher must take readiness only from
the children it started.  Real processes throughout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aura.launcher import Stack, wait_ready
from aura.natsd import free_port
from shared.config import SERVICE_NAMES, load_settings
from tests.fake_occupant import occupants

pytestmark = pytest.mark.integration


def test_wait_ready_takes_no_answer_from_a_process_it_did_not_start(tmp_path: Path) -> None:
    """Children that are alive but never serve, and a stranger answering 200 on each of their ports: not ready."""
    ports = {name: free_port() for name in SERVICE_NAMES}
    env = {"AURA_HOME": str(tmp_path / "home")} | {f"AURA_{n.upper()}_PORT": str(p) for n, p in ports.items()}
    stack = Stack(load_settings(env), env, tmp_path)
    with occupants(ports) as fakes:
        for name in SERVICE_NAMES:
            stack.procs[name] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            with pytest.raises(RuntimeError, match="another process") as raised:
                wait_ready(stack, timeout_s=3)
        finally:
            stack.stop()
        asked = {n: f.requests for n, f in fakes.items()}
    assert all(asked.values()), f"every stranger was asked (and not believed): {asked}"
    assert str(ports["optimizer"]) in str(raised.value)

"""`aura up` keeps a system running that says it waits for the operator.

Children that are up and answer their own /readyz with 503 and the reason (an empty journal beside coins waiting
for `aura journal adopt`, no parameter version that verifies, an order only `aura journal settle` can close) used
to make the launcher give up after its readiness wait and stop everything, the bus included, while the command
that clears the state needs that bus.  Now the launcher says which service waits for what and keeps running; a
child that never answers, or a stranger on its port, still fails the start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aura.launcher import Stack, wait_ready
from shared.config import SERVICE_NAMES, load_settings
from tests.fake_occupant import free_ports

# A child answering /readyz as the launcher's own process (its service, pid and run id), not ready, with a reason.
CHILD = """
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
name, port, run_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
class Readyz(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"service": name, "ready": False, "pid": os.getpid(), "run_id": run_id,
                           "checks": {"bus": "connected", "books": "halted: run `aura journal adopt`"}}).encode()
        self.send_response(503); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", port), Readyz).serve_forever()
"""


def test_services_up_and_waiting_for_the_operator_end_the_wait_without_an_error(tmp_path: Path) -> None:
    ports = free_ports(SERVICE_NAMES)
    env = {"AURA_HOME": str(tmp_path / "home")} | {f"AURA_{n.upper()}_PORT": str(p) for n, p in ports.items()}
    stack = Stack(load_settings(env), env, tmp_path)
    for name in SERVICE_NAMES:
        stack.procs[name] = subprocess.Popen([sys.executable, "-c", CHILD, name, str(ports[name]), stack.run_id])
    try:
        with pytest.raises(RuntimeError, match="not ready after"):
            wait_ready(stack, timeout_s=3)  # strict (the tests' own wait): not ready is an error
        not_ready: dict[str, dict[str, str]] = {}
        wait_ready(stack, timeout_s=3, not_ready=not_ready)  # aura up's: says what they wait for, and runs on
        assert not stack.dead()
    finally:
        stack.stop()
    assert sorted(not_ready) == sorted(SERVICE_NAMES), json.dumps(not_ready)
    assert all(checks["books"].endswith("run `aura journal adopt`") for checks in not_ready.values())


def test_children_that_never_answer_still_fail_the_start(tmp_path: Path) -> None:
    ports = free_ports(SERVICE_NAMES)
    env = {"AURA_HOME": str(tmp_path / "home")} | {f"AURA_{n.upper()}_PORT": str(p) for n, p in ports.items()}
    stack = Stack(load_settings(env), env, tmp_path)
    for name in SERVICE_NAMES:
        stack.procs[name] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(RuntimeError, match="not ready after"):
            wait_ready(stack, timeout_s=2, not_ready={})
    finally:
        stack.stop()

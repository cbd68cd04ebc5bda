"""`aura up` beside other systems: its health and console ports, and whose answer counts as its service's.

An audit saw a second `aura up` print "all 6 processes ready" with the URLs of the FIRST system (another
AURA_HOME) on the default ports, then die on the optimizer's bind.  Here a stranger answers 200 on the default
ports (tests/fake_occupant.py): the launcher must move to free ports, say so, record them in the run file, and
take readiness only from the children it started.  Real processes throughout; the embedded bus never goes to
4222 (someone else's server may live there).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aura.launcher import Stack, wait_ready
from shared.config import DEFAULT_HEALTH_PORTS, SERVICE_NAMES, load_settings
from tests.e2e.test_system import AURA_CLI, REPO, stack_env
from tests.fake_occupant import free_ports, occupants

pytestmark = pytest.mark.integration


def default_port_env(home: Path) -> dict[str, str]:
    """`aura up`'s environment with no health port set: every service starts from its default port."""
    return {k: v for k, v in stack_env(home).items() if not k.endswith("_PORT")}


def console_sees_its_peers(console: str, timeout: float = 60.0) -> dict[str, object]:
    """The console's view of the other services, once it has polled them all (it finds them on the ports the
    launcher gave it, not on the defaults)."""
    deadline = time.monotonic() + timeout
    services: dict[str, object] = {}
    while time.monotonic() < deadline:
        services = httpx.get(f"{console}api/state", timeout=5).json().get("services", {})
        if len(services) == len(SERVICE_NAMES) - 1 and all(s["ready"] for s in services.values()):  # type: ignore[index]
            break
        time.sleep(0.5)
    return services


def stop_launcher(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C first: a killed launcher cannot stop its children (the bus, the services: own sessions)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_stranger_on_the_default_ports_is_never_taken_for_the_system(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with occupants(DEFAULT_HEALTH_PORTS) as fakes:
        proc = subprocess.Popen([*AURA_CLI, "up", "--replay-interval", "0.2"], env=default_port_env(home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            run: dict[str, Any] = {}
            answers: dict[str, dict[str, Any]] = {}
            peers: dict[str, object] = {}
            for line in proc.stdout:
                lines.append(line)
                if "processes ready" in line:  # while the system runs: its run file and who answers there
                    run = json.loads((home / "run.json").read_text())
                    answers = {n: httpx.get(url, timeout=5).json() for n, url in run["health"].items()}
                    peers = console_sees_its_peers(run["health"]["console"].removesuffix("readyz"))
                    proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=60)
        finally:
            stop_launcher(proc)
        out = "".join(lines) + rest
        asked = {n: f.requests for n, f in fakes.items()}
    assert proc.returncode == 0 and "processes ready" in out, out + err
    # Every default port was held (by a fake, or by whoever held it before): none of the URLs printed or
    # recorded is one of them, and the launcher said which ports it moved.
    for name, port in DEFAULT_HEALTH_PORTS.items():
        assert f"127.0.0.1:{port}/" not in out, f"{name}'s taken default port {port} printed as the system's:\n{out}"
        assert f"{name}'s default port {port} is taken" in out, out
        assert f":{port}/" not in run["health"][name]
    assert set(answers) == set(SERVICE_NAMES), out
    for name, answer in answers.items():
        assert answer["service"] == name and answer["run_id"] == run["run_id"], (name, answer)
    assert f"console: {run['health']['console'].removesuffix('readyz')} " in out, out
    assert all(p["ready"] for p in peers.values()) and len(peers) == len(SERVICE_NAMES) - 1, peers  # type: ignore[index]
    assert asked == dict.fromkeys(asked, 0), f"the launcher (or its console) asked the strangers: {asked}"


def test_wait_ready_takes_no_answer_from_a_process_it_did_not_start(tmp_path: Path) -> None:
    """Children that are alive but never serve, and a stranger answering 200 on each of their ports: not ready."""
    ports = free_ports(SERVICE_NAMES)
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


def test_a_taken_explicitly_set_port_stops_aura_up_in_one_line(tmp_path: Path) -> None:
    """A port the operator set is a promise (a firewall rule, a scrape target): taken, it is an error, not moved."""
    home = tmp_path / "home"
    env = stack_env(home)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env["AURA_OPTIMIZER_PORT"] = str(port)
        proc = subprocess.run([*AURA_CLI, "up", "--cycles", "1"], env=env, capture_output=True, text=True,
                              timeout=120, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(port) in lines[0] and "AURA_OPTIMIZER_PORT" in lines[0] and "optimizer" in lines[0], lines[0]
    # Refused before anything started: no bus, no service, no run file.
    assert "embedded nats-server" not in proc.stdout, proc.stdout
    assert not (home / "run.json").exists()
    assert not any((home / "logs" / f"{name}.log").exists() for name in SERVICE_NAMES)

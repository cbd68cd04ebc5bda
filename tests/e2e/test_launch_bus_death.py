"""`aura up` notices that its own embedded nats-server died, as it notices a service that died.

An audit killed the bus under a running `aura up`: the launcher watched only the service processes, printed
nothing, and `aura up --cycles N` would have waited for ever for cycles no service could run any more.  Here the
real command (tests/e2e/test_system.py's AURA_CLI: the embedded bus on a free port, never 4222) runs a system;
the test kills that system's nats-server (the child of the launcher it started, found by its config file under
this test's home) and expects one clear line naming the server's log, every process stopped, a non-zero exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from shared.config import SERVICE_NAMES
from tests.e2e.test_launch_ports import stop_launcher
from tests.e2e.test_system import AURA_CLI, REPO, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def children(parent: int) -> dict[int, str]:
    """pid -> command line of each process whose parent is ``parent`` (Linux /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # after "pid (comm) state": ppid
        if ppid == parent:
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_aura_up_reports_its_dead_bus_and_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = stack_env(home)
    # More cycles than the replay holds: without noticing the dead bus the launcher would wait for ever.
    proc = subprocess.Popen([*AURA_CLI, "up", "--cycles", "100000", "--replay-interval", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    started: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "processes ready" in line or "processes up" in line:
                break
        else:
            raise AssertionError(f"aura up ended before it was ready: {proc.communicate(timeout=30)}")
        started = children(proc.pid)
        conf = str(home.resolve() / "bus" / "nats.conf")
        bus = [pid for pid, cmd in started.items() if "nats-server" in cmd and conf in cmd]
        services = [pid for pid, cmd in started.items() if "-m services." in cmd]
        assert len(bus) == 1 and len(services) == len(SERVICE_NAMES), started
        os.kill(bus[0], signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("aura up did not notice that its nats-server died") from None
    finally:
        stop_launcher(proc)
        for pid in started:  # whatever the launcher left behind (own sessions): only the processes it started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, out + err
    log = home.resolve() / "logs" / "nats-server.log"
    said = [line for line in err.splitlines() if "nats-server" in line]
    assert said and "exited" in said[0] and str(log) in said[0], err
    assert "all processes stopped" in out, out
    assert not [pid for pid in started if alive(pid)], "processes left running after the bus died"
    assert not (home / "run.json").exists(), "the run file of a stopped system stays behind"

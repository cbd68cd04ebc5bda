"""`aura up`: the whole system on one machine (embedded nats-server + the five services and the console).

Start-up order: take the AURA_HOME lock (one `aura up` per home), choose the health ports (a taken default moves
to a free port, a taken port someone set stops here: aura/ports.py), create missing keys and bus credentials,
start the authenticated nats-server (unless AURA_NATS_URL names one), provision streams, buckets and durable
consumers with the admin credential, write the run file the CLI finds the system by, then the services.

Another system may run on this machine (another AURA_HOME, a rehearsal), and anything may answer on a port: a
child counts as ready only when the answer on its port names it, its pid and this run's id (``wait_ready``).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from aura.natsd import NatsServer, free_port, port_is_free, start_bus
from aura.ports import PortTaken, choose_ports
from services.executor.secrets import CREDENTIAL_ENV
from shared.bus import BusUnavailable, session
from shared.config import SERVICE_NAMES, ConfigError, Settings, load_settings, setting_sources
from shared.contracts import ConsumerSpec
from shared.credentials import CredentialError, ensure_credentials
from shared.health import RUN_ID_ENV, not_ours
from shared.provision import provision_bus
from shared.read_only import connect_read_only
from shared.runfile import HomeLocked, RunInfo, acquire_home, clear_run, write_run

# The embedded bus's name wherever the launcher names a dead child (its log is logs/nats-server.log).
BUS_NAME = "nats-server"


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    logs: Path
    lock: IO[str] | None = None
    nats: NatsServer | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Handed to every child (RUN_ID_ENV), which names it in its health answers: how wait_ready and `aura status`
    # tell this run's processes from anything else on their ports.  Random per launch, so no other run has it.
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))

    def dead(self) -> list[tuple[str, int]]:
        """(name, exit status) of each child that exited.  The embedded nats-server is a child like the services
        (BUS_NAME): without it no service can do anything, so its death ends the run as theirs does, and it comes
        first, being what the services then fail on."""
        bus = self.nats.process if self.nats is not None else None
        dead_bus = [(BUS_NAME, bus.returncode)] if bus is not None and bus.poll() is not None else []
        return dead_bus + [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.nats is not None:
            self.nats.stop()
        if self.lock is not None:
            clear_run(self.settings.home_path)
            self.lock.close()
            self.lock = None


def _say(msg: str) -> None:
    print(f"[aura] {msg}", flush=True)


def health_url(settings: Settings, name: str, path: str = "/readyz") -> str:
    return f"http://{settings.health_host}:{settings.port_for(name)}{path}"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """The environment one service process gets: exchange credentials reach the executor and nobody else."""
    if name == "executor":
        return dict(env)
    return {k: v for k, v in env.items() if k not in CREDENTIAL_ENV}


async def _provision(settings: Settings, consumers: Mapping[str, ConsumerSpec] | None = None) -> None:
    async with session(settings, "admin", timeout_s=5) as nc:
        await provision_bus(nc.jetstream(), settings.dedup_window_s, consumers=consumers)


def start_stack(settings: Settings, env: dict[str, str], consumers: Mapping[str, ConsumerSpec] | None = None,
                stop: Callable[[], bool] = lambda: False) -> Stack:
    """Start everything; raises HomeLocked, CredentialError, BusUnavailable or RuntimeError with one clear line.
    ``consumers``: durable consumer settings instead of the product's (the rehearsal lab's shorter ack wait).
    ``stop()`` is asked between steps: Interrupted (what was started is stopped) as soon as it says so, so that a
    Ctrl-C while the bus starts does not go on to launch every service first (found by an audit)."""

    def step() -> None:
        if stop():
            raise Interrupted
    home = settings.home_path
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, env, logs, lock=acquire_home(home))
    try:
        ports, moved = choose_ports(settings, setting_sources(env))
        for line in moved:
            _say(line)
        # The children (and the console, which polls its peers) read the ports they got from the environment.
        env.update({f"AURA_{name.upper()}_PORT": str(port) for name, port in ports.items()})
        env[RUN_ID_ENV] = stack.run_id
        created = ensure_credentials(settings.keys)
        if created:
            _say(f"created {len(created)} keys and bus credentials under {settings.keys.root}")
        if not settings.nats_url:
            port = 4222
            if not port_is_free(port):
                port = free_port()
                while port in ports.values():  # handed to a health app that has not bound it yet
                    port = free_port()
                _say(f"port 4222 is taken; starting the embedded nats-server on free port {port} instead")
            step()
            stack.nats = start_bus(settings, port)
            env["AURA_NATS_URL"] = stack.nats.url
            _say(f"embedded nats-server (JetStream, NKey auth, store {home / 'nats'}) at {stack.nats.url}")
        else:
            env["AURA_NATS_URL"] = settings.nats_url
            _say(f"using the NATS server at {settings.nats_url} (it must admit the NKeys in "
                 f"{settings.keys.bus_users})")
        step()
        settings = stack.settings = load_settings(env)
        asyncio.run(_provision(settings, consumers))
        step()
        write_run(home, RunInfo(env["AURA_NATS_URL"], os.getpid(), {n: health_url(settings, n) for n in SERVICE_NAMES},
                                int(time.time() * 1000), stack.run_id))
        for name in SERVICE_NAMES:
            step()
            start_service(stack, name)
    except BaseException:
        stack.stop()
        raise
    return stack


def start_service(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    """Start (or restart, after it died) one service process of ``stack``, appending to its log."""
    # Each child holds the home's lock too (the same open file, so the same flock): should `aura up` die by kill -9
    # and its services outlive it (they run in sessions of their own), a second `aura up` on this home is refused
    # while any of them runs, instead of starting a second executor on the same journal and account.
    held = (stack.lock.fileno(),) if stack.lock is not None else ()
    with open(stack.logs / f"{name}.log", "ab") as log:
        stack.procs[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"],
                                             env=service_env(name, stack.env), stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True, pass_fds=held)
    return stack.procs[name]


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) while the system was starting."""


def wait_ready(stack: Stack, timeout_s: float = 60.0, stop: Callable[[], bool] = lambda: False,
               not_ready: dict[str, dict[str, str]] | None = None) -> float:
    """Seconds until every child's /readyz answered 200; raises RuntimeError if a service died or time ran out, and
    Interrupted as soon as ``stop()`` says so (a Ctrl-C during start must not wait for readiness).

    Only the child itself counts: the answer must name its service, its pid and this run's id.  Anything else on
    the port (another system's service, whatever took it) is never ready, and named if the wait fails.

    ``not_ready`` (a dict to fill): when time runs out with every service still pending up and answering, its own
    503 naming what it waits for, those answers are put there and the wait ends without an error.  A running
    system that says it waits for the operator (an adoption, a signed parameter version, an order to settle) must
    stay up: the command that clears it needs the bus this launcher would otherwise take down."""
    t0 = time.monotonic()
    pending = set(SERVICE_NAMES)
    strangers: dict[str, str] = {}  # service -> who answered on its port instead
    answered: dict[str, dict[str, str]] = {}  # service -> its last not-ready answer (checks and their texts)
    with httpx.Client(timeout=1.0) as client:
        while pending:
            if stop():
                raise Interrupted
            if stack.dead():
                raise RuntimeError(_death_report(stack) + _strangers(strangers))
            if time.monotonic() - t0 > timeout_s:
                if not_ready is not None and pending <= set(answered):
                    not_ready.update({name: answered[name] for name in sorted(pending)})
                    break
                raise RuntimeError(f"services not ready after {timeout_s:.0f}s: {sorted(pending)}"
                                   + _strangers(strangers))
            for name in sorted(pending):
                url = health_url(stack.settings, name)
                try:
                    answer = client.get(url)
                except httpx.HTTPError:
                    continue
                try:
                    body: object = answer.json()
                except ValueError:
                    body = None
                who = not_ours(body, name, stack.run_id, stack.procs[name].pid)
                if who:
                    strangers[name] = f"{url} answered by {who}"
                    continue
                strangers.pop(name, None)
                if answer.status_code == 200:
                    pending.discard(name)
                elif isinstance(body, dict) and isinstance(body.get("checks"), dict):
                    answered[name] = {str(k): str(v) for k, v in body["checks"].items()}
            time.sleep(0.1)
    return time.monotonic() - t0


def _strangers(strangers: dict[str, str]) -> str:
    return "".join(f"\n{name}: {text}, not by the process this launcher started" for name, text in strangers.items())


def _status(code: int) -> str:
    """An exit status as a person reads it: a negative one is the signal that killed the process."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"status {code} (killed by {signal.Signals(-code).name})"
    except ValueError:
        return f"status {code}"


def _death_report(stack: Stack) -> str:
    parts = []
    for name, code in stack.dead():
        if name == BUS_NAME and stack.nats is not None:
            log = stack.nats.log_path
            parts.append(f"the embedded {BUS_NAME} (the bus) exited with {_status(code)}; no service can run "
                         f"without it, stopping them; last log lines ({log}):\n{tail(log)}")
            continue
        parts.append(f"service {name} exited with {_status(code)}; last log lines "
                     f"({stack.logs / (name + '.log')}):\n{tail(stack.logs / f'{name}.log')}")
    return "\n".join(parts)


def committed_cycles(journal: Path, after_seq: int) -> list[tuple[int, str, str, float]]:
    """(seq, cycle_id, status, equity) of snapshots journaled after ``after_seq``; read-only access."""
    if not journal.exists():
        return []
    try:
        db = connect_read_only(journal, timeout=1)
        try:
            return db.execute("SELECT seq, cycle_id, status, equity FROM snapshots WHERE seq > ? AND status != "
                              "'genesis' ORDER BY seq", (after_seq,)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []


def last_seq(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        db = connect_read_only(journal, timeout=1)
        try:
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM snapshots").fetchone()
            return int(row[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def up(cycles: int | None = None, replay_interval_s: float | None = None, ready_timeout_s: float = 60.0, *,
       env: dict[str, str] | None = None, on_cycle: Callable[[int, str], None] | None = None,
       prog: str = "aura up") -> int:
    """Run the system until Ctrl-C (or ``cycles`` journaled cycles); ``env`` instead of os.environ, and
    ``on_cycle(n, cycle_id)`` once the n-th cycle of this run ended in the journal (`aura rehearse` uses both)."""
    env = dict(os.environ if env is None else env)
    if replay_interval_s is not None:
        env["AURA_REPLAY_INTERVAL_S"] = str(replay_interval_s)
    try:
        settings = load_settings(env)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    env["AURA_HOME"] = str(settings.home_path)
    stop_requested = {"flag": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        stack = start_stack(settings, env, stop=lambda: stop_requested["flag"])
    except Interrupted:  # start_stack stopped what it had started
        _say("stopping (interrupted while starting)")
        _say("all processes stopped")
        return 130
    except (HomeLocked, PortTaken, CredentialError, BusUnavailable, ConfigError, RuntimeError, TimeoutError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    settings = stack.settings  # with the ports the processes actually got
    journal = settings.journal_path
    start_seq = last_seq(journal)
    try:
        try:
            not_ready: dict[str, dict[str, str]] = {}
            ready_s = wait_ready(stack, ready_timeout_s, stop=lambda: stop_requested["flag"], not_ready=not_ready)
        except Interrupted:
            _say("stopping (interrupted while starting)")
            return 130
        except RuntimeError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        if not_ready:
            for name, checks in not_ready.items():
                waits = "; ".join(f"{k}: {v}" for k, v in checks.items() if k != "bus" or v != "connected")
                _say(f"WARNING {name} is running but NOT READY after {ready_timeout_s:.0f}s: {waits[:600]}")
            _say("the system keeps running so that you can act on what they say (aura journal adopt, aura params "
                 "set, aura journal settle, ...); /readyz stays red until then")
        _say(f"all {len(SERVICE_NAMES)} processes {'up' if not_ready else 'ready'} in {time.monotonic() - t0:.2f}s "
             f"(readiness wait {ready_s:.2f}s)")
        for name in SERVICE_NAMES:
            _say(f"  {name:<9} {health_url(settings, name)}  log {stack.logs}/{name}.log")
        _say(f"journal: {journal}  (sqlite3 {journal} 'select * from snapshots order by seq desc limit 5')")
        _say(f"console: {health_url(settings, 'console', '/')}  (read-only dashboard)")
        _say("press Ctrl-C to stop" if cycles is None else f"running until {cycles} cycles end in the journal")
        seen = start_seq
        done = 0
        while not stop_requested["flag"]:
            if stack.dead():
                print(f"{prog}: {_death_report(stack)}", file=sys.stderr)
                return 1
            for seq, cycle_id, status, equity in committed_cycles(journal, seen):
                seen = seq
                done += 1
                _say(f"cycle {cycle_id} {status:<9} equity {equity:,.2f} USDT  ({done} this run)")
                if on_cycle is not None:
                    on_cycle(done, cycle_id)
            if cycles is not None and done >= cycles:
                _say(f"{done} cycles ended in the journal; shutting down")
                return 0
            time.sleep(0.2)
        _say("stopping")
        return 0
    finally:
        stack.stop()
        _say("all processes stopped")

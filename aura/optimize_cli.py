"""`aura optimize`: the walk-forward optimizer (issue 10) on its own bus with local workers, or on a system's bus.

    aura optimize --data DIR --timeframe 1d --out DIR [--workers N] [--grids FILE] [--promote]

Where the work runs.  By default (embedded) on its own nats-server (aura/natsd.py) on a free port, with its own
keys under ``--state`` (default ``$AURA_HOME/optimize``), provisioned by its own operator, and N local worker
processes (``python -m services.optimizer.worker``, default one per core).  With ``--nats-url URL`` (or
``AURA_NATS_URL``) on a running system's bus instead: the coordinator authenticates as that system's optimizer
and any local workers as its worker, with the keys under AURA_HOME; ``--workers`` then defaults to 0 (the system's
own workers, e.g. ``docker compose up --scale optimizer-worker=N``).  Answers are kept in ``--state``'s result
store: running the same command again after a crash resumes where it stopped.

Promotion, decided here: never without ``--promote``.  With it, the incumbent is the live parameter version of
the system that AURA_NATS_URL or AURA_HOME's run file names (read before the search: the gate judges the winner
against it), and if the gate says yes the winner is signed with that system's optimizer key and written to its
``aura_params`` with the gate's record (services/optimizer/promote.py); if the live version changed during the
run, nothing is written.  Without ``--promote`` the incumbent is the shipped default set and no system is touched.

Outputs in ``--out``: decision.json, trials.parquet, report.html, byte-identical for identical inputs (the number of
workers, the bus and a resumed run change nothing).  The exit status is 0 for either verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aura.optimize.gate import GateSettings
from shared.config import ConfigError, Settings, load_settings, settings_for_command

PROG = "aura optimize"


def add_optimize_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "optimize", help="walk-forward optimisation: staged grids, successive halving, the promotion gate",
        description="Chooses parameters on each fold's training bars only, judges them on its validation window "
                    "against gold and SPY, and promotes (with --promote) only what passes every test.")
    p.add_argument("--data", required=True, type=Path, help="data folder (binance/TF/SYMBOL.parquet, benchmarks/1d)")
    p.add_argument("--timeframe", default="1d", choices=("1d", "4h", "1h"), help="candles to use (default 1d)")
    p.add_argument("--out", required=True, type=Path, help="where decision.json, trials.parquet, report.html go")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per core; 0 with --nats-url: the bus's own workers)")
    p.add_argument("--grids", type=Path, default=None, help="grid file (default: the shipped aura/optimize/grids.toml)")
    p.add_argument("--symbols", default=None, help="comma-separated subset of the folder's symbols")
    p.add_argument("--folds", type=int, default=None, help="use only the newest N walk-forward folds")
    p.add_argument("--anchored", action="store_true", help="anchored folds (training grows) instead of rolling")
    p.add_argument("--refit", action="store_true",
                   help="what would go live is chosen once more on the newest training window (trained on the "
                        "newest bars too, but judged by no window it never saw) instead of the newest fold's winner "
                        "(validated on the newest bars)")
    p.add_argument("--eta", type=int, default=3, help="successive halving keeps the best 1/ETA per rung (default 3)")
    p.add_argument("--min-budget", type=int, default=None,
                   help="smallest training history in bars (default: the timeframe's; the training length = the "
                        "full grid, no halving)")
    p.add_argument("--spa-reps", type=int, default=2000, help="bootstrap replications of the SPA test")
    gate = GateSettings()
    p.add_argument("--dsr-min", type=float, default=gate.dsr_min,
                   help=f"the gate's smallest Deflated Sharpe Ratio, in [0, 1] (default {gate.dsr_min})")
    p.add_argument("--pbo-max", type=float, default=gate.pbo_max,
                   help=f"the gate's largest probability of backtest overfitting, in [0, 1] (default {gate.pbo_max})")
    p.add_argument("--spa-alpha", type=float, default=gate.spa_alpha,
                   help=f"the gate's largest SPA p-value against each benchmark, in [0, 1] (default {gate.spa_alpha})")
    p.add_argument("--state", type=Path, default=None,
                   help="result store and embedded bus (default $AURA_HOME/optimize)")
    p.add_argument("--nats-url", default=None, help="work on this running system's bus (default: AURA_NATS_URL, "
                                                    "else an embedded bus)")
    p.add_argument("--promote", action="store_true",
                   help="if the gate says yes, write the winner to the system's live parameters (see above)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=run_optimize_command)


# --- the work bus: embedded or a system's -------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM when `aura optimize` dies, even by kill -9 (Linux), so no worker
    outlives the run it served."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_stale_server(pid_file: Path) -> None:
    """A previous `aura optimize` killed with -9 leaves its embedded nats-server running (it has its own session):
    stop it before its store is reused."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"nats-server" in cmdline and str(pid_file.parent).encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)


@contextlib.contextmanager
def embedded_bus(home: Path) -> Iterator[Settings]:
    """An own authenticated, provisioned nats-server for one run; its JetStream store starts empty (the answers
    live in the result store, not on the bus)."""
    from aura.natsd import free_port, start_bus
    from shared.bus import session
    from shared.credentials import ensure_credentials
    from shared.provision import provision_bus

    home.mkdir(parents=True, exist_ok=True)
    pid_file = home / "nats.pid"
    _stop_stale_server(pid_file)
    shutil.rmtree(home / "nats", ignore_errors=True)
    base = load_settings({"AURA_HOME": str(home)})
    ensure_credentials(base.keys)
    server = start_bus(base, free_port())
    pid_file.write_text(str(server.process.pid))
    try:
        settings = load_settings({"AURA_HOME": str(home), "AURA_NATS_URL": server.url})

        async def provision() -> None:
            async with session(settings, "admin", timeout_s=5) as nc:
                await provision_bus(nc.jetstream(), settings.dedup_window_s)

        asyncio.run(provision())
        yield settings
    finally:
        server.stop()
        pid_file.unlink(missing_ok=True)


@dataclass
class LocalWorker:
    proc: subprocess.Popen[bytes]
    port: int  # its health app: /readyz is 200 once its kernels are ready

    def poll(self) -> int | None:
        return self.proc.poll()


def start_workers(n: int, settings: Settings, logs: Path) -> list[LocalWorker]:
    """N local worker processes on ``settings``'s bus, with its keys; each its own free health port and log."""
    from aura.natsd import free_port
    from services.executor.secrets import CREDENTIAL_ENV

    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_ENV and not k.startswith("AURA_")}
    env.update({"AURA_HOME": str(settings.home_path), "AURA_NATS_URL": settings.nats_url,
                "AURA_KEYS_DIR": str(settings.keys.root), "AURA_LOG_LEVEL": "WARNING"})
    procs = []
    for i in range(n):
        port = free_port()
        with open(logs / f"worker-{i}.log", "ab") as log:
            procs.append(LocalWorker(subprocess.Popen(
                [sys.executable, "-m", "services.optimizer.worker"], env=env | {"AURA_WORKER_PORT": str(port)},
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent), port))
    return procs


def stop_workers(workers: list[LocalWorker]) -> None:
    procs = [w.proc for w in workers]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the command --------------------------------------------------------------------------------------------------


def run_optimize_command(args: argparse.Namespace) -> int:
    settings = settings_for_command(PROG)
    if settings is None:
        return 2
    if args.workers is not None and args.workers < 0:
        print(f"{PROG}: --workers must be 0 or more", file=sys.stderr)
        return 2
    from aura.optimize.grids import GridError
    from aura.optimize_job import RunFailedError, prepare_job

    try:
        job = prepare_job(args)
    except (FileNotFoundError, ValueError, GridError, ConfigError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    system_url = args.nats_url or settings.nats_url
    if not system_url and args.workers == 0:
        # The embedded bus has no workers but the local ones: with none, the run would wait forever.
        print(f"{PROG}: --workers 0 starts no worker: give --nats-url of a bus whose workers take the tasks, or "
              "leave --workers out (one local worker per core)", file=sys.stderr)
        return 2
    state = (args.state or settings.home_path / "optimize").resolve()
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "run.lock", "a+") as lock:
        try:
            # One run per state directory: a second one would stop the first one's embedded bus and wipe its store.
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{PROG}: another aura optimize is running on the state directory {state}; wait for it or give "
                  "this one its own --state", file=sys.stderr)
            return 2
        try:
            return _run(job, args, settings, system_url, state)
        except RunFailedError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        except GridError as exc:  # a stage with no valid combination on the winner before it: found mid-run
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1


def _run(job: Any, args: argparse.Namespace, settings: Settings, system_url: str, state: Path) -> int:
    from aura import optimize_job as session

    say = session.Say(args.quiet)
    incumbent_version = 0
    if args.promote:
        try:
            job.incumbent, incumbent_version = session.read_incumbent(settings, system_url, job.inputs.timeframe)
        except Exception as exc:
            print(f"{PROG}: --promote needs the running system's parameters: {exc}", file=sys.stderr)
            return 1
        say(f"incumbent: the system's live parameter version {incumbent_version}")
    logger = session.file_logger(state / "logs" / "coordinator.log")
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        if system_url:
            bus = session.system_settings(settings, system_url)
            n = 0 if args.workers is None else args.workers
            say(f"working on the bus at {system_url} with {n} local workers (plus the bus's own)")
        else:
            bus = stack.enter_context(embedded_bus(state / "bus"))
            n = (os.cpu_count() or 1) if args.workers is None else args.workers
            say(f"embedded bus at {bus.nats_url}; {n} local workers; state {state}")
        procs = start_workers(n, bus, state / "logs") if n else []
        stack.callback(stop_workers, procs)
        record = session.coordinate(job, bus, state / "results.sqlite", logger, say, procs)
    digests = session.write(record, args.out)
    seconds = time.monotonic() - t0
    counts = record_counts(record)
    say(f"{counts} in {seconds:.1f}s", always=True)
    say(record.decision.summary(), always=True)
    say(f"wrote {args.out}/decision.json, trials.parquet, report.html (decision sha256 "
        f"{digests['decision.json'][:16]})")
    if args.promote:
        return session.promote(record, digests, settings, system_url, incumbent_version, say)
    return 0


def record_counts(record: Any) -> str:
    t = record.decision.n_trials
    final = "" if record.run.live_label.startswith("fold") else " + the final selection (--refit)"
    return (f"{len(record.run.folds)} folds{final}, {record.run.evaluations()} evaluations, "
            f"{t} trials counted (pruned included)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura")
    sub = parser.add_subparsers(dest="command", required=True)
    add_optimize_parser(sub)
    args = parser.parse_args(argv)
    logging.getLogger("nats").setLevel(logging.CRITICAL)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

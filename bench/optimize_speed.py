"""Walk-forward optimizer speed: the full four-stage run on the daily symbols, with 1 and 2 workers, against the
full grid.

    .venv/bin/python bench/optimize_speed.py [--data ../shared/data] [--workers 1,2] [--folds N] [--symbols ...]

What is timed: one `aura optimize` run (every fold's selection, validation and in-sample evaluation, the CSCVs,
the SPAs and the gate; the newest fold's winner is what would go live) driven by a coordinator on an embedded
secured nats-server, with N worker processes (``python -m services.optimizer.worker``) that are up and warm
before the clock starts, as compose's ``optimizer-worker`` services are; each run starts from an empty result
store, so nothing is reused.  The time to start the workers (Python imports and numba's kernel cache) and this
process's own imports are reported apart.

The peer for the speed-up: every selection's first stage on its whole training window (864 evaluations on
the daily data) evaluated by 1 and N forked processes with no bus and no coordinator (``kernel_ceiling``),
which is how far the cores scale the evaluation kernel alone.  On 2 cores the coordinator and the nats-server
share them with the workers, so the workers' speed-up falls short of that ceiling by their share of the CPU
(reported per run).

Then the same search without successive halving (the full grid: every candidate of every stage on the whole
training window) with the most workers, for what halving saves (evaluations, and bars evaluated, which is what
the time follows) and whether it picks the same winner.  The times, speed-ups and bars are drawn in
bench/results/optimize_speed.png (``--plot PATH``, ``--no-plot``).  The last printed line is one JSON object.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Before T0, with the standard library: coordinator_imports_s is the run's imports, not the plot's (which
# imports matplotlib only when it draws).
from bench.plotting import Bars, add_plot_args, bar_panels, machine_note, plot_path  # noqa: E402

T0 = time.perf_counter()
import httpx  # noqa: E402

from aura.optimize.report import trial_counts  # noqa: E402
from aura.optimize.tasks import (  # noqa: E402
    EvalInputs,
    Evaluator,
    batches,
    digest,
    engine_fingerprint,
    eval_task,
    settings_json,
    warm_up,
)
from aura.optimize_cli import LocalWorker, embedded_bus, start_workers, stop_workers  # noqa: E402
from aura.optimize_job import OptimizeJob, Say, build_run, coordinate_async, prepare_job  # noqa: E402
from aura.strategy.params import params_digest  # noqa: E402
from services.optimizer.coordinator import ResultStore  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.contracts import OptTask  # noqa: E402


def wait_ready(procs: list[LocalWorker], timeout_s: float = 300.0) -> float:
    """Seconds until every worker's /readyz is 200 (its kernels compiled or loaded)."""
    t0 = time.perf_counter()
    pending = {p.port for p in procs}
    while pending and time.perf_counter() - t0 < timeout_s:
        for port in list(pending):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    pending.discard(port)
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker died while starting")
        time.sleep(0.1)
    if pending:
        raise TimeoutError("workers not ready")
    return time.perf_counter() - t0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _evaluate_share(inputs: EvalInputs, tasks: list[OptTask], start: Any, done: Any) -> None:
    """One process of the ceiling: warm up, wait for the others, evaluate its share, report its seconds."""
    warm_up()
    evaluator = Evaluator(inputs)
    start.wait()
    t0 = time.perf_counter()
    for task in tasks:
        for _ in evaluator.run(task):
            pass
    done.put(time.perf_counter() - t0)


def _spin(rounds: int, start: Any, done: Any) -> None:
    """One process of the machine's own peer: an interpreter loop that touches no memory to speak of."""
    start.wait()
    t0 = time.perf_counter()
    total = 0
    for i in range(rounds):
        total += i * i
    done.put(time.perf_counter() - t0)


def in_processes(target: Any, shares: list[tuple[Any, ...]]) -> float:
    """Seconds until the slowest of ``len(shares)`` forked processes, started together, has run ``target``."""
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(len(shares) + 1), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*share, start, done)) for share in shares]
    for proc in procs:
        proc.start()
    start.wait()
    seconds = max(done.get(timeout=600) for _ in procs)
    for proc in procs:
        proc.join()
    return round(seconds, 2)


def machine_peer(counts: list[int], rounds: int = 20_000_000) -> dict[int, float]:
    """The same interpreter loop in each of N processes at once: with N independent cores every process takes
    as long as one alone.  How much longer they take is what sharing the machine costs before any of our code."""
    return {n: in_processes(_spin, [(rounds,)] * n) for n in counts}


def kernel_ceiling(job: OptimizeJob, counts: list[int]) -> dict[int, float]:
    """Seconds to evaluate ``job``'s first requests (every selection's first stage on its first budget: pass the
    full-grid job for whole training windows) with N forked processes that share the tasks round-robin, with no
    bus and no coordinator: how far this machine's cores scale the evaluation kernel by themselves (each process
    builds its own indicators, as each worker does), the peer the workers' speed-up is read against."""
    run = build_run(job)
    blob = job.inputs.encode()
    name, engine, settings = digest(blob), engine_fingerprint(), settings_json(job.cfg)
    tasks = [eval_task(name, engine, settings, params, [window])
             for params, window in batches([(r.params, r.window) for r in run.requests()])]
    return {n: in_processes(_evaluate_share, [(job.inputs, tasks[i::n]) for i in range(n)]) for n in counts}


def timed_run(job: OptimizeJob, bus: Settings, store_path: Path) -> tuple[float, Any, Any]:
    """(wall seconds, finished run, decision) of one coordinated run from an empty store."""
    logger = logging.getLogger("bench.optimize")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    store = ResultStore(store_path)
    t0 = time.perf_counter()
    record, _ = asyncio.run(coordinate_async(job, bus, store, logger))
    seconds = time.perf_counter() - t0
    store.close()
    return seconds, record.run, record.decision


TARGET_SPEEDUP = 1.8  # the project's target for 2 workers on 2 cores (README, Performance)


def plot(out: dict[str, Any], counts: list[int], timeframe: str, path: Path) -> Path:
    """Wall times (each worker count, the full grid), the speed-up beside its same-run peers and the 1.8x target,
    and the bars evaluated with halving against the full grid; a panel only for what was run."""
    panels: list[Bars] = []
    full_key = f"full_grid_wall_s_{counts[-1]}_workers"
    labels = [f"{n} worker{'s' if n > 1 else ''}\n(halving)" for n in counts]
    values: list[float | None] = [out[f"wall_s_{n}_workers"] for n in counts]
    if full_key in out:
        labels.append(f"{counts[-1]} worker{'s' if counts[-1] > 1 else ''}\n(full grid)")
        values.append(out[full_key])
    repeated = len(out[f"wall_s_{counts[0]}_workers_all"]) > 1
    panels.append(Bars("wall time of one run" + (" (fastest of the repeats)" if repeated else ""), labels,
                       {"wall s": values}, "seconds (wall)", fmt="{:.2f} s"))
    if "speedup" in out:
        a, b = counts[0], counts[-1]
        panels.append(Bars(f"speed-up {a} → {b} workers and its same-run peers",
                           ["coordinated run\n(workers, bus,\ncoordinator)", "kernel ceiling\n(forked, no bus)",
                            "machine peer\n(interpreter loop)"],
                           {"speed-up": [out["speedup"], out["kernel_ceiling_speedup"],
                                         out["machine_peer_throughput_x"]]},
                           f"× faster with {b} than with {a}", fmt="{:.2f}×", log=False,
                           reference=TARGET_SPEEDUP, reference_label=f"target\n{TARGET_SPEEDUP}×"))
    if "full_grid_bars" in out:
        ev = out["evaluations"]
        panels.append(Bars(f"bars evaluated: halving {out['fewer_bars_x']}× fewer",
                           [f"successive halving\n{ev['evaluations']:,} evaluations",
                            f"full grid\n{out['full_grid_evaluations']:,} evaluations"],
                           {"bars": [ev["evaluation_bars"], out["full_grid_bars"]]}, "bars evaluated", log=False))
    same = {True: "same winner as the full grid", False: "winner differs from the full grid"}
    extra = f"budgets {out['budgets']} bars" + (f"; {same[out['same_winner']]}" if "same_winner" in out else "")
    title = (f"Walk-forward optimizer: {out['symbols']} symbols ({timeframe}), {out['folds']} "
             f"fold{'s' if out['folds'] > 1 else ''}, workers {', '.join(map(str, counts))}")
    return bar_panels(path, title, panels, machine_note(extra))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--timeframe", default="1d")
    ap.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    ap.add_argument("--symbols", default=None)
    ap.add_argument("--folds", type=int, default=None, help="only the newest N folds (smoke runs)")
    ap.add_argument("--grids", type=Path, default=None)
    ap.add_argument("--spa-reps", type=int, default=2000)
    ap.add_argument("--min-budget", type=int, default=None,
                    help="smallest halving budget in bars (default: the timeframe's, 180 on 1d)")
    ap.add_argument("--no-full-grid", action="store_true", help="skip the full-grid comparison")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each worker count this many times (interleaved), report the fastest: on a shared "
                         "machine the minimum is the figure least disturbed by other load")
    add_plot_args(ap, "optimize_speed")
    args = ap.parse_args()
    from arch.bootstrap import SPA  # noqa: F401  the gate's import (pandas, scipy): a process cost, not a run's

    imports_s = time.perf_counter() - T0
    counts = [int(x) for x in args.workers.split(",")]
    job_args = argparse.Namespace(data=args.data, timeframe=args.timeframe, symbols=args.symbols, grids=args.grids,
                                  anchored=False, folds=args.folds, min_budget=args.min_budget, eta=3,
                                  spa_reps=args.spa_reps)
    job = prepare_job(job_args)
    full_job = prepare_job(argparse.Namespace(**{**vars(job_args), "min_budget": job.spec.train}))
    say = Say(False)
    out: dict[str, Any] = {"symbols": len(job.inputs.panel.symbols), "bars": len(job.inputs.panel.timestamps),
                           "folds": len(job.folds), "cores": os.cpu_count(), "python": platform.python_version(),
                           "coordinator_imports_s": round(imports_s, 2), "min_budget": job.min_budget,
                           "budgets": list(build_run(job).selections[0].budgets)}
    with tempfile.TemporaryDirectory(prefix="aura-optbench-") as tmp, embedded_bus(Path(tmp) / "bus") as bus:
        winners: dict[str, str] = {}
        times: dict[int, list[float]] = {n: [] for n in counts}
        cpu: dict[int, list[tuple[float, float]]] = {}
        for rep in range(args.repeat):
            for n in counts:
                procs = start_workers(n, bus, Path(tmp) / "logs")
                try:
                    out[f"workers_{n}_start_s"] = round(wait_ready(procs), 2)
                    before = [cpu_seconds(w.proc.pid) for w in procs]
                    cpu0 = time.process_time()
                    seconds, run, decision = timed_run(job, bus, Path(tmp) / f"halving-{n}-{rep}.sqlite")
                    coordinator_cpu = time.process_time() - cpu0
                    workers_cpu = sum(cpu_seconds(w.proc.pid) for w in procs) - sum(before)
                finally:
                    stop_workers(procs)
                times[n].append(round(seconds, 2))
                cpu.setdefault(n, []).append((round(coordinator_cpu, 2), round(workers_cpu, 2)))
                winners[f"halving_{n}"] = params_digest(run.winner)
                say(f"{n} worker(s): {seconds:.1f}s wall, CPU {coordinator_cpu:.1f}s coordinator + {workers_cpu:.1f}s "
                    f"workers, load {os.getloadavg()[0]:.1f}; {run.evaluations()} evaluations")
        for n in counts:
            out[f"wall_s_{n}_workers"] = min(times[n])
            out[f"wall_s_{n}_workers_all"] = times[n]
            out[f"cpu_s_{n}_workers_coordinator_and_workers"] = cpu[n]
        out["evaluations"] = trial_counts(run)
        out["verdict"] = decision.summary()
        if len(counts) > 1:
            out["speedup"] = round(out[f"wall_s_{counts[0]}_workers"] / out[f"wall_s_{counts[-1]}_workers"], 2)
            ceiling = kernel_ceiling(full_job, counts)
            out["kernel_ceiling_s"] = ceiling
            out["kernel_ceiling_speedup"] = round(ceiling[counts[0]] / ceiling[counts[-1]], 2)
            peer = machine_peer(counts)
            out["machine_peer_s"] = peer  # the same work in each process: equal times on independent cores
            out["machine_peer_throughput_x"] = round(counts[-1] * peer[counts[0]] / peer[counts[-1]] / counts[0], 2)
            say(f"ceiling, every selection's first stage on its whole training window, evaluated by forked "
                f"processes without the bus: {ceiling}")
        if not args.no_full_grid:
            n = counts[-1]
            procs = start_workers(n, bus, Path(tmp) / "logs")
            try:
                wait_ready(procs)
                seconds, full_run, _ = timed_run(full_job, bus, Path(tmp) / "full.sqlite")
            finally:
                stop_workers(procs)
            full = trial_counts(full_run)
            say(f"full grid, {n} worker(s): {seconds:.1f}s, {full['evaluations']} evaluations")
            out[f"full_grid_wall_s_{n}_workers"] = round(seconds, 2)
            out["full_grid_evaluations"] = full["evaluations"]
            out["full_grid_bars"] = full["evaluation_bars"]
            out["fewer_evaluations_x"] = round(full["evaluations"] / out["evaluations"]["evaluations"], 2)
            out["fewer_bars_x"] = round(full["evaluation_bars"] / out["evaluations"]["evaluation_bars"], 2)
            winners["full_grid"] = params_digest(full_run.winner)
            out["same_winner"] = len(set(winners.values())) == 1
            out["same_fold_winners"] = all(
                run.selection(s.label).winner == full_run.selection(s.label).winner for s in run.selections)
        out["winners"] = winners
    if (png := plot_path(args)) is not None:  # the bus and the workers are down: nothing is timed any more
        out["plot"] = str(plot(out, counts, args.timeframe, png))
        print(f"plot: {png}")
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Crash trials: kill -9 the executor's plan path at seeded random moments, restart, reconcile, verify.

Each trial is an honest crash of a real process:

* The parent imports everything once, then ``os.fork()``s a child per trial.  The child builds its own event
  loop, its own ccxt client (real HTTP to the exchange simulator) and opens the trial's real SQLite journal
  file, then runs the executor's plan path (``runner.run_plan``: sync guard, journal-before-send, clientOrderId
  placement, fills, snapshot) for the trial's plans.
* It dies by SIGKILL: either it kills *itself* at a seeded crash point (before/after a journal commit or a
  broker call: the places where a crash leaves the journal and the exchange disagreeing), or the parent
  SIGKILLs it after a seeded random delay (anywhere, including mid-HTTP-request and mid-SQLite-write).
* The parent then "restarts" the executor: boot recovery (``runner.recover``: reconcile open intents, finish
  the interrupted plan) and the bus redelivery of every plan (``run_plan`` again, a no-op for finished ones).
  In some trials the recovery itself is killed once more before a final recovery.
* Verification against the simulator's own books: no clientOrderId booked twice, no simulator order the
  journal does not know, no working order left behind, the journal's fills are exactly the simulator's trades,
  and the journal's portfolio (``portfolio_from_fills``) equals the simulator's balances exactly.

The simulator runs in its own process (``python -m aura.exchange_sim``) so it survives every kill, and it
checks duplicate clientOrderIds among *open* orders only, as Binance does: a blind resend of a filled order
would be booked a second time, and the verification would see it.

The child's side (the simulator process, the crash points, the executor path in a forked child) is
crash_child.py; the verification is venue_books.py, which the rehearsals share.

``python -m services.executor.crash_trials --trials 200 --seed 7 --workers 2`` prints a summary; the last line
is JSON.  The same seed gives the same trials (plans, faults, crash points, kill delays).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET
from aura.exchange_sim.config import default_data_dir
from aura.strategy.rebalance import floor_to_step
from aura.strategy.types import MarketRule
from services.executor.brokers.ccxt_client import make_ccxt_binance
from services.executor.crash_child import (
    GENESIS_USDT,
    SYMBOLS,
    SimProcess,
    executor_run,
    fork_child,
    fork_single_threaded,
    make_broker,
)
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis
from services.executor.venue_books import verify
from shared.contracts import PlanBody, PlanLeg, plan_id_for
from shared.market_rules import rule_from_ccxt

# --- one trial -------------------------------------------------------------------------------------------------


TIMER_ATTEMPTS = 3  # runs of a timer trial whose child outran its kill, the delay halved each time


@dataclass
class TrialSpec:
    trial: int
    seed: int
    crash: str  # "point" (self-kill at a crash point) | "timer" (the parent's SIGKILL after a delay)
    kill_at: int = 0
    delay_s: float = 0.0
    second_kill_at: int = 0  # >0: the first recovery is killed at this point too
    sim_config: dict[str, Any] = field(default_factory=dict)
    faults: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrialResult:
    trial: int
    seed: int
    crash: str
    killed: bool  # the child really died of SIGKILL
    second_killed: bool
    kill_at: int
    orders: int
    fills: int
    plan_status: list[str]
    violations: list[str]
    elapsed_s: float


def build_plans(rng: random.Random, trial: int, prices: dict[str, float],
                rules: dict[str, MarketRule], as_of_ms: int) -> list[PlanBody]:
    """Two plans per trial: buys, then sells (some larger than held, so the sell clamp works) plus new buys."""
    symbols = sorted(prices)
    first = rng.sample(symbols, 3)
    legs_a = []
    for i, sym in enumerate(first):
        qty = floor_to_step(rng.uniform(400, 2500) / prices[sym], rules[sym].step_size)
        legs_a.append(PlanLeg(i, sym, "buy", qty, prices[sym], "enter"))
    if rng.random() < 0.25:  # a dust leg: must be skipped with a reason, never sent
        sym = rng.choice(symbols)
        qty = max(floor_to_step(2.0 / prices[sym], rules[sym].step_size), rules[sym].step_size)
        legs_a.append(PlanLeg(len(legs_a), sym, "buy", qty, prices[sym], "enter"))
    legs_b: list[PlanLeg] = []
    for leg in legs_a[:2]:
        step = rules[leg.symbol].step_size
        if rng.random() < 0.5:  # full exit, up to a few lot steps more than was bought: the clamp must catch it
            qty = leg.qty + step * rng.randint(0, 3)
        else:
            qty = floor_to_step(leg.qty * rng.uniform(0.3, 0.8), step)
        legs_b.append(PlanLeg(len(legs_b), leg.symbol, "sell", qty, prices[leg.symbol], "trim"))
    for sym in rng.sample([s for s in symbols if s not in first], 2):
        qty = floor_to_step(rng.uniform(300, 1500) / prices[sym], rules[sym].step_size)
        legs_b.append(PlanLeg(len(legs_b), sym, "buy", qty, prices[sym], "enter"))
    if rng.random() < 0.2:  # more than the account can pay: rejected by the exchange (-2010), others go on
        sym = rng.choice(symbols)
        legs_b.append(PlanLeg(len(legs_b), sym, "buy", floor_to_step(50_000 / prices[sym], rules[sym].step_size),
                              prices[sym], "enter"))
    plans = []
    for n, legs in enumerate((legs_a, legs_b)):
        fields: dict[str, Any] = {
            "cycle_id": f"crash-{trial}-{n}", "as_of_ms": as_of_ms, "data_digest": "crash-trial", "target_id": "t",
            "params_version": 0, "params_digest": "p", "basis_snapshot_id": f"trial-{trial}-{n}", "gate": "pass",
            "halted": False, "legs": legs, "reasons": [], "prices": prices}
        plans.append(PlanBody(plan_id=plan_id_for(fields), **fields))
    return plans


def quiet_logger() -> logging.Logger:
    log = logging.getLogger("aura.crash_trials")
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


class Harness:
    def __init__(self, seed: int, workdir: Path, data_dir: Path | None = None, keep: bool = False,
                 logger: logging.Logger | None = None) -> None:
        self.seed = seed
        self.workdir = workdir
        self.keep = keep
        self.sim = SimProcess(data_dir or default_data_dir())
        self.log = logger or quiet_logger()
        self.assets = [s[: -len("USDT")] for s in SYMBOLS]
        ex = make_ccxt_binance(self.sim.url, DEFAULT_API_KEY, DEFAULT_API_SECRET, async_=False,
                               enable_rate_limit=False, adjust_for_time_difference=False)
        self.markets: dict[str, Any] = dict(ex.load_markets())
        self.rules = {sym: rule_from_ccxt(sym, m) for sym, m in self.markets.items()}
        self.points_calibrated = 0
        self.duration_calibrated = 0.0

    def close(self) -> None:
        self.sim.close()

    def reset_sim(self, config: dict[str, Any]) -> tuple[int, dict[str, float], int]:
        """Fresh balances, the trial's fill behaviour, the next bar's prices; returns (first order id, prices,
        the open time of the bar the plans are made on: the one that just closed by the exchange's clock)."""
        self.sim.control("DELETE", "faults")
        self.sim.control("POST", "config", {"duplicate_scope": "open", "fill_on_query": True,
                                            "market_fill_chunks": 1, "market_expire_after_chunks": 0, **config})
        self.sim.control("POST", "prices", {"advance": 1})
        self.sim.control("POST", "balances", {"USDT": str(GENESIS_USDT), **dict.fromkeys(self.assets, "0")})
        state = self.sim.state()
        first_order_id = max([int(o["orderId"]) for o in state["orders"]] + [0]) + 1
        prices = {f"{s[:-4]}/USDT": float(p) for s, p in state["prices"].items()}
        return first_order_id, prices, self.sim.server_time() - 86_400_000

    def genesis(self, path: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        j = Journal(path)
        ensure_genesis(j, GENESIS_USDT)
        j.close()

    def spec(self, trial: int) -> TrialSpec:
        rng = random.Random(self.seed * 1_000_003 + trial)
        sim_config: dict[str, Any] = {}
        roll = rng.random()
        if roll < 0.2:
            sim_config = {"market_fill_chunks": 3}  # partial fills that complete as the order is polled
        elif roll < 0.3:
            sim_config = {"market_fill_chunks": 4, "market_expire_after_chunks": 2}  # thin book: the rest expires
        faults: list[dict[str, Any]] = []
        if rng.random() < 0.3:
            faults.append(rng.choice([
                {"kind": "drop", "method": "POST", "path": "/api/v3/order"},  # booked, answer lost
                {"kind": "http_error", "method": "POST", "path": "/api/v3/order", "status": 500},  # booked, 5xx
                {"kind": "http_error", "method": "POST", "path": "/api/v3/order", "status": 503,
                 "process": False},  # not booked, 5xx
                {"kind": "rate_limit", "method": "POST", "path": "/api/v3/order", "retry_after_s": 0},
                {"kind": "http_error", "method": "GET", "path": "/api/v3/account", "status": 503},
            ]))
        crash = "point" if rng.random() < 0.6 else "timer"
        kill_at = rng.randint(1, max(1, self.points_calibrated)) if crash == "point" else 0
        delay = rng.uniform(0.0, self.duration_calibrated) if crash == "timer" else 0.0
        second = rng.randint(1, max(1, self.points_calibrated // 2)) if rng.random() < 0.2 else 0
        return TrialSpec(trial, self.seed, crash, kill_at, delay, second, sim_config, faults)

    def calibrate(self, runs: int = 3) -> None:
        """Count the crash points of clean runs and time them, to draw kill points and kill delays from."""
        points, durations = [], []
        for n in range(runs):
            _, prices, clock = self.reset_sim({})
            plans = build_plans(random.Random(self.seed * 7 + n), -1 - n, prices, self.rules, clock)
            path = self.workdir / f"calibrate-{n}.sqlite"
            self.genesis(path)
            count = self.workdir / f"calibrate-{n}.count"
            t0 = time.monotonic()
            killed, status = fork_child(path, self.sim.url, self.markets, plans, 0, False, self.log,
                                        count_file=count)
            durations.append(time.monotonic() - t0)
            if killed or not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
                raise RuntimeError(f"calibration run failed (wait status {status})")
            points.append(int(count.read_text()))
        self.points_calibrated = max(points)
        self.duration_calibrated = sorted(durations)[len(durations) // 2]

    def run_trial(self, trial: int) -> TrialResult:
        t0 = time.monotonic()
        spec = self.spec(trial)
        path = self.workdir / f"trial-{trial:04d}.sqlite"
        for attempt in range(1, TIMER_ATTEMPTS + 1):
            first_order_id, prices, clock = self.reset_sim(spec.sim_config)
            plans = build_plans(random.Random(self.seed * 31 + trial), trial, prices, self.rules, clock)
            if spec.faults:
                self.sim.control("POST", "faults", spec.faults)
            self.genesis(path)
            killed, _ = fork_child(path, self.sim.url, self.markets, plans, spec.kill_at, False, self.log,
                                   delay_s=spec.delay_s)
            if killed or spec.crash != "timer" or attempt == TIMER_ATTEMPTS:
                break
            # The run ended before its timer: the machine ran it faster than when the delays were calibrated
            # (another process's load came and went).  The same trial again, from the start, with half the
            # delay, so the kill lands inside a run; the clean run is left behind (its orders come before
            # first_order_id).
            self.sim.control("DELETE", "faults")
            spec.delay_s /= 2
        second_killed = False
        if spec.second_kill_at:  # the restart dies too, in the middle of its own recovery
            second_killed, _ = fork_child(path, self.sim.url, self.markets, plans, spec.second_kill_at, True,
                                          self.log)
        self.sim.control("DELETE", "faults")
        # The restart that survives: boot recovery, then the redelivery of every plan, in this process.
        journal = Journal(path)

        async def restart() -> list[str]:
            broker = make_broker(self.sim.url, self.markets, self.log)
            try:
                return await executor_run(journal, broker, plans, self.log, boot=True)
            finally:
                await broker.close()

        try:
            asyncio.run(restart())
        finally:
            journal.close()
        state = self.sim.state()
        orders = [o for o in state["orders"] if int(o["orderId"]) >= first_order_id]
        ids = {int(o["orderId"]) for o in orders}
        trades = [t for t in state["trades"] if int(t["orderId"]) in ids]
        violations, fills, statuses = verify(path, plans, orders, trades, state["balances"], self.assets)
        if self.keep:  # the raw books, so a test can check the invariants again on its own
            dump = {"spec": asdict(spec), "plan_ids": [p.plan_id for p in plans], "orders": orders,
                    "trades": trades, "balances": state["balances"], "genesis_usdt": GENESIS_USDT}
            (self.workdir / f"trial-{trial:04d}.json").write_text(json.dumps(dump))
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return TrialResult(trial, self.seed, spec.crash, killed, second_killed, spec.kill_at, len(orders), fills,
                           statuses, violations, round(time.monotonic() - t0, 3))


# --- many trials -----------------------------------------------------------------------------------------------


def run_trials(trials: int, seed: int, workdir: Path, data_dir: Path | None = None, keep: bool = False,
               progress: bool = False, shard: int = 0, shards: int = 1) -> dict[str, Any]:
    """Trials ``shard, shard + shards, ...`` below ``trials``, against a simulator process of our own."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    harness = Harness(seed, workdir, data_dir, keep)
    results = []
    try:
        harness.calibrate()
        for n in range(shard, trials, shards):
            results.append(harness.run_trial(n))
            if progress and len(results) % 25 == 0:
                bad = sum(1 for r in results if r.violations)
                print(f"[crash-trials] shard {shard}: {len(results)} trials, {bad} with violations",
                      file=sys.stderr, flush=True)
    finally:
        harness.close()
    return summarize([asdict(r) for r in results], seed, harness.points_calibrated, time.monotonic() - started)


def summarize(results: list[dict[str, Any]], seed: int, points: int, elapsed: float) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r["trial"])
    trial_time = sum(r["elapsed_s"] for r in results)
    return {
        "trials": len(results), "seed": seed, "killed": sum(r["killed"] for r in results),
        "self_kills": sum(1 for r in results if r["killed"] and r["crash"] == "point"),
        "timer_kills": sum(1 for r in results if r["killed"] and r["crash"] == "timer"),
        "recoveries_killed": sum(r["second_killed"] for r in results),
        "crash_points_per_run": points,
        "orders_checked": sum(r["orders"] for r in results), "fills_checked": sum(r["fills"] for r in results),
        "partial_plans": sum(s == "partial" for r in results for s in r["plan_status"]),
        "violations": [f"trial {r['trial']} (seed {r['seed']}, {r['crash']}): {v}" for r in results
                       for v in r["violations"]],
        "elapsed_s": round(elapsed, 2),
        "trials_per_min": round(60.0 * len(results) / elapsed, 1) if elapsed else 0.0,
        "trial_s_mean": round(trial_time / len(results), 3) if results else 0.0,
        "results": results,
    }


def run_parallel(trials: int, seed: int, workdir: Path, workers: int = 1, data_dir: Path | None = None,
                 keep: bool = False) -> dict[str, Any]:
    """Shard the trials over ``workers`` forked worker processes (one simulator each) and merge their results."""
    if workers <= 1:
        return run_trials(trials, seed, workdir, data_dir, keep, progress=True)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pids = []
    for w in range(workers):
        pid = fork_single_threaded()
        if pid == 0:
            code = 0
            try:
                out = run_trials(trials, seed, workdir / f"shard-{w}", data_dir, keep, progress=True, shard=w,
                                 shards=workers)
                (workdir / f"shard-{w}.json").write_text(json.dumps(out))
            except BaseException:
                traceback.print_exc()
                code = 3
            os._exit(code)
        pids.append(pid)
    failed = []
    for w, pid in enumerate(pids):
        _, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            failed.append(f"worker {w} failed (wait status {status})")
    results: list[dict[str, Any]] = []
    points = 0
    for w in range(workers):
        path = workdir / f"shard-{w}.json"
        if path.exists():
            part = json.loads(path.read_text())
            results.extend(part["results"])
            points = max(points, part["crash_points_per_run"])
    summary = summarize(results, seed, points, time.monotonic() - started)
    summary["violations"] = failed + summary["violations"]
    summary["workers"] = workers
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crash_trials", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1, help="worker processes, each with its own simulator")
    parser.add_argument("--workdir", type=Path, default=None, help="journals go here (default: a temp dir)")
    parser.add_argument("--data", type=Path, default=None, help="candles for the simulator (default: bundled)")
    parser.add_argument("--keep", action="store_true", help="keep each trial's journal and exchange books")
    parser.add_argument("--details", action="store_true", help="include per-trial results in the JSON line")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="aura-crash-") as tmp:
        summary = run_parallel(args.trials, args.seed, args.workdir or Path(tmp), args.workers, args.data, args.keep)
    if not args.details:
        summary.pop("results")
    for line in summary["violations"][:50]:
        print(f"[crash-trials] VIOLATION {line}")
    print(f"[crash-trials] {summary['trials']} trials, {summary['killed']} processes killed with SIGKILL "
          f"({summary['self_kills']} at crash points, {summary['timer_kills']} by timer; "
          f"{summary['recoveries_killed']} recoveries killed too), {len(summary['violations'])} violations, "
          f"{summary['elapsed_s']} s ({summary['trials_per_min']} trials/min)")
    print(json.dumps(summary))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The live path against the venue simulator: a data bar's close -> the executor's orders acknowledged, and
kill -9 trials per minute of the real executor process.

One rehearsal (``aura/rehearsal_lab.py``: the whole system as `aura rehearse` runs it, live, against the venue
simulator on an accelerated clock paced by the journal):

* Latency, per cycle after the first (which syncs a year of history): from the moment the bar closed on the
  simulator's clock to the journaling of the cycle's last acknowledged order (the executor journals each
  order as soon as the exchange's answer is final).  In between: ingest sees the bar (it polls every
  ``max(0.05, bar/20)`` s) and syncs it, signal, risk (its checks against the venue), then the executor's live
  path: the stale check against the exchange's clock, the book check against its balances ([RECONCILE]) and
  the sync guard, then per leg the exchange's price ([PRICE_GUARD]) and the order.  ccxt's client-side rate
  limiter is on, as in production: most of the figure is Binance's request budget (an account read weighs 20).
  Also reported: bar close -> the cycle's commit, over every cycle (with or without orders).
* Then the same system's executor is killed with SIGKILL at seeded points and restarted
  (``aura/rehearsal_kills.py``), and the books are judged; figure: kills (each with its restart and the
  recovery that follows) per minute of the kill phase.

Both latencies' samples are drawn as distributions with p50/p99 marked in bench/results/live_cycle.png
(``--plot PATH``, ``--no-plot``).
Last printed line: one JSON object, e.g. {"bar_close_to_orders_acked_p50_ms": ..., "kill_trials_per_min": ...}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aura.rehearsal_kills import run_kill_trials
from aura.rehearsal_lab import LiveRehearsal, cycle_bar_ms
from bench.plotting import add_plot_args, latency_cdf, machine_note, plot_path, sample_percentile


def latencies(lab: LiveRehearsal) -> tuple[list[float], list[float]]:
    """(bar close -> last order acknowledged, ms, for cycles with orders; bar close -> commit, ms, every cycle),
    for the cycles after the first."""
    acked = {c: ms for c, ms in lab.query("SELECT cycle_id, MAX(updated_ts_ms) FROM orders GROUP BY cycle_id")}
    to_orders, to_commit = [], []
    for cycle in lab.bar_cycles()[1:]:
        bar = cycle_bar_ms(cycle.cycle_id)
        close = lab.bar_close_wall.get(bar) if bar is not None else None
        if close is None:
            continue
        [(committed,)] = lab.query("SELECT MIN(committed_ts_ms) FROM snapshots WHERE cycle_id = ?", (cycle.cycle_id,))
        to_commit.append(committed - close * 1000)
        if cycle.cycle_id in acked:
            to_orders.append(acked[cycle.cycle_id] - close * 1000)
    return to_orders, to_commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=40, help="clean cycles measured after the first")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 trials after the measured cycles")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--speed", type=float, default=86_400.0, help="clock speed (default: a daily bar a second)")
    parser.add_argument("--from", dest="start", default="2021-03-01")
    parser.add_argument("--bytecode-in-place", action="store_true",
                        help="the service processes read the bytecode already beside their sources instead of "
                             "compiling into a fresh folder (a smoke run's quick start; all_ready_s then leaves "
                             "the compile out)")
    add_plot_args(parser, "live_cycle")
    args = parser.parse_args()
    # Compiled bytecode is kept for the service processes, as in any installed deployment: a restarted executor's
    # boot is then its own work, not the compile of ccxt.  The executor's consumer gets a 6 s ack wait, as in
    # tests/e2e/test_live_kills.py: a plan held by a killed process comes back after 6 s, not 30.
    with tempfile.TemporaryDirectory(prefix="aura-bench-live-") as tmp, \
            LiveRehearsal(Path(tmp) / "home", args.start, speed=args.speed,
                          pycache=None if args.bytecode_in_place else Path(tmp) / "pycache",
                          executor_ack_wait_s=6.0) as lab:
        lab.wait_cycles(args.cycles + 1, 60 + 30 * args.cycles)
        to_orders, to_commit = latencies(lab)
        report = run_kill_trials(lab, args.seed, args.kills, timeout_s=120 + 60 * args.kills)
        ready_s = lab.ready_s
    if not to_orders:
        print("no cycle placed an order", file=sys.stderr)
        return 1
    out = {
        "cycles": len(to_commit), "cycles_with_orders": len(to_orders),
        "bar_close_to_orders_acked_p50_ms": round(statistics.median(to_orders), 1),
        "bar_close_to_orders_acked_p99_ms": round(sample_percentile(to_orders, 99), 1),
        "bar_close_to_commit_p50_ms": round(statistics.median(to_commit), 1),
        "bar_close_to_commit_p99_ms": round(sample_percentile(to_commit, 99), 1),
        "kill_trials": len(report.kills), "kill_trials_per_min": report.kills_per_min,
        "executor_restart_to_ready_s": report.boot_s, "violations": len(report.violations),
        "orders_checked": report.orders, "all_ready_s": round(ready_s, 1), "speed": args.speed,
    }
    if report.violations:
        print(report.describe(), file=sys.stderr)
    print(f"bar close -> orders acknowledged over {len(to_orders)} cycles: p50 "
          f"{out['bar_close_to_orders_acked_p50_ms']} ms, p99 {out['bar_close_to_orders_acked_p99_ms']} ms; "
          f"{out['kill_trials']} kill -9 trials at {out['kill_trials_per_min']}/min, {out['violations']} violations")
    if (png := plot_path(args)) is not None:  # the rehearsal is over: nothing is measured any more
        note = machine_note(f"clock ×{args.speed:g}; {out['kill_trials']} kill -9 trials at "
                            f"{out['kill_trials_per_min']}/min, {out['violations']} violations")
        out["plot"] = str(latency_cdf(png, "Live path against the venue simulator: bar close → executor",
                                      {"bar close → orders acknowledged": to_orders,
                                       "bar close → cycle committed": to_commit}, "ms", note))
        print(f"plot: {png}")
    print(json.dumps(out))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())

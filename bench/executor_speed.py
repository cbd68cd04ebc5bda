"""Executor intents/s: market orders placed through CcxtBroker against the local exchange simulator.

Each intent is one ``place_market_order`` with its own deterministic clientOrderId, over real HTTP through
ccxt.async_support, answered by the simulator (auth, filters, fills, balances).  ccxt's client-side rate
limiter is off: it would measure Binance's published request budget, not this code.

The second figure (``plan_path_intents_per_s``) is the whole money-safe path, ``execute_plan`` + CcxtBroker:
every intent journaled to a real SQLite file (WAL, synchronous=FULL) before it is sent, the free-balance read
and sell clamp for sells, the order, its fills and final state journaled after, one commit per step.
The two rates and their per-order latencies are drawn side by side in bench/results/executor_speed.png
(``--plot PATH``, ``--no-plot``).
Last printed line: one JSON object, e.g. {"executor_intents_per_s": 412.3, "plan_path_intents_per_s": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig, SimServer
from bench.plotting import Bars, add_plot_args, bar_panels, machine_note, plot_path
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.client_order_id import client_order_id
from services.executor.exchange_calls import ExecutionLimits
from services.executor.execution import execute_plan
from services.executor.journal import Journal
from shared.contracts import PlanBody, PlanLeg, plan_id_for


def _data_dir() -> Path:
    root = Path(__file__).resolve().parent.parent
    shared = Path(os.environ.get("AURA_SHARED_DATA", root.parent / "shared" / "data"))
    return shared / "binance" / "1d" if (shared / "binance" / "1d").is_dir() else root / "data" / "replay"


async def _run(server: SimServer, n: int) -> dict[str, float]:
    broker = CcxtBroker(api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET, base_url=server.base_url,
                        enable_rate_limit=False, adjust_for_time_difference=False)
    try:
        await broker.load_markets()
        latencies = []
        started = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            state = await broker.place_market_order("BTC/USDT", "buy" if i % 2 == 0 else "sell", 0.001,
                                                    client_order_id("bench", i), ref_price=0)
            latencies.append(time.perf_counter() - t0)
            if state.status != "filled":
                raise RuntimeError(f"order {i} not filled: {state}")
        elapsed = time.perf_counter() - started
    finally:
        await broker.close()
    latencies.sort()
    return {"executor_intents_per_s": round(n / elapsed, 1), "orders": n, "elapsed_s": round(elapsed, 3),
            "latency_ms_p50": round(statistics.median(latencies) * 1000, 2),
            "latency_ms_p99": round(latencies[int(0.99 * (n - 1))] * 1000, 2)}


async def _run_plans(server: SimServer, plans: int, legs: int) -> dict[str, float]:
    """``plans`` plans of ``legs`` legs each (buy / sell alternating) through execute_plan and a real journal."""
    log = logging.getLogger("bench.executor_speed")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    broker = CcxtBroker(api_key=DEFAULT_API_KEY, secret=DEFAULT_API_SECRET, base_url=server.base_url,
                        enable_rate_limit=False, adjust_for_time_difference=False, logger=log)
    limits = ExecutionLimits(max_order_usdt=1e9, settle_s=0.5)
    per_plan = []
    with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite")
        try:
            rules = await broker.load_markets()
            price = float(server.sim.price("BTCUSDT"))
            for p in range(plans):
                body: dict[str, object] = {
                    "cycle_id": f"bench-{p}", "as_of_ms": p, "data_digest": "d", "target_id": "t",
                    "params_version": 0, "params_digest": "p", "basis_snapshot_id": "b", "gate": "pass",
                    "halted": False, "reasons": [], "prices": {"BTC/USDT": price},
                    "legs": [PlanLeg(i, "BTC/USDT", "buy" if i % 2 == 0 else "sell", 0.001, price, "bench")
                             for i in range(legs)]}
                plan = PlanBody(plan_id=plan_id_for(body), **body)  # type: ignore[arg-type]
                t0 = time.perf_counter()
                result = await execute_plan(plan, broker, journal, rules, limits, log)
                per_plan.append(time.perf_counter() - t0)
                if result.status != "executed" or len(result.new_fills) != legs:
                    raise RuntimeError(f"plan {p} not fully executed: {result.reasons}")
        finally:
            journal.close()
            await broker.close()
    total = sum(per_plan)
    return {"plan_path_intents_per_s": round(plans * legs / total, 1), "plans": plans, "legs_per_plan": legs,
            "plan_path_elapsed_s": round(total, 3),
            "plan_path_intent_ms_p50": round(statistics.median(per_plan) / legs * 1000, 2)}


def plot(result: dict[str, float], path: Path) -> Path:
    """The broker alone against the whole plan path: intents per second, and milliseconds per intent (p50)."""
    labels = [f"CcxtBroker alone\n{result['orders']:.0f} orders"]
    rates: list[float | None] = [result["executor_intents_per_s"]]
    ms: list[float | None] = [result["latency_ms_p50"]]
    if "plan_path_intents_per_s" in result:
        labels.append(f"execute_plan + journal + broker\n{result['plans']:.0f} plans × {result['legs_per_plan']:.0f} "
                      "legs")
        rates.append(result["plan_path_intents_per_s"])
        ms.append(result["plan_path_intent_ms_p50"])
    return bar_panels(path, "Executor throughput against the exchange simulator: broker alone vs the plan path", [
        Bars("intents per second", labels, {"per s": rates}, "intents / s (wall)", log=False),
        Bars("milliseconds per intent (p50)", labels, {"ms": ms}, "ms per intent", fmt="{:.2f} ms", log=False),
    ], machine_note("market orders over HTTP, ccxt rate limiter off; journal: SQLite WAL, synchronous=FULL"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--plans", type=int, default=10, help="plans through execute_plan (0: skip)")
    parser.add_argument("--legs", type=int, default=20, help="legs per plan")
    add_plot_args(parser, "executor_speed")
    args = parser.parse_args()
    # Some BTC from the start: the simulator takes a buy's fee from the BTC received, as Binance does, so the
    # alternating 0.001 sells need a little more than the buys leave.
    config = SimConfig(data_dir=_data_dir(), symbols=("BTCUSDT",), balances={"USDT": 10_000_000, "BTC": 10})
    with SimServer(config=config) as server:
        result = asyncio.run(_run(server, args.n))
        print(f"broker only: {result['executor_intents_per_s']} orders/s (p50 {result['latency_ms_p50']} ms)")
        if args.plans > 0:
            result.update(asyncio.run(_run_plans(server, args.plans, args.legs)))
            print(f"execute_plan + CcxtBroker + journal: {result['plan_path_intents_per_s']} intents/s "
                  f"(p50 {result['plan_path_intent_ms_p50']} ms per intent)")
        result["sim_requests"] = sum(server.sim.faults.counts().values())
    extra: dict[str, str] = {}
    if (png := plot_path(args)) is not None:  # the simulator is down: nothing is timed any more
        extra["plot"] = str(plot(result, png))
        print(f"plot: {png}")
    print(json.dumps({**result, **extra}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

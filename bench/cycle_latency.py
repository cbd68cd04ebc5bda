"""Cycle latency over the real bus: data-ready -> executor commit, and `aura up` -> all services ready.

Starts a fresh system (embedded nats-server + five processes, paper broker) in a temporary AURA_HOME,
replays cycles back to back and measures, per cycle, ``snapshot.committed_at_ms - data_ready.emitted_at_ms``.
The first cycle is reported separately (first object-store reads, first journal writes); the numba kernels are
compiled before the services report ready (aura/warmup.py), so their compile time lands in all_ready_s.
Last printed line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

from aura.launcher import start_stack, wait_ready
from aura.natsd import free_port, start_nats
from shared.config import SERVICE_NAMES, load_settings
from shared.contracts import DataReady, PortfolioSnapshot, decode

WARMUP = 3


async def collect(url: str, cycles: int, timeout_s: float) -> dict[str, float]:
    emitted: dict[str, int] = {}
    latencies: dict[str, float] = {}
    done = asyncio.Event()
    nc = await nats.connect(url)

    async def on_ready(msg: nats.aio.msg.Msg) -> None:
        ready = decode(msg.data, DataReady)
        emitted.setdefault(ready.cycle_id, ready.emitted_at_ms)

    async def on_snapshot(msg: nats.aio.msg.Msg) -> None:
        snap = decode(msg.data, PortfolioSnapshot)
        if snap.cycle_id in emitted and snap.cycle_id not in latencies:
            latencies[snap.cycle_id] = snap.committed_at_ms - emitted[snap.cycle_id]
            if len(latencies) % 10 == 0:
                print(f"  {len(latencies)}/{cycles + WARMUP} cycles", file=sys.stderr, flush=True)
            if len(latencies) >= cycles + WARMUP:
                done.set()

    await nc.subscribe(DataReady.SUBJECT, cb=on_ready)
    await nc.subscribe(PortfolioSnapshot.SUBJECT, cb=on_snapshot)
    try:
        await asyncio.wait_for(done.wait(), timeout=timeout_s)
    finally:
        await nc.close()
    ordered = [latencies[c] for c in sorted(latencies)]
    return {"first_cycle_ms": ordered[0], "samples": ordered[WARMUP:]}  # type: ignore[dict-item]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
        home = Path(tmp)
        server = start_nats(home / "nats", free_port(), home / "nats.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
        env.update({"AURA_HOME": str(home), "AURA_NATS_URL": server.url, "AURA_REPLAY_INTERVAL_S": "0",
                    "AURA_LOG_LEVEL": "WARNING"})
        for name in SERVICE_NAMES:
            env[f"AURA_{name.upper()}_PORT"] = str(free_port())
        t0 = time.monotonic()
        stack = start_stack(load_settings(env), env)
        try:
            wait_ready(stack, 60)
            all_ready_s = time.monotonic() - t0
            print(f"all five services ready in {all_ready_s:.2f}s", file=sys.stderr)
            result = asyncio.run(collect(server.url, args.cycles, args.timeout))
        finally:
            stack.stop()
            server.stop()
    samples: list[float] = result["samples"]  # type: ignore[assignment]
    figures = {
        "cycles": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "first_cycle_ms": round(float(result["first_cycle_ms"]), 2),  # type: ignore[arg-type]
        "all_ready_s": round(all_ready_s, 2),
    }
    print(f"data-ready -> executor commit over {len(samples)} cycles: p50 {figures['p50_ms']} ms, "
          f"p99 {figures['p99_ms']} ms (first cycle {figures['first_cycle_ms']} ms)")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cycle latency over the real bus: data-ready -> executor commit, and `aura up` -> all services ready.

Starts a fresh system in a temporary AURA_HOME as `aura up` does (its keys and bus credentials, the authenticated
nats-server configured from them, provisioned with the admin credential, five processes, paper broker), replays cycles
back to back and measures, per cycle, ``snapshot.committed_at_ms - data_ready.emitted_at_ms``.  It watches the
bus with the admin credential (an ephemeral consumer on each stream is a management right).
The first cycle is reported separately (first object-store reads, first journal writes); the numba kernels are
compiled before the services report ready (aura/warmup.py), so their compile time lands in all_ready_s.
The samples are drawn as a distribution with p50/p99 marked in bench/results/cycle_latency.png (``--plot PATH``,
``--no-plot``).  Last printed line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.js import JetStreamContext
from nats.js import api as js_api

from aura.launcher import start_stack, wait_ready
from aura.natsd import free_port, start_bus
from bench.plotting import add_plot_args, latency_cdf, machine_note, plot_path, sample_percentile
from shared.bus import session
from shared.config import SERVICE_NAMES, Settings, load_settings
from shared.contracts import DataReady, PortfolioSnapshot, decode
from shared.credentials import ensure_credentials

WARMUP = 3


async def follow(js: JetStreamContext, subject: str, on_msg: Callable[[bytes], None], stop: asyncio.Event) -> None:
    """Every message stored on ``subject`` from now on, in order, through an ephemeral pull consumer.

    Pull, not an ordered push consumer: the flow-control replies of a push consumer (``$JS.FC.>``) are not in
    the admin credential's permissions, and the server stops delivering after about 2 MB of snapshots.  No acks
    (``AckPolicy.NONE``): acks are not in its permissions either, and a reader needs none.
    """
    config = js_api.ConsumerConfig(deliver_policy=js_api.DeliverPolicy.NEW, ack_policy=js_api.AckPolicy.NONE,
                                   inactive_threshold=30.0)
    sub = await js.pull_subscribe(subject, config=config)
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(64, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                on_msg(msg.data)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def collect(settings: Settings, cycles: int, timeout_s: float) -> dict[str, float]:
    emitted: dict[str, int] = {}
    committed: dict[str, int] = {}
    latencies: dict[str, float] = {}
    done = asyncio.Event()

    def measured(cycle_id: str) -> None:
        if cycle_id in emitted and cycle_id in committed and cycle_id not in latencies:
            latencies[cycle_id] = committed[cycle_id] - emitted[cycle_id]
            if len(latencies) % 10 == 0:
                print(f"  {len(latencies)}/{cycles + WARMUP} cycles", file=sys.stderr, flush=True)
            if len(latencies) >= cycles + WARMUP:
                done.set()

    def on_ready(data: bytes) -> None:
        ready = decode(data, DataReady)
        emitted.setdefault(ready.cycle_id, ready.emitted_at_ms)
        measured(ready.cycle_id)

    def on_snapshot(data: bytes) -> None:
        snap = decode(data, PortfolioSnapshot)
        committed.setdefault(snap.cycle_id, snap.committed_at_ms)  # the first snapshot of a cycle: its commit
        measured(snap.cycle_id)

    async with session(settings, "admin", timeout_s=5) as nc:  # an ephemeral consumer: a management right
        js = nc.jetstream()
        # Snapshots first: every cycle announced after the readers exist has its commit seen too.
        readers = [asyncio.create_task(follow(js, PortfolioSnapshot.SUBJECT, on_snapshot, done))]
        await asyncio.sleep(0.2)
        readers.append(asyncio.create_task(follow(js, DataReady.SUBJECT, on_ready, done)))
        try:
            await asyncio.wait_for(done.wait(), timeout=timeout_s)
        finally:
            done.set()
            await asyncio.gather(*readers, return_exceptions=True)
    ordered = [latencies[c] for c in sorted(latencies)]
    return {"first_cycle_ms": ordered[0], "samples": ordered[WARMUP:]}  # type: ignore[dict-item]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600)
    add_plot_args(parser, "cycle_latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
        env.update({"AURA_HOME": str(home), "AURA_REPLAY_INTERVAL_S": "0", "AURA_LOG_LEVEL": "WARNING"})
        for name in SERVICE_NAMES:
            env[f"AURA_{name.upper()}_PORT"] = str(free_port())
        # The bus as `aura up` runs it (NKey users from this home's keys, permissions, no anonymous access), on a
        # free port of our own: never the machine's default 4222, where another server may live.
        settings = load_settings(env)
        ensure_credentials(settings.keys)
        server = start_bus(settings, free_port())
        env["AURA_NATS_URL"] = server.url
        try:
            t0 = time.monotonic()
            # Takes the home's lock, provisions streams, buckets and consumers (admin), starts the services.
            stack = start_stack(load_settings(env), env)
            try:
                wait_ready(stack, 60)
                all_ready_s = time.monotonic() - t0
                print(f"all five services ready in {all_ready_s:.2f}s", file=sys.stderr)
                result = asyncio.run(collect(stack.settings, args.cycles, args.timeout))
            finally:
                stack.stop()
        finally:
            server.stop()
    samples: list[float] = result["samples"]  # type: ignore[assignment]
    figures = {
        "cycles": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(sample_percentile(samples, 99), 2),
        "max_ms": round(max(samples), 2),
        "first_cycle_ms": round(float(result["first_cycle_ms"]), 2),  # type: ignore[arg-type]
        "all_ready_s": round(all_ready_s, 2),
    }
    print(f"data-ready -> executor commit over {len(samples)} cycles: p50 {figures['p50_ms']} ms, "
          f"p99 {figures['p99_ms']} ms (first cycle {figures['first_cycle_ms']} ms)")
    if (png := plot_path(args)) is not None:  # the system is down: nothing is measured any more
        note = machine_note(f"{len(samples)} cycles after {WARMUP} warm-up; first cycle {figures['first_cycle_ms']} "
                            f"ms; aura up → all ready {figures['all_ready_s']} s")
        figures["plot"] = str(latency_cdf(png, "Cycle latency over the real bus: data-ready → executor commit",
                                          {"data-ready → executor commit": samples}, "ms", note))
        print(f"plot: {png}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

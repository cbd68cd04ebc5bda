"""`aura rehearse`: the whole system LIVE against the venue simulator, from a chosen date, on a fast clock.

The real command (as a user runs it, only kept off port 4222): ingest syncs from the simulator's archive and
klines, the executor trades on its API with its key, and every fill is at the close of the candle the plan was
made on, the price ingest saw.  The journal ends equal to the simulator's balances.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import polars as pl
import pytest

from tests.e2e.test_system import AURA_CLI, REPO, stack_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


def test_aura_rehearse_runs_the_system_live_against_the_simulator(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    proc = subprocess.run([*AURA_CLI, "rehearse", "--from", "2021-03-01", "--cycles", "3"], env=env,
                          capture_output=True, text=True, timeout=360, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "runs at 14400x real time" in proc.stdout and "journal == simulator balances" in proc.stdout
    [home] = (tmp_path / "home" / "rehearsals").iterdir()
    executor_log = (home / "logs" / "executor.log").read_text()
    assert "live broker configured" in executor_log and "127.0.0.1" in executor_log  # live, on the simulator
    db = sqlite3.connect(f"file:{home / 'executor' / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        cycles = db.execute("SELECT cycle_id, status FROM snapshots WHERE status != 'genesis' ORDER BY seq").fetchall()
        plans = {c: json.loads(b) for c, b in db.execute("SELECT cycle_id, body FROM plans")}
        fills = db.execute("SELECT f.cycle_id, f.symbol, f.price, o.exchange_order_id FROM fills f JOIN orders o "
                           "ON o.client_order_id = f.client_order_id").fetchall()
    finally:
        db.close()
    assert cycles[0] == ("1d-20210301T0000", "executed") and len(cycles) >= 3
    assert all(status in ("executed", "partial") for _, status in cycles), cycles  # none stale, none refused
    assert fills, "no order reached the simulator"
    candles = REPO / "data" / "replay" / "binance" / "1d"
    for cycle_id, symbol, price, order_id in fills:
        assert order_id.isdigit()  # the simulator's order id, not the paper broker's
        bar = pl.read_parquet(candles / f"{symbol.replace('/', '_')}.parquet").filter(
            pl.col("timestamp") == plans[cycle_id]["as_of_ms"])
        assert price == bar["close"][0] == plans[cycle_id]["prices"][symbol]  # the price ingest saw

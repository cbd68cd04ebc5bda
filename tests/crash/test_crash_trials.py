"""kill -9 the executor's plan path 200 times at seeded random moments; restart, reconcile, verify the books.

The harness (``services/executor/crash_trials.py``) forks a real process per trial that runs the executor's
code path against the exchange simulator (its own process) over HTTP, and kills it with SIGKILL: at a seeded
crash point (before/after a journal commit or a broker call) or after a seeded random delay.  It then restarts
(boot recovery + redelivery) and checks the books.  This test runs it in a clean process and then checks the
kept raw books again *itself*: every trial's journal file against the simulator orders, trades and balances.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRIALS = 200
SEED = 20240607

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def journal_books(path: Path) -> tuple[set[str], dict[str, str], float, dict[str, float]]:
    """(intent ids, fill trade id -> clientOrderId, cash, base holdings), summed here straight from the rows."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        intents = {r[0] for r in db.execute("SELECT client_order_id FROM intents")}
        fills = db.execute("SELECT trade_id, client_order_id, symbol, side, qty, price, fee_base, fee_quote"
                           " FROM fills").fetchall()
        cash = float(db.execute("SELECT cash FROM snapshots WHERE status='genesis' ORDER BY seq LIMIT 1").fetchone()[0])
    finally:
        db.close()
    held: dict[str, float] = {}
    for _, _, symbol, side, qty, price, fee_base, fee_quote in fills:
        # Each fee out of the asset the exchange took it in: a buy's from the coins bought (fee_base, the
        # simulator's default, as Binance without BNB), a sell's from the USDT received (fee_quote).
        sign = 1.0 if side == "buy" else -1.0
        cash -= sign * qty * price + fee_quote
        base = symbol.split("/")[0]
        held[base] = held.get(base, 0.0) + sign * qty - fee_base
    return intents, {str(f[0]): f[1] for f in fills}, cash, held


def test_200_seeded_kill9_trials_leave_no_double_fill_and_matching_books(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "services.executor.crash_trials", "--trials", str(TRIALS),
                           "--seed", str(SEED), "--workers", "2", "--keep", "--details", "--workdir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=560)
    duration = time.monotonic() - started
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n[crash] {summary['trials']} trials in {duration:.1f} s: {summary['killed']} SIGKILLs "
          f"({summary['self_kills']} at crash points, {summary['timer_kills']} by timer, "
          f"{summary['recoveries_killed']} recoveries killed), {summary['orders_checked']} orders, "
          f"{summary['fills_checked']} fills checked")
    assert summary["violations"] == [], "\n".join(summary["violations"][:20]) + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary["trials"] == TRIALS
    # The trials really crashed, in both ways, and some restarts crashed too.
    assert summary["killed"] >= 0.8 * TRIALS
    assert summary["self_kills"] >= 0.4 * TRIALS and summary["timer_kills"] >= 0.15 * TRIALS
    assert summary["recoveries_killed"] >= 0.1 * TRIALS
    points = sorted({r["kill_at"] for r in summary["results"] if r["crash"] == "point" and r["killed"]})
    assert len(points) >= 0.6 * summary["crash_points_per_run"], f"crash points poorly covered: {points}"
    assert summary["partial_plans"] > 0  # partial fills, expiries and rejections were part of the mix

    # Independent re-check from the raw books the harness kept.
    dumps = sorted(tmp_path.glob("shard-*/trial-*.json"))
    assert len(dumps) == TRIALS
    for dump_path in dumps:
        dump = json.loads(dump_path.read_text())
        intents, fills, cash, held = journal_books(dump_path.with_suffix(".sqlite"))
        cids = Counter(o["clientOrderId"] for o in dump["orders"])
        trial = dump_path.stem
        assert max(cids.values(), default=1) == 1, f"{trial}: a clientOrderId was booked twice: {cids}"
        assert set(cids) <= intents, f"{trial}: exchange orders unknown to the journal: {set(cids) - intents}"
        assert all(o["status"] in ("FILLED", "CANCELED", "EXPIRED") for o in dump["orders"]), trial
        cid_of = {o["orderId"]: o["clientOrderId"] for o in dump["orders"]}
        assert {str(t["id"]): cid_of[t["orderId"]] for t in dump["trades"]} == fills, f"{trial}: fills differ"
        balances = {a: float(b["free"]) + float(b["locked"]) for a, b in dump["balances"].items()}
        assert balances["USDT"] == pytest.approx(cash, abs=1e-5), f"{trial}: cash"
        for asset, amount in balances.items():
            if asset != "USDT":
                assert amount == pytest.approx(held.get(asset, 0.0), abs=1e-9), f"{trial}: {asset}"

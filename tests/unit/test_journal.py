"""The journal's fills table: keyed per order, and an older file is migrated in place without losing a row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.executor.journal import Journal

OLD_FILLS = """
CREATE TABLE fills (
    trade_id TEXT PRIMARY KEY, cycle_id TEXT NOT NULL, client_order_id TEXT NOT NULL, symbol TEXT NOT NULL,
    side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL, fee REAL NOT NULL, ts_ms INTEGER NOT NULL
);
"""


def test_the_same_trade_number_in_two_symbols_is_two_fills(tmp_path: Path) -> None:
    # Binance numbers trades per symbol: BTCUSDT trade 7 and ETHUSDT trade 7 are different trades.
    j = Journal(tmp_path / "j.sqlite")
    j.begin()
    assert j.record_fill("7", "c", "cid-btc", "BTC/USDT", "buy", 0.1, 40_000.0, 4.0, 1, fee_base=0.0, fee_quote=4.0)
    assert j.record_fill("7", "c", "cid-eth", "ETH/USDT", "buy", 1.0, 2_000.0, 2.0, 2, fee_base=0.0, fee_quote=2.0)
    # The same order's trade seen again (a re-fetch after a restart) is still one fill.
    assert not j.record_fill("7", "c", "cid-btc", "BTC/USDT", "buy", 0.1, 40_000.0, 4.0, 1, fee_base=0.0,
                             fee_quote=4.0)
    j.commit()
    assert [(r.symbol, r.qty) for r in j.all_fills()] == [("BTC/USDT", 0.1), ("ETH/USDT", 1.0)]


def test_a_journal_from_the_first_release_is_migrated_with_every_row_in_order(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_FILLS)
    rows = [("t2", "c1", "cid-a", "BTC/USDT", "buy", 0.1, 40_000.0, 4.0, 10),
            ("t1", "c1", "cid-b", "ETH/USDT", "buy", 1.0, 2_000.0, 2.0, 11),
            ("t3", "c2", "cid-a", "BTC/USDT", "sell", 0.05, 41_000.0, 2.05, 12)]
    db.executemany("INSERT INTO fills VALUES (?,?,?,?,?,?,?,?,?)", rows)
    db.commit()
    db.close()

    j = Journal(path)
    key = [r[1] for r in sorted(j.db.execute("PRAGMA table_info(fills)"), key=lambda r: r[5]) if r[5] > 0]
    assert key == ["client_order_id", "trade_id"]
    # Same rows, same (rowid) order; an old row's whole fee stays charged to cash, as it was.
    assert [(r.symbol, r.side, r.qty, r.fee_base, r.fee_quote) for r in j.all_fills()] == [
        ("BTC/USDT", "buy", 0.1, 0.0, 4.0), ("ETH/USDT", "buy", 1.0, 0.0, 2.0), ("BTC/USDT", "sell", 0.05, 0.0, 2.05)]
    assert [f[0] for f in j.fills_for("cid-a")] == ["t2", "t3"]
    j.close()
    again = Journal(path)  # opening a current file changes nothing
    assert len(again.all_fills()) == 3

"""The journal's tables and the migrations that bring an older journal's file up to them, in one place so the
schema can be read apart from the writes (``journal.py``)."""

from __future__ import annotations

# Exchanges number trades per symbol (Binance does), so a trade id is unique only within its order's symbol:
# the key is (client_order_id, trade_id), or a trade of one symbol would be dropped as a "duplicate" of
# another symbol's trade with the same number.
FILLS_COLUMNS = """
    trade_id TEXT NOT NULL,
    cycle_id TEXT NOT NULL,
    client_order_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty REAL NOT NULL,
    price REAL NOT NULL,
    fee REAL NOT NULL,
    ts_ms INTEGER NOT NULL,
    fee_base REAL NOT NULL DEFAULT 0,
    fee_quote REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (client_order_id, trade_id)
"""
FILL_FIELDS = "trade_id, cycle_id, client_order_id, symbol, side, qty, price, fee, ts_ms, fee_base, fee_quote"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY,
    cycle_id TEXT NOT NULL,
    status TEXT NOT NULL,
    gate TEXT NOT NULL,
    params_version INTEGER NOT NULL,
    basis_snapshot_id TEXT NOT NULL,
    body TEXT NOT NULL,
    reasons TEXT NOT NULL,
    received_ts_ms INTEGER NOT NULL,
    committed_ts_ms INTEGER
);
CREATE TABLE IF NOT EXISTS intents (
    client_order_id TEXT PRIMARY KEY,
    cycle_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    leg_index INTEGER NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty REAL NOT NULL,
    ref_price REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_ts_ms INTEGER NOT NULL,
    updated_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY,
    cycle_id TEXT NOT NULL,
    exchange_order_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    status TEXT NOT NULL,
    qty REAL NOT NULL,
    filled_qty REAL NOT NULL,
    avg_price REAL NOT NULL,
    updated_ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fills (FILLS_COLUMNS);
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id TEXT NOT NULL UNIQUE,
    cycle_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    status TEXT NOT NULL,
    cash REAL NOT NULL,
    holdings TEXT NOT NULL,
    entry_prices TEXT NOT NULL,
    equity REAL NOT NULL,
    committed_ts_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_events_cycle ON events(cycle_id);
CREATE INDEX IF NOT EXISTS idx_intents_status ON intents(status);
CREATE INDEX IF NOT EXISTS idx_fills_order ON fills(client_order_id);
""".replace("FILLS_COLUMNS", FILLS_COLUMNS)

# Columns added to ``fills`` after the first release, with the statement that fills an older row's value.
# Before them a fill's whole fee (``fee``, valued in the quote asset) was charged to cash: an old row keeps
# exactly that meaning (fee_quote = fee, nothing out of the holding), so an existing journal's books do not move.
FILL_FEE_MIGRATION = (
    "ALTER TABLE fills ADD COLUMN fee_base REAL NOT NULL DEFAULT 0",
    "ALTER TABLE fills ADD COLUMN fee_quote REAL NOT NULL DEFAULT 0",
    "UPDATE fills SET fee_quote = fee",
)
# The first release keyed fills by trade_id alone; SQLite cannot change a key in place, so the table is
# rebuilt with the same rows in the same order (``all_fills`` reads them by rowid).
FILL_KEY_MIGRATION = (
    f"CREATE TABLE fills_keyed ({FILLS_COLUMNS})",
    f"INSERT INTO fills_keyed ({FILL_FIELDS}) SELECT {FILL_FIELDS} FROM fills ORDER BY rowid",
    "DROP TABLE fills",
    "ALTER TABLE fills_keyed RENAME TO fills",
    "CREATE INDEX IF NOT EXISTS idx_fills_order ON fills(client_order_id)",
)

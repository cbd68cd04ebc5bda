"""The executor's SQLite journal (WAL): the single source of truth for what AURA did.

Only the executor opens this file for writing.  Every row carries the cycle id.  Intents are committed
*before* the network call that places them, so after a crash the journal always knows which orders may
exist on the exchange and reconciliation can look each one up by its clientOrderId.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.executor.journal_schema import FILL_FEE_MIGRATION, FILL_FIELDS, FILL_KEY_MIGRATION, SCHEMA
from services.executor.portfolio import FillRow
from shared.cycles import is_bar_cycle

# Intent life cycle: pending (journaled, not yet sent) -> sent (request on the wire) -> final states.
OPEN_INTENT_STATES = ("pending", "sent", "acked")  # "unsent": reconciled, exchange never saw it


def now_ms() -> int:
    return int(time.time() * 1000)


# What SQLite or the OS says when the journal's *environment* fails (a read-only file system, a full disk, a
# lock held by another process), as opposed to a fault of what is being written.  A plan that meets one is
# never dropped: it waits, unacknowledged, until the journal can take it again.
_ENVIRONMENT_ERRORS = ("readonly", "read-only", "disk i/o error", "database or disk is full", "database is locked",
                       "unable to open database", "database table is locked")
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EACCES, errno.EPERM}


def journal_fault(exc: BaseException) -> str | None:
    """Why the journal cannot be written right now, if ``exc`` is such an environmental fault; else None."""
    if isinstance(exc, sqlite3.OperationalError) and any(e in str(exc).lower() for e in _ENVIRONMENT_ERRORS):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(frozen=True)
class SnapshotRow:
    seq: int
    snapshot_id: str
    cycle_id: str
    plan_id: str
    status: str
    cash: float
    holdings: dict[str, float]
    entry_prices: dict[str, float]
    equity: float
    committed_ts_ms: int


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves so a cycle commits atomically.
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._migrate()
        self.path = path
        self.owner: IO[str] | None = None  # the executor's hold on the journal (journal_owner.py), if it took one
        # When this process opened it (the executor takes the journal's lock first): every request an earlier
        # executor signed was signed before then.  And the intents this process marked "sent", known here and
        # not by their journaled time, which a wall clock stepped back would date before the opening
        # (exchange_calls.sent_settle_left).
        self.opened_monotonic = time.monotonic()
        self.sent_here: set[str] = set()

    def _fill_migrations(self) -> list[str]:
        """The statements that bring this file's ``fills`` table to the current layout (none when current)."""
        info = self.db.execute("PRAGMA table_info(fills)").fetchall()
        columns = {str(r[1]) for r in info}
        key = [str(r[1]) for r in sorted(info, key=lambda r: r[5]) if r[5] > 0]
        todo: list[str] = []
        if "fee_base" not in columns:
            todo += FILL_FEE_MIGRATION
        if key != ["client_order_id", "trade_id"]:
            todo += FILL_KEY_MIGRATION
        return todo

    def _migrate(self) -> None:
        """Bring a journal file written by an older release up to the current ``fills`` table, atomically."""
        if not self._fill_migrations():
            return
        # Straight on the connection, not self.begin()/commit(): a subclass (the crash trials' journal) hooks
        # those and is not built yet while this runs.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for statement in self._fill_migrations():  # asked again: another opener may have migrated meanwhile
                self.db.execute(statement)
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()
        if self.owner is not None:
            self.owner.close()
            self.owner = None

    # -- transactions ---------------------------------------------------------------------------------
    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.OperationalError:
                # The fault that made us roll back (a full disk, a lost lock) may fail the rollback too: SQLite
                # then rolls the transaction back itself, which is all that is needed.
                if self.db.in_transaction:
                    raise

    # -- writes ---------------------------------------------------------------------------------------
    def event(self, cycle_id: str, kind: str, **detail: Any) -> None:
        self.db.execute("INSERT INTO events(cycle_id, ts_ms, kind, detail) VALUES (?,?,?,?)",
                        (cycle_id, now_ms(), kind, json.dumps(detail, sort_keys=True, default=str)))

    def record_plan(self, plan_id: str, cycle_id: str, gate: str, params_version: int, basis: str, body: str,
                    reasons: list[str], status: str = "received") -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO plans(plan_id, cycle_id, status, gate, params_version, basis_snapshot_id, body,"
            " reasons, received_ts_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            (plan_id, cycle_id, status, gate, params_version, basis, body, json.dumps(reasons), now_ms()))

    def set_plan_status(self, plan_id: str, status: str, reasons: list[str] | None = None) -> None:
        if reasons is None:
            self.db.execute("UPDATE plans SET status=?, committed_ts_ms=? WHERE plan_id=?",
                            (status, now_ms(), plan_id))
        else:
            self.db.execute("UPDATE plans SET status=?, reasons=?, committed_ts_ms=? WHERE plan_id=?",
                            (status, json.dumps(reasons), now_ms(), plan_id))

    def record_intent(self, cid: str, cycle_id: str, plan_id: str, leg_index: int, symbol: str, side: str,
                      qty: float, ref_price: float, status: str = "pending", reason: str = "") -> None:
        ts = now_ms()
        self.db.execute(
            "INSERT OR IGNORE INTO intents(client_order_id, cycle_id, plan_id, leg_index, symbol, side, qty, ref_price,"
            " status, reason, created_ts_ms, updated_ts_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (cid, cycle_id, plan_id, leg_index, symbol, side, qty, ref_price, status, reason, ts, ts))

    def set_intent_status(self, cid: str, status: str, reason: str = "") -> None:
        if status == "sent":
            self.sent_here.add(cid)
        self.db.execute("UPDATE intents SET status=?, reason=?, updated_ts_ms=? WHERE client_order_id=?",
                        (status, reason, now_ms(), cid))

    def mark_intent(self, cid: str, status: str) -> None:
        """Change the status (and its time) but keep the reason, e.g. "sent" again on a retry."""
        if status == "sent":
            self.sent_here.add(cid)
        self.db.execute("UPDATE intents SET status=?, updated_ts_ms=? WHERE client_order_id=?",
                        (status, now_ms(), cid))

    def upsert_order(self, cid: str, cycle_id: str, exchange_order_id: str, symbol: str, side: str, status: str,
                     qty: float, filled_qty: float, avg_price: float) -> None:
        self.db.execute(
            "INSERT INTO orders(client_order_id, cycle_id, exchange_order_id, symbol, side, status, qty, filled_qty,"
            " avg_price, updated_ts_ms) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(client_order_id) DO UPDATE SET"
            " exchange_order_id=excluded.exchange_order_id, status=excluded.status, filled_qty=excluded.filled_qty,"
            " avg_price=excluded.avg_price, updated_ts_ms=excluded.updated_ts_ms",
            (cid, cycle_id, exchange_order_id, symbol, side, status, qty, filled_qty, avg_price, now_ms()))

    def record_fill(self, trade_id: str, cycle_id: str, cid: str, symbol: str, side: str, qty: float, price: float,
                    fee: float, ts_ms: int, *, fee_base: float, fee_quote: float) -> bool:
        """Insert a fill once; returns False when this order's trade id was already journaled (no double count).

        ``fee`` is the quote-valued figure for reporting; ``fee_base`` / ``fee_quote`` are what the exchange took
        from each asset and what the balances are derived from (see ``Fill``).  Keyword-only so no caller can
        put a quote amount where a base amount belongs."""
        cur = self.db.execute(
            f"INSERT OR IGNORE INTO fills({FILL_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (trade_id, cycle_id, cid, symbol, side, qty, price, fee, ts_ms, fee_base, fee_quote))
        return cur.rowcount == 1

    def record_snapshot(self, snapshot_id: str, cycle_id: str, plan_id: str, status: str, cash: float,
                        holdings: dict[str, float], entry_prices: dict[str, float], equity: float) -> int:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO snapshots(snapshot_id, cycle_id, plan_id, status, cash, holdings, entry_prices,"
            " equity, committed_ts_ms) VALUES (?,?,?,?,?,?,?,?,?)",
            (snapshot_id, cycle_id, plan_id, status, cash, json.dumps(holdings, sort_keys=True),
             json.dumps(entry_prices, sort_keys=True), equity, now_ms()))
        return int(cur.lastrowid or 0)

    # -- reads ----------------------------------------------------------------------------------------
    def executed_plan_for_cycle(self, cycle_id: str) -> str | None:
        """The plan that already ran for ``cycle_id`` (any final status), if one did."""
        row = self.db.execute("SELECT plan_id FROM plans WHERE cycle_id=? AND status IN ('executed','partial')"
                              " LIMIT 1", (cycle_id,)).fetchone()
        return row[0] if row else None

    def last_event_cycle(self, kind: str) -> str | None:
        """The cycle id of the newest event of ``kind`` (None: none)."""
        row = self.db.execute("SELECT cycle_id FROM events WHERE kind=? ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
        return str(row[0]) if row else None

    def cycle_closed(self, cycle_id: str) -> bool:
        """Whether a snapshot already closes ``cycle_id``."""
        return self.db.execute("SELECT 1 FROM snapshots WHERE cycle_id=? LIMIT 1", (cycle_id,)).fetchone() is not None

    def newest_bar_cycle(self, timeframe: str) -> str | None:
        """The newest data cycle of ``timeframe`` a snapshot closes (ids ``<timeframe>-YYYYmmddTHHMM`` sort as their
        bars do, shared/cycles.py); None before the first."""
        row = self.db.execute("SELECT MAX(cycle_id) FROM snapshots WHERE cycle_id LIKE ?", (f"{timeframe}-%",)
                              ).fetchone()
        return str(row[0]) if row and row[0] else None

    def plan_reached_exchange(self, plan_id: str) -> bool:
        """Whether any leg of ``plan_id`` may have reached the exchange (sent, acked, or final there)."""
        return self.db.execute("SELECT 1 FROM intents WHERE plan_id=? AND status NOT IN ('pending','unsent',"
                               "'skipped') LIMIT 1", (plan_id,)).fetchone() is not None

    def skip_pending_intents(self, plan_id: str, reason: str) -> None:
        """Close the legs of a refused plan that were journaled but never sent."""
        self.db.execute("UPDATE intents SET status='skipped', reason=?, updated_ts_ms=? WHERE plan_id=? AND "
                        "status IN ('pending','unsent')", (reason[:500], now_ms(), plan_id))

    def plan_status(self, plan_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM plans WHERE plan_id=?", (plan_id,)).fetchone()
        return row[0] if row else None

    def latest_snapshot(self) -> SnapshotRow | None:
        row = self.db.execute("SELECT seq, snapshot_id, cycle_id, plan_id, status, cash, holdings, entry_prices,"
                              " equity, committed_ts_ms FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return SnapshotRow(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), json.loads(row[7]),
                           row[8], row[9])

    def equity_history(self, limit: int) -> tuple[list[float], list[int]]:
        """The equity at each of the last ``limit`` bar cycles (and the genesis, the first point) and its commit
        time (ms), oldest first: one point per bar, as the backtest's kill-switch window counts them.

        Only bar cycles: a risk tick's exit, an adoption or a refused tick plan closes with a snapshot too, and
        counted as points, a stop-loss leg refused every minute squeezed a 90-bar window into 90 minutes (the
        drawdown it saw fell from 25% to 7%; found by an audit).  The decision appends the equity it sees now."""
        points: list[tuple[float, int]] = []
        seen: set[str] = set()
        for cycle_id, equity, at in self.db.execute(
                "SELECT cycle_id, equity, committed_ts_ms FROM snapshots ORDER BY seq DESC"):
            if len(points) >= limit:
                break
            if cycle_id in seen or (cycle_id != "genesis" and not is_bar_cycle(cycle_id)):
                continue
            seen.add(cycle_id)
            points.append((float(equity), int(at)))
        points.reverse()
        return [e for e, _ in points], [at for _, at in points]

    def open_intents(self) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(OPEN_INTENT_STATES))
        cur = self.db.execute(f"SELECT client_order_id, cycle_id, plan_id, leg_index, symbol, side, qty, ref_price,"
                              f" status, updated_ts_ms FROM intents WHERE status IN ({marks})"
                              f" ORDER BY created_ts_ms, client_order_id", OPEN_INTENT_STATES)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def order_event(self, cycle_id: str, kind: str, cid: str) -> dict[str, Any] | None:
        """The newest ``kind`` event about one order (``client_order_id`` in its detail) in ``cycle_id``, or None."""
        for (detail,) in self.db.execute("SELECT detail FROM events WHERE cycle_id=? AND kind=? ORDER BY id DESC",
                                         (cycle_id, kind)):
            found = json.loads(detail)
            if found.get("client_order_id") == cid:
                return dict(found)
        return None

    def order_fill(self, cid: str) -> tuple[float, float]:
        """(filled quantity, average price) of one order as journaled from the exchange's answer; (0, 0): none."""
        row = self.db.execute("SELECT filled_qty, avg_price FROM orders WHERE client_order_id=?", (cid,)).fetchone()
        return (0.0, 0.0) if row is None else (float(row[0]), float(row[1]))

    def order_acknowledged(self, cid: str) -> bool:
        """Whether the exchange ever answered with this order (its row is journaled from the exchange's answer)."""
        return self.db.execute("SELECT 1 FROM orders WHERE client_order_id=?", (cid,)).fetchone() is not None

    def intent_state(self, cid: str) -> tuple[str, str, int]:
        """(status, reason, updated_ts_ms) of one intent; raises KeyError if it was never journaled."""
        row = self.db.execute("SELECT status, reason, updated_ts_ms FROM intents WHERE client_order_id=?",
                              (cid,)).fetchone()
        if row is None:
            raise KeyError(cid)
        return str(row[0]), str(row[1]), int(row[2])

    def unfinished_plans(self) -> list[str]:
        """Plans journaled as received/executing but never committed (the executor died mid-plan), oldest first."""
        rows = self.db.execute("SELECT plan_id FROM plans WHERE status IN ('received', 'executing')"
                               " ORDER BY received_ts_ms, rowid").fetchall()
        return [r[0] for r in rows]

    def recent_plan_bodies(self, limit: int) -> list[str]:
        """The bodies of the newest ``limit`` plans journaled, newest first."""
        rows = self.db.execute("SELECT body FROM plans ORDER BY received_ts_ms DESC, rowid DESC LIMIT ?", (limit,))
        return [str(r[0]) for r in rows.fetchall()]

    def plan_body(self, plan_id: str) -> str | None:
        row = self.db.execute("SELECT body FROM plans WHERE plan_id=?", (plan_id,)).fetchone()
        return None if row is None else str(row[0])

    def fills_for(self, cid: str) -> list[tuple[str, float, float, float, float, float]]:
        """(trade_id, qty, price, fee valued in quote, fee in base, fee in quote) of one order's fills."""
        return self.db.execute("SELECT trade_id, qty, price, fee, fee_base, fee_quote FROM fills"
                               " WHERE client_order_id=? ORDER BY rowid", (cid,)).fetchall()

    def initial_cash(self) -> float | None:
        row = self.db.execute("SELECT cash FROM snapshots WHERE status='genesis' ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else float(row[0])

    def all_fills(self) -> list[FillRow]:
        """Every fill as (symbol, side, qty, price, fee in base, fee in quote), in the order journaled: the
        input of ``portfolio_from_fills``."""
        rows = self.db.execute("SELECT symbol, side, qty, price, fee_base, fee_quote FROM fills ORDER BY rowid")
        return [FillRow(*r) for r in rows.fetchall()]

    def count(self, table: str) -> int:
        if table not in ("events", "plans", "intents", "orders", "fills", "snapshots"):
            raise ValueError(table)
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

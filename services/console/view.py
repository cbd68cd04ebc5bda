"""What the console knows, read from the bus incrementally with direct gets: no consumer, nothing written.

Each refresh reads only what is new since the last one (a cursor per stream), checks signatures the way the
services do (snapshots by the executor, plans by risk, parameter documents by the optimizer or the operator,
the kill-switch latch by risk) and keeps bounded recent lists.  ``state()`` is the JSON the page polls.

Sources, all on the bus so the console works the same under `aura up` and in compose (where the journal volume
is the executor's alone): the newest signed snapshot (holdings, entry prices, cash, the journal's equity
history with commit times), every snapshot's cycle id (to put each equity point at its bar's time), approved
plans and aborted cycles (``AURA_PLANS``), fills, dead letters, events, the newest ``DataReady`` and its candle
object (prices, BTC), the parameter bucket and the latch.  Open orders are not on the bus: under `aura up` the
journal is opened read-only for them when it is there (:func:`open_orders`); elsewhere the page says unknown.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from aura.backtest.data import BENCHMARKS, load_benchmark
from aura.strategy.params import StrategyParams
from aura.strategy.schedule import timeframe_ms
from services.console.chart import PriceSeries, candle_series, daily_benchmark_series, drawdown, equity_chart
from services.executor.journal import OPEN_INTENT_STATES
from services.risk.latch import UNVERIFIABLE_BY, read_latch
from shared.bus import kv_get, last_message, state_kv, stored_messages
from shared.candles import decode_panel
from shared.config import Settings
from shared.contracts import (
    PLANS_FILTER,
    ApprovedPlan,
    ContractError,
    CycleAborted,
    DataReady,
    DataStale,
    DeadLetter,
    FillMsg,
    PortfolioSnapshot,
    ServiceEvent,
    TargetPortfolio,
    decode,
    stream_of,
)
from shared.credentials import PARAMS_SIGNERS, trusted_key, trusted_keys
from shared.cycles import as_of_of_cycle
from shared.health import HealthState
from shared.live_params import (
    ParamsDocument,
    ParamsError,
    default_params,
    document_timeframe,
    history,
    last_valid,
    read_version,
)
from shared.objects import ObjectTooLarge, verified_candles
from shared.read_only import connect_read_only
from shared.signing import SignatureError, verify_plan, verify_struct
from shared.state_keys import DECISION_KEY
from shared.wire import decode_document

RECENT = 50  # rows kept per list
BACKLOG = 5000  # at the first read, start this many stream sequences before the end (bounded start-up)
PER_REFRESH = 2000  # messages read per stream per refresh at most (a long backlog fills in over a few)
COMMITS_KEPT = 4000  # commit time -> cycle id of this many snapshots (the equity history holds 365)
BTC = "BTC/USDT"
DAY_MS = 86_400_000
# The optimizer's latest decision (issue 10) is the JSON document at shared.state_keys.DECISION_KEY, written by the
# optimizer alone (shared/bus_access.py grants it); until one exists the page shows "no decision yet".


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def decision_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of the optimizer's decision (aura/optimize_job.py ``promote`` writes it): promoted or not,
    the version it wrote (None: nothing written), the version it was judged against, the gate's verdict and the names
    of the tests that failed.  The verdict is ``GateDecision.summary()``: "NO PROMOTION: " and one "<test> <value> vs
    <threshold> ..." per failed test, joined by "; " (no test's detail holds one), so the names are read from it.
    ``problem`` says why a document is not in that form (the page then lists its fields as they are)."""
    promoted, verdict = doc.get("promoted"), doc.get("verdict")
    if not isinstance(promoted, bool) or not isinstance(verdict, str):
        return {"problem": "not an optimizer decision (no promoted yes/no and verdict)"}
    version, incumbent = doc.get("version"), doc.get("incumbent_version")
    failing = []
    if not promoted and verdict.startswith("NO PROMOTION: "):
        failing = [part.split(" ", 1)[0] for part in verdict.removeprefix("NO PROMOTION: ").split("; ") if part]
    return {"promoted": promoted, "version": version if isinstance(version, int) else None,
            "incumbent_version": incumbent if isinstance(incumbent, int) else None, "verdict": _clip(verdict, 2000),
            "failing": failing[:20], "parameters_digest": str(doc.get("parameters_digest") or ""),
            "report_sha256": str(doc.get("report_sha256") or ""), "problem": ""}


def open_orders(journal: Path) -> dict[str, Any]:
    """Orders that may be live on the exchange, from the executor's journal opened read-only; ``known`` False
    when this process cannot see the journal (compose keeps it in the executor's own volume)."""
    if not journal.is_file():
        return {"known": False, "why": "the journal is not visible to the console (compose: executor's volume)",
                "rows": []}
    marks = ",".join("?" * len(OPEN_INTENT_STATES))
    try:
        db = connect_read_only(journal, timeout=1)
        try:
            rows = db.execute(
                "SELECT i.client_order_id, i.cycle_id, i.symbol, i.side, i.qty, i.ref_price, i.status,"
                " COALESCE(o.status, ''), COALESCE(o.filled_qty, 0), i.updated_ts_ms FROM intents i LEFT JOIN"
                f" orders o USING(client_order_id) WHERE i.status IN ({marks}) ORDER BY i.created_ts_ms",
                OPEN_INTENT_STATES).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"known": False, "why": f"journal unreadable: {exc}", "rows": []}
    keys = ("client_order_id", "cycle_id", "symbol", "side", "qty", "ref_price", "intent", "order", "filled_qty",
            "updated_ms")
    return {"known": True, "why": "", "rows": [dict(zip(keys, r, strict=True)) for r in rows]}


def position_rows(holdings: dict[str, float], entry_prices: dict[str, float], prices: dict[str, float],
                  ) -> tuple[list[dict[str, Any]], float]:
    """(one row per held symbol: qty, entry, newest price, value, P&L; the value of them all) for the page and
    for ``aura status``, whose positions come from the journal when it can see it."""
    positions = []
    held = 0.0
    for symbol, qty in sorted(holdings.items()):
        entry = float(entry_prices.get(symbol, 0.0))
        price = prices.get(symbol)
        value = qty * price if price is not None else None
        held += value or 0.0
        pnl = (price - entry) * qty if price is not None and entry > 0 else None
        positions.append({"symbol": symbol, "qty": qty, "entry": entry, "price": price, "value": value,
                          "pnl": pnl, "pnl_pct": (price / entry - 1.0) * 100 if pnl is not None else None})
    return positions, held


def book_exposure(equity: float, cash: float) -> float:
    """The share of the book in coins, as the executor values it (its snapshot's equity less its cash): the
    positions' values at the newest prices left out any coin without a price, and with the bus unreadable all of
    them, so a book 90% in coins showed 0% (found by an audit)."""
    return (equity - cash) / equity if equity > 0 else 0.0


class DayCounts:
    """What happened in the last 24 h, by kind: the daily summary's counts.  The page's lists keep the newest
    RECENT rows (and show 20), so a busy day counted from them comes out short; this keeps one counter per minute
    (at most 1,440 of them, whatever the day's volume) and the ids counted within the window, so a message the
    bus holds twice (a snapshot the executor says again) counts once.  Exact to the minute at the window's start;
    it counts what the console read, so a console started late in a day with more than BACKLOG messages on a
    stream since its start sees the day from its first read on."""

    def __init__(self) -> None:
        self.minutes: dict[int, Counter[str]] = {}
        self.seen: dict[str, int] = {}  # id -> the minute it was counted in

    def add(self, ident: str, at_ms: int, kind: str) -> None:
        if ident in self.seen:
            return
        minute = int(at_ms) // 60_000
        self.seen[ident] = minute
        self.minutes.setdefault(minute, Counter())[kind] += 1

    def totals(self, now_ms: int) -> dict[str, int]:
        """Counts by kind of the last 24 h before ``now_ms``, most frequent first (and what is older dropped)."""
        first = (now_ms - DAY_MS) // 60_000
        old = [m for m in self.minutes if m < first]
        for minute in old:
            del self.minutes[minute]
        if old:
            self.seen = {k: m for k, m in self.seen.items() if m >= first}
        total: Counter[str] = Counter()
        for counts in self.minutes.values():
            total.update(counts)
        return dict(total.most_common())


class BusView:
    """``holder``: whose pinned public keys verify what is read (the console's, or the operator's for
    ``aura status``); ``backlog``: how far back the first read of each stream starts (a one-shot command needs
    only the recent rows, not the console's long history)."""

    def __init__(self, js: JetStreamContext, settings: Settings, health: HealthState, logger: logging.Logger, *,
                 holder: str = "console", backlog: int = BACKLOG) -> None:
        self.js, self.settings, self.health, self.logger = js, settings, health, logger
        keys = settings.keys
        self.executor_key = {"executor": trusted_key(keys, holder, "executor")}
        self.risk_key = trusted_key(keys, holder, "risk")
        self.params_keys = trusted_keys(keys, holder, PARAMS_SIGNERS)
        self.backlog = backlog
        self.timeframe = settings.timeframe
        self.bar_ms = timeframe_ms(settings.timeframe)
        self.cursors: dict[str, int] = {}
        self.snapshot: PortfolioSnapshot | None = None
        self.cycle_of_commit: OrderedDict[int, str] = OrderedDict()
        self.plans: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.fills: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.day_events, self.day_cycles = DayCounts(), DayCounts()  # the daily summary's counts (by kind, status)
        self.data: dict[str, Any] = {}
        self.panel_digest = ""
        self.prices: dict[str, float] = {}
        self.benchmarks: dict[str, PriceSeries] = {}
        for name in BENCHMARKS:  # bundled daily closes; they end where the shipped files end
            found = load_benchmark(Path(settings.replay_dir), name)
            if found is not None:
                self.benchmarks[name] = daily_benchmark_series(found[0].tolist(), found[1].tolist())
        self.params: dict[str, Any] = {"version": 0, "history": []}
        self.live_params: StrategyParams | None = None  # the newest valid version's values (None: not read yet)
        self.latch: dict[str, Any] = {}
        self.decision: dict[str, Any] | None = None
        self.regime = ""
        self.state_bucket: KeyValue | None = None

    # --- reading ----------------------------------------------------------------------------------------------

    async def _new(self, subject: str, stream: str = "") -> list[Any]:
        """Messages on ``subject`` stored since the last call (the first call starts ``backlog`` sequences back)."""
        stream = stream or stream_of(subject)
        if subject not in self.cursors:
            info = await self.js.stream_info(stream)
            self.cursors[subject] = max(0, int(info.state.last_seq) - self.backlog)
        msgs = await stored_messages(self.js, stream, subject, self.cursors[subject], limit=PER_REFRESH)
        if msgs:
            self.cursors[subject] = int(msgs[-1].seq or 0)
        return msgs

    def _unverified(self, what: str) -> None:
        self.health.inc("console_unverified", what=what)

    async def refresh(self) -> None:
        await self._snapshots()
        await self._plans()
        for msg in await self._new(FillMsg.SUBJECT):
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                f = decode(msg.data, FillMsg)
                self.fills.appendleft({"cycle_id": f.cycle_id, "symbol": f.symbol, "side": f.side, "qty": f.qty,
                                       "price": f.price, "fee": f.fee})
        for msg in await self._new(DeadLetter.SUBJECT + ".>", "AURA_DLQ"):
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                d = decode(msg.data, DeadLetter)
                self.dead_letters.appendleft({"service": msg.subject.rsplit(".", 1)[-1], "subject": d.subject,
                                              "reason": d.reason, "error": _clip(d.error), "at_ms": d.received_at_ms})
        for msg in await self._new(ServiceEvent.SUBJECT + ".>", "AURA_EVENTS"):
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                e = decode(msg.data, ServiceEvent)
                self.events.appendleft({"service": msg.subject.rsplit(".", 1)[-1], "kind": e.kind,
                                        "severity": e.severity, "text": _clip(e.text), "at_ms": e.at_ms})
                self.day_events.add(e.event_id, e.at_ms, e.kind)
        await self._market()
        await self._params()
        await self._state()

    async def _snapshots(self) -> None:
        for msg in await self._new(PortfolioSnapshot.SUBJECT):
            try:
                snap = decode(msg.data, PortfolioSnapshot)
                verify_struct(snap, self.executor_key)
            except (ContractError, SignatureError):
                self._unverified("snapshot")
                continue
            self.cycle_of_commit[int(snap.committed_at_ms)] = snap.cycle_id
            if as_of_of_cycle(snap.cycle_id) is not None:  # a bar's cycle (not the genesis, a tick, an adoption)
                self.day_cycles.add(snap.snapshot_id, snap.committed_at_ms, snap.status)
            while len(self.cycle_of_commit) > COMMITS_KEPT:
                self.cycle_of_commit.popitem(last=False)
            self.snapshot = snap

    async def _plans(self) -> None:
        for msg in await self._new(PLANS_FILTER, stream_of(ApprovedPlan.SUBJECT)):
            if msg.subject == ApprovedPlan.SUBJECT:
                try:
                    signed = decode(msg.data, ApprovedPlan)
                    verify_plan(signed, self.risk_key)
                except (ContractError, SignatureError):
                    self._unverified("plan")
                    continue
                plan = signed.plan
                self.plans.appendleft({"kind": "plan", "cycle_id": plan.cycle_id, "gate": plan.gate,
                                       "halted": plan.halted, "legs": [f"{leg.side} {leg.qty:g} {leg.symbol}"
                                                                       for leg in plan.legs][:12],
                                       "reasons": [_clip(r, 160) for r in plan.reasons][:8],
                                       "params_version": plan.params_version, "at_ms": signed.emitted_at_ms})
            else:
                with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                    aborted = decode(msg.data, CycleAborted)
                    stage = msg.subject.rsplit(".", 1)[-1]  # the subject, not the message, says who sent it
                    self.plans.appendleft({"kind": "aborted", "cycle_id": aborted.cycle_id,
                                           "gate": f"aborted by {stage}", "halted": False, "legs": [],
                                           "reasons": [_clip(aborted.reason)], "params_version": None, "at_ms": 0})

    async def _market(self) -> None:
        raw = await last_message(self.js, DataReady.SUBJECT)
        if raw is not None:
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                ready = decode(raw, DataReady)
                self.data["ready"] = {"cycle_id": ready.cycle_id, "as_of_ms": ready.as_of_ms,
                                      "symbols": len(ready.symbols)}
                if ready.digest != self.panel_digest:
                    await self._panel(ready.digest)
        stale = await last_message(self.js, DataStale.SUBJECT)
        if stale is not None:
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                s = decode(stale, DataStale)
                self.data["stale"] = {"cycle_id": s.cycle_id, "reason": _clip(s.reason), "as_of_ms": s.as_of_ms}
        target = await last_message(self.js, TargetPortfolio.SUBJECT)
        if target is not None:
            with contextlib.suppress(ContractError):  # malformed: the sender's problem, skip it
                self.regime = decode(target, TargetPortfolio).regime

    async def _panel(self, digest: str) -> None:
        """Prices and BTC's closes from the candle object the newest DataReady names (digest-checked)."""
        try:
            blob = await verified_candles(self.js, digest)
        except NotFoundError:  # expired from the object store: keep the last prices
            return
        except ObjectTooLarge:
            blob = None
        if blob is None:
            self._unverified("candles")
            return
        panel = decode_panel(blob)
        self.panel_digest = digest
        for j, symbol in enumerate(panel.symbols):
            column = panel.close[:, j]
            valid = [float(c) for c in column if c == c and c > 0]
            if valid:
                self.prices[symbol] = valid[-1]
            if symbol == BTC:
                self.benchmarks["BTC"] = candle_series(panel.timestamps.tolist(), column.tolist(), self.bar_ms)

    async def _params(self) -> None:
        doc: ParamsDocument | None
        try:
            # With the system's timeframe, as signal and risk read it: a version counted in other bars is refused.
            params, version, doc = await read_version(self.js, self.params_keys, timeframe=self.timeframe,
                                                      max_loss_bound=self.settings.max_loss_bound)
            refused = ""
        except ParamsError as exc:
            refused = _clip(str(exc))
            if refused == self.params.get("refused") and self.params.get("history"):
                return  # the same refusal as the last read: what is in force has not changed
        else:
            if version == self.params.get("version") and self.params.get("history"):
                self.live_params = params
                return
        stored = await history(self.js, self.params_keys, self.settings.max_loss_bound)
        if refused:  # signal and risk keep the newest valid version for their bars (ParamsTracker): so does this
            version, doc = last_valid(stored, self.timeframe)
            params = doc.params if doc is not None else default_params(self.timeframe)
        self.live_params = params
        rows = [{"version": v, "promoted_by": d.promoted_by if d else "", "reason": _clip(d.reason if d else why),
                 "at_ms": d.promoted_at_ms if d else 0, "valid": d is not None,
                 "timeframe": document_timeframe(d) if d else ""}
                for v, d, why in stored]
        self.params = {"version": version, "promoted_by": doc.promoted_by if doc else "defaults",
                       "reason": _clip(doc.reason) if doc else "", "at_ms": doc.promoted_at_ms if doc else 0,
                       "history": rows[-20:][::-1], **({"refused": refused} if refused else {})}

    async def _state(self) -> None:
        if self.state_bucket is None:
            self.state_bucket = await state_kv(self.js)
        kv = self.state_bucket
        latch, _, problem = await read_latch(self.js, self.risk_key)
        unverifiable = bool(problem) or latch.reset_by == UNVERIFIABLE_BY  # its reset_at_ms: when it was stored
        # ``reason``: the last reset's note (or what did not verify), not why it latched (``capped``, else drawdown)
        self.latch = {"halted": latch.halted, "cycle_id": latch.cycle_id, "drawdown": latch.drawdown,
                      "latched_at_ms": latch.latched_at_ms, "rearm_at_ms": latch.rearm_at_ms, "capped": latch.capped,
                      "unverifiable": unverifiable, "reset_at_ms": 0 if unverifiable else latch.reset_at_ms,
                      "reset_by": "" if unverifiable else latch.reset_by, "reason": _clip(problem or latch.reason)}
        raw, _ = await kv_get(kv, DECISION_KEY)
        if raw is None:  # never written, or deleted since: no decision to show (not the last one read)
            self.decision = None
            return
        try:
            doc = decode_document(raw)
        except msgspec.DecodeError:
            doc = {"unreadable": _clip(raw.decode(errors="replace"))}
        self.decision = doc if isinstance(doc, dict) else {"value": _clip(str(doc))}

    # --- the page's JSON --------------------------------------------------------------------------------------

    def portfolio(self) -> dict[str, Any]:
        snap = self.snapshot
        if snap is None:
            return {}
        positions, _ = position_rows(snap.holdings, snap.entry_prices, self.prices)
        # The snapshot's points are its bar cycles; the equity now (after a tick's exit, say) is measured too.
        history = [*snap.equity_history, snap.equity]
        return {"cycle_id": snap.cycle_id, "status": snap.status, "equity": snap.equity, "cash": snap.cash,
                "committed_at_ms": snap.committed_at_ms, "positions": positions,
                "exposure": book_exposure(snap.equity, snap.cash),
                "drawdown": drawdown(history)[-1]}

    def state(self) -> dict[str, Any]:
        snap = self.snapshot
        now_ms = int(time.time() * 1000)
        chart = equity_chart(snap.equity_history, snap.equity_history_ms, self.cycle_of_commit, self.bar_ms,
                             self.benchmarks) if snap is not None and snap.equity_history else None
        return {"portfolio": self.portfolio(), "chart": chart, "plans": list(self.plans)[:20],
                "fills": list(self.fills)[:20], "dead_letters": list(self.dead_letters)[:20],
                "events": list(self.events)[:20], "data": self.data, "regime": self.regime, "params": self.params,
                "latch": self.latch,
                "optimizer": {"decision": self.decision, "source": f"KV aura_state key {DECISION_KEY}",
                              "summary": decision_summary(self.decision) if self.decision is not None else None},
                "last_24h": {"events": self.day_events.totals(now_ms), "cycles": self.day_cycles.totals(now_ms)},
                "refreshed_at_ms": now_ms}

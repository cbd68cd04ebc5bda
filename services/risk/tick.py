"""The risk tick between signal cycles, as pure functions: SL/TP and drawdown on the latest prices.

The gates themselves are the strategy's (``aura.strategy.pipeline.risk_plan`` with ``targets=None`` runs the
kill-switch and the stops, ``aura.strategy.risk_gates.stop_trigger`` decides each stop): this module only adds
what a tick needs around them, so the tick can never decide differently from a cycle on the same inputs:

* ``sl_checks``: one line per position for the [SL_CHECK] log (entry, price, levels, verdict).
* ``evaluate_tick``: the sync guard on the price read first (a held symbol missing from a ticker answer right
  after an error must not be valued at nothing and trip the kill-switch), then ``risk_plan``.
* ``latch_after``: whether the kill-switch is latched after a decision (``services.risk.latch.after_decision``
  keeps the whole latch: when it latched, whether it is capped, when it re-arms).
* ``Latch`` / ``portfolio_state``: a reset, or a re-arm after the cooldown, measures the kill-switch's rolling
  drawdown from that moment on, or the pre-crash peak still inside the window would trip it again at once;
  ``kill_switch_cap`` measures from the last operator reset (its peak kept in the latch).
* ``tick_target``: the synthetic target a tick plan is built from, so it goes through the *same* signed
  ``PlanBody`` path as a cycle plan, with a deterministic cycle id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aura.strategy.params import StrategyParams, params_digest
from aura.strategy.pipeline import PortfolioState, RiskOutcome, risk_plan
from aura.strategy.risk_gates import NO_STOP, STOP_LOSS, stop_trigger
from aura.strategy.types import MarketRule
from services.risk.sync_guard import CONFIRMED, IN_SYNC, GuardState, Verdict, observe
from shared.contracts import MarketRuleMsg, PortfolioSnapshot, TargetPortfolio, content_id
from shared.cycles import TICK_PREFIX

# A missing price must be missing on this many consecutive ticks before the tick acts without it.
PRICE_CONFIRM_READS = 3


@dataclass(frozen=True)
class Latch:
    """The kill-switch latch as the decision needs it (from ``risk.halted``, ``services.risk.latch.LatchDoc``)."""

    halted: bool = False
    reset_at_ms: int = 0  # the last operator reset: kill_switch_cap's drawdown counts equity committed after it
    equity_since_ms: int = 0  # the rolling drawdown counts equity committed after this (reset or re-arm)
    peak_equity: float = 0.0  # highest committed equity since the reset, as the latch recorded it
    capped: bool = False
    latched_at_ms: int = 0  # data-bar time it latched at (0: unknown)

    @classmethod
    def from_doc(cls, doc: dict[str, Any] | None) -> Latch:
        doc = doc or {}
        return cls(halted=bool(doc.get("halted")), reset_at_ms=int(doc.get("reset_at_ms") or 0),
                   equity_since_ms=int(doc.get("equity_since_ms") or 0),
                   peak_equity=float(doc.get("peak_equity") or 0.0), capped=bool(doc.get("capped")),
                   latched_at_ms=int(doc.get("latched_at_ms") or 0))

    @property
    def window_since_ms(self) -> int:
        return max(self.reset_at_ms, self.equity_since_ms)


def latch_view(doc: Any) -> Latch:
    """The decision's view of a ``LatchDoc`` (any object with its fields)."""
    return Latch(halted=doc.halted, reset_at_ms=doc.reset_at_ms, equity_since_ms=doc.equity_since_ms,
                 peak_equity=doc.peak_equity, capped=doc.capped, latched_at_ms=doc.latched_at_ms)


@dataclass(frozen=True)
class SlCheck:
    symbol: str
    qty: float
    entry: float
    price: float  # nan when this tick has no price for the symbol
    stop_level: float  # nan when the stop-loss is disabled
    take_level: float  # nan when the take-profit is disabled
    verdict: str  # "hold" | "stop_loss" | "take_profit" | "no_price" | "no_entry"


@dataclass(frozen=True)
class TickDecision:
    action: str  # "none" | "exit" (stops hit) | "liquidate" (kill-switch / latched halt) | "wait" (guard)
    outcome: RiskOutcome | None  # None when the guard held the tick back
    checks: list[SlCheck]
    price_verdict: Verdict
    guard: GuardState  # fold into the next tick


def sl_checks(snapshot: PortfolioSnapshot, prices: dict[str, float], params: StrategyParams) -> list[SlCheck]:
    out = []
    for symbol, qty in sorted(snapshot.holdings.items()):
        entry = float(snapshot.entry_prices.get(symbol, math.nan))
        price = float(prices.get(symbol, math.nan))
        stop = entry * (1.0 - params.stop_loss) if params.stop_loss > 0 and entry > 0 else math.nan
        take = entry * (1.0 + params.take_profit) if params.take_profit > 0 and entry > 0 else math.nan
        if not price > 0:
            verdict = "no_price"
        elif not entry > 0:
            verdict = "no_entry"
        else:
            kind, _ = stop_trigger(entry, price, price, price, params.stop_loss, params.take_profit)
            verdict = "hold" if kind == NO_STOP else ("stop_loss" if kind == STOP_LOSS else "take_profit")
        out.append(SlCheck(symbol, float(qty), entry, price, stop, take, verdict))
    return out


def latch_after(halted_before: bool, outcome: RiskOutcome) -> bool:
    """The kill-switch latch after a decision: once set it stays set until it re-arms (after its cooldown, before
    the next decision) or ``aura risk reset`` clears it."""
    return halted_before or outcome.gate == "kill_switch"


def evaluate_tick(snapshot: PortfolioSnapshot, prices: dict[str, float] | None, rules: dict[str, MarketRule],
                  params: StrategyParams, cost_rate: float, latch: Latch, guard: GuardState,
                  marks: dict[str, float], volumes: dict[str, float] | None = None,
                  max_participation: float = math.inf,
                  sent: dict[tuple[str, str], float] | None = None, dust_usdt: float = 0.0) -> TickDecision:
    """Decide one tick. ``prices=None``: the read failed. ``marks``: last good price per symbol.

    A held symbol without a price is a shortfall for the sync guard: until it is confirmed on consecutive
    ticks the tick does nothing (``wait``).  Once confirmed (a delisted or halted market), the tick runs with
    that symbol valued at its last known mark, never at zero: a missing quote is not a loss.  ``volumes``: the
    newest bar's, which cap the exits at ``max_participation`` as they cap a cycle's legs, less what ``sent``
    says earlier plans on that bar sent.  ``dust_usdt``: a holding worth no more at its last mark is not expected
    to be priced (an exit's sliver below one lot step of a pair delisted since: unpriceable and unsellable, it
    would keep every tick "failed" and /readyz red for good over a few cents); it is still valued, at that mark.
    """
    fallback = {**snapshot.entry_prices, **marks}
    expected = dict.fromkeys(snapshot.held_beyond_dust(fallback, dust_usdt), 1.0)
    usable = {s: float(p) for s, p in (prices or {}).items() if p and p > 0}
    verdict, guard = observe(guard, expected, None if prices is None else dict.fromkeys(usable, 1.0),
                             confirm_reads=PRICE_CONFIRM_READS)
    checks = sl_checks(snapshot, prices or {}, params)
    if verdict.status not in (IN_SYNC, CONFIRMED):
        return TickDecision("wait", None, checks, verdict, guard)
    outcome = risk_plan(None, portfolio_state(snapshot, latch), usable, rules, params, cost_rate, marks=fallback,
                        volumes=volumes, max_participation=max_participation, sent=sent)
    action = "none" if not outcome.legs else ("liquidate" if outcome.halted else "exit")
    return TickDecision(action, outcome, checks, verdict, guard)


def equity_since_reset(snap: PortfolioSnapshot, reset_at_ms: int) -> tuple[float, ...]:
    """The equity points the kill-switch may look at: those committed after the last operator reset.

    Without this, ``aura risk reset`` after a liquidation would be undone at once: the book sits in cash
    25% under a peak that is still inside the rolling window, so the next cycle trips and latches again and
    trading cannot resume until that peak ages out (up to ``kill_switch_window`` cycles).  A snapshot
    without commit times (an older producer) keeps its whole history: never less protection than before.
    """
    history = tuple(snap.equity_history)
    stamps = snap.equity_history_ms
    if reset_at_ms <= 0 or len(stamps) != len(history):
        return history
    return tuple(e for e, at in zip(history, stamps, strict=True) if at > reset_at_ms)


def committed_peak(snap: PortfolioSnapshot, latch: Latch) -> float:
    """The highest equity committed since the last operator reset: the snapshot's points after it (at most
    params.equity_points) and the peak the latch recorded (0.0 if neither has any)."""
    return max((latch.peak_equity, *equity_since_reset(snap, latch.reset_at_ms)))


def portfolio_state(snap: PortfolioSnapshot, latch: Latch) -> PortfolioState:
    """The executor's snapshot as the decision core's portfolio (cycle plans and ticks alike)."""
    return PortfolioState(cash=snap.cash, holdings=dict(snap.holdings), entry_prices=dict(snap.entry_prices),
                          equity_history=equity_since_reset(snap, latch.window_since_ms), halted=latch.halted,
                          peak_equity=committed_peak(snap, latch))


def tick_target(snapshot: PortfolioSnapshot, prices: dict[str, float], markets: list[MarketRuleMsg],
                params: StrategyParams, params_version: int, as_of_ms: int, data_digest: str) -> TargetPortfolio:
    """The target a tick plan is built from: no weights (the tick never buys), the latest prices, and a
    cycle id that is a content hash of what the tick saw, so a repeated tick on the same inputs makes the same
    plan (JetStream dedup and the executor's journal drop it) and the executor closes it like any cycle."""
    seen = {"basis": snapshot.snapshot_id, "prices": prices, "params_version": params_version, "as_of": as_of_ms}
    cycle_id = content_id(seen, prefix=TICK_PREFIX, length=16)
    body = {"cycle_id": cycle_id, "as_of_ms": as_of_ms, "data_digest": data_digest, "params_version": params_version,
            "params_digest": params_digest(params), "regime": "tick", "weights": {}, "prices": prices,
            "markets": markets}
    return TargetPortfolio(target_id=content_id(body, prefix="t-"), **body)  # type: ignore[arg-type]

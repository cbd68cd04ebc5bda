"""Reference backtest: the live decision functions, called bar by bar.

At every bar ``t`` of the run, in this order:

1. legs planned at the previous close fill at this bar's open (``fill_at="open"``), each at most
   ``max_participation`` of the bar's volume, with square-root impact on top of the slippage (execution.py);
2. a latched kill-switch whose cooldown has run re-arms (risk_gates.rearm_due), its drawdown measured from here;
3. the decision at the close of ``t``: on a signal bar ``compute_targets(panel.upto(t), ...)``, then on every
   bar ``risk_plan`` (kill-switch and stops run on every bar, the rebalance only on signal bars), with the
   bar's open/high/low so that stops are intrabar;
4. stop exits fill at their trigger price inside bar ``t``; the rebalance legs wait for the next open (or fill
   at this close with ``fill_at="close"``);
5. a symbol whose data ends at ``t`` while the run goes on is sold at its last close ("data_end", e.g. MATIC
   ends 2023-04-18 in the shared data because the *sources* end, not the market).  Holding it on would mean
   valuing it at a price that no longer exists; this uses one bar of foresight about the series' end (not
   about any price) and is reported as its own trade reason;
6. equity is marked at the close (a held symbol without a close on a bar keeps its last close as the mark).

The decision at ``t`` only ever sees ``panel.upto(t)`` and fills happen strictly afterwards: no lookahead.
The fast path (fast.py) implements this same loop in numba and a test pins both to identical trades.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aura.backtest.data import last_valid_index
from aura.backtest.execution import (
    DEFAULT_MAX_PARTICIPATION,
    average_entry,
    default_impact,
    fill_leg,
    impact_slippage,
    mark_row,
    remaining_after_sell,
    sell_fill,
    tradable,
)
from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, RiskOutcome, portfolio_value, risk_plan
from aura.strategy.rebalance import R_DATA_END, REASONS
from aura.strategy.regime import REGIME_NAMES
from aura.strategy.risk_gates import kill_switch_after, rearm_due
from aura.strategy.schedule import is_decision_bar
from aura.strategy.signal import compute_targets
from aura.strategy.state import SignalState
from aura.strategy.types import Leg, MarketRule, Panel, Targets

AT_OPEN, AT_INTRABAR, AT_CLOSE = 0, 1, 2
FILL_AT = ("open", "intrabar", "close")


def check_execution_model(max_participation: float, impact_coefficient: float | None,
                          names: tuple[str, str] = ("max_participation", "impact_coefficient")) -> None:
    """The participation cap and impact coefficient a backtest can run with; ``names``: what the caller calls
    them in its error (the CLI its options, checked before any data is read)."""
    if not max_participation > 0:
        raise ValueError(f"{names[0]} must be > 0 (inf: no cap), not {max_participation!r}")
    if impact_coefficient is not None and not impact_coefficient >= 0:
        raise ValueError(f"{names[1]} must be >= 0, not {impact_coefficient!r}")


@dataclass(frozen=True)
class BacktestConfig:
    bar_ms: int  # bar length of the timeframe (schedule.timeframe_ms)
    initial_cash: float = 10_000.0
    fee_rate: float = 0.001  # Binance spot taker
    slippage: float = 0.0005  # per side, against the trader: the half spread (impact comes on top)
    fill_at: str = "open"  # "open": next bar's open (default); "close": the decision bar's close
    start: int = 0  # first bar of the run (earlier bars are warm-up history only)
    end: int = -1  # last bar of the run, inclusive (-1: the panel's last bar)
    # Capacity: a leg fills at most this share of its bar's volume, the rest is dropped (inf: no cap).
    max_participation: float = DEFAULT_MAX_PARTICIPATION
    # Square-root impact, slippage + coefficient * sqrt(participation); None: execution.default_impact(bar_ms).
    impact_coefficient: float | None = None

    def __post_init__(self) -> None:
        if self.fill_at not in ("open", "close"):
            raise ValueError(f"fill_at must be 'open' or 'close', not {self.fill_at!r}")
        check_execution_model(self.max_participation, self.impact_coefficient)

    @property
    def impact(self) -> float:
        """The impact coefficient in force (the timeframe's default unless one was given)."""
        return default_impact(self.bar_ms) if self.impact_coefficient is None else float(self.impact_coefficient)


@dataclass
class Trades:
    """Every fill, in execution order, one column per field (lists in the reference path, numpy arrays from
    the fast path: compare them with ``rows()``)."""

    bar: Any = field(default_factory=list)
    symbol: Any = field(default_factory=list)  # column index in the panel
    side: Any = field(default_factory=list)  # +1 buy, -1 sell
    qty: Any = field(default_factory=list)
    price: Any = field(default_factory=list)  # execution price, slippage included
    fee: Any = field(default_factory=list)
    reason: Any = field(default_factory=list)  # code into rebalance.REASONS
    at: Any = field(default_factory=list)  # code into FILL_AT

    def add(self, bar: int, sym: int, side: int, qty: float, px: float, fee: float, reason: int, at: int) -> None:
        self.bar.append(bar)
        self.symbol.append(sym)
        self.side.append(side)
        self.qty.append(qty)
        self.price.append(px)
        self.fee.append(fee)
        self.reason.append(reason)
        self.at.append(at)

    def __len__(self) -> int:
        return len(self.bar)

    def rows(self) -> list[tuple[int, int, int, float, float, float, int, int]]:
        """Plain Python rows (bar, symbol, side, qty, price, fee, reason, at), exact floats."""
        return [(int(b), int(s), int(d), float(q), float(p), float(f), int(r), int(a)) for b, s, d, q, p, f, r, a in
                zip(self.bar, self.symbol, self.side, self.qty, self.price, self.fee, self.reason, self.at,
                    strict=True)]


@dataclass
class BacktestResult:
    symbols: tuple[str, ...]
    timestamps: np.ndarray  # bar open times of the run's bars (equity is measured at each bar's close)
    equity: np.ndarray
    cash: np.ndarray
    regime: np.ndarray  # int code into regime.REGIME_NAMES, per bar (regime in force after that bar)
    trades: Trades
    bar_ms: int
    halted_bar: int = -1  # run bar index where the kill-switch first latched (-1: never)
    skipped_legs: int = 0  # legs that found no tradable bar to fill on
    first_bar: int = 0  # panel row of the run's first bar (trade ``bar`` values are panel rows)
    halted: np.ndarray | None = None  # per run bar: the kill-switch latched after that bar's decision
    capped_bar: int = -1  # run bar index where kill_switch_cap latched it for good (-1: never)
    capped_legs: int = 0  # legs the participation cap cut (filled in part or not at all)
    capped_notional: float = 0.0  # what the cap dropped, at the legs' reference prices (USDT)

    def bar_time(self, bar: int) -> int:
        """Open time (ms) of a panel row inside the run."""
        return int(self.timestamps[bar - self.first_bar])

    @property
    def halts(self) -> int:
        """How many times the kill-switch latched."""
        h = self.halted_mask
        return int(np.sum(h[1:] & ~h[:-1]) + (h[0] if len(h) else 0))

    @property
    def rearms(self) -> int:
        """How many times it re-armed by itself (after its cooldown)."""
        h = self.halted_mask
        return int(np.sum(h[:-1] & ~h[1:]))

    @property
    def halted_mask(self) -> np.ndarray:
        return self.halted if self.halted is not None else np.zeros(len(self.equity), dtype=np.bool_)

    @property
    def exposure(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.equity > 0, 1.0 - self.cash / self.equity, 0.0)


@dataclass(frozen=True)
class Cycle:
    """What one bar's decision looked like (kept when ``record_cycles`` is on, for parity tests)."""

    bar: int
    state: PortfolioState
    signal_state_in: SignalState | None
    targets: Targets | None
    outcome: RiskOutcome


class _Book:
    """Cash, holdings and entry prices, updated by fills (dicts keyed by column index)."""

    def __init__(self, cash: float) -> None:
        self.cash = cash
        self.hold: dict[int, float] = {}
        self.entry: dict[int, float] = {}

    def holdings_array(self, n: int) -> np.ndarray:
        out = np.zeros(n)
        for j, q in self.hold.items():
            out[j] = q
        return out


@dataclass
class _Counts:
    skipped: int = 0  # legs that could not fill at all
    capped: int = 0  # legs the participation cap cut
    capped_notional: float = 0.0


def _execute(book: _Book, leg_j: int, side: int, qty: float, ref_px: float, volume: float, reason: int, at: int,
             bar: int, cfg: BacktestConfig, impact: float, rule: MarketRule, trades: Trades, counts: _Counts) -> None:
    """One leg on a tradable bar through execution.fill_leg (the fast kernel makes the same call)."""
    held = book.hold.get(leg_j, 0.0)
    filled, px, cash_delta, fee, dropped = fill_leg(
        side, qty, held, ref_px, volume, book.cash, rule.step_size, rule.min_qty, rule.min_notional, cfg.slippage,
        impact, cfg.max_participation, cfg.fee_rate)
    if dropped > 0:
        counts.capped += 1
        counts.capped_notional += dropped * ref_px
    if not filled > 0:
        counts.skipped += 0 if dropped > 0 else 1
        return
    book.cash += cash_delta
    if side < 0:
        rest = remaining_after_sell(held, filled, rule.step_size)
        if rest > 0:
            book.hold[leg_j] = rest
        else:
            book.hold.pop(leg_j, None)
            book.entry.pop(leg_j, None)
    else:
        book.entry[leg_j] = average_entry(held, book.entry.get(leg_j, 0.0), filled, px)
        book.hold[leg_j] = held + filled
    trades.add(bar, leg_j, side, filled, px, fee, reason, at)


def run_reference(panel: Panel, params: StrategyParams, cfg: BacktestConfig, rules: dict[str, MarketRule],
                  *, record_cycles: bool = False, progress: Callable[[int, int], None] | None = None,
                  ) -> tuple[BacktestResult, list[Cycle]]:
    """Bar-by-bar backtest through ``compute_targets`` and ``risk_plan``.  Returns the result and, with
    ``record_cycles``, every bar's (portfolio state, targets, outcome) for the live-parity helper."""
    syms = panel.symbols
    if list(syms) != sorted(syms):
        raise ValueError("panel columns must be in symbol-name order (load_panel does this)")
    n = len(syms)
    t_len = len(panel.timestamps)
    end = t_len - 1 if cfg.end < 0 else min(cfg.end, t_len - 1)
    start = max(0, cfg.start)
    last = last_valid_index(panel)
    leg_rules = [rules.get(s) for s in syms]
    col = {s: j for j, s in enumerate(syms)}
    book = _Book(cfg.initial_cash)
    trades = Trades()
    impact = cfg.impact
    eq_hist: deque[float] = deque(maxlen=max(1, params.kill_switch_window - 1))
    peak = 0.0  # highest decision equity of the run: the backtest's "since the last reset" (it has no reset)
    halted = capped = False
    latched_ms = 0
    halted_bar = capped_bar = -1
    sig_state: SignalState | None = None
    regime = 0
    pending: list[Leg] = []
    counts = _Counts()
    mark = np.full(n, np.nan)
    run_len = max(0, end - start + 1)
    equity = np.zeros(run_len)
    cash = np.zeros(run_len)
    regimes = np.zeros(run_len, dtype=np.int8)
    halted_mask = np.zeros(run_len, dtype=np.bool_)
    cycles: list[Cycle] = []

    def execute(j: int, side: int, qty: float, ref_px: float, reason: int, at: int, t: int) -> None:
        _execute(book, j, side, qty, ref_px, float(panel.volume[t, j]), reason, at, t, cfg, impact, leg_rules[j],
                 trades, counts)

    for t in range(start, end + 1):
        i = t - start
        now_ms = int(panel.timestamps[t])
        # 1. fills at this bar's open
        for leg in pending:
            j = col[leg.symbol]
            if tradable(panel.open[t, j], panel.volume[t, j]):
                execute(j, 1 if leg.side == "buy" else -1, leg.qty, float(panel.open[t, j]),
                        REASONS.index(leg.reason), AT_OPEN, t)
            else:
                counts.skipped += 1
        pending = []
        # 2. a latched kill-switch whose cooldown has run re-arms, drawdown measured from here on
        if rearm_due(halted, capped, latched_ms, now_ms, params.kill_switch_cooldown, cfg.bar_ms):
            halted = False
            eq_hist.clear()
        # 3. decision at the close of t
        targets = None
        sig_in = sig_state
        if is_decision_bar(now_ms, cfg.bar_ms, params.rebalance_every):
            targets, sig_state = compute_targets(panel.upto(t), params, sig_state)
            regime = REGIME_NAMES.index(targets.regime)
        mark_row(panel.close[t], mark)
        close_t, open_t, high_t, low_t = panel.close[t], panel.open[t], panel.high[t], panel.low[t]
        prices = {syms[j]: float(close_t[j]) for j in range(n) if close_t[j] > 0}
        bar_ok = [j for j in range(n) if close_t[j] > 0 and open_t[j] > 0]
        state = PortfolioState(
            cash=book.cash,
            holdings={syms[j]: q for j, q in book.hold.items()},
            entry_prices={syms[j]: e for j, e in book.entry.items()},
            equity_history=tuple(eq_hist),
            halted=halted,
            peak_equity=peak,
        )
        outcome = risk_plan(targets, state, prices, rules, params, cfg.fee_rate,
                            opens={syms[j]: float(open_t[j]) for j in bar_ok},
                            highs={syms[j]: float(high_t[j]) for j in bar_ok},
                            lows={syms[j]: float(low_t[j]) for j in bar_ok},
                            marks={syms[j]: float(mark[j]) for j in book.hold})
        if record_cycles:
            cycles.append(Cycle(t, state, sig_in, targets, outcome))
        eq_hist.append(outcome.equity)
        peak = max(peak, outcome.equity)
        if outcome.halted and halted_bar < 0:
            halted_bar = i
        halted, capped, latched_ms = kill_switch_after(halted, outcome.halted, capped, outcome.capped, latched_ms,
                                                       now_ms)
        if capped and capped_bar < 0:
            capped_bar = i
        halted_mask[i] = halted
        # 4. stops fill inside this bar; the rest at the next open or at this close
        for leg in outcome.legs:
            j = col[leg.symbol]
            side = 1 if leg.side == "buy" else -1
            is_stop = leg.reason in ("stop_loss", "take_profit")
            if not (is_stop or cfg.fill_at == "close"):
                pending.append(leg)
            elif tradable(close_t[j], panel.volume[t, j]):
                execute(j, side, leg.qty, leg.ref_price if is_stop else float(close_t[j]),
                        REASONS.index(leg.reason), AT_INTRABAR if is_stop else AT_CLOSE, t)
            else:
                counts.skipped += 1
        # 5. series that end here while the run goes on: sell at the last close (never capped: nothing could
        #    sell the rest later; it pays the impact of its size)
        if t < t_len - 1:
            for j in sorted(book.hold):
                if last[j] == t:
                    qty = book.hold[j]
                    slip = impact_slippage(qty, float(panel.volume[t, j]), cfg.slippage, impact)
                    px, proceeds, fee = sell_fill(qty, float(close_t[j]), slip, cfg.fee_rate)
                    book.cash += proceeds
                    del book.hold[j]
                    book.entry.pop(j, None)
                    trades.add(t, j, -1, qty, px, fee, R_DATA_END, AT_CLOSE)
        # 6. mark to market at the close
        equity[i] = portfolio_value(book.cash, book.holdings_array(n), close_t, mark)
        cash[i] = book.cash
        regimes[i] = regime
        if progress is not None:
            progress(i + 1, run_len)
    result = BacktestResult(syms, panel.timestamps[start:end + 1].copy(), equity, cash, regimes, trades, cfg.bar_ms,
                            halted_bar, counts.skipped, start, halted_mask, capped_bar, counts.capped,
                            counts.capped_notional)
    return result, cycles


class StderrProgress:
    """Progress on stderr about every 5% (long reference runs on hourly data take minutes)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.t0 = time.perf_counter()
        self.next_pct = 0

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // max(1, total)
        if pct >= self.next_pct or done == total:
            elapsed = time.perf_counter() - self.t0
            print(f"{self.label}: {pct:3d}% ({done}/{total} bars, {elapsed:.1f}s)", file=sys.stderr, flush=True)
            self.next_pct = pct + 5


def trades_digest(result: BacktestResult) -> str:
    """SHA-256 over every fill of a run (symbol name, bar open time, side, exact floats as hex, reason, when).

    Any behaviour change shows up here, which is why a test pins it (see tests/backtest/test_regression_pin.py).
    """
    h = hashlib.sha256()
    for bar, sym, side, qty, px, fee, reason, at in result.trades.rows():
        h.update(f"{result.symbols[sym]},{result.bar_time(bar)},{side},{qty.hex()},{px.hex()},{fee.hex()},{REASONS[reason]},"
                 f"{FILL_AT[at]}\n".encode())
    return h.hexdigest()

"""One typed parameter set: every knob has a name, a default and a range the optimizer may vary.

Lookbacks and windows are counted in *bars* of the timeframe being traded (a 30 on 1d is 30 days, on 1h it is
30 hours).  Choices are small integers so that the optimizer can treat the whole space as numbers:
``normalization`` 0 = cross-sectional percentile ranks, 1 = z-scores; ``weighting`` 0 = equal, 1 = inverse
volatility; ``sizing`` 0 = fixed fraction of the regime exposure, 1 = capped fractional Kelly.
A value of 0 disables ``stop_loss``, ``take_profit`` and ``cost_benefit_margin``; a ``kill_switch_drawdown``
of 1.0 can never trigger (equity would have to reach zero); a ``kill_switch_cap`` of 1.0 is off.

The kill-switch policy is modelled on freqtrade's MaxDrawdown protection (a drawdown over a lookback stops
trading for a stop duration): ``kill_switch_window`` is the lookback, ``kill_switch_cooldown`` the stop
duration in bars (0: no duration, latched until ``aura risk reset``).  After the cooldown the switch re-arms
with its drawdown measured from the re-arm on.  ``kill_switch_cap`` bounds what a chain of re-arms can lose:
once the drawdown since the last operator reset reaches it, the switch stays latched whatever the cooldown.

Timeframes.  The defaults and ``PARAM_RANGES`` are counted in daily bars (``PARAMS_TIMEFRAME``): read as hourly
bars, a 30-day momentum becomes a 30-hour one (on 1h the defaults lost 75.8% in a backtest).  ``rescale`` turns
a parameter set made for one timeframe into the same durations on another (``BAR_COUNTED`` fields multiplied
by the ratio of bar lengths, ``PER_BAR`` amounts divided by it), and ``param_ranges(timeframe)`` widens the
bar-counted bounds so that both the daily values and their scaled counterparts are valid there.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import msgspec


class StrategyParams(msgspec.Struct, frozen=True, kw_only=True):
    # --- screen / universe -------------------------------------------------------------------------------
    momentum_lookback: int = 30  # short momentum horizon; also the screen's momentum and the return forecast
    momentum_long_lookback: int = 90
    min_history: int = 60  # valid closes a symbol needs before it may be scored (new listings wait)
    sma_length: int = 50  # trend filter (close > SMA) and market breadth
    drawdown_window: int = 90  # rolling high for the drawdown screen and penalty
    vol_window: int = 30  # log-return volatility for vol-adjusted return, inverse-vol weights and Kelly
    liquidity_window: int = 30  # mean quote volume (close * volume) over this many bars
    min_quote_volume: float = 1_000_000.0  # USDT per bar
    screen_min_momentum: float = 0.0  # short momentum must exceed this
    screen_max_drawdown: float = 0.6  # drawdown from the rolling high must not exceed this
    # --- composite score -----------------------------------------------------------------------------------
    w_mom_short: float = 1.0
    w_mom_long: float = 0.5
    w_trend: float = 0.5
    w_vol_adj: float = 0.5
    w_drawdown: float = 0.25  # a penalty: subtracted
    normalization: int = 0  # 0 ranks, 1 z-scores
    # --- robust voting -------------------------------------------------------------------------------------
    vote_offsets: int = 3  # snapshots t, t-step, ..., t-(n-1)*step are ranked and their ranks summed (Borda)
    vote_step: int = 1
    # --- regime --------------------------------------------------------------------------------------------
    regime_sma: int = 100  # BTC trend: close above this SMA
    breadth_bull: float = 0.55  # share of the universe above its SMA needed for bull (with BTC up)
    breadth_bear: float = 0.35  # below this (with BTC down) it is bear
    regime_confirm: int = 2  # cycles a new regime must be seen in a row before it is adopted
    exposure_bull: float = 1.0
    exposure_sideways: float = 0.5
    exposure_bear: float = 0.0  # 0 = cash in a bear market
    # --- selector / sizing ---------------------------------------------------------------------------------
    top_k: int = 3  # names held in a bull regime
    top_k_sideways: int = 2
    top_k_bear: int = 1
    max_weight: float = 0.5  # cap per name (fraction of equity); what the cap removes stays in cash
    weighting: int = 0  # 0 equal, 1 inverse volatility
    sizing: int = 0  # 0 fixed fraction, 1 capped Kelly
    kelly_fraction: float = 0.5
    # --- risk gates ----------------------------------------------------------------------------------------
    kill_switch_drawdown: float = 0.25
    kill_switch_window: int = 90
    # Bars after which a latched switch re-arms by itself (0: latched until `aura risk reset`, as before).
    kill_switch_cooldown: int = 0
    # Drawdown since the last operator reset beyond which only an operator can clear the switch.  Off (1.0) by
    # default: with cooldown 0 the switch never re-arms, so a cap could only add a second, earlier latch and
    # change today's behaviour; it matters once a cooldown is set, and the optimizer's risk stage picks both.
    kill_switch_cap: float = 1.0
    stop_loss: float = 0.15  # exit when price <= entry * (1 - stop_loss)
    take_profit: float = 0.0  # exit when price >= entry * (1 + take_profit)
    cost_benefit_margin: float = 1.0  # trade only if expected gain >= margin * cost
    cost_benefit_horizon: int = 10  # bars over which the expected gain of a rebalance is counted
    rebalance_band: float = 0.02  # a held name's weight change smaller than this is not worth trading
    expected_slippage: float = 0.0005  # per side, used by the cost-benefit gate
    # --- execution -----------------------------------------------------------------------------------------
    min_trade_usdt: float = 10.0
    cash_buffer: float = 0.002  # fraction of target weights kept back so fills at a moved price still fit
    rebalance_every: int = 1  # signal cycles happen on bars whose index since the epoch is a multiple of this


# name -> (low, high): the optimizer's search space; defaults above always lie inside.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "momentum_lookback": (5, 180),
    "momentum_long_lookback": (10, 365),
    "min_history": (20, 365),
    "sma_length": (5, 250),
    "drawdown_window": (10, 365),
    "vol_window": (5, 180),
    "liquidity_window": (1, 180),
    "min_quote_volume": (0.0, 1e9),
    "screen_min_momentum": (-0.5, 1.0),
    "screen_max_drawdown": (0.05, 1.0),
    "w_mom_short": (0.0, 1.0),
    "w_mom_long": (0.0, 1.0),
    "w_trend": (0.0, 1.0),
    "w_vol_adj": (0.0, 1.0),
    "w_drawdown": (0.0, 1.0),
    "normalization": (0, 1),
    "vote_offsets": (1, 10),
    "vote_step": (1, 30),
    "regime_sma": (10, 365),
    "breadth_bull": (0.5, 0.95),
    "breadth_bear": (0.05, 0.5),
    "regime_confirm": (1, 5),
    "exposure_bull": (0.0, 1.0),
    "exposure_sideways": (0.0, 1.0),
    "exposure_bear": (0.0, 1.0),
    "top_k": (1, 10),
    "top_k_sideways": (1, 10),
    "top_k_bear": (1, 10),
    "max_weight": (0.05, 1.0),
    "weighting": (0, 1),
    "sizing": (0, 1),
    "kelly_fraction": (0.05, 1.0),
    "kill_switch_drawdown": (0.05, 1.0),
    "kill_switch_window": (10, 365),
    "kill_switch_cooldown": (0, 720),  # up to about two years of daily bars, a month of hourly ones
    "kill_switch_cap": (0.05, 1.0),
    "stop_loss": (0.0, 0.5),
    "take_profit": (0.0, 5.0),
    "cost_benefit_margin": (0.0, 5.0),
    "cost_benefit_horizon": (1, 60),
    "rebalance_band": (0.0, 0.5),
    "expected_slippage": (0.0, 0.01),
    "min_trade_usdt": (5.0, 1000.0),
    "cash_buffer": (0.0, 0.1),
    "rebalance_every": (1, 168),
}

FIELDS: tuple[str, ...] = StrategyParams.__struct_fields__
# Integer knobs: the optimizer must draw whole numbers for these (msgspec refuses 3.0 for an int field).
INT_PARAMS: frozenset[str] = frozenset(
    name for name, kind in StrategyParams.__annotations__.items() if kind in ("int", int)
)


# The timeframe the defaults and PARAM_RANGES count their bars in.
PARAMS_TIMEFRAME = "1d"
# Durations counted in bars (lookbacks, windows, horizons, the cycle period, the cooldown): on bars k times
# shorter they take k times as many bars.  ``regime_confirm`` and ``vote_offsets`` count signal cycles and
# snapshots, not bars: once ``rebalance_every`` is scaled a cycle lasts as long as before, so they stay.
BAR_COUNTED: tuple[str, ...] = (
    "momentum_lookback", "momentum_long_lookback", "min_history", "sma_length", "drawdown_window", "vol_window",
    "liquidity_window", "vote_step", "regime_sma", "kill_switch_window", "kill_switch_cooldown",
    "cost_benefit_horizon", "rebalance_every",
)
# Amounts per bar: a bar k times shorter trades about k times less, so the threshold is divided by k.
PER_BAR: tuple[str, ...] = ("min_quote_volume",)


def timeframe_factor(from_timeframe: str, to_timeframe: str) -> float:
    """Bars of ``to_timeframe`` in one bar of ``from_timeframe`` (1d -> 1h: 24.0; 1h -> 1d: 1/24)."""
    from aura.strategy.schedule import timeframe_ms  # lazy: schedule imports numba, this module stays light

    return timeframe_ms(from_timeframe) / timeframe_ms(to_timeframe)


def _scaled_count(value: float, factor: float) -> int:
    """A bar count times ``factor``, rounded half up (not to even: the same count always gives the same
    result); a positive count never becomes 0, which means "off" for some fields (the cooldown)."""
    if value == 0:
        return 0
    return max(1, math.floor(value * factor + 0.5))


def scale_value(name: str, value: float, factor: float) -> float:
    """One parameter's value counted in bars ``factor`` times longer than the target's (rescale's rule for one
    field: bar counts multiplied, per-bar amounts divided, everything else as it is)."""
    if factor == 1.0:
        return value
    if name in BAR_COUNTED:
        return _scaled_count(value, factor)
    if name in PER_BAR:
        return value / factor
    return value


# The most equity points (one per bar) a live portfolio snapshot carries for the kill-switch's rolling window
# (services/executor/runner.py): a longer window would be cut short live while the backtest saw all of it, so no
# timeframe allows one.  4,000 hourly bars are 166 days; every daily (365) and 4-hourly (2,190) window fits.
EQUITY_POINTS_MAX = 4000


def param_ranges(timeframe: str = PARAMS_TIMEFRAME) -> dict[str, tuple[float, float]]:
    """``PARAM_RANGES`` for parameters counted in ``timeframe`` bars.

    A bar-counted range becomes the union of the daily range and its scaled image, so a value valid on 1d stays
    valid (an hourly 30-bar momentum is a legitimate choice on 1h) and so does the same duration in the new
    bars (720 hourly bars for a 30-day momentum).  Per-bar amounts widen the same way.
    """
    factor = timeframe_factor(PARAMS_TIMEFRAME, timeframe)
    if factor == 1.0:
        return PARAM_RANGES
    out = dict(PARAM_RANGES)
    for name in BAR_COUNTED:
        lo, hi = PARAM_RANGES[name]
        out[name] = (min(lo, _scaled_count(lo, factor)), max(hi, _scaled_count(hi, factor)))
    for name in PER_BAR:
        lo, hi = PARAM_RANGES[name]
        out[name] = (min(lo, lo / factor), max(hi, hi / factor))
    lo, hi = out["kill_switch_window"]
    out["kill_switch_window"] = (lo, min(hi, EQUITY_POINTS_MAX))
    return out


def equity_points(timeframe: str = PARAMS_TIMEFRAME) -> int:
    """Equity points a live snapshot carries on ``timeframe`` bars: the longest kill-switch window allowed there."""
    return int(param_ranges(timeframe)["kill_switch_window"][1])


def validate_params(p: StrategyParams, timeframe: str = PARAMS_TIMEFRAME) -> None:
    """Every field inside its range for parameters counted in ``timeframe`` bars (default: the daily ranges)."""
    ranges = param_ranges(timeframe)
    for name, (lo, hi) in ranges.items():
        value = getattr(p, name)
        if not lo <= value <= hi:
            where = f" for {timeframe} bars" if ranges is not PARAM_RANGES else ""
            raise ValueError(f"parameter {name}={value!r} outside [{lo}, {hi}]{where}")
    if p.breadth_bear > p.breadth_bull:
        raise ValueError(f"breadth_bear={p.breadth_bear} above breadth_bull={p.breadth_bull}")


def validate_tradable(p: StrategyParams, timeframe: str = PARAMS_TIMEFRAME) -> None:
    """``validate_params``, and the kill-switch bounds the loss: what signal and risk trade on and what the
    optimizer may promote (a backtest may still study a set without, e.g. the switch off).  A switch that re-arms
    by itself bounds only each episode, so a run of them needs the hard cap since the last operator reset; a
    switch that never fires (1.0) with the cap off is no switch at all."""
    validate_params(p, timeframe)
    if p.kill_switch_cooldown > 0 and p.kill_switch_cap >= 1.0:
        raise ValueError(f"kill_switch_cooldown={p.kill_switch_cooldown} re-arms the kill-switch by itself, which "
                         "needs a hard cap on the drawdown since the last reset: kill_switch_cap below 1.0")
    if p.kill_switch_drawdown >= 1.0 and p.kill_switch_cap >= 1.0:
        raise ValueError("kill_switch_drawdown=1.0 and kill_switch_cap=1.0: nothing would bound the drawdown")


def loss_bound(p: StrategyParams) -> float:
    """The deepest drawdown the kill-switch lets the book reach before it latches for good: the hard cap since the
    last operator reset, or, for a switch that never re-arms by itself, the rolling threshold if that is lower."""
    return p.kill_switch_cap if p.kill_switch_cooldown > 0 else min(p.kill_switch_drawdown, p.kill_switch_cap)


def params_digest(p: StrategyParams) -> str:
    """Content id of a parameter set (stable across processes: msgspec encodes fields in order)."""
    return hashlib.sha256(msgspec.json.encode(p)).hexdigest()[:16]


@dataclass(frozen=True)
class Rescaled:
    """A parameter set moved from one timeframe to another, and what that changed."""

    params: StrategyParams
    from_timeframe: str
    to_timeframe: str
    factor: float  # bars of the new timeframe per bar of the old one
    changed: dict[str, tuple[Any, Any]]  # field -> (before, after), in field order
    clamped: tuple[str, ...]  # fields whose scaled value fell outside the new timeframe's range

    def summary(self) -> str:
        """One line for the operator: every field that changed, old -> new."""
        if not self.changed:
            return f"parameters for {self.from_timeframe} bars used on {self.to_timeframe} bars unchanged"
        items = ", ".join(f"{k} {_fmt(a)}->{_fmt(b)}" + (" (clamped)" if k in self.clamped else "")
                          for k, (a, b) in self.changed.items())
        ratio = f"x{_fmt(self.factor)}" if self.factor >= 1 else f"/{_fmt(1 / self.factor)}"
        return f"parameters counted in {self.from_timeframe} bars scaled {ratio} to {self.to_timeframe} bars: {items}"


def rescale(p: StrategyParams, from_timeframe: str, to_timeframe: str) -> Rescaled:
    """The same durations and per-bar amounts in ``to_timeframe`` bars (a pure function; identity when the two
    timeframes have the same bar length).

    1d -> 1h multiplies every ``BAR_COUNTED`` field by 24 and divides ``min_quote_volume`` by 24.  A result
    outside ``param_ranges(to_timeframe)`` (possible only when going to longer bars: 30 hourly bars are 1.25
    days, below the 5-bar floor of a daily momentum) is clamped into it and listed in ``clamped``.
    """
    factor = timeframe_factor(from_timeframe, to_timeframe)
    if factor == 1.0:
        return Rescaled(p, from_timeframe, to_timeframe, factor, {}, ())
    ranges = param_ranges(to_timeframe)
    changed: dict[str, tuple[Any, Any]] = {}
    clamped: list[str] = []
    for name in FIELDS:  # field order: the summary and the metrics list them in a stable order
        old = getattr(p, name)
        if name in BAR_COUNTED:
            new: Any = _scaled_count(old, factor)
        elif name in PER_BAR:
            new = old / factor
        else:
            continue
        lo, hi = ranges[name]
        bounded = min(max(new, lo), hi)
        if bounded != new:
            clamped.append(name)
            new = type(old)(bounded)
        if new != old:
            changed[name] = (old, new)
    scaled = msgspec.structs.replace(p, **{k: v for k, (_, v) in changed.items()})
    return Rescaled(scaled, from_timeframe, to_timeframe, factor, changed, tuple(clamped))


def _fmt(x: Any) -> str:
    """Plain decimals (1e+06 reads badly in a log line), at most four places."""
    return f"{x:.4f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def history_bars(p: StrategyParams) -> int:
    """Bars of history (the decision bar included) a decision reads: every vote snapshot, the oldest
    ``(vote_offsets - 1) * vote_step`` bars back, reads the score factors' windows (a momentum over n bars reads
    n + 1 closes) and a symbol's ``min_history`` valid closes; the decision bar alone reads the regime's SMA and
    the liquidity window (aura/strategy/signal.py signal_core).  A live window shorter than this decides otherwise
    than the backtest on the whole history: signal refuses to trade on one (services/signal)."""
    per_vote = max(p.momentum_lookback + 1, p.momentum_long_lookback + 1, p.min_history, p.sma_length,
                   p.drawdown_window, p.vol_window + 1)
    return max((p.vote_offsets - 1) * p.vote_step + per_vote, p.regime_sma, p.liquidity_window)

"""How a StrategyParams crosses into numba code: two flat arrays (integers, floats) with fixed slots.

The reference path (``compute_targets``) and the fast backtest kernel both read parameters through these
slots, so they cannot disagree on which number is which.
"""

from __future__ import annotations

from operator import itemgetter

import msgspec
import numpy as np

from aura.strategy.params import StrategyParams

INT_FIELDS: tuple[str, ...] = (
    "momentum_lookback", "momentum_long_lookback", "min_history", "sma_length", "drawdown_window",
    "vol_window", "liquidity_window", "normalization", "vote_offsets", "vote_step", "regime_sma",
    "regime_confirm", "top_k", "top_k_sideways", "top_k_bear", "weighting", "sizing", "kill_switch_window",
    "cost_benefit_horizon", "rebalance_every", "kill_switch_cooldown",
)
FLOAT_FIELDS: tuple[str, ...] = (
    "min_quote_volume", "screen_min_momentum", "screen_max_drawdown", "w_mom_short", "w_mom_long", "w_trend",
    "w_vol_adj", "w_drawdown", "breadth_bull", "breadth_bear", "exposure_bull", "exposure_sideways",
    "exposure_bear", "max_weight", "kelly_fraction", "kill_switch_drawdown", "stop_loss", "take_profit",
    "cost_benefit_margin", "expected_slippage", "min_trade_usdt", "cash_buffer", "rebalance_band", "kill_switch_cap",
)

(I_MOM, I_MOM_LONG, I_MIN_HIST, I_SMA, I_DD_WIN, I_VOL_WIN, I_LIQ_WIN, I_NORM, I_VOTES, I_VOTE_STEP,
 I_REGIME_SMA, I_CONFIRM, I_K_BULL, I_K_SIDE, I_K_BEAR, I_WEIGHTING, I_SIZING, I_KS_WINDOW, I_CB_HORIZON,
 I_REBALANCE_EVERY, I_KS_COOLDOWN) = range(len(INT_FIELDS))
(F_MIN_QV, F_MIN_MOM, F_MAX_DD, F_W_MS, F_W_ML, F_W_TR, F_W_VA, F_W_DD, F_B_BULL, F_B_BEAR, F_EXP_BULL,
 F_EXP_SIDE, F_EXP_BEAR, F_MAX_W, F_KELLY, F_KS_DD, F_SL, F_TP, F_CB_MARGIN, F_EXP_SLIP, F_MIN_TRADE,
 F_CASH_BUFFER, F_BAND, F_KS_CAP) = range(len(FLOAT_FIELDS))


def _getter(names: tuple[str, ...]) -> itemgetter:  # type: ignore[type-arg]
    fields = StrategyParams.__struct_fields__
    if len(names) < 2:  # itemgetter of one index returns the item, not a 1-tuple
        raise ValueError(f"a packed field group needs at least two names, got {names}")
    return itemgetter(*(fields.index(name) for name in names))


# The fast backtester packs every parameter set it evaluates (an optimizer grid: hundreds per second), and one
# C-level astuple plus an itemgetter costs a fraction of a getattr per field.
_INTS = _getter(INT_FIELDS)
_FLOATS = _getter(FLOAT_FIELDS)


def pack_params(p: StrategyParams) -> tuple[np.ndarray, np.ndarray]:
    values = msgspec.structs.astuple(p)
    ints = np.array([int(v) for v in _INTS(values)], dtype=np.int64)
    floats = np.array([float(v) for v in _FLOATS(values)], dtype=np.float64)
    return ints, floats

# Fields compute_targets depends on (plus rebalance_every, which decides the cycles the regime hysteresis
# counts).  The fast backtester memoises the signal pass on these, so a grid that varies only the gates and
# execution knobs recomputes only the portfolio pass.  A test asserts that the others leave compute_targets
# unchanged; add a field here if the signal starts to read it.
SIGNAL_FIELDS: tuple[str, ...] = (
    "momentum_lookback", "momentum_long_lookback", "min_history", "sma_length", "drawdown_window", "vol_window",
    "liquidity_window", "min_quote_volume", "screen_min_momentum", "screen_max_drawdown", "w_mom_short",
    "w_mom_long", "w_trend", "w_vol_adj", "w_drawdown", "normalization", "vote_offsets", "vote_step",
    "regime_sma", "breadth_bull", "breadth_bear", "regime_confirm", "exposure_bull", "exposure_sideways",
    "exposure_bear", "top_k", "top_k_sideways", "top_k_bear", "max_weight", "weighting", "sizing",
    "kelly_fraction", "rebalance_every",
)


_SIGNALS = _getter(SIGNAL_FIELDS)


def signal_key(p: StrategyParams) -> tuple[float, ...]:
    return tuple(map(float, _SIGNALS(msgspec.structs.astuple(p))))

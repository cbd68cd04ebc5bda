"""One typed parameter set: every knob has a name, a default and a range the optimizer may vary.

Lookbacks and windows are counted in *bars* of the timeframe being traded (a 30 on 1d is 30 days, on 1h it is
30 hours).  Choices are small integers so that the optimizer can treat the whole space as numbers:
``normalization`` 0 = cross-sectional percentile ranks, 1 = z-scores; ``weighting`` 0 = equal, 1 = inverse
volatility; ``sizing`` 0 = fixed fraction of the regime exposure, 1 = capped fractional Kelly.
A value of 0 disables ``stop_loss``, ``take_profit`` and ``cost_benefit_margin``; a ``kill_switch_drawdown``
of 1.0 can never trigger (equity would have to reach zero).
"""

from __future__ import annotations

import hashlib

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


def validate_params(p: StrategyParams) -> None:
    for name, (lo, hi) in PARAM_RANGES.items():
        value = getattr(p, name)
        if not lo <= value <= hi:
            raise ValueError(f"parameter {name}={value!r} outside [{lo}, {hi}]")
    if p.breadth_bear > p.breadth_bull:
        raise ValueError(f"breadth_bear={p.breadth_bear} above breadth_bull={p.breadth_bull}")


def params_digest(p: StrategyParams) -> str:
    """Content id of a parameter set (stable across processes: msgspec encodes fields in order)."""
    return hashlib.sha256(msgspec.json.encode(p)).hexdigest()[:16]

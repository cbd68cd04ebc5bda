"""Parameters count their lookbacks in bars: moving them to another timeframe keeps their durations."""

from __future__ import annotations

import pytest

from aura.strategy.params import (
    BAR_COUNTED,
    FIELDS,
    INT_PARAMS,
    PARAM_RANGES,
    PARAMS_TIMEFRAME,
    PER_BAR,
    StrategyParams,
    param_ranges,
    rescale,
    validate_params,
)

DEFAULTS = StrategyParams()


def test_daily_to_hourly_multiplies_every_bar_count_by_24_and_nothing_else() -> None:
    r = rescale(DEFAULTS, "1d", "1h")
    assert r.factor == 24.0 and r.clamped == ()
    for name in FIELDS:
        before, after = getattr(DEFAULTS, name), getattr(r.params, name)
        if name in BAR_COUNTED:
            assert after == before * 24 and type(after) is int, name
        elif name in PER_BAR:
            assert after == pytest.approx(before / 24), name
        else:
            assert after == before, name  # fractions, weights, counts of cycles: no time in them
    assert (r.params.momentum_lookback, r.params.regime_sma, r.params.rebalance_every) == (720, 2400, 24)
    assert r.params.regime_confirm == DEFAULTS.regime_confirm and r.params.vote_offsets == DEFAULTS.vote_offsets
    assert list(r.changed) == [n for n in FIELDS if n in r.changed]  # listed in field order
    assert r.changed["momentum_lookback"] == (30, 720)
    assert "momentum_lookback 30->720" in r.summary() and "x24 to 1h" in r.summary()
    assert "min_quote_volume 1000000->41666.6667" in r.summary()


def test_scaled_values_are_valid_on_their_timeframe_only() -> None:
    hourly = rescale(DEFAULTS, "1d", "1h").params
    validate_params(hourly, "1h")
    with pytest.raises(ValueError, match="momentum_lookback=720 outside"):
        validate_params(hourly)  # read as daily bars they are out of range: no silent reuse on 1d
    validate_params(DEFAULTS, "1h")  # a 30-hour momentum is a legitimate hourly choice
    assert param_ranges(PARAMS_TIMEFRAME) is PARAM_RANGES
    ranges = param_ranges("1h")
    assert ranges["momentum_lookback"] == (5, 180 * 24) and ranges["rebalance_every"] == (1, 168 * 24)
    assert ranges["min_quote_volume"] == PARAM_RANGES["min_quote_volume"]  # (0, 1e9) covers both
    assert {k: v for k, v in ranges.items() if k not in BAR_COUNTED} == {
        k: v for k, v in PARAM_RANGES.items() if k not in BAR_COUNTED}


def test_a_round_trip_returns_the_daily_parameters_and_same_length_bars_change_nothing() -> None:
    there = rescale(DEFAULTS, "1d", "4h")
    assert there.factor == 6.0 and there.params.momentum_lookback == 180
    assert rescale(there.params, "4h", "1d").params == DEFAULTS
    assert rescale(rescale(DEFAULTS, "1d", "1h").params, "1h", "1d").params == DEFAULTS
    same = rescale(DEFAULTS, "1d", "24h")
    assert same.params is DEFAULTS and same.changed == {} and same.factor == 1.0


def test_off_stays_off_and_longer_bars_clamp_into_range() -> None:
    p = StrategyParams(kill_switch_cooldown=0, vote_step=1)
    assert rescale(p, "1d", "1h").params.kill_switch_cooldown == 0  # 0 means "latched until reset"
    down = rescale(StrategyParams(kill_switch_cooldown=5), "1h", "1d")
    assert down.params.kill_switch_cooldown == 1  # a positive count never rounds to 0 (which would mean off)
    assert down.params.momentum_lookback == 5 and "momentum_lookback" in down.clamped  # 30 h = 1.25 d < floor 5
    assert "(clamped)" in down.summary() and down.summary().count("/24") == 1
    validate_params(down.params)


def test_every_duration_field_is_declared() -> None:
    """A new lookback or window must say how it scales: a name that reads like a duration is in BAR_COUNTED."""
    words = ("lookback", "window", "length", "horizon", "cooldown", "every", "sma", "history", "step")
    looks_like_bars = {n for n in FIELDS if any(w in n for w in words)}
    assert looks_like_bars == set(BAR_COUNTED)
    assert set(BAR_COUNTED) <= INT_PARAMS and set(PER_BAR) <= set(FIELDS) - INT_PARAMS

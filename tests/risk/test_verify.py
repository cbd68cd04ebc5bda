"""services.risk.verify: every way a target can disagree with the data it names is refused, and a genuine
target (the signal stage's own ``make_target`` on the data ingest announced) passes with the data's prices."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import msgspec
import numpy as np
import pytest

from aura.strategy.params import StrategyParams, params_digest
from aura.strategy.signal import compute_targets
from aura.strategy.types import Panel
from services.risk.verify import (
    WEIGHT_SUM_TOLERANCE,
    ForgedTarget,
    SupersededTarget,
    check_announcement,
    check_target,
    verified_prices,
)
from services.signal.service import make_target
from shared.candles import digest, encode_panel
from shared.contracts import DataReady, MarketRuleMsg, TargetPortfolio
from shared.cycles import check_data_time
from tests.bus_helpers import replay_signal_state, replay_snapshot

BAR = 700  # mid-2019 in the bundled replay: complete universe, a confirmed regime with real weights
PARAMS = StrategyParams()
# Parameters under which any book of up to 10 names summing to at most 1 is one the strategy could size.
ROOMY = msgspec.structs.replace(PARAMS, max_weight=1.0, top_k=10, top_k_sideways=10, exposure_sideways=1.0)


def ready_for(panel: Panel, cycle_id: str, markets: list[MarketRuleMsg]) -> DataReady:
    return DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=int(panel.timestamps[-1]),
                     digest=digest(encode_panel(panel)), symbols=list(panel.symbols), bars=len(panel.timestamps),
                     markets=markets)


@pytest.fixture(scope="module")
def genuine() -> tuple[TargetPortfolio, DataReady, Panel]:
    cycle_id, panel, markets = replay_snapshot(BAR)
    ready = ready_for(panel, cycle_id, markets)
    target, _ = make_target(ready, panel, PARAMS, 0, replay_signal_state(BAR - 5, BAR - 1, PARAMS))
    assert target.weights and target.expected_returns, "the genuine target should trade and carry forecasts"
    return target, ready, panel


def changed(target: TargetPortfolio, **changes: Any) -> TargetPortfolio:
    return msgspec.structs.replace(target, **changes)


def with_last_close(panel: Panel, symbol: str, price: float) -> Panel:
    close = panel.close.copy()
    close[-1, panel.symbols.index(symbol)] = price
    return replace(panel, close=close)


# --- check_announcement -------------------------------------------------------------------------------------


def test_a_target_for_the_newest_announcement_passes(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, _ = genuine
    check_announcement(target, ready)


def test_nothing_announced_supersedes_every_target(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, _, _ = genuine
    with pytest.raises(SupersededTarget, match="no DataReady"):
        check_announcement(target, None)


def test_a_target_for_another_cycle_is_superseded(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, _ = genuine
    newer = msgspec.structs.replace(ready, cycle_id="1d-20190719T0000")
    with pytest.raises(SupersededTarget, match="newest data announced is 1d-20190719T0000"):
        check_announcement(target, newer)
    with pytest.raises(SupersededTarget):
        check_announcement(changed(target, cycle_id="1d-forged"), ready)


@pytest.mark.parametrize("field, value", [("data_digest", "0" * 64), ("as_of_ms", 1)])
def test_a_target_naming_other_data_for_the_cycle_is_forged(genuine: tuple[TargetPortfolio, DataReady, Panel],
                                                             field: str, value: Any) -> None:
    target, ready, _ = genuine
    with pytest.raises(ForgedTarget, match="ingest announced"):
        check_announcement(changed(target, **{field: value}), ready)


def test_a_target_with_other_market_rules_is_forged(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, _ = genuine
    loose = [msgspec.structs.replace(m, min_notional=0.0) for m in target.markets]
    with pytest.raises(ForgedTarget, match="market rules"):
        check_announcement(changed(target, markets=loose), ready)
    with pytest.raises(ForgedTarget, match="market rules"):
        check_announcement(changed(target, markets=target.markets[:-1]), ready)


def test_data_announced_under_an_id_that_is_not_its_bar_is_forged(genuine: tuple[TargetPortfolio, DataReady,
                                                                                 Panel]) -> None:
    """The executor orders cycles by their ids: a plan executed under an id dated years ahead would make it ignore
    every later abort, so the id must name the bar the data is of (and the data be of risk's timeframe)."""
    target, ready, _ = genuine
    far = msgspec.structs.replace(ready, cycle_id="1d-99991231T2359")
    with pytest.raises(ForgedTarget, match="does not name its 1d bar"):
        check_announcement(changed(target, cycle_id=far.cycle_id), far)
    with pytest.raises(ForgedTarget, match="does not name its 4h bar"):
        check_announcement(target, ready, "4h")


# --- check_target ---------------------------------------------------------------------------------------------


def test_the_genuine_target_passes_with_the_datas_prices(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    prices = check_target(target, ready, panel, PARAMS)
    closes = {s: float(p) for s, p in zip(panel.symbols, panel.close[-1], strict=True)}
    assert prices == closes == dict(target.prices)


def test_weights_summing_to_one_within_float_tolerance_pass(
        genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    symbols = sorted(target.weights)
    full = {s: 1.0 / len(symbols) for s in symbols}
    full[symbols[0]] += WEIGHT_SUM_TOLERANCE / 2
    # Under parameters that size a whole book on these names (the defaults cap each at half of it).
    check_target(changed(target, weights=full, regime="bull", params_digest=params_digest(ROOMY)), ready, panel, ROOMY)


@pytest.mark.parametrize("case", ["other symbols", "other last bar", "empty"])
def test_a_candle_object_that_does_not_match_its_announcement_is_refused(
        genuine: tuple[TargetPortfolio, DataReady, Panel], case: str) -> None:
    target, ready, panel = genuine
    if case == "other symbols":
        other = replace(panel, symbols=tuple(reversed(panel.symbols)))
    elif case == "other last bar":
        other = panel.upto(len(panel.timestamps) - 2)
    else:
        other = panel.upto(-1)
        assert len(other.timestamps) == 0
    with pytest.raises(ForgedTarget, match="candle object does not match"):
        check_target(target, ready, other, PARAMS)


def test_a_params_digest_of_other_parameters_is_refused(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    with pytest.raises(ForgedTarget, match="params digest"):
        check_target(target, ready, panel, StrategyParams(top_k=PARAMS.top_k + 1))
    with pytest.raises(ForgedTarget, match="params digest"):
        check_target(changed(target, params_digest="p"), ready, panel, PARAMS)


def test_an_unknown_regime_is_refused(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    with pytest.raises(ForgedTarget, match="unknown regime 'tick'"):
        check_target(changed(target, regime="tick"), ready, panel, PARAMS)


def test_prices_that_differ_from_the_candle_data_are_refused(
        genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    cheap = {**target.prices, "BTC/USDT": target.prices["BTC/USDT"] / 90}
    with pytest.raises(ForgedTarget, match=r"prices differ from the candle data for \['BTC/USDT'\]"):
        check_target(changed(target, prices=cheap), ready, panel, PARAMS)
    missing = {s: p for s, p in target.prices.items() if s != "ETH/USDT"}
    with pytest.raises(ForgedTarget, match=r"\['ETH/USDT'\]"):
        check_target(changed(target, prices=missing), ready, panel, PARAMS)
    extra = {**target.prices, "FAKE/USDT": 1.0}
    with pytest.raises(ForgedTarget, match=r"\['FAKE/USDT'\]"):
        check_target(changed(target, prices=extra), ready, panel, PARAMS)


def test_weights_on_symbols_outside_the_universe_are_refused(
        genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    strangers = {f"X{i:05d}/USDT": 0.0 for i in range(10_000)}
    with pytest.raises(ForgedTarget, match="10000 symbols outside the data's universe"):
        check_target(changed(target, weights={**target.weights, **strangers}), ready, panel, PARAMS)


def test_weights_on_a_pair_quoted_in_another_currency_are_refused(
        genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    """A compromised ingest lists ETH/BTC in the universe: a target weighting it would be sized in USDT and bought
    in BTC (tests/executor_live/test_quote_currency.py).  Refused although the data names it."""
    target, _, panel = genuine
    held = next(s for s, w in target.weights.items() if w > 0)
    renamed = held.replace("/USDT", "/BTC")
    listed = replace(panel, symbols=[renamed if s == held else s for s in panel.symbols])
    ready = ready_for(listed, target.cycle_id, [])
    weights = {(renamed if s == held else s): w for s, w in target.weights.items()}
    # Consistent with that data in every other respect (prices, forecasts): only the quote currency is wrong.
    forged = changed(target, weights=weights, prices=verified_prices(listed),
                     expected_returns=compute_targets(listed, PARAMS, None)[0].expected_returns)
    with pytest.raises(ForgedTarget, match=f"weights name 1 pairs not quoted in USDT: \\['{renamed}'\\]"):
        check_target(forged, ready, listed, PARAMS)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.25])
def test_non_finite_or_negative_weights_are_refused(genuine: tuple[TargetPortfolio, DataReady, Panel],
                                                    bad: float) -> None:
    target, ready, panel = genuine
    weights = {**target.weights, "ETH/USDT": bad}
    with pytest.raises(ForgedTarget, match="finite and non-negative"):
        check_target(changed(target, weights=weights), ready, panel, PARAMS)


def test_weights_summing_above_one_are_refused(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    with pytest.raises(ForgedTarget, match=r"weights sum to 1\.300000 > 1"):
        check_target(changed(target, weights={"BTC/USDT": 0.7, "ETH/USDT": 0.6}), ready, panel, PARAMS)
    with pytest.raises(ForgedTarget, match="> 1"):
        check_target(changed(target, weights={"BTC/USDT": 1.0 + 1e-6}), ready, panel, PARAMS)


@pytest.mark.parametrize("book", ["one coin for the whole book", "more names than the regime holds",
                                  "more than the regime's exposure"])
def test_a_book_the_parameters_would_never_size_is_refused(genuine: tuple[TargetPortfolio, DataReady, Panel],
                                                           book: str) -> None:
    """A compromised signal keeps its right to publish targets and its choice of weights: it put the whole book
    on the least liquid coin of the universe, which only the participation cap and the order cap then bounded."""
    target, ready, panel = genuine
    coins = [s for s in panel.symbols if s in target.prices][:6]
    weights, regime, why = {
        "one coin for the whole book": ({coins[-1]: 0.9}, "bull", "above max_weight 0.5"),
        "more names than the regime holds": ({s: 0.15 for s in coins[:4]}, "bull", "4 names weighted; the bull "
                                             "regime holds at most 3"),
        "more than the regime's exposure": ({coins[0]: 0.4, coins[1]: 0.4}, "sideways", "above the sideways "
                                            "exposure 0.5"),
    }[book]
    with pytest.raises(ForgedTarget, match=why):
        check_target(changed(target, weights=weights, regime=regime), ready, panel, PARAMS)
    # The same weights under parameters that size such a book pass: the bound is the parameters', not fixed.
    roomy = ROOMY
    check_target(changed(target, weights=weights, regime=regime, params_digest=params_digest(roomy)), ready, panel,
                 roomy)


def test_a_weight_on_a_symbol_without_a_price_is_refused(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    target, ready, panel = genuine
    gap = with_last_close(panel, "ETH/USDT", math.nan)  # in the universe, no usable close on the decision bar
    prices = verified_prices(gap)
    assert "ETH/USDT" not in prices and len(prices) == len(gap.symbols) - 1
    with pytest.raises(ForgedTarget, match=r"without a price: \['ETH/USDT'\]"):
        check_target(changed(target, prices=prices, weights={"ETH/USDT": 0.5}), ready, gap, PARAMS)


@pytest.mark.parametrize("how", ["inflated", "dropped", "added"])
def test_expected_returns_other_than_the_datas_are_refused(genuine: tuple[TargetPortfolio, DataReady, Panel],
                                                           how: str) -> None:
    target, ready, panel = genuine
    er = dict(target.expected_returns)
    symbol = sorted(er)[0]
    if how == "inflated":
        er[symbol] = 0.5  # the forgery: a huge forecast makes every trade pass the cost-benefit gate
    elif how == "dropped":
        del er[symbol]  # no forecast: the gate's gain test would be skipped
    else:
        er["FAKE/USDT"] = 0.01
    with pytest.raises(ForgedTarget, match="expected returns differ"):
        check_target(changed(target, expected_returns=er), ready, panel, PARAMS)


def test_verified_prices_keep_only_positive_finite_closes(genuine: tuple[TargetPortfolio, DataReady, Panel]) -> None:
    _, _, panel = genuine
    bad = with_last_close(with_last_close(panel, "ETH/USDT", 0.0), "BTC/USDT", -1.0)
    bad = with_last_close(bad, "LTC/USDT", math.inf)
    prices = verified_prices(bad)
    assert set(prices) == set(panel.symbols) - {"ETH/USDT", "BTC/USDT", "LTC/USDT"}
    assert all(np.isfinite(p) and p > 0 for p in prices.values())


def test_data_time_against_the_exchanges_clock() -> None:
    day, grace = 86_400_000, 600_000
    max_age = 2 * day + grace
    closed = 10 * day  # the bar opening at day 10 closes at day 11
    assert check_data_time(closed, None, day, max_age) is None  # replay: no exchange clock, nothing to check
    assert check_data_time(closed, 11 * day + 60_000, day, max_age) is None  # a minute after its close
    assert check_data_time(closed, closed + max_age, day, max_age) is None  # the last moment it may be planned
    assert (check_data_time(closed, closed + max_age + 1, day, max_age) or "").startswith("stale")
    assert check_data_time(closed, 11 * day - 60_000, day, max_age) is None  # a minute of read-to-read jitter
    assert (check_data_time(closed, 11 * day - 60_001, day, max_age) or "").startswith("future")
    assert (check_data_time(closed, 11 * day - day // 2, day, max_age) or "").startswith("future")  # 12 h early
    assert (check_data_time(closed + 30 * day, 11 * day, day, max_age) or "").startswith("future")

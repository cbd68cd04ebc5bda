"""compute_targets: universe screen, new listings, regime hysteresis, state handling, order independence."""

from __future__ import annotations

import dataclasses

import msgspec
import numpy as np
import pytest

from aura.strategy.packing import SIGNAL_FIELDS
from aura.strategy.params import PARAM_RANGES, StrategyParams
from aura.strategy.regime import BEAR, BULL, SIDEWAYS, raw_regime, regime_step
from aura.strategy.signal import compute_targets
from aura.strategy.state import SignalState
from aura.strategy.types import Panel
from tests.strategy.synth import panel_from_closes, random_walks

SYMS = ["BTC_USDT", "ETH_USDT", "AAA_USDT", "BBB_USDT", "CCC_USDT", "DDD_USDT"]
P = StrategyParams(min_quote_volume=0.0)


@pytest.fixture(scope="module")
def rising() -> Panel:
    return panel_from_closes(random_walks(SYMS, 260, seed=11, drift=0.004, vol=0.02))


def test_raw_regime_and_two_cycle_hysteresis() -> None:
    assert raw_regime(0.6, 1, 0.55, 0.35) == BULL
    assert raw_regime(0.6, 0, 0.55, 0.35) == SIDEWAYS  # breadth says bull but BTC is down
    assert raw_regime(0.2, 0, 0.55, 0.35) == BEAR
    assert raw_regime(0.2, -1, 0.55, 0.35) == BEAR  # no BTC: breadth alone
    state = (BEAR, -1, 0)
    state = regime_step(*state, BULL, 2)
    assert state == (BEAR, BULL, 1)  # seen once: not adopted
    state = regime_step(*state, SIDEWAYS, 2)
    assert state == (BEAR, SIDEWAYS, 1)  # a different candidate restarts the count
    state = regime_step(*state, SIDEWAYS, 2)
    assert state == (SIDEWAYS, -1, 0)  # seen twice in a row: adopted
    assert regime_step(SIDEWAYS, -1, 0, BULL, 1) == (BULL, -1, 0)


def test_cold_start_waits_for_confirmation_then_invests(rising: Panel) -> None:
    t = 200
    targets, state = compute_targets(rising.upto(t), P, None)
    assert targets.raw_regime == "bull" and targets.regime == "bear" and targets.weights == {}
    assert state == SignalState("bear", "bull", 1, int(rising.timestamps[t]))
    targets, state = compute_targets(rising.upto(t + 1), P, state)
    assert targets.regime == "bull" and state.regime == "bull"
    assert 0 < len(targets.weights) <= P.top_k
    assert all(0 < w <= P.max_weight for w in targets.weights.values())
    assert sum(targets.weights.values()) <= P.exposure_bull + 1e-12
    assert set(targets.weights) <= set(targets.scores) and set(targets.weights) <= set(targets.expected_returns)


def test_same_bar_again_does_not_advance_the_hysteresis(rising: Panel) -> None:
    _, s1 = compute_targets(rising.upto(200), P, None)
    t_again, s_again = compute_targets(rising.upto(200), P, s1)
    assert s_again == s1 and t_again.regime == "bear"  # a redelivered cycle cannot confirm a regime by itself


def test_state_survives_a_json_round_trip_between_cycles(rising: Panel) -> None:
    state = None
    stored = None
    for t in range(195, 215):
        targets, state = compute_targets(rising.upto(t), P, state)
        t2, stored_next = compute_targets(rising.upto(t), P, SignalState.from_dict(stored.to_dict())
                                          if stored else None)
        assert t2 == targets and stored_next == state
        stored = stored_next


def test_new_listing_waits_for_its_full_history() -> None:
    walks = random_walks(SYMS, 300, seed=5, drift=0.003, vol=0.02)
    walks["NEW_USDT"] = np.concatenate([np.full(200, np.nan), 100 * np.exp(np.cumsum(np.full(100, 0.05)))])
    panel = panel_from_closes(walks)
    p = msgspec.structs.replace(P, regime_confirm=1)
    needed = 200 + max(p.min_history, p.momentum_long_lookback + 1, p.drawdown_window, p.vol_window + 1) - 1
    for t in (230, needed - 1):
        assert "NEW_USDT" not in compute_targets(panel.upto(t), p, None)[0].scores
    scored, _ = compute_targets(panel.upto(needed + p.vote_offsets), p, None)
    assert "NEW_USDT" in scored.scores and "NEW_USDT" in scored.weights  # strongest riser once it qualifies


def test_bear_regime_with_zero_exposure_is_cash() -> None:
    falling = panel_from_closes(random_walks(SYMS, 260, seed=2, drift=-0.006, vol=0.01))
    targets, _ = compute_targets(falling.upto(250), msgspec.structs.replace(P, regime_confirm=1), None)
    assert targets.regime == "bear" and targets.weights == {}


def test_column_order_does_not_change_the_decision(rising: Panel) -> None:
    perm = [3, 0, 5, 1, 4, 2]
    shuffled = Panel(tuple(rising.symbols[i] for i in perm), rising.timestamps, rising.open[:, perm],
                     rising.high[:, perm], rising.low[:, perm], rising.close[:, perm], rising.volume[:, perm])
    p = msgspec.structs.replace(P, normalization=1, weighting=1)
    state_a = state_b = SignalState("bull", "", 0, -1)
    for t in range(190, 230):
        a, state_a = compute_targets(rising.upto(t), p, state_a)
        b, state_b = compute_targets(shuffled.upto(t), p, state_b)
        assert a == b  # dict equality: same symbols, bit-identical floats


def test_robust_voting_changes_the_pick() -> None:
    # AAA spikes on the last bar only; BBB has climbed steadily.  One snapshot picks AAA, three pick BBB.
    base = {s: np.full(200, 100.0) * np.exp(np.linspace(0, 0.3, 200)) for s in SYMS}
    base["BBB_USDT"] = 100 * np.exp(np.linspace(0, 0.8, 200))
    base["AAA_USDT"] = base["AAA_USDT"].copy()
    base["AAA_USDT"][-1] = base["AAA_USDT"][-2] * 2.2
    panel = panel_from_closes(base)
    one = msgspec.structs.replace(P, top_k=1, vote_offsets=1, regime_confirm=1, w_mom_long=0.0, w_trend=0.0,
                                  w_vol_adj=0.0, w_drawdown=0.0, screen_max_drawdown=1.0)
    three = msgspec.structs.replace(one, vote_offsets=3)
    start = SignalState("bull", "", 0, -1)
    assert list(compute_targets(panel, one, start)[0].weights) == ["AAA_USDT"]
    assert list(compute_targets(panel, three, start)[0].weights) == ["BBB_USDT"]


def test_fields_outside_signal_fields_do_not_move_the_signal(rising: Panel) -> None:
    """Guards the fast path's memo key: a field the signal reads must be listed in SIGNAL_FIELDS."""
    base = StrategyParams(min_quote_volume=0.0)
    others = [f for f in PARAM_RANGES if f not in SIGNAL_FIELDS]
    assert "stop_loss" in others and "top_k" not in others
    changed = msgspec.structs.replace(base, **{f: type(getattr(base, f))(PARAM_RANGES[f][1]) for f in others})
    sa = sb = SignalState("sideways", "", 0, -1)
    for t in range(180, 240, 3):
        a, sa = compute_targets(rising.upto(t), base, sa)
        b, sb = compute_targets(rising.upto(t), changed, sb)
        assert dataclasses.asdict(a) == dataclasses.asdict(b)


def test_read_only_panel_as_the_service_decodes_it(rising: Panel) -> None:
    """The signal service hands over np.frombuffer arrays (read-only) and slash-separated symbols."""
    def frozen(a: np.ndarray) -> np.ndarray:
        out = np.frombuffer(a.tobytes(), dtype=np.float64).reshape(a.shape)
        assert not out.flags.writeable
        return out

    syms = tuple(s.replace("_", "/") for s in rising.symbols)
    ro = Panel(syms, rising.timestamps, *(frozen(getattr(rising, f)) for f in ("open", "high", "low", "close",
                                                                                 "volume")))
    state = SignalState("bull", "", 0, -1)
    a, _ = compute_targets(rising.upto(220), P, state)
    b, _ = compute_targets(ro.upto(220), P, state)
    assert {k.replace("_", "/"): v for k, v in a.weights.items()} == b.weights and b.weights
    assert a.raw_regime == b.raw_regime  # BTC/USDT is recognised as BTC

"""Cross-sectional normalisation, composite score, robust voting, selection and sizing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aura.strategy.score import RANKS, ZSCORES, composite_value, expected_return, normalize_row
from aura.strategy.selector import pick, regime_book
from aura.strategy.sizing import EQUAL, FIXED_FRACTION, INVERSE_VOL, KELLY, size_weights
from aura.strategy.voting import vote_order


def test_ranks_are_percentiles_with_shared_ties_over_the_eligible_only() -> None:
    x = np.array([3.0, 1.0, 2.0, 2.0, 99.0, np.nan])
    elig = np.array([True, True, True, True, False, True])
    out = normalize_row(x, elig, RANKS, np.arange(6))
    assert out[:4].tolist() == [1.0, 0.0, 0.5, 0.5]
    assert math.isnan(out[4]) and math.isnan(out[5])


def test_zscores_are_clipped_and_zero_when_flat() -> None:
    x = np.array([0.0] * 19 + [1000.0])
    out = normalize_row(x, np.ones(20, dtype=bool), ZSCORES, np.arange(20))
    assert out[-1] == 3.0  # the outlier is clipped at 3 sigma
    assert out[0] == pytest.approx(-1 / math.sqrt(19))
    flat = normalize_row(np.ones(4), np.ones(4, dtype=bool), ZSCORES, np.arange(4))
    assert flat.tolist() == [0.0] * 4


def test_normalisation_does_not_depend_on_column_order() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=9)
    elig = np.ones(9, dtype=bool)
    perm = rng.permutation(9)
    name_order = np.argsort(perm)  # the same names, stored in another column order
    a = normalize_row(x, elig, ZSCORES, np.arange(9))
    b = normalize_row(x[perm], elig, ZSCORES, name_order)
    np.testing.assert_array_equal(a[perm], b)  # bit-identical, not just close


def test_composite_penalises_drawdown_and_needs_every_factor() -> None:
    assert composite_value(1, 1, 1, 1, 1, 1.0, 0.5, 0.5, 0.5, 0.25) == pytest.approx(2.25)
    assert composite_value(1, 1, 1, 1, 0, 1.0, 0.5, 0.5, 0.5, 0.25) > composite_value(1, 1, 1, 1, 1, 1.0, 0.5,
                                                                                      0.5, 0.5, 0.25)
    assert math.isnan(composite_value(1, 1, np.nan, 1, 1, 1.0, 0.5, 0.0, 0.5, 0.25))
    assert expected_return(0.1, 10) == pytest.approx(math.log(1.1) / 10)
    assert expected_return(np.nan, 10) == 0.0


def test_vote_prefers_consistent_rank_over_a_single_good_snapshot() -> None:
    # A tops snapshot 0 only; B is second on all three snapshots.
    comp = np.array([[9.0, 8.0, 1.0, 0.0],
                     [0.0, 8.0, 9.0, 1.0],
                     [0.0, 8.0, 1.0, 9.0]])
    order = vote_order(np.arange(4), comp, np.arange(4))
    assert order[0] == 1
    # Ranked on the decision bar alone A would have won.
    assert vote_order(np.arange(4), comp[:1], np.arange(4))[0] == 0


def test_vote_missing_snapshot_is_worst_and_ties_go_to_score_then_name() -> None:
    # ranks: snapshot 0 -> 1, 1, 3; snapshot 1 -> 3 (no score), 2, 1.  Sums 4, 3, 4: column 1 wins, and
    # columns 0 and 2 tie at 4, which goes to the higher score on the decision bar (5 > 4).
    comp = np.array([[5.0, 5.0, 4.0], [np.nan, 1.0, 2.0]])
    assert vote_order(np.arange(3), comp, np.arange(3)).tolist() == [1, 0, 2]
    same = np.array([[1.0, 1.0]])
    assert vote_order(np.arange(2), same, np.array([1, 0])).tolist() == [1, 0]  # column 1 sorts first by name


def test_pick_keeps_the_top_k_in_name_order() -> None:
    assert pick(np.array([7, 2, 5, 1]), 3, np.arange(10)).tolist() == [2, 5, 7]
    assert pick(np.array([7]), 3, np.arange(10)).tolist() == [7]
    assert regime_book(2, 1.0, 0.5, 0.0, 3, 2, 1) == (1.0, 3)
    assert regime_book(0, 1.0, 0.5, 0.0, 3, 2, 1) == (0.0, 1)


def test_fixed_fraction_equal_and_inverse_vol_with_caps() -> None:
    chosen = np.array([0, 1])
    vol = np.array([0.01, 0.03])
    er = np.zeros(2)
    assert size_weights(chosen, vol, er, 1.0, 0.4, EQUAL, FIXED_FRACTION, 0.5).tolist() == [0.4, 0.4]
    inv = size_weights(chosen, vol, er, 0.5, 1.0, INVERSE_VOL, FIXED_FRACTION, 0.5)
    assert inv == pytest.approx([0.375, 0.125]) and inv.sum() == pytest.approx(0.5)
    zero_vol = size_weights(chosen, np.array([0.0, 0.03]), er, 0.5, 1.0, INVERSE_VOL, FIXED_FRACTION, 0.5)
    assert zero_vol.tolist() == [0.25, 0.25]  # 1/0 is meaningless: equal weights instead


def test_kelly_is_capped_per_name_and_scaled_to_the_exposure() -> None:
    chosen = np.array([0, 1, 2])
    vol = np.array([0.05, 0.05, 0.05])
    er = np.array([0.01, 0.0005, -0.01])
    w = size_weights(chosen, vol, er, 1.0, 0.3, EQUAL, KELLY, 0.5)
    assert w.tolist() == pytest.approx([0.3, 0.5 * 0.0005 / 0.0025, 0.0])  # capped, Kelly, no negative bets
    w_big = size_weights(chosen, vol, np.array([0.01, 0.01, 0.01]), 0.6, 0.3, EQUAL, KELLY, 0.5)
    assert w_big.sum() == pytest.approx(0.6) and w_big.tolist() == pytest.approx([0.2, 0.2, 0.2])

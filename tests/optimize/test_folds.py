"""Walk-forward folds: geometry, embargo, no train/validate overlap, refusals."""

from __future__ import annotations

import itertools

import pytest

from aura.optimize.folds import (
    Fold,
    FoldSpec,
    TrainWindow,
    ValidationWindow,
    default_fold_spec,
    final_train_window,
    selection_leaks,
    walk_forward_folds,
)


def test_rolling_folds_by_hand() -> None:
    # 100 bars, warmup 10, train 30, embargo 5, validate 10, step 10: usable 90, span 45,
    # (90 - 45) // 10 + 1 = 5 folds, remainder (90 - 45) % 10 = 5 goes to the start: first train at 15.
    folds = walk_forward_folds(100, FoldSpec(train=30, embargo=5, validate=10, step=10, warmup=10))
    assert [(f.train.start, f.train.stop, f.validate.start, f.validate.stop) for f in folds] == [
        (15, 45, 50, 60), (25, 55, 60, 70), (35, 65, 70, 80), (45, 75, 80, 90), (55, 85, 90, 100)]
    assert folds[-1].validate.stop == 100  # the newest bars are always validated
    assert [f.index for f in folds] == [0, 1, 2, 3, 4]


def test_anchored_folds_grow_from_the_warmup() -> None:
    folds = walk_forward_folds(100, FoldSpec(train=30, embargo=5, validate=10, step=10, warmup=10, anchored=True))
    assert [f.train.start for f in folds] == [10] * 5
    assert [f.train.stop for f in folds] == [45, 55, 65, 75, 85]
    assert [len(f.train) for f in folds] == [35, 45, 55, 65, 75]
    assert final_train_window(100, FoldSpec(30, 5, 10, 10, anchored=True, warmup=10)) == TrainWindow(10, 100)


@pytest.mark.parametrize("anchored", [False, True])
@pytest.mark.parametrize("n_bars,spec", [
    (2668, default_fold_spec("1d")),
    (63_000, default_fold_spec("1h")),
    (500, FoldSpec(train=100, embargo=0, validate=20, step=35, warmup=3)),
])
def test_embargo_respected_and_no_overlap(n_bars: int, spec: FoldSpec, anchored: bool) -> None:
    spec = FoldSpec(spec.train, spec.embargo, spec.validate, spec.step, anchored, spec.warmup, spec.min_budget)
    folds = walk_forward_folds(n_bars, spec)
    assert folds
    for f in folds:
        assert f.train.start >= spec.warmup
        assert f.validate.start - f.train.stop == spec.embargo
        assert not f.train.overlaps(f.validate)
        assert not set(f.train.bars) & set(range(f.validate.start - spec.embargo, f.validate.stop))
        assert len(f.validate) == spec.validate
        assert isinstance(f.train, TrainWindow) and isinstance(f.validate, ValidationWindow)
        assert f.validate.stop <= n_bars
        # Judged as a run from the training window's start: the window opens with the state the set made.
        assert f.validate.first_bar == f.train.start and f.validate.run_bars == f.validate.stop - f.train.start
    for a, b in itertools.pairwise(folds):
        assert b.validate.start - a.validate.start == spec.step
        assert not a.validate.overlaps(b.validate)  # one out-of-sample record, no bar counted twice
    assert folds[-1].validate.stop == n_bars


def test_defaults_for_1d_and_1h() -> None:
    d = default_fold_spec("1d")
    assert (d.train, d.embargo, d.validate, d.step, d.warmup) == (730, 30, 180, 180, 365)
    assert len(walk_forward_folds(2668, d)) == 8  # the bundled daily history, 2017-08 .. 2024-12
    h = default_fold_spec("1h")
    assert (h.train, h.validate, h.step) == (24 * 180, 24 * 60, 24 * 60)
    with pytest.raises(ValueError, match="no default fold spec for timeframe '5m'"):
        default_fold_spec("5m")


@pytest.mark.parametrize("kwargs,message", [
    ({"train": 30, "embargo": 5, "validate": 10, "step": 5}, "validation windows would overlap"),
    ({"train": 0, "embargo": 5, "validate": 10, "step": 10}, "train must be at least 1"),
    ({"train": 30, "embargo": -1, "validate": 10, "step": 10}, "embargo must not be negative"),
    ({"train": 30, "embargo": 0, "validate": 1, "step": 10}, "Sharpe ratio needs two returns"),
    ({"train": 30, "embargo": 0, "validate": 10, "step": 10, "min_budget": 31}, "min_budget"),
])
def test_impossible_specs_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FoldSpec(**kwargs)


def test_data_too_short_for_one_fold_names_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"100 bars cannot hold one fold: warmup 20 \+ train 60 \+ embargo 5 \+ "
                                         r"validate 20 = 105 bars"):
        walk_forward_folds(100, FoldSpec(train=60, embargo=5, validate=20, step=20, warmup=20))


def test_windows_are_typed_and_recent_budgets_nest() -> None:
    t = TrainWindow(100, 200)
    assert t.recent(30) == TrainWindow(170, 200)
    assert set(t.recent(10).bars) <= set(t.recent(30).bars) <= set(t.bars)
    assert TrainWindow(0, 10) != ValidationWindow(0, 10)
    with pytest.raises(ValueError):
        t.recent(101)
    with pytest.raises(ValueError):
        Fold(0, TrainWindow(0, 50), ValidationWindow(52, 60), embargo=5)  # only 2 bars of embargo


def test_selection_leaks() -> None:
    fold = Fold(0, TrainWindow(0, 50), ValidationWindow(55, 70), embargo=5)
    assert selection_leaks([TrainWindow(0, 50), TrainWindow(30, 50)], fold) == []
    assert selection_leaks([TrainWindow(0, 52)], fold)  # inside the embargo
    assert selection_leaks([TrainWindow(60, 80)], fold)  # after the validation window
    assert selection_leaks([ValidationWindow(0, 50)], fold)  # type: ignore[list-item]
    assert selection_leaks([], fold)

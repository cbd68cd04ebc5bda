"""Walk-forward folds: which bars a parameter set is chosen on and which bars judge it, as index ranges.

A fold is ``[train | embargo | validate]`` on the panel's bar grid (rows of ``Panel.timestamps``).  Rolling folds
keep the training window's length and slide it by ``step``; anchored folds start it on the first bar after the
warmup and let it grow.  The fold grid is aligned on the *end* of the data, so the most recent bars are always
validated (they say most about the market the winner will trade next); the remainder that does not fill a
whole step falls at the start.

Windows are typed: ``TrainWindow`` and ``ValidationWindow`` are different classes, so that the objective can
refuse to rank a candidate on a validation window (objective.selection_score) and the gate can refuse to judge
one on a training window (gate.promotion_gate).  Everything here is a pure function of integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Window:
    """Bars ``start .. stop - 1`` of the panel (a half-open range, like ``range``), scored from ``start``.

    ``run_from`` (default: ``start``): the bar the backtest of the window begins at.  Earlier than ``start``, the
    bars before ``start`` only make the state the window opens with (positions, cash, the kill-switch latch and
    the peak it measures from), as a live system's state carries on from its past; nothing is scored on them.
    """

    start: int
    stop: int
    run_from: int = -1

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"{type(self).__name__} needs 0 <= start < stop, got [{self.start}, {self.stop})")
        if self.run_from != -1 and not 0 <= self.run_from <= self.start:
            raise ValueError(f"{type(self).__name__} [{self.start}, {self.stop}) cannot run from bar {self.run_from}")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def first_bar(self) -> int:
        """The bar the backtest begins at (``run_from``, or ``start``)."""
        return self.start if self.run_from == -1 else self.run_from

    @property
    def run_bars(self) -> int:
        """Bars the backtest of this window runs (what it costs to evaluate)."""
        return self.stop - self.first_bar

    @property
    def bars(self) -> range:
        return range(self.start, self.stop)

    def overlaps(self, other: Window) -> bool:
        return self.start < other.stop and other.start < self.stop


@dataclass(frozen=True, order=True)
class TrainWindow(Window):
    """Bars a candidate may be ranked on."""

    def recent(self, bars: int) -> TrainWindow:
        """The last ``bars`` bars of this window: the successive-halving budget "shorter history".

        The most recent part, because it is nested in every longer budget (a promoted candidate is judged on
        a superset of what pruned it) and because it is the part closest to the validation window.
        """
        if not 0 < bars <= len(self):
            raise ValueError(f"a budget of {bars} bars does not fit a training window of {len(self)} bars")
        return TrainWindow(self.stop - bars, self.stop)


@dataclass(frozen=True, order=True)
class ValidationWindow(Window):
    """Bars that judge a winner; never used to choose it.

    A fold's validation window runs from the start of the fold's training window (``run_from``): the set is
    judged as if it had traded since the data it was chosen on began, so a kill-switch that latched on the
    way (and, with ``kill_switch_cooldown`` 0, stays latched until an operator resets it, as live) keeps the
    window in cash.  Run from a fresh start, every window would open with the switch re-armed and the peak
    reset, crediting a set with returns it would not have made live.
    """


@dataclass(frozen=True)
class Fold:
    index: int
    train: TrainWindow
    validate: ValidationWindow
    embargo: int  # bars between the end of train and the start of validate that neither uses

    def __post_init__(self) -> None:
        if self.train.stop + self.embargo > self.validate.start:
            raise ValueError(f"fold {self.index}: validation starts {self.validate.start - self.train.stop} bars "
                             f"after training ends, less than the embargo of {self.embargo}")


@dataclass(frozen=True)
class FoldSpec:
    """Fold geometry in bars of the timeframe traded.

    ``warmup`` bars at the start are never in a window: indicators need history before a decision can use them.
    ``min_budget`` is the shortest training history successive halving judges a candidate on.
    """

    train: int
    embargo: int
    validate: int
    step: int
    anchored: bool = False
    warmup: int = 0
    min_budget: int = 1

    def __post_init__(self) -> None:
        for name in ("train", "validate", "step", "min_budget"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"fold spec: {name} must be at least 1 bar, got {getattr(self, name)}")
        for name in ("embargo", "warmup"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"fold spec: {name} must not be negative, got {getattr(self, name)}")
        if self.train < 2 or self.validate < 2:
            raise ValueError(f"fold spec: train ({self.train}) and validate ({self.validate}) need at least 2 bars "
                             "each: a Sharpe ratio needs two returns")
        if self.step < self.validate:
            # The gate concatenates the validation windows into one out-of-sample record (DSR, SPA): overlapping
            # windows would count the same bars twice and overstate the evidence.
            raise ValueError(f"fold spec: step ({self.step}) is shorter than validate ({self.validate}), so "
                             "validation windows would overlap and the same bars would be counted twice")
        if self.min_budget > self.train:
            raise ValueError(f"fold spec: min_budget ({self.min_budget}) is longer than train ({self.train})")

    @property
    def span(self) -> int:
        """Bars one rolling fold covers."""
        return self.train + self.embargo + self.validate


# Defaults per timeframe, in bars.  Why these numbers:
# * warmup 365 bars: PARAM_RANGES lets every lookback (min_history, regime_sma, drawdown_window, ...) reach 365
#   bars, so after 365 bars any candidate in range has complete indicators on the first bar it is judged on.
# * 1d: train 730 (two years: a winner must have lived through at least one crypto up-leg and one down-leg, not
#   one regime); validate 180 (half a year: about 180 daily returns, enough for a Sharpe ratio to separate from
#   zero at the strengths that matter, and 7 windows in the bundled 2017-2024 data); step = validate, so the
#   validation windows tile into one contiguous out-of-sample record; embargo 30 (the default momentum lookback
#   and more than the cost-benefit horizon: the trend that made a candidate win at the end of training must
#   not be what it is validated on).  min_budget 180: below half a year a daily Sharpe is mostly noise, so
#   halving 730 by eta=3 gives budgets of 243 and 730 bars.
# * 1h: hourly lookbacks are capped at 365 bars (about 15 days) by PARAM_RANGES, so the strategy reacts in days,
#   not months; train 180 days (4320 bars, already 6x the observations of the daily train window, at 24x the
#   cost per day), validate 60 days (1440 bars), embargo 7 days (168 bars, about the longest lookback's half),
#   min_budget 30 days (720 bars).
# * 4h: between the two (365 days of training, 90 days validated, 14 days of embargo).
_DEFAULTS: dict[str, FoldSpec] = {
    "1d": FoldSpec(train=730, embargo=30, validate=180, step=180, warmup=365, min_budget=180),
    "4h": FoldSpec(train=6 * 365, embargo=6 * 14, validate=6 * 90, step=6 * 90, warmup=365, min_budget=6 * 60),
    "1h": FoldSpec(train=24 * 180, embargo=24 * 7, validate=24 * 60, step=24 * 60, warmup=365,
                   min_budget=24 * 30),
}


def default_fold_spec(timeframe: str, anchored: bool = False) -> FoldSpec:
    spec = _DEFAULTS.get(timeframe)
    if spec is None:
        raise ValueError(f"no default fold spec for timeframe {timeframe!r}; defaults exist for "
                         f"{sorted(_DEFAULTS)} (pass a FoldSpec for others)")
    return FoldSpec(spec.train, spec.embargo, spec.validate, spec.step, anchored, spec.warmup, spec.min_budget)


def walk_forward_folds(n_bars: int, spec: FoldSpec) -> tuple[Fold, ...]:
    """Every fold that fits ``n_bars`` bars, oldest first; the last validation window ends on the last bar.

    Raises ValueError, with the numbers, when not even one fold fits.
    """
    usable = n_bars - spec.warmup
    if usable < spec.span:
        raise ValueError(f"{n_bars} bars cannot hold one fold: warmup {spec.warmup} + train {spec.train} + embargo "
                         f"{spec.embargo} + validate {spec.validate} = {spec.warmup + spec.span} bars")
    count = (usable - spec.span) // spec.step + 1
    first = spec.warmup + (usable - spec.span) % spec.step  # the remainder goes to the start
    folds = []
    for k in range(count):
        train_start = first + k * spec.step
        train_stop = train_start + spec.train
        val_start = train_stop + spec.embargo
        train = TrainWindow(spec.warmup if spec.anchored else train_start, train_stop)
        folds.append(Fold(k, train, ValidationWindow(val_start, val_start + spec.validate, train.start), spec.embargo))
    return tuple(folds)


def final_train_window(n_bars: int, spec: FoldSpec) -> TrainWindow:
    """Where ``aura optimize --refit`` chooses the parameters that go live: the newest training window, ending on
    the last bar (by default the newest fold's winner goes live, plan.WalkForwardRun).

    Nothing validates it directly; the walk-forward record of the same procedure on the folds is its evidence.
    Anchored: from the first bar after the warmup, like the anchored folds.
    """
    walk_forward_folds(n_bars, spec)  # the same refusal when the data cannot hold a fold
    return TrainWindow(spec.warmup if spec.anchored else n_bars - spec.train, n_bars)


def selection_leaks(selected_on: Sequence[TrainWindow], fold: Fold) -> list[str]:
    """Why the windows a fold's winner was chosen on are not allowed to have chosen it (empty list: clean).

    Walk-forward means a winner is chosen only on bars that end at least ``embargo`` bars before its
    validation window starts; anything else lets the validation bars (or what followed them) pick the winner.
    """
    problems = []
    for w in selected_on:
        if not isinstance(w, TrainWindow):
            problems.append(f"{w} is not a training window")
        elif w.stop + fold.embargo > fold.validate.start:
            problems.append(f"training bars [{w.start}, {w.stop}) end less than the embargo ({fold.embargo} bars) "
                            f"before validation window [{fold.validate.start}, {fold.validate.stop}) of fold "
                            f"{fold.index}")
    if not selected_on:
        problems.append(f"fold {fold.index}: no training window recorded for its winner")
    return problems

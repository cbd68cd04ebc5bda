"""The promotion gate: a walk-forward winner goes live only if every test passes; otherwise it says which failed.

Input is the out-of-sample record of the selection procedure: for each fold, the winner chosen on that fold's
training bars (all four stages, successive halving) and the incumbent (the live parameters), both evaluated
on the fold's validation window, with the benchmarks on the same bars (objective.WindowResult).  The gate
refuses, with an exception, a record whose winner was chosen on bars that reach into its validation window
(or lie after it, or closer than the embargo): that is a bug in the caller, not a "no".

Tests, each with its threshold in GateSettings:

* ``beats_<B>_every_window``: compounded return after costs above buy-and-hold B on every validation window;
* ``beats_incumbent``: the objective on the validation windows above the incumbent's on the same windows;
* ``deflated_sharpe``: DSR of the excess returns over each benchmark on the concatenated validation windows,
  deflated by ALL trials of the run (every fold's selection and the final one, pruned trials included) and
  their Sharpe dispersion (pooled within selections and brought to the record's length: see
  stats.deflated_sharpe); the worst benchmark's
  DSR must reach ``dsr_min``;
* ``pbo``: probability of backtest overfitting by CSCV over the selection runs' candidate matrices, every
  fold's and, with ``--refit``, the final selection's, whose winner is the one that would go live (CSCV is by
  definition computed on the data selection saw: it re-splits it), pooled over the runs (the share of all their
  splits with logit <= 0);
* ``spa_<B>``: Hansen's SPA against each benchmark, as the data-snooping test it is: per fold, the models are
  every trial of every stage of that fold's selection (pruned ones included) on the one window they were all
  compared on, the smallest halving budget of the fold's training window (the CSCV matrices, stage after stage),
  so the p-value is that of "the best of everything this search tried beats B".  The gate's p-value is the
  largest over the folds and a refit's final selection (``FINAL_SPA``, given with the folds' when the caller has it):
  the search must find a superior model in every fold, as the winner must beat B on every validation window,
  and in the search that chose the set that would go live.  A selection that had no choice (no matrix) has no
  such evidence: NaN, a fail.

An honest "no" is a correct result; nothing here is a reason to loosen a threshold.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aura.backtest.metrics import bars_per_year
from aura.optimize.folds import Fold, TrainWindow, ValidationWindow, selection_leaks
from aura.optimize.objective import BENCHMARK_NAMES, ObjectiveSettings, WindowResult, sharpe, validation_score
from aura.optimize.stats import CSCV, DeflatedSharpe, TrialSharpes, deflated_sharpe, pbo_cscv, spa_excess_pvalue


@dataclass(frozen=True)
class GateSettings:
    benchmarks: tuple[str, ...] = BENCHMARK_NAMES  # every one must be beaten; a missing one is an error
    min_window_margin: float = 0.0  # compounded-return lead over each benchmark required on every window
    dsr_min: float = 0.95
    pbo_max: float = 0.2
    spa_alpha: float = 0.05
    cscv_partitions: int = 16  # S (the paper's choice); each selection matrix needs >= 2 * S bars
    spa_reps: int = 2000  # about 0.2 s per fold and benchmark at 243 bars x 432 models: workers compute them
    spa_block_size: int | None = None  # None: sqrt(T), arch's default
    spa_seed: int = 0  # the bootstrap is seeded: the same inputs give the same decision

    def __post_init__(self) -> None:
        # Thresholds are settings (aura optimize --dsr-min, --pbo-max, --spa-alpha), so they are checked here: a
        # probability outside [0, 1] would make its test always pass or always fail without saying so.
        for name in ("dsr_min", "pbo_max", "spa_alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"gate threshold {name} must lie in [0, 1], got {value}")
        if self.spa_reps < 1:
            raise ValueError(f"spa_reps must be at least 1, got {self.spa_reps}")


@dataclass(frozen=True, eq=False)
class ValidationRecord:
    fold: Fold
    winner: WindowResult  # the fold's winner on fold.validate
    incumbent: WindowResult  # the live parameters on the same window
    selected_on: tuple[TrainWindow, ...]  # every window the fold's winner was ranked on, all stages


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float
    threshold: float
    margin: float  # by how much it passed (> 0) or failed (< 0), in the value's unit
    detail: str = ""


@dataclass(frozen=True)
class WindowFigures:
    fold: int
    start: int
    stop: int
    strategy: float  # compounded return after costs
    incumbent: float
    benchmarks: dict[str, float] = field(default_factory=dict)


FINAL_SPA = -1  # the fold index under which the final selection's SPA goes (it has no fold)


@dataclass(frozen=True)
class SpaFold:
    """One selection's SPA: its trials on their common window, against each benchmark.  ``fold`` is the fold's
    index, or FINAL_SPA for the final selection (whose winner is the one that would go live)."""

    fold: int
    models: int  # trials of every stage of the fold's selection (0: no stage had a choice)
    pvalues: dict[str, float]

    @property
    def label(self) -> str:
        return "final" if self.fold == FINAL_SPA else f"fold {self.fold}"


def spa_fold(fold: int, matrix: np.ndarray | None, names: Sequence[str], settings: GateSettings) -> SpaFold:
    """SPA per benchmark of a fold's selection matrix (B, bars, models): walkforward.Selection.spa_matrix."""
    if matrix is None:
        return SpaFold(fold, 0, {n: math.nan for n in names})
    if np.ndim(matrix) != 3 or np.shape(matrix)[0] != len(names):
        raise ValueError(f"an SPA matrix must be (benchmarks={len(names)}, bars, models), got {np.shape(matrix)}")
    return SpaFold(fold, int(np.shape(matrix)[2]), {
        n: spa_excess_pvalue(matrix[b], settings.spa_reps, settings.spa_block_size, settings.spa_seed)
        for b, n in enumerate(names)})


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: tuple[Check, ...]
    windows: tuple[WindowFigures, ...]
    n_trials: int
    validation_score: float
    incumbent_score: float
    oos_sharpe: float  # annualised Sharpe of the strategy's concatenated validation returns
    oos_excess_sharpe: dict[str, float]  # annualised, per benchmark
    dsr: dict[str, DeflatedSharpe]
    pbo: float
    spa_pvalues: dict[str, float]  # per benchmark, the largest over the folds (and a refit's final selection)
    spa_folds: tuple[SpaFold, ...]

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        if self.passed:
            return f"PROMOTE: all {len(self.checks)} tests passed ({self.n_trials} trials counted)"
        parts = [f"{c.name} {c.value:.4g} vs {c.threshold:.4g} (short by {-c.margin:.4g})"
                 + (f": {c.detail}" if c.detail else "") for c in self.failed]
        return "NO PROMOTION: " + "; ".join(parts)


def _compound(r: np.ndarray) -> float:
    return float(np.prod(1.0 + r) - 1.0)


def _check_records(records: Sequence[ValidationRecord], settings: GateSettings) -> list[ValidationRecord]:
    if not records:
        raise ValueError("the gate needs at least one validation window")
    ordered = sorted(records, key=lambda r: r.fold.validate.start)
    for prev, rec in itertools.pairwise(ordered):
        if prev.fold.validate.overlaps(rec.fold.validate):
            raise ValueError(f"validation windows of folds {prev.fold.index} and {rec.fold.index} overlap")
    for rec in ordered:
        leaks = selection_leaks(rec.selected_on, rec.fold)
        if leaks:
            raise ValueError("winner chosen on bars it is judged on: " + "; ".join(leaks))
        for who, res in (("winner", rec.winner), ("incumbent", rec.incumbent)):
            if not isinstance(res.window, ValidationWindow) or res.window != rec.fold.validate:
                raise ValueError(f"fold {rec.fold.index}: the {who} was evaluated on {res.window}, not on the "
                                 f"fold's validation window {rec.fold.validate}")
            if tuple(sorted(res.bench_names)) != tuple(sorted(settings.benchmarks)):
                raise ValueError(f"fold {rec.fold.index}: benchmarks {res.bench_names}, the gate needs "
                                 f"{settings.benchmarks}")
        if not np.array_equal(rec.winner.bench, rec.incumbent.bench):
            raise ValueError(f"fold {rec.fold.index}: winner and incumbent were set against different benchmark "
                             "returns (calendars not aligned)")
    return ordered


def promotion_gate(records: Sequence[ValidationRecord], trial_sharpes: Sequence[TrialSharpes],
                   selection_matrices: Sequence[np.ndarray], settings: GateSettings = GateSettings(),
                   objective: ObjectiveSettings | None = None, cscv: Sequence[CSCV] | None = None,
                   spa_matrices: Mapping[int, np.ndarray | None] | None = None,
                   spa: Sequence[SpaFold] | None = None) -> GateDecision:
    """Decide.  ``trial_sharpes``: one per selection of the whole optimisation (every fold's and the final one,
    all stages together: Selection.trial_sharpes) with the per-bar Sharpe of each of its trials on its smallest
    budget, pruned trials included; ``selection_matrices``: one
    objective.excess_matrix per fold halving run (every candidate on the run's smallest budget).  ``cscv``:
    ``pbo_cscv`` of each of those matrices already computed (the distributed coordinator has its workers compute
    them while the search goes on; the check is the same), in which case ``selection_matrices`` may be empty.
    ``spa_matrices``: per fold index, its selection's stage matrices side by side (Selection.spa_matrix), and
    the final selection's under FINAL_SPA, or ``spa``: their ``spa_fold`` already computed; one of the two,
    covering every fold of ``records``."""
    ordered = _check_records(records, settings)
    objective = objective or ObjectiveSettings()
    if not trial_sharpes:
        raise ValueError("the DSR needs the trials of at least one selection")
    n_trials = sum(len(t.sharpes) for t in trial_sharpes)
    names = ordered[0].winner.bench_names
    checks: list[Check] = []
    windows = []
    for rec in ordered:
        w = rec.winner
        windows.append(WindowFigures(rec.fold.index, w.window.start, w.window.stop, _compound(w.returns),
                                     _compound(rec.incumbent.returns),
                                     {n: _compound(w.bench[b]) for b, n in enumerate(names)}))
    for name in names:
        leads = [(f.fold, f.strategy - f.benchmarks[name]) for f in windows]
        worst = min(lead for _, lead in leads)
        behind = [f"fold {k} {lead:+.2%}" for k, lead in leads if not lead > settings.min_window_margin]
        checks.append(Check(f"beats_{name}_every_window", not behind, worst, settings.min_window_margin,
                            worst - settings.min_window_margin,
                            f"behind on {len(behind)} of {len(leads)} windows: {', '.join(behind)}" if behind else ""))
    v_score = validation_score([r.winner for r in ordered], objective)
    i_score = validation_score([r.incumbent for r in ordered], objective)
    checks.append(Check("beats_incumbent", v_score > i_score, v_score, i_score, v_score - i_score))

    strat = np.concatenate([r.winner.returns for r in ordered])
    bench = np.concatenate([r.winner.bench for r in ordered], axis=1)
    dsr = {name: deflated_sharpe(strat - bench[b], trial_sharpes) for b, name in enumerate(names)}
    worst_dsr = min((d.dsr for d in dsr.values()), key=lambda v: -math.inf if math.isnan(v) else v)
    checks.append(Check("deflated_sharpe", worst_dsr >= settings.dsr_min, worst_dsr, settings.dsr_min,
                        worst_dsr - settings.dsr_min,
                        ", ".join(f"{n} {d.dsr:.3f} (SR {d.sharpe:.4f}/bar vs SR0 {d.sr0:.4f}, N={d.n_trials}, "
                                  f"T={d.n_obs})" for n, d in dsr.items())
                        + f", trials ranked on {'/'.join(str(b) for b in sorted({t.bars for t in trial_sharpes}))}"
                          " bars"))

    if cscv is None:
        if not selection_matrices:
            raise ValueError("PBO needs the candidate matrix of at least one selection run")
        for m in selection_matrices:
            if np.ndim(m) != 3 or np.shape(m)[0] != len(names):
                raise ValueError(f"a selection matrix must be (benchmarks={len(names)}, bars, candidates), got "
                                 f"{np.shape(m)}")
        cscv = [pbo_cscv(m, settings.cscv_partitions) for m in selection_matrices]
    elif not cscv or any(c.n_partitions != settings.cscv_partitions for c in cscv):
        raise ValueError(f"PBO needs the CSCV of at least one selection run, each on {settings.cscv_partitions} "
                         "partitions")
    logits = np.concatenate([c.logits for c in cscv])
    pbo = float(np.mean(logits <= 0)) if len(logits) else math.nan  # no run with a choice: nothing shows skill
    skipped = sum(1 for c in cscv if c.distinct < 2)
    checks.append(Check("pbo", pbo <= settings.pbo_max, pbo, settings.pbo_max, settings.pbo_max - pbo,
                        f"{len(logits)} splits over {len(cscv) - skipped} selection runs"
                        + (f" ({skipped} without two distinct candidates)" if skipped else "")))

    folds = [r.fold.index for r in ordered]
    if spa is None:
        if spa_matrices is None or any(k not in spa_matrices for k in folds):
            raise ValueError(f"SPA needs every fold's selection matrix (folds {folds})")
        spa = [spa_fold(k, spa_matrices[k], names, settings) for k in [*folds, FINAL_SPA] if k in spa_matrices]
    by_fold = {s.fold: s for s in spa}
    if any(k not in by_fold for k in folds):
        raise ValueError(f"SPA needs every fold's p-values (folds {folds}, given {sorted(by_fold)})")
    spa = [by_fold[k] for k in [*folds, FINAL_SPA] if k in by_fold]
    # The largest over the folds and a refit's final selection (NaN, a search without evidence, wins: NaN fails).
    worst_p = {n: max((s.pvalues[n] for s in spa), key=lambda v: math.inf if math.isnan(v) else v) for n in names}
    for name, p in worst_p.items():
        checks.append(Check(f"spa_{name}", p <= settings.spa_alpha, p, settings.spa_alpha, settings.spa_alpha - p,
                            ", ".join(f"{s.label} {s.pvalues[name]:.4f} ({s.models} models)" for s in spa)))

    ann = math.sqrt(bars_per_year(ordered[0].winner.bar_ms))
    return GateDecision(
        passed=all(c.passed for c in checks), checks=tuple(checks), windows=tuple(windows),
        n_trials=n_trials, validation_score=v_score, incumbent_score=i_score,
        oos_sharpe=float(sharpe(strat)) * ann,
        oos_excess_sharpe={n: float(sharpe(strat - bench[b])) * ann for b, n in enumerate(names)},
        dsr=dsr, pbo=pbo, spa_pvalues=worst_p, spa_folds=tuple(spa))

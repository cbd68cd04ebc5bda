"""The selection procedure end to end, sequential and in-process: the reference the distributed coordinator
must reproduce, and what tests and benchmarks run.

Per training window, the four stages run in order; each stage's candidates are the grid around the previous
stage's winner, ranked by successive halving on budgets of recent training history.  ``evaluate`` is any
function (params, training window) -> WindowResult; locally it is ``objective.evaluate_window`` on one Market,
remotely the coordinator replaces this loop by dispatching ``SuccessiveHalving.next_batch()`` to workers.

Walk-forward: every fold's winner is chosen on that fold's training window only and judged on its validation
window (``gate.promotion_gate``); the set that would go live is the newest fold's winner (plan.WalkForwardRun),
or with ``--refit`` the same choice on the newest training window (``folds.final_train_window``), whose only
evidence is the folds' record of the procedure that chose it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aura.optimize.folds import Fold, TrainWindow, Window
from aura.optimize.gate import ValidationRecord
from aura.optimize.grids import Grids
from aura.optimize.halving import SuccessiveHalving, Trial, history_budgets
from aura.optimize.objective import ObjectiveSettings, WindowResult, excess_matrix, selection_score
from aura.optimize.stats import TrialSharpes
from aura.strategy.params import StrategyParams, params_digest

Evaluate = Callable[[StrategyParams, Window], WindowResult]  # e.g. objective.evaluate_window on one Market


@dataclass(frozen=True, eq=False)
class StageRun:
    stage: str
    candidates: dict[str, StrategyParams]  # digest -> parameters, in grid order
    halving: SuccessiveHalving | None  # None: a stage with one candidate selects nothing
    winner: StrategyParams
    matrix: np.ndarray | None  # (B, budget0, N) excess returns of every candidate on the smallest budget

    @property
    def trials(self) -> list[Trial]:
        return self.halving.trials() if self.halving else []


@dataclass(frozen=True, eq=False)
class Selection:
    train: TrainWindow
    winner: StrategyParams
    stages: tuple[StageRun, ...]

    @property
    def selected_on(self) -> tuple[TrainWindow, ...]:
        """Every window any candidate was ranked on (the gate's leak check)."""
        if not any(s.halving for s in self.stages):
            return (self.train,)
        return tuple(sorted({self.train.recent(b) for s in self.stages if s.halving for b in s.halving.budgets}))

    @property
    def trial_sharpes(self) -> list[TrialSharpes]:
        """Every candidate of every stage, each one's Sharpe on the smallest budget, as one selection run
        (gate.promotion_gate; empty when no stage had a choice).  One run, not one per stage: every stage ranks
        on the same shortest window (expected_max_sharpe says why that matters)."""
        runs = [s.halving for s in self.stages if s.halving]
        if not runs:
            return []
        bars = {h.budgets[0] for h in runs}
        if len(bars) != 1:
            raise ValueError(f"the stages of one selection ranked on different shortest windows: {sorted(bars)}")
        return [TrialSharpes(np.array([v for h in runs for v in h.trial_sharpes().values()]), bars.pop())]

    @property
    def matrices(self) -> list[np.ndarray]:
        return [s.matrix for s in self.stages if s.matrix is not None]

    @property
    def spa_matrix(self) -> np.ndarray | None:
        """Every trial of every stage on the window they all share, the smallest budget (B, bars, trials): the
        models of this selection's SPA (gate.spa_fold).  None when no stage had a choice."""
        found = self.matrices
        if not found:
            return None
        if len({m.shape[:2] for m in found}) != 1:
            raise ValueError(f"stage matrices on different windows: {[m.shape for m in found]}")
        return np.concatenate(found, axis=2)


def select(evaluate: Evaluate, train: TrainWindow, grids: Grids, start: StrategyParams, min_budget: int,
           eta: int = 3, objective: ObjectiveSettings | None = None) -> Selection:
    """Run the four stages on ``train`` from ``start`` (grids.base applied first)."""
    objective = objective or ObjectiveSettings()
    base = grids.apply_base(start)
    budgets = history_budgets(len(train), eta, min_budget)
    runs = []
    for stage in grids.stages:
        cands = {params_digest(p): p for p in stage.expand(base)}
        if len(cands) == 1:
            base = next(iter(cands.values()))
            runs.append(StageRun(stage.name, cands, None, base, None))
            continue
        sh = SuccessiveHalving(list(cands), budgets, eta)
        first: dict[str, WindowResult] = {}
        while not sh.done:
            for task in sh.next_batch():
                result = evaluate(cands[task.candidate], train.recent(task.budget))
                if task.rung == 0:
                    first[task.candidate] = result
                sh.record(task, selection_score([result], objective))
        winner = sh.winner
        assert winner is not None
        base = cands[winner]
        runs.append(StageRun(stage.name, cands, sh, base, excess_matrix([first[c] for c in cands])))
    return Selection(train, base, tuple(runs))


def validate_fold(evaluate: Evaluate, fold: Fold, selection: Selection, incumbent: StrategyParams,
                  ) -> ValidationRecord:
    """The fold's winner and the incumbent on the fold's validation window."""
    if selection.train != fold.train:
        raise ValueError(f"selection on {selection.train} is not fold {fold.index}'s training window {fold.train}")
    return ValidationRecord(fold, evaluate(selection.winner, fold.validate), evaluate(incumbent, fold.validate),
                            selection.selected_on)

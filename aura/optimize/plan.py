"""A whole walk-forward run as a state machine that a coordinator drives while remote workers evaluate.

walkforward.py runs the procedure in one loop around an ``evaluate`` callback.  A coordinator cannot: its answers
come later, in any order, some twice, some stored by an earlier life of the coordinator.  ``WalkForwardRun``
holds the same procedure as data.  Every selection (one per fold, plus, with ``final_train``, a final one on
the newest training window) advances stage by stage and rung by rung, all selections at once since they are
independent (that is what keeps many workers busy); once a fold's selection is done, its winner and the
incumbent are evaluated on the fold's validation window, and every winner once on its whole training window
(its in-sample figure).

The coordinator asks ``requests()`` for what is missing and calls ``advance(lookup)`` with a function that finds
an answer by request (in its result store) or returns None.  Nothing else changes the state, so replaying the
stored answers after a restart reaches the state the run had, whatever their order; and given the same answers
it chooses exactly what ``walkforward.select`` and ``walkforward.validate_fold`` choose (tests/optimize).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from aura.optimize.folds import Fold, TrainWindow, ValidationWindow, Window
from aura.optimize.gate import FINAL_SPA, GateDecision, GateSettings, SpaFold, ValidationRecord, promotion_gate
from aura.optimize.grids import Grids
from aura.optimize.halving import SuccessiveHalving, Task, history_budgets
from aura.optimize.objective import ObjectiveSettings, WindowResult, excess_matrix, rung_scores
from aura.optimize.stats import CSCV
from aura.optimize.walkforward import Selection, StageRun
from aura.strategy.params import StrategyParams, params_digest

FINAL = "final"


@dataclass(frozen=True)
class Request:
    """One evaluation the run needs: a parameter set on a window (a training window ranks, a validation window
    judges)."""

    params: StrategyParams
    window: TrainWindow | ValidationWindow
    digest: str = field(default="", compare=False)  # params_digest(params), when the caller knows it already

    @functools.cached_property
    def ident(self) -> tuple[str, type, int, int]:
        # A coordinator asks for the identity of every pending request on every answer: computed once (the
        # parameters' hash above all).  cached_property writes the instance's __dict__, which frozen allows.
        digest = self.digest or params_digest(self.params)
        return (digest, type(self.window), self.window.start, self.window.stop)


Lookup = Callable[[Request], WindowResult | None]


def rung_sizes(n: int, rungs: int, eta: int) -> list[int]:
    """How many of ``n`` candidates each rung evaluates (SuccessiveHalving.keep, rung after rung)."""
    sizes = [n]
    for _ in range(rungs - 1):
        sizes.append(max(1, sizes[-1] // eta))
    return sizes


class SelectionState:
    """One selection (``walkforward.select``) as a state machine: the open stage's halving, the finished stages."""

    def __init__(self, label: str, train: TrainWindow, grids: Grids, start: StrategyParams, min_budget: int,
                 eta: int, objective: ObjectiveSettings) -> None:
        self.label, self.train, self.grids, self.eta, self.objective = label, train, grids, eta, objective
        self.start, self.min_budget = start, min_budget  # what it was opened with (audit.py selects again)
        self.budgets = history_budgets(len(train), eta, min_budget)
        self._windows = {b: train.recent(b) for b in self.budgets}
        self.base = grids.apply_base(start)
        self.runs: list[StageRun] = []
        self._cands: dict[str, StrategyParams] = {}
        self._sh: SuccessiveHalving | None = None
        self._first: dict[str, WindowResult] = {}
        # The open rung's unanswered tasks with their requests, built once per rung: a coordinator asks for them
        # after every batch of answers, and rebuilding thousands of requests each time was most of its CPU.
        self._open: dict[Task, Request] = {}
        self._open_rung: int | None = None
        self._open_next_stage()

    def _open_next_stage(self) -> None:
        """Open the next stage with a choice; a stage with one candidate decides itself (as in select())."""
        self._sh = None
        self._open, self._open_rung = {}, None
        while len(self.runs) < len(self.grids.stages):
            stage = self.grids.stages[len(self.runs)]
            cands = {params_digest(p): p for p in stage.expand(self.base)}
            if len(cands) == 1:
                self.base = next(iter(cands.values()))
                self.runs.append(StageRun(stage.name, cands, None, self.base, None))
                continue
            self._cands, self._first = cands, {}
            self._sh = SuccessiveHalving(list(cands), self.budgets, self.eta)
            return

    @property
    def done(self) -> bool:
        return len(self.runs) == len(self.grids.stages)

    @property
    def stage(self) -> str:
        """The stage being searched (or "done")."""
        return self.grids.stages[len(self.runs)].name if not self.done else "done"

    def pending(self) -> list[tuple[Task, Request]]:
        if self._sh is None:
            return []
        rung = self._sh.current_rung
        if rung != self._open_rung:
            self._open_rung = rung
            self._open = {t: Request(self._cands[t.candidate], self._windows[t.budget], t.candidate)
                          for t in self._sh.next_batch()}
        return list(self._open.items())

    @property
    def open_window(self) -> TrainWindow | None:
        """The window every task of the open rung runs on (a rung has one budget), None when done."""
        if self._sh is None or self._sh.current_rung is None:
            return None
        return self._windows[self.budgets[self._sh.current_rung]]

    def advance(self, lookup: Lookup) -> int:
        """Record every answer ``lookup`` has for the open rung, rung after rung, stage after stage."""
        recorded = 0
        while self._sh is not None:
            answered = [(task, result) for task, req in self.pending() if (result := lookup(req)) is not None]
            if not answered:
                break
            # One batch is the rest of one rung, so recording all of it can finish the stage only at its end.
            scores = rung_scores([result for _, result in answered], self.objective)
            for (task, result), score in zip(answered, scores, strict=True):
                if task.rung == 0:
                    self._first[task.candidate] = result
                self._sh.record(task, score)
                del self._open[task]
                recorded += 1
            if self._sh.done:
                winner = self._sh.winner
                assert winner is not None
                self.base = self._cands[winner]
                self.runs.append(StageRun(self.grids.stages[len(self.runs)].name, self._cands, self._sh, self.base,
                                          excess_matrix([self._first[c] for c in self._cands])))
                self._open_next_stage()
        return recorded

    def selection(self) -> Selection:
        if not self.done:
            raise RuntimeError(f"selection {self.label} is still in stage {self.stage}")
        return Selection(self.train, self.base, tuple(self.runs))

    def evaluations(self) -> int:
        """Halving evaluations recorded so far (every rung, pruned candidates included)."""
        done = sum(r.halving.n_evaluations for r in self.runs if r.halving)
        return done + (self._sh.n_evaluations if self._sh else 0)

    def planned(self) -> int:
        """Evaluations this selection will have made in all (later stages estimated from their grid sizes)."""
        total = sum(r.halving.n_evaluations for r in self.runs if r.halving)
        for k, stage in enumerate(self.grids.stages[len(self.runs):]):
            n = len(self._cands) if k == 0 and self._sh is not None else stage.size
            total += sum(rung_sizes(n, len(self.budgets), self.eta)) if n > 1 else 0
        return total


class WalkForwardRun:
    """Every fold's selection and validation (and with ``final_train`` a final selection) as one state machine."""

    def __init__(self, folds: Sequence[Fold], final_train: TrainWindow | None, grids: Grids,
                 incumbent: StrategyParams, min_budget: int, eta: int = 3, objective: ObjectiveSettings | None = None,
                 start: StrategyParams | None = None) -> None:
        """``incumbent``: what the winner must beat on every validation window; ``start``: where each selection
        starts (``Grids.start_from``: never a set chosen on these data), the incumbent if not given.

        What would go live: with ``final_train`` None, the newest fold's winner, the one set whose validation
        window (the newest bars) never chose it, so the gate's tests on that window judge the very set promoted.
        With ``final_train`` (``folds.final_train_window``, ``aura optimize --refit``), the same search once more
        on the newest training window, the walk-forward "refit": trained on the newest bars too, but no window it
        never saw judges it; the folds' record is only the evidence for the procedure that chose it."""
        if not folds:
            raise ValueError("a walk-forward run needs at least one fold")
        self.folds = tuple(folds)
        self.incumbent = incumbent
        self.objective = objective or ObjectiveSettings()
        self.folds_by_label = {f"fold {f.index}": f for f in self.folds}
        first = incumbent if start is None else start
        self.selections = [SelectionState(label, f.train, grids, first, min_budget, eta, self.objective)
                           for label, f in self.folds_by_label.items()]
        # The selection whose winner would go live (``selection(FINAL)`` names it either way).
        self.live_label = FINAL if final_train is not None else f"fold {max(f.index for f in self.folds)}"
        if final_train is not None:
            self.selections.append(SelectionState(FINAL, final_train, grids, first, min_budget, eta,
                                                  self.objective))
        self.validation: dict[str, ValidationRecord] = {}
        self.in_sample: dict[str, WindowResult] = {}  # selection label -> its winner on its whole training window

    # --- driving it ---------------------------------------------------------------------------------------------
    def _after(self) -> list[tuple[str, str, Request]]:
        """(selection, what, request) for finished selections: validation (folds) and the in-sample figure."""
        out = []
        for sel in self.selections:
            if not sel.done:
                continue
            fold = self.folds_by_label.get(sel.label)
            if fold is not None and sel.label not in self.validation:
                out += [(sel.label, "winner", Request(sel.base, fold.validate)),
                        (sel.label, "incumbent", Request(self.incumbent, fold.validate))]
            if sel.label not in self.in_sample:
                out.append((sel.label, "in_sample", Request(sel.base, sel.train)))
        return out

    def requests(self) -> list[Request]:
        """Every evaluation the run needs now and has no answer for, each once, in a fixed order."""
        seen: set[tuple[str, type, int, int]] = set()
        out = []
        for req in [r for s in self.selections for _, r in s.pending()] + [r for _, _, r in self._after()]:
            if req.ident not in seen:
                seen.add(req.ident)
                out.append(req)
        return out

    def advance(self, lookup: Lookup, windows: Collection[Window] | None = None) -> int:
        """Take every answer ``lookup`` has; returns how many were recorded.  ``windows``: the windows of the
        answers that arrived since the last call, when the caller knows them; a selection whose open rung runs on
        another window has nothing new and is not scanned (None: scan every selection)."""
        recorded = sum(s.advance(lookup) for s in self.selections
                       if windows is None or s.open_window in windows)
        pending: dict[str, dict[str, WindowResult]] = {}
        for label, what, req in self._after():
            result = lookup(req)
            if result is not None:
                pending.setdefault(label, {})[what] = result
        for label, found in pending.items():
            if "in_sample" in found:
                self.in_sample[label] = found["in_sample"]
                recorded += 1
            if "winner" in found and "incumbent" in found:
                fold = self.folds_by_label[label]
                selected_on = self.selection(label).selected_on
                self.validation[label] = ValidationRecord(fold, found["winner"], found["incumbent"], selected_on)
                recorded += 2
        return recorded

    # --- where it stands --------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return (all(s.done for s in self.selections) and len(self.validation) == len(self.folds)
                and len(self.in_sample) == len(self.selections))

    def selection(self, label: str) -> Selection:
        """A selection by label; FINAL is the one whose winner would go live (``live_label``)."""
        wanted = self.live_label if label == FINAL else label
        return next(s for s in self.selections if s.label == wanted).selection()

    @property
    def fold_selections(self) -> list[SelectionState]:
        return [s for s in self.selections if s.label != FINAL]

    def matrices(self) -> list[np.ndarray]:
        """The CSCV inputs known so far: each finished stage's candidate matrix, every fold's and then the final
        selection's (whose winner is the one that would go live), in selection then stage order (with every
        selection done: the order the gate takes them in)."""
        return [r.matrix for s in self.selections for r in s.runs if r.matrix is not None]

    def spa_matrices(self) -> dict[int, np.ndarray | None]:
        """Per fold index, its selection's SPA models (Selection.spa_matrix), and the final selection's under
        FINAL_SPA; every selection must be done."""
        return {self.spa_key(s.label): s.selection().spa_matrix for s in self.selections}

    def spa_key(self, label: str) -> int:
        """The key of a selection's SPA: its fold's index, or FINAL_SPA for the final selection."""
        return FINAL_SPA if label == FINAL else self.folds_by_label[label].index

    def evaluations(self) -> int:
        return sum(s.evaluations() for s in self.selections) + 2 * len(self.validation) + len(self.in_sample)

    def planned(self) -> int:
        return sum(s.planned() for s in self.selections) + 2 * len(self.folds) + len(self.selections)

    def stages(self) -> dict[str, str]:
        return {s.label: s.stage for s in self.selections}

    # --- the verdict ------------------------------------------------------------------------------------------------
    @property
    def winner(self) -> StrategyParams:
        """The parameters that would go live: the newest fold's winner (or the refit's, ``live_label``)."""
        return self.selection(self.live_label).winner

    def decide(self, settings: GateSettings, cscv: Sequence[CSCV] | None = None,
               spa: Sequence[SpaFold] | None = None) -> GateDecision:
        """The promotion gate on the folds' record (``cscv``: the matrices' CSCV computed elsewhere, in order;
        ``spa``: each fold's SPA computed elsewhere)."""
        if not self.done:
            raise RuntimeError("the run is not finished")
        records = [self.validation[label] for label in self.folds_by_label]
        # N counts every selection's trials (a refit's too: its winner is the one that would go live).
        trial_sharpes = [t for s in self.selections for t in s.selection().trial_sharpes]
        if spa is None:
            return promotion_gate(records, trial_sharpes, [] if cscv is not None else self.matrices(), settings,
                                  self.objective, cscv=cscv, spa_matrices=self.spa_matrices())
        return promotion_gate(records, trial_sharpes, [] if cscv is not None else self.matrices(), settings,
                              self.objective, cscv=cscv, spa=spa)

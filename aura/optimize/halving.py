"""Successive halving as a pure scheduler that a coordinator drives while remote workers evaluate.

Every candidate is first judged on the smallest budget; the best ``1/eta`` of a rung (at least one) go on to
the next, larger budget, until the full budget, where the best is the winner.  A budget is a number of bars
of training history (``TrainWindow.recent(budget)``): short histories are cheap and nested in the long ones.

The coordinator's loop::

    sh = SuccessiveHalving(candidate_ids, budgets=history_budgets(len(train), 3, spec.min_budget))
    while not sh.done:
        for task in sh.next_batch():          # (candidate, rung, budget) not yet answered
            dispatch(task)                    # a worker: evaluate_window(..., train.recent(task.budget), ...)
        for task, result in collect():
            sh.record(task, selection_score([result]))

The scheduler's state is nothing but the results recorded: ``next_batch`` is idempotent (it returns every task
of the current rung without a result, whether or not it was dispatched before), the same result recorded twice
is ignored and a different one refused.  A restarted coordinator builds a new scheduler with the same candidates
and budgets, records the stored results rung by rung (any order within a rung: a candidate must have reached a
rung before a result there is accepted), and is where it was.  Ranking is deterministic: higher
score first, then the candidate's position in the list given (a NaN score ranks below every number).

Every evaluation is a trial and stays in ``trials()``, pruned ones included: they count toward the number of
trials of the multiple-testing controls (gate.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from aura.optimize.objective import SelectionScore

PENDING, PROMOTED, PRUNED, WINNER = "pending", "promoted", "pruned", "winner"


@dataclass(frozen=True, order=True)
class Task:
    candidate: str
    rung: int
    budget: int  # bars of training history


@dataclass(frozen=True)
class Trial:
    candidate: str
    rung: int
    budget: int
    value: float  # the objective on this budget
    sharpe: float  # worst-benchmark excess Sharpe per bar (for the DSR's trial variance)
    status: str  # "promoted" (went on), "pruned" (stopped here), "winner", or "pending" (rung not complete)


@dataclass(frozen=True)
class Rung:
    index: int
    budget: int
    candidates: tuple[str, ...]  # who was evaluated here, in the order given
    promoted: tuple[str, ...]  # who went on (the last rung: the winner), best first; empty while incomplete


def history_budgets(full: int, eta: int = 3, min_budget: int = 1) -> tuple[int, ...]:
    """Budgets ``full / eta^k`` (rounded) down to ``min_budget``, smallest first: 730, eta 3, min 180 -> (243, 730)."""
    if full < 1 or min_budget < 1 or eta < 2:
        raise ValueError(f"need full >= 1, min_budget >= 1, eta >= 2 (got {full}, {min_budget}, {eta})")
    budgets = [full]
    while round(budgets[0] / eta) >= min_budget and round(budgets[0] / eta) < budgets[0]:
        budgets.insert(0, round(budgets[0] / eta))
    return tuple(budgets)


class SuccessiveHalving:
    def __init__(self, candidates: Sequence[str], budgets: Sequence[int], eta: int = 3) -> None:
        if not candidates:
            raise ValueError("successive halving needs at least one candidate")
        if len(set(candidates)) != len(candidates):
            dup = next(c for c in candidates if list(candidates).count(c) > 1)
            raise ValueError(f"candidate {dup!r} is listed twice (deduplicate by parameter digest first)")
        if not budgets or any(b < 1 for b in budgets) or any(a >= b for a, b in itertools.pairwise(budgets)):
            raise ValueError(f"budgets must be positive and strictly increasing, got {list(budgets)}")
        if not isinstance(eta, int) or eta < 2:
            raise ValueError(f"eta must be an integer >= 2, got {eta!r}")
        self.candidates: tuple[str, ...] = tuple(candidates)
        self.budgets: tuple[int, ...] = tuple(int(b) for b in budgets)
        self.eta = eta
        self._order = {c: i for i, c in enumerate(self.candidates)}
        self._results: list[dict[str, SelectionScore]] = [{} for _ in self.budgets]
        # A complete rung's ranking cannot change (record() refuses a different second answer), and the
        # coordinator asks for it on every answer: ranked once.
        self._promoted: dict[int, tuple[str, ...]] = {}
        self._entered: dict[int, tuple[str, ...]] = {}

    # --- driving it ------------------------------------------------------------------------------------------
    def next_batch(self) -> list[Task]:
        """Tasks of the current rung that have no result yet (empty when done), in candidate order."""
        rung = self.current_rung
        if rung is None:
            return []
        done = self._results[rung]
        return [Task(c, rung, self.budgets[rung]) for c in self._entrants(rung) if c not in done]

    def record(self, task: Task, score: SelectionScore) -> None:
        """A worker's answer.  Refused: a task this schedule never issues, a score on another number of bars,
        and a second, different score for the same task (a redelivered identical one is ignored)."""
        if not isinstance(score, SelectionScore):
            raise TypeError("record() takes a SelectionScore (objective.selection_score: training windows only)")
        if not 0 <= task.rung < len(self.budgets) or task.budget != self.budgets[task.rung]:
            raise ValueError(f"{task} does not match the budgets {self.budgets}")
        if task.candidate not in self._entrants(task.rung):
            raise ValueError(f"{task.candidate!r} has not reached rung {task.rung}")
        if score.bars != task.budget:
            raise ValueError(f"the score of {task} was computed on {score.bars} bars, not {task.budget}")
        known = self._results[task.rung].get(task.candidate)
        if known is not None:
            if _same(known, score):
                return
            raise ValueError(f"{task} already has a different result: {known} vs {score} (non-deterministic "
                             "evaluation?)")
        self._results[task.rung][task.candidate] = score

    # --- where it stands -------------------------------------------------------------------------------------
    @property
    def current_rung(self) -> int | None:
        """The lowest rung still missing results (None when every rung is complete)."""
        for rung in range(len(self.budgets)):
            if len(self._results[rung]) < len(self._entrants(rung)):
                return rung
        return None

    @property
    def done(self) -> bool:
        return self.current_rung is None

    @property
    def winner(self) -> str | None:
        if not self.done:
            return None
        return self._ranked(len(self.budgets) - 1)[0]

    def promoted(self, rung: int) -> tuple[str, ...]:
        """Who went on from ``rung`` (best first); empty until the rung is complete."""
        known = self._promoted.get(rung)
        if known is not None:
            return known
        if len(self._results[rung]) < len(self._entrants(rung)):
            return ()
        ranked = self._ranked(rung)
        went_on = ranked[:1] if rung == len(self.budgets) - 1 else ranked[:self.keep(len(ranked))]
        if went_on:  # a rung nobody has reached yet is "complete" with no one in it: not final, not kept
            self._promoted[rung] = went_on
        return went_on

    def pruned(self, rung: int) -> tuple[str, ...]:
        """Who stopped at ``rung`` (in candidate order); empty until the rung is complete."""
        went_on = set(self.promoted(rung))
        if not went_on:
            return ()
        return tuple(c for c in self._entrants(rung) if c not in went_on)

    def keep(self, n: int) -> int:
        """How many of ``n`` candidates go on: the best 1/eta, rounded down, at least one."""
        return max(1, n // self.eta)

    def ladder(self) -> list[Rung]:
        return [Rung(r, self.budgets[r], self._entrants(r), self.promoted(r)) for r in range(len(self.budgets))
                if self._entrants(r)]

    def trials(self) -> list[Trial]:
        """Every evaluation recorded, rung by rung, in candidate order, with what became of it."""
        out = []
        for rung, results in enumerate(self._results):
            went_on = set(self.promoted(rung))
            last = rung == len(self.budgets) - 1
            for c in self._entrants(rung):
                s = results.get(c)
                if s is None:
                    continue
                if not went_on:
                    status = PENDING
                elif c in went_on:
                    status = WINNER if last else PROMOTED
                else:
                    status = PRUNED
                out.append(Trial(c, rung, self.budgets[rung], s.value, s.sharpe, status))
        return out

    @property
    def n_trials(self) -> int:
        """Distinct candidates evaluated at least once, pruned ones included."""
        return len(self._results[0])

    @property
    def n_evaluations(self) -> int:
        return sum(len(r) for r in self._results)

    def trial_sharpes(self, rung: int = 0) -> dict[str, float]:
        """Per-bar Sharpe of every candidate evaluated at ``rung``, in candidate order.  Rung 0 holds every trial,
        pruned ones included, on one common sample: the DSR's trial Sharpes."""
        results = self._results[rung]
        return {c: results[c].sharpe for c in self.candidates if c in results}

    # --- internals -------------------------------------------------------------------------------------------
    def _entrants(self, rung: int) -> tuple[str, ...]:
        if rung == 0:
            return self.candidates
        known = self._entered.get(rung)
        if known is not None:
            return known
        went_on = set(self.promoted(rung - 1))
        entrants = tuple(c for c in self.candidates if c in went_on)
        if went_on:  # fixed once the rung below is complete (promoted() is then final): asked on every answer
            self._entered[rung] = entrants
        return entrants

    def _ranked(self, rung: int) -> tuple[str, ...]:
        results = self._results[rung]

        def key(c: str) -> tuple[float, int]:
            v = results[c].value
            return (-v if not math.isnan(v) else math.inf, self._order[c])

        return tuple(sorted(results, key=key))


def _same(a: SelectionScore, b: SelectionScore) -> bool:
    def eq(x: float, y: float) -> bool:
        return x == y or (math.isnan(x) and math.isnan(y))

    return eq(a.value, b.value) and eq(a.sharpe, b.sharpe) and a.windows == b.windows

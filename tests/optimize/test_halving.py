"""Successive halving as a scheduler: rung sizes, 1/eta promoted, pruned trials counted, deterministic, resumable."""

from __future__ import annotations

import math
import random

import pytest

from aura.optimize.folds import TrainWindow, ValidationWindow
from aura.optimize.halving import PROMOTED, PRUNED, WINNER, SuccessiveHalving, Task, history_budgets
from aura.optimize.objective import SelectionScore

END = 10_000


def score(value: float, budget: int, sharpe: float | None = None) -> SelectionScore:
    return SelectionScore(value, value / 100 if sharpe is None else sharpe, (TrainWindow(END - budget, END),))


def run(sh: SuccessiveHalving, values: dict[str, float], shuffle: int | None = None) -> None:
    """Answer every task with the candidate's value (a bit better with more budget, same order)."""
    rng = random.Random(shuffle)
    while not sh.done:
        batch = sh.next_batch()
        if shuffle is not None:
            rng.shuffle(batch)
        for task in batch:
            sh.record(task, score(values[task.candidate] + task.rung * 0.01, task.budget))


def test_counts_per_rung_and_pruned_trials_are_counted() -> None:
    cands = [f"c{i:02d}" for i in range(27)]
    sh = SuccessiveHalving(cands, budgets=(1, 3, 9), eta=3)
    run(sh, {c: float(i) for i, c in enumerate(cands)})
    ladder = sh.ladder()
    assert [len(r.candidates) for r in ladder] == [27, 9, 3]  # everyone on the smallest budget, then 1/eta
    assert [r.budget for r in ladder] == [1, 3, 9]
    assert [len(r.promoted) for r in ladder] == [9, 3, 1]
    assert sh.winner == "c26"
    assert ladder[0].promoted == tuple(f"c{i}" for i in range(26, 17, -1))  # best first
    trials = sh.trials()
    assert len(trials) == sh.n_evaluations == 27 + 9 + 3
    assert sh.n_trials == 27  # every candidate counts as a trial, pruned ones included
    assert sum(t.status == PRUNED for t in trials) == 18 + 6 + 2
    assert sum(t.status == PROMOTED for t in trials) == 9 + 3
    assert [t.candidate for t in trials if t.status == WINNER] == ["c26"]
    assert len(sh.trial_sharpes()) == 27  # rung 0: every trial on one common sample
    assert sh.next_batch() == []


def test_looking_at_the_ladder_mid_run_changes_nothing() -> None:
    """Progress views (ladder, trials, pruned) taken before a rung is reached must not fix its outcome."""
    cands = [f"c{i}" for i in range(9)]
    values = {c: float(i) for i, c in enumerate(cands)}
    watched = SuccessiveHalving(cands, budgets=(3, 9, 27), eta=3)
    while not watched.done:
        watched.ladder(), watched.trials(), [watched.pruned(r) for r in range(3)]
        for task in watched.next_batch():
            watched.record(task, score(values[task.candidate] + task.rung * 0.01, task.budget))
    plain = SuccessiveHalving(cands, budgets=(3, 9, 27), eta=3)
    run(plain, values)
    assert [len(r.candidates) for r in watched.ladder()] == [9, 3, 1]
    assert watched.ladder() == plain.ladder() and watched.trials() == plain.trials()
    assert watched.winner == plain.winner == "c8"


@pytest.mark.parametrize("n,eta,sizes", [(10, 3, [10, 3, 1]), (4, 3, [4, 1, 1]), (1, 3, [1, 1, 1]),
                                         (16, 2, [16, 8, 4])])
def test_best_one_over_eta_rounded_down_at_least_one(n: int, eta: int, sizes: list[int]) -> None:
    cands = [f"c{i}" for i in range(n)]
    sh = SuccessiveHalving(cands, budgets=(10, 20, 40), eta=eta)
    run(sh, {c: -float(i) for i, c in enumerate(cands)})
    assert [len(r.candidates) for r in sh.ladder()] == sizes
    assert sh.winner == "c0"


def test_ties_break_by_candidate_order_and_nan_ranks_last() -> None:
    sh = SuccessiveHalving(["a", "b", "c", "d", "e", "f"], budgets=(5, 10), eta=3)
    for task, v in zip(sh.next_batch(), [1.0, math.nan, 2.0, 2.0, 1.0, math.nan], strict=True):
        sh.record(task, score(v, task.budget))
    assert sh.promoted(0) == ("c", "d")  # 2.0 twice: the earlier candidate first
    assert sh.pruned(0) == ("a", "b", "e", "f")
    for task in sh.next_batch():
        sh.record(task, score(math.nan if task.candidate == "c" else 0.5, task.budget))
    assert sh.winner == "d"


def test_same_results_in_any_order_give_the_same_ladder_and_trials() -> None:
    cands = [f"k{i}" for i in range(30)]
    values = {c: random.Random(1).random() + i % 7 for i, c in enumerate(cands)}
    runs = []
    for seed in (None, 1, 2):
        sh = SuccessiveHalving(cands, budgets=(30, 90, 270), eta=3)
        run(sh, values, shuffle=seed)
        runs.append((sh.winner, sh.ladder(), sh.trials()))
    assert runs[0] == runs[1] == runs[2]


def test_next_batch_is_idempotent_and_a_restart_resumes() -> None:
    cands = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    sh = SuccessiveHalving(cands, budgets=(3, 9))
    first = sh.next_batch()
    assert first == sh.next_batch() == [Task(c, 0, 3) for c in cands]
    answered = {}
    for task in first[:5]:
        answered[task] = score(float(ord(task.candidate)), 3)
        sh.record(task, answered[task])
    assert [t.candidate for t in sh.next_batch()] == ["f", "g", "h", "i"]  # what is still missing
    again = SuccessiveHalving(cands, budgets=(3, 9))  # the coordinator restarted: replay the stored results
    for task, s in reversed(list(answered.items())):
        again.record(task, s)
    assert again.next_batch() == sh.next_batch()
    assert [t.status for t in again.trials()] == ["pending"] * 5


def test_records_are_checked() -> None:
    sh = SuccessiveHalving(["a", "b", "c"], budgets=(3, 9))
    task = sh.next_batch()[0]
    sh.record(task, score(1.0, 3))
    sh.record(task, score(1.0, 3))  # a redelivered identical result changes nothing
    assert sh.n_evaluations == 1
    with pytest.raises(ValueError, match="already has a different result"):
        sh.record(task, score(2.0, 3))
    with pytest.raises(ValueError, match="computed on 9 bars, not 3"):
        sh.record(Task("b", 0, 3), score(1.0, 9))
    with pytest.raises(ValueError, match="does not match the budgets"):
        sh.record(Task("b", 0, 4), score(1.0, 4))
    with pytest.raises(ValueError, match="has not reached rung 1"):
        sh.record(Task("b", 1, 9), score(1.0, 9))
    with pytest.raises(ValueError, match="has not reached rung 0"):
        sh.record(Task("zz", 0, 3), score(1.0, 3))
    with pytest.raises(TypeError, match="SelectionScore"):
        sh.record(Task("b", 0, 3), 1.0)  # type: ignore[arg-type]


def test_a_validation_window_cannot_become_a_selection_score() -> None:
    with pytest.raises(TypeError, match="training windows only"):
        SelectionScore(1.0, 0.1, (ValidationWindow(0, 10),))  # type: ignore[arg-type]


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        SuccessiveHalving(["a", "a"], budgets=(1, 3))
    with pytest.raises(ValueError, match="strictly increasing"):
        SuccessiveHalving(["a"], budgets=(3, 3))
    with pytest.raises(ValueError, match="eta"):
        SuccessiveHalving(["a"], budgets=(1, 3), eta=1)
    with pytest.raises(ValueError, match="at least one candidate"):
        SuccessiveHalving([], budgets=(1,))


def test_history_budgets() -> None:
    assert history_budgets(730, 3, 180) == (243, 730)
    assert history_budgets(4320, 3, 720) == (1440, 4320)
    assert history_budgets(27, 3, 1) == (1, 3, 9, 27)
    assert history_budgets(100, 3, 100) == (100,)

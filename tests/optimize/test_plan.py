"""The walk-forward run as a state machine (aura/optimize/plan.py): given the same answers, in any order, partly
known, or replayed after a restart, it chooses what the sequential reference (walkforward.select / validate_fold /
promotion_gate) chooses, and the CSCVs computed elsewhere give the gate's own verdict."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, SignalCache
from aura.optimize.folds import final_train_window, walk_forward_folds
from aura.optimize.gate import GateSettings, spa_fold
from aura.optimize.grids import parse_grids
from aura.optimize.objective import BenchmarkCloses, WindowResult, evaluate_window
from aura.optimize.plan import FINAL, Request, WalkForwardRun, rung_sizes
from aura.optimize.stats import pbo_cscv
from aura.strategy.params import StrategyParams, params_digest
from tests.optimize.test_end_to_end import SPEC, TINY, walk_forward

DAY_MS = 86_400_000
GATE = GateSettings(spa_reps=500)


class Answers:
    """Evaluations on demand, each once (what a result store holds)."""

    def __init__(self, market: Market, benchmarks: BenchmarkCloses) -> None:
        self.market, self.benchmarks = market, benchmarks
        self.cfg, self.cache = BacktestConfig(bar_ms=DAY_MS), SignalCache(64)
        self.known: dict[Any, WindowResult] = {}

    def compute(self, req: Request) -> None:
        if req.ident not in self.known:
            self.known[req.ident] = evaluate_window(self.market, req.params, req.window, self.benchmarks, self.cfg,
                                                    self.cache)

    def lookup(self, req: Request) -> WindowResult | None:
        return self.known.get(req.ident)


def new_run(market: Market) -> WalkForwardRun:
    grids = parse_grids(TINY, "tiny")
    n = len(market.panel.timestamps)
    return WalkForwardRun(walk_forward_folds(n, SPEC)[-3:], final_train_window(n, SPEC), grids,
                          grids.apply_base(StrategyParams()), SPEC.min_budget)


@pytest.fixture(scope="module")
def reference(replay_market: Market, replay_benchmarks: BenchmarkCloses) -> Any:
    return walk_forward(replay_market, replay_benchmarks)


def test_any_order_of_partial_answers_reaches_the_reference(replay_market: Market, replay_benchmarks: BenchmarkCloses,
                                                            reference: Any) -> None:
    selections, decision, live = reference
    answers, rng = Answers(replay_market, replay_benchmarks), random.Random(7)
    run = new_run(replay_market)
    assert run.planned() == sum(sum(rung_sizes(n, 3, 3)) for n in (9, 2, 2, 4)) * 4 + 2 * 3 + 4
    while not run.done:
        wanted = run.requests()
        assert len({r.ident for r in wanted}) == len(wanted), "a request is asked for twice"
        rng.shuffle(wanted)
        for req in wanted[:max(1, len(wanted) // 3)]:  # workers answer a part, in any order
            answers.compute(req)
        run.advance(answers.lookup)
    assert [run.selection(f"fold {f.index}").winner for f in run.folds] == [s.winner for s in selections]
    assert run.winner == live.winner
    got = run.decide(GATE)
    assert got.checks == decision.checks and got.windows == decision.windows and got.n_trials == decision.n_trials
    assert run.evaluations() == run.planned()  # the estimate is exact once every stage has opened
    assert set(run.in_sample) == {*run.folds_by_label, FINAL}


def test_told_which_windows_were_answered_it_reaches_the_reference(replay_market: Market,
                                                                  replay_benchmarks: BenchmarkCloses,
                                                                  reference: Any) -> None:
    """The coordinator passes the windows of the answers that arrived: only selections open on them are scanned,
    and the run still chooses what the reference chooses."""
    selections, decision, live = reference
    answers, rng = Answers(replay_market, replay_benchmarks), random.Random(11)
    run, taken_late = new_run(replay_market), 0
    while not run.done:
        wanted = run.requests()
        rng.shuffle(wanted)
        part = wanted[:max(1, len(wanted) // 3)]
        for req in part:
            answers.compute(req)
        # Answers whose windows nobody mentions stay unread by the selections; told their windows, they are taken.
        searched = sum(sel.evaluations() for sel in run.selections)
        run.advance(answers.lookup, set())
        assert sum(sel.evaluations() for sel in run.selections) == searched
        run.advance(answers.lookup, {r.window for r in part})
        taken_late += sum(sel.evaluations() for sel in run.selections) - searched
    assert taken_late > 0
    assert [run.selection(f"fold {f.index}").winner for f in run.folds] == [s.winner for s in selections]
    assert run.winner == live.winner
    assert run.decide(GATE).checks == decision.checks


def test_a_restart_replays_stored_answers_in_any_order(replay_market: Market, replay_benchmarks: BenchmarkCloses,
                                                       reference: Any) -> None:
    answers = Answers(replay_market, replay_benchmarks)
    first = new_run(replay_market)
    for _ in range(4):  # the first life gets part of the way
        for req in first.requests():
            answers.compute(req)
        first.advance(answers.lookup)
    assert not first.done
    stored = dict(answers.known)
    again = new_run(replay_market)  # the second life: a new state machine, the same store
    shuffled = dict(random.Random(3).sample(sorted(stored.items(), key=lambda kv: repr(kv[0])), len(stored)))
    while again.advance(lambda r: shuffled.get(r.ident)):
        pass
    assert again.evaluations() == first.evaluations()
    assert [r.ident for r in again.requests()] == [r.ident for r in first.requests()]
    while not again.done:
        for req in again.requests():
            answers.compute(req)
        again.advance(answers.lookup)
    assert again.decide(GATE).checks == reference[1].checks


def test_cscv_and_spa_computed_elsewhere_give_the_gates_own_verdict(replay_market: Market,
                                                             replay_benchmarks: BenchmarkCloses) -> None:
    answers = Answers(replay_market, replay_benchmarks)
    run = new_run(replay_market)
    while not run.done:
        for req in run.requests():
            answers.compute(req)
        run.advance(answers.lookup)
    remote = [pbo_cscv(m, GATE.cscv_partitions) for m in run.matrices()]
    assert run.decide(GATE, cscv=remote) == run.decide(GATE)
    spa = [spa_fold(k, m, ("GOLD", "SPY"), GATE) for k, m in reversed(run.spa_matrices().items())]  # any order
    assert run.decide(GATE, cscv=remote, spa=spa) == run.decide(GATE)
    with pytest.raises(ValueError, match="partitions"):
        run.decide(GATE, cscv=[pbo_cscv(m, 8) for m in run.matrices()])


def test_the_full_grid_is_a_single_rung(replay_market: Market, replay_benchmarks: BenchmarkCloses) -> None:
    """min_budget = the training length: every candidate on its whole training window, no halving."""
    grids = parse_grids(TINY, "tiny")
    n = len(replay_market.panel.timestamps)
    run = WalkForwardRun(walk_forward_folds(n, SPEC)[-1:], final_train_window(n, SPEC), grids,
                         grids.apply_base(StrategyParams()), SPEC.train)
    answers = Answers(replay_market, replay_benchmarks)
    while not run.done:
        for req in run.requests():
            assert len(req.window) in (SPEC.train, SPEC.validate)
            answers.compute(req)
        run.advance(answers.lookup)
    assert all(len(s.halving.budgets) == 1 for sel in run.selections for s in sel.runs if s.halving)
    assert run.evaluations() == 2 * (9 + 2 + 2 + 4) + 2 + 2


def test_what_would_go_live_is_the_newest_folds_winner_judged_on_bars_that_never_chose_it(
        replay_market: Market, replay_benchmarks: BenchmarkCloses) -> None:
    """The refit (a final selection on the newest training window) went live with no window it never saw judging
    it: the gate's per-window tests judged the fold winners, never the set promoted (found by an audit).  By
    default what would go live is the newest fold's winner, whose validation window (the newest bars) never
    chose it: the gate's tests on that window are on the very set promoted.  No selection runs twice, so its
    trials are counted once."""
    grids = parse_grids(TINY, "tiny")
    n = len(replay_market.panel.timestamps)
    folds = walk_forward_folds(n, SPEC)[-2:]
    run = WalkForwardRun(folds, None, grids, grids.apply_base(StrategyParams()), SPEC.min_budget)
    answers = Answers(replay_market, replay_benchmarks)
    while not run.done:
        for req in run.requests():
            answers.compute(req)
        run.advance(answers.lookup)
    newest = f"fold {folds[-1].index}"
    assert [s.label for s in run.selections] == [f"fold {f.index}" for f in folds]  # no refit selection
    assert run.live_label == newest and run.selection(FINAL).train == run.selection(newest).train
    assert params_digest(run.winner) == params_digest(run.selection(newest).winner)
    record = run.validation[newest]  # the promoted set itself, on the newest bars, beside the incumbent
    promoted_there = answers.lookup(Request(run.winner, folds[-1].validate))
    assert promoted_there is not None and np.array_equal(record.winner.returns, promoted_there.returns)
    assert record.fold.validate.stop == n and not record.fold.validate.overlaps(run.selection(newest).train)
    decision = run.decide(GATE)
    assert [w.fold for w in decision.windows][-1] == folds[-1].index
    assert all(f.label != "final" for f in decision.spa_folds)

"""The pure pieces end to end on five symbols of data/replay: folds -> four stages of successive halving with the
real fast backtester on training windows -> each fold's winner and the incumbent on its validation window ->
the promotion gate.  Whatever the verdict, it must be complete, explained and the same on a second run."""

from __future__ import annotations

import numpy as np

from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, SignalCache
from aura.optimize.folds import FoldSpec, Window, final_train_window, walk_forward_folds
from aura.optimize.gate import FINAL_SPA, GateDecision, GateSettings, promotion_gate
from aura.optimize.grids import parse_grids
from aura.optimize.halving import PRUNED
from aura.optimize.objective import BenchmarkCloses, WindowResult, evaluate_window
from aura.optimize.walkforward import Selection, select, validate_fold
from aura.strategy.params import StrategyParams

DAY_MS = 86_400_000
TINY = """
[base]
min_quote_volume = 0.0  # five symbols: keep all of them in the universe

[[stage]]
name = "score_weights"
[stage.grid]
w_trend = [0.0, 0.5, 1.0]
w_vol_adj = [0.0, 0.5, 1.0]

[[stage]]
name = "screen"
[stage.grid]
screen_max_drawdown = [0.4, 0.8]

[[stage]]
name = "regime"
[stage.grid]
regime_confirm = [1, 3]

[[stage]]
name = "risk"
[stage.grid]
stop_loss = [0.0, 0.15]
kill_switch_drawdown = [0.35, 1.0]
kill_switch_cap = [0.6]  # a switch of 1.0 bounds the loss only through the cap (params.validate_tradable)
"""
SPEC = FoldSpec(train=365, embargo=10, validate=120, step=120, warmup=365, min_budget=40)


def walk_forward(market: Market, benchmarks: BenchmarkCloses) -> tuple[list[Selection], GateDecision, Selection]:
    cfg = BacktestConfig(bar_ms=DAY_MS)
    cache = SignalCache(64)

    def evaluate(p: StrategyParams, w: Window) -> WindowResult:
        return evaluate_window(market, p, w, benchmarks, cfg, cache)

    grids = parse_grids(TINY, "tiny")
    incumbent = grids.apply_base(StrategyParams())
    folds = walk_forward_folds(len(market.panel.timestamps), SPEC)[-3:]  # the three newest folds: fast
    selections, records = [], []
    for f in folds:
        s = select(evaluate, f.train, grids, incumbent, SPEC.min_budget)
        selections.append(s)
        records.append(validate_fold(evaluate, f, s, incumbent))
    live = select(evaluate, final_train_window(len(market.panel.timestamps), SPEC), grids, incumbent,
                  SPEC.min_budget)
    # N counts the final selection's trials too; CSCV over every selection's stages, the final one's included;
    # SPA per fold on that fold's selection, and on the final selection (its winner is the one that would go live)
    decision = promotion_gate(records, [t for s in [*selections, live] for t in s.trial_sharpes],
                              [m for s in [*selections, live] for m in s.matrices], GateSettings(spa_reps=500),
                              spa_matrices={**{f.index: s.spa_matrix for f, s in zip(folds, selections, strict=True)},
                                            FINAL_SPA: live.spa_matrix})
    return selections, decision, live


def test_walk_forward_end_to_end(replay_market: Market, replay_benchmarks: BenchmarkCloses) -> None:
    selections, decision, live = walk_forward(replay_market, replay_benchmarks)
    for s in selections:
        assert [r.stage for r in s.stages] == ["score_weights", "screen", "regime", "risk"]
        halving = s.stages[0].halving
        assert halving is not None
        assert halving.budgets == (41, 122, 365)
        assert [len(r.candidates) for r in halving.ladder()] == [9, 3, 1]  # the best 1/3 go on
        assert sum(t.status == PRUNED for t in halving.trials()) == 6 + 2
        assert [r.halving.n_trials for r in s.stages if r.halving] == [9, 2, 2, 4]
        for w in s.selected_on:  # ranked on its own training bars only
            assert s.train.start <= w.start and w.stop == s.train.stop
        for k in range(1, 4):  # each stage kept the winner of the one before
            prev, cur = s.stages[k - 1].winner, s.stages[k].winner
            assert all(getattr(cur, n) == getattr(prev, n) for r in s.stages[:k] for n in
                       (TINY_NAMES[r.stage]))
        # The DSR's trials: one selection run (its four stages ranked on one 41-bar window), not one per stage
        [trials] = s.trial_sharpes
        assert trials.bars == 41 and len(trials.sharpes) == 17
        assert list(trials.sharpes) == [v for r in s.stages if r.halving for v in r.halving.trial_sharpes().values()]
        assert all(m.shape == (2, 41, len(r.candidates)) for r, m in zip(
            [r for r in s.stages if r.matrix is not None], s.matrices, strict=True))
    # every trial of every selection (3 folds and the final one) and stage is counted, pruned ones included
    assert decision.n_trials == 4 * 17
    # each fold's SPA (and the final selection's, last) has every trial of its four stages as models, on the
    # smallest budget
    assert [f.models for f in decision.spa_folds] == [17, 17, 17, 17]
    assert [f.label for f in decision.spa_folds][-1] == "final"
    assert all(s.spa_matrix is not None and s.spa_matrix.shape == (2, 41, 17) for s in selections)
    assert [c.name for c in decision.checks] == ["beats_GOLD_every_window", "beats_SPY_every_window",
                                                 "beats_incumbent", "deflated_sharpe", "pbo", "spa_GOLD", "spa_SPY"]
    assert decision.passed == all(c.passed for c in decision.checks)
    assert len(decision.windows) == 3 and all(set(w.benchmarks) == {"GOLD", "SPY"} for w in decision.windows)
    assert all(np.isfinite([c.value for c in decision.checks]))
    assert decision.summary()  # an honest "no" says which test failed and by how much
    assert live.train.stop == len(replay_market.panel.timestamps)

    again, decision2, live2 = walk_forward(replay_market, replay_benchmarks)
    assert [s.winner for s in again] == [s.winner for s in selections]
    assert [t for s in again for r in s.stages for t in r.trials] == [
        t for s in selections for r in s.stages for t in r.trials]
    assert decision2.checks == decision.checks and decision2.windows == decision.windows
    assert live2.winner == live.winner


TINY_NAMES = {"score_weights": ("w_trend", "w_vol_adj"), "screen": ("screen_max_drawdown",),
              "regime": ("regime_confirm",), "risk": ("stop_loss", "kill_switch_drawdown")}

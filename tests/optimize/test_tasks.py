"""Tasks and their answers (aura/optimize/tasks.py): canonical inputs, content keys that change exactly with what
determines an answer, bounded batches, and a worker's evaluation equal to the in-process one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aura.backtest.data import default_rules
from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, SignalCache
from aura.optimize.folds import TrainWindow, ValidationWindow, Window
from aura.optimize.gate import GateSettings, spa_fold
from aura.optimize.objective import BenchmarkCloses, evaluate_window
from aura.optimize.stats import pbo_cscv
from aura.optimize.tasks import (
    MAX_BARS_PER_TASK,
    EvalInputs,
    Evaluator,
    TaskError,
    batches,
    config_from_json,
    cscv_result,
    cscv_task,
    decode_matrix,
    digest,
    encode_matrix,
    engine_fingerprint,
    eval_key,
    eval_task,
    is_eval_key,
    run_cscv,
    run_spa,
    settings_json,
    spa_key,
    spa_result,
    spa_settings,
    spa_task,
    window_result,
)
from aura.strategy.params import StrategyParams

DAY_MS = 86_400_000
CFG = BacktestConfig(bar_ms=DAY_MS)


@pytest.fixture(scope="module")
def inputs(replay_market: Market, replay_benchmarks: BenchmarkCloses) -> EvalInputs:
    panel = replay_market.panel
    return EvalInputs("1d", panel, default_rules(panel).rules, replay_benchmarks)


def test_inputs_round_trip_with_a_stable_digest(inputs: EvalInputs) -> None:
    blob = inputs.encode()
    back = EvalInputs.decode(blob)
    assert back.encode() == blob and digest(back.encode()) == digest(blob)
    assert back.panel.symbols == inputs.panel.symbols and back.rules == inputs.rules
    np.testing.assert_array_equal(back.benchmarks.closes, inputs.benchmarks.closes)
    with pytest.raises(TaskError, match="not optimizer inputs"):
        EvalInputs.decode(b'{"magic":"other"}\n')


def test_keys_change_with_what_determines_an_answer_and_nothing_else(inputs: EvalInputs) -> None:
    d, e, s = digest(inputs.encode()), engine_fingerprint(), settings_json(CFG)
    p, w = StrategyParams(), TrainWindow(400, 600)
    key = eval_key(d, e, s, p, w)
    assert key == eval_key(d, e, s, StrategyParams(), TrainWindow(400, 600))
    assert key == eval_key(d, e, s, p, ValidationWindow(400, 600))  # the kind of window changes no number
    others = {eval_key("x" + d[1:], e, s, p, w), eval_key(d, "x" + e[1:], s, p, w),
              eval_key(d, e, settings_json(BacktestConfig(bar_ms=DAY_MS, fee_rate=0.002)), p, w),
              eval_key(d, e, s, StrategyParams(top_k=4), w), eval_key(d, e, s, p, TrainWindow(401, 600))}
    assert key not in others and len(others) == 5


def test_settings_round_trip_including_an_uncapped_participation() -> None:
    cfg = BacktestConfig(bar_ms=DAY_MS, max_participation=float("inf"), impact_coefficient=0.01)
    text = settings_json(cfg)
    assert json.loads(text)["max_participation"] == "inf" and "start" not in json.loads(text)
    assert settings_json(config_from_json(text)) == text
    with pytest.raises(TaskError, match="does not know"):
        config_from_json(json.dumps({"bar_ms": DAY_MS, "warp_speed": 9}))


def test_batches_are_bounded_by_parameter_sets_and_answer_size() -> None:
    params = [StrategyParams(top_k=k) for k in range(1, 11)] * 7
    short, long_ = TrainWindow(0, 100), TrainWindow(0, 5000)
    got = batches([(p, short) for p in params] + [(p, long_) for p in params], max_params=32)
    assert [len(ps) for ps, w in got if w == short] == [32, 32, 6]
    assert all(len(ps) * 5000 <= MAX_BARS_PER_TASK for ps, w in got if w == long_)
    assert sum(len(ps) for ps, _ in got) == 140


def test_a_workers_evaluation_equals_the_in_process_one(inputs: EvalInputs, replay_market: Market,
                                                        replay_benchmarks: BenchmarkCloses) -> None:
    blob = inputs.encode()
    params = [StrategyParams(min_quote_volume=0.0), StrategyParams(min_quote_volume=0.0, stop_loss=0.05)]
    windows = [TrainWindow(800, 1100), ValidationWindow(1200, 1300)]
    task = eval_task(digest(blob), engine_fingerprint(), settings_json(CFG), params, windows)
    outcomes = list(Evaluator(EvalInputs.decode(blob)).run(task))
    assert len(outcomes) == 4
    cache = SignalCache(8)
    for outcome, (p, w) in zip(outcomes, [(p, w) for p in params for w in windows], strict=True):
        local = evaluate_window(replay_market, p, w, replay_benchmarks, CFG, cache)
        remote = window_result(outcome, w, replay_benchmarks)
        assert outcome.key == eval_key(task.inputs, task.engine, task.settings, p, w)
        assert remote.returns.tobytes() == local.returns.tobytes()
        assert (remote.turnover, remote.trades) == (local.turnover, local.trades)
        np.testing.assert_array_equal(remote.bench, local.bench)


def test_a_cscv_task_answers_the_gates_statistic() -> None:
    matrix = np.random.default_rng(1).normal(0, 0.01, size=(2, 64, 6))
    blob = encode_matrix(matrix)
    np.testing.assert_array_equal(decode_matrix(blob), matrix)
    task = cscv_task(digest(blob), engine_fingerprint(), 16)
    got = cscv_result(run_cscv(task, decode_matrix(blob)), 16)
    want = pbo_cscv(matrix, 16)
    assert (got.pbo, got.rows_used, got.distinct, got.n_partitions) == (want.pbo, want.rows_used, want.distinct, 16)
    np.testing.assert_array_equal(got.logits, want.logits)


def test_an_spa_task_answers_the_gates_statistic_under_a_key_of_its_settings() -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(0, 0.01, size=(2, 64, 6)) + np.array([0.004, 0.0])[:, None, None]  # an edge on GOLD only
    blob = encode_matrix(matrix)
    gate = GateSettings(spa_reps=300, spa_seed=4)
    settings = spa_settings(gate.spa_reps, gate.spa_block_size, gate.spa_seed)
    task = spa_task(digest(blob), engine_fingerprint(), settings)
    outcome = run_spa(task, decode_matrix(blob))
    got = spa_result(outcome, 5, ("GOLD", "SPY"))
    assert got == spa_fold(5, matrix, ("GOLD", "SPY"), gate)  # what the gate computes in-process, bit for bit
    assert got.models == 6 and got.pvalues["GOLD"] < 0.05 < got.pvalues["SPY"]
    assert outcome.key == spa_key(digest(blob), engine_fingerprint(), settings)
    assert outcome.key != spa_key(digest(blob), engine_fingerprint(), spa_settings(301, None, 4))
    assert is_eval_key(outcome.key) is False and is_eval_key(eval_key("i", "e", "s", StrategyParams(),
                                                                      Window(0, 5)))


def test_window_type_is_kept_for_the_core() -> None:
    w = Window(3, 9)
    assert not isinstance(w, TrainWindow)  # the core only ranks on TrainWindow: the coordinator keeps the type

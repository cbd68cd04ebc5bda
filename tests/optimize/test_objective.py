"""The objective: benchmark calendars aligned to the crypto bars, the worst-benchmark excess Sharpe, the penalty,
and the wall between selection (training windows) and judgement (validation windows)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, run_fast
from aura.optimize.folds import TrainWindow, ValidationWindow, Window
from aura.optimize.objective import (
    BenchmarkCloses,
    ObjectiveSettings,
    WindowResult,
    evaluate_window,
    excess_matrix,
    excess_sharpe,
    rung_scores,
    selection_score,
    validation_score,
)
from aura.strategy.params import StrategyParams

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def ms(day: str, hour: int = 0) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000) + hour * HOUR_MS


# US sessions around New Year 2024: Fri 2023-12-29, (Mon 01-01 closed), Tue 01-02 .. Fri 01-05, Mon 01-08.
SESSIONS = ["2023-12-29", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]
CLOSES = [99.0, 100.0, 101.0, 102.0, 103.0, 105.0]


def test_daily_alignment_weekends_and_holidays_carry_the_last_close() -> None:
    labels = np.array([ms(d) for d in SESSIONS])
    bars = np.array([ms("2023-12-30") + i * DAY_MS for i in range(10)])  # Sat 12-30 .. Mon 01-08, every day
    b = BenchmarkCloses.align({"SPY": (labels, np.array(CLOSES))}, bars, DAY_MS)
    # Crypto bar D closes at D+1 00:00; the session labelled D closes at D 21:00: bar D carries session D.
    assert b.closes[0].tolist() == [99, 99, 99, 100, 101, 102, 103, 103, 103, 105]
    r = b.returns(Window(1, 10))[0]  # bars Sun 12-31 .. Mon 01-08
    expected = [0.0, 0.0, 100 / 99 - 1, 101 / 100 - 1, 102 / 101 - 1, 103 / 102 - 1, 0.0, 0.0, 105 / 103 - 1]
    assert r == pytest.approx(expected)  # Mon 01-01 (holiday), Sat, Sun: 0; Monday 01-08 takes Fri -> Mon
    # Compounded over a window it is the close-to-close return between the closes known at its edges.
    assert np.prod(1 + r) - 1 == pytest.approx(105 / 99 - 1)
    with pytest.raises(ValueError, match="start at bar 1"):
        b.returns(Window(0, 5))


def test_hourly_alignment_the_new_close_lands_on_the_bar_closing_at_21_utc() -> None:
    labels = np.array([ms(d) for d in SESSIONS])
    bars = np.array([ms("2024-01-02") + i * HOUR_MS for i in range(48)])  # Tue 00:00 .. Wed 23:00
    b = BenchmarkCloses.align({"SPY": (labels, np.array(CLOSES))}, bars, HOUR_MS)
    r = b.returns(Window(1, 48))[0]
    moved = [i + 1 for i in np.flatnonzero(r)]
    assert moved == [20, 44]  # the 20:00 bars (closing at 21:00) of Tue and Wed
    assert r[19] == pytest.approx(100 / 99 - 1)  # Fri 12-29 (99) -> Tue 01-02 (100), across the holiday
    assert r[43] == pytest.approx(101 / 100 - 1)


def test_a_window_before_the_first_known_close_is_refused() -> None:
    labels = np.array([ms("2024-01-05")])
    bars = np.array([ms("2024-01-01") + i * DAY_MS for i in range(8)])
    b = BenchmarkCloses.align({"GOLD": (labels, np.array([50.0]))}, bars, DAY_MS)
    with pytest.raises(ValueError, match="benchmark GOLD has no close known before bar 2"):
        b.returns(Window(3, 8))
    assert b.returns(Window(5, 8)).tolist() == [[0.0, 0.0, 0.0]]


def result(window: Window, r: list[float], gold: list[float], spy: list[float], turnover: float = 0.0,
           ) -> WindowResult:
    return WindowResult(window, np.array(r), np.array([gold, spy]), ("GOLD", "SPY"), DAY_MS, turnover, 0)


def test_worst_benchmark_excess_sharpe_and_penalty_by_hand() -> None:
    # r = 0.01, -0.005, 0.02;  gold 0, 0, 0.01;  SPY 0.005, 0, 0
    # excess over gold: 0.01, -0.005, 0.01: mean 0.005, deviations .005, -.01, .005, var = 150e-6 / 2 = 75e-6,
    #   SR = 0.005 / 0.0086603 = 0.577350
    # excess over SPY: 0.005, -0.005, 0.02: mean 0.0066667, var = 316.667e-6 / 2 = 158.333e-6, SR = 0.529813
    # worst = 0.529813 (SPY); annualised * sqrt(365) = 10.122;  penalty 0.0025 * turnover 10 = 0.025
    w = TrainWindow(10, 13)
    res = result(w, [0.01, -0.005, 0.02], [0, 0, 0.01], [0.005, 0, 0], turnover=10.0)
    assert excess_sharpe(res) == pytest.approx([0.577350, 0.529813], abs=1e-6)
    s = selection_score([res])
    assert s.sharpe == pytest.approx(0.529813, abs=1e-6)
    assert s.value == pytest.approx(0.529813 * math.sqrt(365) - 0.025, abs=1e-5)
    assert s.windows == (w,) and s.bars == 3
    calm = selection_score([result(w, [0.01, -0.005, 0.02], [0, 0, 0.01], [0.005, 0, 0], turnover=2.0)])
    assert calm.value - s.value == pytest.approx(0.0025 * 8)  # same returns, less trading: better
    assert selection_score([res], ObjectiveSettings(turnover_penalty=0.0)).value == pytest.approx(
        0.529813 * math.sqrt(365), abs=1e-5)


def test_the_worst_benchmark_is_taken_per_window_then_averaged() -> None:
    a = result(TrainWindow(10, 13), [0.01, 0.0, 0.01], [0.0, 0.0, 0.0], [0.0, 0.02, 0.0])  # SPY is the worse
    b = result(TrainWindow(20, 23), [0.01, 0.0, 0.01], [0.0, 0.02, 0.0], [0.0, 0.0, 0.0])  # gold is the worse
    per_window = [min(excess_sharpe(x)) for x in (a, b)]
    s = selection_score([a, b], ObjectiveSettings(turnover_penalty=0.0))
    assert s.sharpe == pytest.approx(np.mean(per_window))
    assert s.sharpe < min(np.mean([excess_sharpe(x)[k] for x in (a, b)]) for k in (0, 1))


def test_selection_sees_training_windows_only_and_judgement_validation_only() -> None:
    v = result(ValidationWindow(50, 53), [0.01, 0.0, 0.01], [0, 0, 0], [0, 0, 0])
    t = result(TrainWindow(10, 13), [0.01, 0.0, 0.01], [0, 0, 0], [0, 0, 0])
    with pytest.raises(TypeError, match="selection may only see training windows"):
        selection_score([t, v])
    with pytest.raises(TypeError, match="judgement is on validation windows only"):
        validation_score([v, t])
    assert validation_score([v]) == selection_score([t]).value  # one objective, written once


def test_results_must_be_on_one_calendar() -> None:
    with pytest.raises(ValueError, match="calendars are not aligned"):
        WindowResult(TrainWindow(0, 3), np.zeros(3), np.zeros((2, 4)), ("GOLD", "SPY"), DAY_MS, 0.0, 0)
    a = result(TrainWindow(10, 13), [0.01, 0.0, 0.01], [0, 0, 0], [0, 0, 0])
    b = result(TrainWindow(11, 14), [0.01, 0.0, 0.01], [0, 0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="same window"):
        excess_matrix([a, b])
    m = excess_matrix([a, a])
    assert m.shape == (2, 3, 2)


def test_evaluate_window_on_real_data(replay_market: Market, replay_benchmarks: BenchmarkCloses) -> None:
    t_len = len(replay_market.panel.timestamps)
    cfg = BacktestConfig(bar_ms=DAY_MS)
    window = ValidationWindow(t_len - 200, t_len)
    params = StrategyParams(min_quote_volume=0.0)
    res = evaluate_window(replay_market, params, window, replay_benchmarks, cfg)
    direct = run_fast(replay_market, params, BacktestConfig(bar_ms=DAY_MS, start=t_len - 200, end=t_len - 1))
    assert np.prod(1 + res.returns) == pytest.approx(direct.equity[-1] / cfg.initial_cash)
    assert res.returns.shape == (200,) and res.bench.shape == (2, 200) and res.bench_names == ("GOLD", "SPY")
    closes = replay_benchmarks.closes
    for b in range(2):
        assert np.prod(1 + res.bench[b]) == pytest.approx(closes[b, t_len - 1] / closes[b, t_len - 201])
    weekend = [i for i, ts in enumerate(replay_market.panel.timestamps[t_len - 200:])
               if datetime.fromtimestamp(ts / 1000, UTC).weekday() >= 5]
    assert np.all(res.bench[:, weekend] == 0.0)  # no US session on Saturday or Sunday
    assert res.trades == len(direct.trades) and res.turnover > 0
    again = evaluate_window(replay_market, params, window, replay_benchmarks, cfg)
    assert np.array_equal(again.returns, res.returns)  # deterministic
    other = BenchmarkCloses(replay_benchmarks.names, replay_benchmarks.bar_open_ms[1:], DAY_MS,
                            replay_benchmarks.closes[:, 1:])
    with pytest.raises(ValueError, match="another bar grid"):
        evaluate_window(replay_market, params, window, other, cfg)


def test_a_rung_scored_in_one_pass_gives_each_candidate_exactly_its_own_score() -> None:
    """The coordinator scores a rung's answers together (rung_scores); halving must rank on the very floats
    selection_score gives each one alone, or a coordinated run could pick another winner than the reference."""
    rng = np.random.default_rng(7)
    bars = np.arange(400, dtype=np.int64) * DAY_MS
    closes = np.vstack([100 * np.cumprod(1 + rng.normal(0, 0.01, 400)), 50 * np.cumprod(1 + rng.normal(0, 0.02, 400))])
    bench = BenchmarkCloses(("GOLD", "SPY"), bars, DAY_MS, closes)
    wide, narrow = TrainWindow(100, 343), TrainWindow(262, 343)
    results = [WindowResult(w, rng.normal(0.001, 0.03, len(w)), bench.returns(w), bench.names, DAY_MS,
                            float(rng.uniform(0, 5)), 3) for w in [wide] * 40 + [narrow] * 7 + [wide]]
    results.append(WindowResult(wide, np.zeros(len(wide)), bench.returns(wide), bench.names, DAY_MS, 0.0, 0))
    together = rung_scores(results, ObjectiveSettings())
    alone = [selection_score([r], ObjectiveSettings()) for r in results]
    assert [(s.value, s.sharpe, s.windows) for s in together] == [(s.value, s.sharpe, s.windows) for s in alone]
    assert bench.returns(wide) is bench.returns(wide) and not bench.returns(wide).flags.writeable
    with pytest.raises(TypeError, match="training windows"):
        rung_scores([WindowResult(ValidationWindow(100, 343), results[0].returns, results[0].bench, bench.names,
                                  DAY_MS, 0.0, 0)])


def test_a_window_run_from_earlier_bars_opens_with_the_state_they_made(replay_market: Market,
                                                                       replay_benchmarks: BenchmarkCloses) -> None:
    """A fold's validation window is judged as a slice of one continuous run from its training window's start:
    the same returns, bar for bar, as that run's last bars, and only the trades of the scored bars counted.  With
    a kill-switch that latched before the window (cooldown 0: latched until an operator resets it), the window
    stays in cash; run from a fresh start the same window would trade."""
    t_len = len(replay_market.panel.timestamps)
    cfg = BacktestConfig(bar_ms=DAY_MS)
    params = StrategyParams(min_quote_volume=0.0)
    start, stop, run_from = t_len - 200, t_len, t_len - 600
    carried = evaluate_window(replay_market, params, ValidationWindow(start, stop, run_from), replay_benchmarks, cfg)
    whole = run_fast(replay_market, params, BacktestConfig(bar_ms=DAY_MS, start=run_from, end=stop - 1))
    skip = start - run_from
    assert np.allclose(carried.returns, whole.equity[skip:] / whole.equity[skip - 1:-1] - 1.0, rtol=0, atol=1e-12)
    assert carried.trades == int(np.count_nonzero(np.asarray(whole.trades.bar) >= start))
    fresh = evaluate_window(replay_market, params, ValidationWindow(start, stop), replay_benchmarks, cfg)
    assert fresh.window.first_bar == start and not np.array_equal(fresh.returns, carried.returns)
    assert ValidationWindow(start, stop, start).first_bar == start
    with pytest.raises(ValueError, match="cannot run from bar"):
        ValidationWindow(start, stop, start + 1)

    # A switch that latches within the bars before the window keeps the whole window in cash.
    touchy = StrategyParams(min_quote_volume=0.0, kill_switch_drawdown=0.05, kill_switch_cooldown=0,
                            kill_switch_cap=0.5)
    before = run_fast(replay_market, touchy, BacktestConfig(bar_ms=DAY_MS, start=run_from, end=start - 1))
    assert before.halted_bar >= 0, "the test needs a switch that latches before the window"
    latched = evaluate_window(replay_market, touchy, ValidationWindow(start, stop, run_from), replay_benchmarks, cfg)
    assert np.all(latched.returns == 0.0) and latched.trades == 0
    rearmed = evaluate_window(replay_market, touchy, ValidationWindow(start, stop), replay_benchmarks, cfg)
    assert rearmed.trades > 0, "from a fresh start the same set trades in the window"

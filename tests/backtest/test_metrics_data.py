"""Metrics on known curves, benchmark alignment without lookahead, and the data loader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from aura.backtest.data import default_rules, last_valid_index, list_symbols, load_benchmark, load_panel
from aura.backtest.engine import AT_CLOSE, AT_INTRABAR, AT_OPEN, Trades
from aura.backtest.metrics import (
    align_equity_benchmark,
    bars_per_year,
    buy_and_hold,
    equity_at_lows,
    intrabar_drawdown,
    monthly_returns,
    performance,
    round_trips,
    trading_stats,
)
from aura.strategy.rebalance import R_ADD, R_ENTER, R_EXIT, R_STOP_LOSS, R_TRIM
from aura.strategy.types import Panel

DAY = 86_400_000
HOUR = 3_600_000


def test_performance_on_a_known_curve() -> None:
    eq = 100.0 * 1.001 ** np.arange(1, 366)  # one year of +0.1% a day
    m = performance(eq, 100.0, DAY)
    assert m["cagr"] == pytest.approx(1.001**365 - 1)
    assert m["max_drawdown"] == 0.0 and m["volatility"] == pytest.approx(0.0, abs=1e-12)
    dip = np.array([110.0, 88.0, 99.0, 132.0])
    m = performance(dip, 100.0, DAY)
    assert m["max_drawdown"] == pytest.approx(0.2)
    assert m["total_return"] == pytest.approx(0.32)
    r = np.array([0.1, -0.2, 0.125, 1 / 3])
    assert m["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365))
    assert m["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(365))
    assert m["calmar"] == pytest.approx(m["cagr"] / 0.2)
    assert bars_per_year(HOUR) == 8760


def test_trading_stats() -> None:
    s = trading_stats(np.array([500.0, 500.0]), np.array([0.5, 0.5]), np.full(365, 1000.0),
                      np.r_[np.zeros(65), np.full(300, 0.5)], DAY)
    assert s == {"turnover": pytest.approx(1.0), "fees_paid": 1.0, "time_in_market": pytest.approx(300 / 365),
                 "trades": 2, "traded_notional": 1000.0}


def test_intrabar_bound_marks_what_was_held_through_each_bar_at_its_low() -> None:
    # 2000 cash; 10 units bought at bar 1's open at 100 (fee 1); bar 2 stops out 4 of them at 85 (fee 0.34).
    trades = Trades([1, 2], [0, 0], [1, -1], [10.0, 4.0], [100.0, 85.0], [1.0, 0.34], [R_ENTER, R_STOP_LOSS],
                    [AT_OPEN, AT_INTRABAR])
    cash = np.array([2000.0, 999.0, 999.0 + 340.0 - 0.34])
    low = np.array([[95.0], [90.0], [80.0]])
    eq_low = equity_at_lows(trades, 0, cash, 2000.0, low, np.full((3, 1), 100.0))
    # Bar 0: nothing held.  Bar 1: the open buy is held through the bar.  Bar 2: all 10 units were held when
    # the bar opened (the stop sold 4 inside it, above its low): marking all 10 at the low is the bound.
    assert eq_low.tolist() == [2000.0, 999.0 + 900.0, 999.0 + 800.0]
    equity = np.array([2000.0, 2049.0, 1949.0])
    dd = intrabar_drawdown(equity, eq_low, 2000.0)
    assert dd == pytest.approx([0.0, 1 - 1899 / 2000, 1 - 1799 / 2049])  # peaks: the closes before each bar


def test_round_trips_run_flat_to_flat_with_fees_in_the_pnl() -> None:
    trades = Trades([0, 2, 3, 3, 5], [0, 0, 0, 1, 1], [1, -1, -1, 1, 1], [2.0, 1.0, 1.0, 5.0, 5.0],
                    [10.0, 12.0, 13.0, 4.0, 5.0], [0.02, 0.012, 0.013, 0.02, 0.025],
                    [R_ENTER, R_TRIM, R_EXIT, R_ENTER, R_ENTER], [AT_OPEN, AT_OPEN, AT_CLOSE, AT_OPEN, AT_OPEN])
    bar_time = np.arange(6, dtype=np.int64) * DAY
    trips = round_trips(trades, ("A_USDT", "B_USDT"), np.array([0.01, 0.01]), bar_time, 0, DAY,
                        np.array([13.0, 6.0]))
    a, b = trips
    assert (a["symbol"], a["open"], a["fills"], a["exit_reason"]) == ("A_USDT", False, 3, "exit")
    assert a["entry_price"] == 10.0 and a["exit_price"] == 12.5
    assert a["pnl"] == pytest.approx((12 - 0.012) + (13 - 0.013) - (20 + 0.02))
    assert a["entry_time"] == 0 and a["exit_time"] == 4 * DAY and a["holding_bars"] == 4.0  # bar 3's close
    # still open at the end: marked at the last close, without a fee
    assert (b["symbol"], b["open"], b["qty"], b["entry_price"], b["exit_price"]) == ("B_USDT", True, 10.0, 4.5, 6.0)
    assert b["pnl"] == pytest.approx(60.0 - (45.0 + 0.045))


def test_a_sell_that_leaves_only_dust_closes_the_trip_and_reports_the_dust() -> None:
    # One symbol, lot step 0.1, minimum 0.1 coins and 5 USDT.  Fees taken in the coin: 10 bought -> 9.99 held.
    trades = Trades([0, 2, 3, 5, 6, 7, 8], [0] * 7, [1, -1, 1, -1, 1, -1, -1],
                    [9.99, 9.9, 4.995, 5.0, 10.0, 9.6, 0.4], [10.0, 12.0, 10.0, 11.0, 10.0, 10.0, 20.0],
                    [0.0, 0.1188, 0.0, 0.055, 0.1, 0.096, 0.008],
                    [R_ENTER, R_EXIT, R_ADD, R_EXIT, R_ENTER, R_TRIM, R_EXIT], [AT_OPEN] * 7)
    trips = round_trips(trades, ("A_USDT",), np.array([0.1]), np.arange(9, dtype=np.int64) * DAY, 0, DAY,
                        np.array([20.0]), np.array([0.1]), np.array([5.0]))
    assert [t["open"] for t in trips] == [False, False, False]
    first, second, third = trips
    # 9.99 - 9.9 = 0.09 left: less than a lot, no order can sell it.  Closed, the 0.09 reported.
    assert first["dust"] == pytest.approx(0.09) and first["exit_time"] == 2 * DAY and first["exit_reason"] == "exit"
    assert first["pnl"] == pytest.approx(9.9 * 12.0 - 0.1188 - 99.9)
    # The next buy is a new trip (the strategy called it "add": the dust was a holding to it); it carries the
    # 0.09, so 0.085 is left after selling 5.0 of 5.085.
    assert second["entry_time"] == 3 * DAY and second["qty"] == pytest.approx(4.995)
    assert second["dust"] == pytest.approx(0.085) and second["fills"] == 2
    # A trim leaving 0.485 coins (0.4 in lots, worth 4 USDT < 5 at its price): unsellable, so the trip ends there.
    # When the price doubles the 0.4 become sellable and are sold: that sale belongs to the trip that left them,
    # whose dust is then the sub-lot 0.085 it still carries.
    assert third["exit_time"] == 7 * DAY and third["exit_reason"] == "trim" and third["fills"] == 3
    assert third["dust"] == pytest.approx(0.085)
    assert third["proceeds"] == pytest.approx(9.6 * 10.0 - 0.096 + 0.4 * 20.0 - 0.008)
    # Above the minimums a remainder is a position: the same trim with a 1 USDT minimum keeps the trip open.
    kept = round_trips(trades, ("A_USDT",), np.array([0.1]), np.arange(9, dtype=np.int64) * DAY, 0, DAY,
                       np.array([20.0]), np.array([0.1]), np.array([1.0]))
    assert [t["exit_time"] for t in kept] == [2 * DAY, 5 * DAY, 8 * DAY] and kept[2]["exit_reason"] == "exit"


def test_dust_below_half_a_lot_is_real_coins_reported_and_carried() -> None:
    # 9.93 coins held, 9.9 sold in lots of 0.1: 0.03 left, under the half lot the engines' books round away.  The
    # journal's books do hold it, so the trip reports it and the next trip carries it: 5.03 held, 5.0 sold.
    trades = Trades([0, 1, 2, 3], [0] * 4, [1, -1, 1, -1], [9.93, 9.9, 5.0, 5.0], [10.0] * 4, [0.0] * 4,
                    [R_ENTER, R_EXIT, R_ADD, R_EXIT], [AT_OPEN] * 4)
    trips = round_trips(trades, ("A_USDT",), np.array([0.1]), np.arange(4, dtype=np.int64) * DAY, 0, DAY,
                        np.array([10.0]), np.array([0.1]), np.array([5.0]))
    assert [(t["open"], t["dust"]) for t in trips] == [(False, pytest.approx(0.03)), (False, pytest.approx(0.03))]


def test_monthly_returns_chain_to_the_total() -> None:
    jan31, feb1, mar1 = 1_706_659_200_000, 1_706_745_600_000, 1_709_251_200_000  # 2024-01-31, 02-01, 03-01
    months = monthly_returns(np.array([jan31, feb1, mar1]), np.array([110.0, 99.0, 121.0]), 100.0)
    assert months == {"2024-01": pytest.approx(0.1), "2024-02": pytest.approx(-0.1), "2024-03": pytest.approx(2 / 9)}


def test_an_equity_close_is_used_only_once_it_has_happened() -> None:
    labels = np.array([0, DAY, 2 * DAY], dtype=np.int64)  # trading dates D0, D1, D2 (closing ~21:00 UTC)
    close = np.array([10.0, 11.0, 12.0])
    daily = align_equity_benchmark(labels, close, np.arange(-1, 4, dtype=np.int64) * DAY, DAY)
    # the crypto day D closes at D+1 00:00, after the US close of D: day D sees D's close, never D+1's
    assert np.isnan(daily[0]) and daily[1:].tolist() == [10.0, 11.0, 12.0, 12.0]
    hours = np.arange(24, 48, dtype=np.int64) * HOUR  # crypto hours of D1
    hourly = align_equity_benchmark(labels, close, hours, HOUR)
    assert hourly[:20].tolist() == [10.0] * 20  # bars closing before 21:00 only know D0
    assert hourly[20:].tolist() == [11.0] * 4  # the 20:00-21:00 bar closes at 21:00


def test_buy_and_hold_needs_a_price_on_the_first_bar() -> None:
    assert buy_and_hold(np.array([np.nan, 2.0]), 100.0) is None
    assert buy_and_hold(np.array([2.0, np.nan, 3.0]), 100.0).tolist() == [100.0, 100.0, 150.0]


def test_loader_aligns_symbols_and_never_fills(shared_data_dir: Path) -> None:
    panel = load_panel(shared_data_dir, "1d", ["BTC_USDT", "MATIC_USDT", "PEPE_USDT"])
    assert panel.symbols == ("BTC_USDT", "MATIC_USDT", "PEPE_USDT")
    assert np.all(np.diff(panel.timestamps) == DAY)
    last = last_valid_index(panel)
    matic, pepe = panel.close[:, 1], panel.close[:, 2]
    assert np.isnan(matic[last[1] + 1:]).all() and last[1] < len(panel.timestamps) - 1  # ends 2023-04-18
    assert np.isnan(pepe[: np.argmax(~np.isnan(pepe))]).all()  # nothing before the listing
    assert len(list_symbols(shared_data_dir, "1d")) == 41
    truncated = load_panel(shared_data_dir, "1d", ["BTC_USDT"], end_ms=int(panel.timestamps[100]))
    assert len(truncated.timestamps) == 101


def test_benchmarks_load_or_are_absent(shared_data_dir: Path, tmp_path: Path) -> None:
    spy = load_benchmark(shared_data_dir, "SPY")
    assert spy is not None and np.all(np.diff(spy[0]) > 0) and np.all(spy[1] > 0)
    assert load_benchmark(tmp_path, "SPY") is None


def test_default_rules_step_from_the_first_close(panel_1d: Panel) -> None:
    rules = default_rules(panel_1d).rules
    assert rules["BTC_USDT"].step_size == pytest.approx(1e-6)  # BTC first close ~4,300 USDT
    assert rules["PEPE_USDT"].step_size == 1.0 and rules["DOGE_USDT"].step_size == 1.0
    assert all(r.min_notional == 5.0 for r in rules.values())

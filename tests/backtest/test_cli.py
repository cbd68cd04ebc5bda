"""`aura backtest` end to end: files written, benchmarks optional, byte-identical reruns."""

from __future__ import annotations

import argparse
import html
import json
import math
import shutil
from pathlib import Path

import polars as pl
import pytest

from aura.backtest.cli import add_backtest_parser, main
from aura.backtest.run import RunSpec, run_params
from aura.strategy.params import StrategyParams, params_digest

FILES = ("metrics.json", "equity.parquet", "trades.parquet", "round_trips.parquet", "report.png", "report.html")


@pytest.fixture(scope="module")
def small_data(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four daily symbols (MATIC's series ends inside the run) and no benchmarks folder."""
    root = tmp_path_factory.mktemp("data")
    (root / "binance" / "1d").mkdir(parents=True)
    for sym in ("BTC_USDT", "ETH_USDT", "MATIC_USDT", "SOL_USDT"):
        shutil.copy(shared_data_dir / "binance" / "1d" / f"{sym}.parquet", root / "binance" / "1d")
    return root


def test_backtest_writes_every_output_and_reruns_byte_identically(small_data: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"kill_switch_drawdown": 1.0, "min_quote_volume": 0.0, "top_k": 2}))
    argv = ["backtest", "--data", str(small_data), "--timeframe", "1d", "--params", str(params),
            "--start", "2021-01-01", "--end", "2023-12-31", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    s = metrics["strategy"]
    for key in ("cagr", "volatility", "sharpe", "sortino", "max_drawdown", "calmar", "turnover", "fees_paid",
                "time_in_market"):
        assert isinstance(s[key], float), key
    assert s["trades"] > 10 and sum(s["trade_reasons"].values()) == s["trades"]
    assert metrics["benchmarks"]["BTC"]["available"] is True
    assert metrics["benchmarks"]["SPY"] == {"available": False}  # no benchmarks folder: reported, not faked
    assert metrics["run"]["first_bar_open"] == "2021-01-01T00:00:00Z"
    assert metrics["run"]["last_bar_open"] == "2023-12-31T00:00:00Z"
    equity = pl.read_parquet(tmp_path / "a" / "equity.parquet")
    assert equity.height == 1095 and equity["equity"].min() > 0
    # Readable times beside the epoch-ms columns: UTC datetimes, in each of the three files.
    assert equity["time"].dtype == pl.Datetime("ms", "UTC") and str(equity["time"][0]) == "2021-01-01 00:00:00+00:00"
    trades = pl.read_parquet(tmp_path / "a" / "trades.parquet")
    assert trades.height == s["trades"] and set(trades["side"]) == {"buy", "sell"}
    assert (tmp_path / "a" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Capacity, halts, the intrabar bound, round trips and months, each consistent with the curves.
    assert metrics["run"]["max_participation"] == 0.1 and metrics["run"]["impact_coefficient"] == pytest.approx(0.03)
    assert 0 < trades["participation"].max() <= 0.1 + 1e-12 or s["participation"]["capped_legs"] == 0
    assert s["halted_share"] == 0.0 and s["kill_switch"]["halts"] == 0  # the switch is off in this run
    assert s["max_drawdown_intrabar"] >= s["max_drawdown"] and equity["drawdown_intrabar"].max() > 0
    assert s["time_in_market"] == pytest.approx(float((equity["exposure"] > 1e-9).mean()))
    months = s["monthly_returns"]
    assert len(months) == 36 and next(iter(months)) == "2021-01"
    assert math.prod(1 + r for r in months.values()) == pytest.approx(s["final_equity"] / 10_000.0)
    trips = pl.read_parquet(tmp_path / "a" / "round_trips.parquet")
    assert trips.height == s["round_trips"]["closed"] + s["round_trips"]["open"] > 5
    # Every fill belongs to one trip, and the trips' P&L (open ones marked at the last close) is the run's P&L.
    assert trips["fills"].sum() == s["trades"]
    assert trips["pnl"].sum() == pytest.approx(s["final_equity"] - 10_000.0, rel=1e-9)
    assert (trips["exit_time"] >= trips["entry_time"]).all() and (trips["holding_bars"] >= 0).all()
    assert trips["entered_at"].dtype == pl.Datetime("ms", "UTC") and trips["exited_at"].dtype == trades["time"].dtype


def test_fast_engine_gives_the_same_files(small_data: Path, tmp_path: Path) -> None:
    argv = ["backtest", "--data", str(small_data), "--start", "2022-01-01", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    assert main([*argv, "--engine", "fast", "--out", str(tmp_path / "fast")]) == 0
    for name in ("equity.parquet", "trades.parquet"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "fast" / name).read_bytes(), name


def test_bad_input_is_a_clean_error(small_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"top_k": 0}))
    assert main(["backtest", "--data", str(small_data), "--params", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "top_k" in capsys.readouterr().err
    bad.write_text(json.dumps({"not_a_param": 1}))
    assert main(["backtest", "--data", str(small_data), "--params", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert main(["backtest", "--data", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def test_hourly_runs_scale_daily_lookbacks_or_refuse(shared_data_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """On 1h the daily defaults read as hourly bars lost 75.8% without a word: now they are scaled to the same
    durations and the run says so, or it refuses (--no-scale-lookbacks), or the parameters say they are hourly."""
    argv = ["backtest", "--data", str(shared_data_dir), "--timeframe", "1h", "--symbols", "BTC_USDT,ETH_USDT,SOL_USDT",
            "--start", "2024-02-01", "--end", "2024-03-31", "--quiet"]
    assert main([*argv, "--no-scale-lookbacks", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in 1d bars and the run is on 1h bars" in err and "--params-timeframe 1h" in err
    assert not (tmp_path / "refused").exists()

    assert main([*argv, "--out", str(tmp_path / "scaled")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[TIMEFRAME]")]
    assert len(lines) == 1 and "scaled x24 to 1h bars: momentum_lookback 30->720," in lines[0]
    assert "regime_sma 100->2400" in lines[0] and "rebalance_every 1->24" in lines[0]
    metrics = json.loads((tmp_path / "scaled" / "metrics.json").read_text())
    run, scaled = metrics["run"], metrics["run"]["lookbacks_scaled"]
    assert run["params_timeframe"] == "1d" and run["params"]["momentum_lookback"] == 720
    assert scaled["factor"] == 24 and scaled["changed"]["kill_switch_window"] == [90, 2160]
    assert scaled["source_params_digest"] == params_digest(StrategyParams()) != run["params_digest"]
    assert metrics["strategy"]["trades"] > 0
    assert f"[TIMEFRAME] {html.escape(scaled['summary'])}" in (tmp_path / "scaled" / "report.html").read_text()

    hourly = tmp_path / "hourly.json"
    hourly.write_text(json.dumps({"timeframe": "1h", "momentum_lookback": 48, "min_quote_volume": 0.0}))
    assert main([*argv, "--params", str(hourly), "--no-scale-lookbacks", "--out", str(tmp_path / "hourly")]) == 0
    assert "[TIMEFRAME]" not in capsys.readouterr().err
    run = json.loads((tmp_path / "hourly" / "metrics.json").read_text())["run"]
    assert run["params_timeframe"] == "1h" and run["lookbacks_scaled"] is None
    assert (run["params"]["momentum_lookback"], run["params"]["regime_sma"]) == (48, 100)  # as written
    assert main([*argv, "--params", str(hourly), "--params-timeframe", "1d", "--out", str(tmp_path / "x")]) == 2
    assert "declares timeframe 1h but --params-timeframe says 1d" in capsys.readouterr().err


def test_daily_parameters_on_daily_bars_are_used_as_they_are(tmp_path: Path) -> None:
    """What keeps every 1d result (the regression pins) unchanged: no copy, no rounding, the same object."""
    spec = RunSpec(data_dir=tmp_path)
    assert run_params(spec).params is spec.params and run_params(spec).changed == {}
    custom = RunSpec(data_dir=tmp_path, params=StrategyParams(momentum_lookback=7), params_timeframe="24h")
    assert run_params(custom).params is custom.params


def test_parser_registers_backtest_with_a_func() -> None:
    parser = argparse.ArgumentParser()
    add_backtest_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["backtest", "--data", "d", "--out", "o"])
    assert args.timeframe == "1d" and args.fill == "open" and args.engine == "reference" and callable(args.func)
    assert args.params_timeframe is None and args.scale_lookbacks is True

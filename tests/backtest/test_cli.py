"""`aura backtest` end to end: files written, benchmarks optional, byte-identical reruns."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from aura.backtest.cli import add_backtest_parser, main

FILES = ("metrics.json", "equity.parquet", "trades.parquet", "report.png")


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
    trades = pl.read_parquet(tmp_path / "a" / "trades.parquet")
    assert trades.height == s["trades"] and set(trades["side"]) == {"buy", "sell"}
    assert (tmp_path / "a" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_parser_registers_backtest_with_a_func() -> None:
    parser = argparse.ArgumentParser()
    add_backtest_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["backtest", "--data", "d", "--out", "o"])
    assert args.timeframe == "1d" and args.fill == "open" and args.engine == "reference" and callable(args.func)

"""`aura backtest` refuses impossible dates, costs and capital: one line on stderr, exit 2, no outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aura.backtest.cli import main


@pytest.fixture(scope="module")
def btc_only(shared_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One daily symbol (from 2017-08-17) and no benchmarks: enough to reach every check."""
    root = tmp_path_factory.mktemp("data")
    (root / "binance" / "1d").mkdir(parents=True)
    shutil.copy(shared_data_dir / "binance" / "1d" / "BTC_USDT.parquet", root / "binance" / "1d")
    return root


def _refused(data: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["backtest", "--data", str(data), "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists()  # refused before anything was written
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aura backtest: "), err
    return lines[0]


def test_an_end_before_the_first_bar_names_the_first_bar(btc_only: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(btc_only, tmp_path / "x", capsys, "--end", "2010-01-01")
    assert "--end 2010-01-01 is before the first bar" in line and "2017-08-17" in line
    assert "--start" not in line


def test_an_end_before_the_start_says_so(btc_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(btc_only, tmp_path / "x", capsys, "--start", "2021-01-01", "--end", "2020-01-01")
    assert line == "aura backtest: --end 2020-01-01 is before --start 2021-01-01"


def test_a_start_after_the_last_bar_names_the_last_bar(btc_only: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(btc_only, tmp_path / "x", capsys, "--start", "2030-01-01")
    assert "no bars on or after --start 2030-01-01" in line and "2024-12-05" in line


@pytest.mark.parametrize(("option", "value", "rule"), [
    ("--capital", "-5", "--capital must be a finite number > 0"),
    ("--capital", "0", "--capital must be a finite number > 0"),
    ("--capital", "inf", "--capital must be a finite number > 0"),
    ("--capital", "nan", "--capital must be a finite number > 0"),
    ("--fee", "-0.5", "--fee must be >= 0 and < 0.1"),
    ("--fee", "0.5", "--fee must be >= 0 and < 0.1"),
    ("--fee", "nan", "--fee must be >= 0 and < 0.1"),
    ("--slippage", "5", "--slippage must be >= 0 and < 0.1"),
    ("--slippage", "-0.001", "--slippage must be >= 0 and < 0.1"),
    ("--max-participation", "-1", "--max-participation must be > 0"),
    ("--impact", "-0.1", "--impact must be >= 0"),
])
def test_impossible_costs_and_capital_are_refused(option: str, value: str, rule: str, btc_only: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(btc_only, tmp_path / "x", capsys, option, value)
    assert rule in line, line


def test_free_trading_is_still_allowed(btc_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bounds are closed at zero: no fee and no slippage is a legitimate (optimistic) run."""
    argv = ["backtest", "--data", str(btc_only), "--out", str(tmp_path / "x"), "--quiet", "--fee", "0",
            "--slippage", "0", "--start", "2024-06-01", "--end", "2024-06-30"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "x" / "metrics.json").is_file()

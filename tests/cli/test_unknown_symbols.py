"""Unknown ``--symbols`` are an error on every command that takes them (issue 11): one line naming them and what
the data holds, a non-zero exit, no traceback and nothing started or written.  ``aura backtest`` is covered in
tests/backtest/test_report_html.py; these are ``aura optimize`` (which listed FOO_USDT as an all-empty column)
and ``aura exchange-sim`` (which silently served the symbols it had)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aura.exchange_sim import ExchangeSim
from aura.exchange_sim.config import SimConfig
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(120)
REPLAY = REPO_ROOT / "data" / "replay"


def _aura(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | {"AURA_HOME": str(tmp_path / "home")}
    # exchange-sim serves until interrupted once it starts: the timeout turns "it started anyway" into a failure.
    return subprocess.run([sys.executable, "-m", "aura.cli", *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def _assert_one_line_refusal(done: subprocess.CompletedProcess[str], prog: str, unknown: str, held: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"{prog}unknown symbol{'s' if ',' in unknown else ''} {unknown}: "), done.stderr
    assert held in done.stderr, done.stderr  # what the data holds instead


@pytest.mark.parametrize(("symbols", "unknown"), [
    ("BTC_USDT,FOO_USDT", "FOO_USDT"), ("FOO_USDT", "FOO_USDT"), ("BTC_USDT,bar,BAZ/USDT", "bar, BAZ/USDT"),
])
def test_optimize_refuses_unknown_symbols(tmp_path: Path, symbols: str, unknown: str) -> None:
    out, state = tmp_path / "out", tmp_path / "state"
    done = _aura(tmp_path, "optimize", "--data", str(REPLAY), "--symbols", symbols, "--out", str(out),
                 "--state", str(state))
    _assert_one_line_refusal(done, "aura optimize: ", unknown, "holds ADA_USDT, AVAX_USDT, BNB_USDT, BTC_USDT,")
    assert not out.exists() and not state.exists()


@pytest.mark.parametrize(("symbols", "unknown"), [("BTCUSDT,FOOUSDT", "FOOUSDT"), ("BTCUSDT,FOO", "FOO")])
def test_exchange_sim_refuses_unknown_symbols(tmp_path: Path, symbols: str, unknown: str) -> None:
    done = _aura(tmp_path, "exchange-sim", "--data", str(REPLAY), "--port", "0", "--symbols", symbols)
    held = "holds ADAUSDT, AVAXUSDT, BNBUSDT, BTCUSDT,"  # in Binance ids, as --symbols takes them
    _assert_one_line_refusal(done, "exchange-sim: cannot start: ", unknown, held)


def test_exchange_sim_serves_every_symbol_asked_for_in_any_spelling() -> None:
    sim = ExchangeSim(SimConfig(data_dir=REPLAY, symbols=("BTCUSDT", "eth_usdt", "SOL/USDT"), start="2024-01-01"))
    assert sim.market.listed() == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

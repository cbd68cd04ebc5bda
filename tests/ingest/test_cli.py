"""``aura data sync`` end to end: exit codes, progress bar on stderr, coverage table on stdout."""

from __future__ import annotations

import argparse
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from services.ingest.cli import add_data_parser, main, parse_time
from tests.conftest import REPO_ROOT
from tests.ingest.conftest import source

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, archive, api, gecko, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "AURA_HOME": str(tmp_path / "home"),
        "AURA_BINANCE_ARCHIVE_URL": archive.url,
        "AURA_BINANCE_API_URL": api.url,
        "AURA_COINGECKO_URL": gecko.url,
        "AURA_INGEST_CCXT_RATE_LIMIT_MS": "1",
        "AURA_COINGECKO_MIN_INTERVAL_S": "0",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_add_data_parser_registers_data_sync() -> None:
    parser = argparse.ArgumentParser(prog="aura")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "sync", "--symbols", "BTC/USDT", "--since", "2020-01-01"])
    assert callable(args.func) and args.exchange == "binance" and args.timeframe == "1d"
    assert args.since == parse_time("2020-01-01")


def test_cli_sync_prints_progress_and_coverage_table(env, capsys, data, shared_data_dir: Path) -> None:
    src = source(shared_data_dir, "1d", "ETH_USDT")
    holed = src.filter(~pl.col("timestamp").is_between(parse_time("2024-03-10"), parse_time("2024-03-11")))
    data.set("1d", "ETH_USDT", holed)  # two days nobody has
    code = main(["data", "sync", "--exchange", "binance", "--timeframe", "1d", "--symbols", "BTC/USDT,ETH/USDT",
                 "--since", "2024-01-01", "--until", "2024-06-30", "--now", "2024-12-06"])
    out, err = capsys.readouterr()
    assert code == 0
    bar = [line for line in err.splitlines() if "2/2" in line]
    assert len(bar) == 1 and bar[0].startswith("ETH/USDT") and "━" in bar[0], err  # rich's finished bar
    lines = out.strip().splitlines()
    assert lines[0].split() == ["symbol", "rows", "added", "first", "last", "complete", "gaps", "providers"]
    btc = next(line for line in lines if line.startswith("BTC/USDT")).split()
    assert btc[:6] == ["BTC/USDT", "182", "182", "2024-01-01", "2024-06-30", "yes"]
    assert btc[6:] == ["none", "binance_archive", "2024-01-01..2024-06-30"]
    eth = next(line for line in lines if line.startswith("ETH/USDT")).split()
    assert eth[1] == "180" and eth[6:8] == ["1", "confirmed"]
    assert "  ETH/USDT  2024-03-10..2024-03-11  2 candles  confirmed by binance_archive, ccxt:binance" in lines
    assert lines[-1].startswith("complete: yes")
    cached = pl.read_parquet(Path(env["AURA_HOME"]) / "cache/binance/1d/ETH_USDT.parquet")
    assert_frame_equal(cached, holed.filter(pl.col("timestamp").is_between(parse_time("2024-01-01"),
                                                                           parse_time("2024-06-30"))))


def test_cli_reports_pending_gaps_and_exits_nonzero_when_incomplete(env, archive, api, gecko, capsys) -> None:
    """Offline, nothing could be fetched: the table says so, and so does the exit status (a script that runs
    `aura data sync && aura backtest ...` must not go on as if the data were there)."""
    for face in (archive, api, gecko):
        face.fault("drop")
    code = main(["data", "sync", "--symbols", "BTCUSDT", "--since", "2024-01-01", "--now", "2024-12-06",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "━" not in err and "[DATA_GAP]" in err  # tagged log lines, no progress bar
    assert "PENDING" in out and out.strip().splitlines()[-1].startswith("complete: no")
    assert err.strip().splitlines()[-1] == "aura data sync: incomplete: BTC/USDT"


def test_cli_log_lines_stay_out_of_the_progress_bar(env, archive, api, gecko, capsys) -> None:
    """Warnings during a sync (here every provider failing) print as whole lines of their own, never inside the
    bar's line, as one readable line each (level, tag, message)."""
    for face in (archive, api, gecko):
        face.fault("drop")
    main(["data", "sync", "--symbols", "BTC/USDT,ETH/USDT", "--since", "2024-11-01", "--now", "2024-12-06"])
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert any(line.startswith("WARNING [DATA_GAP] ") for line in lines), err
    assert all("━" not in line for line in lines if "[DATA_GAP]" in line), "a log line was torn by the bar"
    assert not any(line.startswith("{") for line in lines), "JSON log lines beside the bar"


def test_in_a_terminal_log_lines_stay_out_of_the_live_bar(env, archive, api, gecko) -> None:
    """The same where it matters: in a real terminal (a pty), rich draws the bar live and redraws it in place; a
    log line written around it would land on the bar's line.  Every log line must arrive whole, on its own."""
    for face in (archive, api, gecko):
        face.fault("drop")
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "services.ingest.cli", "data", "sync", "--symbols",
                             "BTC/USDT,ETH/USDT", "--since", "2024-11-01", "--now", "2024-12-06"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO_ROOT,
                            env={**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "160"})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    pieces = [p for p in re.split(r"[\r\n]", plain) if p.strip()]
    assert any("━" in p for p in pieces), f"no live bar was drawn (not a terminal?): {plain[-2000:]}"
    logs = [p for p in pieces if "[DATA_GAP]" in p or '"tag"' in p]
    assert logs, plain[-2000:]
    # Whole lines, and readable ones: level, tag, message (JSON repeated the gap table in 400-character lines).
    torn = [p for p in logs if not p.startswith("WARNING [DATA_GAP] ") or "━" in p]
    assert not torn, torn[:3]
    assert not any(p.lstrip().startswith("{") for p in pieces), "JSON log lines on a terminal"


@pytest.mark.parametrize("symbol", ["BTC", "BTC/", "BTC/USDT/X", "??USDT"])
def test_a_symbol_that_is_no_pair_is_refused_in_one_line(env, capsys, symbol: str) -> None:
    code = main(["data", "sync", "--symbols", symbol, "--since", "2024-01-01", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "is not BASE/QUOTE" in err and "Traceback" not in err


def test_cli_real_error_exits_nonzero(env, tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("AURA_HOME", str(blocker))  # the cache cannot be created under a file
    code = main(["data", "sync", "--symbols", "BTC/USDT", "--since", "2024-11-01", "--now", "2024-12-06",
                 "--no-progress"])
    assert code == 1 and "ERROR" in capsys.readouterr().out


def test_cli_bad_date_is_a_usage_error(env) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "sync", "--symbols", "BTC/USDT", "--since", "yesterday"])
    assert exc.value.code == 2


def test_python_dash_m_end_to_end(env, shared_data_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "services.ingest.cli", "data", "sync", "--symbols", "SOL/USDT", "--timeframe", "4h",
         "--since", "2024-06-01", "--until", "2024-06-30", "--now", "2024-12-06"],
        cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SOL/USDT" in proc.stdout and "complete: yes" in proc.stdout
    cached = pl.read_parquet(Path(env["AURA_HOME"]) / "cache/binance/4h/SOL_USDT.parquet")
    src = source(shared_data_dir, "4h", "SOL_USDT")
    assert_frame_equal(cached, src.filter(pl.col("timestamp").is_between(parse_time("2024-06-01"),
                                                                         parse_time("2024-06-30T20:00"))))


def test_a_pair_the_exchange_does_not_list_is_refused_before_any_download(env, archive, api, gecko,
                                                                          tmp_path: Path) -> None:
    """FOOUSDT is a well-formed pair the exchange does not list: refused in one line naming it, exit 2, like
    backtest, optimize and exchange-sim (tests/cli/test_unknown_symbols.py), after the one request for the market
    list and before anything else: no archive file, no candle, no CoinGecko call, no cache."""
    proc = subprocess.run([sys.executable, "-m", "aura.cli", "data", "sync", "--symbols", "BTCUSDT,FOOUSDT,FOO_BTC",
                           "--since", "2024-01-01", "--now", "2024-12-06"],
                          cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert re.fullmatch(r"aura data sync: unknown symbols FOOUSDT, FOO_BTC: not in binance's market list "
                        r"\(\d+ pairs\); nothing downloaded \(delisted\? --include-unlisted asks the archive\)\n",
                        proc.stderr), proc.stderr
    assert dict(api.counts) == {"exchangeInfo": 1} and archive.total == 0 and gecko.total == 0
    assert not (tmp_path / "home" / "cache").exists()


def test_a_pair_sharing_a_coin_with_listed_ones_names_them(env, capsys) -> None:
    code = main(["data", "sync", "--symbols", "ETH/BTC,BTC/EUR", "--since", "2024-01-01", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("aura data sync: unknown symbols ETH/BTC, BTC/EUR: not in binance's market list ("), err
    assert "; it lists BTC/USDT, ETH/USDT; nothing downloaded" in err, err


def test_include_unlisted_asks_the_providers_for_a_pair_the_market_list_lacks(env, archive, api, gecko,
                                                                               capsys) -> None:
    """A delisted pair leaves Binance's market list but keeps its history in the archive: --include-unlisted
    skips the check, so the sync asks the providers as it always did (here none has FOO, so it ends incomplete)."""
    code = main(["data", "sync", "--symbols", "FOOUSDT", "--since", "2024-11-01", "--now", "2024-12-06",
                 "--no-progress", "--include-unlisted"])
    _, err = capsys.readouterr()
    assert code == 1 and err.strip().splitlines()[-1] == "aura data sync: incomplete: FOO/USDT", err
    assert "unknown symbol" not in err and archive.total > 0, "the archive was not asked"


def test_without_a_market_list_the_sync_runs_as_before_and_says_so(env, archive, api, gecko, capsys) -> None:
    """Offline the market list cannot be read: nothing is refused (a listed pair must not be turned away because
    the exchange is unreachable), a line says the symbols were not checked, and the sync ends incomplete as
    before."""
    for face in (archive, api, gecko):
        face.fault("drop")
    code = main(["data", "sync", "--symbols", "FOOUSDT", "--since", "2024-11-01", "--now", "2024-12-06",
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("aura data sync: symbols not checked: binance's market list is unavailable "
                               "(load_markets: "), err
    assert lines[-1] == "aura data sync: incomplete: FOO/USDT"
    assert out.strip().splitlines()[-1].startswith("complete: no")
    assert api.counts["exchangeInfo"] == 1, "the circuit opened at the first failure: the sync does not ask again"


def test_a_log_line_beside_the_bar_keeps_its_traceback_and_redacts_secrets() -> None:
    """The readable lines must not lose what the JSON lines carried: a per-symbol SYNC_ERROR's traceback, and the
    redaction of registered secrets."""
    import logging

    from services.ingest.cli import TaggedLine
    from shared.logging import register_secret

    register_secret("s3cr3t-value-for-the-test")
    try:
        raise ValueError("boom s3cr3t-value-for-the-test")
    except ValueError:
        record = logging.LogRecord("aura.ingest", logging.ERROR, __file__, 1, "BTC/USDT: failed with "
                                   "s3cr3t-value-for-the-test", None, sys.exc_info())
    record.tag = "SYNC_ERROR"
    line = TaggedLine().format(record)
    assert line.startswith("ERROR [SYNC_ERROR] BTC/USDT: failed") and "Traceback" in line and "ValueError" in line
    assert "s3cr3t-value-for-the-test" not in line

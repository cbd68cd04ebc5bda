"""report.html and the CLI summary of `aura backtest`, on real runs over the bundled replay data (data/replay).

The default parameters over the whole bundled history: eleven round trips on five symbols, then the kill-switch
latches (bar of 2018-07-25, i.e. at 2018-07-26 00:00 UTC) and holds to the end.  Every number the page shows is
checked against the files written beside it, not only that the page exists.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from aura.backtest import report as png_report
from aura.backtest.cli import main
from aura.backtest.report_html import COLORS, ENTRY_COLOR, EXIT_COLOR, duration, iso_utc
from aura.optimize.report_html import _line_chart
from tests.conftest import REPO_ROOT

REPLAY = REPO_ROOT / "data" / "replay"


class Rows(HTMLParser):
    """The text of every cell of every <tr> with a given class (one list per row)."""

    def __init__(self, row_class: str) -> None:
        super().__init__()
        self.row_class, self.rows, self._row, self._cell = row_class, [], None, None  # type: ignore[var-annotated]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr" and dict(attrs).get("class") == self.row_class:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None


def rows(page: str, row_class: str) -> list[list[str]]:
    parser = Rows(row_class)
    parser.feed(page)
    return parser.rows


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped parameters on the bundled 1d data, run as a user would (progress and summary on stderr)."""
    out = tmp_path_factory.mktemp("default")
    capture = out / "stderr.txt"
    real = sys.stderr
    with capture.open("w") as err:
        sys.stderr = err
        try:
            code = main(["backtest", "--data", str(REPLAY), "--out", str(out)])
        finally:
            sys.stderr = real
    assert code == 0, capture.read_text()[-2000:]
    return {"out": out, "stderr": capture.read_text(), "html": (out / "report.html").read_text(),
            "metrics": json.loads((out / "metrics.json").read_text()),
            "trips": pl.read_parquet(out / "round_trips.parquet")}


def test_round_trips_on_the_page_are_the_parquet_ones(default_run: dict[str, Any]) -> None:
    trips, page = default_run["trips"], default_run["html"]
    shown = rows(page, "trip")
    assert len(shown) == trips.height == 11
    for cells, t in zip(shown, trips.iter_rows(named=True), strict=True):
        _n, symbol, entry, exit_at, held, _ep, _xp, _q, pnl, ret, fills, reason = cells
        assert symbol == t["symbol"] and fills == str(t["fills"]) and reason == t["exit_reason"]
        # ISO UTC times, not epoch milliseconds.
        assert entry == datetime.fromtimestamp(t["entry_time"] / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")
        assert exit_at == iso_utc(t["exit_time"]) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", exit_at)
        assert held == duration(t["holding_bars"] * 86_400_000)
        assert pnl == f"{t['pnl']:+,.2f}" and ret == f"{100 * t['return']:+.2f}"
    assert "1700000000000" not in page and str(trips["entry_time"][0]) not in page
    s = default_run["metrics"]["strategy"]
    wins = int((trips["pnl"] > 0).sum())
    assert s["round_trips"]["win_rate"] == pytest.approx(wins / 11)
    assert f"<td>{s['round_trips']['win_rate']:.1%}</td>" in page


def test_monthly_grid_holds_every_month_of_metrics(default_run: dict[str, Any]) -> None:
    months = default_run["metrics"]["strategy"]["monthly_returns"]
    grid = {r[0]: r[1:] for r in rows(default_run["html"], "year")}
    assert list(grid) == sorted({m[:4] for m in months}) == [str(y) for y in range(2017, 2025)]
    for key, value in months.items():
        assert grid[key[:4]][int(key[5:]) - 1] == f"{100 * value:+.1f}%", key
    assert grid["2017"][0] == ""  # before the first bar: blank, not 0
    for year, cells in grid.items():  # the year column compounds the months shown
        total = np.prod([1 + v for k, v in months.items() if k.startswith(year)]) - 1
        assert cells[12] == f"{100 * total:+.1f}%", year


def test_per_symbol_rows_add_up_to_the_round_trips(default_run: dict[str, Any]) -> None:
    trips = default_run["trips"]
    per = {r[0]: r for r in rows(default_run["html"], "sym")}
    expected = trips.group_by("symbol").agg(pl.len().alias("n"), (pl.col("pnl") > 0).sum().alias("wins"),
                                            pl.col("pnl").sum(), pl.col("holding_bars").sum(), pl.col("fills").sum())
    assert sorted(per) == sorted(expected["symbol"]) == ["ADA_USDT", "BNB_USDT", "BTC_USDT", "ETH_USDT", "LTC_USDT"]
    for e in expected.iter_rows(named=True):
        _sym, closed, still_open, wins, rate, pnl, held, _share, fills = per[e["symbol"]]
        assert (closed, still_open, wins, fills) == (str(e["n"]), "0", str(e["wins"]), str(e["fills"]))
        assert rate == f"{e['wins'] / e['n']:.1%}" and pnl == f"{e['pnl']:+,.2f}"
        assert held == duration(e["holding_bars"] * 86_400_000)
    total = rows(default_run["html"], "total")[0]
    assert total[0] == "all" and total[1] == "11" and total[5] == f"{trips['pnl'].sum():+,.2f}"


def test_time_in_market_and_the_kill_switch_latch_are_shown(default_run: dict[str, Any]) -> None:
    s, page, err = default_run["metrics"]["strategy"], default_run["html"], default_run["stderr"]
    assert s["halted_at"] == s["kill_switch"]["latched_since"] == "2018-07-26T00:00:00+00:00"
    assert s["kill_switch"]["latched_at_end"] and s["time_in_market"] == pytest.approx(0.0435, abs=1e-3)
    line = f"kill-switch latched since 2018-07-26T00:00Z (halted {s['halted_share']:.1%} of bars)"
    assert line in page and f"<td>{s['time_in_market']:.1%}</td>" in page
    # The CLI summary: time in market, since when the switch is latched, the halted share, the round trips.
    summary = err[err.index("backtest done"):].splitlines()
    assert summary[1] == f"  time in market {s['time_in_market']:.1%}; {line}"
    assert summary[2].startswith("  round trips: 11 closed, 0 open, win rate 36.4%; report: ")
    assert "[TIMEFRAME]" not in err  # defaults on 1d: nothing scaled


def _lab(color: str) -> np.ndarray:
    """sRGB hex -> CIELAB (D65), to measure how far apart two colours look."""
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    f = np.cbrt(xyz / np.array([0.95047, 1.0, 1.08883]))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_curves_have_distinct_colours_and_every_trip_is_marked(default_run: dict[str, Any]) -> None:
    page = default_run["html"]
    strokes = {name: color for color, name in
               re.findall(r'stroke="(#[0-9a-f]{6})" stroke-width="[\d.]+"><title>(\w+)</title>', page)}
    assert {"strategy", "BTC", "GOLD", "SPY"} <= set(strokes) and strokes["BTC"] != strokes["GOLD"]
    palette = {**{k: strokes[k] for k in ("strategy", "BTC", "GOLD", "SPY")}, "entry": ENTRY_COLOR,
               "exit": EXIT_COLOR}
    for a, b in itertools.combinations(palette, 2):  # the issue: BTC and gold were 22 CIELAB units apart
        assert np.linalg.norm(_lab(palette[a]) - _lab(palette[b])) > 35, (a, b)
    assert png_report._COLORS is COLORS  # the PNG draws with the same palette
    trips = default_run["trips"]
    entries = re.findall(rf'<polygon points="[^"]+" fill="{ENTRY_COLOR}"[^>]*><title>([^<]+)</title>', page)
    exits = re.findall(rf'<polygon points="[^"]+" fill="{EXIT_COLOR}"[^>]*><title>([^<]+)</title>', page)
    assert len(entries) == trips.height and len(exits) == int((~trips["open"]).sum())
    first = trips.row(0, named=True)
    assert entries[0].startswith(f"{first['symbol']} entry {iso_utc(first['entry_time'])}")
    assert f"exit {iso_utc(first['exit_time'])}" in exits[0] and "P&amp;L" in exits[0]


def test_report_is_byte_identical_in_another_process(default_run: dict[str, Any], tmp_path: Path) -> None:
    """A fresh interpreter with another hash seed: no set or dict order, clock or path leaks into the files."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    done = subprocess.run([sys.executable, "-m", "aura.cli", "backtest", "--data", str(REPLAY), "--out",
                           str(tmp_path), "--quiet"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("report.html", "report.png", "metrics.json", "round_trips.parquet"):
        assert (tmp_path / name).read_bytes() == (default_run["out"] / name).read_bytes(), name
    assert str(tmp_path) not in (tmp_path / "report.html").read_text()


def test_unknown_symbols_are_one_line_and_exit_2(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "aura.cli", "backtest", "--data", str(REPLAY), "--out", str(tmp_path / "x")]
    for symbols, unknown in (("BTC_USDT,FOO_USDT", "FOO_USDT"), ("FOO_USDT", "FOO_USDT"), ("BTC_USDT,bar", "bar")):
        done = subprocess.run([*base, "--symbols", symbols], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2, (symbols, done.stderr)
        assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith(f"aura backtest: unknown symbol {unknown}: ")
        assert "holds ADA_USDT, AVAX_USDT, BNB_USDT, BTC_USDT," in done.stderr  # what is there instead
    assert not (tmp_path / "x").exists()


def test_other_symbol_spellings_are_accepted(tmp_path: Path) -> None:
    argv = ["backtest", "--data", str(REPLAY), "--start", "2023-01-01", "--end", "2023-03-31", "--quiet"]
    assert main([*argv, "--symbols", "BTCUSDT, eth/usdt,BTC_USDT", "--out", str(tmp_path)]) == 0
    run = json.loads((tmp_path / "metrics.json").read_text())["run"]
    assert run["symbols"] == ["BTC_USDT", "ETH_USDT"]


def test_the_optimizer_chart_is_drawn_as_before_the_helpers_were_shared() -> None:
    """The optimizer's growth-of-1 chart through the shared line_chart, against its output before the move (the
    winner's series has since been named "fold winner": the report says whose returns they are)."""
    series = {"fold winner": np.array([0.01, -0.02, 0.03]), "incumbent": np.array([0.0, 0.01, -0.01]),
              "GOLD": np.array([0.002, 0.001, 0.0])}
    assert _line_chart(series) == (
        '<svg width="340" height="190" viewBox="0 0 340 190" xmlns="http://www.w3.org/2000/svg"><rect x="30" y="5" '
        'width="305" height="155" fill="none" stroke="#ccc"/><line x1="30" x2="335" y1="106.8" y2="106.8" '
        'stroke="#eee"/><polyline points="30.0,106.8 131.7,54.6 233.3,160.0 335.0,5.0" fill="none" stroke="#1f5fbf" '
        'stroke-width="1.5"><title>fold winner</title></polyline><polyline points="30.0,106.8 131.7,106.8 233.3,54.6 '
        '335.0,107.3" fill="none" stroke="#888888" stroke-width="1.5" stroke-dasharray="4 3"><title>incumbent'
        '</title></polyline><polyline points="30.0,106.8 131.7,96.3 233.3,91.1 335.0,91.1" fill="none" '
        'stroke="#c9a227" stroke-width="1.5"><title>GOLD</title></polyline><text x="2" y="12" font-size="10">1.02'
        '</text><text x="2" y="160" font-size="10">0.99</text><text x="30" y="182" font-size="11"><tspan '
        'fill="#1f5fbf">fold winner</tspan> <tspan fill="#888888">incumbent</tspan> <tspan fill="#c9a227">GOLD</tspan>'
        '</text></svg>')

"""report.html of a backtest: one self-contained page (inline SVG, no script, no external file).

Sections: the run; the strategy against buy-and-hold BTC, SPY and gold; time in market and the kill-switch; the
equity curves on a log scale with every round trip's entry and exit marked and the kill-switch's halts shaded;
drawdowns; exposure; the round trips (ISO UTC times, P&L, holding time) and their win rate; monthly returns as a
year x month grid; a per-symbol breakdown.  Numbers have fixed formats and nothing reads the clock, so identical
inputs give byte-identical pages.  The helpers (escaping, tables, the SVG chart) are shared with the optimizer's
report (aura/report_html_common.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from aura.backtest.metrics import drawdown
from aura.report_html_common import BASE_CSS, Marker, esc, heat_color, line_chart, num, pct, table

# One palette for the PNG and the page.  BTC and gold used to be two near-identical oranges; these differ by
# at least 40 CIELAB units pairwise (tests/backtest/test_report_html.py checks it), markers included.
COLORS = {"strategy": "#111111", "BTC": "#f7931a", "GOLD": "#8b7500", "SPY": "#1f77b4"}
ENTRY_COLOR, EXIT_COLOR = "#1a7f37", "#c0392b"
HALT_FILL = "#fcebe8"  # behind the curves: light enough that no series is hidden
BOUND_COLOR = "#999999"
MAX_POINTS = 1500  # per curve: a 1h run has ~60k bars; one point per pixel column is plenty on screen
CSS = BASE_CSS + """.pos{color:#1a7f37}.neg{color:#b42318}code{font-size:.9em}
.warn{background:#fff8e1;padding:.8em;border-left:4px solid #c9a227}.kpi td:first-child{text-align:left}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}.trips{font-size:.9em}.trips td{white-space:nowrap}"""
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class BacktestReport:
    """What the page shows: metrics.json's document plus the per-bar curves and the round trips."""

    metrics: dict[str, Any]
    open_ms: np.ndarray  # per run bar: its open time (ms)
    bar_ms: int
    equity: np.ndarray
    benchmarks: dict[str, np.ndarray | None]  # buy-and-hold equity per benchmark, None when not available
    drawdown_intrabar: np.ndarray
    exposure: np.ndarray
    halted: np.ndarray
    trips: list[dict[str, Any]]  # aura.backtest.metrics.round_trips, the rows of round_trips.parquet


def iso_utc(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 UTC to the minute (what the tables show)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def duration(ms: float) -> str:
    """A holding time in whole hours: '6 d', '1 d 3 h', '5 h'."""
    days, hours = divmod(round(ms / 3_600_000), 24)
    return f"{days} d {hours} h" if days and hours else f"{days} d" if days else f"{hours} h"


def kill_switch_line(s: dict[str, Any]) -> str:
    """The kill-switch's story in one line, from the strategy block of metrics.json (the CLI prints it too)."""
    ks = s["kill_switch"]
    if not s["halted_at"]:
        return "kill-switch never latched"
    first = _minute(s["halted_at"])
    share = f"halted {s['halted_share']:.1%} of bars"
    if ks["halts"] == 1 and ks["latched_at_end"]:
        out = f"kill-switch latched since {first} ({share})"
    else:
        out = f"kill-switch latched {ks['halts']} times from {first}, re-armed {ks['rearms']} ({share})"
        if ks["latched_at_end"]:
            out += f"; latched since {_minute(ks['latched_since'])} at the end"
    if ks["capped_at"]:
        out += f"; capped {_minute(ks['capped_at'])} (only `aura risk reset` clears it)"
    return out


def _minute(iso: str) -> str:
    """metrics.json's '2018-07-26T00:00:00+00:00' as '2018-07-26T00:00Z'."""
    return iso[:16] + "Z"


def _signed(x: float, fmt: str = "+,.2f") -> str:
    if not math.isfinite(x):
        return "n/a"
    return f'<span class="{"pos" if x > 0 else "neg" if x < 0 else ""}">{format(x, fmt)}</span>'


def _sample(n: int) -> np.ndarray:
    """Bars drawn: all of them up to MAX_POINTS, else MAX_POINTS evenly spaced ones (first and last kept)."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, MAX_POINTS)).astype(np.int64))


def _position(bar: int, n: int, m: int) -> float:
    """Where bar ``bar`` of ``n`` falls among ``m`` evenly spaced drawn points."""
    return bar * (m - 1) / max(1, n - 1) if m != n else float(bar)


def _x_ticks(open_ms: np.ndarray, idx: np.ndarray) -> list[tuple[float, str]]:
    """Year starts, or month starts when the run spans fewer than two year boundaries (at most ~12 labels)."""
    dt = open_ms[idx].astype("datetime64[ms]")
    years = dt.astype("datetime64[Y]")
    ticks: list[tuple[float, str]] = [(int(k), str(years[k])) for k in np.flatnonzero(years[1:] != years[:-1]) + 1]
    if len(ticks) >= 2:
        return ticks
    months = dt.astype("datetime64[M]")
    ticks = [(int(k), str(months[k])) for k in np.flatnonzero(months[1:] != months[:-1]) + 1]
    return ticks[:: max(1, math.ceil(len(ticks) / 12))]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 steps inside [lo, hi]; only powers of ten when that gives more than eight, every digit when it gives
    fewer than two (a narrow range); none (the chart then labels its min and max) if still fewer than two."""
    if not (lo > 0 and hi > lo):
        return []
    ks = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)

    def ticks(mults: tuple[int, ...]) -> list[float]:
        return [m * 10.0**k for k in ks for m in mults if lo <= m * 10.0**k <= hi]

    out = ticks((1, 2, 5))
    if len(out) > 8:
        out = ticks((1,))
    elif len(out) < 2:
        out = ticks(tuple(range(1, 10)))
    return out if len(out) >= 2 else []


def _spans(mask: np.ndarray, n: int, m: int) -> list[tuple[float, float, str]]:
    """Runs of halted bars as shaded spans in drawn-point positions."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(_position(int(a), n, m), _position(int(b) - 1, n, m), HALT_FILL)
            for a, b in zip(edges[::2], edges[1::2], strict=True)]


def trip_bars(trips: list[dict[str, Any]], open_ms: np.ndarray) -> list[tuple[int, bool]]:
    """(run bar, is entry) of every round trip's entry and exit, for markers on the equity curve: the bar whose
    open is at or before the fill (a stop at a bar's close shows on the next bar).  A trip still open at the end
    has no exit."""
    n = len(open_ms)
    out = []
    for t in trips:
        for at, up in ((t["entry_time"], True), (t["exit_time"], False)):
            if up or not t["open"]:
                out.append((min(n - 1, max(0, int(np.searchsorted(open_ms, at, side="right")) - 1)), up))
    return out


def _markers(r: BacktestReport, m: int) -> list[Marker]:
    """An entry (up, green) and an exit (down, red) per round trip on the strategy's curve, with a tooltip."""
    n = len(r.equity)
    out: list[Marker] = []
    bars = iter(trip_bars(r.trips, r.open_ms))  # the same trips in the same order: entry, then exit if closed
    for t in r.trips:
        for up in (True, False) if not t["open"] else (True,):
            bar, _ = next(bars)
            what = (f"{t['symbol']} entry {iso_utc(t['entry_time'])} at {num(t['entry_price'], '.6g')}" if up else
                    f"{t['symbol']} exit {iso_utc(t['exit_time'])} at {num(t['exit_price'], '.6g')} "
                    f"({t['exit_reason']}), P&L {t['pnl']:+,.2f} USDT")
            out.append(Marker(_position(bar, n, m), float(r.equity[bar]), ENTRY_COLOR if up else EXIT_COLOR, up,
                              what))
    return out


def _charts(r: BacktestReport) -> str:
    n = len(r.equity)
    if n == 0:
        return "<p>No bars in the run.</p>"
    idx = _sample(n)
    m = len(idx)
    bench = {k: v for k, v in r.benchmarks.items() if v is not None}
    curves = {**{k: v[idx] for k, v in sorted(bench.items())}, "strategy": r.equity[idx]}
    values = np.concatenate([c[np.isfinite(c)] for c in curves.values()])
    log = bool(np.all(values > 0))
    initial = float(r.metrics["run"]["initial_cash"])
    ticks = _x_ticks(r.open_ms, idx)
    spans = _spans(r.halted, n, m)
    equity = line_chart(curves, COLORS, width=1060, height=420, left=64, bottom=42, baseline=initial, log=log,
                        y_ticks=_log_ticks(float(values.min()), float(values.max())) if log else (), y_fmt=",.0f",
                        x_ticks=ticks, spans=spans, markers=_markers(r, m), widths={"strategy": 2.0})
    dd = {"strategy at the lows (bound)": -100 * r.drawdown_intrabar[idx], "strategy": -100 * drawdown(r.equity)[idx]}
    if "BTC" in bench:
        dd["BTC"] = -100 * drawdown(bench["BTC"])[idx]
    low = min(-5.0, float(min(np.nanmin(v) for v in dd.values())))
    dd_chart = line_chart(dd, {**COLORS, "strategy at the lows (bound)": BOUND_COLOR}, width=1060, height=220,
                          left=64, bottom=42, baseline=0.0, y_range=(low, 0.0),
                          y_ticks=[float(v) for v in range(0, int(low) - 1, -10 if low > -50 else -20)],
                          y_fmt=".0f", x_ticks=ticks, widths={"strategy at the lows (bound)": 0.8})
    invested = line_chart({"invested (% of equity)": 100 * r.exposure[idx]}, {"invested (% of equity)": "#555555"},
                          width=1060, height=170, left=64, bottom=42, baseline=None, y_range=(0.0, 100.0),
                          y_ticks=(0.0, 50.0, 100.0), y_fmt=".0f", x_ticks=ticks, spans=spans,
                          widths={"invested (% of equity)": 1.0})
    sampled = "" if m == n else f" Drawn: {m} of the {n} bars, evenly spaced."
    return (f"<figure>{equity}<figcaption>Equity (USDT, {'log' if log else 'linear'} scale) against buy-and-hold "
            f"of the same capital. <span style=\"color:{ENTRY_COLOR}\">&#9650;</span> entry, "
            f"<span style=\"color:{EXIT_COLOR}\">&#9660;</span> exit of a round trip (hover for details); "
            f"shaded: the kill-switch latched.{sampled}</figcaption></figure>"
            f"<figure>{dd_chart}<figcaption>Drawdown (%): close to close, and the bound with every position "
            "marked at its bar's low.</figcaption></figure>"
            f"<figure>{invested}<figcaption>Exposure (% of equity invested); shaded: the kill-switch latched."
            "</figcaption></figure>")


def _summary(r: BacktestReport) -> str:
    s, b = r.metrics["strategy"], r.metrics["benchmarks"]
    names = [k for k in sorted(b) if b[k].get("available")]
    rows = (("total_return", "total return", "pct"), ("cagr", "CAGR", "pct"), ("volatility", "volatility", ".2%"),
            ("sharpe", "Sharpe", ".2f"), ("sortino", "Sortino", ".2f"), ("max_drawdown", "max drawdown", ".2%"),
            ("calmar", "Calmar", ".2f"), ("final_equity", "final equity (USDT)", ",.2f"))

    def cell(x: Any, fmt: str) -> str:
        return pct(x) if fmt == "pct" else num(x, fmt)

    perf = table(["", "strategy", *[f"buy &amp; hold {esc(n)}" for n in names]],
                 [[label, cell(s[k], fmt), *[cell(b[n][k], fmt) for n in names]] for k, label, fmt in rows])
    rt = s["round_trips"]
    p = s["participation"]
    facts = [
        ["time in market (bars with any exposure)", f"{s['time_in_market']:.1%}"],
        ["halted (bars the kill-switch was latched)", f"{s['halted_share']:.1%}"],
        ["kill-switch", esc(kill_switch_line(s))],
        ["max drawdown at the bars' lows (bound)", f"{s['max_drawdown_intrabar']:.2%}"],
        ["round trips: closed / still open", f"{rt['closed']} / {rt['open']}"],
        ["win rate (closed trips with P&amp;L &gt; 0)", _share(rt["win_rate"])],
        ["mean P&amp;L per closed trip (USDT)", num(rt["mean_pnl"], "+,.2f")],
        ["median / mean holding time", f"{_bars(rt['median_holding_bars'], r.bar_ms)} / "
                                       f"{_bars(rt['mean_holding_bars'], r.bar_ms)}"],
        ["fills / fees paid (USDT) / annual turnover", f"{s['trades']} / {s['fees_paid']:,.2f} / "
                                                       f"{s['turnover']:.2f}x"],
        ["fills by reason", esc(", ".join(f"{k} {v}" for k, v in s["trade_reasons"].items()) or "none")],
        ["legs cut by the participation cap / dropped notional (USDT)",
         f"{p['capped_legs']} / {p['dropped_notional']:,.0f}"],
        ["legs without a tradable bar (skipped)", str(s["skipped_legs"])],
    ]
    return perf + '<table class="kpi">' + "".join(f"<tr><td>{a}</td><td>{v}</td></tr>" for a, v in facts) + "</table>"


def _share(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.1%}"


def _bars(bars: float | None, bar_ms: int) -> str:
    return "n/a" if bars is None or not math.isfinite(bars) else duration(bars * bar_ms)


def _trips_table(r: BacktestReport) -> str:
    if not r.trips:
        return "<p>No round trips.</p>"
    rows, attrs = [], []
    for i, t in enumerate(r.trips, 1):
        exit_at = iso_utc(t["exit_time"]) + (" (marked)" if t["open"] else "")
        rows.append([str(i), esc(t["symbol"]), iso_utc(t["entry_time"]), exit_at,
                     duration(t["holding_bars"] * r.bar_ms), num(t["entry_price"], ".6g"),
                     num(t["exit_price"], ".6g"), num(t["qty"], ".6g"),
                     _signed(t["pnl"]), _signed(100 * t["return"], "+.2f"), str(t["fills"]), esc(t["exit_reason"])])
        attrs.append(' class="trip"')
    head = ["#", "symbol", "entry (UTC)", "exit (UTC)", "held", "entry price", "exit price", "quantity",
            "P&amp;L (USDT)", "return %", "fills", "exit"]
    return f'<div class="trips">{table(head, rows, left=4, text_last=True, row_attrs=attrs)}</div>'


def _monthly(r: BacktestReport) -> str:
    months: dict[str, float] = r.metrics["strategy"]["monthly_returns"]
    finite = [v for v in months.values() if v is not None and math.isfinite(v)]
    if not finite:
        return "<p>No complete month.</p>"
    scale = max(0.01, max(abs(v) for v in finite))  # the colour scale: the largest month either way
    years = sorted({k[:4] for k in months})

    def cell(v: float | None) -> str:
        if v is None or not math.isfinite(v):
            return "<td></td>"
        return f'<td style="background:{heat_color(0.5 + v / (2 * scale))}">{100 * v:+.1f}%</td>'

    rows = []
    for year in years:
        vals = [months.get(f"{year}-{mo:02d}") for mo in range(1, 13)]
        total = math.prod(1.0 + v for v in vals if v is not None and math.isfinite(v)) - 1.0
        rows.append(f'<tr class="year"><th class="l">{year}</th>{"".join(cell(v) for v in vals)}'
                    f"<td><b>{100 * total:+.1f}%</b></td></tr>")
    head = "".join(f"<th>{m}</th>" for m in MONTHS)
    return (f'<table class="monthly"><tr><th class="l">year</th>{head}<th>year</th></tr>{"".join(rows)}</table>'
            "<p>Per calendar month (UTC): the month's last equity over the previous month's (the first month "
            "against the initial capital, so it may be partial); the year compounds its months.</p>")


def per_symbol(trips: list[dict[str, Any]], bar_ms: int) -> dict[str, dict[str, Any]]:
    """Per symbol: closed and open trips, wins, P&L (open trips marked at the last close), time held."""
    out: dict[str, dict[str, Any]] = {}
    for t in trips:
        row = out.setdefault(t["symbol"], {"closed": 0, "open": 0, "wins": 0, "pnl": 0.0, "held_ms": 0.0,
                                           "fills": 0})
        row["open" if t["open"] else "closed"] += 1
        row["wins"] += int(not t["open"] and t["pnl"] > 0)
        row["pnl"] += t["pnl"]
        row["held_ms"] += t["holding_bars"] * bar_ms
        row["fills"] += t["fills"]
    return dict(sorted(out.items()))


def _symbols(r: BacktestReport) -> str:
    per = per_symbol(r.trips, r.bar_ms)
    if not per:
        return "<p>No round trips.</p>"
    run_ms = len(r.equity) * r.bar_ms
    total = {k: sum(v[k] for v in per.values()) for k in ("closed", "open", "wins", "pnl", "held_ms", "fills")}
    rows = []
    for name, v in [*per.items(), ("all", total)]:
        rate = f"{v['wins'] / v['closed']:.1%}" if v["closed"] else "n/a"
        rows.append([esc(name), str(v["closed"]), str(v["open"]), str(v["wins"]), rate, _signed(v["pnl"]),
                     duration(v["held_ms"]), f"{v['held_ms'] / run_ms:.1%}" if run_ms else "n/a", str(v["fills"])])
    head = ["symbol", "closed trips", "open", "wins", "win rate", "P&amp;L (USDT)", "time held", "of the run",
            "fills"]
    return (table(head, rows, row_attrs=[' class="sym"'] * len(per) + [' class="total"']) +
            "<p>Time held adds up every trip's holding time (trips on different symbols overlap).</p>")


def render_html(r: BacktestReport) -> str:
    run, s = r.metrics["run"], r.metrics["strategy"]
    scaled = run.get("lookbacks_scaled")
    symbols = f"{len(run['symbols'])} symbol{'' if len(run['symbols']) == 1 else 's'}"
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>AURA backtest report</title>"
             f"<style>{CSS}</style></head><body><h1>AURA backtest</h1>",
             f"<p>{esc(run['timeframe'])} bars from {esc(run['first_bar_open'])} to {esc(run['last_bar_open'])} "
             f"({run['bars']} bars), {symbols}: {esc(', '.join(run['symbols']))}. Engine "
             f"{esc(run['engine'])}, fills at the {'next open' if run['fill_at'] == 'open' else 'close'}, fee "
             f"{num(run['fee_rate'], '.4f')}, slippage {num(run['slippage'], '.4f')} + impact "
             f"{num(run['impact_coefficient'], '.4f')} x sqrt(participation), participation cap "
             f"{num(run['max_participation'], '.2f')}, capital {num(run['initial_cash'], ',.2f')} USDT. Parameters "
             f"<code>{esc(run['params_digest'])}</code> counted in {esc(run['params_timeframe'])} bars.</p>"]
    if scaled:
        parts.append(f'<p class="warn">[TIMEFRAME] {esc(scaled["summary"])}</p>')
    parts += ["<h2>Strategy against buy-and-hold</h2>", _summary(r), "<h2>Equity, drawdown, exposure</h2>",
              _charts(r), "<h2>Monthly returns</h2>", _monthly(r), "<h2>Per symbol</h2>", _symbols(r),
              f"<h2>Round trips ({s['round_trips']['closed']} closed, {s['round_trips']['open']} open)</h2>",
              "<p>Flat to flat per symbol; prices are quantity-weighted averages with slippage; P&amp;L and return "
              "include fees; a trip still open at the end is marked at the last close without fee.</p>",
              _trips_table(r),
              "<p>Beside this page: metrics.json, equity.parquet, trades.parquet (every fill), round_trips.parquet, "
              "report.png.</p></body></html>\n"]
    return "".join(parts)

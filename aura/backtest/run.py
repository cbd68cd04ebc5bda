"""One backtest run from files to files: load, simulate, measure, write.

Outputs (all byte-identical for identical inputs: no clock, no host names, no random ids):
metrics.json, equity.parquet, trades.parquet, round_trips.parquet, report.png, report.html.

Parameters count their lookbacks in bars of the timeframe they were made for (``RunSpec.params_timeframe``; the
shipped defaults: 1d).  A run on another timeframe scales them to the same durations (``params.rescale``) or,
with ``scale_lookbacks=False``, refuses: daily lookbacks read as hourly bars are a different strategy, and on 1h
the defaults lost 75.8% that way without a word.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from aura.backtest.data import BENCHMARKS, default_rules, load_benchmark, load_panel, resolve_symbols, rules_from_json
from aura.backtest.engine import (
    FILL_AT,
    BacktestConfig,
    BacktestResult,
    check_execution_model,
    run_reference,
    trades_digest,
)
from aura.backtest.execution import DEFAULT_MAX_PARTICIPATION
from aura.backtest.fast import Market, run_fast
from aura.backtest.metrics import (
    align_equity_benchmark,
    benchmark_block,
    buy_and_hold,
    drawdown,
    equity_at_lows,
    intrabar_drawdown,
    monthly_returns,
    performance,
    round_trip_stats,
    round_trips,
    trading_stats,
)
from aura.backtest.report import write_report
from aura.backtest.report_html import BacktestReport, render_html
from aura.backtest.tensors import mark_tensor
from aura.strategy.params import PARAMS_TIMEFRAME, Rescaled, StrategyParams, params_digest, rescale, validate_params
from aura.strategy.rebalance import REASONS, rule_arrays
from aura.strategy.regime import REGIME_NAMES
from aura.strategy.schedule import timeframe_ms
from aura.strategy.signal import btc_column
from aura.strategy.types import MarketRule, Panel

DAY_MS = 86_400_000
# Upper bound (exclusive) of the fee rate and of the slippage, each a fraction per side.  At 1 or more the
# arithmetic breaks (a sale at or below zero, a fee larger than the fill); well below that, 10% a side is about
# a hundred times Binance's taker fee and far past any listed market's half spread, so every stress test fits
# under it, while a value above it is most likely a percentage typed as a fraction (--fee 0.5 meaning 0.5%).
MAX_COST_RATE = 0.1


@dataclass(frozen=True)
class RunSpec:
    data_dir: Path
    timeframe: str = "1d"
    params: StrategyParams = field(default_factory=StrategyParams)
    start: str | None = None  # YYYY-MM-DD: first decision bar (earlier data is warm-up only)
    end: str | None = None  # YYYY-MM-DD inclusive: the run stops after that day's last bar
    fill_at: str = "open"
    fee_rate: float = 0.001
    slippage: float = 0.0005
    max_participation: float = DEFAULT_MAX_PARTICIPATION
    impact_coefficient: float | None = None  # None: execution.default_impact for the timeframe
    initial_cash: float = 10_000.0
    engine: str = "reference"  # "reference" (compute_targets/risk_plan per bar) or "fast" (numba kernel)
    symbols: tuple[str, ...] | None = None  # any spelling file_stem knows: BTC_USDT, BTC/USDT, BTCUSDT
    rules_path: Path | None = None
    params_timeframe: str = PARAMS_TIMEFRAME  # the timeframe whose bars ``params`` counts its lookbacks in
    scale_lookbacks: bool = True  # False: a params_timeframe other than timeframe is an error, not a rescale

    def __post_init__(self) -> None:
        # Checked when the spec is made, before any data is read: a negative fee paid the strategy 922% a year,
        # a slippage of 5 sold below zero (a 172% drawdown), and no capital gave a NaN CAGR, all with exit 0.
        if not (math.isfinite(self.initial_cash) and self.initial_cash > 0):
            raise ValueError(f"--capital must be a finite number > 0, not {self.initial_cash!r}")
        if not 0 <= self.fee_rate < MAX_COST_RATE:
            raise ValueError(f"--fee must be >= 0 and < {MAX_COST_RATE}, not {self.fee_rate!r}")
        if not 0 <= self.slippage < MAX_COST_RATE:
            raise ValueError(f"--slippage must be >= 0 and < {MAX_COST_RATE}, not {self.slippage!r}")
        # BacktestConfig checks these two as well, but only after the data is read and in its field names.
        check_execution_model(self.max_participation, self.impact_coefficient, ("--max-participation", "--impact"))


def date_ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def load_params_document(path: Path, timeframe: str | None = None) -> tuple[StrategyParams, str | None]:
    """A JSON document of parameters and the timeframe it declares (its optional ``"timeframe"`` key: the bars
    its lookbacks count), or ``timeframe`` when given.  Missing fields take their defaults, unknown ones are
    refused, and the values are checked against the ranges of that timeframe (1d when none is declared)."""
    doc = json.loads(Path(path).read_text())
    declared = doc.pop("timeframe", None)
    if declared is not None and not isinstance(declared, str):
        raise ValueError(f"\"timeframe\" in {path} must be a string like \"1d\" or \"1h\"")
    if declared and timeframe and timeframe_ms(declared) != timeframe_ms(timeframe):
        raise ValueError(f"{path} declares timeframe {declared} but --params-timeframe says {timeframe}")
    unknown = set(doc) - set(StrategyParams.__struct_fields__)
    if unknown:
        raise ValueError(f"unknown parameters in {path}: {sorted(unknown)}")
    params = msgspec.convert(doc, StrategyParams)
    validate_params(params, timeframe or declared or PARAMS_TIMEFRAME)
    return params, timeframe or declared


def load_params_file(path: Path) -> StrategyParams:
    """The parameters of a JSON document (see load_params_document)."""
    return load_params_document(path)[0]


def run_params(spec: RunSpec) -> Rescaled:
    """The parameters the run uses: ``spec.params`` scaled from ``spec.params_timeframe`` to the run's timeframe
    (unchanged when both have the same bar length).  ValueError if they differ and scaling is off."""
    if timeframe_ms(spec.params_timeframe) != timeframe_ms(spec.timeframe) and not spec.scale_lookbacks:
        raise ValueError(
            f"the parameters count their lookbacks in {spec.params_timeframe} bars and the run is on "
            f"{spec.timeframe} bars; drop --no-scale-lookbacks to scale them to the same durations, or pass "
            f"--params-timeframe {spec.timeframe} if they were made for {spec.timeframe} bars")
    scaled = rescale(spec.params, spec.params_timeframe, spec.timeframe)
    validate_params(scaled.params, spec.timeframe)
    return scaled


def _day(ms: int) -> str:
    return _iso(ms)[:10]


def prepare(spec: RunSpec) -> tuple[Panel, dict[str, MarketRule], str, BacktestConfig]:
    bar_ms = timeframe_ms(spec.timeframe)
    end_ms = date_ms(spec.end) + DAY_MS - 1 if spec.end else None
    if spec.start and spec.end and date_ms(spec.end) < date_ms(spec.start):
        raise ValueError(f"--end {spec.end} is before --start {spec.start}")
    names = resolve_symbols(spec.data_dir, spec.timeframe, spec.symbols) if spec.symbols is not None else None
    panel = load_panel(spec.data_dir, spec.timeframe, names, end_ms)
    if len(panel.timestamps) == 0 and end_ms is not None:
        # Cut by --end to nothing: read the whole folder again (only on this error path) so the message can say
        # where the data begins instead of blaming --start.
        whole = load_panel(spec.data_dir, spec.timeframe, names)
        if len(whole.timestamps):
            raise ValueError(f"--end {spec.end} is before the first bar of the data ({_day(int(whole.timestamps[0]))}, "
                             f"{spec.data_dir}/binance/{spec.timeframe})")
    if len(panel.timestamps) == 0:
        raise ValueError(f"no bars in {spec.data_dir}/binance/{spec.timeframe}")
    if spec.rules_path is not None:
        rules = rules_from_json(json.loads(Path(spec.rules_path).read_text()), panel.symbols)
        fallback = default_rules(panel).rules
        rules = {s: rules.get(s, fallback[s]) for s in panel.symbols}
        rules_source = f"{spec.rules_path} (default rules for symbols it does not list)"
    else:
        rule_set = default_rules(panel)
        rules, rules_source = rule_set.rules, rule_set.source
    start = int(np.searchsorted(panel.timestamps, date_ms(spec.start))) if spec.start else 0
    if start >= len(panel.timestamps):
        raise ValueError(f"no bars on or after --start {spec.start}: the data's last bar"
                         f"{' up to --end ' + spec.end if spec.end else ''} is {_day(int(panel.timestamps[-1]))}")
    cfg = BacktestConfig(bar_ms=bar_ms, initial_cash=spec.initial_cash, fee_rate=spec.fee_rate,
                         slippage=spec.slippage, fill_at=spec.fill_at, start=start, end=len(panel.timestamps) - 1,
                         max_participation=spec.max_participation, impact_coefficient=spec.impact_coefficient)
    return panel, rules, rules_source, cfg


def simulate(spec: RunSpec, progress: Callable[[int, int], None] | None = None,
             ) -> tuple[BacktestResult, Panel, dict[str, MarketRule], str, BacktestConfig]:
    params = run_params(spec).params
    panel, rules, rules_source, cfg = prepare(spec)
    if spec.engine == "fast":
        result = run_fast(Market.build(panel, rules), params, cfg)
    elif spec.engine == "reference":
        result, _ = run_reference(panel, params, cfg, rules, progress=progress)
    else:
        raise ValueError(f"unknown engine {spec.engine!r}")
    return result, panel, rules, rules_source, cfg


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become null (json.dumps would write the non-standard NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def benchmarks_for(spec: RunSpec, panel: Panel, result: BacktestResult) -> dict[str, np.ndarray | None]:
    initial = spec.initial_cash
    rows = slice(result.first_bar, result.first_bar + len(result.timestamps))
    btc_j = btc_column(panel.symbols)
    out: dict[str, np.ndarray | None] = {
        "BTC": buy_and_hold(panel.close[rows, btc_j], initial) if btc_j >= 0 else None}
    for name in BENCHMARKS:
        series = load_benchmark(spec.data_dir, name)
        if series is None:
            out[name] = None
            continue
        aligned = align_equity_benchmark(series[0], series[1], result.timestamps, result.bar_ms)
        out[name] = buy_and_hold(aligned, initial)
    return out


def _iso_or_none(close_ms: np.ndarray, run_bar: int) -> str | None:
    return datetime.fromtimestamp(int(close_ms[run_bar]) / 1000, UTC).isoformat() if run_bar >= 0 else None


def write_outputs(spec: RunSpec, out_dir: Path, progress: Callable[[int, int], None] | None = None,
                  ) -> dict[str, Any]:
    scaled = run_params(spec)
    params = scaled.params
    result, panel, rules, rules_source, cfg = simulate(spec, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = benchmarks_for(spec, panel, result)
    t = result.trades
    notional = np.asarray(t.qty, dtype=np.float64) * np.asarray(t.price, dtype=np.float64)
    fees = np.asarray(t.fee, dtype=np.float64)
    bars = np.asarray(t.bar, dtype=np.int64)
    cols = np.asarray(t.symbol, dtype=np.int64)
    bar_volume = panel.volume[bars, cols]
    with np.errstate(divide="ignore", invalid="ignore"):  # a data_end sale may meet a bar without volume: NaN
        participation = np.where(bar_volume > 0, np.asarray(t.qty, dtype=np.float64) / bar_volume, np.nan)
    traded = participation[np.isfinite(participation)]
    exposure = result.exposure
    halted = result.halted_mask
    close_ms = result.timestamps + result.bar_ms
    rows = slice(result.first_bar, result.first_bar + len(result.timestamps))
    marks = mark_tensor(np.ascontiguousarray(panel.close, dtype=np.float64))
    eq_low = equity_at_lows(t, result.first_bar, result.cash, spec.initial_cash, panel.low[rows], marks[rows])
    dd_low = intrabar_drawdown(result.equity, eq_low, spec.initial_cash)
    _, steps, _, _, min_qty, min_notional = rule_arrays(panel.symbols, rules)
    # The market's rules decide what is dust, as they do for a live journal (aura trades): one matcher.
    trips = round_trips(t, panel.symbols, steps, result.timestamps, result.first_bar, result.bar_ms,
                        marks[rows.stop - 1] if len(result.timestamps) else np.zeros(len(panel.symbols)),
                        min_qty, min_notional)
    reasons: dict[str, int] = {}
    for r in t.reason:
        reasons[REASONS[int(r)]] = reasons.get(REASONS[int(r)], 0) + 1
    perf = performance(result.equity, spec.initial_cash, result.bar_ms)
    metrics: dict[str, Any] = {
        "strategy": {**perf,
                     **trading_stats(notional, fees, result.equity, exposure, result.bar_ms),
                     "max_drawdown_intrabar": max(float(dd_low.max()) if len(dd_low) else 0.0,
                                                  perf["max_drawdown"] if len(dd_low) else 0.0),
                     "trade_reasons": dict(sorted(reasons.items())),
                     "halted_at": _iso_or_none(close_ms, result.halted_bar),
                     "halted_share": float(np.mean(halted)) if len(halted) else 0.0,
                     "kill_switch": {"halts": result.halts, "rearms": result.rearms,
                                     "capped_at": _iso_or_none(close_ms, result.capped_bar),
                                     "latched_at_end": bool(halted[-1]) if len(halted) else False,
                                     "latched_since": _iso_or_none(close_ms, _last_latch(halted))},
                     "skipped_legs": result.skipped_legs,
                     "participation": {
                         "capped_legs": result.capped_legs, "dropped_notional": result.capped_notional,
                         "max": float(traded.max()) if len(traded) else 0.0,
                         "p95": float(np.quantile(traded, 0.95)) if len(traded) else 0.0},
                     "round_trips": round_trip_stats(trips),
                     "monthly_returns": monthly_returns(result.timestamps, result.equity, spec.initial_cash)},
        "benchmarks": {name: benchmark_block(series, spec.initial_cash, result.bar_ms)
                       for name, series in bench.items()},
        "run": {
            "timeframe": spec.timeframe,
            "engine": spec.engine,
            "first_bar_open": _iso(int(result.timestamps[0])) if len(result.timestamps) else None,
            "last_bar_open": _iso(int(result.timestamps[-1])) if len(result.timestamps) else None,
            "bars": len(result.timestamps),
            "symbols": list(panel.symbols),
            "fill_at": cfg.fill_at,
            "fee_rate": cfg.fee_rate,
            "slippage": cfg.slippage,
            "max_participation": cfg.max_participation,  # null: no cap
            "impact_coefficient": cfg.impact,
            "initial_cash": cfg.initial_cash,
            "rules": rules_source,
            "params_digest": params_digest(params),
            "params": msgspec.to_builtins(params),  # as run, i.e. after any rescaling
            "params_timeframe": spec.params_timeframe,
            "lookbacks_scaled": {"from": scaled.from_timeframe, "to": scaled.to_timeframe, "factor": scaled.factor,
                                 "changed": {k: list(v) for k, v in scaled.changed.items()},
                                 "clamped": list(scaled.clamped), "source_params_digest": params_digest(spec.params),
                                 "summary": scaled.summary()} if scaled.changed else None,
            "trades_sha256": trades_digest(result),
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(_clean(metrics), indent=2, sort_keys=True) + "\n")
    dd = drawdown(result.equity)
    frame = {
        "timestamp": result.timestamps,
        "close_time": close_ms,
        "equity": result.equity,
        "cash": result.cash,
        "exposure": exposure,
        "drawdown": dd,
        "equity_at_lows": eq_low,
        "drawdown_intrabar": dd_low,
        "halted": halted,
        "regime": [REGIME_NAMES[int(r)] for r in result.regime],
    }
    for name, series in bench.items():
        frame[f"bh_{name.lower()}"] = series if series is not None else np.full(len(result.equity), np.nan)
    pl.DataFrame(frame).with_columns(_utc("timestamp", "time")).write_parquet(out_dir / "equity.parquet",
                                                                            statistics=False)
    pl.DataFrame({
        "timestamp": [result.bar_time(int(b)) for b in t.bar],
        "symbol": [panel.symbols[int(s)] for s in t.symbol],
        "side": ["buy" if int(d) > 0 else "sell" for d in t.side],
        "qty": np.asarray(t.qty, dtype=np.float64),
        "price": np.asarray(t.price, dtype=np.float64),
        "notional": notional,
        "fee": fees,
        "participation": participation,
        "reason": [REASONS[int(r)] for r in t.reason],
        "fill": [FILL_AT[int(a)] for a in t.at],
    }, schema_overrides={"timestamp": pl.Int64}).with_columns(_utc("timestamp", "time")).write_parquet(
        out_dir / "trades.parquet", statistics=False)
    pl.DataFrame(trips, schema=ROUND_TRIP_SCHEMA).with_columns(_utc("entry_time", "entered_at"),
                                                               _utc("exit_time", "exited_at")).write_parquet(
        out_dir / "round_trips.parquet", statistics=False)
    s = metrics["strategy"]
    subtitle = (f"{spec.timeframe}  {metrics['run']['first_bar_open'][:10]} .. {metrics['run']['last_bar_open'][:10]}"
                f"   CAGR {s['cagr']:.1%}  Sharpe {s['sharpe']:.2f}  max DD {s['max_drawdown']:.1%}"
                f" (intrabar {s['max_drawdown_intrabar']:.1%})  in market {s['time_in_market']:.1%}"
                f"  halted {s['halted_share']:.1%}\ntrades {s['trades']}  fees {s['fees_paid']:.0f} USDT"
                f"  participation cap {_pct(cfg.max_participation)}: {result.capped_legs} legs cut"
                + _kill_switch_note(s))
    write_report(out_dir / "report.png", close_ms, result.equity, bench,
                 f"AURA backtest ({len(panel.symbols)} symbols, params {params_digest(params)})", subtitle,
                 exposure=exposure, halted=halted, drawdown_intrabar=dd_low, trips=trips, open_ms=result.timestamps)
    page = BacktestReport(_clean(metrics), result.timestamps, result.bar_ms, result.equity, bench, dd_low, exposure,
                          halted, trips)
    (out_dir / "report.html").write_text(render_html(page), encoding="utf-8")
    return metrics


def _last_latch(halted: np.ndarray) -> int:
    """Run bar where the latch in force at the end began (-1 if the switch is armed at the end)."""
    if not len(halted) or not halted[-1]:
        return -1
    armed = np.flatnonzero(~halted)
    return int(armed[-1]) + 1 if len(armed) else 0


def _utc(epoch_ms_column: str, name: str) -> pl.Expr:
    """A readable UTC datetime beside an epoch-ms column (kept as it was: scripts read it)."""
    return pl.col(epoch_ms_column).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias(name)


# Column types of round_trips.parquet, so that a run without any round trip still writes the same columns.
ROUND_TRIP_SCHEMA: dict[str, Any] = {
    "symbol": pl.String, "entry_time": pl.Int64, "exit_time": pl.Int64, "entry_price": pl.Float64,
    "exit_price": pl.Float64, "qty": pl.Float64, "cost": pl.Float64, "proceeds": pl.Float64, "pnl": pl.Float64,
    "return": pl.Float64, "holding_bars": pl.Float64, "fills": pl.Int64, "exit_reason": pl.String, "open": pl.Boolean,
    "dust": pl.Float64,
}


def _kill_switch_note(s: dict[str, Any]) -> str:
    ks = s["kill_switch"]
    if not s["halted_at"]:
        return ""
    if ks["halts"] == 1 and ks["rearms"] == 0:
        return f"  [kill-switch latched {s['halted_at'][:10]}]"
    capped = f", capped {ks['capped_at'][:10]}" if ks["capped_at"] else ""
    return f"  [kill-switch: {ks['halts']} halts from {s['halted_at'][:10]}, {ks['rearms']} re-arms{capped}]"


def _pct(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "none"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

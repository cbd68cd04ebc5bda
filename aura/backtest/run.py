"""One backtest run from files to files: load, simulate, measure, write.

Outputs (all byte-identical for identical inputs: no clock, no host names, no random ids):
metrics.json, equity.parquet, trades.parquet, report.png.
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

from aura.backtest.data import BENCHMARKS, default_rules, load_benchmark, load_panel, rules_from_json
from aura.backtest.engine import FILL_AT, BacktestConfig, BacktestResult, run_reference, trades_digest
from aura.backtest.fast import Market, run_fast
from aura.backtest.metrics import (
    align_equity_benchmark,
    benchmark_block,
    buy_and_hold,
    drawdown,
    performance,
    trading_stats,
)
from aura.backtest.report import write_report
from aura.strategy.params import StrategyParams, params_digest, validate_params
from aura.strategy.rebalance import REASONS
from aura.strategy.regime import REGIME_NAMES
from aura.strategy.schedule import timeframe_ms
from aura.strategy.signal import btc_column
from aura.strategy.types import MarketRule, Panel

DAY_MS = 86_400_000


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
    initial_cash: float = 10_000.0
    engine: str = "reference"  # "reference" (compute_targets/risk_plan per bar) or "fast" (numba kernel)
    symbols: tuple[str, ...] | None = None
    rules_path: Path | None = None


def date_ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() * 1000)


def load_params_file(path: Path) -> StrategyParams:
    """A JSON document of parameters; missing fields take their defaults, unknown ones are refused."""
    doc = json.loads(Path(path).read_text())
    unknown = set(doc) - set(StrategyParams.__struct_fields__)
    if unknown:
        raise ValueError(f"unknown parameters in {path}: {sorted(unknown)}")
    params = msgspec.convert(doc, StrategyParams)
    validate_params(params)
    return params


def prepare(spec: RunSpec) -> tuple[Panel, dict[str, MarketRule], str, BacktestConfig]:
    bar_ms = timeframe_ms(spec.timeframe)
    end_ms = date_ms(spec.end) + DAY_MS - 1 if spec.end else None
    panel = load_panel(spec.data_dir, spec.timeframe, list(spec.symbols) if spec.symbols else None, end_ms)
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
        raise ValueError(f"no bars on or after --start {spec.start}")
    cfg = BacktestConfig(bar_ms=bar_ms, initial_cash=spec.initial_cash, fee_rate=spec.fee_rate,
                         slippage=spec.slippage, fill_at=spec.fill_at, start=start, end=len(panel.timestamps) - 1)
    return panel, rules, rules_source, cfg


def simulate(spec: RunSpec, progress: Callable[[int, int], None] | None = None,
             ) -> tuple[BacktestResult, Panel, dict[str, MarketRule], str, BacktestConfig]:
    panel, rules, rules_source, cfg = prepare(spec)
    if spec.engine == "fast":
        result = run_fast(Market.build(panel, rules), spec.params, cfg)
    elif spec.engine == "reference":
        result, _ = run_reference(panel, spec.params, cfg, rules, progress=progress)
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


def write_outputs(spec: RunSpec, out_dir: Path, progress: Callable[[int, int], None] | None = None,
                  ) -> dict[str, Any]:
    result, panel, _rules, rules_source, cfg = simulate(spec, progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench = benchmarks_for(spec, panel, result)
    t = result.trades
    notional = np.asarray(t.qty, dtype=np.float64) * np.asarray(t.price, dtype=np.float64)
    fees = np.asarray(t.fee, dtype=np.float64)
    exposure = result.exposure
    close_ms = result.timestamps + result.bar_ms
    reasons: dict[str, int] = {}
    for r in t.reason:
        reasons[REASONS[int(r)]] = reasons.get(REASONS[int(r)], 0) + 1
    metrics: dict[str, Any] = {
        "strategy": {**performance(result.equity, spec.initial_cash, result.bar_ms),
                     **trading_stats(notional, fees, result.equity, exposure, result.bar_ms),
                     "trade_reasons": dict(sorted(reasons.items())),
                     "halted_at": (datetime.fromtimestamp(int(close_ms[result.halted_bar]) / 1000, UTC).isoformat()
                                   if result.halted_bar >= 0 else None),
                     "skipped_legs": result.skipped_legs},
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
            "initial_cash": cfg.initial_cash,
            "rules": rules_source,
            "params_digest": params_digest(spec.params),
            "params": msgspec.to_builtins(spec.params),
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
        "regime": [REGIME_NAMES[int(r)] for r in result.regime],
    }
    for name, series in bench.items():
        frame[f"bh_{name.lower()}"] = series if series is not None else np.full(len(result.equity), np.nan)
    pl.DataFrame(frame).write_parquet(out_dir / "equity.parquet", statistics=False)
    pl.DataFrame({
        "timestamp": [result.bar_time(int(b)) for b in t.bar],
        "symbol": [panel.symbols[int(s)] for s in t.symbol],
        "side": ["buy" if int(d) > 0 else "sell" for d in t.side],
        "qty": np.asarray(t.qty, dtype=np.float64),
        "price": np.asarray(t.price, dtype=np.float64),
        "notional": notional,
        "fee": fees,
        "reason": [REASONS[int(r)] for r in t.reason],
        "fill": [FILL_AT[int(a)] for a in t.at],
    }, schema_overrides={"timestamp": pl.Int64}).write_parquet(out_dir / "trades.parquet", statistics=False)
    s = metrics["strategy"]
    subtitle = (f"{spec.timeframe}  {metrics['run']['first_bar_open'][:10]} .. {metrics['run']['last_bar_open'][:10]}"
                f"   CAGR {s['cagr']:.1%}  Sharpe {s['sharpe']:.2f}  max DD {s['max_drawdown']:.1%}"
                f"  trades {s['trades']}  fees {s['fees_paid']:.0f} USDT"
                + ("  [kill-switch latched " + s["halted_at"][:10] + "]" if s["halted_at"] else ""))
    write_report(out_dir / "report.png", close_ms, result.equity, bench,
                 f"AURA backtest ({len(panel.symbols)} symbols, params {params_digest(spec.params)})", subtitle)
    return metrics


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Backtest throughput: full-strategy parameter-set evaluations per second on one core, against vectorbt.

    .venv/bin/python bench/backtest_speed.py [--data DIR] [--sets 512] [--quick]

Workloads: (a) every daily symbol over all dates (41 symbols, 2017-08 .. 2024-12), (b) the 17 hourly symbols.
For each, a grid of parameter sets is evaluated with the fast path (aura.backtest.fast): indicator tensors
are built once per distinct lookback and shared by the whole grid, then each set costs a signal pass (the
compute_targets decisions, memoised on the signal parameters) and a portfolio pass (gates, rebalance,
fills).  Two grids are timed:

* independent: every set has its own signal parameters, so every evaluation pays both passes;
* staged: signal configurations x gate/execution configurations, the way a staged optimizer grid varies
  one group of knobs at a time, so the signal pass is shared by the sets that only differ in gates.

The same simple top-k momentum rotation is then run through vectorbt (Portfolio.from_orders, target
percent, cash sharing, combinations batched as column groups, which is vectorbt's fast way) on the same
data, and the per-combination throughputs are compared.  Times are CPU seconds of this process
(time.process_time), so that other processes on a shared machine do not distort them; wall seconds are
reported too.  numba compile/cache-load time is measured separately and excluded from the rates.
Figures are printed and written to bench/results/backtest_speed.json, the rates drawn in
bench/results/backtest_speed.png (``--plot PATH``, ``--no-plot``); the last printed line is one JSON object.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aura.backtest.data import default_rules, load_panel  # noqa: E402
from aura.backtest.engine import BacktestConfig  # noqa: E402
from aura.backtest.fast import Market, SignalCache, run_fast  # noqa: E402
from aura.strategy.params import StrategyParams, validate_params  # noqa: E402
from aura.strategy.schedule import timeframe_ms  # noqa: E402
from aura.strategy.types import Panel  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def lap(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def grids(timeframe: str, n_sets: int, seed: int) -> tuple[list[StrategyParams], list[StrategyParams]]:
    """(independent grid, staged grid), both of ``n_sets`` valid parameter sets drawn from discrete values,
    so that lookbacks repeat and their indicator tensors are shared."""
    scale = 24 if timeframe == "1h" else 1  # hourly lookbacks in hours: the same horizons in days
    rng = np.random.default_rng(seed)
    signal_space: dict[str, list[Any]] = {
        "momentum_lookback": [min(180, v * scale) for v in (14, 30, 60)] if scale == 1 else [72, 120, 168],
        "top_k": [2, 3, 5],
        "vote_offsets": [1, 3],
        "normalization": [0, 1],
        "weighting": [0, 1],
        "w_mom_long": [0.0, 0.5],
        "w_drawdown": [0.0, 0.25],
        "regime_confirm": [1, 2],
    }
    gate_space: dict[str, list[Any]] = {
        "stop_loss": [0.0, 0.1, 0.2],
        "take_profit": [0.0, 1.0],
        "kill_switch_drawdown": [0.35, 1.0],
        "cost_benefit_margin": [0.0, 1.0],
        "rebalance_band": [0.0, 0.05],
        "min_trade_usdt": [10.0, 50.0],
    }
    base = StrategyParams(min_quote_volume=0.0) if scale == 1 else StrategyParams(
        momentum_long_lookback=360, min_history=360, sma_length=240, drawdown_window=360, vol_window=168,
        liquidity_window=24, regime_sma=365, min_quote_volume=0.0, kill_switch_window=365,
        cost_benefit_horizon=48)
    cadence = [1, 2, 3, 7] if scale == 1 else [12, 24, 24, 48]

    def draw(space: dict[str, list[Any]]) -> dict[str, Any]:
        return {k: v[int(rng.integers(len(v)))] for k, v in space.items()}

    independent: list[StrategyParams] = []
    seen: set[tuple[Any, ...]] = set()
    while len(independent) < n_sets:
        sig = {**draw(signal_space), "rebalance_every": cadence[int(rng.integers(len(cadence)))],
               "w_trend": round(float(rng.uniform(0, 1)), 3)}  # makes every signal distinct
        key = tuple(sorted(sig.items()))
        if key in seen:
            continue
        seen.add(key)
        independent.append(msgspec.structs.replace(base, **sig, **draw(gate_space)))
    n_signal = 32
    n_gate = -(-n_sets // n_signal)
    signals = [{f: getattr(p, f) for f in (*signal_space, "rebalance_every", "w_trend")}
               for p in independent[:n_signal]]
    gate_grid = list(itertools.product(*gate_space.values()))
    picks = rng.choice(len(gate_grid), size=n_gate, replace=False)
    gates = [dict(zip(gate_space, gate_grid[i], strict=True)) for i in picks]
    staged = [msgspec.structs.replace(base, **s, **g) for s in signals for g in gates][:n_sets]
    for p in independent + staged:
        validate_params(p)
    return independent, staged


def run_grid(market: Market, grid: list[StrategyParams], cfg: BacktestConfig) -> dict[str, Any]:
    cache = SignalCache(max_entries=64)
    finals = np.empty(len(grid))
    clock = Clock()
    for i, p in enumerate(grid):
        finals[i] = run_fast(market, p, cfg, signals=cache).equity[-1]
    cpu, wall = clock.lap()
    return {"sets": len(grid), "cpu_s": cpu, "wall_s": wall, "evals_per_s": len(grid) / cpu,
            "evals_per_s_wall": len(grid) / wall, "signal_passes": cache.misses, "signal_memo_hits": cache.hits,
            "median_final_equity": float(np.median(finals))}


def split_profile(market: Market, grid: list[StrategyParams], cfg: BacktestConfig) -> dict[str, float]:
    """Where an evaluation's time goes: signal pass vs portfolio pass (CPU ms per set, over a sample)."""
    sample = grid[:48]
    cache = SignalCache(max_entries=len(sample) + 1)
    t_len = len(market.panel.timestamps)
    clock = Clock()
    for p in sample:
        cache.get(market, p, cfg, 0, t_len - 1)
    sig_cpu, _ = clock.lap()
    clock = Clock()
    for p in sample:
        run_fast(market, p, cfg, signals=cache)
    port_cpu, _ = clock.lap()
    return {"signal_pass_ms": 1000 * sig_cpu / len(sample), "portfolio_pass_ms": 1000 * port_cpu / len(sample)}


def build_indicators(market: Market, grid: list[StrategyParams], cfg: BacktestConfig) -> dict[str, float]:
    """Build every tensor the grid needs (what the whole grid shares), timed on its own."""
    from aura.backtest.fast import kernel_inputs

    clock = Clock()
    for p in grid:
        kernel_inputs(market, p)
        market.cache.decision_bars(cfg.bar_ms, p.rebalance_every)
        market.cache.marks()
    cpu, wall = clock.lap()
    return {"cpu_s": cpu, "wall_s": wall, "tensors": len(market.cache._store), "mbytes": market.cache.nbytes() / 1e6}


def vectorbt_rotation(panel: Panel, timeframe: str, n_combos: int) -> dict[str, Any]:
    """The simple top-k momentum rotation in vectorbt: per-combination throughput (signals + simulation)."""
    import pandas as pd
    import vectorbt as vbt

    idx = pd.to_datetime(panel.timestamps, unit="ms")
    close = pd.DataFrame(panel.close, index=idx, columns=list(panel.symbols))
    opn = pd.DataFrame(panel.open, index=idx, columns=list(panel.symbols))
    scale = 24 if timeframe == "1h" else 1
    combos = [(lb * scale, k) for lb in (5, 10, 20, 30, 45, 60, 90, 120) for k in (1, 2, 3, 5)][:n_combos]
    freq = "1h" if timeframe == "1h" else "1D"

    def run(cs: list[tuple[int, int]]) -> pd.Series:
        sizes = []
        for lb, k in cs:
            mom = close / close.shift(lb) - 1.0
            rank = mom.rank(axis=1, ascending=False, method="first")
            chosen = (rank <= k).astype(float)
            w = chosen.div(chosen.sum(axis=1).replace(0.0, np.nan), axis=0).fillna(0.0)
            sizes.append(w.shift(1))  # decided at a close, traded at the next open
        size = pd.concat(sizes, axis=1, keys=range(len(cs)))
        price = pd.concat([opn] * len(cs), axis=1, keys=range(len(cs)))
        pf = vbt.Portfolio.from_orders(price, size=size, size_type="targetpercent", group_by=0, cash_sharing=True,
                                       call_seq="auto", fees=0.001, slippage=0.0005, init_cash=10_000.0, freq=freq)
        return pf.total_return()

    clock = Clock()
    run(combos[:2])  # numba compilation inside vectorbt
    warm_cpu, _ = clock.lap()
    clock = Clock()
    returns = run(combos)
    cpu, wall = clock.lap()
    return {"version": vbt.__version__, "combinations": len(combos), "cpu_s": cpu, "wall_s": wall,
            "combos_per_s": len(combos) / cpu, "combos_per_s_wall": len(combos) / wall, "warmup_cpu_s": warm_cpu,
            "median_total_return": float(np.median(returns.to_numpy()))}


def workload(data: Path, timeframe: str, n_sets: int, vbt_combos: int) -> dict[str, Any]:
    panel = load_panel(data, timeframe)
    market = Market.build(panel, default_rules(panel).rules)
    cfg = BacktestConfig(bar_ms=timeframe_ms(timeframe))
    independent, staged = grids(timeframe, n_sets, seed=7)
    out: dict[str, Any] = {"symbols": len(panel.symbols), "bars": len(panel.timestamps)}
    clock = Clock()
    run_fast(market, independent[0], BacktestConfig(bar_ms=cfg.bar_ms, start=len(panel.timestamps) - 50))
    out["first_call_cpu_s"], _ = clock.lap()  # numba cache load (or compile) + first tensors
    out["indicators"] = build_indicators(market, independent + staged, cfg)
    out["independent"] = run_grid(market, independent, cfg)
    out["staged"] = run_grid(market, staged, cfg)
    out["profile"] = split_profile(market, independent, cfg)
    out["vectorbt"] = vectorbt_rotation(panel, timeframe, vbt_combos) if vbt_combos else None
    return out


def compile_time() -> dict[str, float]:
    """Cold numba compile of the whole decision/kernel stack, in a fresh process with an empty cache."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        code = ("import time; t = time.process_time(); import sys; sys.path.insert(0, sys.argv[1]);"
                "from bench.backtest_speed import _touch_all; _touch_all(); print(time.process_time() - t)")
        env = {**os.environ, "NUMBA_CACHE_DIR": tmp}
        # A copy of the packages so their __pycache__ holds no compiled kernels yet.
        import shutil

        shutil.copytree(REPO / "aura", Path(tmp) / "aura", ignore=shutil.ignore_patterns("__pycache__"))
        (Path(tmp) / "bench").mkdir()
        shutil.copy(Path(__file__), Path(tmp) / "bench" / "backtest_speed.py")
        cold = float(subprocess.run([sys.executable, "-c", code, tmp], env=env, check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
        warm = float(subprocess.run([sys.executable, "-c", code, tmp], env=env, check=True, capture_output=True,
                                    text=True).stdout.strip().splitlines()[-1])
    return {"cold_compile_cpu_s": cold, "cached_load_cpu_s": warm}


def _touch_all() -> None:
    """Compile (or load) every kernel the fast path and compute_targets use, on a tiny synthetic panel."""
    from aura.strategy.pipeline import PortfolioState, risk_plan
    from aura.strategy.signal import compute_targets
    from aura.strategy.types import MarketRule

    rng = np.random.default_rng(0)
    t_len, n = 300, 4
    close = 100 * np.exp(np.cumsum(rng.normal(0.002, 0.02, (t_len, n)), axis=0))
    panel = Panel(tuple(f"S{j}_USDT" for j in range(n)), 86_400_000 * np.arange(t_len, dtype=np.int64), close,
                  close * 1.01, close * 0.99, close, np.full((t_len, n), 1e6))
    rules = {s: MarketRule(s, 1e-6, 0.01, 1e-6, 5.0) for s in panel.symbols}
    targets, _ = compute_targets(panel, StrategyParams(), None)
    risk_plan(targets, PortfolioState(cash=1000.0, holdings={}), {s: 1.0 for s in panel.symbols}, rules,
              StrategyParams(), 0.001)
    run_fast(Market.build(panel, rules), StrategyParams(), BacktestConfig(bar_ms=86_400_000))


def plot(report: dict[str, Any], path: Path) -> Path:
    """AURA's evaluations/s (independent and staged grids) beside vectorbt's combinations/s, per timeframe, with
    the speed-ups in the labels; only what was run (no vectorbt bars after ``--vbt-combos 0``)."""
    # Imported here, not with the module: compile_time()'s subprocess times the import of this file.
    from bench.plotting import Bars, bar_panels, machine_note

    tfs = [tf for tf in ("1d", "1h") if tf in report]
    series: dict[str, list[float | None]] = {
        "AURA, independent grid": [report[tf]["independent"]["evals_per_s"] for tf in tfs],
        "AURA, staged grid": [report[tf]["staged"]["evals_per_s"] for tf in tfs],
    }
    labels = []
    for tf in tfs:
        res, vb = report[tf], report[tf]["vectorbt"]
        label = f"{tf}: {res['symbols']} symbols × {res['bars']:,} bars"
        if vb:  # the speed-up, where the bars it compares stand
            label += (f"\nAURA {res['independent']['evals_per_s'] / vb['combos_per_s']:,.1f}× / "
                      f"{res['staged']['evals_per_s'] / vb['combos_per_s']:,.0f}× vectorbt")
        labels.append(label)
    vbt = [report[tf]["vectorbt"]["combos_per_s"] if report[tf]["vectorbt"] else None for tf in tfs]
    if any(v is not None for v in vbt):
        series["vectorbt top-k rotation"] = vbt
    versions = {report[tf]["vectorbt"]["version"] for tf in tfs if report[tf]["vectorbt"]}
    extra = f"{report['summary']['sets_per_grid']} sets per grid; CPU seconds, one core"
    extra += f"; vectorbt {', '.join(sorted(versions))}" if versions else "; vectorbt not run"
    title = "Backtest throughput: AURA's full strategy" + (" vs vectorbt" if versions else "")
    panel = Bars("parameter sets evaluated per CPU second", labels, series, "evaluations / s (CPU)")
    return bar_panels(path, title, [panel], machine_note(extra))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("AURA_SHARED_DATA", REPO.parent / "shared/data")))
    ap.add_argument("--sets", type=int, default=None, help="parameter sets per grid (default 512; >= 500 for the "
                    "report)")
    ap.add_argument("--vbt-combos", type=int, default=None,
                    help="vectorbt combinations for 1d (default 32; 0 skips vectorbt and its ratios)")
    ap.add_argument("--quick", action="store_true", help="defaults of 64 sets, 8 vectorbt combinations; no compile "
                    "timing, no result file")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "backtest_speed.json")
    from bench.plotting import add_plot_args, plot_path

    add_plot_args(ap, "backtest_speed")
    args = ap.parse_args(argv)
    if args.sets is None:
        args.sets = 64 if args.quick else 512
    if args.vbt_combos is None:
        args.vbt_combos = 8 if args.quick else 32
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "method": "CPU seconds of one process (single thread); numba compile/cache load excluded from rates",
    }
    if not args.quick:
        report["compile"] = compile_time()
        print(f"numba: cold compile {report['compile']['cold_compile_cpu_s']:.1f}s CPU, "
              f"cached load {report['compile']['cached_load_cpu_s']:.1f}s CPU", file=sys.stderr)
    for tf, vbt_combos in (("1d", args.vbt_combos), ("1h", max(4, args.vbt_combos // 4) if args.vbt_combos else 0)):
        res = workload(args.data, tf, args.sets, vbt_combos)
        report[tf] = res
        ind, st, ix, prof = res["indicators"], res["staged"], res["independent"], res["profile"]
        vb = res["vectorbt"]
        print(f"[{tf}] {res['symbols']} symbols x {res['bars']} bars; indicators for both grids: "
              f"{ind['tensors']} tensors, {ind['mbytes']:.0f} MB, {ind['cpu_s']:.2f}s CPU", file=sys.stderr)
        print(f"[{tf}] independent grid: {ix['sets']} sets, {ix['signal_passes']} signal passes -> "
              f"{ix['evals_per_s']:.0f} evals/s (CPU), {ix['evals_per_s_wall']:.0f}/s wall", file=sys.stderr)
        print(f"[{tf}] staged grid: {st['sets']} sets, {st['signal_passes']} signal passes -> "
              f"{st['evals_per_s']:.0f} evals/s (CPU), {st['evals_per_s_wall']:.0f}/s wall", file=sys.stderr)
        print(f"[{tf}] per set: signal pass {prof['signal_pass_ms']:.2f} ms, portfolio pass "
              f"{prof['portfolio_pass_ms']:.2f} ms (CPU)", file=sys.stderr)
        if vb:
            ratio_i, ratio_s = ix["evals_per_s"] / vb["combos_per_s"], st["evals_per_s"] / vb["combos_per_s"]
            print(f"[{tf}] vectorbt {vb['version']} top-k rotation: {vb['combinations']} combinations, "
                  f"{vb['combos_per_s']:.1f} combos/s (CPU) -> ratio independent {ratio_i:.0f}x, staged {ratio_s:.0f}x",
                  file=sys.stderr)
    d, h = report["1d"], report["1h"]
    summary = {
        "evals_per_s_1d": round(d["independent"]["evals_per_s"], 1),
        "evals_per_s_1h": round(h["independent"]["evals_per_s"], 1),
        "evals_per_s_1d_staged": round(d["staged"]["evals_per_s"], 1),
        "evals_per_s_1h_staged": round(h["staged"]["evals_per_s"], 1),
        "sets_per_grid": args.sets,
    }
    if d["vectorbt"] and h["vectorbt"]:
        summary.update({
            "vectorbt_combos_per_s_1d": round(d["vectorbt"]["combos_per_s"], 2),
            "vectorbt_ratio_1d": round(d["independent"]["evals_per_s"] / d["vectorbt"]["combos_per_s"], 1),
            "vectorbt_ratio_1d_staged": round(d["staged"]["evals_per_s"] / d["vectorbt"]["combos_per_s"], 1),
            "vectorbt_ratio_1h": round(h["independent"]["evals_per_s"] / h["vectorbt"]["combos_per_s"], 1),
        })
    report["summary"] = summary
    if (png := plot_path(args)) is not None:  # after every clock has stopped
        summary["plot"] = str(plot(report, png))
        print(f"plot: {png}")
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        print(f"written {args.out}", file=sys.stderr)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

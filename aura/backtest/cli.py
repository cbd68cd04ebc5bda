"""`aura backtest`: run the strategy over a candle folder and write metrics, equity, trades and a report.

Another module wires ``add_backtest_parser`` into the ``aura`` console script; ``main(argv)`` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from aura.backtest.engine import StderrProgress
from aura.backtest.run import RunSpec, load_params_file, write_outputs
from aura.strategy.params import StrategyParams


def add_backtest_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backtest", help="backtest the strategy on DIR/binance/TIMEFRAME/*.parquet",
        description="Decisions at each bar's close see only data up to that close; fills happen at the next "
                    "bar's open (or at that close with --fill close). Benchmarks: buy-and-hold BTC, SPY, gold.")
    p.add_argument("--data", required=True, type=Path, help="data folder (binance/TF/SYMBOL.parquet, benchmarks/1d)")
    p.add_argument("--timeframe", default="1d", help="candle folder to use (1d, 4h, 1h); default 1d")
    p.add_argument("--params", type=Path, help="JSON parameter document (default: the shipped parameter set)")
    p.add_argument("--start", help="first decision day YYYY-MM-DD (earlier candles are warm-up only)")
    p.add_argument("--end", help="last day YYYY-MM-DD, inclusive")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--fill", choices=("open", "close"), default="open", help="fill at next open (default) or close")
    p.add_argument("--fee", type=float, default=0.001, help="fee rate per side (default 0.001)")
    p.add_argument("--slippage", type=float, default=0.0005, help="slippage per side (default 0.0005)")
    p.add_argument("--capital", type=float, default=10_000.0, help="initial USDT (default 10000)")
    p.add_argument("--engine", choices=("reference", "fast"), default="reference",
                   help="reference: the live decision functions bar by bar (default); fast: the numba kernel "
                        "that tests pin to identical trades")
    p.add_argument("--symbols", help="comma-separated subset (default: every symbol in the folder)")
    p.add_argument("--rules", type=Path, help="exchange rules JSON like data/replay/markets.json")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_backtest_command)


def run_backtest_command(args: argparse.Namespace) -> int:
    try:
        params = load_params_file(args.params) if args.params else StrategyParams()
        spec = RunSpec(
            data_dir=args.data, timeframe=args.timeframe, params=params, start=args.start, end=args.end,
            fill_at=args.fill, fee_rate=args.fee, slippage=args.slippage, initial_cash=args.capital,
            engine=args.engine, symbols=tuple(s.strip() for s in args.symbols.split(",")) if args.symbols else None,
            rules_path=args.rules)
        t0 = time.perf_counter()
        progress = None if args.quiet else StderrProgress(f"backtest {args.timeframe}")
        metrics = write_outputs(spec, args.out, progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"aura backtest: {exc}", file=sys.stderr)
        return 2
    s = metrics["strategy"]
    if not args.quiet:
        print(f"backtest done in {time.perf_counter() - t0:.1f}s: CAGR {s['cagr']:.2%}, Sharpe {s['sharpe']:.2f}, "
              f"max drawdown {s['max_drawdown']:.2%}, {s['trades']} trades -> {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura")
    sub = parser.add_subparsers(dest="command", required=True)
    add_backtest_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""`aura backtest`: run the strategy over a candle folder and write metrics, equity, trades and reports.

Another module wires ``add_backtest_parser`` into the ``aura`` console script; ``main(argv)`` runs it alone.
Bad input (an unknown symbol, a parameter out of range, parameters for another timeframe with
``--no-scale-lookbacks``) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from aura.backtest.execution import DEFAULT_MAX_PARTICIPATION
from aura.strategy.params import PARAMS_TIMEFRAME, StrategyParams

TIMEFRAMES = ("1d", "4h", "1h")  # the candle folders, and the bars parameters' lookbacks may be counted in


def add_backtest_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "backtest", help="backtest the strategy on DIR/binance/TIMEFRAME/*.parquet",
        description="Decisions at each bar's close see only data up to that close; fills happen at the next "
                    "bar's open (or at that close with --fill close). Benchmarks: buy-and-hold BTC, SPY, gold.")
    p.add_argument("--data", required=True, type=Path, help="data folder (binance/TF/SYMBOL.parquet, benchmarks/1d)")
    p.add_argument("--timeframe", default="1d", choices=TIMEFRAMES, help="candle folder to use; default 1d")
    p.add_argument("--params", type=Path,
                   help="JSON parameter document; an optional \"timeframe\" key says which bars its lookbacks count "
                        "(default: the shipped parameter set, made for 1d)")
    p.add_argument("--params-timeframe", metavar="TF", choices=TIMEFRAMES,
                   help="the timeframe the parameters' lookbacks are counted in (default: the --params file's "
                        "\"timeframe\", else 1d); when it is not --timeframe they are scaled to the same durations")
    p.add_argument("--no-scale-lookbacks", dest="scale_lookbacks", action="store_false",
                   help="refuse to run parameters made for another timeframe instead of scaling their lookbacks, "
                        "windows and periods (1d -> 1h: x24)")
    p.add_argument("--start", help="first decision day YYYY-MM-DD (earlier candles are warm-up only)")
    p.add_argument("--end", help="last day YYYY-MM-DD, inclusive")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--fill", choices=("open", "close"), default="open", help="fill at next open (default) or close")
    p.add_argument("--fee", type=float, default=0.001, help="fee rate per side (default 0.001)")
    p.add_argument("--slippage", type=float, default=0.0005, help="slippage per side (default 0.0005)")
    p.add_argument("--max-participation", type=float, default=DEFAULT_MAX_PARTICIPATION,
                   help="a leg fills at most this share of its bar's volume, the rest is dropped (default 0.1; "
                        "inf: no cap)")
    p.add_argument("--impact", type=float, default=None,
                   help="square-root impact coefficient: slippage + IMPACT * sqrt(participation) (default: 0.03 "
                        "for daily bars, scaled by the square root of the bar length; 0: none)")
    p.add_argument("--capital", type=float, default=10_000.0, help="initial USDT (default 10000)")
    p.add_argument("--engine", choices=("reference", "fast"), default="reference",
                   help="reference: the live decision functions bar by bar (default); fast: the numba kernel "
                        "that tests pin to identical trades")
    p.add_argument("--symbols", help="comma-separated subset, BTC_USDT, BTC/USDT or BTCUSDT (default: every symbol "
                                      "in the folder); an unknown one is an error")
    p.add_argument("--rules", type=Path, help="exchange rules JSON like data/replay/markets.json")
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no summary on stderr (the results are in --out)")
    p.set_defaults(func=run_backtest_command)


def run_backtest_command(args: argparse.Namespace) -> int:
    # Here, not at the top: every `aura` command registers this parser, and the backtester's imports (polars,
    # matplotlib) would cost each of them (`aura params show`...) most of a second.
    from aura.backtest.engine import StderrProgress
    from aura.backtest.run import RunSpec, load_params_document, run_params, write_outputs

    try:
        if args.params:
            params, declared = load_params_document(args.params, args.params_timeframe)
        else:
            params, declared = StrategyParams(), args.params_timeframe
        spec = RunSpec(
            data_dir=args.data, timeframe=args.timeframe, params=params, start=args.start, end=args.end,
            fill_at=args.fill, fee_rate=args.fee, slippage=args.slippage, max_participation=args.max_participation,
            impact_coefficient=args.impact, initial_cash=args.capital, engine=args.engine,
            symbols=tuple(args.symbols.split(",")) if args.symbols is not None else None, rules_path=args.rules,
            params_timeframe=declared or PARAMS_TIMEFRAME, scale_lookbacks=args.scale_lookbacks)
        scaled = run_params(spec)  # refuses here, before any data is read, when scaling is off
        if scaled.changed:  # printed even with --quiet: it changes what the run means
            print(f"[TIMEFRAME] {scaled.summary()} (--no-scale-lookbacks refuses instead; --params-timeframe "
                  f"{args.timeframe} runs them as {args.timeframe} bars)", file=sys.stderr)
        t0 = time.perf_counter()
        progress = None if args.quiet else StderrProgress(f"backtest {args.timeframe}")
        metrics = write_outputs(spec, args.out, progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"aura backtest: {_one_line(exc)}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(summary(metrics, time.perf_counter() - t0, args.out), file=sys.stderr)
    return 0


def summary(metrics: dict[str, Any], seconds: float, out: Path) -> str:
    """What the run did, in three lines: performance, time in market and the kill-switch, round trips."""
    from aura.backtest.report_html import kill_switch_line

    s = metrics["strategy"]
    rt = s["round_trips"]
    win = f", win rate {rt['win_rate']:.1%}" if rt["closed"] else ""
    return (f"backtest done in {seconds:.1f}s: CAGR {s['cagr']:.2%}, Sharpe {s['sharpe']:.2f}, max drawdown "
            f"{s['max_drawdown']:.2%}, {s['trades']} trades -> {out}\n"
            f"  time in market {s['time_in_market']:.1%}; {kill_switch_line(s)}\n"
            f"  round trips: {rt['closed']} closed, {rt['open']} open{win}; report: {Path(out) / 'report.html'}")


def _one_line(exc: Exception) -> str:
    """The message on one line (a JSON decode error or msgspec path can span several)."""
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura")
    sub = parser.add_subparsers(dest="command", required=True)
    add_backtest_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

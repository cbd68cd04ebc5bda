"""``aura exchange-sim``: serve the venue simulator on a local port until interrupted."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aura.exchange_sim.config import (
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    FEE_ASSETS,
    SimConfig,
    default_data_dir,
)
from aura.exchange_sim.server import SimServer


def _balance(raw: str) -> tuple[str, str]:
    asset, sep, amount = raw.partition("=")
    if not sep or not asset:
        raise argparse.ArgumentTypeError(f"expected ASSET=AMOUNT, got {raw!r}")
    try:
        float(amount)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad amount in {raw!r}") from exc
    return asset.upper(), amount


def speed_arg(raw: str) -> float:
    """``--speed``: x real time, >= 0."""
    try:
        value = float(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad speed {raw!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"speed must be >= 0, got {raw!r}")
    return value


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (printed at start)")
    # The defaults are a test venue's, never a real exchange's: showing them saves starting it to find them.
    p.add_argument("--api-key", default=DEFAULT_API_KEY,
                   help="the API key it accepts (default %(default)s; printed at start)")
    p.add_argument("--api-secret", default=DEFAULT_API_SECRET,
                   help="the secret signed requests must use (default %(default)s; printed at start too)")
    p.add_argument("--balance", type=_balance, action="append", default=None, metavar="ASSET=AMOUNT",
                   help="starting free balance, repeatable (default USDT=10000)")
    p.add_argument("--data", type=Path, default=None,
                   help="candle folder (BASE_QUOTE.parquet files) or replay root with binance/<tf>/")
    p.add_argument("--timeframe", default="1d", help="candle interval of the market it serves (default 1d)")
    p.add_argument("--symbols", default="", help="comma-separated Binance ids to serve (default: all in --data)")
    p.add_argument("--start", default=None,
                   help="first price bar, ISO date or ms: the clock starts when it closes (default: a year before "
                        "the data ends)")
    p.add_argument("--speed", type=speed_arg, default=1.0,
                   help="clock speed, x real time (86400: a daily bar per second; 0: stands still until "
                        "POST /_sim/clock)")
    p.add_argument("--fee-rate", type=float, default=0.001, help="fee per fill (default 0.001, Binance's taker)")
    p.add_argument("--fee-asset", choices=FEE_ASSETS, default="received",
                   help="received (Binance without BNB: a buy's fee in the coins bought, a sell's in the quote; "
                        "default) or quote (every fee in the quote asset)")
    p.add_argument("--market-fill-chunks", type=int, default=1,
                   help="fill each market order in this many chunks, one per poll (thin book; default 1)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    balances: dict[str, Any] = dict(args.balance) if args.balance else {"USDT": 10_000}
    symbols = tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()) or None
    return SimConfig(data_dir=args.data or default_data_dir(), timeframe=args.timeframe, symbols=symbols,
                     start=args.start, speed=args.speed, balances=balances, api_key=args.api_key,
                     api_secret=args.api_secret, fee_rate=args.fee_rate, fee_asset=args.fee_asset,
                     market_fill_chunks=args.market_fill_chunks)


def run(args: argparse.Namespace) -> int:
    try:
        server = SimServer(config=config_from_args(args), host=args.host, port=args.port)
    except (OSError, ValueError) as exc:
        print(f"exchange-sim: cannot start: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    server.start()
    # One machine-readable line so scripts (and tests) can find the port picked for --port 0.
    base = f"http://{args.host}:{server.port}"
    print(json.dumps({"exchange_sim": base, "archive": base, "coingecko": base + "/coingecko",
                      "symbols": server.sim.market.listed(), "clock_ms": server.sim.market.clock_ms,
                      "now_ms": server.sim.now_ms(), "speed": server.sim.clock.speed}), flush=True)
    # And for a person: what to give the executor (a simulator's test key, never a real one).
    print(f"exchange-sim: accepting API key {args.api_key} with secret {args.api_secret}; point the executor at it "
          f"with AURA_EXCHANGE_API_URL={base} AURA_EXCHANGE_API_KEY={args.api_key} "
          f"AURA_EXCHANGE_API_SECRET={args.api_secret}", file=sys.stderr, flush=True)
    done.wait()
    server.stop()
    return 0


def add_exchange_sim_parser(subparsers: Any) -> None:
    """Register ``exchange-sim`` on an argparse subparsers object (the ``aura`` console script)."""
    p = subparsers.add_parser("exchange-sim", help="run the venue simulator (Binance Spot API, archive, CoinGecko)")
    _add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura exchange-sim", description=__doc__)
    _add_arguments(parser)
    return run(parser.parse_args(argv))

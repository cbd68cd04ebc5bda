"""The `aura` console script."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from shared.config import settings_for_command

# Subcommands contributed by other packages: (module, function that registers them on the subparsers).
PLUGGED_COMMANDS = (
    ("aura.backtest.cli", "add_backtest_parser"),
    ("services.ingest.cli", "add_data_parser"),
    ("aura.exchange_sim.cli", "add_exchange_sim_parser"),
    ("services.risk.cli", "add_risk_parser"),
)


def _cmd_up(args: argparse.Namespace) -> int:
    from aura.launcher import up

    return up(cycles=args.cycles, replay_interval_s=args.replay_interval)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from shared.signing import generate_keypair

    settings = settings_for_command("aura keygen")
    if settings is None:
        return 2
    private = Path(args.private) if args.private else settings.private_key_path
    public = Path(args.public) if args.public else settings.public_key_path
    created = generate_keypair(private, public)
    print(f"{'created' if created else 'kept existing'} risk key pair: private {private}, public {public}")
    return 0


def _cmd_params(args: argparse.Namespace) -> int:
    import asyncio

    import msgspec
    import nats

    from aura.strategy.params import params_digest
    from shared.live_params import ParamsError, load_params, parse_params, promote_params

    settings = settings_for_command("aura params")
    if settings is None:
        return 2

    if args.action == "set" and not args.file:
        print("aura params set: a JSON parameter file is required", file=sys.stderr)
        return 2

    async def go() -> int:
        nc = await nats.connect(settings.nats_url, connect_timeout=3, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            if args.action == "set":
                try:
                    params = parse_params(Path(args.file).read_bytes())
                except (OSError, ParamsError) as exc:
                    print(f"aura params set: {exc}", file=sys.stderr)
                    return 2
                version = await promote_params(js, params)
                print(f"promoted parameter version {version} (digest {params_digest(params)}); "
                      "live services use it from their next cycle")
                return 0
            params, version = await load_params(js)
            doc = msgspec.to_builtins(params)
            print(msgspec.json.format(msgspec.json.encode({"version": version, "digest": params_digest(params),
                                                           "params": doc}), indent=2).decode())
            return 0
        finally:
            await nc.close()

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aura", description="AURA momentum-rotation trading system")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the whole system locally (embedded nats-server + five services)")
    p_up.add_argument("--cycles", type=int, default=None, help="exit 0 once N cycles have ended in the journal")
    p_up.add_argument("--replay-interval", type=float, default=None,
                      help="seconds between replayed cycles (env AURA_REPLAY_INTERVAL_S)")
    p_up.set_defaults(func=_cmd_up)
    p_key = sub.add_parser("keygen", help="create the risk Ed25519 key pair if missing")
    p_key.add_argument("--private", default=None)
    p_key.add_argument("--public", default=None)
    p_key.set_defaults(func=_cmd_keygen)
    p_params = sub.add_parser("params", help="show or promote the live strategy parameters (KV bucket aura_params)")
    p_params.add_argument("action", choices=["show", "set"])
    p_params.add_argument("file", nargs="?", help="JSON parameter document for `set`")
    p_params.set_defaults(func=_cmd_params)
    for module_name, register in PLUGGED_COMMANDS:
        adder: Callable[[argparse._SubParsersAction], None] = getattr(  # type: ignore[type-arg]
            importlib.import_module(module_name), register)
        adder(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

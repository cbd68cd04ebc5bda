"""The `aura` console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version as package_version
from pathlib import Path

from aura.cli_types import int_at_least
from shared.config import settings_for_command

# Subcommands contributed by other packages: (module, function that registers them on the subparsers, the
# commands it registers).  A command line imports only its own command's module: each module's imports are that
# command's cost (nats, polars, numba, matplotlib: up to a second), which `aura params show` should not pay for
# the backtester.  Help, no command or an unknown one registers them all.
PLUGGED_COMMANDS = (
    ("aura.params_cli", "add_params_parser", ("params",)),
    ("aura.journal_cli", "add_journal_parser", ("journal",)),
    ("aura.backtest.cli", "add_backtest_parser", ("backtest",)),
    ("services.ingest.cli", "add_data_parser", ("data",)),
    ("aura.exchange_sim.cli", "add_exchange_sim_parser", ("exchange-sim",)),
    ("aura.rehearse", "add_rehearse_parser", ("rehearse",)),
    ("services.risk.cli", "add_risk_parser", ("risk",)),
    ("aura.optimize_cli", "add_optimize_parser", ("optimize",)),
    ("aura.status_cli", "add_status_parsers", ("status", "trades", "pnl")),
)
BUILT_IN_COMMANDS = ("up", "keygen", "bus")


def plugged_for(argv: Sequence[str] | None) -> list[tuple[str, str]]:
    """The (module, register) pairs a command line needs: its command's alone, none for a built-in command or
    ``--version``, every one for help, no command or an unknown one (``argv`` None: every one)."""
    everything = [(module, register) for module, register, _ in PLUGGED_COMMANDS]
    if argv is None:
        return everything
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    command, before = (argv[at] if at < len(argv) else None), set(argv[:at])
    if before & {"-h", "--help"}:  # the top-level help, whatever follows it: every command
        return everything
    if command in BUILT_IN_COMMANDS or (command is None and "--version" in before):
        return []
    own = [(module, register) for module, register, commands in PLUGGED_COMMANDS if command in commands]
    return own or everything


def _cmd_up(args: argparse.Namespace) -> int:
    from aura.launcher import up

    return up(cycles=args.cycles, replay_interval_s=args.replay_interval)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from shared.credentials import PRINCIPALS, CredentialError, KeyLayout, ensure_credentials, hand_over

    settings = settings_for_command("aura keygen")
    if settings is None:
        return 2
    layout = KeyLayout(Path(args.keys_dir).resolve()) if args.keys_dir else settings.keys
    try:
        created = ensure_credentials(layout)
        for owner in args.owner:
            principal, _, ids = owner.partition("=")
            uid, _, gid = ids.partition(":")
            if principal not in PRINCIPALS or not uid.isdigit() or not gid.isdigit():
                print(f"aura keygen: --owner {owner!r} is not PRINCIPAL=UID:GID with PRINCIPAL one of {PRINCIPALS}",
                      file=sys.stderr)
                return 2
            hand_over(layout, principal, int(uid), int(gid))
    except (OSError, CredentialError) as exc:
        print(f"aura keygen: {exc}", file=sys.stderr)
        return 1
    print(f"{'created ' + str(len(created)) if created else 'kept all existing'} keys and bus credentials under "
          f"{layout.root}")
    return 0


def _cmd_bus(args: argparse.Namespace) -> int:
    import asyncio

    from shared.bus import BusUnavailable, session
    from shared.bus_access import TlsFiles, matrix_markdown, server_config
    from shared.credentials import CredentialError, bus_users
    from shared.provision import provision_bus

    settings = settings_for_command("aura bus")
    if settings is None:
        return 2
    if args.bus_command == "matrix":
        sys.stdout.write(matrix_markdown())
        return 0
    if args.bus_command == "config":
        tls = TlsFiles(args.tls_cert, args.tls_key) if args.tls_cert else None
        try:
            text = server_config(bus_users(settings.keys), args.host, args.port, args.store, tls, args.monitor_port)
        except CredentialError as exc:
            print(f"aura bus config: {exc}", file=sys.stderr)
            return 1
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            out.chmod(0o644 if args.world_readable else 0o600)
        else:
            sys.stdout.write(text)
        return 0

    async def provision() -> None:
        async with session(settings, "admin", timeout_s=5) as nc:
            await provision_bus(nc.jetstream(), settings.dedup_window_s)

    try:
        asyncio.run(provision())
    except (BusUnavailable, CredentialError) as exc:
        print(f"aura bus provision: {exc}", file=sys.stderr)
        return 1
    print("streams, buckets and durable consumers provisioned")
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (see ``plugged_for``); without it, the parser of every command."""
    # No abbreviations at the top: `aura --hel risk` would be help, read by plugged_for as the risk command.
    parser = argparse.ArgumentParser(prog="aura", description="AURA momentum-rotation trading system",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"aura {package_version('aura')}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the whole system locally (embedded nats-server, five services, the console)")
    p_up.add_argument("--cycles", type=int_at_least(1), default=None,
                      help="exit 0 once N cycles have ended in the journal")
    p_up.add_argument("--replay-interval", type=float, default=None,
                      help="seconds between replayed cycles (env AURA_REPLAY_INTERVAL_S)")
    p_up.set_defaults(func=_cmd_up)
    p_key = sub.add_parser("keygen", help="create every missing signing key and bus credential (never replaces)")
    p_key.add_argument("--keys-dir", default=None, help="where (default: setting keys_dir, $AURA_HOME/keys)")
    p_key.add_argument("--owner", action="append", default=[], metavar="PRINCIPAL=UID:GID",
                       help="hand keys/PRINCIPAL to this OS user (compose runs each service as its own user)")
    p_key.set_defaults(func=_cmd_keygen)
    p_bus = sub.add_parser("bus", help="the NATS bus: provision it, print its server config or permission matrix")
    bus_sub = p_bus.add_subparsers(dest="bus_command", required=True)
    bus_sub.add_parser("provision", help="create or update every stream, bucket and durable consumer (operator)")
    bus_sub.add_parser("matrix", help="print the permission matrix (Markdown)")
    p_conf = bus_sub.add_parser("config", help="print (or write) the nats-server config for the keys in keys_dir")
    p_conf.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    p_conf.add_argument("--port", type=int, default=4222, help="client port")
    p_conf.add_argument("--store", default="/data", help="JetStream store directory")
    p_conf.add_argument("--monitor-port", type=int, default=None, help="HTTP monitoring port on 127.0.0.1")
    p_conf.add_argument("--tls-cert", default=None, help="server certificate (PEM): serve TLS")
    p_conf.add_argument("--tls-key", default=None, help="its private key (PEM)")
    p_conf.add_argument("--out", default=None, help="write here instead of stdout (mode 0600)")
    p_conf.add_argument("--world-readable", action="store_true",
                        help="write --out with mode 0644 (a server running as another user must read it)")
    p_bus.set_defaults(func=_cmd_bus)
    for module_name, register in plugged_for(argv):
        adder: Callable[[argparse._SubParsersAction], None] = getattr(  # type: ignore[type-arg]
            importlib.import_module(module_name), register)
        adder(sub)
    _name_subcommands(parser)
    return parser


def _name_subcommands(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """A missing subcommand is named as the usage line shows it ({provision,matrix,config}), not by its internal
    dest ("required: bus_command", found by an audit).  Not the top level's: `aura` alone says "command", and
    `aura foo` would list every command twice."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.choices:
            if action.metavar is None and not top:
                action.metavar = "{" + ",".join(action.choices) + "}"
            for child in action.choices.values():
                _name_subcommands(child, top=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # The command's modules are imported here (lazily, see plugged_for): Ctrl-C during that half second
        # printed a 15-40 line KeyboardInterrupt traceback.  Commands that run a system handle SIGINT themselves.
        args = build_parser(argv).parse_args(argv)
        code = int(args.func(args))
        sys.stdout.flush()  # a short output is written here, not at exit: a closed pipe must raise inside the try
        return code
    except KeyboardInterrupt:
        print("aura: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`aura status --json | head`): what is left to print goes nowhere, without the
        # traceback Python would print on the flush at exit.  141 is what a shell reports for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""Every option has help (issue 11): the whole ``aura`` argparse tree, built by the CLI's own parser factory, is
walked; every subcommand, option and positional must say what it is for.  A hidden option (``argparse.SUPPRESS``)
counts as one without help: an operator cannot find it in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from aura.cli import build_parser

Command = tuple[str, ...]


def walk(parser: argparse.ArgumentParser, path: Command) -> Iterator[tuple[Command, argparse.ArgumentParser]]:
    """(command path, parser) for ``parser`` and every subcommand under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """What ``parser`` offers without help text: options, positionals, and subcommands (their line in the
    parent's help)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            missing += [f"subcommand {name}" for name in action.choices if name not in helped]
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_every_subcommand_option_and_argument_has_help() -> None:
    commands = dict(walk(build_parser(), ("aura",)))
    # The walk really reaches the leaves contributed by other packages (else an empty walk would pass).
    for leaf in (("aura", "data", "sync"), ("aura", "exchange-sim"), ("aura", "optimize"), ("aura", "bus", "config"),
                 ("aura", "params", "set"), ("aura", "risk", "reset"), ("aura", "backtest"), ("aura", "keygen")):
        assert leaf in commands, leaf
    missing = {" ".join(path): gaps for path, parser in commands.items() if (gaps := undocumented(parser))}
    assert missing == {}


def test_a_hidden_or_bare_option_is_caught() -> None:
    """The check itself: an option without help and a suppressed one are both reported."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bare")
    parser.add_argument("--hidden", help=argparse.SUPPRESS)
    parser.add_argument("--fine", help="documented")
    sub = parser.add_subparsers()
    sub.add_parser("quiet")
    assert undocumented(parser) == ["--bare", "--hidden", "subcommand quiet"]

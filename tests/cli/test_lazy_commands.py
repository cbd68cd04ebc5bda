"""A command line imports only its own command's module (aura/cli.py ``plugged_for``): `aura params show` must
not pay for the backtester's polars and matplotlib.  The declared command names must be exactly what each module
registers, or a command would be missing from the parser its own command line builds."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from aura.cli import BUILT_IN_COMMANDS, PLUGGED_COMMANDS, build_parser, plugged_for


def commands_of(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


@pytest.mark.parametrize(("module", "register", "declared"), PLUGGED_COMMANDS)
def test_each_module_registers_exactly_the_commands_it_is_declared_with(module: str, register: str,
                                                                         declared: tuple[str, ...]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    getattr(importlib.import_module(module), register)(sub)
    assert commands_of(parser) == set(declared)


def test_a_command_line_builds_its_own_command_and_help_builds_them_all() -> None:
    everything = commands_of(build_parser())
    assert commands_of(build_parser(["params", "show"])) == {*BUILT_IN_COMMANDS, "params"}
    assert commands_of(build_parser(["trades", "--json"])) == {*BUILT_IN_COMMANDS, "status", "trades", "pnl"}
    assert commands_of(build_parser(["up", "--cycles", "3"])) == set(BUILT_IN_COMMANDS)
    assert plugged_for(["--version"]) == []
    # Help lists every command (also `aura -h params`); an unknown command names them all.
    for argv in ([], ["--help"], ["-h"], ["-h", "params"], ["frobnicate"]):
        assert commands_of(build_parser(argv)) == everything
    # What the user typed parses the same either way.
    argv = ["params", "diff", "1", "2"]
    assert vars(build_parser(argv).parse_args(argv)) == vars(build_parser().parse_args(argv))


def test_top_level_options_take_no_value() -> None:
    """plugged_for takes the first word without a dash for the command: true while no top-level option has a
    value (a value would be read as the command), and while no option is abbreviated (`--hel` is not help)."""
    parser = build_parser()
    assert all(action.nargs == 0 for action in parser._actions if action.option_strings)
    assert parser.allow_abbrev is False


def test_params_show_does_not_import_the_backtester_or_the_health_app() -> None:
    code = ("import sys; from aura.cli import build_parser; build_parser(['params', 'show']); "
            "print(sorted(m for m in ('polars', 'matplotlib', 'aura.backtest.run', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

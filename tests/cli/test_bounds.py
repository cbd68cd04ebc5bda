"""What the CLI refuses in one line instead of running as something else, through the installed ``aura`` script:
counts below their floor, an empty or future ``data sync`` range; output piped into a reader that stops early;
and the one-line bus timeout naming the time it really waited.  Each of these was found by trying them:
``--cycles 0`` ran a cycle, ``status --cycles 0`` said "none yet" over a journal of 84 cycles, ``data sync
--until`` before ``--since`` said "complete: yes", ``aura bus matrix | head -1`` ended in a BrokenPipeError
traceback, and an unanswering bus was said to be silent for 7 s after 3.5."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shared.bus import BusUnavailable, session
from shared.config import load_settings
from shared.credentials import ensure_credentials
from tests.cli.test_basics import AURA, env

pytestmark = pytest.mark.timeout(90)


def aura(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AURA), *args], env=env(tmp_path), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("up", "--cycles", "0"), ("up", "--cycles", "-3"), ("rehearse", "--cycles", "0"),
    ("status", "--cycles", "0"), ("trades", "--limit", "-1"),
    ("pnl", "--daily", "--days", "-2"),
], ids=lambda a: " ".join(a))
def test_a_count_below_its_floor_is_refused_in_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    done = aura(tmp_path, *args)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "must be at least" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "home" / "var").exists(), "nothing may start for a refused command"


@pytest.mark.parametrize(("args", "said"), [
    (("bus",), "required: {provision,matrix,config}"), (("params",), "required: {show,set,history,diff,rollback}"),
    (("risk",), "required: {status,reset}"), (("journal",), "required: {adopt,settle}"),
    (("data",), "required: {sync}"),
    (("params", "set", "/no/such/file.json", "--reason", "x"), "cannot read /no/such/file.json"),
    (("backtest", "--data", "/tmp", "--out", "/tmp/x", "--timeframe", "5m"), "invalid choice: '5m'"),
    (("backtest", "--data", "/tmp", "--out", "/tmp/x", "--params-timeframe", "2w"), "invalid choice: '2w'"),
], ids=lambda a: " ".join(a) if isinstance(a, tuple) else "")
def test_a_missing_subcommand_file_or_timeframe_is_said_as_the_operator_wrote_it(tmp_path: Path,
                                                                                 args: tuple[str, ...],
                                                                                 said: str) -> None:
    """Found by an audit: a missing subcommand was named by its internal dest ("required: bus_command"), a missing
    parameter file was reported as "no AURA system is running", and a backtest ran on a timeframe of 2 weeks."""
    done = aura(tmp_path, *args)
    assert done.returncode == 2 and said in done.stderr.strip().splitlines()[-1], (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("window", "said"), [
    (("--since", "2024-01-01", "--until", "2023-01-01"), "is before --since"),
    (("--since", "2030-01-01", "--now", "2026-01-01"), "--since is in the future"),
], ids=["until before since", "since after now"])
def test_data_sync_refuses_a_range_with_nothing_in_it(tmp_path: Path, window: tuple[str, ...], said: str) -> None:
    done = aura(tmp_path, "data", "sync", "--symbols", "BTC/USDT", "--no-progress", *window)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert said in done.stderr and "complete: yes" not in done.stdout, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_output_piped_into_a_reader_that_stops_ends_without_a_traceback(tmp_path: Path) -> None:
    # Buffered, as in an ordinary shell: the output is then written in one flush (PYTHONUNBUFFERED is set in CI
    # and in the image, where each print writes at once).
    buffered = {k: v for k, v in env(tmp_path).items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([str(AURA), "bus", "matrix"], env=buffered, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the command prints (it is still importing)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_an_unanswering_bus_is_said_to_be_silent_for_as_long_as_it_was_waited_for(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept_and_say_nothing() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    settings = load_settings({"AURA_HOME": str(tmp_path / "home"),
                              "AURA_NATS_URL": f"nats://127.0.0.1:{listener.getsockname()[1]}"})
    ensure_credentials(settings.keys)

    async def attempt() -> str:
        try:
            async with session(settings, "operator", timeout_s=0.5):
                return "connected"
        except BusUnavailable as exc:
            return str(exc)

    started = time.monotonic()
    said = asyncio.run(attempt())
    waited = time.monotonic() - started
    listener.close()
    for conn in held:
        conn.close()
    assert "no answer within" in said, said
    stated = float(said.rsplit("no answer within ", 1)[1].split(" s")[0])
    # What it says it waited is what it waited: never more than the time around the call (which also holds the
    # loop's start and the credentials read, and a loaded machine's stalls), and at least its own bound.
    assert 0.5 <= stated <= waited + 0.05, (stated, waited, said)


def test_ctrl_c_while_the_command_is_being_loaded_ends_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The command's modules load inside main (a second, on a cold cache): Ctrl-C there printed a traceback."""
    import aura.cli as cli

    def interrupted(_argv: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["status"]) == 130
    assert capsys.readouterr().err == "aura: interrupted\n"


def test_the_params_command_is_described_by_the_subcommands_it_has(tmp_path: Path) -> None:
    """Found by an audit: `aura --help` offered `params` to "show, promote, compare or roll back", and `aura params
    compare` is no command (diff is)."""
    said = " ".join(aura(tmp_path, "--help").stdout.split())  # argparse wraps the help over lines
    listed = said[said.index(" params ") : said.index(" journal ")]
    for word in ("show", "set", "history", "diff", "roll back"):
        assert word in listed, listed
    assert "promote" not in listed, listed

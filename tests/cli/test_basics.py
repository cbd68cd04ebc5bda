"""CLI basics of issue 11 through the installed ``aura`` console script: ``--version`` and the API key the venue
simulator accepts (in ``--help`` and in its start banner)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from aura.exchange_sim.config import DEFAULT_API_KEY, DEFAULT_API_SECRET
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(60)
AURA = Path(sys.executable).parent / "aura"  # the console script pyproject installs, as a user runs it


def env(tmp_path: Path) -> dict[str, str]:
    # COLUMNS: argparse wraps help to the terminal; a wide one keeps a key from being split across lines.
    return {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | {
        "AURA_HOME": str(tmp_path / "home"), "COLUMNS": "200"}


def test_version_prints_the_package_version_and_exits_0(tmp_path: Path) -> None:
    assert AURA.is_file(), f"no console script at {AURA}"
    done = subprocess.run([str(AURA), "--version"], env=env(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"aura {version('aura')}\n" and done.stderr == ""
    assert version("aura")[0].isdigit()  # the installed metadata, not an empty or placeholder string


def test_exchange_sim_help_shows_the_key_and_secret_it_accepts(tmp_path: Path) -> None:
    done = subprocess.run([str(AURA), "exchange-sim", "--help"], env=env(tmp_path), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"default {DEFAULT_API_KEY}" in done.stdout and f"default {DEFAULT_API_SECRET}" in done.stdout


@pytest.mark.parametrize("key", [None, "my-test-key"])
def test_exchange_sim_start_banner_shows_the_key_it_accepts(tmp_path: Path, key: str | None) -> None:
    """Started on a free port (--port 0): the first stdout line is the machine-readable address, the first stderr
    line tells a person which key (and secret) to give the executor; SIGTERM stops it cleanly."""
    extra = [] if key is None else ["--api-key", key]
    proc = subprocess.Popen([str(AURA), "exchange-sim", "--port", "0", "--symbols", "BTCUSDT", *extra],
                            cwd=REPO_ROOT, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        address = json.loads(proc.stdout.readline())
        assert address["exchange_sim"].startswith("http://127.0.0.1:") and address["symbols"] == ["BTCUSDT"]
        banner = proc.stderr.readline()
        accepted = key or DEFAULT_API_KEY
        assert banner.startswith(f"exchange-sim: accepting API key {accepted} with secret {DEFAULT_API_SECRET}")
        assert f"AURA_EXCHANGE_API_KEY={accepted} " in banner and f"AURA_EXCHANGE_API_URL={address['exchange_sim']}" \
            in banner
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

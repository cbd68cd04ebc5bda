"""`aura optimize` end to end, as a user runs it, on five bundled symbols with the tiny grids:

* the embedded mode (its own secured nats-server and local workers) writes decision.json, trials.parquet and
  report.html with everything the issue asks for;
* identical inputs give byte-identical outputs, whatever the number of workers, the state directory, or a run
  killed with kill -9 half-way and started again (which resumes from its result store and leaves no worker behind);
* `--promote` on a running system: the incumbent is read from it, and when the gate says no nothing is written to
  its parameters (the decision is published for the console).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO_ROOT, NatsEndpoint
from tests.optimize.test_end_to_end import TINY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SYMBOLS = "BTC_USDT,ETH_USDT,BNB_USDT,XRP_USDT,LTC_USDT"
FILES = ("decision.json", "trials.parquet", "report.html")


def command(tmp_path: Path, out: str, state: str, workers: int, *extra: str) -> list[str]:
    grids = tmp_path / "tiny.toml"
    grids.write_text(TINY)
    return [sys.executable, "-m", "aura.cli", "optimize", "--data", str(REPO_ROOT / "data" / "replay"),
            "--timeframe", "1d", "--out", str(tmp_path / out), "--workers", str(workers), "--grids", str(grids),
            "--symbols", SYMBOLS, "--folds", "2", "--spa-reps", "300", "--state", str(tmp_path / state), *extra]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    return env | extra


def stored(path: Path) -> int:
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
    except sqlite3.Error:
        return 0


def workers_of(state: Path) -> list[int]:
    """Worker processes whose AURA_HOME is under ``state`` (the embedded bus's home)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"services.optimizer.worker" in (proc / "cmdline").read_bytes() and \
                    str(state).encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def section(html: str, heading: str) -> str:
    """The report's text from the <h2> that starts with ``heading`` to the next <h2>."""
    start = html.index(f"<h2>{heading}")
    end = html.find("<h2>", start + 4)
    return html[start:end if end > 0 else len(html)]


def assert_report_contents(html: str) -> None:
    """What the charts hold, not only that they exist: every validation window's chart draws the winner, the
    incumbent, gold and SPY (in the report's colours); each stage of the TINY grid has its heatmap with one cell
    per value pair of its two widest axes (3x3, 2x1, 2x1, 2x2) and the winner's cell outlined; every selection
    (two folds: the newest one's winner would go live) has its halving ladder row."""
    windows = section(html, "Validation windows").split("<figure>")[1:]
    assert len(windows) == 2, "one chart per validation window"
    for chart in windows:
        for colour in ("#1f5fbf", "#888888", "#c9a227", "#2e8b57"):  # winner, incumbent, GOLD, SPY
            assert f'stroke="{colour}"' in chart, colour
    heatmaps = section(html, "A heatmap per stage").split("<figure>")[1:]
    assert [h.count('width="56" height="56"') for h in heatmaps] == [9, 2, 2, 4]
    assert [h.count('stroke-width="3"') for h in heatmaps] == [1, 1, 1, 1]
    ladder = section(html, "Successive halving")
    assert all(f">{label}</td>" in ladder for label in ("fold 6", "fold 7")), ladder[:500]
    assert ">final</td>" not in ladder


def test_outputs_are_complete_identical_and_survive_a_kill_9(tmp_path: Path) -> None:
    env = clean_env(AURA_HOME=str(tmp_path / "home"))
    first = subprocess.run(command(tmp_path, "a", "state-a", 2), env=env, capture_output=True, text=True,
                           timeout=600, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    doc = json.loads((tmp_path / "a" / "decision.json").read_text())
    assert isinstance(doc["promoted"], bool) and doc["parameters"] and doc["failed_tests"] == [
        c["name"] for c in doc["checks"] if not c["passed"]]
    assert all({"strategy", "GOLD", "SPY", "incumbent", "dates"} <= set(w) for w in doc["windows"])
    assert set(doc["dsr"]) == set(doc["spa_pvalues"]) == {"GOLD", "SPY"} and 0 <= doc["pbo"] <= 1
    # two folds' selections, every trial of every stage; the newest fold's winner is what would go live, judged on
    # the newest bars (no refit selection)
    assert doc["trials"]["counted"] == 2 * (9 + 2 + 2 + 4) and doc["trials"]["pruned_evaluations"] > 0
    assert doc["promoted_from"] == "fold 7" and doc["promoted_set_validated"] is True
    assert [(f["fold"], f["models"]) for f in doc["spa_by_fold"]] == [(6, 17), (7, 17)]
    assert doc["spa_pvalues"] == {b: max(f[b] for f in doc["spa_by_fold"]) for b in ("GOLD", "SPY")}
    assert {"in_sample", "out_of_sample", "gap", "per_fold"} <= set(doc["sharpe"])
    assert doc["universe"]["survivorship"].startswith("From README.md: Survivorship bias")  # the data's own words
    trials = pl.read_parquet(tmp_path / "a" / "trials.parquet")
    assert set(trials["status"]) >= {"pruned", "winner"} and set(trials["selection"]) == {"fold 6", "fold 7"}
    html = (tmp_path / "a" / "report.html").read_text()
    for part in ("Validation windows", "heatmap per stage", "ladder", "In-sample against out-of-sample",
                 "Survivorship", "<svg"):
        assert part in html, part
    assert_report_contents(html)

    # The same inputs with one worker and another state, killed with -9 half-way, then run again.
    state_b = tmp_path / "state-b"
    proc = subprocess.Popen(command(tmp_path, "b", "state-b", 1), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    deadline = time.monotonic() + 300
    while stored(state_b / "results.sqlite") < 25:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no answers stored"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while workers_of(state_b) and time.monotonic() < deadline:  # they get SIGTERM when their parent dies
        time.sleep(0.2)
    assert not workers_of(state_b), "a local worker outlived the killed run"
    again = subprocess.run(command(tmp_path, "b", "state-b", 1), env=env, capture_output=True, text=True, timeout=600,
                           cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed:" in again.stderr and "replayed" in again.stderr
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_promote_reads_the_live_incumbent_and_a_no_changes_nothing(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    """Working on the system's own bus (AURA_NATS_URL) with one local worker holding the system's worker key."""
    import asyncio

    from aura.strategy.params import StrategyParams
    from shared.bus import close, state_kv
    from shared.credentials import signing_key
    from shared.live_params import promote, read_version, sign_document

    async def seed() -> None:
        nc = await nats_server.connect("optimizer")
        key = signing_key(nats_server.settings().keys, "optimizer")
        await promote(nc.jetstream(), sign_document(StrategyParams(top_k=2), key, "optimizer", "seed"), key)
        await close(nc)

    async def live() -> tuple[int, dict[str, object]]:
        nc = await nats_server.connect("operator")
        from shared.credentials import PARAMS_SIGNERS, trusted_keys

        _, version, _ = await read_version(nc.jetstream(), trusted_keys(nats_server.settings().keys, "operator",
                                                                        PARAMS_SIGNERS))
        entry = await (await state_kv(nc.jetstream())).get("optimizer.decision")
        await close(nc)
        return version, json.loads(entry.value or b"{}")

    asyncio.run(seed())
    env = clean_env(**nats_server.env())
    done = subprocess.run(command(tmp_path, "out", "state", 1, "--promote"), env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "live parameter version 1" in done.stderr
    doc = json.loads((tmp_path / "out" / "decision.json").read_text())
    assert doc["incumbent"]["top_k"] == 2, "the incumbent is the system's live version, not the shipped defaults"
    assert doc["promoted"] is False, "this tiny run is known to fail the gate"
    assert "not promoted" in done.stderr
    version, published = asyncio.run(live())
    assert version == 1
    assert published["promoted"] is False and published["incumbent_version"] == 1
    assert published["report_sha256"] == __import__("hashlib").sha256(
        (tmp_path / "out" / "decision.json").read_bytes()).hexdigest()


def test_a_run_that_could_never_finish_or_would_take_another_runs_state_is_refused(tmp_path: Path) -> None:
    """Found by an audit: --workers 0 on the embedded bus waited forever for a worker, and a second run on the same
    --state stopped the first one's bus and wiped its store."""
    import fcntl

    env = clean_env(AURA_HOME=str(tmp_path / "home"))
    alone = subprocess.run(command(tmp_path, "a", "state-a", 0), env=env, capture_output=True, text=True,
                           timeout=120, cwd=REPO_ROOT)
    assert alone.returncode == 2 and "--workers 0 starts no worker" in alone.stderr, alone.stderr
    (tmp_path / "state-b").mkdir()
    with open(tmp_path / "state-b" / "run.lock", "a+") as held:  # a run in progress holds its state
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.run(command(tmp_path, "b", "state-b", 1), env=env, capture_output=True, text=True,
                                timeout=120, cwd=REPO_ROOT)
    assert second.returncode == 2 and "another aura optimize is running" in second.stderr, second.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "state-b" / "bus").exists()

"""Promotion into a running system through the existing parameter path (services/optimizer/promote.py, called by
`aura optimize --promote`), on a real secured nats-server:

* the gate says yes: the winner becomes a new version signed by the optimizer, carrying the gate's record; signal's
  and risk's ParamsTrackers (each with the keys it pinned) take it up; `aura params history` lists it and
  `aura params rollback` undoes it;
* the gate says no: aura_params is untouched, and the decision is still published for the console;
* the live version moved during the run: nothing is promoted.

The gate's verdict itself is tested in test_gate.py; here a finished run's decision is flipped to exercise both
branches of the promotion on the same record.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aura import optimize_job
from aura.optimize.report import DECISION
from aura.strategy.params import StrategyParams
from shared.bus import close, state_kv
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from shared.health import HealthState
from shared.live_params import history, promote, sign_document
from shared.params_tracker import ParamsTracker
from tests.conftest import REPO_ROOT, NatsEndpoint
from tests.optimize.test_end_to_end import TINY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A finished run of the tiny grids on five bundled symbols (in process: the bus is not what is tested here)."""
    grids = tmp_path_factory.mktemp("grids") / "tiny.toml"
    grids.write_text(TINY)
    job = optimize_job.prepare_job(argparse.Namespace(
        data=REPO_ROOT / "data" / "replay", timeframe="1d", symbols="BTC_USDT,ETH_USDT,BNB_USDT,XRP_USDT,LTC_USDT",
        grids=grids, anchored=False, folds=2, min_budget=None, eta=3, spa_reps=300))
    return optimize_job.local_record(job)


def with_verdict(record: Any, passed: bool) -> Any:
    """``record`` as a gate that says ``passed`` judged it.  No honest gate passes anything on the bundled data, so
    a yes comes from thresholds loose enough to admit the run (any margin over the benchmarks, every DSR, PBO and
    SPA p-value): the record carries them with the decision they give, as a real run's would, so the
    coordinator's audit, which runs the gate again before promoting, finds the verdict it reads (a verdict merely
    flipped to yes is a forgery, and refused: tests/optimize/test_audit.py)."""
    if record.decision.passed is passed:
        return record
    gate = dataclasses.replace(record.gate, min_window_margin=-10.0, dsr_min=0.0, pbo_max=1.0, spa_alpha=1.0)
    judged = dataclasses.replace(record, gate=gate, decision=record.run.decide(gate))
    assert judged.decision.passed is passed, judged.decision.summary()
    return judged


async def seed(nats: NatsEndpoint) -> None:
    """What the optimizer service does at its first start: the shipped defaults as version 1, signed."""
    nc = await nats.connect("optimizer")
    key = signing_key(nats.settings().keys, "optimizer")
    await promote(nc.jetstream(), sign_document(StrategyParams(), key, "optimizer", "seed: the shipped defaults"), key)
    await close(nc)


async def in_force(nats: NatsEndpoint) -> dict[str, tuple[StrategyParams, int, Any]]:
    """What signal and risk each see now (their own connection, their own pinned keys)."""
    seen = {}
    for name in ("signal", "risk"):
        nc = await nats.connect(name)
        tracker = ParamsTracker(nc.jetstream(), trusted_keys(nats.settings().keys, name, PARAMS_SIGNERS),
                                HealthState(service=name), logging.getLogger(f"aura.test.{name}"),
                                max_loss_bound=nats.settings().max_loss_bound)
        params, version = await tracker.current()
        docs = await history(nc.jetstream(), tracker.trusted)
        seen[name] = (params, version, next((d for v, d, _ in docs if v == version), None))
        await close(nc)
    return seen


async def decision_in_state(nats: NatsEndpoint) -> dict[str, Any]:
    nc = await nats.connect("operator")
    entry = await (await state_kv(nc.jetstream())).get("optimizer.decision")
    await close(nc)
    return dict(json.loads(entry.value or b"{}"))


def params_cli(nats: NatsEndpoint, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | nats.env()
    return subprocess.run([sys.executable, "-m", "aura.cli", "params", *args], env=env, capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT)


def test_a_yes_is_promoted_signed_hot_reloaded_listed_and_undone(nats_server: NatsEndpoint, record: Any,
                                                                  tmp_path: Path) -> None:
    asyncio.run(seed(nats_server))
    assert {n: v for n, (_, v, _) in asyncio.run(in_force(nats_server)).items()} == {"signal": 1, "risk": 1}
    yes = with_verdict(record, True)
    digests = optimize_job.write(yes, tmp_path / "out")
    code = optimize_job.promote(yes, digests, nats_server.settings(), "", 1, optimize_job.Say(True))
    assert code == 0
    seen = asyncio.run(in_force(nats_server))
    for name, (params, version, doc) in seen.items():
        assert version == 2 and params == yes.run.winner, name
        assert doc.promoted_by == "optimizer" and doc.record["report_sha256"] == digests[DECISION], name
        assert doc.record["timeframe"] == "1d", name  # the run's bars: a system on other bars refuses it
        assert doc.record["tests"]["deflated_sharpe"]["value"] == min(d.dsr for d in yes.decision.dsr.values())
        assert [f["fold"] for f in doc.record["folds"]] == [f.index for f in yes.run.folds]
        assert set(doc.record["spa_pvalues"]) == {"GOLD", "SPY"} and "pbo" in doc.record
    assert (tmp_path / "out" / DECISION).read_bytes()  # the digest in the record names this file
    shown = params_cli(nats_server, "history")
    assert shown.returncode == 0, shown.stderr
    assert "optimizer" in shown.stdout and "walk-forward optimizer" in shown.stdout
    back = params_cli(nats_server, "rollback", "1", "--reason", "undo the optimizer")
    assert back.returncode == 0, back.stderr
    after = asyncio.run(in_force(nats_server))
    assert all(v == 3 and p == StrategyParams() for p, v, _ in after.values())
    assert asyncio.run(decision_in_state(nats_server))["promoted"] is True


def test_a_no_promotes_nothing_and_a_moved_incumbent_blocks_a_yes(nats_server: NatsEndpoint, record: Any,
                                                                   tmp_path: Path) -> None:
    asyncio.run(seed(nats_server))
    no = with_verdict(record, False)
    digests = optimize_job.write(no, tmp_path / "no")
    assert optimize_job.promote(no, digests, nats_server.settings(), "", 1, optimize_job.Say(True)) == 0
    assert all(v == 1 for _, v, _ in asyncio.run(in_force(nats_server)).values())
    published = asyncio.run(decision_in_state(nats_server))
    assert published["promoted"] is False and published["version"] is None and published["incumbent_version"] == 1
    # The run was judged against version 1; an operator promotes version 2 meanwhile: the yes must not land.
    change = tmp_path / "top_k.json"
    change.write_text('{"top_k": 2}')
    assert params_cli(nats_server, "set", str(change), "--reason", "operator moved").returncode == 0
    yes = with_verdict(record, True)
    assert optimize_job.promote(yes, optimize_job.write(yes, tmp_path / "yes"), nats_server.settings(), "", 1,
                                optimize_job.Say(True)) == 1
    assert all(v == 2 for _, v, _ in asyncio.run(in_force(nats_server)).values())
    # The console hears of the refused yes too (found by an audit: the refusal skipped publishing the decision,
    # which went on saying the run before's "no").
    refused = asyncio.run(decision_in_state(nats_server))
    assert refused["promoted"] is False and refused["verdict"].startswith("not promoted:"), refused


def test_an_hourly_run_is_judged_against_the_defaults_counted_in_hours(shared_data_dir: Path) -> None:
    """Without --promote the incumbent is the shipped set at the same durations in the run's bars: on 1h a daily
    lookback of 30 bars would be 30 hours, a strategy nobody runs."""
    from shared.live_params import default_params

    job = optimize_job.prepare_job(argparse.Namespace(
        data=shared_data_dir, timeframe="1h", symbols="BTC_USDT,ETH_USDT", grids=None, anchored=False, folds=1,
        min_budget=None, eta=3, spa_reps=300))
    assert job.incumbent == default_params("1h") != StrategyParams()
    assert job.incumbent.regime_sma == 24 * StrategyParams().regime_sma

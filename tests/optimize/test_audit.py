"""A forged worker answer cannot carry a promotion: before promoting, the coordinator evaluates again every answer
the gate's verdict reads directly (each fold's winner and the incumbent on its validation window, each selection's
winner in sample) and refuses on any difference (aura/optimize/audit.py, aura/optimize_job.py ``promote``)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aura.optimize.audit import audited
from aura.optimize_job import audit, local_record, prepare_job, promote
from shared.config import load_settings
from tests.conftest import REPO_ROOT
from tests.optimize.test_end_to_end import TINY

REPLAY = REPO_ROOT / "data" / "replay"


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Any:
    grids = tmp_path_factory.mktemp("grids") / "tiny.toml"
    grids.write_text(TINY)
    job = prepare_job(argparse.Namespace(data=REPLAY, timeframe="1d", symbols="BTC_USDT,ETH_USDT,XRP_USDT",
                                         grids=grids, anchored=False, folds=2, min_budget=None, eta=3,
                                         spa_reps=200))
    return local_record(job)


def test_an_honest_run_is_reproduced_answer_for_answer(record: Any) -> None:
    checked = audited(record.run)
    # Two folds: winner and incumbent on each validation window; three selections (two folds and the final) in
    # sample.
    assert len(checked) == 2 * 2 + 3, [what for what, _, _ in checked]
    assert audit(record) == []


def test_a_forged_validation_answer_is_named_and_nothing_is_promoted(record: Any, tmp_path: Path) -> None:
    label, genuine = next(iter(record.run.validation.items()))
    forged = dataclasses.replace(genuine.winner, returns=genuine.winner.returns + 0.001)  # a better winner
    record.run.validation[label] = dataclasses.replace(genuine, winner=forged)
    try:
        assert audit(record) == [f"{label}: its winner on the validation window"]
        passed = dataclasses.replace(record, decision=dataclasses.replace(record.decision, passed=True))
        said: list[str] = []

        def say(msg: str, always: bool = False) -> None:
            said.append(msg)

        # No bus is named or reached: the refusal comes before any connection.
        settings = load_settings({"AURA_HOME": str(tmp_path / "home"), "AURA_NATS_URL": "nats://127.0.0.1:1"})
        assert promote(passed, {"decision.json": "0" * 64}, settings, "", 0, say) == 1
        assert said and said[-1].startswith("not promoted: 1 worker answers") and label in said[-1]
    finally:
        record.run.validation[label] = genuine

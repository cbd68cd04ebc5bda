"""A forged worker answer cannot carry a promotion: before promoting, the coordinator evaluates again every answer
the gate's verdict reads directly (each fold's winner and the incumbent on its validation window, each selection's
winner in sample), makes every selection again, runs the gate again on what it verified, and refuses on any
difference (aura/optimize/audit.py, aura/optimize_job.py ``promote``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aura.optimize.audit import audited
from aura.optimize_job import audit, local_record, prepare_job, promote, write
from aura.strategy.params import params_digest
from shared.bus import close
from shared.live_params import last_revision
from tests.conftest import REPO_ROOT, NatsEndpoint
from tests.optimize.test_end_to_end import TINY
from tests.optimize.test_promotion import decision_in_state

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
    # Two folds: winner and incumbent on each validation window; each fold's selection in sample (the newest
    # fold's winner is what would go live: no refit selection).
    assert len(checked) == 2 * 2 + 2, [what for what, _, _ in checked]
    assert audit(record) == []


def test_a_forged_validation_answer_is_named_and_nothing_is_promoted(record: Any, nats_server: NatsEndpoint,
                                                                     tmp_path: Path) -> None:
    label, genuine = next(iter(record.run.validation.items()))
    forged = dataclasses.replace(genuine.winner, returns=genuine.winner.returns + 0.001)  # a better winner
    record.run.validation[label] = dataclasses.replace(genuine, winner=forged)
    try:
        assert audit(record) == [f"{label}: its winner on the validation window"]
        passed = dataclasses.replace(record, decision=dataclasses.replace(record.decision, passed=True))
        said: list[str] = []

        def say(msg: str, always: bool = False) -> None:
            said.append(msg)

        digests = write(passed, tmp_path / "out")
        assert promote(passed, digests, nats_server.settings(), "", 0, say) == 1
        assert said and said[-1].startswith("not promoted: 1 checks of the workers' answers failed") \
            and label in said[-1]
        # Nothing was written to the parameters, and the console is told why.
        assert asyncio.run(versions(nats_server)) == 0
        published = asyncio.run(decision_in_state(nats_server))
        assert published["promoted"] is False and published["version"] is None
        assert published["verdict"].startswith("not promoted: 1 checks of the workers' answers failed")
    finally:
        record.run.validation[label] = genuine


async def versions(nats: NatsEndpoint) -> int:
    nc = await nats.connect("operator")
    try:
        return await last_revision(nc.jetstream())
    finally:
        await close(nc)


def test_a_final_winner_chosen_by_forged_rankings_is_found(record: Any) -> None:
    """The promoted set is the winner of the selection ``live_label`` names (the newest fold's): forged ranking
    answers there could pick it outright.  That selection is made again in-process and must pick the same set."""
    live = record.run.live_label
    final = next(s for s in record.run.selections if s.label == live)
    genuine = final.base
    other = next(p for run in final.runs for p in run.candidates.values() if params_digest(p) != params_digest(genuine))
    final.base = other  # what forged answers would have chosen
    try:
        # (Its in-sample answer, computed for another set than the run now names, is flagged too.)
        assert f"{live}: the winner, selected again in this process, is another parameter set" in audit(record)
    finally:
        final.base = genuine
    assert audit(record) == []


def test_forged_trials_of_the_final_selection_are_found(record: Any) -> None:
    """The pruned candidates' answers feed the overfitting tests (the DSR's trials, the CSCV and SPA matrices)
    without changing the winner: made better or more alike, they would make the gate's yes easier.  Made again,
    they differ."""
    live = record.run.live_label
    final = next(s for s in record.run.selections if s.label == live)
    stage = next(r for r in final.runs if r.matrix is not None)
    genuine = stage.matrix
    forged = genuine + 0.001  # every trial a little better against the benchmarks
    object.__setattr__(stage, "matrix", forged)
    try:
        assert audit(record) == [f"{live}: its trials (the overfitting tests' inputs), made again, differ"]
    finally:
        object.__setattr__(stage, "matrix", genuine)
    assert audit(record) == []


def test_forged_trials_of_a_fold_selection_are_found(record: Any) -> None:
    """A fold's pruned candidates, made more alike or better, would lower the PBO and the SPA p-values the gate
    reads (the CSCV and SPA matrices are the folds'): each fold's selection is made again too."""
    fold = next(s for s in record.run.selections if s.label != record.run.live_label)
    stage = next(r for r in fold.runs if r.matrix is not None)
    genuine = stage.matrix
    object.__setattr__(stage, "matrix", genuine * 0.0 + 0.001)  # every trial the same small edge: no overfitting
    try:
        assert audit(record) == [f"{fold.label}: its trials (the overfitting tests' inputs), made again, differ"]
    finally:
        object.__setattr__(stage, "matrix", genuine)
    assert audit(record) == []


def test_a_verdict_that_the_verified_record_does_not_give_is_found(record: Any) -> None:
    """The CSCV and the SPA tests are computed by workers: a PBO or a p-value a worker made up changes the verdict's
    figures, which the coordinator computes again from the verified trials."""
    genuine = record.decision
    forged = dataclasses.replace(record, decision=dataclasses.replace(
        genuine, pbo=0.0, spa_pvalues={k: 0.0 for k in genuine.spa_pvalues}))
    assert audit(forged) == ["the gate's verdict, computed again in this process (the overfitting tests included), "
                             "differs"]
    assert audit(record) == []

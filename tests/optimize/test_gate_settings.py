"""The gate's thresholds are settings: `aura optimize --dsr-min/--pbo-max/--spa-alpha` reach the checks and the
decision.json that records them; a threshold outside [0, 1] is refused before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aura import optimize_job
from aura.cli import build_parser
from aura.optimize.gate import GateSettings
from aura.optimize.report import decision_document
from tests.conftest import REPO_ROOT
from tests.optimize.test_end_to_end import TINY

SYMBOLS = "BTC_USDT,ETH_USDT,BNB_USDT,XRP_USDT,LTC_USDT"


def args_for(tmp_path: Path, *extra: str) -> list[str]:
    grids = tmp_path / "tiny.toml"
    grids.write_text(TINY)
    return ["optimize", "--data", str(REPO_ROOT / "data" / "replay"), "--out", str(tmp_path / "out"), "--grids",
            str(grids), "--symbols", SYMBOLS, "--folds", "1", "--spa-reps", "200", *extra]


def thresholds(doc: dict) -> dict[str, float]:
    return {c["name"]: c["threshold"] for c in doc["checks"] if c["name"] in ("deflated_sharpe", "pbo", "spa_GOLD",
                                                                               "spa_SPY")}


def test_changed_thresholds_reach_the_checks_and_decision_json(tmp_path: Path) -> None:
    parsed = build_parser().parse_args(args_for(tmp_path))
    assert (parsed.dsr_min, parsed.pbo_max, parsed.spa_alpha) == (0.95, 0.2, 0.05)  # the defaults are unchanged
    args = build_parser().parse_args(args_for(tmp_path, "--dsr-min", "0.5", "--pbo-max", "0.35", "--spa-alpha",
                                              "0.1"))
    job = optimize_job.prepare_job(args)
    assert (job.gate.dsr_min, job.gate.pbo_max, job.gate.spa_alpha) == (0.5, 0.35, 0.1)
    record = optimize_job.local_record(job)
    doc = decision_document(record)
    assert thresholds(doc) == {"deflated_sharpe": 0.5, "pbo": 0.35, "spa_GOLD": 0.1, "spa_SPY": 0.1}
    assert {k: doc["settings"]["gate"][k] for k in ("dsr_min", "pbo_max", "spa_alpha")} == {
        "dsr_min": 0.5, "pbo_max": 0.35, "spa_alpha": 0.1}
    # the same run judged with the default thresholds: only the thresholds (and what follows from them) move
    default = GateSettings(spa_reps=200)
    again = decision_document(dataclasses.replace(record, decision=record.run.decide(default), gate=default))
    assert thresholds(again) == {"deflated_sharpe": 0.95, "pbo": 0.2, "spa_GOLD": 0.05, "spa_SPY": 0.05}
    values = {c["name"]: c["value"] for c in doc["checks"]}
    assert values == {c["name"]: c["value"] for c in again["checks"]}
    for c in doc["checks"]:
        if c["name"] in ("deflated_sharpe", "spa_GOLD", "spa_SPY", "pbo"):
            assert c["passed"] == (c["value"] >= c["threshold"] if c["name"] == "deflated_sharpe"
                                   else c["value"] <= c["threshold"])


@pytest.mark.parametrize("option", ["--dsr-min", "--pbo-max", "--spa-alpha"])
@pytest.mark.parametrize("value", ["-0.01", "1.5"])
def test_a_threshold_outside_the_unit_interval_is_refused(tmp_path: Path, option: str, value: str) -> None:
    args = build_parser().parse_args(args_for(tmp_path, option, value))
    name = option.removeprefix("--").replace("-", "_")
    with pytest.raises(ValueError, match=f"{name} must lie in \\[0, 1\\]"):
        optimize_job.prepare_job(args)

"""What the console reads from the optimizer's decision (services/console/view.py ``decision_summary``): the verdict
``GateDecision.summary()`` writes, the names of the failed tests taken from it, and a document in another form
flagged rather than shown as a verdict.  The page itself is tested in test_dashboard.py."""

from __future__ import annotations

from aura.optimize.gate import Check, GateDecision
from services.console.view import decision_summary


def gate(*checks: Check) -> GateDecision:
    return GateDecision(passed=all(c.passed for c in checks), checks=checks, windows=(), n_trials=51,
                        validation_score=0.0, incumbent_score=0.0, oos_sharpe=0.0, oos_excess_sharpe={}, dsr={},
                        pbo=0.5, spa_pvalues={}, spa_folds=())


def test_the_failed_tests_are_named_from_the_gates_own_verdict() -> None:
    decision = gate(
        Check("beats_SPY_every_window", False, -0.01, 0.0, -0.01, "behind on 1 of 2 windows: fold 6 -1.00%"),
        Check("beats_incumbent", True, 1.0, 0.5, 0.5),
        Check("deflated_sharpe", False, 0.6, 0.95, -0.35, "GOLD 0.629 (SR 0.08/bar vs SR0 0.06, N=51, T=360)"),
        Check("spa_GOLD", False, 0.75, 0.05, -0.7, "fold 6 0.7500 (17 models), fold 7 0.0733 (17 models)"))
    doc = {"promoted": False, "verdict": decision.summary(), "version": None, "incumbent_version": 3,
           "parameters_digest": "ab" * 32, "report_sha256": "cd" * 32}
    shown = decision_summary(doc)
    assert shown["failing"] == ["beats_SPY_every_window", "deflated_sharpe", "spa_GOLD"]
    assert shown | {"failing": []} == {"promoted": False, "version": None, "incumbent_version": 3,
                                       "verdict": decision.summary(), "failing": [], "problem": "",
                                       "parameters_digest": "ab" * 32, "report_sha256": "cd" * 32}


def test_a_yes_has_no_failed_tests_and_carries_its_version() -> None:
    decision = gate(Check("beats_incumbent", True, 1.0, 0.5, 0.5))
    shown = decision_summary({"promoted": True, "verdict": decision.summary(), "version": 4, "incumbent_version": 3})
    assert shown["promoted"] is True and shown["version"] == 4 and shown["failing"] == []
    assert shown["verdict"].startswith("PROMOTE: ") and shown["report_sha256"] == ""


def test_a_document_in_another_form_is_flagged() -> None:
    for doc in ({"unreadable": "{not json"}, {"value": "[1, 2]"}, {"promoted": "yes", "verdict": "PROMOTE"},
                {"promoted": True}):
        assert decision_summary(doc)["problem"], doc

"""The dashboard checker (tests/promql_labels.py) on its own: it passes the queries the shipped dashboard uses and
finds each kind of label mistake Prometheus would answer with an empty panel instead of an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.metrics import METRICS
from tests.promql_labels import Family, check_query, families_from

REPO = Path(__file__).resolve().parents[2]
EXPORTERS = {"ingest", "signal", "risk", "executor", "optimizer", "console"}


def declared_families() -> dict[str, Family]:
    """What a running system exports, as shared/metrics.py declares it (the e2e test uses the live exposition)."""
    families = {f"aura_{name}": Family(m.kind, frozenset({"service", *m.labels}), frozenset(m.owners))
                for name, m in METRICS.items()}
    for gauge in ("aura_up", "aura_uptime_seconds", "aura_bus_connected", "aura_ready"):  # shared/health.py
        families[gauge] = Family("gauge", frozenset({"service"}), frozenset(EXPORTERS))
    return families


FAMILIES = declared_families()


def test_the_shipped_dashboard_passes() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "aura.json").read_text())
    problems = [p for panel in dashboard["panels"] for target in panel["targets"]
                for p in check_query(target["expr"], FAMILIES, target.get("legendFormat", ""))]
    assert problems == []


@pytest.mark.parametrize("expr", [
    'aura_equity{service="executor"}',
    "sum by (gate) (increase(aura_plans_approved_total[1h]))",
    "sum(rate(aura_plans_approved_total[5m])) by (gate)",
    "sum without (service) (aura_plans_rejected_total)",
    'histogram_quantile(0.99, sum by (le, side) (rate(aura_order_seconds_bucket{side="buy"}[15m])))',
    "rate(aura_cycle_seconds_sum[5m]) / rate(aura_cycle_seconds_count[5m])",
    'aura_ready{service=~"risk|executor"} == 0',
    "topk(3, aura_dead_letters_total) offset 5m",
    "max_over_time(aura_drawdown[1d:5m]) * -100",
    'aura_cycle_seconds_bucket{le="+Inf"}',
])
def test_correct_queries_pass(expr: str) -> None:
    assert check_query(expr, FAMILIES) == []


@pytest.mark.parametrize(("expr", "legend", "says"), [
    ('aura_equity{service="risk"}', "", "exported by executor only"),
    ('aura_equity{side="buy"}', "", "has no label side"),
    ('aura_ready{service=~"ris"}', "", "matches none"),
    ("sum by (gate) (increase(aura_plans_rejected_total[1h]))", "", "gate is no label"),
    ("sum(rate(aura_plans_approved_total[5m])) by (reason)", "", "reason is no label"),
    ("sum by (gate) (sum(rate(aura_plans_approved_total[5m])))", "", "gate is no label"),
    ("histogram_quantile(0.99, sum by (side) (rate(aura_order_seconds_bucket[15m])))", "", "without an le"),
    ("sum by (le) (aura_cycle_seconds_count)", "", "le is no label"),
    ("aura_plans_approved", "", "no service exports"),
    ("aura_equity_total", "", "no service exports"),
    ("sum(aura_ready)", "{{service}}", "legend {{service}}"),
    ("sum by (gate) (aura_plans_approved_total)", "{{gate}} {{service}}", "legend {{service}}"),
])
def test_label_mistakes_are_found(expr: str, legend: str, says: str) -> None:
    problems = check_query(expr, FAMILIES, legend)
    assert problems and all(p.startswith(expr) for p in problems), problems
    assert any(says in p for p in problems), problems


@pytest.mark.parametrize("expr", ["a + on (x) b", 'label_replace(aura_ready, "a", "$1", "service", "(.*)")',
                                  '{__name__="aura_ready"}', "aura_ready offset 1h30m"])
def test_what_it_cannot_read_is_reported_not_passed(expr: str) -> None:
    problems = check_query(expr, FAMILIES)
    assert len(problems) == 1 and "not understood" in problems[0], problems


def test_live_samples_give_the_labels_and_declarations_stand_in_for_silent_families() -> None:
    exposed = {
        "risk": [("aura_plans_approved", "counter", [{"service": "risk", "gate": "ok"}]),
                 ("aura_dead_letters", "counter", []),
                 ("aura_ready", "gauge", [{"service": "risk"}])],
        "executor": [("aura_order_seconds", "histogram", [{"service": "executor", "side": "buy", "le": "0.1"}]),
                     ("aura_dead_letters", "counter", []),
                     ("aura_ready", "gauge", [{"service": "executor"}])],
    }
    declared = {f"aura_{n}": (m.kind, m.labels) for n, m in METRICS.items()}
    families = families_from(exposed, declared)
    assert families["aura_plans_approved"] == Family("counter", frozenset({"service", "gate"}), frozenset({"risk"}))
    assert families["aura_dead_letters"].labels == {"service", "reason"}, "no sample yet: the declaration's labels"
    assert families["aura_order_seconds"].labels == {"service", "side"}, "le belongs to the _bucket series alone"
    assert families["aura_ready"].services == {"risk", "executor"}

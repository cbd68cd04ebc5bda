"""Every labelled counter the Grafana dashboard queries has series from the service's start, at zero.

A labelled counter has no sample until its first ``.labels(...)``: on a fresh system the panels "Plans refused by
reason" and "Dead letters and forgeries" showed "No data" (as does a panel whose service is not scraped at all)
instead of 0.  The exporters now create the label values they know (``Metric.initial`` in shared/metrics.py) at
start, so "No data" keeps meaning "not scraped", and a query needs no ``or vector(0)`` that would draw a 0 line for
a service that is down.  The known values are checked against the code that counts them.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from shared.health import HealthState
from shared.metrics import METRICS

REPO = Path(__file__).resolve().parents[2]


def counter_samples(state: HealthState) -> dict[str, list[tuple[dict[str, str], float]]]:
    """counter family -> (labels, value) of each sample ``state``'s /metrics shows."""
    body, _ = state.exposition()
    return {f.name: [(s.labels, s.value) for s in f.samples if s.name.endswith("_total")]
            for f in text_string_to_metric_families(body.decode()) if f.type == "counter"}


def test_every_labelled_counter_the_dashboard_queries_has_zero_series_from_the_start() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "aura.json").read_text())
    queried = {m.removesuffix("_total") for panel in dashboard["panels"] for target in panel["targets"]
               for m in re.findall(r"\baura_[a-z_]+_total\b", target["expr"])}
    labelled = sorted(name for name in queried if (m := METRICS.get(name.removeprefix("aura_"))) is not None
                      and m.kind == "counter" and m.labels)
    assert {"aura_plans_rejected", "aura_dead_letters"} <= set(labelled), labelled
    empty = []
    for name in labelled:
        for service in METRICS[name.removeprefix("aura_")].owners:
            samples = counter_samples(HealthState(service=service)).get(name, [])
            if not samples or any(value != 0 for _, value in samples):
                empty.append(f"{name} on {service}: {samples}")
    assert empty == [], "panels that would say 'No data' on a fresh system:\n" + "\n".join(empty)


def test_a_reason_not_declared_is_still_counted() -> None:
    state = HealthState(service="executor")
    state.inc("plans_rejected", reason="something_new")
    rejected = {labels["reason"]: value for labels, value in counter_samples(state)["aura_plans_rejected"]}
    assert rejected["something_new"] == 1 and rejected["stale_basis"] == 0


def literal_args(path: Path, function: str, position: int) -> set[str]:
    """The string literals passed at ``position`` to calls of ``function`` (a name or a method) in ``path``, both
    branches of a conditional expression included (``"a" if x else "b"``)."""

    def strings(arg: ast.expr) -> set[str]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return {arg.value}
        if isinstance(arg, ast.IfExp):
            return strings(arg.body) | strings(arg.orelse)
        return set()

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and len(node.args) > position:
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called == function:
                found |= strings(node.args[position])
    return found


def test_the_declared_label_values_are_the_ones_the_code_counts() -> None:
    from aura.strategy.pipeline import GATES
    from aura.strategy.rebalance import REASONS

    assert METRICS["plans_approved"].initial == GATES
    assert METRICS["legs_approved"].initial == REASONS
    executor = REPO / "services" / "executor"
    refusals = literal_args(executor / "service.py", "_reject", 1) | literal_args(executor / "runner.py",
                                                                                "refuse_plan", 3)
    assert refusals and set(METRICS["plans_rejected"].initial) == refusals
    consumer = (REPO / "shared" / "consumer.py").read_text()
    assert all(f'reason="{r}"' in consumer for r in METRICS["dead_letters"].initial)

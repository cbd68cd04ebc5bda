"""``/metrics`` answers OpenMetrics unless the scraper asks for the Prometheus text format: a client that names no
format (curl, a browser, a quick script) got text 0.0.4 before, which the OpenMetrics parser rejects ("Clashing
name"), so what the README calls OpenMetrics was only that with the right Accept header."""

from __future__ import annotations

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from shared.health import HealthState


@pytest.mark.parametrize("accept", ["", "*/*", "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"])
def test_metrics_are_openmetrics_unless_text_is_asked_for(accept: str) -> None:
    state = HealthState(service="executor")
    state.inc("plans_executed")
    body, content_type = state.exposition(accept)
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}  # raises on anything invalid
    assert families["aura_plans_executed"].type == "counter"
    assert [s.value for s in families["aura_plans_executed"].samples if s.name.endswith("_total")] == [1.0]


def test_a_scraper_asking_for_text_gets_the_prometheus_text_format() -> None:
    body, content_type = HealthState(service="executor").exposition("text/plain; version=0.0.4")
    assert content_type.startswith("text/plain") and b"# EOF" not in body

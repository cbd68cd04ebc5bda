from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.brokers.client_order_id import CLIENT_ORDER_ID_RE, client_order_id

plan_ids = st.text(min_size=1, max_size=80)
legs = st.integers(min_value=0, max_value=10_000)


@given(plan_ids, legs, st.text(max_size=40))
def test_always_valid_for_binance_and_deterministic(plan_id: str, leg: int, prefix: str) -> None:
    cid = client_order_id(plan_id, leg, prefix=prefix)
    assert CLIENT_ORDER_ID_RE.fullmatch(cid)
    assert cid == client_order_id(plan_id, leg, prefix=prefix)


@given(st.lists(st.tuples(plan_ids, legs), min_size=2, max_size=60, unique=True))
def test_unique_across_plans_and_legs(pairs: list[tuple[str, int]]) -> None:
    ids = [client_order_id(p, leg) for p, leg in pairs]
    assert len(set(ids)) == len(ids)


def test_shape_and_separator_ambiguity() -> None:
    cid = client_order_id("plan-2024-01-01", 3)
    assert cid.startswith("aura-") and len(cid) == 36
    assert client_order_id("a|1", 2) != client_order_id("a", 12) != client_order_id("a|12", 0)
    assert client_order_id("p", 0) != client_order_id("p", 0, prefix="other")


@pytest.mark.parametrize(("plan_id", "leg"), [("", 0), ("p", -1), ("p", True), (None, 0)])
def test_rejects_bad_input(plan_id: object, leg: object) -> None:
    with pytest.raises(ValueError):
        client_order_id(plan_id, leg)  # type: ignore[arg-type]

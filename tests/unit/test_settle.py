"""services.executor.settle.apply_settle: only a verified, new request naming the order a plan waits on closes it."""

from __future__ import annotations

import asyncio
import logging
import types
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.executor.journal import Journal
from services.executor.runner import ensure_genesis
from services.executor.settle import SETTLED, apply_settle
from shared.operator_requests import SETTLE_KEY, SettleRequest
from shared.signing import sign_struct

OPERATOR = Ed25519PrivateKey.generate()
LOG = logging.getLogger("t.settle")


class KV:
    """What the executor reads of ``aura_state``: the newest value of one key."""

    def __init__(self) -> None:
        self.value: bytes | None = None

    async def get(self, key: str) -> object:
        assert key == SETTLE_KEY
        return types.SimpleNamespace(value=self.value, revision=1)

    def put(self, request: SettleRequest) -> None:
        self.value = msgspec.json.encode(request)


def request(cid: str, at: int, key: Ed25519PrivateKey = OPERATOR) -> SettleRequest:
    return sign_struct(SettleRequest(requested_at_ms=at, requested_by="operator:test", reason="checked",
                                     action=SETTLE_KEY, client_order_id=cid), key)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal.sqlite")
    ensure_genesis(j, 1000.0)
    j.begin()
    for leg, cid in enumerate(("cid-a", "cid-b")):
        j.record_intent(cid, "c1", "p1", leg, "ETH/USDT", "buy", 0.1, 2000.0, status="acked")
    j.commit()
    return j


def settle(journal: Journal, kv: KV, waiting: str) -> str | None:
    return asyncio.run(apply_settle(journal, kv, OPERATOR.public_key(), LOG, waiting))  # type: ignore[arg-type]


def test_only_a_verified_new_request_for_the_waiting_order_closes_it(journal: Journal) -> None:
    kv = KV()
    assert settle(journal, kv, "cid-a") is None  # nothing asked
    kv.put(request("cid-a", 1_000, key=Ed25519PrivateKey.generate()))  # not the operator's key
    assert settle(journal, kv, "cid-a") is None
    kv.put(request("cid-b", 2_000))  # the operator's, for the sibling leg: not the order waiting
    assert settle(journal, kv, "cid-a") is None
    assert [journal.intent_state(c)[0] for c in ("cid-a", "cid-b")] == ["acked", "acked"]
    assert settle(journal, kv, "cid-b") == "cid-b"  # applied once that order is the one waiting
    assert journal.intent_state("cid-b")[0] == "canceled" and journal.intent_state("cid-a")[0] == "acked"
    assert settle(journal, kv, "cid-b") is None  # the same request again: applied already
    kv.put(request("cid-a", 1_500))  # older than the last one applied (a replay, or a clock behind)
    assert settle(journal, kv, "cid-a") is None and journal.intent_state("cid-a")[0] == "acked"
    kv.put(request("cid-a", 3_000))
    assert settle(journal, kv, "cid-a") == "cid-a"
    assert journal.db.execute("SELECT count(*) FROM events WHERE kind=?", (SETTLED,)).fetchone()[0] == 2

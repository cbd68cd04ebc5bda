"""The kill-switch latch on a real secured nats-server, as shared/kv_chain.py keeps it: each latch names the
revision it replaces, so a holder of risk's bus credential without its signing key can neither delete it nor put
an earlier one back unseen; a latch of the older layouts (signed before it named its predecessor) is believed
only where the server stored it when risk signed it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.risk.cli import _status, render_status
from services.risk.inputs import RiskInputs
from services.risk.latch import LatchDoc, _LatchDocV2, read_latch, verified_latch, write_latch
from shared.bus import state_kv
from shared.contracts import STATE_BUCKET
from shared.credentials import signing_key
from shared.health import HealthState
from shared.kv_chain import LEGACY_SKEW_MS
from shared.operator_requests import ADOPT_KEY, RESET_KEY, operator_request, write_request
from shared.signing import SignatureError, sign_struct
from shared.state_keys import HALT_KEY
from tests.bus_helpers import role_connections
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
MANAGER = "admin"  # the principal that manages JetStream (streams and their limits)


def test_a_deleted_replayed_or_overwritten_latch_is_seen(nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js:
            kv, out = await state_kv(js["risk"]), {}
            out["never written"] = await read_latch(js["operator"], key.public_key())
            unlatched, _ = await write_latch(js["risk"], LatchDoc(halted=False), key, 0)
            earlier = (await kv.get(HALT_KEY)).value
            latched, _ = await write_latch(js["risk"], LatchDoc(halted=True, cycle_id="c1"), key, unlatched)
            out["chained"] = await read_latch(js["operator"], key.public_key())
            await kv.put(HALT_KEY, earlier)  # risk's own signature, the wrong place in the chain
            out["replayed"] = await read_latch(js["operator"], key.public_key())
            revision, overwritten = await write_latch(js["risk"], LatchDoc(halted=True, cycle_id="c1"), key,
                                                      latched)  # risk still holds the revision it wrote last
            out["overwritten"] = overwritten
            out["repaired"] = await read_latch(js["operator"], key.public_key())
            await kv.delete(HALT_KEY)
            out["deleted"] = await read_latch(js["operator"], key.public_key())
            deleted_at = out["deleted"][1]
            out["after the delete"] = await write_latch(js["risk"], LatchDoc(halted=True), key, deleted_at)
            out["rewritten"] = await read_latch(js["operator"], key.public_key())
            out["revisions"] = (unlatched, latched, revision, deleted_at)
            return out

    out = asyncio.run(scenario())
    assert out["never written"] == (LatchDoc(halted=False), 0, "")
    doc, _, problem = out["chained"]
    assert problem == "" and doc.halted and doc.cycle_id == "c1" and doc.prev_revision == out["revisions"][0]
    doc, _, problem = out["replayed"]
    assert doc.halted and "came between" in problem, "an earlier, unlatched latch put back reads as latched"
    assert out["overwritten"] > out["revisions"][1], "risk's write went on top of the one put back"
    assert out["repaired"][2] == "" and out["repaired"][0].halted
    doc, revision, problem = out["deleted"]
    assert doc.halted and "deleted" in problem and revision > out["revisions"][2]
    assert out["after the delete"][1] == 0 and out["rewritten"][2] == ""


def test_a_latch_of_the_older_layout_is_believed_only_where_risk_stored_it(nats_server: NatsEndpoint) -> None:
    """Before latches named their predecessor: one stored when risk signed it verifies (an upgrade keeps its latch);
    the same kind of latch stored later, as a replay would be, does not."""
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")

    def older(halted: bool, signed_at_ms: int) -> bytes:
        return msgspec.json.encode(sign_struct(_LatchDocV2(halted=halted, updated_at_ms=signed_at_ms), key))

    async def scenario() -> tuple[Any, Any]:
        async with role_connections(settings, "risk", "operator") as js:
            kv = await state_kv(js["risk"])
            await kv.put(HALT_KEY, older(True, int(time.time() * 1000)))
            fresh = await read_latch(js["operator"], key.public_key())
            await kv.put(HALT_KEY, older(False, int(time.time() * 1000) - 2 * LEGACY_SKEW_MS))
            return fresh, await read_latch(js["operator"], key.public_key())

    fresh, replayed = asyncio.run(scenario())
    assert fresh[2] == "" and fresh[0].halted and fresh[0].prev_revision == -1
    assert replayed[0].halted and "replayed" in replayed[2]


def test_the_revision_a_latch_replaces_is_covered_by_its_signature() -> None:
    key = Ed25519PrivateKey.generate()
    older = sign_struct(_LatchDocV2(halted=False, latched_at_ms=5), key)
    assert verified_latch(msgspec.json.encode(older), key.public_key()).prev_revision == -1
    moved = msgspec.json.encode({**msgspec.to_builtins(older), "prev_revision": 41})  # not covered by it
    with pytest.raises(SignatureError):
        verified_latch(moved, key.public_key())
    new = sign_struct(LatchDoc(halted=False, prev_revision=7), key)
    with pytest.raises(SignatureError):
        verified_latch(msgspec.json.encode(msgspec.structs.replace(new, prev_revision=8)), key.public_key())


def test_a_risk_starting_on_a_tampered_latch_stays_latched_until_a_newer_reset(nats_server: NatsEndpoint) -> None:
    """The last operator reset stays in the bucket for ever: a risk that starts on a deleted (or forged, or
    replayed) latch must not apply it again and unlatch.  Only a reset requested after the bad entry clears it."""
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")
    operator = signing_key(settings.keys, "operator")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js:
            risk_kv, operator_kv = await state_kv(js["risk"]), await state_kv(js["operator"])
            earlier = operator_request(RESET_KEY, "operator:ann", "earlier", operator)
            await write_request(operator_kv, RESET_KEY, earlier)
            revision, _ = await write_latch(js["risk"], LatchDoc(halted=False), key, 0)
            await write_latch(js["risk"], LatchDoc(halted=True, capped=True, cycle_id="c9"), key, revision)
            await asyncio.sleep(0.05)
            await risk_kv.delete(HALT_KEY)  # with risk's bus credential, while risk is down
            out = {}

            def new_risk() -> RiskInputs:
                return RiskInputs(js["risk"], risk_kv, settings, HealthState(service="risk"),
                                  logging.getLogger("aura.test.latch"))

            restarted = new_risk()
            out["restarted"] = await restarted.latch()
            assert restarted.last_latch is not None
            await restarted.store_latch(restarted.last_latch)  # its next decision stores the latch in force
            out["status"] = render_status(await _status(settings))
            await asyncio.sleep(0.05)
            checked = operator_request(RESET_KEY, "operator:ann", "checked", operator)
            await write_request(operator_kv, RESET_KEY, checked)
            out["after a newer reset"] = await new_risk().latch()
            out["stored"] = await read_latch(js["operator"], key.public_key())
            return out

    out = asyncio.run(scenario())
    assert out["restarted"].halted and out["restarted"].capped, "the old reset must not unlatch a tampered latch"
    # Stored and signed, it verifies, and `aura risk status` does not call the time it was found a reset.
    lines = [line.strip() for line in out["status"].splitlines()]
    assert any(x.startswith("latched since") for x in lines), lines
    assert not any(x.startswith("last reset") for x in lines), lines
    assert not out["after a newer reset"].halted
    doc, _, problem = out["stored"]
    assert problem == "" and not doc.halted and doc.reset_by == "operator:ann" and doc.reason == "checked"


def test_an_adoption_copied_to_the_reset_key_does_not_unlatch(nats_server: NatsEndpoint) -> None:
    """The operator's bus credential may write every operator.* key, and a request is signed by the operator's
    key: without the key it is signed for inside the signature, a signed `aura journal adopt` (read back from
    aura_state) written to operator.reset cleared a latched kill-switch.  Refused and counted; a reset asked for
    as such still clears it."""
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")
    operator = signing_key(settings.keys, "operator")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", "operator") as js:
            risk_kv, operator_kv = await state_kv(js["risk"]), await state_kv(js["operator"])
            await write_latch(js["risk"], LatchDoc(halted=True, capped=True, cycle_id="c9"), key, 0)
            await asyncio.sleep(0.05)
            adoption = operator_request(ADOPT_KEY, "operator:ann", "the deposit", operator)
            await write_request(operator_kv, ADOPT_KEY, adoption)
            await write_request(operator_kv, RESET_KEY, adoption)  # the copy
            health = HealthState(service="risk")
            risk = RiskInputs(js["risk"], risk_kv, settings, health, logging.getLogger("aura.test.latch"))
            out: dict[str, Any] = {"copied": await risk.latch(), "forged": health.counters.get("forged_state", 0)}
            await write_request(operator_kv, RESET_KEY, operator_request(RESET_KEY, "operator:ann", "ok", operator))
            out["reset"] = await risk.latch()
            return out

    out = asyncio.run(scenario())
    assert out["copied"].halted, "an adoption request copied to operator.reset cleared the kill-switch"
    assert out["forged"] >= 1
    assert not out["reset"].halted


def test_a_latch_erased_under_a_running_risk_stays_latched(nats_server: NatsEndpoint) -> None:
    """Whoever manages JetStream can empty the state bucket without a delete (a stream update to a one-second
    max_age, then back): the latch then read as never written, which is not halted.  A risk that had seen it
    stored keeps the one in force, counts it and stores it again."""
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")

    async def scenario() -> dict[str, Any]:
        async with role_connections(settings, "risk", MANAGER) as js:
            risk_kv = await state_kv(js["risk"])
            await write_latch(js["risk"], LatchDoc(halted=True, capped=True, cycle_id="c9"), key, 0)
            health = HealthState(service="risk")
            risk = RiskInputs(js["risk"], risk_kv, settings, health, logging.getLogger("aura.test.latch"))
            out: dict[str, Any] = {"before": await risk.latch()}
            info = await js[MANAGER].stream_info(f"KV_{STATE_BUCKET}")
            await js[MANAGER].update_stream(dataclasses.replace(info.config, max_age=1.0, duplicate_window=0.5))
            # Until the server's expiry has run (polled: a fixed wait raced its timer on a loaded machine).
            deadline = time.monotonic() + 30
            while (await read_latch(js[MANAGER], key.public_key()))[1] != 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await js[MANAGER].update_stream(info.config)
            out["erased"] = (await read_latch(js[MANAGER], key.public_key()))[1]
            out["after"] = await risk.latch()
            out["forged"] = health.counters.get("forged_state", 0)
            out["stored"] = await read_latch(js[MANAGER], key.public_key())
            return out

    out = asyncio.run(scenario())
    assert out["before"].halted and out["erased"] == 0, "the bucket was not emptied"
    assert out["after"].halted, "an erased latch read as not halted"
    assert out["forged"] >= 1
    doc, _, problem = out["stored"]
    assert problem == "" and doc.halted, "risk did not store the latch in force again"


def test_a_forger_racing_risks_writes_cannot_stop_them(nats_server: NatsEndpoint) -> None:
    """Writes with risk's bus credential in a tight loop: every latch risk writes still lands (unconditionally
    after a few refused conditional writes), so no plan is held back behind its state write."""
    settings = nats_server.settings()
    key = signing_key(settings.keys, "risk")

    async def scenario() -> tuple[int, int, int]:
        async with role_connections(settings, "risk") as js:
            kv = await state_kv(js["risk"])
            stop = asyncio.Event()

            async def flood() -> int:
                n = 0
                while not stop.is_set():
                    await kv.put(HALT_KEY, b"junk")
                    n += 1
                return n

            tasks = [asyncio.create_task(flood()) for _ in range(3)]
            revision, landed, raced, flooded = 0, 0, 0, 0
            try:
                for i in range(20):
                    revision, overwritten = await write_latch(js["risk"], LatchDoc(halted=True, cycle_id=f"c{i}"),
                                                              key, revision)
                    landed += 1
                    raced += overwritten > 0
            finally:
                stop.set()
                for task in tasks:
                    with contextlib.suppress(Exception):
                        flooded += await task
            return landed, raced, flooded

    landed, raced, flooded = asyncio.run(scenario())
    assert landed == 20 and raced >= 10 and flooded > 20, (landed, raced, flooded)

"""Nobody can claim another publisher's message id.  JetStream drops a message whose ``Nats-Msg-Id`` it has seen
in the stream's duplicate window, per stream and not per subject, and several principals publish into the same
streams (ingest, signal and risk into AURA_PLANS; every service into AURA_EVENTS).

Before: ids were deterministic and sent in the clear, so a compromised signal published junk on its own abort
subject under risk's ``abort-risk-<cycle>`` (and under risk's event ids): the server then dropped risk's real
abort and its FORGED_TARGET alert as duplicates while risk's publish looked fine.  Now the header is a keyed hash
only the publisher can compute; its own retries still deduplicate."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus import MSG_ID_HEADER, last_message, publish
from shared.contracts import CycleAborted, ServiceEvent, decode, subject_of
from tests.bus_helpers import role_connections
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ABORT = CycleAborted(cycle_id="1d-20240101T0000", stage="risk", reason="forged_target: prices differ")
EVENT = ServiceEvent(event_id="ev-forged-1", service="risk", kind="FORGED_TARGET", severity="error",
                     text="target refused", at_ms=1_704_067_200_000)


@pytest.mark.parametrize(("message", "msg_id", "claimer", "claim_subject"), [
    (ABORT, f"abort-risk-{ABORT.cycle_id}", "signal", "aura.plans.aborted.signal"),
    (EVENT, EVENT.event_id, "signal", "aura.events.signal"),
    (ABORT, f"abort-risk-{ABORT.cycle_id}", "ingest", "aura.plans.aborted.ingest"),
], ids=["abort-by-signal", "event-by-signal", "abort-by-ingest"])
def test_a_message_id_claimed_first_by_another_principal_does_not_drop_the_real_message(
        nats_server: NatsEndpoint, message: CycleAborted | ServiceEvent, msg_id: str, claimer: str,
        claim_subject: str) -> None:
    settings = nats_server.settings()

    async def scenario() -> tuple[bool, bool, bytes | None]:
        async with role_connections(settings, claimer, "risk", "operator") as js:
            # The claimer may publish on its own subject of the same stream, with the id risk will use.
            await js[claimer].publish(claim_subject, b'{"v":1,"junk":true}', headers={MSG_ID_HEADER: msg_id},
                                      timeout=5)
            first = await publish(js["risk"], message, msg_id=msg_id)
            again = await publish(js["risk"], message, msg_id=msg_id)  # risk's own retry
            return first.duplicate is True, again.duplicate is True, await last_message(js["operator"],
                                                                                          subject_of(message))

    first_dropped, retry_deduplicated, stored = asyncio.run(scenario())
    assert not first_dropped, "the server dropped risk's message as a duplicate of the claimer's"
    assert stored is not None and decode(stored, type(message)) == message, stored
    assert retry_deduplicated, "risk's own retry must still be stored once"

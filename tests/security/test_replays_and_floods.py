"""What a holder of one service's bus credential could still do to a running system (an audit found both), each
refused now with nothing executed:

* signal (or ingest) floods its own abort subject with notices the executor refuses (another stage's, or
  malformed): each was a synced journal row and a dead letter, so a flood grew the journal without bound and pushed
  the executor's genuine dead letters out of AURA_DLQ (2,000 kept per subject).  Now counted, and recorded only
  while the subject's allowance lasts (services/executor/aborts.py ``refused_aborts``);
* the executor's bus credential without its signing key republishes a genuine older snapshot under a new message
  id: risk took it as its basis, so its kill-switch and stops ran on a book from before every loss since.  Now a
  snapshot older than the basis in force is refused ([FORGED_SNAPSHOT]).
"""

from __future__ import annotations

import time

import pytest

from shared.contracts import CycleAborted, PortfolioSnapshot, decode, encode
from tests.bus_helpers import stream_messages
from tests.security.conftest import System, assert_untouched, js_publish, run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
FLOOD = 60  # of each kind: three times the allowance of 20 together


def test_a_flood_of_refused_aborts_is_counted_not_recorded_without_bound(system: System) -> None:
    before = system.book()
    events_from = system.last_event_seq()
    letters_before = len(system.dead_letters("executor"))
    refused_before = system.counter("executor", "aborts_refused")
    junk = [encode(CycleAborted(cycle_id=f"junk-{i}", stage="ingest", reason="x" * 400)) for i in range(FLOOD)]
    junk += [b'{"v":1,"junk":%d}' % i for i in range(FLOOD)]
    for i, payload in enumerate(junk):
        assert run(js_publish(system, "signal", "aura.plans.aborted.signal", payload, msg_id=f"flood-{i}")) == "stored"
    wait_until(lambda: system.counter("executor", "aborts_refused") >= refused_before + 2 * FLOOD,
               "the executor to count every refused abort", timeout=120)
    rows = [e for e in system.events_since(events_from) if e[0] == "plan_rejected"]
    letters = system.dead_letters("executor")[letters_before:]
    assert 20 <= len(rows) <= 22, f"{len(rows)} journal rows for {2 * FLOOD} refused aborts"
    assert 20 <= len(letters) <= 22, f"{len(letters)} dead letters for {2 * FLOOD} refused aborts"
    assert_untouched(system, before, "a flood of refused aborts")


def test_an_older_signed_snapshot_published_again_is_not_risks_basis(system: System) -> None:
    async def stored() -> list[bytes]:
        nc = await system.connect("operator")
        try:
            return await stream_messages(nc.jetstream(), PortfolioSnapshot.SUBJECT)
        finally:
            await nc.close()

    raws = run(stored())
    snaps = [decode(r, PortfolioSnapshot) for r in raws]
    old = next(r for r, s in zip(raws, snaps, strict=True) if s.snapshot_id != snaps[-1].snapshot_id
               and s.committed_at_ms < snaps[-1].committed_at_ms)
    newest = snaps[-1].snapshot_id
    before = system.book()
    forged_before = system.counter("risk", "forged_snapshots")
    assert run(js_publish(system, "executor", PortfolioSnapshot.SUBJECT, old,
                          msg_id=f"replayed-{time.time_ns()}")) == "stored"
    wait_until(lambda: system.counter("risk", "forged_snapshots") > forged_before, "risk to refuse the replay")
    def ticks() -> list[str]:  # the basis of each tick that ran on one
        return [line["basis"] for line in system.log_lines("risk", "RISK_TICK") if "basis" in line]

    ticks_from = len(ticks())
    wait_until(lambda: len(ticks()) > ticks_from + 2, "risk ticks after the replay")
    assert set(ticks()[ticks_from:]) == {newest}, f"risk ticked on {set(ticks()[ticks_from:])}, not {newest}"
    assert_untouched(system, before, "an older snapshot published again")

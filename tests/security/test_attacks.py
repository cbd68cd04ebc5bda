"""Every attack issue 8 lists, replayed against a running system (tests/security/conftest.py): as an anonymous
client, and as a client holding one service's credential.  For each: refused, nothing executed, the journal
and the book unchanged, every service still ready.  Tests run in file order; the last one proves the system
still trades a genuine new cycle after all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aura.strategy.params import StrategyParams, params_digest
from aura.strategy.types import Panel
from services.risk.latch import HALT_KEY, read_latch, write_latch
from shared.bus import last_message, publish
from shared.bus_access import local_subject
from shared.candles import decode_panel, digest, encode_panel
from shared.contracts import (
    ApprovedPlan,
    CycleAborted,
    DataReady,
    DataStale,
    PortfolioSnapshot,
    TargetPortfolio,
    decode,
    encode,
)
from shared.credentials import signing_key, trusted_key
from shared.cycles import cycle_id_for
from shared.live_params import ParamsDocument, sign_document
from shared.objects import candle_writer
from shared.provision import BUCKETS
from shared.signing import sign_struct
from shared.state_keys import DECISION_KEY, SIGNAL_STATE_KEY, ingest_cursor_key, state_bytes_bound
from tests.bus_helpers import reforged_target
from tests.security.conftest import System, assert_untouched, js_publish, newest, run, state_entries, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]
SERVICES = ("ingest", "signal", "risk", "executor", "optimizer")
DAY = 86_400_000


# --- 1. forged targets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("principal", [None, "ingest", "risk", "executor", "optimizer"])
def test_only_signal_may_publish_a_target(system: System, principal: str | None) -> None:
    before = system.book()
    genuine = run(newest(system, TargetPortfolio))
    outcome = run(js_publish(system, principal, TargetPortfolio.SUBJECT, encode(reforged_target(genuine))))
    assert outcome.startswith("refused"), f"{principal}: {outcome}"
    assert_untouched(system, before, f"a target from {principal or 'an anonymous client'}")


def _forgeries(genuine: TargetPortfolio, held: str) -> dict[str, TargetPortfolio]:
    btc = "BTC/USDT"
    return {
        # The attack: a copied target for a new cycle, 95% BTC, a forecast that clears the cost gate.
        "new cycle, 95% BTC, forecast 0.5": reforged_target(genuine, cycle_id="1d-20991231T0000",
                                                          weights={btc: 0.95}, expected_returns={btc: 0.5}),
        "this cycle, 95% BTC, forecast 0.5": reforged_target(genuine, weights={btc: 0.95},
                                                           expected_returns={**genuine.expected_returns, btc: 0.5}),
        "BTC priced at 1/90": reforged_target(genuine, weights={btc: 0.95},
                                            prices={**genuine.prices, btc: genuine.prices[btc] / 90}),
        "held coin priced at 0": reforged_target(genuine, prices={**genuine.prices, held: 0.0}),
        "weights above 1": reforged_target(genuine, weights={btc: 0.8, "ETH/USDT": 0.8}),
        "negative weight": reforged_target(genuine, weights={btc: 1.0, "ETH/USDT": -0.5}),
        "NaN weight": reforged_target(genuine, weights={btc: math.nan}),
        "1,500 unknown symbols": reforged_target(genuine, weights={f"\u0416{i:04d}/USDT": 0.0005
                                                                 for i in range(1500)}),
        # Right in every respect but the book: all of it on the universe's last coin (the parameters cap a name at
        # half the book), under a regime that claims the whole exposure.
        "the whole book on one coin": reforged_target(genuine, regime="bull",
                                                      weights={sorted(genuine.prices)[-1]: 1.0}),
    }


def test_a_compromised_signal_cannot_get_a_forged_target_signed(system: System) -> None:
    genuine = run(newest(system, TargetPortfolio))
    held = next(iter(system.book().holdings), "BTC/USDT")
    plans_before = run(newest(system, ApprovedPlan))
    letters_before = len(system.dead_letters("risk"))
    forged_before = system.counter("risk", "forged_targets")
    for what, target in _forgeries(genuine, held).items():
        before = system.book()
        outcome = run(js_publish(system, "signal", TargetPortfolio.SUBJECT, encode(target), msg_id=target.target_id))
        assert outcome == "stored", f"{what}: the signal credential may publish targets: {outcome}"
        assert_untouched(system, before, what)
    letters = system.dead_letters("risk")[letters_before:]
    # A new cycle id is not the cycle ingest announced (superseded); NaN cannot even be sent as JSON (it
    # arrives as null: malformed); every other forgery is caught against the data (forged_target).
    assert sorted(letter.reason for letter in letters) == sorted(
        ["superseded", "malformed", *["forged_target"] * 7]), [(x.reason, x.error[:80]) for x in letters]
    assert system.counter("risk", "forged_targets") == forged_before + 7
    assert len(system.log_lines("risk", "FORGED_TARGET")) >= 7
    assert any("above max_weight" in str(x) for x in
               system.log_lines("risk", "FORGED_TARGET"))
    newest_plan = run(newest(system, ApprovedPlan))
    assert newest_plan == plans_before, "risk signed a plan for a forged target"


def test_a_target_too_large_for_the_stream_is_refused_by_the_server(system: System) -> None:
    genuine = run(newest(system, TargetPortfolio))
    huge = reforged_target(genuine, weights={f"\u0416{i:05d}/USDT": 0.0001 for i in range(10_000)})
    before = system.book()
    outcome = run(js_publish(system, "signal", TargetPortfolio.SUBJECT, encode(huge)))
    assert outcome.startswith("refused") and "maximum" in outcome.lower(), outcome
    assert_untouched(system, before, "10,000 symbols")


# --- 2. parameters ---------------------------------------------------------------------------------------------


def _reckless() -> StrategyParams:
    # No rolling switch, no stop, a cap at 99%: reckless, yet a set the signing path accepts (no cap at all is
    # refused before any signature, params.validate_tradable), so only the signature can stop it.
    return StrategyParams(kill_switch_drawdown=1.0, kill_switch_cap=0.99, stop_loss=0.0)


@pytest.mark.parametrize("principal", [None, "ingest", "signal", "risk", "executor"])
def test_only_the_optimizer_and_the_operator_may_write_parameters(system: System, principal: str | None) -> None:
    outcome = run(js_publish(system, principal, "$KV.aura_params.strategy", msgspec.json.encode(_reckless())))
    assert outcome.startswith("refused"), f"{principal}: {outcome}"


async def next_revision(system: System) -> int:
    nc = await system.connect("operator")
    try:
        return int((await nc.jetstream().stream_info("KV_aura_params")).state.last_seq or 0) + 1
    finally:
        await nc.close()


async def stored_version(system: System, version: int) -> bytes:
    nc = await system.connect("operator")
    try:
        return bytes((await nc.jetstream().get_msg("KV_aura_params", seq=version, direct=True)).data or b"")
    finally:
        await nc.close()


@pytest.mark.parametrize("document", ["unsigned reckless", "garbage", "signed by an unknown key",
                                      "a version in force written again", "nested too deeply",
                                      "signed for bars no timeframe has", "signed, outside the loss envelope"])
def test_a_compromised_optimizer_cannot_promote_an_unsigned_or_invalid_document(system: System,
                                                                              document: str) -> None:
    """Without the optimizer's signing key: an unsigned or invalid document, or a signed one written again as a
    newer version (a rollback nobody signed: each document is signed with the version it becomes; here the version
    in force itself, tests/integration/test_params_replay_bus.py writes an older one back and deletes the key).
    With it, as a compromised optimizer holds it: a timeframe no bar has, or parameters beyond the operator's loss
    envelope."""
    version_before = system.counter("risk", "params_version")
    docs = {
        "unsigned reckless": msgspec.json.encode({"params": msgspec.to_builtins(_reckless()), "promoted_by": "x",
                                                  "reason": "x", "promoted_at_ms": 1}),
        "garbage": json.dumps({"top_k": "lots"}).encode(),
        "signed by an unknown key": msgspec.json.encode(sign_document(_reckless(), Ed25519PrivateKey.generate(),
                                                                      "optimizer", "attack")),
        "a version in force written again": run(stored_version(system, int(version_before))),
        # 3 KB of brackets: msgspec raised RecursionError, which no reader caught; every risk tick failed.
        "nested too deeply": b'{"params":{},"promoted_by":"x","reason":"x","promoted_at_ms":1,"record":{"x":'
                             + b"[" * 1500 + b"]" * 1500 + b"}}",
        # Signed with the optimizer's own key (a compromised optimizer holds it): "1000...0w" parsed as a bar
        # length whose factor is 0.0, and validating the lookbacks divided by it (ZeroDivisionError escaped).
        "signed for bars no timeframe has": msgspec.json.encode(sign_struct(ParamsDocument(
            params=StrategyParams(), promoted_by="optimizer", reason="attack", promoted_at_ms=int(time.time() * 1000),
            record={"timeframe": "1" + "0" * 400 + "w"}, version=int(version_before) + 1),
            signing_key(system.settings.keys, "optimizer"))),
        # Signed with the optimizer's own key as the next version: valid parameters (the switch at 1.0 with a 99%
        # cap since the last reset), but beyond the operator's loss envelope (AURA_MAX_LOSS_BOUND, 50%).
        "signed, outside the loss envelope": msgspec.json.encode(sign_struct(msgspec.structs.replace(
            sign_document(_reckless(), signing_key(system.settings.keys, "optimizer"), "optimizer", "attack"),
            version=run(next_revision(system))), signing_key(system.settings.keys, "optimizer"))),
    }
    before = system.book()
    refused_before = {svc: system.counter(svc, "params_refused") for svc in ("signal", "risk")}
    ticks_before = len(system.log_lines("risk", "RISK_TICK"))
    assert run(js_publish(system, "optimizer", "$KV.aura_params.strategy", docs[document])) == "stored"
    for svc in ("signal", "risk"):
        wait_until(lambda svc=svc: system.counter(svc, "params_refused") > refused_before[svc],
                   f"{svc} to refuse the {document} document", timeout=30)
    # Stop-loss checks go on, on the last valid version: ticks keep coming and none fails.
    wait_until(lambda: len(system.log_lines("risk", "RISK_TICK")) >= ticks_before + 4, "four more risk ticks")
    assert system.counter("risk", "params_version") == version_before
    assert not [x for x in system.log_lines("risk", "RISK_TICK") if "failed" in x["msg"]]
    # Still ready, on the last valid version, and /readyz says which version was refused (the operator's cue).
    for svc in ("signal", "risk"):
        body = system.readiness(svc)
        assert body["ready"] is True and "refused version" in str(body["checks"]), f"{svc}: {body}"
        if document == "signed, outside the loss envelope":
            assert "envelope" in str(body["checks"]), f"{svc}: {body}"
    assert_untouched(system, before, f"a {document} parameter document")


# --- 3. state: the latch, the reset request, snapshots -------------------------------------------------------


@pytest.mark.parametrize("principal", [None, "ingest", "signal", "executor", "optimizer", "operator"])
def test_only_risk_may_write_the_latch(system: System, principal: str | None) -> None:
    outcome = run(js_publish(system, principal, f"$KV.aura_state.{HALT_KEY}", b'{"halted": true}'))
    assert outcome.startswith("refused"), f"{principal}: {outcome}"


@pytest.mark.parametrize("principal", [None, "ingest", "signal", "risk", "executor", "optimizer"])
def test_only_the_operator_may_ask_for_a_reset(system: System, principal: str | None) -> None:
    outcome = run(js_publish(system, principal, "$KV.aura_state.operator.reset", b'{"requested_at_ms": 9e15}'))
    assert outcome.startswith("refused"), f"{principal}: {outcome}"


async def operator_latch(system: System) -> Any:
    """The latch as the operator reads it: (latch, revision, problem), verified against risk's key and chain."""
    nc = await system.connect("operator")
    try:
        return await read_latch(nc.jetstream(), trusted_key(system.settings.keys, "operator", "risk"))
    finally:
        await nc.close()


def test_an_unsigned_latch_written_with_risks_bus_key_is_not_believed(system: System) -> None:
    """A stolen NKey without the signing key: the latch is refused, the verified one stays and is restored."""
    before = system.book()
    forged_before = system.counter("risk", "forged_state")
    assert run(js_publish(system, "risk", f"$KV.aura_state.{HALT_KEY}", b'{"halted": true}')) == "stored"
    wait_until(lambda: system.counter("risk", "forged_state") > forged_before, "risk to refuse the latch")
    assert_untouched(system, before, "an unsigned latch")
    doc, _, problem = wait_until(lambda: (got := run(operator_latch(system))) and not got[2] and got,
                                 "the latch to be restored")
    assert problem == "" and doc.halted is False


def test_a_deleted_or_replayed_latch_is_not_believed(system: System) -> None:
    """Risk's signature says who wrote a latch, not that it is the newest.  With risk's bus credential alone, one
    could delete the latch, or put back one risk signed earlier (recorded while unlatched, replayed once it has
    latched): each latch names the revision it replaces (shared/kv_chain.py), so both are refused, the verified
    latch stays in force and risk writes it back.  (Here the latch put back says what the one in force says: it is
    refused for where it stands, whatever it says; tests/risk/test_latch_chain_bus.py puts an unlatched one back
    over a latched one, and starts a risk on a deleted one.)"""
    before = system.book()
    subject = f"$KV.aura_state.{HALT_KEY}"
    genuine = run(state_entries(system))[HALT_KEY]
    assert run(operator_latch(system))[2] == "", "the latch in force verifies before the attack"
    for attack, payload, headers in (("deleted", b"", {"KV-Operation": "DEL"}),
                                     ("replayed", genuine[1], None)):
        forged_before = system.counter("risk", "forged_state")
        assert run(js_publish(system, "risk", subject, payload, headers=headers)) == "stored", attack
        wait_until(lambda n=forged_before: system.counter("risk", "forged_state") > n,
                   f"risk to refuse the {attack} latch")
        doc, revision, problem = wait_until(lambda: (got := run(operator_latch(system))) and not got[2] and got,
                                            f"the latch to be restored after it was {attack}")
        assert problem == "" and doc.halted is False and revision > genuine[0]
    problems = [x["error"] for x in system.log_lines("risk", "FORGED_STATE")]
    assert any("deleted" in p for p in problems) and any("came between" in p for p in problems), problems
    assert_untouched(system, before, "a deleted or replayed latch")


def test_a_snapshot_with_a_fake_equity_peak_does_not_reach_risk(system: System) -> None:
    genuine = run(newest(system, PortfolioSnapshot))
    fake = msgspec.structs.replace(genuine, equity_history=[*genuine.equity_history[:-1], genuine.equity * 10,
                                                            genuine.equity], signature="", key_id="")
    for principal in (None, "ingest", "signal", "risk", "optimizer"):
        outcome = run(js_publish(system, principal, PortfolioSnapshot.SUBJECT, encode(fake)))
        assert outcome.startswith("refused"), f"{principal}: {outcome}"
    # With the executor's bus key but not its signing key: unsigned, or signed by another key.
    before = system.book()
    forged_before = system.counter("risk", "forged_snapshots")
    for variant in (fake, sign_struct(fake, Ed25519PrivateKey.generate())):
        assert run(js_publish(system, "executor", PortfolioSnapshot.SUBJECT, encode(variant))) == "stored"
    wait_until(lambda: system.counter("risk", "forged_snapshots") > forged_before, "risk to refuse the snapshot")
    # With the executor's signing key too: a snapshot id risk already holds, republished with other contents, is
    # refused all the same (risk remembers what each id it verified said).
    forged_before = system.counter("risk", "forged_snapshots")
    resigned = sign_struct(fake, signing_key(system.settings.keys, "executor"))
    assert resigned.snapshot_id == genuine.snapshot_id
    assert run(js_publish(system, "executor", PortfolioSnapshot.SUBJECT, encode(resigned))) == "stored"
    # Waited for by its own log line: the counter also moves while risk refuses the previous forgery at each tick
    # (it stays the newest message until this one lands), which made a wait on the counter alone end too early.
    wait_until(lambda: any("seen before with other contents" in x["msg"]
                           for x in system.log_lines("risk", "FORGED_SNAPSHOT")), "risk to refuse the re-signed id")
    assert system.counter("risk", "forged_snapshots") > forged_before
    assert_untouched(system, before, "a snapshot with a fake equity peak")
    assert not [x for x in system.log_lines("risk", "KILL_SWITCH") if "breached" in x["msg"]]


def test_a_rollup_on_a_writers_own_key_cannot_purge_the_latch(system: System) -> None:
    """`Nats-Rollup: all` on the one key a service may write would purge every key of the bucket, the latch too."""
    before = run(state_entries(system))
    assert HALT_KEY in before and SIGNAL_STATE_KEY in before, f"the keys this attack targets exist: {sorted(before)}"
    for principal, key in (("signal", SIGNAL_STATE_KEY), ("ingest", ingest_cursor_key("replay", "1d")),
                           ("optimizer", DECISION_KEY)):
        outcome = run(js_publish(system, principal, f"$KV.aura_state.{key}", b"{}", headers={"Nats-Rollup": "all"}))
        assert outcome.startswith("refused"), f"{principal}: {outcome}"
    assert run(state_entries(system)) == before


def test_a_writer_cannot_fill_the_state_bucket_against_the_latch(system: System) -> None:
    """A compromised signal writes keys of its own (refused: exact keys only) and floods its one key with more
    than the bucket holds; the bucket stays bounded and risk can still write the latch."""
    for key in ("signal.flood.1", "signal.state.x", "risk.other", "ingest.cursor.evil.1d"):
        outcome = run(js_publish(system, "signal", f"$KV.aura_state.{key}", b"{}"))
        assert outcome.startswith("refused"), f"{key}: {outcome}"
    before = run(state_entries(system))
    value = b"x" * (60 * 1024)

    async def flood() -> tuple[int, int]:
        nc = await system.connect("signal")
        try:
            js = nc.jetstream()
            for _ in range(1100):  # 66 MB: more than the bucket's 64 MiB
                await js.publish(f"$KV.aura_state.{SIGNAL_STATE_KEY}", value, timeout=5)
            info = await js.stream_info("KV_aura_state")
            await js.publish(f"$KV.aura_state.{SIGNAL_STATE_KEY}", before[SIGNAL_STATE_KEY][1])  # signal's own back
            return int(info.state.bytes), int(info.config.max_bytes or 0)
        finally:
            await nc.close()

    used, limit = run(flood())
    history, value_size, _ = BUCKETS["aura_state"]
    assert used < state_bytes_bound(history, value_size) + value_size < limit, f"{used} bytes of {limit}"
    # Risk's latch write still lands: the latch in force, written as risk writes it (signed, on its last revision).
    async def rewrite_latch() -> tuple[Any, int, str]:
        nc = await system.connect("risk")
        try:
            js, key = nc.jetstream(), signing_key(system.settings.keys, "risk")
            doc, revision, problem = await read_latch(js, key.public_key())
            assert problem == "", problem
            await write_latch(js, doc, key, revision)
            return await read_latch(js, key.public_key())
        finally:
            await nc.close()

    _, revision, problem = run(rewrite_latch())
    assert problem == "" and revision > before[HALT_KEY][0]
    assert run(state_entries(system))[SIGNAL_STATE_KEY][1] == before[SIGNAL_STATE_KEY][1]


# --- 4. oversized and malformed messages -------------------------------------------------------------------------


def test_an_oversized_message_is_refused_by_the_server(system: System) -> None:
    big = b'{"v":1,"x":"' + b"A" * 900_000 + b'"}'

    async def over_max_payload() -> str:
        nc = await system.connect("risk")
        nc._max_payload = 10 * len(big)  # skip the client's own check: the server must refuse it
        try:
            await nc.publish("aura.plans.approved", big)
            await nc.flush(timeout=2)
            await asyncio.sleep(0.5)
            return "connected" if nc.is_connected else "closed"
        except Exception as exc:
            return f"refused: {exc}"
        finally:
            await nc.close()

    before = system.book()
    outcome = run(over_max_payload())
    assert outcome != "connected", "the server accepted a 0.9 MB message"
    # Under max_payload but over the stream's per-message limit: refused at publish, never stored.
    outcome = run(js_publish(system, "risk", "aura.plans.approved", b'{"v":1,"x":"' + b"A" * 100_000 + b'"}'))
    assert outcome.startswith("refused") and "maximum" in outcome.lower(), outcome
    assert_untouched(system, before, "oversized messages")


def test_a_malformed_plan_is_dead_lettered_within_bounds_and_the_executor_moves_on(system: System) -> None:
    payload = b'{"v":1,"x":"' + b"A" * 60_000 + b'"}'  # fits the stream, is no plan
    before = system.book()
    letters_before = len(system.dead_letters("executor"))
    assert run(js_publish(system, "risk", "aura.plans.approved", payload)) == "stored"
    letters = wait_until(lambda: system.dead_letters("executor")[letters_before:], "the executor's dead letter")
    (letter,) = letters
    assert letter.reason == "malformed" and letter.payload_size == len(payload)
    assert len(letter.payload) <= 4096 and len(encode(letter)) < 16 * 1024
    assert_untouched(system, before, "a malformed plan")


# --- 5. notices ------------------------------------------------------------------------------------------------


def test_a_stale_notice_from_the_far_future_is_refused(system: System) -> None:
    notice = DataStale(cycle_id="1d-99991231T0000", timeframe="1d", reason="attack", as_of_ms=9_000_000_000_000_000)
    for principal in (None, "signal", "risk", "executor", "optimizer"):
        assert run(js_publish(system, principal, DataStale.SUBJECT, encode(notice))).startswith("refused"), principal
    # The far future, and today: the replay's data is history, so a notice dated by the wall clock is as far
    # ahead of it, and would block every replayed target as surely.
    today = (int(time.time() * 1000) // DAY) * DAY
    for forged in (notice, DataStale(cycle_id=cycle_id_for("1d", today), timeframe="1d", reason="attack",
                                     as_of_ms=today)):
        refused_before = system.counter("risk", "stale_notices_refused")
        assert run(js_publish(system, "ingest", DataStale.SUBJECT, encode(forged))) == "stored"
        wait_until(lambda n=refused_before: system.counter("risk", "stale_notices_refused") > n, "risk to refuse it")
        assert system.dead_letters("risk")[-1].reason == "stale_out_of_bounds"


def test_aborts_for_unknown_cycles_never_become_equity_points(system: System) -> None:
    before = system.book()
    events_from = system.last_event_seq()
    history_before = run(newest(system, PortfolioSnapshot)).equity_history
    ignored_before = system.counter("executor", "aborts_ignored")
    # A stage may abort only on its own subject...
    wrong = CycleAborted(cycle_id="1d-20241206T0000", stage="ingest", reason="attack")
    assert run(js_publish(system, "signal", "aura.plans.aborted.ingest", encode(wrong))).startswith("refused")
    # ...and an abort for a cycle ingest never announced adds no equity point, however many arrive.
    for i in range(150):
        junk = CycleAborted(cycle_id=f"junk-{i}", stage="signal", reason="attack")
        assert run(js_publish(system, "signal", "aura.plans.aborted.signal", encode(junk),
                              msg_id=f"junk-{i}")) == "stored"
    wait_until(lambda: system.counter("executor", "aborts_ignored") >= ignored_before + 150,
               f"the executor to count 150 ignored aborts (from {ignored_before})")
    assert_untouched(system, before, "150 junk aborts")
    assert run(newest(system, PortfolioSnapshot)).equity_history == history_before
    # Counted, and journaled while the stage's allowance lasts (20, then one a minute): one row each let a flood
    # fill the journal's disk.
    events = system.events_since(events_from)
    assert {e[0] for e in events} == {"abort_ignored"} and 20 <= len(events) <= 22, events


def test_a_pull_redirected_onto_another_services_subscription_never_arrives(system: System) -> None:
    """A pull request's reply subject may name any subject, and JetStream delivers there.  A worker (allowed to pull
    from its task queue) once pushed stored tasks onto risk's stale-notice and ingest's snapshot subscriptions this
    way.  The answer to a pull now stays in the puller's own account (shared/bus_access.py, ``server_config``),
    where neither subject is imported: nothing arrives, nothing is counted, nothing dead-lettered.  (Were one to
    arrive, both subscriptions still hand a handler only their own subject: shared/allowance.own_subject_only.)"""
    before = system.book()
    letters_before = len(system.dead_letters("risk"))
    counts = {svc: system.counter(svc, "misrouted") for svc in ("risk", "ingest")}

    async def pending() -> int:
        admin = await system.connect("admin")
        try:
            info = await admin.jetstream().consumer_info("AURA_OPT_TASKS", "worker")
            return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        finally:
            await admin.close()

    async def redirect() -> None:
        optimizer, worker = await system.connect("optimizer"), await system.connect("worker")
        try:
            for target in ("aura.data.stale", "aura.exec.snapshots") * 3:
                await optimizer.jetstream().publish("aura.optimize.tasks", b'{"v":1,"attack":"redirected"}')
                # Where the worker's own account reaches its consumer (shared.bus_access.local_subject).
                await worker.publish(local_subject("worker", "$JS.API.CONSUMER.MSG.NEXT.AURA_OPT_TASKS.worker"),
                                     b'{"batch":1,"expires":2000000000}', reply=target)
                await worker.flush()
                await asyncio.sleep(0.1)
        finally:
            await optimizer.close()
            await worker.close()

    taken_before = run(pending())
    run(redirect())
    # The six tasks are in the queue, none handled: the redirected pulls took nothing anywhere.
    assert run(pending()) == taken_before + 6
    time.sleep(2.0)  # what would arrive has arrived: each service's subscription is read at once
    assert {svc: system.counter(svc, "misrouted") for svc in counts} == counts
    assert len(system.dead_letters("risk")) == letters_before, "a pushed message was dead-lettered"
    assert_untouched(system, before, "stored messages pushed at other services' subscriptions")


# --- after every attack: the system still trades a genuine cycle -------------------------------------------------


def test_zy_beside_every_refused_write_the_operators_cli_edit_is_live_in_signal_and_risk(system: System,
                                                                                       tmp_path: Path) -> None:
    """Not an attack: the legitimate path still works.  `aura params show`, one value edited, `aura params set`
    (as the operator, through the run's bus), and the running signal and risk hot-reload it between cycles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env |= {"AURA_HOME": str(system.settings.home_path), "AURA_NATS_URL": system.url}

    def aura(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aura.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    shown = aura("params", "show")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    doc["params"]["take_profit"] = 5.0  # exit at +500%: changes no trade here, and is seen in the digest
    edited = tmp_path / "params.json"
    edited.write_text(json.dumps(doc))
    promoted = aura("params", "set", str(edited), "--reason", "round trip")
    assert promoted.returncode == 0, promoted.stderr
    # The new version number follows the newest stored one, refused forgeries of the tests above included.
    version = int(re.search(r"promoted parameter version (\d+)", promoted.stdout).group(1))  # type: ignore[union-attr]
    digest_now = params_digest(msgspec.convert(doc["params"], StrategyParams))
    for svc in ("signal", "risk"):
        wait_until(lambda svc=svc: f"version {version} digest {digest_now}"
                   in str(system.readiness(svc)["checks"]), f"{svc} to run on the edited parameters", timeout=30)


def test_zz_after_every_attack_a_genuine_new_cycle_is_still_planned_and_executed(system: System) -> None:
    """Ingest announces one more bar (the last one again, a day later): signal, risk and the executor still do
    their job, on the verified basis, whatever was thrown at them above."""

    async def announce() -> str:
        from shared.objects import verified_candles

        operator = await system.connect("operator")  # reads what ingest published last (ingest cannot)
        try:
            ready = decode(await last_message(operator.jetstream(), DataReady.SUBJECT), DataReady)
            panel = decode_panel(await verified_candles(operator.jetstream(), ready.digest))
        finally:
            await operator.close()

        def shifted(a: np.ndarray) -> np.ndarray:  # one bar on, the last bar repeated
            return np.vstack([a[1:], a[-1:]])

        stamps = np.append(panel.timestamps[1:], panel.timestamps[-1] + DAY)
        nxt = Panel(panel.symbols, stamps, shifted(panel.open), shifted(panel.high), shifted(panel.low),
                    shifted(panel.close), shifted(panel.volume))
        blob = encode_panel(nxt)
        as_of = int(stamps[-1])
        cycle = cycle_id_for("1d", as_of)
        nc = await system.connect("ingest")
        try:
            js = nc.jetstream()
            await (await candle_writer(js)).put(digest(blob), blob)
            await publish(js, msgspec.structs.replace(ready, cycle_id=cycle, as_of_ms=as_of, digest=digest(blob)),
                          msg_id=f"ready-{cycle}")
            return cycle
        finally:
            await nc.close()

    cycle = run(announce())
    wait_until(lambda: system.journal("SELECT status FROM snapshots WHERE cycle_id=?", (cycle,)),
               f"cycle {cycle} to end in the journal", timeout=60)
    (status,) = system.journal("SELECT status FROM snapshots WHERE cycle_id=?", (cycle,))[0]
    assert status in ("executed", "partial"), status
    assert set(system.ready().values()) == {200}

"""Every stream and bucket the admin credential provisions carries the limits ARCHITECTURE.md's "Limits" table promises,
read back from a real nats-server: a flood costs bounded disk, one message cannot exceed what its consumer takes, and
on a stream several principals publish to, a flood on one's subject cannot push another's messages out.

The expected figures are written here from the table, independently of shared/contracts.py and
shared/provision.py, so that a changed limit fails until the table (and this test) say why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
from pathlib import Path

import nats
import pytest

from aura.natsd import BUS_MEMORY_LIMIT, free_port, nats_server_binary
from shared.bus import durable_pull
from shared.bus_access import permissions
from shared.contracts import CONSUMERS, STREAMS, ServiceEvent, encode, stream_of
from shared.credentials import PRINCIPALS
from shared.provision import provision_bus, stream_configs
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
KIB, MIB, DAY = 1024, 1024 * 1024, 86_400.0
# What nats-server's file store adds to a message's headers and payload: record length, sequence, timestamp, subject
# length, header length, hash (22 + 4 + 8 bytes), and the subject itself.
RECORD_OVERHEAD = 34

# stream -> (max_bytes, max_age in seconds, max_msg_size, discard, messages per subject (-1: no limit))
EXPECTED = {
    "AURA_DATA": (256 * MIB, 7 * DAY, 64 * KIB, "old", -1),
    "AURA_TARGETS": (256 * MIB, 7 * DAY, 64 * KIB, "old", -1),
    "AURA_PLANS": (256 * MIB, 30 * DAY, 64 * KIB, "old", 1000),
    "AURA_EXEC": (512 * MIB, 30 * DAY, 192 * KIB, "old", -1),  # snapshots of 4,000 hourly equity points
    "AURA_DLQ": (256 * MIB, 30 * DAY, 16 * KIB, "old", 2000),
    "AURA_EVENTS": (64 * MIB, 7 * DAY, 8 * KIB, "old", 1000),
    "OBJ_aura_candles": (1024 * MIB, 3 * DAY, 256 * KIB, "old", -1),
    "AURA_OPT_TASKS": (256 * MIB, DAY, 64 * KIB, "new", -1),
    "AURA_OPT_RESULTS": (1024 * MIB, DAY, 192 * KIB, "old", -1),
    "OBJ_aura_opt_inputs": (1024 * MIB, DAY, 256 * KIB, "old", -1),
    # KV: no age limit (state must survive), discard new (a full bucket refuses, it never drops the latch).
    "KV_aura_params": (64 * MIB, 0.0, 64 * KIB, "new", 64),
    "KV_aura_state": (64 * MIB, 0.0, 64 * KIB, "new", 5),
}


def test_provisioned_streams_carry_the_documented_limits(nats_server: NatsEndpoint) -> None:
    async def read() -> dict[str, tuple[int, float, int, str, int]]:
        nc = await nats_server.connect("admin")  # the streams' info, the optimizer's and object stores' too
        try:
            js = nc.jetstream()
            out = {}
            for name in EXPECTED:
                config = (await js.stream_info(name)).config
                discard = getattr(config.discard, "value", config.discard) or "old"
                out[name] = (int(config.max_bytes or -1), float(config.max_age or 0.0),
                             int(config.max_msg_size or -1), str(discard), int(config.max_msgs_per_subject or -1))
            return out
        finally:
            await nc.close()

    assert asyncio.run(read()) == EXPECTED


def test_a_flood_of_aborts_never_pushes_an_unread_plan_out_of_the_plans_stream(nats_server: NatsEndpoint) -> None:
    """Ingest, signal and risk may each publish aborts on AURA_PLANS, beside risk's plans.  With only the stream's
    byte limit (discard old), 60 KB aborts from a compromised signal evicted a signed plan the executor had not read
    yet.  Each subject now keeps its own newest 1000, and four subjects of 1000 messages of at most 64 KiB cannot
    reach the byte limit: the flood drops its own oldest aborts, the plan stays."""
    per_subject, subjects = 1000, 4  # the table's figure; aura.plans.approved and three abort subjects

    async def scenario() -> dict[str, int]:
        out: dict[str, int] = {}
        nc_risk, nc_signal, nc_op = [await nats_server.connect(p) for p in ("risk", "signal", "admin")]
        try:
            config = (await nc_op.jetstream().stream_info("AURA_PLANS")).config
            out["per_subject"] = int(config.max_msgs_per_subject or -1)
            out["room"] = int(config.max_bytes or 0) - subjects * per_subject * int(config.max_msg_size or 0)
            plan = await nc_risk.jetstream().publish("aura.plans.approved", b'{"v":1,"plan":"unread"}')
            junk = b'{"v":1,"cycle_id":"junk","stage":"signal","reason":"' + b"x" * 60_000 + b'"}'
            js = nc_signal.jetstream()
            # More than the byte limit holds (4,600 x 60 KB = 276 MB > 256 MiB): without the per-subject cap the
            # stream would drop its oldest message, the plan.
            for _ in range(4600):
                await js.publish("aura.plans.aborted.signal", junk)
            kept = await nc_op.jetstream().get_msg("AURA_PLANS", seq=plan.seq)
            out["plan_kept"] = int(kept.data == b'{"v":1,"plan":"unread"}')
            info = await nc_op.jetstream().stream_info("AURA_PLANS", subjects_filter="aura.plans.aborted.signal")
            out["aborts_kept"] = int((info.state.subjects or {}).get("aura.plans.aborted.signal", 0))
        finally:
            for nc in (nc_risk, nc_signal, nc_op):
                await nc.close()
        return out

    out = asyncio.run(scenario())
    assert out["per_subject"] == per_subject
    assert out["room"] > 0, "four full subjects could reach the byte limit and evict across subjects"
    assert out["plan_kept"] == 1, "the flood pushed the unread plan out"
    assert out["aborts_kept"] == per_subject, out


def _publishers_by_stream() -> dict[str, dict[str, set[str]]]:
    """stream -> principal -> the stream's subjects that principal may publish on (the server's configuration)."""
    out: dict[str, dict[str, set[str]]] = {}
    for principal in PRINCIPALS:
        for subject in permissions(principal).publish:
            if subject.startswith(("$", "_INBOX")):
                continue  # JetStream API, KV and object-store subjects: the buckets' own bounds cover those
            try:
                stream = stream_of(subject)
            except KeyError:
                continue  # core request subjects no stream stores
            out.setdefault(stream, {}).setdefault(principal, set()).add(subject)
    return out


def test_no_publisher_can_fill_a_shared_stream_past_its_own_subjects() -> None:
    """On every stream more than one principal publishes to, all its publishable subjects full (each at its per-subject
    cap, every message as large as the stream allows, with the store's per-record overhead) stay below max_bytes: the
    byte limit (discard old) never drops a message for another subject's flood.  Derived from the matrix, so a new
    publisher or a larger message that would break it fails here before it ships."""
    by_stream = _publishers_by_stream()
    specs = {spec.name: spec for spec in STREAMS}
    shared = {name: who for name, who in by_stream.items() if len(who) > 1}
    assert {"AURA_PLANS", "AURA_DLQ", "AURA_EVENTS"} <= set(shared), shared
    for name, who in shared.items():
        spec = specs[name]
        subjects = set().union(*who.values())
        assert not any("*" in s or ">" in s for s in subjects), f"{name}: a wildcard grant has no bounded count"
        assert spec.max_msgs_per_subject > 0, f"{name}: {sorted(who)} share it with no per-subject cap"
        worst = sum(spec.max_msgs_per_subject * (spec.max_msg_size + len(s) + RECORD_OVERHEAD) for s in subjects)
        assert worst < spec.max_bytes, f"{name}: {len(subjects)} full subjects take {worst} B >= {spec.max_bytes} B"


async def _flood(nats_server: NatsEndpoint, stream: str, victims: dict[str, bytes], flooder: str,
                 flood_subject: str) -> dict[str, int]:
    """Each victim subject's publisher stores one message, then ``flooder`` publishes more messages of the stream's
    largest size on its own subject than max_bytes holds.  Returns what is left."""
    out: dict[str, int] = {}
    nc_op = await nats_server.connect("admin")
    try:
        config = (await nc_op.jetstream().stream_info(stream)).config
        seqs: dict[str, int] = {}
        for subject, payload in victims.items():
            nc = await nats_server.connect(subject.rsplit(".", 1)[-1])  # each service publishes its own subject
            try:
                seqs[subject] = (await nc.jetstream().publish(subject, payload)).seq
            finally:
                await nc.close()
        max_size, max_bytes = int(config.max_msg_size or 0), int(config.max_bytes or 0)
        # More payload alone than max_bytes holds: without the per-subject cap discard-old takes the victims first.
        count, junk = max_bytes // max_size + 200, b"x" * max_size
        nc_flood = await nats_server.connect(flooder)
        try:
            js = nc_flood.jetstream()
            for _ in range(count):
                await js.publish(flood_subject, junk)
        finally:
            await nc_flood.close()
        for subject, payload in victims.items():
            try:
                kept = await nc_op.jetstream().get_msg(stream, seq=seqs[subject])
                out[subject] = int(kept.data == payload and kept.subject == subject)
            except nats.js.errors.NotFoundError:
                out[subject] = 0
        info = await nc_op.jetstream().stream_info(stream, subjects_filter=flood_subject)
        out["flood_kept"] = int((info.state.subjects or {}).get(flood_subject, 0))
        out["per_subject"] = int(config.max_msgs_per_subject or -1)
        out["room"] = max_bytes - int(info.state.bytes or 0)
    finally:
        await nc_op.close()
    return out


def test_a_flood_of_one_services_events_never_pushes_anothers_event_out(nats_server: NatsEndpoint) -> None:
    """A compromised signal publishing ~8,400 events of 8 KiB on its own ``aura.events.signal`` (more than the
    stream's 64 MiB) pushed out risk's [FORGED_TARGET] event before the console read it: the alert about the attack
    was erased by the attack.  Each subject now keeps its own newest 1000: the flood drops only signal's oldest, and
    the console's durable still delivers risk's event first."""
    event = ServiceEvent(event_id="e-forged", service="risk", kind="FORGED_TARGET", severity="warning",
                         text="target signature invalid", at_ms=1_700_000_000_000)

    async def scenario() -> dict[str, int]:
        out = await _flood(nats_server, "AURA_EVENTS", {"aura.events.risk": encode(event)}, "signal",
                           "aura.events.signal")
        nc_console = await nats_server.connect("console")
        try:
            sub = await durable_pull(nc_console.jetstream(), CONSUMERS["console"])
            first = (await sub.fetch(1, timeout=5))[0]
            out["console_reads_risk_first"] = int(first.subject == "aura.events.risk" and first.data == encode(event))
        finally:
            await nc_console.close()
        return out

    out = asyncio.run(scenario())
    assert out["aura.events.risk"] == 1, f"the flood pushed risk's event out: {out}"
    assert out["console_reads_risk_first"] == 1, out
    assert out["per_subject"] == 1000 and out["flood_kept"] == 1000, out
    assert out["room"] > 0, out


@pytest.mark.timeout(120)
def test_a_flood_of_worker_dead_letters_never_pushes_risks_or_the_executors_out(nats_server: NatsEndpoint) -> None:
    """A compromised optimizer worker flooding ``aura.dlq.worker`` with 16 KiB letters (more than the stream's
    256 MiB) erased the risk and executor dead letters, the record of what they refused.  Each subject now keeps its
    own newest 2000: the flood drops only the worker's oldest."""
    victims = {f"aura.dlq.{svc}": b'{"v":1,"service":"' + svc.encode() + b'","reason":"forged"}'
               for svc in ("risk", "executor")}
    out = asyncio.run(_flood(nats_server, "AURA_DLQ", victims, "worker", "aura.dlq.worker"))
    assert out["aura.dlq.risk"] == 1 and out["aura.dlq.executor"] == 1, f"the flood pushed a dead letter out: {out}"
    assert out["per_subject"] == 2000 and out["flood_kept"] == 2000, out
    assert out["room"] > 0, out


def test_a_bus_provisioned_before_the_per_subject_caps_is_brought_under_them(tmp_path: Path) -> None:
    """A deployed bus whose events and dead-letter streams have no per-subject cap (the earlier provisioning) gets it
    from the next `aura bus provision` / `aura up` (a stream update, messages kept); a subject already over the cap is
    trimmed to its newest.  (A bare JetStream server, as the earlier configuration was provisioned.)"""
    port = free_port()
    server = subprocess.Popen([nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def scenario() -> dict[str, int]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=10)
        try:
            js = nc.jetstream()
            for old in stream_configs(120.0):
                if old.name in ("AURA_EVENTS", "AURA_DLQ"):
                    await js.add_stream(dataclasses.replace(old, max_msgs_per_subject=-1))
            risk = await js.publish("aura.events.risk", b'{"kept":1}')
            for _ in range(1010):
                await js.publish("aura.events.signal", b"{}")
            await provision_bus(js, 120.0)
            events = await js.stream_info("AURA_EVENTS", subjects_filter="aura.events.signal")
            dlq = await js.stream_info("AURA_DLQ")
            kept = await js.get_msg("AURA_EVENTS", seq=risk.seq)
            return {"events_cap": int(events.config.max_msgs_per_subject or -1),
                    "dlq_cap": int(dlq.config.max_msgs_per_subject or -1),
                    "signal_kept": int((events.state.subjects or {}).get("aura.events.signal", 0)),
                    "risk_kept": int(kept.data == b'{"kept":1}')}
        finally:
            await nc.close()

    try:
        out = asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(10)
    assert out == {"events_cap": 1000, "dlq_cap": 2000, "signal_kept": 1000, "risk_kept": 1}, out


def test_the_embedded_bus_runs_under_a_soft_memory_limit(nats_server: NatsEndpoint) -> None:
    """NATS limits no client's request rate: a minute of pulls from the console's credential grew the server to
    1.3 GB (Go collects lazily); under GOMEMLIMIT the same flood peaked at 0.6 GB and came back down."""
    environ = Path(f"/proc/{nats_server.server.process.pid}/environ").read_bytes().split(b"\0")
    wanted = os.environ.get("GOMEMLIMIT", BUS_MEMORY_LIMIT)  # a limit the user set wins over ours
    assert f"GOMEMLIMIT={wanted}".encode() in environ, [e for e in environ if e.startswith(b"GOMEMLIMIT")]

"""The bus's permission matrix, walked against a real nats-server with every credential.

For each principal (and an anonymous client) every operation that could move money or state is attempted:
publishing on each pipeline subject, writing and reading each KV key, writing and reading the object stores, acking
and reading another principal's consumer, creating, changing or deleting streams and consumers, reading and
consuming.  What the server allows is compared with a table
written here from the issue's requirements, independently of ``shared.bus_access.MATRIX``: a wrong edit of
the matrix fails this test even though the server would faithfully enforce it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

import nats
import pytest

from aura.natsd import free_port, nats_server_binary
from shared.bus import client_options
from shared.bus_access import inbox_prefix, local_subject, matrix_markdown, permissions
from shared.contracts import CONSUMERS
from shared.credentials import PRINCIPALS
from shared.provision import BUCKETS, provision_bus, stream_configs
from shared.state_keys import WRITERS, state_bytes_bound
from tests.conftest import REPO_ROOT, NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ALL = set(PRINCIPALS)

# subject -> who may publish on it (the issue: only ingest publishes data and stale notices, only signal
# targets, only risk approved plans, only the executor fills and snapshots; each stage its own aborts and
# each service its own dead letters and its own events).  The console publishes nothing at all.
PUBLISH = {
    "aura.data.ready": {"ingest"},
    "aura.data.stale": {"ingest"},
    "aura.signal.targets": {"signal"},
    "aura.plans.approved": {"risk"},
    "aura.plans.aborted.ingest": {"ingest"},
    "aura.plans.aborted.signal": {"signal"},
    "aura.plans.aborted.risk": {"risk"},
    "aura.exec.fills": {"executor"},
    "aura.exec.snapshots": {"executor"},
    **{f"aura.dlq.{svc}": {svc} for svc in ("ingest", "signal", "risk", "executor", "optimizer")},
    **{f"aura.events.{svc}": {svc} for svc in ("ingest", "signal", "risk", "executor", "optimizer")},
    "aura.events.console": set(),
    # The optimizer's work queue: only the coordinator (optimizer) hands out tasks, only workers answer them, and
    # a worker dead-letters on its own subject.
    "aura.optimize.tasks": {"optimizer"},
    "aura.optimize.results": {"worker"},
    "aura.dlq.worker": {"worker"},
}
# KV key -> who may write it: parameters by the optimizer and the operator; the latch by risk alone; each
# service its own state; the operator's reset request by the operator alone.
KV_WRITE = {
    ("aura_params", "strategy"): {"optimizer", "operator"},
    ("aura_state", "risk.halted"): {"risk"},
    ("aura_state", "risk.bar_sent"): {"risk"},  # the participation cap's count of the bar, kept across restarts
    ("aura_state", "operator.reset"): {"operator"},
    ("aura_state", "ingest.cursor.replay.1d"): {"ingest"},
    ("aura_state", "signal.state"): {"signal"},
    ("aura_state", "optimizer.decision"): {"optimizer"},  # the optimizer's latest decision, shown by the console
    # Keys nobody was granted, beside each writer's own: exact keys only, so no writer can add keys of its own and
    # fill the bucket that holds the latch.
    ("aura_state", "ingest.cursor.evil.1d"): set(),
    ("aura_state", "signal.flood"): set(),
    ("aura_state", "risk.other"): set(),
    ("aura_state", "optimizer.other"): set(),
    ("aura_state", "operator.other"): set(),
}
OBJECT_WRITE = {"ingest"}
OPT_INPUTS_WRITE = {"optimizer"}  # the optimizer's inputs object store: the coordinator writes, workers only read
# Stream and consumer management: the admin credential provisions (not the operator's everyday CLI credential: a
# stream update empties a bucket, a consumer delete stops a service); nobody deletes or purges a stream, except
# that an object store's one writer may purge within its own bucket (nats-py's put purges the chunks of an object
# it replaces: no power beyond the overwrite it already holds), never another's.
MANAGE = {
    "$JS.API.STREAM.CREATE.EVIL": {"admin"},
    "$JS.API.STREAM.UPDATE.AURA_PLANS": {"admin"},
    "$JS.API.STREAM.DELETE.AURA_PLANS": set(),
    "$JS.API.STREAM.PURGE.AURA_PLANS": set(),
    "$JS.API.STREAM.MSG.DELETE.AURA_PLANS": set(),
    "$JS.API.CONSUMER.DURABLE.CREATE.AURA_PLANS.evil": {"admin"},
    # An ephemeral push consumer delivering stored plans to a subject of the attacker's choice.
    "$JS.API.CONSUMER.CREATE.AURA_PLANS": {"admin"},
    "$JS.API.CONSUMER.DELETE.AURA_PLANS.executor": {"admin"},
    "$JS.API.STREAM.PURGE.OBJ_aura_candles": {"ingest"},
    "$JS.API.STREAM.PURGE.OBJ_aura_opt_inputs": {"optimizer"},
}
# Direct reads of the newest message on a subject: what each service consumes, the operator, the read-only
# console, which shows everything, and the admin credential (the whole JetStream API).
READ = {
    "aura.data.ready": {"risk", "executor", "operator", "console", "admin"},
    "aura.data.stale": {"risk", "executor", "operator", "console", "admin"},
    "aura.exec.snapshots": {"risk", "operator", "console", "admin"},
    "aura.plans.approved": {"operator", "console", "admin"},
    "aura.signal.targets": {"operator", "console", "admin"},
    "aura.events.risk": {"operator", "console", "admin"},
    "aura.optimize.results": {"operator", "admin"},  # the coordinator consumes them; a worker cannot read them
}
# KV keys -> who may read them: each service the keys it consumes, the console what the dashboard shows, the
# operator everything.
KV_READ = {
    ("aura_params", "strategy"): {"signal", "risk", "optimizer", "console", "operator", "admin"},
    ("aura_state", "risk.halted"): {"risk", "console", "operator", "admin"},
    ("aura_state", "risk.bar_sent"): {"risk", "operator", "admin"},
    ("aura_state", "operator.reset"): {"risk", "operator", "admin"},
    ("aura_state", "operator.adopt"): {"executor", "operator", "admin"},
    ("aura_state", "signal.state"): {"signal", "operator", "admin"},
    ("aura_state", "ingest.cursor.replay.1d"): {"ingest", "operator", "admin"},
    ("aura_state", "optimizer.decision"): {"optimizer", "console", "operator", "admin"},
}
# Object stores -> who may read them: the candles (ingest writes them; signal and risk plan on them), the
# optimizer's inputs (the coordinator writes them, workers evaluate on them).
OBJECT_READ = {
    "aura_candles": {"ingest", "signal", "risk", "console", "operator", "admin"},
    "aura_opt_inputs": {"optimizer", "worker", "operator", "admin"},
}
# Another principal's durable consumer: its info (the admin credential manages) and its acks (its owner alone).
CONSUMER_INFO = {"executor": {"executor", "admin"}, "risk": {"risk", "admin"}}
CONSUMER_ACK = {"executor": {"executor"}, "risk": {"risk"}}
STREAMS = {"aura.data.ready": "AURA_DATA", "aura.data.stale": "AURA_DATA", "aura.exec.snapshots": "AURA_EXEC",
           "aura.plans.approved": "AURA_PLANS", "aura.signal.targets": "AURA_TARGETS",
           "aura.events.risk": "AURA_EVENTS", "aura.optimize.results": "AURA_OPT_RESULTS"}
# Reading a stream's history by sequence (what the console's pages need): the console, the operator and admin.
HISTORY = {"AURA_PLANS": {"operator", "console", "admin"}, "AURA_EXEC": {"operator", "console", "admin"},
           "AURA_DLQ": {"operator", "console", "admin"}, "AURA_EVENTS": {"operator", "console", "admin"}}
# Durable consumers: each only by its own service (the admin credential manages, and can pull from any; the
# operator's CLI cannot take a service's messages).
CONSUME = {spec.durable: {name, "admin"} for name, spec in CONSUMERS.items()}


class Probe:
    """One connection; classifies each request as allowed (JetStream or a service answered) or refused (the server
    said so).  JetStream's API is asked where the principal's own account reaches it (``local_subject``)."""

    def __init__(self, nc: Any, errors: list[str], principal: str) -> None:
        self.nc, self.errors, self.principal = nc, errors, principal

    def refused(self, subject: str) -> bool:
        """The server said so: its permission error names this exact subject."""
        return any(f'"{subject.lower()}"' in e.lower() for e in self.errors)

    async def attempt(self, subject: str, payload: bytes = b"{}", headers: dict[str, str] | None = None) -> str:
        # A refusal arrives at once (the server's -ERR) while the request waits for a reply that never comes:
        # it counts as soon as it is there instead of after the request's timeout.  An allowed request is
        # answered.  Under load an answer can take a while, so silence is asked once more before it counts as
        # "no answer" (a failure).
        subject = local_subject(self.principal, subject)
        for _ in range(2):
            request = asyncio.ensure_future(self.nc.request(subject, payload, timeout=3.0, headers=headers))
            while not request.done() and not self.refused(subject):
                await asyncio.wait({request}, timeout=0.02)
            if not request.done():
                request.cancel()
                await asyncio.gather(request, return_exceptions=True)
                return "refused"
            if request.exception() is None:
                # An account without the import is answered too, by the server: "JetStream not enabled".
                return "refused" if b'"err_code":10039' in request.result().data else "allowed"
            await asyncio.sleep(0.05)
            if self.refused(subject):
                return "refused"
        return "no answer"


async def probe_for(endpoint: NatsEndpoint, principal: str) -> Probe:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    options = client_options(endpoint.settings(), principal)
    nc = await nats.connect(endpoint.url, error_cb=on_error, allow_reconnect=False, **options)
    return Probe(nc, errors, principal)


def consumer_create(stream: str, durable: str | None = None) -> bytes:
    config: dict[str, Any] = {"ack_policy": "explicit", "deliver_subject": "aura.plans.approved"}
    if durable:
        config = {"durable_name": durable, "ack_policy": "explicit"}
    return json.dumps({"stream_name": stream, "config": config}).encode()


async def walk(endpoint: NatsEndpoint, principal: str) -> dict[str, str]:
    probe = await probe_for(endpoint, principal)
    jobs: dict[str, Any] = {}
    for subject in PUBLISH:
        jobs[f"publish {subject}"] = probe.attempt(subject)
    for bucket, key in KV_WRITE:
        jobs[f"kv {bucket}/{key}"] = probe.attempt(f"$KV.{bucket}.{key}")
    jobs["object write"] = probe.attempt("$O.aura_candles.C.probe")
    jobs["object write aura_opt_inputs"] = probe.attempt("$O.aura_opt_inputs.C.probe")
    for subject, stream in STREAMS.items():
        jobs[f"read {subject}"] = probe.attempt(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"")
    for stream in HISTORY:
        jobs[f"history {stream}"] = probe.attempt(f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": 1}).encode())
    for durable, spec in ((s.durable, s) for s in CONSUMERS.values()):
        jobs[f"consume {durable}"] = probe.attempt(f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{durable}",
                                                   json.dumps({"batch": 1, "no_wait": True}).encode())
    for bucket, key in KV_READ:
        jobs[f"kv read {bucket}/{key}"] = probe.attempt(f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key}", b"")
    for bucket in OBJECT_READ:
        jobs[f"object read {bucket}"] = probe.attempt(f"$JS.API.DIRECT.GET.OBJ_{bucket}",
                                                      json.dumps({"seq": 1}).encode())
    for durable in CONSUMER_INFO:
        spec = CONSUMERS[durable]
        jobs[f"consumer info {durable}"] = probe.attempt(f"$JS.API.CONSUMER.INFO.{spec.stream}.{durable}", b"")
    results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    # Acks are published, not requested (nobody answers an ack): refused shows as the server's permission error.
    for durable in CONSUMER_ACK:
        spec = CONSUMERS[durable]
        subject = f"$JS.ACK.{spec.stream}.{durable}.1.1.1.1700000000000000000.0"
        await probe.nc.publish(subject, b"+ACK")
        await probe.nc.flush()
        await asyncio.sleep(0.2)
        results[f"ack {durable}"] = "refused" if probe.refused(subject) else "allowed"
    # Management goes second: the admin credential may delete the executor's consumer, and a pull on a consumer deleted
    # a moment earlier has no responder, so running both at once made "consume executor" a race.
    manage: dict[str, Any] = {}
    for api in MANAGE:
        body = b"{}"
        if api.startswith("$JS.API.STREAM.CREATE"):
            body = json.dumps({"name": "EVIL", "subjects": ["evil.>"]}).encode()
        elif ".CONSUMER.DURABLE.CREATE." in api:
            body = consumer_create("AURA_PLANS", "evil")
        elif api.endswith("CONSUMER.CREATE.AURA_PLANS"):
            body = consumer_create("AURA_PLANS")
        elif ".STREAM.PURGE.OBJ_" in api:  # an allowed probe purges nothing: a chunk subject no object uses
            body = json.dumps({"filter": f"$O.{api.rsplit('OBJ_', 1)[1]}.C.probe"}).encode()
        manage[f"manage {api}"] = probe.attempt(api, body)
    results.update(zip(manage, await asyncio.gather(*manage.values()), strict=True))
    # A plain subscription to the plans subject: nobody may listen in on it outside JetStream.
    await probe.nc.subscribe("aura.plans.approved")
    await probe.nc.flush()
    await asyncio.sleep(0.2)
    results["subscribe aura.plans.approved"] = (
        "refused" if any("subscription to \"aura.plans.approved\"" in e.lower() for e in probe.errors) else "allowed")
    await probe.nc.close()
    return results


def expected(principal: str) -> dict[str, str]:
    def word(ok: bool) -> str:
        return "allowed" if ok else "refused"

    out = {f"publish {s}": word(principal in who) for s, who in PUBLISH.items()}
    out.update({f"kv {b}/{k}": word(principal in who) for (b, k), who in KV_WRITE.items()})
    out["object write"] = word(principal in OBJECT_WRITE)
    out["object write aura_opt_inputs"] = word(principal in OPT_INPUTS_WRITE)
    out.update({f"manage {api}": word(principal in who) for api, who in MANAGE.items()})
    out.update({f"read {s}": word(principal in who) for s, who in READ.items()})
    out.update({f"history {s}": word(principal in who) for s, who in HISTORY.items()})
    out.update({f"consume {d}": word(principal in who) for d, who in CONSUME.items()})
    out.update({f"kv read {b}/{k}": word(principal in who) for (b, k), who in KV_READ.items()})
    out.update({f"object read {b}": word(principal in who) for b, who in OBJECT_READ.items()})
    out.update({f"consumer info {d}": word(principal in who) for d, who in CONSUMER_INFO.items()})
    out.update({f"ack {d}": word(principal in who) for d, who in CONSUMER_ACK.items()})
    out["subscribe aura.plans.approved"] = word(False)  # plans are read through JetStream, never tapped
    return out


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_each_credential_holds_exactly_the_rights_the_matrix_grants(nats_server: NatsEndpoint,
                                                                     principal: str) -> None:
    observed = asyncio.run(walk(nats_server, principal))
    want = expected(principal)
    wrong = {op: (observed[op], want[op]) for op in want if observed[op] != want[op]}
    assert not wrong, f"{principal}: (observed, required) differ for {wrong}"


def test_an_anonymous_client_gets_no_connection(nats_server: NatsEndpoint) -> None:
    async def scenario() -> str:
        try:
            nc = await nats.connect(nats_server.url, allow_reconnect=False, max_reconnect_attempts=0,
                                    connect_timeout=3, error_cb=_quiet)
        except Exception as exc:
            return str(exc)
        await nc.close()
        return "connected"

    assert "authorization violation" in asyncio.run(scenario()).lower()


def test_a_credential_cannot_borrow_another_principals_inbox(nats_server: NatsEndpoint) -> None:
    """Replies to one principal's requests (publish acks, API answers) are readable by that principal only."""

    async def scenario() -> list[str]:
        probe = await probe_for(nats_server, "signal")
        await probe.nc.subscribe(f"{inbox_prefix('risk')}.>")
        await probe.nc.flush()
        await asyncio.sleep(0.2)
        await probe.nc.close()
        return probe.errors

    errors = asyncio.run(scenario())
    assert any("permissions violation for subscription" in e.lower() for e in errors), errors


def test_architecture_md_shows_the_matrix_the_server_is_configured_with() -> None:
    text = (REPO_ROOT / "ARCHITECTURE.md").read_text()
    begin, end = "<!-- permission-matrix:begin -->", "<!-- permission-matrix:end -->"
    assert begin in text and end in text, "ARCHITECTURE.md lacks the permission matrix markers"
    shown = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert shown == matrix_markdown().strip(), "ARCHITECTURE.md's matrix is out of date: `aura bus matrix` prints it"


async def _quiet(_exc: Exception) -> None:
    return None


def test_what_all_writers_can_keep_in_the_state_bucket_is_below_its_limit() -> None:
    """Exact keys x history x value size: no writer, nor all of them together, can fill aura_state."""
    history, value_size, max_bytes = BUCKETS["aura_state"]
    config = next(c for c in stream_configs(120.0) if c.name == "KV_aura_state")
    assert config.allow_rollup_hdrs is False and config.deny_purge and config.deny_delete
    assert config.max_msgs_per_subject == history and config.max_msg_size == value_size
    assert state_bytes_bound(history, value_size) * 2 < max_bytes == config.max_bytes
    granted = {s.split("$KV.aura_state.", 1)[1] for p in PRINCIPALS for s in permissions(p).publish
               if s.startswith("$KV.aura_state.")}
    assert granted == {k for keys in WRITERS.values() for k in keys}, "the matrix grants exactly the named keys"



def test_a_bus_provisioned_before_the_state_limits_is_brought_under_them(tmp_path: Path) -> None:
    """A bus whose state bucket still accepts rollups and purges (the earlier provisioning) is updated in place by the
    next `aura bus provision` / `aura up`, keys kept: the defence reaches deployed systems, not only new ones.  (A
    bare JetStream server: the earlier configuration cannot be recreated on a bus provisioned the new way, where the
    server refuses to take deny_purge back.)"""
    port = free_port()
    server = subprocess.Popen([nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def scenario() -> tuple[bool, bool, bytes, str]:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=10)
        try:
            js = nc.jetstream()
            new = next(c for c in stream_configs(120.0) if c.name == "KV_aura_state")
            await js.add_stream(dataclasses.replace(new, allow_rollup_hdrs=True, deny_purge=False))
            kv = await js.key_value("aura_state")
            await kv.put("risk.halted", b"kept")
            await provision_bus(js, 120.0)
            info = await js.stream_info("KV_aura_state")
            try:
                await js.publish("$KV.aura_state.signal.state", b"{}", headers={"Nats-Rollup": "all"})
                rollup = "accepted"
            except Exception as exc:
                rollup = str(exc)
            kept = (await kv.get("risk.halted")).value or b""
            return bool(info.config.allow_rollup_hdrs), bool(info.config.deny_purge), kept, rollup
        finally:
            await nc.close()

    try:
        rollups, deny_purge, kept, rollup = asyncio.run(scenario())
    finally:
        server.terminate()
        server.wait(10)
    assert (rollups, deny_purge, kept) == (False, True, b"kept")
    assert "rollup not permitted" in rollup

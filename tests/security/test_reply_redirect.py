"""A pull request's reply subject, pointed at the JetStream management API, changes nothing.

A consumer names the reply subject of its own pull requests and nats-server checks no permission on it.  With
nothing pending the server answers a pull with an empty status message ("404 No Messages" for no_wait, "408
Request Timeout" when it expires) on that subject.  When every principal shared JetStream's account, an empty
message on ``$JS.API.CONSUMER.DELETE.<stream>.<durable>`` or ``$JS.API.STREAM.PURGE.<stream>`` was run as a
management request with the account's full rights: signal deleted the executor's consumer, the console purged the
plans stream, anyone deleted the bucket holding the kill-switch latch.  Each principal now has an account of its
own (shared/bus_access.py, ``server_config``): the answer lands there, where only its own imports are.

Run against a real nats-server with every credential that may pull; the admin credential then checks that every
stream, consumer, message and KV entry is still there.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nats
import pytest

from shared.bus import client_options
from shared.bus_access import covers, local_subject, permissions
from shared.contracts import CONSUMERS
from shared.provision import stream_configs
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# Management requests that take an empty body, each aimed at what another service (or the whole system) needs.
TARGETS = (
    "$JS.API.CONSUMER.DELETE.AURA_PLANS.executor",  # the executor stops executing plans, stop-loss exits included
    "$JS.API.CONSUMER.DELETE.AURA_TARGETS.risk",  # risk stops signing plans
    "$JS.API.STREAM.PURGE.AURA_PLANS",
    "$JS.API.STREAM.PURGE.KV_aura_state",  # the kill-switch latch and every service's state
    "$JS.API.STREAM.DELETE.KV_aura_state",
    "$JS.API.STREAM.DELETE.AURA_DLQ",
    # Not management, but as harmful: an empty message stored as the latch or as the live parameters.
    "$KV.aura_state.risk.halted",
    "$KV.aura_params.strategy",
    "aura.plans.approved",
)


async def _state(system: NatsEndpoint) -> dict[str, Any]:
    """What exists, seen with the admin credential: each stream's message count and each consumer."""
    nc = await system.connect("admin")
    try:
        js = nc.jetstream()
        out: dict[str, Any] = {}
        for cfg in stream_configs(120.0):
            info = await js.stream_info(cfg.name)
            out[cfg.name] = info.state.messages
        for spec in CONSUMERS.values():
            info = await js.consumer_info(spec.stream, spec.durable)
            out[f"{spec.stream}/{spec.durable}"] = info.name
        for bucket in ("aura_state", "aura_params"):
            info = await js.stream_info(f"KV_{bucket}")
            out[f"KV_{bucket}"] = info.state.messages
        return out
    finally:
        await nc.close()


@pytest.mark.parametrize("principal", sorted(CONSUMERS))
def test_a_pull_answered_on_a_management_subject_manages_nothing(nats_server: NatsEndpoint, principal: str) -> None:
    spec = CONSUMERS[principal]
    # Where the principal's own account reaches its consumer (its user may publish nothing else there).
    pull = local_subject(principal, f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}")
    # Each management target under JetStream's own name and under the name the principal's account imports
    # JetStream's API by.  What the principal may publish itself (risk the plans and the latch, the optimizer the
    # parameters) it may as well have an empty answer published on: no right gained, and the signatures keep such
    # a message harmless.
    own = permissions(principal).publish
    named = dict.fromkeys([*TARGETS, *(local_subject(principal, t) for t in TARGETS)])
    targets = [t for t in named if not any(covers(p, t) for p in own)]
    assert len(targets) >= len(TARGETS) - 2

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str, list[str]]:
        before = await _state(nats_server)
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(nats_server.url, error_cb=on_error, allow_reconnect=False,
                                **client_options(nats_server.settings(), principal))
        try:
            # The pull itself is allowed and answered: with nothing pending, an empty "404 No Messages".
            answer = await nc.request(pull, json.dumps({"batch": 1, "no_wait": True}).encode(), timeout=3)
            status = (answer.headers or {}).get("Status", "")
            for target in targets:
                # Both empty answers: "404 No Messages" at once, "408 Request Timeout" when the pull expires.
                await nc.publish(pull, json.dumps({"batch": 1, "no_wait": True}).encode(), reply=target)
                await nc.publish(pull, json.dumps({"batch": 1, "expires": 50_000_000}).encode(), reply=target)
            await nc.flush()
            await asyncio.sleep(0.5)  # the 50 ms pulls have expired and been answered
        finally:
            await nc.close()
        return before, await _state(nats_server), status, errors

    try:
        before, after, status, errors = asyncio.run(scenario())
    except Exception as exc:  # a consumer or stream gone: the admin's info request fails
        pytest.fail(f"{principal}'s redirected pull answers destroyed something: {type(exc).__name__}: {exc}")
    assert status == "404", f"{principal}'s pull was not answered as an empty pull ({status!r})"
    assert not [e for e in errors if "permissions violation" in e.lower()], errors  # every pull was sent
    assert after == before, f"{principal}'s redirected pull answers changed the bus: {before} -> {after}"

"""On a real nats-server: work that outlasts its consumer's ack wait stays with the process doing it for as long
as that process heartbeats (in-progress acks), and goes to another puller once the ack wait passes without one.

Two heartbeats keep long work from being handed out twice: the optimizer worker's ``Heartbeat`` (ticked between
evaluations that hold the event loop, as the fast backtester's do) and the executor's ``_keep_in_progress`` (a task
beside a plan that waits on the exchange).  Each is held three ack waits long while a second puller of the same
durable has a pull request open the whole time: with the heartbeat nothing reaches it, and the server counts no
redelivery; the control, the same hold with no heartbeat, hands the message to the second puller, so the check
can fail.  Ack waits are shortened to ACK_WAIT_S (two seconds) on a lab server (the admin credential provisions them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
import nats.errors
import pytest

from services.executor import service as executor_service
from services.optimizer.worker import Heartbeat
from shared.bus import durable_pull, session
from shared.contracts import CONSUMERS, ApprovedPlan, OptTask
from shared.provision import provision_bus
from tests.bus_helpers import role_connections
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
# Beats every third of it: a stall of the test process or the server longer than two beats (2/3 of this) between
# two of them is a redelivery the code did not cause; at 1 s that was 0.67 s, within reach of a loaded CI machine.
ACK_WAIT_S = 2.0
HOLD_S = 3 * ACK_WAIT_S + 0.5
# (consumer, who publishes on its subject, who consumes it)
WORKER = ("worker", OptTask.SUBJECT, "optimizer", "worker")
EXECUTOR = ("executor", ApprovedPlan.SUBJECT, "risk", "executor")

Hold = Callable[[Any], Awaitable[None]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    """A secured server whose worker and executor consumers have a short ack wait (ACK_WAIT_S)."""
    endpoint = NatsEndpoint(tmp_path_factory.mktemp("inprogress"))

    async def shorten() -> None:
        async with session(endpoint.settings(), "admin") as nc:
            js = nc.jetstream()
            short = {}
            for name in ("worker", "executor"):
                spec = CONSUMERS[name]
                await js.delete_consumer(spec.stream, spec.durable)
                short[name] = msgspec.structs.replace(spec, ack_wait_s=ACK_WAIT_S)
            await provision_bus(js, 120.0, consumers=short)

    asyncio.run(shorten())
    yield endpoint
    endpoint.stop()


async def evaluations_with_heartbeat(msg: Any) -> None:
    """The worker's way: blocking evaluations (50 ms each, the event loop held), a tick between them."""
    beat = Heartbeat(msg, ACK_WAIT_S / 3)
    deadline = time.monotonic() + HOLD_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        await beat.tick()


async def evaluations_without_heartbeat(msg: Any) -> None:
    deadline = time.monotonic() + HOLD_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        await asyncio.sleep(0)


async def plan_with_heartbeat(msg: Any) -> None:
    """The executor's way: a task beside a plan that awaits the exchange."""
    heartbeat = asyncio.create_task(executor_service.Executor._keep_in_progress(msg))
    try:
        await asyncio.sleep(HOLD_S)
    finally:
        heartbeat.cancel()


async def plan_without_heartbeat(msg: Any) -> None:
    await asyncio.sleep(HOLD_S)


def hold_once(lab: NatsEndpoint, roles: tuple[str, str, str, str], hold: Hold) -> dict[str, Any]:
    """Publish one message, pull it, ``hold`` it while a second puller waits, ack; what the second puller and the
    server saw."""
    name, subject, publisher, consumer = roles
    spec = CONSUMERS[name]

    async def scenario() -> dict[str, Any]:
        settings = lab.settings()
        async with role_connections(settings, publisher, "admin") as js, \
                role_connections(settings, consumer) as first, role_connections(settings, consumer) as second:
            before = await js["admin"].consumer_info(spec.stream, spec.durable)
            await js[publisher].publish(subject, b"long work")
            holder = await durable_pull(first[consumer], spec)
            other = await durable_pull(second[consumer], spec)
            [msg] = await holder.fetch(1, timeout=10)
            # The other puller's request is open for the whole hold: a redelivery would be its to take.
            waiting = asyncio.create_task(other.fetch(1, timeout=HOLD_S + 1.0))
            await asyncio.sleep(0.1)  # its pull request reaches the server before the hold starts
            await hold(msg)
            await msg.ack()
            try:
                taken = await waiting
            except nats.errors.TimeoutError:
                taken = []
            for late in taken:
                await late.ack()
            deadline = time.monotonic() + 10
            while (after := await js["admin"].consumer_info(spec.stream, spec.durable)).num_ack_pending:
                assert time.monotonic() < deadline, "the acks never settled the message"
                await asyncio.sleep(0.05)
            return {"taken": [(m.data, m.metadata.num_delivered) for m in taken],
                    "redelivered": after.delivered.consumer_seq - before.delivered.consumer_seq - 1,
                    "stream_seqs": after.delivered.stream_seq - before.delivered.stream_seq}

    return asyncio.run(scenario())


@pytest.mark.parametrize(("roles", "hold"), [(WORKER, evaluations_with_heartbeat), (EXECUTOR, plan_with_heartbeat)],
                         ids=["worker", "executor"])
def test_work_that_heartbeats_stays_with_its_holder_past_the_ack_wait(lab: NatsEndpoint,
                                                                      roles: tuple[str, str, str, str],
                                                                      hold: Hold, monkeypatch: pytest.MonkeyPatch,
                                                                      ) -> None:
    monkeypatch.setattr(executor_service, "ACK_WAIT_S", ACK_WAIT_S)  # the executor's beat follows its ack wait
    seen = hold_once(lab, roles, hold)
    assert seen["taken"] == [], f"redelivered to another puller during a heartbeat-kept hold: {seen}"
    assert seen["redelivered"] == 0 and seen["stream_seqs"] == 1, f"the server delivered it more than once: {seen}"


@pytest.mark.parametrize(("roles", "hold"), [(WORKER, evaluations_without_heartbeat),
                                             (EXECUTOR, plan_without_heartbeat)], ids=["worker", "executor"])
def test_without_the_heartbeat_the_same_hold_loses_the_work(lab: NatsEndpoint, roles: tuple[str, str, str, str],
                                                            hold: Hold) -> None:
    seen = hold_once(lab, roles, hold)
    assert seen["taken"] == [(b"long work", 2)], f"the control kept its message past the ack wait: {seen}"
    assert seen["redelivered"] == 1 and seen["stream_seqs"] == 1, seen

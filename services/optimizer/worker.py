"""An optimizer worker: takes tasks from the work queue, evaluates them, publishes the answers.

    python -m services.optimizer.worker          # as many as you like; compose: --scale optimizer-worker=N

It runs as the ``worker`` principal, whose rights are exactly this: consume ``aura.optimize.tasks`` through the
shared durable consumer, read the inputs the coordinator wrote to ``aura_opt_inputs``, publish on
``aura.optimize.results`` and its own dead letters.  It holds no signing key and cannot touch the live
parameters or any trading subject (shared/bus_access.py).

The work is aura/optimize/tasks.py; this is the shell around it.  A task is acked only after its answer is
stored in the results stream (its ``Nats-Msg-Id`` derived from the task's id, shared.bus.msg_id_header), so a
worker killed at any point leaves the task to be redelivered after the consumer's ack wait, and the duplicate
answer, if one was already stored, is dropped by the stream or the coordinator's store.  A long task keeps its
claim with in-progress acks between evaluations.  A task that fails is retried with a delay on its next
delivery; on the last one (``max_deliver``) it is dead-lettered and answered with the error, so the coordinator
stops instead of waiting.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aura.optimize.tasks import (
    CSCV_KIND,
    EVAL,
    SPA_KIND,
    EvalInputs,
    Evaluator,
    TaskError,
    decode_matrix,
    digest,
    engine_fingerprint,
    run_cscv,
    run_spa,
    warm_up,
)
from shared.bus import dead_letter, durable_pull, msg_id_header, settle_refused
from shared.consumer import RedeliveryAlarm, pull_loop
from shared.contracts import (
    CONSUMERS,
    OPT_INPUTS_BUCKET,
    OPT_INPUTS_OBJECT_MAX_BYTES,
    ContractError,
    OptOutcome,
    OptResult,
    OptTask,
    decode,
    encode,
)
from shared.logging import error, info
from shared.objects import ObjectTooLarge, read_object
from shared.service import ServiceContext, run_service

SPEC = CONSUMERS["worker"]
RETRY_DELAY_S = 2.0


class EngineMismatch(TaskError):
    """The task was made for other evaluation code: another worker may run it, this one must not."""


class Heartbeat:
    """In-progress acks while a task is worked on, and a moment for the event loop between evaluations."""

    def __init__(self, msg: Msg, every_s: float) -> None:
        self.msg, self.every_s, self.last = msg, every_s, time.monotonic()

    async def tick(self) -> None:
        if time.monotonic() - self.last >= self.every_s:
            await self.msg.in_progress()
            self.last = time.monotonic()
        await asyncio.sleep(0)  # NATS pings and /readyz are answered between evaluations


class Worker:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.engine = engine_fingerprint()
        self.evaluators: OrderedDict[str, Evaluator] = OrderedDict()  # by inputs digest, most recent last
        self.current = ""
        self.step = (0, 0)  # evaluations done and in all, of the current task
        self.done = 0
        self.failed = 0

    def check(self) -> tuple[bool, str]:
        text = f"{self.done} tasks answered, {self.failed} failed"
        if not self.current:
            return True, text + "; idle"
        return True, text + f"; working on {self.current}: {self.step[0]} of {self.step[1]} evaluations done"

    async def handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered if msg.metadata else 1
        try:
            task = decode(msg.data, OptTask)
        except ContractError as exc:
            recorded = await dead_letter(self.ctx.js, self.ctx.logger, "worker", msg.subject, "malformed task",
                                         str(exc), msg.data)
            await settle_refused(msg, recorded, self.ctx.logger)
            return
        self.current = task.task_id
        try:
            if task.engine != self.engine:
                raise EngineMismatch(f"task made for evaluation code {task.engine}, this worker runs {self.engine} "
                                     "(workers and coordinator must run the same version)")
            outcomes = await self.compute(task, Heartbeat(msg, SPEC.ack_wait_s / 3))
        except Exception as exc:
            await self.failure(msg, task, deliveries, exc)
            return
        finally:
            self.current = ""
        await self.answer(msg, OptResult(task_id=task.task_id, outcomes=outcomes, deliveries=deliveries))
        await msg.ack()  # only now: the answer is stored in its stream
        self.done += 1

    async def compute(self, task: OptTask, beat: Heartbeat) -> list[OptOutcome]:
        if task.kind == EVAL:
            self.step = (0, len(task.params) * len(task.windows))
            evaluator = await self.evaluator(task.inputs)
            outcomes = []
            for outcome in evaluator.run(task):
                outcomes.append(outcome)
                self.step = (len(outcomes), self.step[1])
                await beat.tick()
            return outcomes
        if task.kind in (CSCV_KIND, SPA_KIND):
            data = await read_inputs(self.ctx.js, task.inputs)
            if digest(data) != task.inputs:
                raise ValueError(f"object {task.inputs[:16]} does not hash to its name")
            await beat.tick()
            run = run_cscv if task.kind == CSCV_KIND else run_spa
            # A statistic is one long call (an SPA on 730 bars x 432 trials takes seconds): in a thread, so the
            # heartbeat keeps the task ours past its ack wait and /readyz answers meanwhile.
            job = asyncio.create_task(asyncio.to_thread(run, task, decode_matrix(data)))
            while not (await asyncio.wait({job}, timeout=1.0))[0]:
                await beat.tick()
            return [job.result()]
        raise TaskError(f"unknown task kind {task.kind!r}")

    async def evaluator(self, inputs: str) -> Evaluator:
        found = self.evaluators.get(inputs)
        if found is None:
            data = await read_inputs(self.ctx.js, inputs)
            if digest(data) != inputs:
                raise ValueError(f"inputs object {inputs[:16]} does not hash to its name")
            found = Evaluator(EvalInputs.decode(data))
            info(self.ctx.logger, "TASK", "inputs loaded", inputs=inputs[:16], symbols=len(found.inputs.panel.symbols),
                 bars=len(found.inputs.panel.timestamps))
            while len(self.evaluators) >= 2:  # a worker serves one run at a time; keep the previous one too
                self.evaluators.popitem(last=False)
        self.evaluators[inputs] = found
        self.evaluators.move_to_end(inputs)
        return found

    async def answer(self, msg: Msg, result: OptResult) -> None:
        # Named after the task message (its stream sequence stays the same across redeliveries): a redelivered
        # task's second answer is dropped by the stream's duplicate window, while the same task published again
        # (a coordinator that restarted without its store) is a new message and gets its answer through.
        seq = msg.metadata.sequence.stream if msg.metadata else 0
        await self.ctx.js.publish(OptResult.SUBJECT, encode(result), stream="AURA_OPT_RESULTS",
                                  headers=msg_id_header(self.ctx.js, OptResult.SUBJECT, f"r-{result.task_id}-{seq}"),
                                  timeout=10)

    async def failure(self, msg: Msg, task: OptTask, deliveries: int, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {exc}"[:1500]
        final = deliveries >= SPEC.max_deliver or (isinstance(exc, TaskError) and not isinstance(exc, EngineMismatch))
        error(self.ctx.logger, "TASK", "task failed" + ("; giving up" if final else "; it will be retried"),
              task=task.task_id, deliveries=deliveries, error=why[:300])
        if not final:
            await msg.nak(delay=RETRY_DELAY_S)
            return
        self.failed += 1
        await dead_letter(self.ctx.js, self.ctx.logger, "worker", msg.subject, "task failed", why, msg.data)
        await self.answer(msg, OptResult(task_id=task.task_id, outcomes=[], error=why, deliveries=deliveries))
        await msg.term()


async def read_inputs(js: JetStreamContext, name: str) -> bytes:
    """An input object, bounded: one over OPT_INPUTS_OBJECT_MAX_BYTES (its meta is its writer's word, and a
    compromised coordinator may lie) is a task no delivery can run, refused at once, not retried."""
    try:
        return await read_object(js, OPT_INPUTS_BUCKET, name, OPT_INPUTS_OBJECT_MAX_BYTES)
    except ObjectTooLarge as exc:
        raise TaskError(str(exc)) from exc


async def warm(ctx: ServiceContext) -> None:
    """The fast backtester's kernels, compiled before the first task (in a thread: /readyz keeps answering)."""
    ctx.health.checks["kernels"] = lambda: (False, "compiling the backtester's kernels")
    seconds = await asyncio.to_thread(warm_up)
    ctx.health.checks["kernels"] = lambda: (True, f"ready in {seconds:.1f}s")


async def run(ctx: ServiceContext) -> None:
    await warm(ctx)
    worker = Worker(ctx)
    ctx.health.checks["tasks"] = worker.check
    sub = await durable_pull(ctx.js, SPEC)
    info(ctx.logger, "BOOT", "optimizer worker taking tasks", engine=worker.engine)
    await pull_loop(sub, worker.handle, ctx.stop, ctx.logger, RedeliveryAlarm(ctx.health, "tasks"))


if __name__ == "__main__":
    # No events: a worker is not a pipeline service and holds no right to publish on aura.events.
    sys.exit(run_service("worker", run, events=False))

"""The optimizer's coordinator on the bus: drives a walk-forward run (aura/optimize/plan.py) with remote workers.

It runs as the ``optimizer`` principal.  It writes the run's inputs (panel, rules, benchmarks) to the object store
``aura_opt_inputs`` under their digest, publishes tasks on the work queue ``aura.optimize.tasks``, and takes the
answers from its durable consumer on ``aura.optimize.results``.  Every answer goes into its own result store (a
SQLite file, never the executor's journal) under its content key, and is acked only once stored; the run pulls
what it needs from that store.  So:

* a task redelivered after its worker died (kill -9) answers under the same keys with the same numbers: stored
  once, it changes nothing;
* a restarted coordinator with the same store replays what was stored, dispatches only what is missing, and the
  results the previous one had not acked yet are delivered to it;
* a task nobody answered for ``stall_s`` (its message lost) is published again; after ``MAX_STALLS`` such
  rounds in a row with no answer at all (a task that kills every worker that takes it, before it can dead-letter
  it; or no worker running) the run fails saying so, rather than publish it again every minute forever.  The
  answers stored so far stay: the same command resumes from them.

One coordinator per bus at a time: they would share the results consumer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from aura.backtest.engine import BacktestConfig
from aura.optimize.folds import Window
from aura.optimize.gate import GateDecision, GateSettings, SpaFold, spa_fold
from aura.optimize.objective import WindowResult
from aura.optimize.plan import Request, WalkForwardRun
from aura.optimize.stats import CSCV
from aura.optimize.tasks import (
    MAX_CSCV_SPLITS,
    EvalInputs,
    batches,
    cscv_key,
    cscv_result,
    cscv_task,
    digest,
    encode_matrix,
    engine_fingerprint,
    eval_key,
    eval_task,
    is_eval_key,
    settings_json,
    spa_key,
    spa_result,
    spa_settings,
    spa_task,
    window_result,
)
from shared.bus import durable_pull, msg_id_header
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
from shared.logging import info, warn
from shared.objects import ObjectTooLarge


def check_inputs_size(blob: bytes) -> None:
    """Refuse to write an input object no worker would read (OPT_INPUTS_OBJECT_MAX_BYTES): said once, at the start."""
    if len(blob) > OPT_INPUTS_OBJECT_MAX_BYTES:
        raise ObjectTooLarge(f"the optimizer's inputs take {len(blob):,} bytes, more than the "
                             f"{OPT_INPUTS_OBJECT_MAX_BYTES:,} a worker reads: fewer symbols or a shorter history")


class RunFailed(RuntimeError):
    """A task failed on every delivery (or no worker may run it): the run cannot finish."""


class ResultStore:
    """The coordinator's answers by content key, in one SQLite file (WAL).  A second, different answer for a key
    means an evaluation is not deterministic: refused loudly rather than silently kept or replaced."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        # A commit survives a crash of this process; after a power loss the newest answers may be computed again.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS outcomes (key TEXT PRIMARY KEY, outcome BLOB NOT NULL)")
        self.db.commit()
        self._cache: dict[str, OptOutcome] = {}
        # Every key held, in memory: a coordinator asks for every pending request on every answer, and most are
        # not there yet; a miss must not cost a query.
        self._keys: set[str] = {k for (k,) in self.db.execute("SELECT key FROM outcomes")}

    def get(self, key: str) -> OptOutcome | None:
        if key not in self._keys:
            return None
        found = self._cache.get(key)
        if found is None:
            row = self.db.execute("SELECT outcome FROM outcomes WHERE key = ?", (key,)).fetchone()
            if row is not None:
                found = self._cache[key] = msgspec.msgpack.decode(row[0], type=OptOutcome)
        return found

    def put(self, outcomes: list[OptOutcome]) -> int:
        """Store what is new (one transaction); returns how many keys were new."""
        fresh: dict[str, OptOutcome] = {}
        with self.db:
            for o in outcomes:
                known = fresh.get(o.key) or self.get(o.key)
                if known is not None:
                    if known != o:
                        raise RunFailed(f"two different answers for {o.key}: the evaluation is not deterministic "
                                        "(workers running other numerical libraries?)")
                    continue
                self.db.execute("INSERT INTO outcomes (key, outcome) VALUES (?, ?)", (o.key, msgspec.msgpack.encode(o)))
                fresh[o.key] = o
        # Known in memory only once committed: a refused batch is rolled back and leaves nothing behind.
        self._cache.update(fresh)
        self._keys.update(fresh)
        return len(fresh)

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])

    def close(self) -> None:
        self.db.close()


@dataclass
class Progress:
    evaluations: int = 0  # evaluations the run has recorded (replayed ones included)
    planned: int = 0  # what it will have made in all (an estimate until the last stage opens)
    replayed: int = 0  # answers found in the store at the start (a resumed run)
    received: int = 0  # answers received from workers in this life
    redelivered: int = 0  # answers to tasks delivered more than once (a worker died or failed on them)
    tasks: int = 0  # tasks published in this life
    phase: str = "starting"
    stages: dict[str, str] = field(default_factory=dict)


MAX_STALLS = 5  # rounds of ``stall_s`` without any answer before the run is given up


class Coordinator:
    def __init__(self, js: JetStreamContext, run: WalkForwardRun, inputs: EvalInputs, cfg: BacktestConfig,
                 store: ResultStore, gate: GateSettings, logger: logging.Logger,
                 on_progress: Callable[[Progress], None] | None = None, stall_s: float = 60.0) -> None:
        self.js, self.run, self.inputs, self.store, self.gate, self.logger = js, run, inputs, store, gate, logger
        self.on_progress = on_progress
        self.stall_s = stall_s
        self.blob = inputs.encode()
        self.inputs_digest = digest(self.blob)
        self.engine = engine_fingerprint()
        self.settings = settings_json(cfg)
        self.progress = Progress()
        # Task message ids are unique to this life: a task published again after a restart or a stall must reach
        # the queue even inside the duplicate window; answers are keyed by content, so a duplicate costs only time.
        self.session = os.urandom(4).hex()
        self._dispatched: dict[str, float] = {}  # answer key -> when its task was published
        self._keys: dict[tuple[str, type, int, int], str] = {}
        # The window of every evaluation published in this life, and the windows answered since the run last
        # advanced: the run scans only the selections those answers can move (None: scan them all, as after an
        # answer to a task of an earlier life, whose window this life does not know).
        self._window_of: dict[str, Window] = {}
        self._touched: set[Window] | None = None
        self._our_tasks: set[str] = set()
        # CSCV on the workers when its answer fits a message; otherwise the gate computes it here.
        self.remote_cscv = math.comb(gate.cscv_partitions, gate.cscv_partitions // 2) <= MAX_CSCV_SPLITS
        # (selection, stage) -> the stage's CSCV task (answer key, matrix digest, matrix bytes)
        self._matrices: dict[tuple[str, str], tuple[str, str, bytes]] = {}
        # Each fold selection's SPA on the workers too (about 0.2 s per benchmark at 432 models: seconds in all);
        # a selection without a choice has no matrix and no task (its p-values are NaN, decided here).
        self.spa_settings = spa_settings(gate.spa_reps, gate.spa_block_size, gate.spa_seed)
        self._spa_matrices: dict[str, tuple[str, str, bytes] | None] = {}  # selection label -> its SPA task

    # --- names and lookups ------------------------------------------------------------------------------------
    def key(self, req: Request) -> str:
        found = self._keys.get(req.ident)
        if found is None:
            found = self._keys[req.ident] = eval_key(self.inputs_digest, self.engine, self.settings, req.params,
                                                     req.window)
        return found

    def lookup(self, req: Request) -> WindowResult | None:
        outcome = self.store.get(self.key(req))
        return None if outcome is None else window_result(outcome, req.window, self.inputs.benchmarks)

    def _cscv_inputs(self) -> dict[tuple[str, str], tuple[str, str, bytes]]:
        """Every finished stage's matrix (the folds' and the final selection's), as (CSCV key, digest, bytes):
        known once, then kept."""
        for sel in self.run.selections:
            for stage in sel.runs:
                if stage.matrix is not None and (sel.label, stage.stage) not in self._matrices:
                    blob = encode_matrix(stage.matrix)
                    name = digest(blob)
                    self._matrices[sel.label, stage.stage] = (
                        cscv_key(name, self.engine, self.gate.cscv_partitions), name, blob)
        return self._matrices

    def cscv(self) -> list[CSCV] | None:
        """The CSCV of every stage in the gate's order (WalkForwardRun.matrices), or None while one is missing."""
        if not self.remote_cscv or not self.run.done:
            return None
        found = []
        for sel in self.run.selections:
            for stage in sel.runs:
                if stage.matrix is None:
                    continue
                outcome = self.store.get(self._cscv_inputs()[sel.label, stage.stage][0])
                if outcome is None:
                    return None
                found.append(cscv_result(outcome, self.gate.cscv_partitions))
        return found

    def _spa_inputs(self) -> dict[str, tuple[str, str, bytes] | None]:
        """Every finished selection's SPA matrix (the folds' and the final one's), as (SPA key, digest, bytes), or
        None without one: known once."""
        for sel in self.run.selections:
            if sel.done and sel.label not in self._spa_matrices:
                matrix = sel.selection().spa_matrix
                if matrix is None:
                    self._spa_matrices[sel.label] = None
                    continue
                blob = encode_matrix(matrix)
                name = digest(blob)
                self._spa_matrices[sel.label] = (spa_key(name, self.engine, self.spa_settings), name, blob)
        return self._spa_matrices

    def spa(self) -> list[SpaFold] | None:
        """Every selection's SPA (the folds' and the final one's), or None while one is missing."""
        if not self.run.done:
            return None
        names = self.inputs.benchmarks.names
        found = []
        for sel in self.run.selections:
            entry, key = self._spa_inputs()[sel.label], self.run.spa_key(sel.label)
            if entry is None:
                found.append(spa_fold(key, None, names, self.gate))
                continue
            outcome = self.store.get(entry[0])
            if outcome is None:
                return None
            found.append(spa_result(outcome, key, names))
        return found

    # --- the loop -----------------------------------------------------------------------------------------------
    async def execute(self) -> GateDecision:
        """Run to the end and return the gate's decision."""
        await self._put_object(self.inputs_digest, self.blob)
        sub = await durable_pull(self.js, CONSUMERS["optimizer"])
        while self.run.advance(self.lookup):
            pass
        self.progress.replayed = self.run.evaluations()
        if self.progress.replayed:
            info(self.logger, "OPTIMIZE", "resumed from the result store", replayed=self.progress.replayed,
                 store=str(self.store.path))
        last_answer = time.monotonic()
        changed, stalls = True, 0
        while True:
            if changed:  # the state only moves when answers arrive: no rescan of every pending request otherwise
                touched, self._touched = self._touched, set()
                while self.run.advance(self.lookup, touched):
                    pass
                cscv, spa = self.cscv(), self.spa()
                if self.run.done and (cscv is not None or not self.remote_cscv) and spa is not None:
                    break
                self._report("searching" if not self.run.done else "deflating (CSCV, SPA)")
                await self._dispatch()
            changed = await self._collect(sub)
            if changed:
                last_answer, stalls = time.monotonic(), 0
            elif time.monotonic() - last_answer > self.stall_s:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise RunFailed(f"no worker answered for {MAX_STALLS} rounds of {self.stall_s:.0f} s with "
                                    f"{len(self._dispatched)} tasks waiting: a task that kills the workers that "
                                    "take it, or no worker running (see the workers' logs); the answers stored so "
                                    "far stay, and the same command resumes from them")
                warn(self.logger, "OPTIMIZE", "no answer for a while; publishing the missing tasks again (are "
                     "workers running?)", waiting=len(self._dispatched), seconds=round(self.stall_s), round=stalls)
                self._dispatched.clear()
                last_answer, changed = time.monotonic(), True
        self._report("judging")
        decision = self.run.decide(self.gate, cscv, spa)
        self._report("done")
        return decision

    async def _dispatch(self) -> None:
        now = time.monotonic()
        wanted = [r for r in self.run.requests() if self.key(r) not in self._dispatched]
        tasks = []
        for params, window in batches([(r.params, r.window) for r in wanted]):
            tasks.append(eval_task(self.inputs_digest, self.engine, self.settings, params, [window]))
        for r in wanted:
            key = self.key(r)
            self._dispatched[key] = now
            self._window_of[key] = r.window
        # The statistics not yet asked for: each matrix once in the object store, then its task (CSCV or SPA).
        statistics = [(entry, cscv_task, self.gate.cscv_partitions)
                      for entry in (self._cscv_inputs().values() if self.remote_cscv else ())]
        statistics += [(entry, spa_task, self.spa_settings) for entry in self._spa_inputs().values() if entry]
        for (key, matrix_digest, blob), make_task, setting in statistics:
            if key in self._dispatched or self.store.get(key) is not None:
                continue
            await self._put_object(matrix_digest, blob)
            tasks.append(make_task(matrix_digest, self.engine, setting))  # type: ignore[operator]
            self._dispatched[key] = now
        # Published together: each publish waits for its ack, and workers should not wait for the last one.
        await asyncio.gather(*(self._publish(task, self.progress.tasks + i) for i, task in enumerate(tasks)))
        self.progress.tasks += len(tasks)

    async def _publish(self, task: OptTask, number: int) -> None:
        self._our_tasks.add(task.task_id)
        msg_id = f"{task.task_id}.{self.session}.{number}"
        await self.js.publish(OptTask.SUBJECT, encode(task), stream="AURA_OPT_TASKS",
                              headers=msg_id_header(self.js, OptTask.SUBJECT, msg_id), timeout=10)

    async def _collect(self, sub: JetStreamContext.PullSubscription) -> bool:
        """Store and ack the answers waiting (at most a short wait); True if any arrived."""
        try:
            msgs = await sub.fetch(256, timeout=0.2)
        except (TimeoutError, nats.errors.TimeoutError):
            return False
        readable, outcomes = [], []
        for msg in msgs:
            try:
                result = decode(msg.data, OptResult)
            except ContractError as exc:
                warn(self.logger, "OPTIMIZE", "unreadable result dropped", error=str(exc)[:200])
                await msg.term()
                continue
            if result.error:
                if result.task_id in self._our_tasks:
                    raise RunFailed(f"task {result.task_id} failed: {result.error}")
                warn(self.logger, "OPTIMIZE", "a task of another run failed", task=result.task_id,
                     error=result.error[:200])
            outcomes += result.outcomes
            if result.deliveries > 1:
                self.progress.redelivered += 1
            readable.append(msg)
        # One transaction for the whole fetch, then the acks: an answer is acknowledged only once it is stored.
        self.progress.received += self.store.put(outcomes)
        windows = [self._window_of.get(o.key) for o in outcomes if is_eval_key(o.key)]
        if self._touched is not None and all(w is not None for w in windows):
            self._touched.update(w for w in windows if w is not None)
        else:
            self._touched = None
        for msg in readable:
            await msg.ack()
        return bool(msgs)

    async def _put_object(self, name: str, blob: bytes) -> None:
        check_inputs_size(blob)
        store = await self.js.object_store(OPT_INPUTS_BUCKET)
        try:
            await store.get_info(name)
            return  # content-named: an object of that name holds these bytes already
        except NotFoundError:
            pass
        await store.put(name, blob)

    def _report(self, phase: str) -> None:
        p = self.progress
        p.phase, p.stages = phase, self.run.stages()
        p.evaluations, p.planned = self.run.evaluations(), self.run.planned()
        if self.on_progress is not None:
            self.on_progress(p)

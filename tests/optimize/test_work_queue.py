"""The optimizer's work queue on a real secured nats-server, with real worker processes
(``python -m services.optimizer.worker``, each with the ``worker`` credential):

* two workers share the queue and the run's decision, report and trials equal the in-process run's, byte for byte;
* a worker killed with kill -9 in the middle of a task changes nothing: its task comes back, the result is identical;
* a coordinator that dies mid-run and starts again on the same result store resumes: it replays what was stored,
  asks only for the rest, and reaches the identical result;
* the worker's credential can touch nothing but the queue: aura_params (read or write), trading subjects, the
  coordinator's results and the inputs it writes are refused;
* a task no worker may run is retried up to max_deliver, dead-lettered, answered with its error, and ends the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aura.optimize.report import decision_bytes, decision_document, trials_frame
from aura.optimize.report_html import render_html
from aura.optimize_cli import LocalWorker, start_workers, stop_workers
from aura.optimize_job import OptimizeJob, coordinate_async, local_record, prepare_job
from services.optimizer.coordinator import ResultStore
from tests.conftest import REPO_ROOT, NatsEndpoint
from tests.optimize.test_end_to_end import TINY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
REPLAY = REPO_ROOT / "data" / "replay"
LOG = logging.getLogger("aura.test.optimize")


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    """A secured, provisioned nats-server as tests/conftest.py makes one (module-wide: workers take ~10 s to start)."""
    endpoint = NatsEndpoint(tmp_path_factory.mktemp("optbus"))
    yield endpoint
    endpoint.stop()


class Pool:
    """Local worker processes on the test bus, each with the worker credential of the bus's home."""

    def __init__(self, endpoint: NatsEndpoint, logs: Path) -> None:
        self.endpoint, self.logs, self.workers = endpoint, logs, []  # type: ignore[var-annotated]

    def ensure(self, n: int) -> list[LocalWorker]:
        self.workers = [w for w in self.workers if w.poll() is None]
        if len(self.workers) < n:
            self.workers += start_workers(n - len(self.workers), self.endpoint.settings(), self.logs)
        deadline = time.monotonic() + 240
        while not all(self.ready(w) for w in self.workers):
            assert time.monotonic() < deadline, "workers not ready; see " + str(self.logs)
            assert all(w.poll() is None for w in self.workers), "a worker died while starting; see " + str(self.logs)
            time.sleep(0.2)
        return self.workers

    @staticmethod
    def status(worker: LocalWorker, client: httpx.Client | None = None) -> dict[str, Any]:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            url = f"http://127.0.0.1:{worker.port}/readyz"
            return dict((client.get(url) if client else httpx.get(url, timeout=2)).json())
        return {}

    def ready(self, worker: LocalWorker) -> bool:
        return bool(self.status(worker).get("ready"))

    def stop(self) -> None:
        stop_workers(self.workers)


@pytest.fixture(scope="module")
def pool(bus: NatsEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    workers = Pool(bus, tmp_path_factory.mktemp("worker-logs"))
    yield workers
    workers.stop()


@pytest.fixture(scope="module")
def grids_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grids") / "tiny.toml"
    path.write_text(TINY)
    return path


def job_for(symbols: list[str], grids: Path | None, folds: int) -> OptimizeJob:
    return prepare_job(argparse.Namespace(data=REPLAY, timeframe="1d", symbols=",".join(symbols), grids=grids,
                                          anchored=False, folds=folds, min_budget=None, eta=3, spa_reps=300))


def outputs(record: Any) -> tuple[bytes, bytes, str]:
    doc = decision_document(record)
    return decision_bytes(doc), trials_frame(record).write_ipc(None).getvalue(), render_html(record, doc)


def run_on(bus: NatsEndpoint, job: OptimizeJob, store_path: Path) -> tuple[Any, Any]:
    store = ResultStore(store_path)
    try:
        return asyncio.run(coordinate_async(job, bus.settings(), store, LOG))
    finally:
        store.close()


def test_two_workers_share_the_queue_and_give_the_in_process_result(bus: NatsEndpoint, pool: Pool, grids_file: Path,
                                                                    tmp_path: Path) -> None:
    workers = pool.ensure(2)
    job = job_for(["BTC_USDT", "ETH_USDT", "BNB_USDT", "XRP_USDT", "LTC_USDT"], grids_file, folds=2)
    record, progress = run_on(bus, job, tmp_path / "results.sqlite")
    assert outputs(record) == outputs(local_record(job))
    assert progress.replayed == 0 and progress.received >= record.run.evaluations() // 2
    # each fold's SPA (like each stage's CSCV) was a worker's answer, stored under its content key (no refit
    # selection: the newest fold's winner is what would go live)
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        spa_answers = db.execute("SELECT COUNT(*) FROM outcomes WHERE key LIKE 's-%'").fetchone()[0]
    assert spa_answers == len(job.folds) == 2
    answered = [int(Pool.status(w)["checks"]["tasks"].split()[0]) for w in workers]
    assert all(n > 0 for n in answered), f"each worker should have taken tasks: {answered}"


def test_a_worker_killed_mid_task_changes_nothing(bus: NatsEndpoint, pool: Pool, tmp_path: Path) -> None:
    """The shipped grids on one fold (hundreds of evaluations, tasks of up to 32): worker A is frozen and killed
    while its readiness says it is inside a task with evaluations still to go; its task comes back after the ack
    wait (10 s) to the other worker, and the result is the in-process one.

    A task lasts tens of milliseconds, and on a loaded machine the status the watcher read can be older than
    that: the worker may have answered its task before the kill lands (then nothing is redelivered, and there was
    nothing to prove).  Such a run must still give the in-process result, and the test tries again with a fresh
    worker and store, up to three times; it fails unless one kill landed inside a task and was redelivered."""
    job = job_for(["ADA_USDT", "BTC_USDT", "DOGE_USDT", "ETH_USDT", "SOL_USDT", "XRP_USDT"], None, folds=1)
    expected = outputs(local_record(job))
    landed_after_answer: list[str] = []
    for attempt in range(3):
        victim, _ = pool.ensure(2)
        killed, record, progress = kill_inside_a_task(bus, job, victim, tmp_path / f"results-{attempt}.sqlite")
        assert killed, "the worker was never seen inside a task"
        victim.proc.wait(timeout=10)
        assert outputs(record) == expected
        if progress.redelivered >= 1:
            return
        landed_after_answer.append(killed)
    pytest.fail(f"no kill landed inside a task in 3 tries (each was seen in a task, none was answered again): "
                f"{landed_after_answer}")


def kill_inside_a_task(bus: NatsEndpoint, job: OptimizeJob, victim: LocalWorker,
                       store_path: Path) -> tuple[str, Any, Any]:
    """Run the job while a watcher kills ``victim`` (SIGSTOP, then SIGKILL) once its readiness says at least half
    of a task is still to go; returns what the status said at the kill, the record and the run's progress."""
    store = ResultStore(store_path)
    killed: dict[str, str] = {}
    finished = threading.Event()

    def stop_inside_a_task() -> None:
        # Read and kill in one thread: the coordinator shares this process's event loop, and a status handed back
        # to the loop could wait there for tens of milliseconds while the worker finishes the task it describes.
        # One client for every read: a new one per read costs tens of ms, and a task lasts a few tens of ms.
        with httpx.Client(timeout=2) as client:
            while not finished.is_set():
                text = Pool.status(victim, client).get("checks", {}).get("tasks", "")
                if "working on" in text:
                    done, total = (int(x) for x in text.split(": ")[-1].split()[0:3:2])
                    if total - done >= max(8, total // 2):  # half the task still to go: the stop lands inside it
                        os.kill(victim.proc.pid, signal.SIGSTOP)
                        os.kill(victim.proc.pid, signal.SIGKILL)
                        killed["task"] = text
                        return
                time.sleep(0.001)

    watcher = threading.Thread(target=stop_inside_a_task, daemon=True)
    watcher.start()
    try:
        record, progress = asyncio.run(coordinate_async(job, bus.settings(), store, LOG))
    finally:
        finished.set()
        watcher.join(timeout=10)
        store.close()
    return killed.get("task", ""), record, progress


def test_a_restarted_coordinator_resumes_from_its_store(bus: NatsEndpoint, pool: Pool, grids_file: Path,
                                                        tmp_path: Path) -> None:
    pool.ensure(2)
    job = job_for(["BTC_USDT", "ETH_USDT", "LTC_USDT", "XRP_USDT"], grids_file, folds=3)
    path = tmp_path / "results.sqlite"
    store = ResultStore(path)

    async def first_life() -> None:
        work = asyncio.create_task(coordinate_async(job, bus.settings(), store, LOG))
        while len(store) < 30:
            assert not work.done(), "the run ended before the coordinator could be stopped"
            await asyncio.sleep(0.01)
        work.cancel()  # the coordinator dies: nothing more is acked, its connection goes away
        with contextlib.suppress(asyncio.CancelledError):
            await work

    asyncio.run(first_life())
    stored = len(store)
    store.close()
    record, progress = run_on(bus, job, path)
    assert progress.replayed > 0, "the second life replayed nothing"
    assert progress.received < record.run.evaluations(), "the second life asked for everything again"
    assert stored >= 30
    assert outputs(record) == outputs(local_record(job))


def test_the_worker_credential_reaches_the_queue_and_nothing_else(bus: NatsEndpoint) -> None:
    from nats.js.errors import KeyNotFoundError

    from shared.bus import close
    from shared.contracts import OPT_INPUTS_BUCKET
    from shared.live_params import PARAMS_KEY
    from shared.objects import read_object

    async def scenario() -> dict[str, str]:
        outcomes = {}
        nc = await bus.connect("worker")
        js = nc.jetstream()

        async def attempt(name: str, coro: Any) -> None:
            try:
                await asyncio.wait_for(coro, timeout=4)
                outcomes[name] = "allowed"
            except KeyNotFoundError:
                outcomes[name] = "allowed"  # the read went through; the key just does not exist
            except Exception as exc:  # a refused request is never answered: a timeout, or the server's error
                outcomes[name] = f"refused ({type(exc).__name__})"

        await asyncio.gather(
            attempt("bind aura_params", js.key_value("aura_params")),
            attempt("read aura_params", js.get_last_msg("KV_aura_params", f"$KV.aura_params.{PARAMS_KEY}",
                                                        direct=True)),
            attempt("write aura_params", js.publish(f"$KV.aura_params.{PARAMS_KEY}", b"{}", timeout=3)),
            attempt("publish a plan", js.publish("aura.plans.approved", b"{}", timeout=3)),
            attempt("publish a task", js.publish("aura.optimize.tasks", b"{}", timeout=3)),
            attempt("write the inputs", js.publish(f"$O.{OPT_INPUTS_BUCKET}.C.x", b"{}", timeout=3)),
            attempt("read the results", js.get_last_msg("AURA_OPT_RESULTS", "aura.optimize.results", direct=True)),
            attempt("read an input object", read_object(js, OPT_INPUTS_BUCKET, "nothing-here")))
        await close(nc)
        return outcomes

    got = asyncio.run(scenario())
    allowed = {k for k, v in got.items() if v == "allowed"}
    assert allowed <= {"read an input object"}, got
    assert got["read an input object"] in ("allowed", "refused (NotFoundError)"), got  # permitted, object absent


def test_an_inputs_object_claiming_more_than_a_worker_reads_is_refused_at_once(bus: NatsEndpoint, pool: Pool) -> None:
    """An input object's meta is its writer's word: a compromised optimizer (it may write tasks and inputs) named
    an object claiming a gigabyte, and each worker read all of it into memory on every delivery.  Now the worker
    refuses it before reading a chunk, on the first delivery (no delivery can run it): dead-lettered with the
    reason, answered with its error; and the coordinator refuses to write inputs over the same bound."""
    import base64
    import json

    from aura.optimize.tasks import engine_fingerprint, eval_task
    from aura.strategy.params import StrategyParams
    from services.optimizer.coordinator import check_inputs_size
    from shared.bus import msg_id_header
    from shared.contracts import OPT_INPUTS_BUCKET, OPT_INPUTS_OBJECT_MAX_BYTES, OptTask, encode
    from shared.objects import ObjectTooLarge
    from tests.bus_helpers import dead_letters, role_connections, until

    pool.ensure(1)
    name = "e" * 64
    stream = f"OBJ_{OPT_INPUTS_BUCKET}"

    def meta_subject(object_name: str) -> str:
        return f"$O.{OPT_INPUTS_BUCKET}.M.{base64.urlsafe_b64encode(object_name.encode()).decode()}"

    async def scenario() -> list[Any]:
        async with role_connections(bus.settings(), "optimizer", "operator") as js:
            store = await js["optimizer"].object_store(OPT_INPUTS_BUCKET)
            await store.put("real-inputs", b"x" * 300_000)
            real = await js["optimizer"].get_last_msg(stream, meta_subject("real-inputs"), direct=True)
            meta = json.loads(real.data) | {"name": name, "size": 1 << 30, "chunks": 8192}  # the real chunks
            await js["optimizer"].publish(meta_subject(name), json.dumps(meta).encode(),
                                          headers={"Nats-Rollup": "sub"}, timeout=5)
            task = eval_task(name, engine_fingerprint(), "{}", [StrategyParams()], [])
            await js["optimizer"].publish(OptTask.SUBJECT, encode(task), stream="AURA_OPT_TASKS",
                                          headers=msg_id_header(js["optimizer"], OptTask.SUBJECT, task.task_id),
                                          timeout=10)

            async def refused() -> list[Any]:
                return [x for x in await dead_letters(js["operator"], "worker")
                        if x.reason == "task failed" and "claims" in x.error]

            return await until(refused, "the worker's dead letter", timeout=40)

    letters = asyncio.run(scenario())
    assert len(letters) == 1, letters
    assert f"claims {1 << 30} bytes, more than the {OPT_INPUTS_OBJECT_MAX_BYTES}" in letters[0].error, letters[0]
    assert "TaskError" in letters[0].error  # final at the first delivery, not retried max_deliver times

    check_inputs_size(b"\0" * OPT_INPUTS_OBJECT_MAX_BYTES)
    with pytest.raises(ObjectTooLarge, match=r"more than the .* a worker reads"):
        check_inputs_size(b"\0" * (OPT_INPUTS_OBJECT_MAX_BYTES + 1))


@pytest.mark.timeout(120)  # a worker that never gives up would leave the coordinator waiting
def test_zz_a_task_no_worker_may_run_is_retried_dead_lettered_and_ends_the_run(
        bus: NatsEndpoint, pool: Pool, grids_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks made for other evaluation code (a coordinator of another version than its workers): each delivery is
    refused and comes back after RETRY_DELAY_S, until the consumer's max_deliver; then the task is dead-lettered
    with the reason, answered with its error, terminated, and the coordinator stops the run naming it instead of
    waiting for an answer that cannot come.  (Last in the module: the run's other tasks fail the same way.)"""
    from services.optimizer import coordinator as coordinator_module
    from services.optimizer.coordinator import RunFailed
    from services.optimizer.worker import RETRY_DELAY_S, SPEC
    from tests.bus_helpers import dead_letters, role_connections

    workers = pool.ensure(2)
    monkeypatch.setattr(coordinator_module, "engine_fingerprint", lambda: "another-version")
    job = job_for(["BTC_USDT", "ETH_USDT", "LTC_USDT", "XRP_USDT"], grids_file, folds=1)
    started, started_ms = time.monotonic(), int(time.time() * 1000)
    with pytest.raises(RunFailed, match="EngineMismatch: task made for evaluation code another-version"):
        run_on(bus, job, tmp_path / "results.sqlite")
    seconds = time.monotonic() - started

    async def letters() -> list[Any]:
        async with role_connections(bus.settings(), "operator") as js:
            return [x for x in await dead_letters(js["operator"], "worker")  # this run's (the module shares the bus)
                    if x.reason == "task failed" and x.received_at_ms >= started_ms]

    found = asyncio.run(letters())
    assert found and all("EngineMismatch" in x.error for x in found), found
    # Given up only at the last delivery: every earlier one was sent back with its delay.
    assert seconds >= (SPEC.max_deliver - 1) * RETRY_DELAY_S, f"gave up after {seconds:.1f}s"
    failed = sum(int(Pool.status(w)["checks"]["tasks"].split(", ")[1].split()[0]) for w in workers)
    assert failed >= 1, "no worker counted a failed task"


def test_a_run_no_worker_answers_fails_saying_so_instead_of_republishing_forever(nats_server: NatsEndpoint,
                                                                                 grids_file: Path,
                                                                                 tmp_path: Path) -> None:
    """Found by an audit: a task that kills every worker taking it (before the worker can dead-letter it), or a bus
    with no worker at all, had the coordinator publish the missing tasks again every stall period forever."""
    from aura.optimize_job import build_run
    from services.optimizer.coordinator import MAX_STALLS, Coordinator, RunFailed
    from shared.bus import close, connect

    job = job_for(["BTC_USDT", "ETH_USDT"], grids_file, folds=1)
    store = ResultStore(tmp_path / "results.sqlite")

    async def main() -> float:
        nc = await connect(nats_server.settings(), "optimizer", LOG, connect_timeout_s=15)
        coordinator = Coordinator(nc.jetstream(), build_run(job), job.inputs, job.cfg, store, job.gate, LOG,
                                  stall_s=0.2)
        t0 = time.monotonic()
        try:
            with pytest.raises(RunFailed, match="no worker answered"):
                await coordinator.execute()
        finally:
            await close(nc)
        return time.monotonic() - t0

    try:
        waited = asyncio.run(main())
    finally:
        store.close()
    assert waited >= MAX_STALLS * 0.2  # it did wait out its rounds, publishing the tasks again each time

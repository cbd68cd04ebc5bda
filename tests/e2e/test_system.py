"""All five services as real processes on a real nats-server: cycles, journal, health, forged plans, bad input."""

from __future__ import annotations

import asyncio
import calendar
import itertools
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from aura.launcher import Stack, start_stack, wait_ready
from aura.natsd import free_port
from aura.strategy.params import StrategyParams, params_digest
from shared.config import SERVICE_NAMES, load_settings
from shared.contracts import ApprovedPlan, DataReady, PlanBody, PlanLeg, encode, plan_id_for
from shared.live_params import promote_params
from shared.signing import generate_keypair, load_private_key, sign_plan
from tests.conftest import NatsEndpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Sentinel exchange credentials in the launcher's environment (dry run: nothing uses them). They must reach
# the executor process only, and show up in no log and no HTTP answer.
SENTINEL_KEY = "sentinel-key-9f3c2a"
SENTINEL_SECRET = "sentinel-secret-7b1e4d"


def stack_env(home: Path, nats_url: str | None, interval: float = 0.05) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env.update({"AURA_HOME": str(home), "AURA_REPLAY_INTERVAL_S": str(interval), "AURA_LOG_LEVEL": "INFO",
                "AURA_EXCHANGE_API_KEY": SENTINEL_KEY, "AURA_EXCHANGE_API_SECRET": SENTINEL_SECRET})
    if nats_url:
        env["AURA_NATS_URL"] = nats_url
    for name in SERVICE_NAMES:
        env[f"AURA_{name.upper()}_PORT"] = str(free_port())
    return env


def launch(home: Path, nats_url: str, interval: float = 0.05) -> Stack:
    env = stack_env(home, nats_url, interval)
    stack = start_stack(load_settings(env), env)
    try:
        wait_ready(stack, 60)
    except Exception:
        stack.stop()
        raise
    return stack


def journal_rows(stack: Stack, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    path = stack.settings.journal_path
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def executed_cycles(stack: Stack) -> int:
    return len(journal_rows(stack, "SELECT 1 FROM snapshots WHERE status IN ('executed','partial')"))


async def _publish_raw(url: str, subject: str, payload: bytes) -> None:
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, payload, timeout=5)
    finally:
        await nc.close()


async def _dlq(url: str, service: str) -> list[bytes]:
    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream().subscribe(f"aura.dlq.{service}", ordered_consumer=True)
        out = []
        while True:
            try:
                out.append((await sub.next_msg(timeout=1)).data)
            except Exception:
                return out
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsEndpoint]:
    from aura.natsd import start_nats

    d = tmp_path_factory.mktemp("nats")
    server = start_nats(d / "store", free_port(), d / "nats.log")
    yield NatsEndpoint(server.url, "binary", lambda: None)
    server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, module_nats: NatsEndpoint) -> Iterator[Stack]:
    st = launch(tmp_path_factory.mktemp("home"), module_nats.url)
    try:
        wait_for(lambda: executed_cycles(st) >= 4, what="4 executed cycles")
        yield st
    finally:
        st.stop()


def test_cycles_end_in_the_journal_keyed_by_cycle_id(stack: Stack) -> None:
    # A cold start holds cash until a regime is confirmed on two cycles: wait for the first trade.
    wait_for(lambda: journal_rows(stack, "SELECT 1 FROM fills LIMIT 1") != [], what="a first fill")
    cycles = [r[0] for r in journal_rows(stack, "SELECT cycle_id FROM snapshots WHERE status != 'genesis'")]
    assert len(cycles) >= 4 and len(cycles) == len(set(cycles))
    for table in ("events", "plans", "intents", "orders", "fills", "snapshots"):
        rows = journal_rows(stack, f"SELECT cycle_id FROM {table}")
        assert rows, f"{table} is empty"
        assert all(r[0] for r in rows), f"{table} has rows without a cycle id"
    for (cycle,) in journal_rows(stack, "SELECT cycle_id FROM plans"):
        assert journal_rows(stack, "SELECT 1 FROM snapshots WHERE cycle_id=?", (cycle,)), cycle
    # every fill belongs to a journaled order and intent
    orphans = journal_rows(stack, "SELECT f.trade_id FROM fills f LEFT JOIN intents i USING(client_order_id) "
                                  "WHERE i.client_order_id IS NULL")
    assert orphans == []
    assert journal_rows(stack, "PRAGMA journal_mode")[0][0] == "wal"


def test_health_endpoints(stack: Stack) -> None:
    s = stack.settings
    with httpx.Client(timeout=2) as client:
        for name in SERVICE_NAMES:
            base = f"http://{s.health_host}:{s.port_for(name)}"
            assert client.get(f"{base}/healthz").json()["status"] == "alive"
            ready = client.get(f"{base}/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["bus"] == "connected"
            metrics = client.get(f"{base}/metrics").text
            assert f'aura_bus_connected{{service="{name}"}} 1' in metrics
        assert "aura_plans_executed" in client.get(f"http://{s.health_host}:{s.port_for('executor')}/metrics").text


def test_exchange_keys_reach_only_the_executor(stack: Stack) -> None:
    def environ(pid: int) -> bytes:
        return Path(f"/proc/{pid}/environ").read_bytes()

    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} is not running"
        has_key = SENTINEL_KEY.encode() in environ(proc.pid) or SENTINEL_SECRET.encode() in environ(proc.pid)
        assert has_key == (name == "executor"), f"{name}: exchange credentials in its environment = {has_key}"
    s = stack.settings
    with httpx.Client(timeout=2) as client:
        for name in SERVICE_NAMES:
            for path in ("/healthz", "/readyz", "/metrics"):
                body = client.get(f"http://{s.health_host}:{s.port_for(name)}{path}").text
                assert SENTINEL_KEY not in body and SENTINEL_SECRET not in body, f"{name}{path} shows a key"
    logs = sorted(stack.logs.glob("*.log"))
    assert {p.stem for p in logs} >= set(SERVICE_NAMES)
    for log in logs:
        text = log.read_text(errors="replace")
        assert SENTINEL_KEY not in text and SENTINEL_SECRET not in text, f"{log.name} contains a key"


def _forged_plan(tmp: Path, cycle_id: str) -> ApprovedPlan:
    generate_keypair(tmp / "evil.key", tmp / "evil.pub")
    fields = {"cycle_id": cycle_id, "as_of_ms": 0, "data_digest": "x", "target_id": "t", "params_version": 1,
              "params_digest": "p", "basis_snapshot_id": "s", "gate": "pass", "halted": False,
              "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.01, 40000.0, "enter")], "reasons": [],
              "prices": {"BTC/USDT": 40000.0}}
    return sign_plan(PlanBody(plan_id=plan_id_for(fields), **fields), load_private_key(tmp / "evil.key"))


def test_forged_and_unsigned_plans_are_rejected(stack: Stack, module_nats: NatsEndpoint, tmp_path: Path) -> None:
    forged = _forged_plan(tmp_path, "forged-cycle")
    unsigned = msgspec.structs.replace(_forged_plan(tmp_path, "unsigned-cycle"), signature="00" * 64)
    asyncio.run(_publish_raw(module_nats.url, ApprovedPlan.SUBJECT, encode(forged)))
    asyncio.run(_publish_raw(module_nats.url, ApprovedPlan.SUBJECT, encode(unsigned)))
    wait_for(lambda: len(journal_rows(stack, "SELECT 1 FROM events WHERE kind='plan_rejected' AND "
                                             "detail LIKE '%bad_signature%'")) >= 2, what="forged plans rejected")
    assert journal_rows(stack, "SELECT 1 FROM plans WHERE plan_id IN (?,?)",
                        (forged.plan.plan_id, unsigned.plan.plan_id)) == []
    letters = [msgspec.json.decode(d) for d in asyncio.run(_dlq(module_nats.url, "executor"))]
    assert sum(1 for d in letters if d["reason"] == "bad_signature") >= 2
    s = stack.settings
    metrics = httpx.get(f"http://{s.health_host}:{s.port_for('executor')}/metrics", timeout=2).text
    assert "aura_plans_rejected_bad_signature" in metrics
    before = executed_cycles(stack)
    wait_for(lambda: executed_cycles(stack) > before, what="cycles to continue after the forgery")


def test_a_second_plan_for_an_executed_cycle_is_refused(stack: Stack, module_nats: NatsEndpoint) -> None:
    """Even correctly signed by risk, a second plan for a cycle that already traded never executes."""
    cycle_id, body = journal_rows(stack, "SELECT cycle_id, body FROM plans WHERE status='executed' LIMIT 1")[0]
    original = msgspec.json.decode(str(body).encode(), type=PlanBody)
    fields = {f: getattr(original, f) for f in original.__struct_fields__ if f != "plan_id"}
    fields["reasons"] = ["replayed late copy"]
    second = sign_plan(PlanBody(plan_id=plan_id_for(fields), **fields),
                       load_private_key(stack.settings.private_key_path))
    asyncio.run(_publish_raw(module_nats.url, ApprovedPlan.SUBJECT, encode(second)))
    wait_for(lambda: journal_rows(stack, "SELECT 1 FROM events WHERE kind='plan_rejected' AND detail LIKE ?",
                                  (f"%{second.plan.plan_id}%",)) != [], what="the late plan to be refused")
    detail = journal_rows(stack, "SELECT detail FROM events WHERE kind='plan_rejected' AND detail LIKE ?",
                          (f"%{second.plan.plan_id}%",))[0][0]
    assert "cycle_done" in str(detail)
    assert journal_rows(stack, "SELECT 1 FROM plans WHERE plan_id=?", (second.plan.plan_id,)) == []
    assert len(journal_rows(stack, "SELECT 1 FROM plans WHERE cycle_id=?", (cycle_id,))) == 1


def test_malformed_and_wrong_version_messages_are_dead_lettered(stack: Stack, module_nats: NatsEndpoint) -> None:
    ready = DataReady(cycle_id="x", timeframe="1d", as_of_ms=0, digest="00", symbols=[], bars=0, markets=[])
    wrong = msgspec.json.decode(encode(ready))
    wrong["v"] = 99
    asyncio.run(_publish_raw(module_nats.url, DataReady.SUBJECT, b"\x00not json"))
    asyncio.run(_publish_raw(module_nats.url, DataReady.SUBJECT, msgspec.json.encode(wrong)))

    def lettered() -> bool:
        reasons = [msgspec.json.decode(d)["error"] for d in asyncio.run(_dlq(module_nats.url, "signal"))]
        return any("malformed JSON" in r for r in reasons) and any("schema version 99" in r for r in reasons)

    wait_for(lettered, what="dead letters from signal")
    assert all(p.poll() is None for p in stack.procs.values()), "a service died on bad input"
    before = executed_cycles(stack)
    wait_for(lambda: executed_cycles(stack) > before, what="cycles to continue after bad input")


def test_parameters_hot_reload_between_cycles(stack: Stack, module_nats: NatsEndpoint) -> None:
    pids = {n: p.pid for n, p in stack.procs.items()}

    async def promote() -> int:
        nc = await nats.connect(module_nats.url)
        try:
            return await promote_params(nc.jetstream(), StrategyParams(top_k=1))
        finally:
            await nc.close()

    version = asyncio.run(promote())
    wait_for(lambda: len(journal_rows(stack, "SELECT 1 FROM plans WHERE params_version=?", (version,))) >= 2,
             what=f"two plans made with parameter version {version}")
    assert {n: p.pid for n, p in stack.procs.items()} == pids  # no restart
    # The plans must have been *computed* with the new parameters, not merely labelled with their version.
    bodies = journal_rows(stack, "SELECT params_version, body FROM plans")
    digests = {v: {msgspec.json.decode(b)["params_digest"] for vv, b in bodies if vv == v} for v, _ in bodies}
    assert digests[version] == {params_digest(StrategyParams(top_k=1))}, digests
    older = [v for v in digests if v < version]
    assert older and all(digests[v] == {params_digest(StrategyParams())} for v in older), digests
    for v, body in bodies:
        if v == version:
            buys = {leg["symbol"] for leg in msgspec.json.decode(body)["legs"] if leg["side"] == "buy"}
            assert len(buys) <= 1, f"top_k=1 plan buys {buys}"


def test_same_inputs_give_byte_identical_plans(stack: Stack, tmp_path: Path) -> None:
    """A second, independent system on a fresh bus and home replays the same days: identical plan ids."""
    from aura.natsd import start_nats

    server = start_nats(tmp_path / "nats2", free_port(), tmp_path / "nats2.log")
    shutil_home = tmp_path / "home2"
    shutil_home.mkdir()
    # Same signing key, as a real redeployment would have (the plan id is a content hash of the body alone).
    keys = stack.settings.private_key_path.parent
    (shutil_home / "keys").mkdir()
    for f in keys.iterdir():
        (shutil_home / "keys" / f.name).write_bytes(f.read_bytes())
    (shutil_home / "keys" / "risk.key").chmod(0o600)
    second = launch(shutil_home, server.url)
    # Only plans made with the shipped parameters on both sides (the hot-reload test promotes others on the
    # first system), and at least one that trades: cold starts hold cash, and empty plans prove little.
    query = "SELECT cycle_id, body FROM plans WHERE params_version <= 1"

    def comparable() -> list[str]:
        first, second_ = dict(journal_rows(stack, query)), dict(journal_rows(second, query))
        common = sorted(set(first) & set(second_))
        trading = [c for c in common if msgspec.json.decode(first[c])["legs"]]
        return common if len(common) >= 3 and trading else []

    try:
        wait_for(lambda: bool(comparable()), what="3 common cycles, one with legs, on both systems")
        first_plans, second_plans = dict(journal_rows(stack, query)), dict(journal_rows(second, query))
        common = sorted(set(first_plans) & set(second_plans))
        for cycle in common:
            a, b = first_plans[cycle], second_plans[cycle]
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), 0)
            assert a == b, f"{cycle}: plans differ at byte {at}: {a[at - 80:at + 80]!r} vs {b[at - 80:at + 80]!r}"
    finally:
        second.stop()
        server.stop()


def test_bus_restart_mid_run_loses_and_repeats_nothing(nats_binary: NatsEndpoint, tmp_path: Path) -> None:
    st = launch(tmp_path / "home", nats_binary.url)
    try:
        wait_for(lambda: executed_cycles(st) >= 3, what="3 cycles before the restart")
        nats_binary.restart()
        after = executed_cycles(st)
        wait_for(lambda: executed_cycles(st) >= after + 3, timeout=90, what="3 cycles after the NATS restart")
        assert all(p.poll() is None for p in st.procs.values())
        cycles = [r[0] for r in journal_rows(st, "SELECT cycle_id FROM plans")]
        assert len(cycles) == len(set(cycles)), "a cycle was planned twice"
        snaps = [r[0] for r in journal_rows(st, "SELECT cycle_id FROM snapshots WHERE status != 'genesis'")]
        assert len(snaps) == len(set(snaps)), "a cycle was executed twice"
        days = sorted(snaps)
        assert days == snaps, "cycles out of order"
        intents = journal_rows(st, "SELECT COUNT(*), COUNT(DISTINCT client_order_id) FROM intents")[0]
        assert intents[0] == intents[1]
        # No day was skipped across the restart.
        stamps = [calendar.timegm(time.strptime(c[3:11], "%Y%m%d")) for c in snaps]
        assert all(b - a == 86400 for a, b in itertools.pairwise(stamps))
    finally:
        st.stop()


def test_aura_up_cycles_exits_zero(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home", None)
    proc = subprocess.run([sys.executable, "-m", "aura.cli", "up", "--cycles", "3", "--replay-interval", "0.05"],
                          env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ended = re.search(r"(\d+) cycles ended in the journal", proc.stdout)
    assert ended is not None and int(ended.group(1)) >= 3, proc.stdout
    db = sqlite3.connect(tmp_path / "home" / "executor" / "journal.sqlite")
    assert db.execute("SELECT COUNT(*) FROM snapshots WHERE status != 'genesis'").fetchone()[0] >= 3


def test_aura_up_reports_a_dead_service(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home", None)
    env["AURA_REPLAY_DIR"] = str(tmp_path / "no-such-dir")
    proc = subprocess.run([sys.executable, "-m", "aura.cli", "up", "--cycles", "1"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1
    # Ingest (replay) and executor (paper venue rules) both need the replay folder; whichever dies first is named.
    assert re.search(r"service (ingest|executor) exited with status", proc.stderr), proc.stderr


def test_bad_config_fails_at_start_naming_the_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env["AURA_RISK_PORT"] = "not-a-port"
    proc = subprocess.run([sys.executable, "-m", "services.risk"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert "risk_port" in proc.stderr and "AURA_RISK_PORT" in proc.stderr


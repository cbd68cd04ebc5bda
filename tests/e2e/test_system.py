"""All five services as real processes on a real, authenticated nats-server: cycles, journal, health, forged plans,
bad input, the bus's own defences (no anonymous client, one `aura up` per home, pinned keys)."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import msgspec
import nats
import pytest
from cryptography.hazmat.primitives import serialization

from aura.launcher import Stack, service_env, start_stack, wait_ready
from aura.natsd import free_port, start_bus
from aura.strategy.params import StrategyParams, params_digest
from shared.bus import session
from shared.config import SERVICE_NAMES, Settings, load_settings
from shared.contracts import ApprovedPlan, DataReady, PlanBody, PlanLeg, encode, plan_id_for
from shared.credentials import PARAMS_SIGNERS, PRINCIPALS, SIGNERS, KeyLayout, signing_key, trusted_keys
from shared.live_params import promote, read_version, sign_document
from shared.runfile import HomeLocked, acquire_home, live_run
from shared.signing import generate_keypair, load_private_key, sign_plan

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Sentinel exchange credentials in the launcher's environment (dry run: nothing uses them). They must reach
# the executor process only, and show up in no log and no HTTP answer.
SENTINEL_KEY = "sentinel-key-9f3c2a"
SENTINEL_SECRET = "sentinel-secret-7b1e4d"
# `python -m aura.cli` with one difference: the launcher never finds port 4222 free, so the embedded bus it
# starts lands on a free port (its own fallback), never on the machine's default NATS port, where another
# server may live.  Everything else is the real command.
AURA_CLI = [sys.executable, "-c", "import sys, aura.launcher as launcher; "
            "launcher.port_is_free = lambda *a, **k: False; from aura.cli import main; sys.exit(main(sys.argv[1:]))"]


def stack_env(home: Path, interval: float = 0.05) -> dict[str, str]:
    """The environment of `aura up` on ``home``: no AURA_NATS_URL, so the launcher starts its own embedded,
    authenticated bus configured from this home's keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env.update({"AURA_HOME": str(home), "AURA_REPLAY_INTERVAL_S": str(interval), "AURA_LOG_LEVEL": "INFO",
                "AURA_EXCHANGE_API_KEY": SENTINEL_KEY, "AURA_EXCHANGE_API_SECRET": SENTINEL_SECRET})
    for name in SERVICE_NAMES:
        env[f"AURA_{name.upper()}_PORT"] = str(free_port())
    return env


@contextlib.contextmanager
def off_port_4222() -> Iterator[None]:
    """The launcher's embedded bus goes to a free port (its fallback when 4222 is taken), never to 4222."""
    with mock.patch("aura.launcher.port_is_free", lambda port, host="127.0.0.1": False):
        yield


def launch(home: Path, interval: float = 0.05) -> Stack:
    env = stack_env(home, interval)
    with off_port_4222():
        stack = start_stack(load_settings(env), env)
    try:
        assert stack.nats is not None and stack.nats.port != 4222, "the stack must run its own embedded bus"
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


async def _publish_as(settings: Settings, principal: str, subject: str, payload: bytes) -> None:
    """Publish raw bytes holding ``principal``'s credential: what that service, compromised, could send."""
    async with session(settings, principal) as nc:
        await nc.jetstream().publish(subject, payload, timeout=5)


async def _dlq(settings: Settings, service: str) -> list[bytes]:
    """Every dead letter ``service`` stored, read as the operator (direct gets: it may create no consumer)."""
    from tests.bus_helpers import stream_messages

    async with session(settings, "operator") as nc:
        return await stream_messages(nc.jetstream(), f"aura.dlq.{service}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One system as `aura up` starts it: its own lock, keys, authenticated embedded bus, run file, services."""
    # The bundled replay holds ~2,270 days; at 0.05 s a cycle it runs out in about two minutes, before the later
    # tests here that need cycles to keep coming (hot reload, "cycles continue") have run on a loaded machine.
    # At 0.2 s it lasts about eight minutes.
    st = launch(tmp_path_factory.mktemp("home"), interval=0.2)
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
    # Every plan ends in its cycle's snapshot row. The plan in flight right now is journaled ("executing") before
    # its orders go out and gets its snapshot when it finishes: give it the time to.
    planned = [r[0] for r in journal_rows(stack, "SELECT cycle_id FROM plans")]

    def unclosed() -> list[object]:
        return [c for c in planned if not journal_rows(stack, "SELECT 1 FROM snapshots WHERE cycle_id=?", (c,))]

    try:
        wait_for(lambda: not unclosed(), timeout=30, what="every journaled plan to end in a snapshot")
    except AssertionError:
        raise AssertionError(f"plans without a snapshot: {unclosed()}") from None
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
            answer = client.get(f"{base}/metrics")  # no Accept header: OpenMetrics all the same
            assert answer.headers["content-type"].startswith("application/openmetrics-text"), answer.headers
            assert f'aura_bus_connected{{service="{name}"}} 1.0' in answer.text
        assert "aura_plans_executed_total" in client.get(
            f"http://{s.health_host}:{s.port_for('executor')}/metrics").text


def test_metrics_are_valid_openmetrics_and_the_dashboard_queries_only_metrics_that_exist(stack: Stack) -> None:
    """Every service's /metrics parses with the strict OpenMetrics parser (HELP, TYPE, _total counters); every
    series a query of the shipped Grafana dashboard names is exported by some service of a running system, with
    the labels its matchers, groupings and legend use, and ``service="X"`` names a service that exports it
    (tests/promql_labels.py); the shipped Prometheus example scrapes every one of them (the console too)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    from shared.metrics import METRICS
    from tests.promql_labels import check_query, families_from

    # The shipped scrape example reaches every process whose /metrics is parsed below, at its default port.
    # (read as text: pyyaml is no declared dependency; comments are cut so a commented-out target does not count)
    config = "\n".join(line.partition("#")[0] for line in (REPO / "deploy" / "prometheus.yml").read_text().splitlines())
    scraped = set(re.findall(r"""["']([\w.-]+:\d+)["']""", config))
    assert scraped, "deploy/prometheus.yml names no target"
    defaults = Settings()
    unscraped = {name: defaults.port_for(name) for name in SERVICE_NAMES
                 if f"127.0.0.1:{defaults.port_for(name)}" not in scraped}
    assert unscraped == {}, f"deploy/prometheus.yml does not scrape {unscraped}"
    wait_for(lambda: executed_cycles(stack) >= 2, what="two executed cycles (orders placed, latencies observed)")
    s = stack.settings
    exported: set[str] = set()  # family names, as PromQL names them (a counter's family is its name sans _total)
    samples: dict[str, list[Sample]] = {}  # service -> every sample it exported
    exposed: dict[str, list[tuple[str, str, list[dict[str, str]]]]] = {}  # service -> (family, type, sample labels)
    with httpx.Client(timeout=3) as client:
        for name in SERVICE_NAMES:
            answer = client.get(f"http://{s.health_host}:{s.port_for(name)}/metrics",
                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert answer.headers["content-type"].startswith("application/openmetrics-text"), answer.headers
            families = list(text_string_to_metric_families(answer.text))  # raises on anything invalid
            for family in families:
                assert family.documentation, f"{name}: {family.name} has no HELP"
                if family.type == "counter":
                    assert all(x.name.endswith(("_total", "_created")) for x in family.samples), family
                exported.add(family.name)
                samples.setdefault(name, []).extend(family.samples)
                exposed.setdefault(name, []).append((family.name, family.type, [x.labels for x in family.samples]))
    assert {"aura_plans_approved", "aura_cycle_seconds", "aura_order_seconds", "aura_equity", "aura_drawdown",
            "aura_dead_letters", "aura_reconcile_halts"} <= exported

    def recorded(service: str, sample: str) -> list[Sample]:
        return [x for x in samples[service] if x.name == sample]

    # Every declared family is there from a service's start (shared/health.py), so existing proves nothing: the
    # executed cycles waited for above must have been recorded in them.
    cycles = recorded("ingest", "aura_cycle_seconds_count")
    assert sum(x.value for x in cycles) > 0, f"no cycle latency observed: {cycles}"
    orders = recorded("executor", "aura_order_seconds_count")
    assert sum(x.value for x in orders) > 0, f"no order latency observed: {orders}"
    approved = recorded("risk", "aura_plans_approved_total")
    assert any(x.labels.get("gate") and x.value > 0 for x in approved), f"no approved plan counted by gate: {approved}"
    equity = recorded("executor", "aura_equity")
    assert equity and all(x.value > 0 for x in equity), f"equity not set: {equity}"
    # Labels come from the live samples; a labelled family none of whose series fired yet (dead letters by reason
    # on a calm run) has no sample, so its declaration in shared/metrics.py (plus ``service``) stands in.
    catalog = families_from(exposed, {f"aura_{n}": (m.kind, m.labels) for n, m in METRICS.items()})
    # Who exports what is the catalog's ``owners`` (shared/health.py exports each owned family from the start):
    # the ``service="X"`` check below reads the live answer, which must say the same.
    owners = {f"aura_{n}": set(m.owners) for n, m in METRICS.items()}
    assert {n: set(f.services) for n, f in catalog.items() if n in owners} == owners
    dashboard = json.loads((REPO / "deploy" / "grafana" / "aura.json").read_text())
    targets = [target for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {re.sub(r"_(total|bucket|count|sum)$", "", m) for target in targets
               for m in re.findall(r"\baura_[a-z_]+", target["expr"])}
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"the dashboard queries metrics no service exports: {sorted(queried - exported)}"
    problems = [p for target in targets for p in check_query(target["expr"], catalog, target.get("legendFormat", ""))]
    assert problems == [], "dashboard queries that would show nothing:\n" + "\n".join(problems)


def bus_and_signing_secrets(layout: KeyLayout) -> dict[str, bytes]:
    """Every secret under ``keys/`` in the forms it could leak in: NKey seeds as written, signing keys as their PEM
    body, raw bytes in hex and base64."""
    import base64

    out: dict[str, bytes] = {}
    for principal in PRINCIPALS:
        seed = layout.bus_seed(principal).read_text().strip()
        assert seed.startswith("SU") and len(seed) > 50, f"{principal}: not an NKey user seed"
        out[f"{principal} bus seed"] = seed.encode()
    for signer in SIGNERS:
        pem = layout.signing_key(signer).read_text()
        body = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
        raw = load_private_key(layout.signing_key(signer)).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        out[f"{signer} signing key (PEM)"] = body.encode()
        out[f"{signer} signing key (hex)"] = raw.hex().encode()
        out[f"{signer} signing key (base64)"] = base64.b64encode(raw).rstrip(b"=")
        out[f"{signer} signing key (base64url)"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
    return out


def test_exchange_keys_reach_only_the_executor(stack: Stack) -> None:
    """Exchange keys reach the executor alone; no exchange key, bus seed or signing key shows in any log, any
    process environment or any health answer."""
    def environ(pid: int) -> bytes:
        return Path(f"/proc/{pid}/environ").read_bytes()

    secrets = bus_and_signing_secrets(stack.settings.keys)
    assert stack.nats is not None
    processes = {**{name: proc.pid for name, proc in stack.procs.items()}, "nats-server": stack.nats.process.pid}
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} is not running"
        has_key = SENTINEL_KEY.encode() in environ(proc.pid) or SENTINEL_SECRET.encode() in environ(proc.pid)
        assert has_key == (name == "executor"), f"{name}: exchange credentials in its environment = {has_key}"
    for name, pid in processes.items():
        env_bytes = environ(pid)
        for what, secret in secrets.items():
            assert secret not in env_bytes, f"{name}'s environment holds the {what}"
    s = stack.settings
    with httpx.Client(timeout=2) as client:
        for name in SERVICE_NAMES:
            for path in ("/healthz", "/readyz", "/metrics"):
                body = client.get(f"http://{s.health_host}:{s.port_for(name)}{path}").text
                assert SENTINEL_KEY not in body and SENTINEL_SECRET not in body, f"{name}{path} shows a key"
                for what, secret in secrets.items():
                    assert secret.decode() not in body, f"{name}{path} shows the {what}"
    logs = sorted(stack.logs.glob("*.log"))
    assert {p.stem for p in logs} >= {*SERVICE_NAMES, "nats-server"}
    # The server's generated config (public NKeys only) is checked alongside the logs.
    for log in [*logs, s.home_path / "bus" / "nats.conf"]:
        text = log.read_text(errors="replace")
        assert SENTINEL_KEY not in text and SENTINEL_SECRET not in text, f"{log.name} contains a key"
        for what, secret in secrets.items():
            assert secret.decode() not in text, f"{log.name} contains the {what}"


def test_the_bus_refuses_anonymous_clients(stack: Stack) -> None:
    """The bus `aura up` starts admits no client without one of its NKeys (and admits the operator's)."""
    assert stack.nats is not None and stack.nats.process.poll() is None
    url = stack.nats.url
    run = live_run(stack.settings.home_path)
    assert run is not None and run.nats_url == url

    async def anonymous() -> None:
        async def quiet(_exc: Exception) -> None:
            return None

        nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0,
                                error_cb=quiet)
        await nc.close()  # not reached if refused

    with pytest.raises(Exception, match=r"(?i)authorization violation"):
        asyncio.run(anonymous())

    async def as_operator() -> bool:
        async with session(stack.settings, "operator") as nc:
            return bool(nc.is_connected)

    assert asyncio.run(as_operator()), "the same server should admit the operator's credential"


def test_a_second_aura_up_on_the_same_home_stops_at_once(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """One `aura up` per AURA_HOME: a second one fails at once naming the first, and disturbs nothing."""
    home = stack.settings.home_path
    env = stack_env(home)

    def started(what: str) -> Any:
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"the second `aura up` got as far as {what}: HomeLocked must come first")
        return refuse

    # "At once": before a port is chosen, a key made or a server started (checked by what it reaches, not by a
    # time, which a loaded machine stretches).
    with monkeypatch.context() as patched:
        for name in ("choose_ports", "ensure_credentials", "start_bus", "start_service"):
            patched.setattr(f"aura.launcher.{name}", started(name))
        with off_port_4222(), pytest.raises(HomeLocked, match=rf"\(pid {os.getpid()}\)"):
            start_stack(load_settings(env), env)
    proc = subprocess.run([*AURA_CLI, "up", "--cycles", "1"], env=env, capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "another `aura up`" in lines[0] and f"pid {os.getpid()}" in lines[0] and str(home) in lines[0], lines[0]
    # The real CLI said nothing of ports, keys or a server (each start step says one line: aura/launcher.py).
    assert "[aura]" not in proc.stdout, proc.stdout
    # The running system is untouched: its run file, its bus, its services.
    run = live_run(home)
    assert stack.nats is not None and run is not None and run.nats_url == stack.nats.url
    assert stack.nats.process.poll() is None
    assert all(p.poll() is None for p in stack.procs.values())


def test_services_that_outlive_their_aura_up_keep_the_home_locked(tmp_path: Path) -> None:
    """`aura up` killed with -9 leaves its services running (each in a session of its own).  They hold the home's
    lock with it, so a second `aura up` there is refused instead of starting a second executor on the same journal
    and exchange account (with the health ports moving off taken defaults, nothing else would stop it)."""
    home = tmp_path / "home"
    stack = launch(home)
    try:
        assert stack.lock is not None
        stack.lock.close()  # all kill -9 does to the launcher's hold on the lock: its descriptor closes
        stack.lock = None
        env = stack_env(home)
        with off_port_4222(), pytest.raises(HomeLocked, match="outlived it"):
            start_stack(load_settings(env), env)
        assert all(p.poll() is None for p in stack.procs.values()), "the refused start disturbed the survivors"
    finally:
        stack.stop()
    acquire_home(home.resolve()).close()  # once they are gone, the home is free again


def test_params_show_finds_the_running_system_through_its_run_file(stack: Stack) -> None:
    """`aura params show` with only AURA_HOME set reads the bus of the system running on that home."""
    home = stack.settings.home_path
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env["AURA_HOME"] = str(home)

    def show(*extra: str) -> dict[str, object]:
        proc = subprocess.run([sys.executable, "-m", "aura.cli", "params", "show", *extra], env=env,
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return dict(json.loads(proc.stdout))

    seeded = show("--version", "1")
    assert seeded["version"] == 1 and seeded["promoted_by"] == "optimizer", seeded
    assert "seed" in str(seeded["reason"]) and seeded["digest"] == params_digest(StrategyParams()), seeded

    async def newest() -> tuple[StrategyParams, int]:
        trusted = trusted_keys(stack.settings.keys, "operator", PARAMS_SIGNERS)
        async with session(stack.settings, "operator") as nc:
            params, version, _ = await read_version(nc.jetstream(), trusted)
            return params, version

    shown = show()
    params, version = asyncio.run(newest())
    assert shown["version"] == version >= 1 and shown["digest"] == params_digest(params), shown


def _forged_plan(tmp: Path, cycle_id: str) -> ApprovedPlan:
    generate_keypair(tmp / "evil.key", tmp / "evil.pub")
    fields = {"cycle_id": cycle_id, "as_of_ms": 0, "data_digest": "x", "target_id": "t", "params_version": 1,
              "params_digest": "p", "basis_snapshot_id": "s", "gate": "pass", "halted": False,
              "legs": [PlanLeg(0, "BTC/USDT", "buy", 0.01, 40000.0, "enter")], "reasons": [],
              "prices": {"BTC/USDT": 40000.0}}
    return sign_plan(PlanBody(plan_id=plan_id_for(fields), **fields), load_private_key(tmp / "evil.key"))


def test_forged_and_unsigned_plans_are_rejected(stack: Stack, tmp_path: Path) -> None:
    """Published with risk's bus credential (a compromised risk) but not its signing key: refused."""
    forged = _forged_plan(tmp_path, "forged-cycle")
    unsigned = msgspec.structs.replace(_forged_plan(tmp_path, "unsigned-cycle"), signature="00" * 64)
    asyncio.run(_publish_as(stack.settings, "risk", ApprovedPlan.SUBJECT, encode(forged)))
    asyncio.run(_publish_as(stack.settings, "risk", ApprovedPlan.SUBJECT, encode(unsigned)))
    wait_for(lambda: len(journal_rows(stack, "SELECT 1 FROM events WHERE kind='plan_rejected' AND "
                                             "detail LIKE '%bad_signature%'")) >= 2, what="forged plans rejected")
    assert journal_rows(stack, "SELECT 1 FROM plans WHERE plan_id IN (?,?)",
                        (forged.plan.plan_id, unsigned.plan.plan_id)) == []
    letters = [msgspec.json.decode(d) for d in asyncio.run(_dlq(stack.settings, "executor"))]
    assert sum(1 for d in letters if d["reason"] == "bad_signature") >= 2
    s = stack.settings
    metrics = httpx.get(f"http://{s.health_host}:{s.port_for('executor')}/metrics", timeout=2).text
    rejected = r'aura_plans_rejected_total\{[^}]*reason="bad_signature"[^}]*\} ([0-9.]+)'
    counted = re.search(rejected, metrics)  # the series is there from the start at 0: the two refusals counted
    assert counted and float(counted.group(1)) >= 2, metrics[:2000]
    before = executed_cycles(stack)
    wait_for(lambda: executed_cycles(stack) > before, what="cycles to continue after the forgery")


def test_a_second_plan_for_an_executed_cycle_is_refused(stack: Stack) -> None:
    """Even correctly signed by risk, a second plan for a cycle that already traded never executes."""
    cycle_id, body = journal_rows(stack, "SELECT cycle_id, body FROM plans WHERE status='executed' LIMIT 1")[0]
    original = msgspec.json.decode(str(body).encode(), type=PlanBody)
    fields = {f: getattr(original, f) for f in original.__struct_fields__ if f != "plan_id"}
    fields["reasons"] = ["replayed late copy"]
    second = sign_plan(PlanBody(plan_id=plan_id_for(fields), **fields),
                       signing_key(stack.settings.keys, "risk"))
    asyncio.run(_publish_as(stack.settings, "risk", ApprovedPlan.SUBJECT, encode(second)))
    wait_for(lambda: journal_rows(stack, "SELECT 1 FROM events WHERE kind='plan_rejected' AND detail LIKE ?",
                                  (f"%{second.plan.plan_id}%",)) != [], what="the late plan to be refused")
    detail = journal_rows(stack, "SELECT detail FROM events WHERE kind='plan_rejected' AND detail LIKE ?",
                          (f"%{second.plan.plan_id}%",))[0][0]
    assert "cycle_done" in str(detail)
    assert journal_rows(stack, "SELECT 1 FROM plans WHERE plan_id=?", (second.plan.plan_id,)) == []
    assert len(journal_rows(stack, "SELECT 1 FROM plans WHERE cycle_id=?", (cycle_id,))) == 1


def test_malformed_and_wrong_version_messages_are_dead_lettered(stack: Stack) -> None:
    """Published with ingest's bus credential (the only one that may announce data)."""
    ready = DataReady(cycle_id="x", timeframe="1d", as_of_ms=0, digest="00", symbols=[], bars=0, markets=[])
    wrong = msgspec.json.decode(encode(ready))
    wrong["v"] = 99
    asyncio.run(_publish_as(stack.settings, "ingest", DataReady.SUBJECT, b"\x00not json"))
    asyncio.run(_publish_as(stack.settings, "ingest", DataReady.SUBJECT, msgspec.json.encode(wrong)))

    def lettered() -> bool:
        reasons = [msgspec.json.decode(d)["error"] for d in asyncio.run(_dlq(stack.settings, "signal"))]
        return any("malformed JSON" in r for r in reasons) and any("schema version 99" in r for r in reasons)

    wait_for(lettered, what="dead letters from signal")
    assert all(p.poll() is None for p in stack.procs.values()), "a service died on bad input"
    before = executed_cycles(stack)
    wait_for(lambda: executed_cycles(stack) > before, what="cycles to continue after bad input")


def test_parameters_hot_reload_between_cycles(stack: Stack) -> None:
    pids = {n: p.pid for n, p in stack.procs.items()}
    s = stack.settings

    async def promote_as_operator() -> int:
        key = signing_key(s.keys, "operator")
        doc = sign_document(StrategyParams(top_k=1), key, "operator:test", "hot reload test")
        async with session(s, "operator") as nc:
            return await promote(nc.jetstream(), doc, key)

    version = asyncio.run(promote_as_operator())
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
    """A second, independent system on its own home and bus replays the same days: identical plan ids."""
    home2 = tmp_path / "home2"
    # Same risk signing key, as a real redeployment would have (the plan id is a content hash of the body alone);
    # every other key and bus credential is its own.
    ours, theirs = stack.settings.keys, load_settings({"AURA_HOME": str(home2)}).keys
    theirs.private_dir("risk").mkdir(parents=True, mode=0o700)
    theirs.public_key("risk").parent.mkdir(parents=True)
    theirs.signing_key("risk").write_bytes(ours.signing_key("risk").read_bytes())
    theirs.signing_key("risk").chmod(0o600)
    theirs.public_key("risk").write_bytes(ours.public_key("risk").read_bytes())
    second = launch(home2)
    assert second.nats is not None and stack.nats is not None and second.nats.url != stack.nats.url
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


def test_bus_restart_mid_run_loses_and_repeats_nothing(tmp_path: Path) -> None:
    st = launch(tmp_path / "home")
    try:
        wait_for(lambda: executed_cycles(st) >= 3, what="3 cycles before the restart")
        # Stop the stack's own bus and start it again: same config, port and JetStream store.
        assert st.nats is not None
        port = st.nats.port
        st.nats.stop()
        st.nats = start_bus(st.settings, port)
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


def test_a_swapped_risk_public_key_stops_the_executor_at_boot(tmp_path: Path) -> None:
    """The executor pins risk's public key at first start; a key swapped in later is refused at boot."""
    st = launch(tmp_path / "home")
    try:
        wait_for(lambda: executed_cycles(st) >= 1, what="a plan verified with the pinned risk key")
    finally:
        st.stop()
    assert st.nats is not None
    layout = st.settings.keys
    pin, public = layout.pin("executor", "risk"), layout.public_key("risk")
    assert pin.is_file(), "the executor did not pin risk's public key"
    original = public.read_bytes()
    generate_keypair(tmp_path / "swap" / "risk.key", tmp_path / "swap" / "risk.pub")
    public.write_bytes((tmp_path / "swap" / "risk.pub").read_bytes())
    assert public.read_bytes() != original
    rows_before = journal_rows(st, "SELECT COUNT(*) FROM snapshots")
    # The stack's bus (same config, port and store) for the executor alone, started with the stack's environment.
    bus = start_bus(st.settings, st.nats.port)
    env = service_env("executor", st.env)
    assert env["AURA_NATS_URL"] == bus.url
    try:
        proc = subprocess.run([sys.executable, "-m", "services.executor"], env=env, capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output[-3000:]
        named = [line for line in output.splitlines() if str(pin) in line]
        assert named and "changed" in named[0], output[-3000:]
        assert journal_rows(st, "SELECT COUNT(*) FROM snapshots") == rows_before, "the refused executor wrote"
        # Control: with the key it pinned back in place, the same executor starts and gets ready.
        public.write_bytes(original)
        with open(tmp_path / "executor-control.log", "wb") as log:
            control = subprocess.Popen([sys.executable, "-m", "services.executor"], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=REPO)
        try:
            ready = f"http://{st.settings.health_host}:{st.settings.port_for('executor')}/readyz"

            def answers() -> bool:
                assert control.poll() is None, (tmp_path / "executor-control.log").read_text()[-3000:]
                try:
                    return httpx.get(ready, timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(answers, timeout=60, what="the executor to start with its pinned key")
        finally:
            control.terminate()
            control.wait(timeout=20)
        assert control.returncode == 0
    finally:
        bus.stop()


def test_aura_up_cycles_exits_zero(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    proc = subprocess.run([*AURA_CLI, "up", "--cycles", "3", "--replay-interval", "0.05"],
                          env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ended = re.search(r"(\d+) cycles ended in the journal", proc.stdout)
    assert ended is not None and int(ended.group(1)) >= 3, proc.stdout
    db = sqlite3.connect(tmp_path / "home" / "executor" / "journal.sqlite")
    assert db.execute("SELECT COUNT(*) FROM snapshots WHERE status != 'genesis'").fetchone()[0] >= 3
    # A clean stop leaves no run file behind for the CLI to follow, and no service took it for a lost bus.
    assert live_run((tmp_path / "home").resolve()) is None and not (tmp_path / "home" / "run.json").exists()
    for name in SERVICE_NAMES:
        log = (tmp_path / "home" / "logs" / f"{name}.log").read_text()
        assert "disconnected from NATS" not in log, f"{name} logged a disconnect on a clean stop"


def test_ctrl_c_while_aura_up_is_starting_stops_at_once(tmp_path: Path) -> None:
    """SIGINT used to be ignored until every service was ready (13 s later)."""
    env = stack_env(tmp_path / "home")
    proc = subprocess.Popen([*AURA_CLI, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None
    for line in proc.stdout:  # the bus is up and the services are starting, none of them ready yet
        if "embedded nats-server" in line:
            break
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 130, out + err
    assert "interrupted while starting" in out and "all processes stopped" in out, out
    assert elapsed < 20, f"Ctrl-C took {elapsed:.1f}s to stop a starting system"
    assert "processes ready" not in out


def test_aura_up_reports_a_dead_service(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "home")
    env["AURA_REPLAY_DIR"] = str(tmp_path / "no-such-dir")
    proc = subprocess.run([*AURA_CLI, "up", "--cycles", "1"], env=env, capture_output=True, text=True, timeout=120,
                          cwd=REPO)
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



def test_ctrl_c_while_the_bus_starts_launches_no_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C while the embedded nats-server starts: start_stack never asked the flag, so every service was still
    launched and then stopped (found by an audit).  Here the Ctrl-C lands during start_bus."""
    from aura import launcher

    started: list[str] = []
    real_start_bus, real_start_service = launcher.start_bus, launcher.start_service

    def start_bus_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        server = real_start_bus(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # the launcher's handler only sets its flag
        return server

    def start_service(stack: Any, name: str) -> Any:
        started.append(name)
        return real_start_service(stack, name)

    monkeypatch.setattr(launcher, "start_bus", start_bus_then_ctrl_c)
    monkeypatch.setattr(launcher, "start_service", start_service)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = launcher.up(env=stack_env(tmp_path / "home"))
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    out = capsys.readouterr().out
    assert code == 130 and started == [], (code, started)
    assert "interrupted while starting" in out and "all processes stopped" in out
    assert not (tmp_path / "home" / "run.json").exists()

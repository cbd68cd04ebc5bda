"""`aura params show|set|history|diff|rollback` (and the bus lookup `aura risk` shares) against a real, secured
nats-server: the CLI finds the bus through AURA_HOME / AURA_NATS_URL, acts as the operator, promotes only
validated, signed versions that record who and why, and never creates anything on the bus when it reads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js.errors import NotFoundError

from aura.natsd import free_port, start_bus
from aura.strategy.params import StrategyParams, params_digest
from shared.bus import kv_get, params_kv, session
from shared.config import load_settings
from shared.contracts import PARAMS_BUCKET, STATE_BUCKET
from shared.credentials import ensure_credentials
from shared.live_params import PARAMS_KEY, sign_document
from tests.conftest import NatsEndpoint

pytestmark = pytest.mark.integration
SHOW_KEYS = {"version", "digest", "promoted_by", "reason", "promoted_at_ms", "timeframe", "params"}
DEFAULTS: dict[str, Any] = msgspec.to_builtins(StrategyParams())


def run_aura(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The `aura` console script with exactly ``env``'s AURA_* settings (none inherited from the caller)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | env
    return subprocess.run([sys.executable, "-m", "aura.cli", *args], env=clean, capture_output=True, text=True,
                          timeout=60)


def aura(bus: NatsEndpoint, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`aura ...` as the operator of the system on ``bus`` (its AURA_HOME keys, its URL; ``env`` on top)."""
    proc = run_aura({"AURA_HOME": str(bus.home), "AURA_NATS_URL": bus.url, **env}, *args)
    return proc


def run_aura_all(env: dict[str, str], *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """``run_aura(env, *command)`` for each of ``commands`` (read-only ones: none may change what another sees),
    each its own `aura` process as ever, run side by side: most of a command's time is its start, not the bus."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda command: run_aura(env, *command), commands))


def aura_all(bus: NatsEndpoint, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """``aura(bus, *command)`` for each of ``commands`` (read-only), side by side; results in ``commands``' order."""
    return run_aura_all({"AURA_HOME": str(bus.home), "AURA_NATS_URL": bus.url}, *commands)


def show(bus: NatsEndpoint, *args: str, **env: str) -> dict[str, Any]:
    proc = aura(bus, "params", "show", *args, **env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def set_params(bus: NatsEndpoint, tmp_path: Path, doc: dict[str, Any], reason: str,
               name: str = "p.json", **env: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return aura(bus, "params", "set", str(path), "--reason", reason, **env)


def live_version(bus: NatsEndpoint) -> int:
    """The newest stored parameter version, read by the operator in-process (0: none promoted)."""

    async def read() -> int:
        async with session(bus.settings(), "operator") as nc:
            return (await kv_get(await params_kv(nc.jetstream()), PARAMS_KEY))[1]

    return asyncio.run(read())


def promoted(bus: NatsEndpoint, tmp_path: Path, doc: dict[str, Any], reason: str, **env: str) -> int:
    before = live_version(bus)
    proc = set_params(bus, tmp_path, doc, reason, **env)
    assert proc.returncode == 0, proc.stderr
    after = live_version(bus)
    assert after > before and f"promoted parameter version {after} " in proc.stdout, proc.stdout
    return after


def test_show_then_set_then_show(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    """The round trip: what `show` prints, with one value edited, is what `set` promotes, and nothing else."""
    first = show(nats_server)
    assert first["version"] == 0  # nothing promoted yet: shipped defaults
    assert first["params"] == DEFAULTS
    assert first["digest"] == params_digest(StrategyParams())
    assert set(first) <= SHOW_KEYS
    first["params"]["top_k"] = 2
    proc = set_params(nats_server, tmp_path, first, "fewer names")
    assert proc.returncode == 0, proc.stderr
    assert "top_k: 3 -> 2" in proc.stderr
    after = show(nats_server)
    assert set(after) == SHOW_KEYS
    assert after["version"] >= 1 and after["params"] == {**DEFAULTS, "top_k": 2}
    assert after["digest"] == params_digest(StrategyParams(**{**DEFAULTS, "top_k": 2}))
    assert after["promoted_by"].startswith("operator:") and after["reason"] == "fewer names"
    assert after["promoted_at_ms"] > 0
    # And again from a promoted version's document (with its promoted_by/reason/... around the params).
    after["params"]["stop_loss"] = 0.1
    proc = set_params(nats_server, tmp_path, after, "tighter stop")
    assert proc.returncode == 0, proc.stderr
    again = show(nats_server)
    assert again["version"] > after["version"]
    assert again["params"] == {**DEFAULTS, "top_k": 2, "stop_loss": 0.1} and again["reason"] == "tighter stop"


def test_show_gives_the_version_in_force_when_a_newer_one_is_refused(nats_server: NatsEndpoint,
                                                                     tmp_path: Path) -> None:
    """A forged document stored as the newest version (a compromised optimizer) is refused by the services; `show`
    prints the version they run, names the refused one on stderr, and the operator can still edit and `set`."""
    assert set_params(nats_server, tmp_path, {"top_k": 4}, "four names").returncode == 0
    in_force = show(nats_server)

    async def forge() -> None:
        nc = await nats_server.connect("optimizer")
        try:
            kv = await params_kv(nc.jetstream())
            forged = sign_document(StrategyParams(top_k=9), Ed25519PrivateKey.generate(), "optimizer", "forged")
            await kv.put(PARAMS_KEY, msgspec.json.encode(forged))
        finally:
            await nc.close()

    asyncio.run(forge())
    proc = aura(nats_server, "params", "show")
    assert proc.returncode == 0, proc.stderr
    shown_now = json.loads(proc.stdout)
    assert shown_now == in_force and shown_now["params"]["top_k"] == 4
    assert f"newer version(s) {in_force['version'] + 1} refused" in proc.stderr, proc.stderr
    shown_now["params"]["top_k"] = 5
    assert set_params(nats_server, tmp_path, shown_now, "five names").returncode == 0
    assert show(nats_server)["params"]["top_k"] == 5


def test_omitted_keys_keep_their_live_value(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    promoted(nats_server, tmp_path, {"top_k": 2}, "one knob")
    promoted(nats_server, tmp_path, {"stop_loss": 0.1}, "another knob")
    assert show(nats_server)["params"] == {**DEFAULTS, "top_k": 2, "stop_loss": 0.1}


def test_set_requires_a_reason(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"top_k": 2}))
    proc = aura(nats_server, "params", "set", str(path))
    assert proc.returncode == 2 and "--reason" in proc.stderr
    assert live_version(nats_server) == 0


def test_out_of_range_parameters_are_refused(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    proc = set_params(nats_server, tmp_path, {"top_k": 10_000}, "too many", name="bad.json")
    assert proc.returncode == 2 and "top_k" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert live_version(nats_server) == 0


def test_parameters_beyond_the_loss_envelope_are_refused_before_any_write(nats_server: NatsEndpoint,
                                                                         tmp_path: Path) -> None:
    """Valid parameters, but a kill-switch that waits for a 99% drawdown: signal and risk would refuse the version
    (AURA_MAX_LOSS_BOUND), so the operator is told instead of promoting a version nothing trades."""
    doc = {"kill_switch_drawdown": 1.0, "kill_switch_cap": 0.99}
    proc = set_params(nats_server, tmp_path, doc, "reckless", name="reckless.json")
    assert proc.returncode == 2 and "envelope is 50%" in proc.stderr and "Traceback" not in proc.stderr
    assert live_version(nats_server) == 0


@pytest.mark.parametrize("doc, named", [
    ({"top_k": 2, "top_kk": 4}, "top_kk"),  # a misspelt parameter
    ({"params": {**DEFAULTS, "top_k": 2}, "version": 0, "comment": "x"}, "comment"),  # beside show's keys
    ({"params": {**DEFAULTS, "momentum": 5}}, "momentum"),  # inside show's document
])
def test_unknown_keys_are_refused_by_name(nats_server: NatsEndpoint, tmp_path: Path, doc: dict[str, Any],
                                          named: str) -> None:
    proc = set_params(nats_server, tmp_path, doc, "typo")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert live_version(nats_server) == 0, "an unknown key promoted something"


def test_history_diff_and_rollback(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    v1 = promoted(nats_server, tmp_path, {"top_k": 2}, "first change")
    v2 = promoted(nats_server, tmp_path, {"top_k": 4, "stop_loss": 0.1}, "second change")

    # Read-only commands, each its own `aura` process, side by side.
    hist, diff, same, against_defaults = aura_all(
        nats_server, ("params", "history"), ("params", "diff", str(v1), str(v2)),
        ("params", "diff", str(v1), str(v1)), ("params", "diff", "0", str(v1)))
    assert hist.returncode == 0, hist.stderr
    lines = hist.stdout.strip().splitlines()
    assert len(lines) == 2, hist.stdout
    for line, version, reason, params in ((lines[0], v1, "first change", {**DEFAULTS, "top_k": 2}),
                                          (lines[1], v2, "second change", {**DEFAULTS, "top_k": 4, "stop_loss": 0.1})):
        assert line.split()[0] == str(version)
        assert line.split()[2] == "1d"  # the bars the version's lookbacks count
        assert params_digest(StrategyParams(**params)) in line
        assert "operator:" in line and line.endswith(reason)

    assert diff.returncode == 0, diff.stderr
    assert sorted(diff.stdout.strip().splitlines()) == ["stop_loss: 0.15 -> 0.1", "top_k: 2 -> 4"]
    assert same.returncode == 0 and "same parameters" in same.stdout
    assert against_defaults.stdout.strip() == "top_k: 3 -> 2"

    back = aura(nats_server, "params", "rollback", str(v1), "--reason", "second change hurt")
    assert back.returncode == 0, back.stderr
    shows = aura_all(nats_server, ("params", "show"), ("params", "show", "--version", str(v1)),
                     ("params", "show", "--version", str(v2)))
    assert all(proc.returncode == 0 for proc in shows), [proc.stderr for proc in shows]
    now, at_v1, at_v2 = (dict(json.loads(proc.stdout)) for proc in shows)
    assert now["version"] > v2, "a rollback is a new version, not a rewrite of history"
    assert now["params"] == at_v1["params"] == {**DEFAULTS, "top_k": 2}
    assert now["promoted_by"].startswith("operator:")
    assert now["reason"] == f"rollback to version {v1}: second change hurt"
    assert at_v2["params"]["top_k"] == 4  # history is kept

    missing = aura(nats_server, "params", "rollback", "99", "--reason", "no such version")
    assert missing.returncode == 2 and "99" in missing.stderr
    assert live_version(nats_server) == now["version"]


def one_line_failure(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", [("params", "show"), ("risk", "status")])
def test_with_no_system_running_the_cli_says_so_in_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    empty = tmp_path / "empty-home"
    empty.mkdir()
    # A home that has its keys (a system that ran once and was stopped): the line says no system is running.
    keyed = load_settings({"AURA_HOME": str(tmp_path / "stopped-home")})
    ensure_credentials(keyed.keys)
    # Keys present and an explicit URL where nothing listens (a stopped compose bus): nats-py, told not to
    # reconnect, used to retry the refused port forever; the command must answer in one line, promptly.
    dead_port = free_port()
    # The three cases share nothing (two homes, no bus): each its own `aura` process, side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        bare = pool.submit(run_aura, {"AURA_HOME": str(empty)}, *command)
        stopped = pool.submit(run_aura, {"AURA_HOME": str(keyed.home_path)}, *command)
        started = time.monotonic()
        dead = pool.submit(run_aura, {"AURA_HOME": str(keyed.home_path),
                                      "AURA_NATS_URL": f"nats://127.0.0.1:{dead_port}"}, *command)
        unreachable = one_line_failure(dead.result())
        answered_in = time.monotonic() - started
    one_line_failure(bare.result())
    assert list(empty.iterdir()) == [], "a read command with no system running wrote into AURA_HOME"
    line = one_line_failure(stopped.result())
    assert "no AURA system is running" in line, line
    assert "cannot reach the AURA bus" in unreachable and answered_in < 30, unreachable


def test_read_commands_create_nothing_on_an_unprovisioned_bus(tmp_path: Path) -> None:
    """A secured server with no streams or buckets (not AURA's, or not provisioned yet): reads fail in one line
    naming `aura bus provision` and leave the server as they found it."""
    settings = load_settings({"AURA_HOME": str(tmp_path / "home")})
    ensure_credentials(settings.keys)
    server = start_bus(settings, free_port())
    try:
        env = {"AURA_HOME": str(settings.home_path), "AURA_NATS_URL": server.url}
        for proc in run_aura_all(env, ("params", "show"), ("params", "history"), ("params", "diff", "1", "2"),
                                 ("risk", "status")):
            line = one_line_failure(proc)
            assert "aura bus provision" in line, line

        async def streams() -> tuple[list[str], dict[str, bool]]:
            async with session(load_settings(env), "admin") as nc:  # listing streams is a management right
                js = nc.jetstream()
                exists = {}
                for bucket in (PARAMS_BUCKET, STATE_BUCKET):
                    try:
                        await js.stream_info(f"KV_{bucket}")
                        exists[bucket] = True
                    except NotFoundError:
                        exists[bucket] = False
                return [s.config.name for s in await js.streams_info()], exists

        names, exists = asyncio.run(streams())
        assert exists == {PARAMS_BUCKET: False, STATE_BUCKET: False}
        assert names == [], f"a read command created {names}"
    finally:
        server.stop()

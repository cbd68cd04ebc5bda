"""docker-compose.yml checked by the real Compose v2 parser, then its security/wiring invariants.

No container engine is needed: ``docker-compose config`` only parses, interpolates and validates.
"""

from __future__ import annotations

import http.server
import json
import posixpath
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.compose.compose_cli import COMPOSE_FILE, PORTS, SERVICES, clean_env, compose_binary, run_compose

# The optimizer's workers (issue 10): a scalable service without a host port, principal `worker`.
WORKER = "optimizer-worker"
AURA_IMAGE_SERVICES = ("keygen", "provision", "operator", *SERVICES, WORKER)
PRINCIPALS = (*SERVICES, "worker", "operator", "admin")
UIDS = {"ingest": 10011, "signal": 10012, "risk": 10013, "executor": 10014, "optimizer": 10015, "operator": 10016,
        "console": 10017, "worker": 10018, "admin": 10019}
# principal -> services that hold its keys: bus management only in the one-shot provision job, never the CLI's.
HOLDERS = {"operator": {"operator"}, "admin": {"provision"}, "worker": {WORKER}}
KEYS = "/var/lib/aura/keys"
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSPHRASE)", re.IGNORECASE)


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty --env-file, so a developer's local .env never leaks into these checks."""
    path = tmp_path_factory.mktemp("compose-env") / "empty.env"
    path.write_text("")
    return path


def resolved_config(env_file: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    # With the "tools" profile, so the operator's CLI service is checked too.
    result = run_compose(["--profile", "tools", "config", "--format", "json"], env=clean_env(extra_env),
                         env_file=env_file)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def config(empty_env_file: Path) -> dict[str, Any]:
    return resolved_config(empty_env_file)


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = config["services"]
    return svcs


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = service.get("volumes", [])
    return result


def mount_for_path(service: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The mount whose target contains ``path`` (the deepest one), or None."""
    best: dict[str, Any] | None = None
    for mount in mounts(service):
        target = mount["target"].rstrip("/")
        if (path == target or path.startswith(target + "/")) and (
            best is None or len(target) > len(best["target"].rstrip("/"))
        ):
            best = mount
    return best


def services_mounting(services: dict[str, dict[str, Any]], source: str) -> set[str]:
    return {name for name, svc in services.items() if any(m.get("source") == source for m in mounts(svc))}


def flag_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


# --- the real parser ----------------------------------------------------------------------------------------


def test_compose_binary_is_the_real_compose_v2() -> None:
    result = run_compose(["version"])
    assert result.returncode == 0, result.stderr
    assert re.search(r"Docker Compose version v2\.\d+", result.stdout), result.stdout
    assert compose_binary().name == "docker-compose"


def test_compose_file_is_valid(empty_env_file: Path) -> None:
    result = run_compose(["config", "-q"], env_file=empty_env_file)
    assert result.returncode == 0, f"docker-compose config -q rejected the file:\n{result.stderr}"
    # Warnings (obsolete `version:`, unset variables without a default...) are treated as defects too.
    assert "warn" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(
    ("breakage", "original", "replacement", "expected_error"),
    [
        (
            "bad depends_on condition",
            "condition: service_completed_successfully",
            "condition: service_finished_maybe",
            "condition value must be one of",
        ),
        (
            "unknown key",
            "    restart: unless-stopped\n",
            "    restart: unless-stopped\n    restartt: always\n",
            "'restartt' not allowed",
        ),
        ("bad YAML", "services:\n", "services:\n  - [unbalanced\n", "yaml:"),
        (
            "undeclared volume",
            "- executor-journal:/var/lib/aura/executor",
            "- journal-typo:/var/lib/aura/executor",
            "undefined volume journal-typo",
        ),
    ],
)
def test_a_broken_copy_is_rejected(
    tmp_path: Path, empty_env_file: Path, breakage: str, original: str, replacement: str, expected_error: str
) -> None:
    text = COMPOSE_FILE.read_text()
    assert original in text, f"test fixture out of date: {original!r} not in docker-compose.yml"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(original, replacement, 1))
    result = run_compose(["config", "-q"], compose_file=broken, env_file=empty_env_file)
    assert result.returncode != 0, f"{breakage}: the broken file was accepted"
    assert expected_error in result.stderr, f"{breakage}: rejected for another reason:\n{result.stderr}"


# --- NATS ---------------------------------------------------------------------------------------------------


def test_nats_runs_the_generated_config_with_a_volume_and_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    nats = services["nats"]
    assert nats["image"] == "nats:2.10-alpine"
    # A shell first moves a store from before JetStream had an account of its own, then execs the server.
    assert nats["entrypoint"] == ["/bin/sh", "-c"]
    script = nats["command"][-1]
    config_path = re.search(r"exec nats-server -c (\S+)$", script).group(1)  # type: ignore[union-attr]
    config_mount = mount_for_path(nats, config_path)
    assert config_mount is not None and config_mount.get("read_only") is True
    # keygen writes that config (JetStream store, monitoring port, NKey users) into the same volume.
    keygen_command = services["keygen"]["command"][-1]
    assert f"--out {config_path}" in keygen_command
    assert mount_for_path(services["keygen"], config_path)["source"] == config_mount["source"]  # type: ignore[index]
    store = re.search(r"--store (\S+)", keygen_command).group(1)  # type: ignore[union-attr]
    store_mount = mount_for_path(nats, store)
    assert store_mount is not None and store_mount["type"] == "volume", f"JetStream store {store} is not on a volume"
    # The same store, its global account's directory ($$: compose's escape for a literal $).
    assert f"mv '{store}/jetstream/$$G' {store}/jetstream/AURA" in script
    assert "--monitor-port 8222" in keygen_command
    assert services_mounting(services, config_mount["source"]) == {"keygen", "nats"}
    assert nats["depends_on"]["keygen"]["condition"] == "service_completed_successfully"
    test = nats["healthcheck"]["test"]
    assert test[0] == "CMD" and "wget" in test
    assert "http://127.0.0.1:8222/healthz?js-enabled-only=true" in test
    assert "ports" not in nats or all(p.get("host_ip") == "127.0.0.1" for p in nats["ports"])
    # The same soft memory limit as the embedded server's: a flood of requests from one credential stays bounded.
    from aura.natsd import BUS_MEMORY_LIMIT

    assert (nats.get("environment") or {}).get("GOMEMLIMIT") == BUS_MEMORY_LIMIT


def test_the_bus_is_provisioned_with_the_admin_credential_before_any_service(
        services: dict[str, dict[str, Any]]) -> None:
    provision = services["provision"]
    assert provision["command"] == ["aura", "bus", "provision"]
    assert provision["depends_on"]["nats"]["condition"] == "service_healthy"
    assert provision.get("restart", "no") == "no"
    assert provision["user"] == f"{UIDS['admin']}:10001"
    for name in SERVICES:
        assert services[name]["depends_on"]["provision"]["condition"] == "service_completed_successfully", name


# --- the five services --------------------------------------------------------------------------------------


def test_every_aura_container_comes_from_the_one_image(services: dict[str, dict[str, Any]]) -> None:
    images = {services[name]["image"] for name in AURA_IMAGE_SERVICES}
    assert len(images) == 1, f"AURA services use different images: {images}"
    # Built exactly once, from the repo's Dockerfile: compose builds a `build:` section per service (six
    # identical parallel builds otherwise) and doesn't pull an image another service of the project builds.
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["keygen"], f"the image should be built by keygen alone, not {builders}"
    build = services["keygen"]["build"]
    assert build["context"] == str(COMPOSE_FILE.parent)
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    for name in SERVICES:
        assert services[name]["command"] == ["python", "-m", f"services.{name}"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_wiring(services: dict[str, dict[str, Any]], name: str) -> None:
    svc = services[name]
    port = PORTS[name]
    env = svc["environment"]
    assert env["AURA_NATS_URL"] == "nats://nats:4222"
    assert env["AURA_HEALTH_HOST"] == "0.0.0.0"
    assert env[f"AURA_{name.upper()}_PORT"] == str(port)
    assert float(env["AURA_REPLAY_INTERVAL_S"]) <= 2, "replay interval should be small so cycles come quickly"

    # Published on loopback only, on its own port.
    assert [(p["host_ip"], p["target"], str(p["published"])) for p in svc["ports"]] == [("127.0.0.1", port, str(port))]

    # Healthcheck on its own /readyz, with Python (python:3.11-slim has no curl).
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    assert f"http://127.0.0.1:{port}/readyz" in test[3]
    assert svc["healthcheck"]["retries"] >= 10

    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
    # Its own user, its own key volume (rw: it writes its pins there), the public keys read-only.
    assert svc["user"] == f"{UIDS[name]}:10001"
    own = mount_for_path(svc, f"{KEYS}/{name}/bus.nk")
    assert own is not None and own["source"].endswith(f"keys-{name}") and not own.get("read_only", False)
    public = mount_for_path(svc, f"{KEYS}/public/risk.pub")
    assert public is not None and public.get("read_only") is True


def test_healthcheck_arguments_survive_podman(services: dict[str, dict[str, Any]]) -> None:
    # podman's Docker-compatible API (4.x) joins CMD arguments and re-splits them on whitespace, which
    # turned `python -c "import urllib..."` into `python -c import` there (podman issue #26519).
    for name, svc in services.items():
        for arg in (svc.get("healthcheck") or {}).get("test", []):
            assert not re.search(r"\s", arg), f"{name}: healthcheck argument with whitespace breaks on podman: {arg!r}"


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status in the class attribute (set per server below)."""

    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_readyz_healthcheck_passes_only_on_200(services: dict[str, dict[str, Any]], status: int, healthy: bool) -> None:
    handler = type("Handler", (_StatusHandler,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name in SERVICES:
            snippet = services[name]["healthcheck"]["test"][3]
            snippet = snippet.replace(f":{PORTS[name]}/", f":{server.server_address[1]}/")
            probe = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30)
            assert (probe.returncode == 0) is healthy, f"{name}: /readyz {status} -> exit {probe.returncode}"
    finally:
        server.shutdown()
        server.server_close()


def test_host_ports_can_be_moved_by_environment(empty_env_file: Path) -> None:
    moved = {f"AURA_{name.upper()}_HOST_PORT": str(18000 + PORTS[name]) for name in SERVICES}
    svcs = resolved_config(empty_env_file, moved)["services"]
    for name in SERVICES:
        (port,) = svcs[name]["ports"]
        assert (str(port["published"]), port["target"]) == (str(18000 + PORTS[name]), PORTS[name])


# --- keys, secrets and the journal --------------------------------------------------------------------------


def test_keygen_is_a_one_shot_without_network_that_hands_each_key_volume_to_its_user(
        services: dict[str, dict[str, Any]]) -> None:
    keygen = services["keygen"]
    command = keygen["command"]
    assert command[:2] == ["sh", "-c"] and command[2].startswith("aura keygen --keys-dir " + KEYS)
    assert keygen.get("restart", "no") == "no"
    assert "ports" not in keygen and "healthcheck" not in keygen
    # The only container that runs as root: it must chown each key volume, and it is reachable by nothing.
    assert keygen["user"] == "0:0" and keygen["network_mode"] == "none"
    for principal in PRINCIPALS:
        assert f"--owner {principal}={UIDS[principal]}:10001" in command[2]
        mount = mount_for_path(keygen, f"{KEYS}/{principal}/bus.nk")
        assert mount is not None and mount["type"] == "volume" and not mount.get("read_only", False)
    public = mount_for_path(keygen, f"{KEYS}/public/risk.pub")
    assert public is not None and not public.get("read_only", False)


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_each_private_key_volume_is_mounted_only_where_it_belongs(services: dict[str, dict[str, Any]],
                                                                  principal: str) -> None:
    source = mount_for_path(services["keygen"], f"{KEYS}/{principal}/bus.nk")["source"]  # type: ignore[index]
    holders = {"keygen", *HOLDERS.get(principal, {principal})}
    assert services_mounting(services, source) == holders


def test_public_keys_are_read_only_for_everyone_but_keygen(services: dict[str, dict[str, Any]]) -> None:
    source = mount_for_path(services["keygen"], f"{KEYS}/public/risk.pub")["source"]  # type: ignore[index]
    for name in services_mounting(services, source) - {"keygen"}:
        assert mount_for_path(services[name], f"{KEYS}/public/risk.pub").get("read_only") is True, name  # type: ignore[union-attr]


def test_keygen_writes_a_server_config_that_admits_exactly_the_generated_keys(tmp_path: Path) -> None:
    """What the keygen job runs, run here: the config names every principal's NKey with its permissions."""
    from shared.bus_access import JS_ACCOUNT, permissions
    from shared.credentials import KeyLayout, bus_public_key

    env = clean_env({"AURA_HOME": str(tmp_path)})
    keys, conf = tmp_path / "keys", tmp_path / "nats.conf"
    for args in (["keygen", "--keys-dir", str(keys)],
                 ["bus", "config", "--host", "0.0.0.0", "--port", "4222", "--store", "/data", "--monitor-port",
                  "8222", "--out", str(conf), "--world-readable"]):
        done = subprocess.run([sys.executable, "-m", "aura.cli", *args], env=env | {"AURA_KEYS_DIR": str(keys)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    doc = json.loads(conf.read_text())
    assert (doc["host"], doc["port"], doc["jetstream"]["store_dir"], doc["http"]) == ("0.0.0.0", 4222, "/data",
                                                                                   "127.0.0.1:8222")
    # One account per principal (JetStream and the admin credential in AURA), one user in each.
    users = {u["nkey"]: (name, u["permissions"]) for name, acc in doc["accounts"].items() for u in acc["users"]}
    layout = KeyLayout(keys)
    for principal in PRINCIPALS:
        account, perm = users[bus_public_key(layout, principal)]
        assert account == (JS_ACCOUNT if principal == "admin" else principal)
        assert perm["publish"]["allow"] == permissions(principal).publish
        assert perm["subscribe"]["allow"] == permissions(principal).subscribe
    assert len(users) == len(PRINCIPALS) and "users" not in doc["authorization"]
    assert oct(conf.stat().st_mode & 0o777) == "0o644"  # public NKeys only: the nats container must read it
    for principal in PRINCIPALS:
        assert oct((keys / principal / "bus.nk").stat().st_mode & 0o777) == "0o600"


def test_no_exchange_credentials_reach_any_container(config: dict[str, Any]) -> None:
    # The base file is dry-run only and reads no keys; live keys come only as the secret file of
    # docker-compose.live.yml (tests/compose/test_compose_live.py).
    assert "secrets" not in config
    for name, svc in config["services"].items():
        exchange_vars = {n for n in svc.get("environment") or {} if "EXCHANGE" in n}
        assert not exchange_vars, f"{name} must not see exchange credentials: {exchange_vars}"
        assert not svc.get("secrets"), f"{name} must not mount secrets"
    assert config["services"]["executor"]["environment"]["AURA_DRY_RUN"] == "true", "dry-run must be the default"


def test_no_secret_value_is_hard_coded(config: dict[str, Any], empty_env_file: Path) -> None:
    # With nothing in the environment every credential-like variable resolves to empty...
    for name, svc in config["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(var) and not var.endswith("_FILE"):
                assert value in ("", None), f"{name}: {var} has a hard-coded value"
    # ...and keys the caller exports reach no container at all.
    sentinel = {"AURA_EXCHANGE_API_KEY": "sentinel-key-123", "AURA_EXCHANGE_API_SECRET": "sentinel-secret-456"}
    resolved = resolved_config(empty_env_file, sentinel)
    blob = json.dumps(resolved)
    assert not [v for v in sentinel.values() if v in blob]
    assert not [k for k in sentinel if k in blob]
    # The raw file assigns credentials only through ${VAR} / ${VAR:-} references.
    for line in COMPOSE_FILE.read_text().splitlines():
        match = re.match(r"\s*([A-Z0-9_]*(?:KEY|SECRET|TOKEN|PASSWORD)[A-Z0-9_]*)\s*[:=]\s*(\S.*)$", line)
        if match and not match.group(1).endswith("_FILE"):
            assert re.fullmatch(r"\$\{" + match.group(1) + r"(:-)?\}", match.group(2).strip()), line


def test_journal_volume_is_executor_only(services: dict[str, dict[str, Any]]) -> None:
    executor = services["executor"]
    journal_dir = posixpath.join(executor["environment"]["AURA_HOME"], "executor")
    mount = mount_for_path(executor, posixpath.join(journal_dir, "journal.sqlite"))
    assert mount is not None and mount["type"] == "volume" and not mount.get("read_only", False)
    assert mount["target"].rstrip("/") == journal_dir
    assert services_mounting(services, mount["source"]) == {"executor"}
    for name, svc in services.items():
        if name != "executor":
            assert all(m["target"].rstrip("/") != journal_dir for m in mounts(svc)), name


def test_no_service_runs_privileged_or_as_root(services: dict[str, dict[str, Any]]) -> None:
    uids = []
    for name, svc in services.items():
        assert not svc.get("privileged"), name
        assert svc.get("network_mode") != "host", name
        if name in ("keygen", "nats"):
            continue  # keygen: root without network (checked above); nats: the upstream image
        uid = int(str(svc["user"]).split(":")[0])
        assert uid != 0, f"{name} runs as root"
        uids.append(uid)
    # One user per service, and for the provision job (admin), the operator's CLI and the workers.
    assert len(set(uids)) == len(SERVICES) + 3


def test_optimizer_workers_scale_with_their_own_user_and_key_volume_only(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up --scale optimizer-worker=N`: nothing in the service pins one instance (no container name,
    no host port), each runs as the worker user with the worker's key volume alone, after the bus is provisioned."""
    svc = services[WORKER]
    assert svc["command"] == ["python", "-m", "services.optimizer.worker"]
    assert "container_name" not in svc and not svc.get("ports"), "a scaled service cannot pin a name or host port"
    assert svc["user"] == f"{UIDS['worker']}:10001"
    own = mount_for_path(svc, f"{KEYS}/worker/bus.nk")
    assert own is not None and own["source"].endswith("keys-worker") and not own.get("read_only", False)
    public = mount_for_path(svc, f"{KEYS}/public/risk.pub")
    assert public is not None and public.get("read_only") is True
    assert {m["source"] for m in mounts(svc)} == {own["source"], public["source"]}  # and nothing else
    assert mount_for_path(svc, f"{KEYS}/optimizer/signing.key") is None, "a worker must never hold the optimizer's key"
    assert svc["environment"]["AURA_WORKER_PORT"] == "8106"
    assert "http://127.0.0.1:8106/readyz" in svc["healthcheck"]["test"][3]
    assert svc["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    assert svc["depends_on"]["nats"]["condition"] == "service_healthy"

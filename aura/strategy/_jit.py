"""Numba on-disk cache that is invalidated when *any* strategy or backtest source changes.

Numba stamps a cached function with a hash of the one file that defines it.  Our kernels inline functions
from other modules (the fast backtest kernel calls score, voting, sizing, ... from aura.strategy), so a
change to ``score.py`` would leave the cached kernel running the old score: the reference path and the
fast path would silently disagree, and a developer's machine would disagree with a fresh container.  The
locators below stamp every function defined in ``aura/strategy`` or ``aura/backtest`` with a hash over all
sources of both packages instead.  Functions defined elsewhere are untouched (``from_function`` declines).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from numba.core import caching

_PACKAGES = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "backtest")


# Modules no kernel can read from (file output, CLI, plotting): editing them must not throw the compiled
# kernels away.  Everything else counts, including modules without numba code whose constants kernels
# freeze at compile time (packing.py's parameter slots, engine.py's fill codes).
_NOT_KERNEL = frozenset({"cli.py", "run.py", "report.py", "metrics.py", "parity.py", "data.py"})


@functools.lru_cache(maxsize=1)
def sources_digest() -> bytes:
    h = hashlib.sha256()
    for pkg in _PACKAGES:
        for path in sorted(pkg.glob("*.py")):
            if pkg.name == "backtest" and path.name in _NOT_KERNEL:
                continue
            h.update(f"{pkg.name}/{path.name}".encode())
            h.update(path.read_bytes())
    return h.digest()


def _ours(py_file: str) -> bool:
    path = Path(py_file).resolve()
    return any(path.parent == pkg for pkg in _PACKAGES)


class _AuraInTreeLocator(caching.InTreeCacheLocator):
    def get_source_stamp(self) -> bytes:
        return sources_digest()

    @classmethod
    def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
        return super().from_function(py_func, py_file) if _ours(py_file) else None


class _AuraUserWideLocator(caching.UserWideCacheLocator):
    def get_source_stamp(self) -> bytes:
        return sources_digest()

    @classmethod
    def from_function(cls, py_func, py_file):  # type: ignore[no-untyped-def]
        return super().from_function(py_func, py_file) if _ours(py_file) else None


def install() -> None:
    classes = caching.CacheImpl._locator_classes
    for cls in (_AuraUserWideLocator, _AuraInTreeLocator):  # in-tree first, user-wide if not writable
        if cls not in classes:
            classes.insert(0, cls)

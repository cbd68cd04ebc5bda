"""SQLite files read by processes that must never write them (the executor's journal, read by the CLI and the
console): one way to open them, because the obvious one is wrong for some paths."""

from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path


def connect_read_only(path: Path | str, timeout: float) -> sqlite3.Connection:
    """``path`` opened read-only (an SQLite ``mode=ro`` URI).  The path is percent-quoted: a '#' or '?' in it (an
    AURA_HOME under ``a#b``) ended the file name in the URI and dropped ``mode=ro``, so SQLite created the truncated
    file ``a`` read-write and the reader failed with "no such table"."""
    return sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, timeout=timeout)

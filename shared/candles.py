"""Canonical byte encoding of a candle panel, so its sha256 is a content digest of the exact data.

Layout: a JSON header line (symbols, shape) then raw little-endian arrays: timestamps int64 (T,), and
open/high/low/close/volume float64 (T, N) in C order.  NaN is canonicalised to one bit pattern so two
equal panels always hash equal.  Decoding is a zero-copy ``np.frombuffer``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from aura.strategy.types import Panel

_COLUMNS = ("open", "high", "low", "close", "volume")
_MAGIC = "aura-panel-v1"


def encode_panel(panel: Panel) -> bytes:
    header = json.dumps({"magic": _MAGIC, "symbols": list(panel.symbols), "t": len(panel.timestamps)},
                        separators=(",", ":")).encode() + b"\n"
    parts = [header, np.ascontiguousarray(panel.timestamps, dtype="<i8").tobytes()]
    for name in _COLUMNS:
        arr = np.ascontiguousarray(getattr(panel, name), dtype="<f8")
        arr = np.where(np.isnan(arr), np.nan, arr)
        parts.append(arr.tobytes())
    return b"".join(parts)


def decode_panel(data: bytes) -> Panel:
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    if header.get("magic") != _MAGIC:
        raise ValueError(f"not an encoded panel (magic {header.get('magic')!r})")
    symbols = tuple(header["symbols"])
    t, n = int(header["t"]), len(symbols)
    expected = newline + 1 + 8 * t + 5 * 8 * t * n
    if len(data) != expected:
        raise ValueError(f"encoded panel has {len(data)} bytes, expected {expected}")
    offset = newline + 1
    timestamps = np.frombuffer(data, dtype="<i8", count=t, offset=offset)
    offset += 8 * t
    cols = []
    for _ in _COLUMNS:
        cols.append(np.frombuffer(data, dtype="<f8", count=t * n, offset=offset).reshape(t, n))
        offset += 8 * t * n
    return Panel(symbols, timestamps, *cols)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

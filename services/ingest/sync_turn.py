"""One provider's turn in a symbol's sync, and what that sync has learnt so far.

``SymbolState`` is what one symbol's sync knows while it walks the provider chain: the rows held and whose they
are, what is still unfilled, where the exchange's own sources answered "no candle here" and where they failed, why
a range went unanswered, and the provisional rows taken out to be asked for again.  ``ask_provider`` is one
provider's turn: it asks for what is unfilled, validates and keeps what is new, cross-checks what overlaps with
the candles held, and records what the provider says does not exist.

Separate from sync.py, which sets the window, reads and writes the cache and its coverage, and draws the
conclusions (confirmed and pending gaps, fallback candles replaced) once every provider has had its turn: this
part never touches the cache.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from services.ingest.coverage import (
    Disagreement,
    cross_check,
    in_ranges,
    member,
    normalize,
    runs,
    sorted_unique,
    split_new,
    subtract,
    union,
)
from services.ingest.providers.base import FetchRequest, Provider, Range, interval_ms
from services.ingest.sync_config import IngestConfig, SymbolReport
from services.ingest.validation import drop_forming, report_issues, validate_candles
from shared.logging import warn

log = logging.getLogger("aura.ingest")


@dataclass
class SymbolState:
    """What one symbol's sync has learnt so far (all ranges normalized)."""

    names: list[str]
    frames: list[pl.DataFrame]
    codes: list[np.ndarray]
    known_ts: np.ndarray
    unfilled: list[Range]
    auth_names: set[str]  # providers whose candles are this exchange's own (incl. unattributed cache rows)
    confirmed_before: list[Range]  # gaps confirmed by earlier syncs: filled only by the exchange's own candles
    empty_by: dict[str, list[Range]] = field(default_factory=dict)  # authoritative "no candle here"
    failed_auth: list[Range] = field(default_factory=list)
    notes: list[tuple[int, int, str]] = field(default_factory=list)  # why a range could not be answered
    flags: dict[str, set[str]] = field(default_factory=dict)
    # Provisional rows taken out of the cache while the exchange's own sources are asked for their slots.
    held: pl.DataFrame | None = None
    held_codes: np.ndarray | None = None
    replaced: pl.DataFrame | None = None  # held rows the exchange's own sources supplied again
    replaced_codes: np.ndarray | None = None
    replaced_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fallback_added: list[Range] = field(default_factory=list)  # new rows from non-authoritative providers
    dropped: int = 0  # held fallback rows dropped where the exchange says no candle exists (restore_held)


def ask_provider(
    provider: Provider,
    st: SymbolState,
    sym: str,
    exchange: str,
    timeframe: str,
    cfg: IngestConfig,
    now_ms: int,
    counters: Counter[str],
    rep: SymbolReport,
) -> None:
    """One provider's turn: ask for what is still unfilled, keep what is new, learn what it says is absent."""
    iv = interval_ms(timeframe)
    auth = provider.authoritative(exchange)
    todo = st.unfilled
    if not auth:
        # Where the exchange itself says "no candle", a candle from another venue would be an invention.
        todo = subtract(todo, all_empty(st))
    if not todo or not provider.supports(exchange, sym, timeframe):
        return
    pad = cfg.lookback_bars * iv
    # Rows a provider sends from the lookback padding are kept too when the cache lacks them (warm-up
    # history); where the cache has them they are cross-checked instead.  A fallback never fills a confirmed
    # gap.  The exchange's own sources do: a candle its API or archive now supplies where an earlier answer
    # said none existed (a klines answer that lagged past the settle time) exists after all, and dropping it
    # kept a hole that took the pair out of the screen for a lookback's length (~90 bars; found by an audit).
    no_fill = [] if auth else union(st.confirmed_before, all_empty(st))
    asked = subtract(normalize([(max(0, s - pad), e) for s, e in todo]), no_fill)
    started = time.perf_counter()
    try:
        result = provider.fetch(FetchRequest(exchange, sym, timeframe, tuple(todo), now_ms, lookback_ms=pad))
    except Exception as exc:
        # Providers report upstream trouble in ``failed``; an exception is a provider bug or data it does not
        # recognise.  Loud (traceback), but it fails this provider only: the rest of the chain still gets its turn.
        rep.timings["fetch_s"] = rep.timings.get("fetch_s", 0.0) + time.perf_counter() - started
        log.error(f"{sym} {timeframe}: provider {provider.name} raised {type(exc).__name__}: {exc}", exc_info=True,
                  extra={"tag": "PROVIDER_ERROR", "fields": {"symbol": sym, "provider": provider.name,
                                                             "error": type(exc).__name__}})
        counters[f"provider_errors.{provider.name}"] += 1
        st.notes.extend((s, e, f"{provider.name}: raised {type(exc).__name__}") for s, e in todo)
        if auth:
            st.failed_auth = union(st.failed_auth, todo)  # it answered nothing: no gap can be confirmed by it
        return
    rep.timings["fetch_s"] = rep.timings.get("fetch_s", 0.0) + time.perf_counter() - started
    rep.timings["parse_s"] = rep.timings.get("parse_s", 0.0) + result.parse_s
    rep.requests[provider.name] = rep.requests.get(provider.name, 0) + result.requests
    counters[f"requests.{provider.name}"] += result.requests

    checked = validate_candles(result.frame, iv, allow_nan_volume="no_volume" in result.flags)
    report_issues(log, checked.issues, counters, tally=rep.issues, symbol=sym, timeframe=timeframe,
                  provider=provider.name)
    frame, forming = drop_forming(checked.frame, iv, now_ms)
    rep.forming_dropped += forming
    counters["forming_dropped"] += forming

    new, overlap = split_new(frame, asked, st.known_ts)
    if overlap.height:
        report_disagreements(_cross_check(st, overlap, auth, cfg), provider.name, sym, timeframe, counters, rep)
    if new.height:
        if auth and st.confirmed_before:
            _late(new["timestamp"].to_numpy(), st.confirmed_before, provider.name, sym, timeframe, iv, counters)
        if provider.name not in st.names:
            st.names.append(provider.name)
        st.frames.append(new)
        st.codes.append(np.full(new.height, st.names.index(provider.name), dtype=np.int16))
        new_ts = new["timestamp"].to_numpy()  # sorted, unique and disjoint from known_ts (split_new)
        st.known_ts = new_ts if len(st.known_ts) == 0 else np.sort(np.concatenate((st.known_ts, new_ts)), kind="stable")
        st.unfilled = subtract(st.unfilled, runs(new_ts, iv))
        rep.added_by_provider[provider.name] = rep.added_by_provider.get(provider.name, 0) + new.height
        if not auth:
            st.fallback_added = union(st.fallback_added, runs(new_ts, iv))
        if result.flags:
            st.flags.setdefault(provider.name, set()).update(result.flags)

    rejected = checked.rejected_ts
    failed = [(s, e) for s, e, _ in result.failed] + [(int(t), int(t) + iv) for t in rejected]
    st.notes.extend((s, e, f"{provider.name}: {why}") for s, e, why in result.failed)
    st.notes.extend((int(t), int(t) + iv, f"{provider.name}: rejected candle") for t in rejected)
    if auth:
        returned = sorted_unique(result.frame["timestamp"].to_numpy())
        empty = subtract(result.answered, runs(returned[returned % iv == 0], iv))
        st.empty_by[provider.name] = union(st.empty_by.get(provider.name, []), empty)
        st.failed_auth = union(st.failed_auth, failed)
    # "Does not have it" is read from the provider's silence, and silence is no answer from one that was
    # unreachable or not asked this turn: offline, a gap read "coingecko: ConnectError; coingecko: does not have
    # it".  Its failures are then the reason given; what it lacks is learnt on a turn where it answers.
    if not result.failed:
        supplied = runs(new["timestamp"].to_numpy(), iv)
        unavailable = subtract(todo, union(union(result.answered, failed), supplied))
        st.notes.extend((s, e, f"{provider.name}: does not have it") for s, e in unavailable)


def _late(new_ts: np.ndarray, confirmed: list[Range], provider: str, sym: str, timeframe: str, iv: int,
          counters: Counter[str]) -> None:
    """Say so when the exchange's own source supplies candles inside gaps an earlier sync confirmed (they are
    kept, and the gaps shrink by them: ``rebuild_gaps`` takes filled slots out)."""
    late = new_ts[in_ranges(new_ts, confirmed)]
    if len(late):
        counters["late_candles"] += len(late)
        warn(log, "DATA_LATE", f"{sym} {timeframe}: {provider} supplied {len(late)} candle(s) it had said did not "
             f"exist, from {iso(int(late[0]))}; kept", symbol=sym, provider=provider, first=int(late[0]),
             count=len(late), interval_ms=iv)


def restore_held(st: SymbolState, iv: int, sym: str = "", timeframe: str = "") -> None:
    """Put back the provisional rows the exchange's own sources did not replace (kept, still provisional), but
    none where the sync confirms that no candle exists (``confirmed_empty``): a fallback's candle there would be an
    invention (a day the venue was down), kept for good once the slot left the provisional list (found by an
    audit).  Those slots stay unfilled, so the sync confirms them as gaps, as the backtest's data has them."""
    if st.held is None or st.held_codes is None:
        return
    held, codes = st.held, st.held_codes
    absent = confirmed_empty(st)
    if absent:
        inside = in_ranges(held["timestamp"].to_numpy(), absent)
        if inside.any():
            warn(log, "DATA_REPLACED", f"{sym} {timeframe}: {int(inside.sum())} fallback candle(s) dropped where the "
                 f"exchange's own sources say no candle exists", symbol=sym, rows=int(inside.sum()))
            held, codes = held.filter(pl.Series(~inside)), codes[~inside]
            st.dropped += int(inside.sum())
    st.held = st.held_codes = None
    ts = held["timestamp"].to_numpy()
    replaced = member(ts, st.known_ts)
    st.replaced, st.replaced_codes, st.replaced_ts = held.filter(pl.Series(replaced)), codes[replaced], ts[replaced]
    back = ~replaced
    if back.any():
        back_ts = ts[back]
        st.frames.append(held.filter(pl.Series(back)))
        st.codes.append(codes[back])
        st.known_ts = np.sort(np.concatenate((st.known_ts, back_ts)), kind="stable")
        st.unfilled = subtract(st.unfilled, runs(back_ts, iv))


def report_disagreements(diffs: list[Disagreement], provider: str, sym: str, timeframe: str,
                         counters: Counter[str], rep: SymbolReport) -> None:
    """Count ``provider``'s disagreements with the candles kept, and log the first 20."""
    if not diffs:
        return
    rep.disagreements += len(diffs)
    counters["disagreements"] += len(diffs)
    counters[f"disagreements.{provider}"] += len(diffs)
    for d in diffs[:20]:
        warn(log, "DATA_DISAGREE", f"{sym} {timeframe} {d.column} at {iso(d.timestamp)}: kept {d.kept!r}, "
             f"{provider} says {d.other!r} ({d.rel:.3%})", symbol=sym, provider=provider, ts=d.timestamp,
             column=d.column, kept=d.kept, other=d.other, rel=d.rel)


def all_empty(st: SymbolState) -> list[Range]:
    """Where any of the exchange's own sources answered that no candle exists."""
    return normalize([r for rs in st.empty_by.values() for r in rs])


def confirmed_empty(st: SymbolState) -> list[Range]:
    """Where this sync confirms that no candle exists: one of the exchange's own sources said so, none failed."""
    return subtract(all_empty(st), st.failed_auth)


def _cross_check(st: SymbolState, overlap: pl.DataFrame, auth: bool, cfg: IngestConfig) -> list[Disagreement]:
    """Compare a provider's rows with the candles already held, at the tolerance the pair of sources deserves.

    Two sources of the exchange's own candles (its archive, its API) must agree exactly, volume included;
    anything involving another venue or CoinGecko's USD aggregate only roughly, and on prices only.
    """
    frames = [f.with_columns(_src=pl.Series(c)) for f, c in zip(st.frames, st.codes, strict=True) if f.height]
    known = pl.concat(frames, how="vertical").join(overlap.select("timestamp"), on="timestamp", how="semi")
    auth_codes = [i for i, name in enumerate(st.names) if name in st.auth_names]
    same = known["_src"].is_in(auth_codes) if auth else pl.Series([False] * known.height)
    out = cross_check(known.filter(same).drop("_src"), overlap, cfg.tol_same_venue, compare_volume=True)
    out += cross_check(known.filter(~same).drop("_src"), overlap, cfg.tol_other_venue, compare_volume=False)
    return sorted(out, key=lambda d: (d.timestamp, d.column))


def iso(ms: int) -> str:
    """A time as the sync's log lines give it (UTC, to the minute)."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000))

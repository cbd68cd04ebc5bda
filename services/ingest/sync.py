"""Fill the per-symbol cache from the provider chain: the API the ingest service shell calls.

``sync(symbols, exchange, timeframe, since_ms, until_ms, config, now_ms) -> SyncReport``

For each symbol the *window* is every candle open time ``t`` on the timeframe grid with
``since_ms <= t <= min(until_ms, last closed candle at now_ms)``.  What the coverage map already resolves
(candles held, confirmed gaps) is never asked again; when nothing is missing a sync makes zero requests.
Each missing range goes to the providers in priority order (archive, tail feeds, CoinGecko); each fills
what it has and the rest moves on.  A candle is never invented: what nobody has stays a gap.

**complete** (per symbol, and for the report when true for every symbol): every open time in the window
either has a candle in the cache or lies in a *confirmed* gap, i.e. at least one authoritative provider
(a source of this exchange's own candles: its archive or its API) answered that no candle exists there and
no authoritative provider failed on it.  Anything else (a provider down, rate limited, corrupt, or a range
nobody serves) is a *pending* gap: recorded with the reason, reported, asked again on the next sync.

Candles a fallback supplied (CoinGecko: no volume) are *provisional*: they count as held, but while they
opened less than ``provisional_days`` ago each sync asks the exchange's own sources for them again (before
any fallback's turn) and replaces them with what those supply; when there is nothing provisional in the
window, a fresh cache still makes zero requests.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from services.ingest import cache
from services.ingest.coverage import (
    Coverage,
    Gap,
    align_up,
    attribute,
    build_spans,
    combine,
    cross_check,
    in_ranges,
    intersect,
    member,
    rebuild_gaps,
    runs,
    subtract,
    union,
)
from services.ingest.providers.base import (
    Provider,
    Range,
    interval_ms,
    last_closed_open,
    unified_symbol,
)
from services.ingest.sync_config import IngestConfig, SymbolReport, SyncReport, build_providers
from services.ingest.sync_turn import (
    SymbolState,
    ask_provider,
    confirmed_empty,
    iso,
    report_disagreements,
    restore_held,
)
from services.ingest.validation import find_jumps, report_issues
from shared.logging import info, warn

log = logging.getLogger("aura.ingest")

# Binance spot opened in July 2017: nothing to ask for before that.
DEFAULT_SINCE_MS = 1_498_867_200_000  # 2017-07-01 00:00 UTC
UNKNOWN_PROVIDER = "cache"  # rows found in a cache file whose coverage sidecar was missing or stale


def sync(
    symbols: Sequence[str],
    exchange: str,
    timeframe: str,
    since_ms: int | None,
    until_ms: int | None,
    config: Any,
    now_ms: int,
    *,
    providers: Sequence[Provider] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> SyncReport:
    """Bring the cache of ``symbols`` up to date; never raises for provider trouble (see the report)."""
    cfg = IngestConfig.coerce(config)
    iv = interval_ms(timeframe)
    started = time.perf_counter()
    since = align_up(DEFAULT_SINCE_MS if since_ms is None else since_ms, iv)
    last = last_closed_open(now_ms, iv)
    if until_ms is not None:
        last = min(last, until_ms - until_ms % iv)
    window = [(since, last + iv)] if last >= since else []
    report = SyncReport(exchange, timeframe, since, until_ms, now_ms, last_closed_open(now_ms, iv))
    chain = list(providers) if providers is not None else build_providers(cfg, exchange)
    try:
        for i, raw in enumerate(symbols):
            sym = unified_symbol(raw)
            t0 = time.perf_counter()
            try:
                rep = _sync_symbol(sym, exchange, timeframe, window, chain, cfg, now_ms, report.counters)
                rep.timings["merge_s"] = time.perf_counter() - t0 - rep.timings.get("fetch_s", 0.0)
            except Exception as exc:  # a bug or an unwritable cache: report it, carry on with the others
                log.error(f"{sym}: {type(exc).__name__}: {exc}", exc_info=True,
                          extra={"tag": "SYNC_ERROR", "fields": {"symbol": sym}})
                rep = SymbolReport(sym, error=f"{type(exc).__name__}: {exc}")
            report.symbols[sym] = rep
            if progress is not None:
                progress(i + 1, len(symbols), sym)
    finally:
        if providers is None:
            for p in chain:
                p.close()
    report.seconds = time.perf_counter() - started
    return report


def _sync_symbol(
    sym: str,
    exchange: str,
    timeframe: str,
    window: list[Range],
    chain: Sequence[Provider],
    cfg: IngestConfig,
    now_ms: int,
    counters: Counter[str],
) -> SymbolReport:
    iv = interval_ms(timeframe)
    path = cache.candle_path(cfg.cache_root, exchange, timeframe, sym)
    rep = SymbolReport(sym, window=window[0] if window else None)
    with cache.symbol_lock(path):
        cached = cache.read_candles(path)
        ts_cached = cached["timestamp"].to_numpy()
        cov = cache.read_coverage(path)
        rebuilt = cov is None or not cov.matches(ts_cached) or cov.interval_ms != iv
        if rebuilt:
            if cov is not None or len(ts_cached):
                warn(log, "CACHE_MISMATCH", f"{sym}: coverage sidecar missing or stale, rebuilt from the rows",
                     symbol=sym, rows=len(ts_cached))
            # Rows we cannot attribute are kept (they passed validation when written) but nothing else is
            # assumed: holes between them are unresolved and will be asked again.
            old = cov
            cov = Coverage(exchange, sym, timeframe, iv, flags=old.flags if old is not None else {})
            cov.spans = build_spans(ts_cached, np.zeros(len(ts_cached), dtype=np.int16), [UNKNOWN_PROVIDER], iv)
            # Rows a fallback supplied stay provisional (asked again of the exchange's own sources): the ones the
            # stale sidecar listed, and any without a volume (CoinGecko's).  Attributed to the cache, which counts
            # as the exchange's own, a crash between the two writes made them permanent (found by an audit).
            no_volume = ts_cached[np.isnan(cached["volume"].to_numpy())]
            cov.provisional = intersect(union(old.provisional if old is not None else [], runs(no_volume, iv)),
                                        runs(ts_cached, iv))
            cov.stamp(ts_cached, now_ms)
        names: list[str] = []
        codes_cached = attribute(ts_cached, cov.spans, names, UNKNOWN_PROVIDER)
        live = [(align_up(now_ms - int(cfg.provisional_days * 86_400_000), iv), now_ms + iv)]
        expired = _expire_provisional(cov, live, sym, timeframe, cfg)
        missing = subtract(window, cov.resolved())
        # The bar that closed last, confirmed absent minutes after its close (an API lagging past the settle time),
        # may still come: asked again at every sync until the next bar closes.  Not asked, a held pair's cycle
        # stayed stale for the whole bar though the candle had come (found by an audit); a pair halted for good
        # costs one request per sync for one bar.
        newest = last_closed_open(now_ms, iv)
        newest_bar = intersect(window, [(newest, newest + iv)])
        late = intersect([(g.start, g.end) for g in cov.gaps if g.confirmed], newest_bar)
        missing = union(missing, late)
        # Only the exchange's own sources can replace a fallback's candles, and only when one is asked first.
        own_first = bool(chain) and chain[0].authoritative(exchange)
        recheck = intersect(cov.provisional, window) if own_first else []
        if not missing and not recheck:
            # Fresh: the cache already holds (or has confirmed absent) every closed candle asked for.
            if rebuilt or expired:
                cache.write_coverage(path, cov)
            rep.finish(cov, window)
            return rep
        auth_names = {p.name for p in chain if p.authoritative(exchange)} | {UNKNOWN_PROVIDER}
        st = SymbolState(names, [cached], [codes_cached], ts_cached, union(missing, recheck), auth_names,
                         [(g.start, g.end) for g in cov.gaps if g.confirmed])
        held = in_ranges(ts_cached, recheck)
        if held.any():
            # Taken out so the exchange's own rows for these slots count as new; put back if they do not come.
            st.held, st.held_codes = cached.filter(pl.Series(held)), codes_cached[held]
            st.frames, st.codes = [cached.filter(pl.Series(~held))], [codes_cached[~held]]
            st.known_ts = ts_cached[~held]
        for provider in chain:
            if not provider.authoritative(exchange):
                restore_held(st, iv, sym, timeframe)  # a fallback is not asked again for what it already supplied
            ask_provider(provider, st, sym, exchange, timeframe, cfg, now_ms, counters, rep)
        restore_held(st, iv, sym, timeframe)

        frame, codes = combine(st.frames, st.codes)
        ts = frame["timestamp"].to_numpy()
        added_mask = ~member(ts, ts_cached)
        replaced_mask = member(ts, st.replaced_ts)
        new_mask = added_mask | replaced_mask
        jumps = find_jumps(ts, frame["close"].to_numpy(), new_mask, cfg.jump_flag_ratio)
        report_issues(log, jumps, counters, tally=rep.issues, symbol=sym, timeframe=timeframe)

        still = intersect(st.unfilled, window)
        # A re-asked confirmed gap that is still empty stays confirmed, whether the API said so again or failed to
        # answer: a failed re-read does not revoke the earlier answer (it would turn the cycle stale).
        confirmed = union(intersect(still, confirmed_empty(st)), intersect(still, late))
        pending = subtract(still, confirmed)
        confirmed_gaps = [(r, _confirmers(r, st.empty_by)) for r in confirmed]
        pending_gaps = [Gap(s, e, False, _notes_for((s, e), st.notes)) for s, e in pending]
        for g in pending_gaps:
            warn(log, "DATA_GAP", f"{sym} {timeframe}: no candles for {iso(g.start)}..{iso(g.end - iv)}",
                 symbol=sym, start=g.start, end=g.end, reasons=list(g.by))
        rep.rows_added = int(added_mask.sum())
        rep.rows_replaced = int(replaced_mask.sum())
        if st.replaced is not None and st.replaced_codes is not None and rep.rows_replaced:
            by = sorted({st.names[int(c)] for c in codes[replaced_mask]})
            info(log, "DATA_REPLACED", f"{sym} {timeframe}: {rep.rows_replaced} fallback candles replaced by "
                 f"{', '.join(by)}", symbol=sym, rows=rep.rows_replaced, by=by)
            # The fallback's numbers are checked against the exchange's as any other venue's would be.
            kept = frame.join(st.replaced.select("timestamp"), on="timestamp", how="semi")
            for code in np.unique(st.replaced_codes):
                other = st.replaced.filter(pl.Series(st.replaced_codes == code))
                report_disagreements(cross_check(kept, other, cfg.tol_other_venue, compare_volume=False),
                                     st.names[int(code)], sym, timeframe, counters, rep)
        # Settled: replaced, or the exchange's own sources all answered that no candle exists there.
        own_empty = intersect(recheck, confirmed_empty(st))
        settled = union(runs(st.replaced_ts, iv), own_empty)
        cov.provisional = union(subtract(cov.provisional, settled), intersect(st.fallback_added, live))
        cov.spans = build_spans(ts, codes, st.names, iv)
        cov.gaps = rebuild_gaps(cov.gaps, window, confirmed_gaps, pending_gaps,
                                filled=[(sp.start, sp.end) for sp in cov.spans])
        for name, flags in st.flags.items():
            cov.flags[name] = sorted(set(cov.flags.get(name, [])) | flags)
        cov.stamp(ts, now_ms)
        cov.disagreements += rep.disagreements
        if rep.rows_added or rep.rows_replaced or st.dropped:
            cache.write_candles(path, frame)
        # The sidecar goes second: a crash between the two leaves a stale sidecar, detected by its row
        # stamp on the next sync (rows kept, coverage rebuilt), never a sidecar claiming rows that are not there.
        cache.write_coverage(path, cov)
    rep.finish(cov, window)
    info(log, "SYNC_SYMBOL", f"{sym} {timeframe}: +{rep.rows_added} rows, {rep.rows_replaced} replaced, "
         f"{rep.request_count} requests, complete={rep.complete}", symbol=sym, added=rep.added_by_provider,
         requests=rep.requests, pending=len(rep.pending_gaps))
    return rep


def _expire_provisional(cov: Coverage, live: list[Range], sym: str, timeframe: str, cfg: IngestConfig) -> bool:
    """Stop asking for fallback candles opened before the ``live`` range (they stay); True if any stopped."""
    kept = intersect(cov.provisional, live)
    if kept == cov.provisional:
        return False
    old = subtract(cov.provisional, kept)
    info(log, "DATA_PROVISIONAL", f"{sym} {timeframe}: fallback candles up to {iso(old[-1][1] - cov.interval_ms)} "
         f"kept for good: the exchange's own sources did not supply them in {cfg.provisional_days:g} days",
         symbol=sym, ranges=old)
    cov.provisional = kept
    return True


def _confirmers(r: Range, empty_by: dict[str, list[Range]]) -> tuple[str, ...]:
    return tuple(sorted(name for name, rs in empty_by.items() if intersect([r], rs)))


def _notes_for(r: Range, notes: list[tuple[int, int, str]]) -> tuple[str, ...]:
    found = [text for s, e, text in notes if s < r[1] and e > r[0]]
    return tuple(dict.fromkeys(found)) or ("no provider has it",)

"""Ingest speed: cold sync from the local archive server, then warm panel loads from the cache.

1. The venue simulator's data.binance.vision face (aura.exchange_sim) runs in a *separate process* (a real CDN
   does not share our GIL) and serves monthly/daily zips + CHECKSUMs built from /work/shared/data.  Its zips
   are built before the clock starts: this measures the client, not the simulator.
2. Cold sync, archive provider only, full history (since 2017-07-01) into an empty temporary cache:
   the 17 hourly symbols (~794k candles), then the 41 daily symbols.  Every cached file is then compared
   with the source parquet (must be equal).  Figures:
   * ``cold_sync_candles_per_s``: candles / wall time, everything included (HTTP, checksums, unzip, parse,
     validation, merge, atomic Parquet writes);
   * ``parse_merge_candles_per_s``: candles / (CPU time turning verified zip bytes into candles, summed over
     the download threads + wall time of validate/merge/cross-check/write), i.e. the same run without HTTP.
3. Warm loads (files in the page cache) of ``load_panel`` for 41x1d and 17x1h: best of N after one warm-up.

The rates and load times are drawn in bench/results/ingest_speed.png (``--plot PATH``, ``--no-plot``).
Progress goes to stderr; the LAST printed line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.plotting import Bars, add_plot_args, bar_panels, machine_note, plot_path
from services.ingest.providers.base import CLOSE_GRACE_MS

NOW_MS = 1_733_443_200_000  # 2024-12-06 00:00 UTC: the day after the shared data ends
# The sync runs just past the close grace, so the last day (closing exactly at NOW_MS) counts as closed.
SYNC_NOW_MS = NOW_MS + CLOSE_GRACE_MS


def _data_dir() -> Path:
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("AURA_SHARED_DATA", root.parent / "shared" / "data")).resolve()


def _serve(conn: mp.connection.Connection, data_dir: str, timeframes: list[str]) -> None:
    """Child process: run the venue simulator (its clock stopped at NOW_MS) until told to stop."""
    from aura.exchange_sim import SimConfig, SimServer

    server = SimServer(config=SimConfig(data_dir=Path(data_dir), speed=0, now=NOW_MS)).start()
    built = sum(server.archive.prebuild(tf, server.sim.store.stems(tf)) for tf in timeframes)
    conn.send((server.base_url, built))
    conn.recv()
    conn.send(sum(server.sim.request_counts().values()))
    server.stop()


def cold_sync(url: str, cache_root: Path, timeframe: str, symbols: list[str], workers: int) -> dict[str, float]:
    from services.ingest.cli import progress_bar
    from services.ingest.sync import sync
    from services.ingest.sync_config import IngestConfig

    cfg = IngestConfig(cache_root=cache_root, archive_url=url, providers=("archive",), archive_workers=workers)
    started = time.perf_counter()
    with progress_bar(len(symbols), enabled=True) as bar:
        report = sync(symbols, "binance", timeframe, None, None, cfg, SYNC_NOW_MS, progress=bar)
    wall = time.perf_counter() - started
    errors = {s: r.error for s, r in report.symbols.items() if r.error}
    if errors:
        raise SystemExit(f"sync errors: {errors}")
    candles = report.rows_added
    parse_merge = report.timing("parse_s") + report.timing("merge_s")
    return {
        "candles": candles,
        "wall_s": wall,
        "requests": report.requests,
        "parse_s": report.timing("parse_s"),
        "merge_s": report.timing("merge_s"),
        "candles_per_s": candles / wall,
        "parse_merge_candles_per_s": candles / parse_merge if parse_merge else float("nan"),
    }


def verify(cache_root: Path, data_dir: Path, timeframe: str, stems: list[str]) -> None:
    import polars as pl

    for stem in stems:
        got = pl.read_parquet(cache_root / "binance" / timeframe / f"{stem}.parquet")
        want = pl.read_parquet(data_dir / "binance" / timeframe / f"{stem}.parquet")
        if not got.equals(want):
            raise SystemExit(f"cache differs from the source for {timeframe} {stem}")


def warm_load_ms(root: Path, timeframe: str, repeats: int) -> tuple[float, tuple[int, int]]:
    from services.ingest.cache import load_panel

    panel = load_panel(root, "binance", timeframe)  # warm-up: page cache, imports, thread pool
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        panel = load_panel(root, "binance", timeframe)
        best = min(best, time.perf_counter() - started)
    return best * 1000, panel.close.shape


def plot(figures: dict[str, float], symbols_1h: int, shape_1d: tuple[int, int], shape_1h: tuple[int, int],
         repeats: int, path: Path) -> Path:
    """The cold sync's two rates against the 1M candles/s target, and the warm loads from the synced cache
    beside the same loads from the shared data."""
    cold = Bars(f"cold sync, {symbols_1h} hourly symbols, {figures['cold_sync_candles']:,.0f} candles",
                ["end to end\n(HTTP, checksums,\nunzip, parse, merge,\nwrite)",
                 "parsed + merged\n(the same run\nwithout HTTP)"],
                {"candles/s": [figures["cold_sync_candles_per_s"], figures["cold_sync_parse_merge_candles_per_s"]]},
                "candles / s", log=False, reference=1e6, reference_label="target\n1M/s\nparsed\n+ merged")
    warm = Bars(f"warm load_panel, best of {repeats}",
                [f"{shape_1d[1]} × 1d, {shape_1d[0]:,} bars\n(target < 50 ms)",
                 f"{shape_1h[1]} × 1h, {shape_1h[0]:,} bars\n(target < 250 ms)"],
                {"from the synced cache": [figures["warm_load_1d_ms"], figures["warm_load_1h_ms"]],
                 "from the shared data": [figures["warm_load_shared_1d_ms"], figures["warm_load_shared_1h_ms"]]},
                "ms", fmt="{:.1f} ms", log=False)
    return bar_panels(path, "Ingest: cold sync from the local archive server, warm panel loads", [cold, warm],
                      machine_note(f"{figures['cold_sync_requests']:,.0f} archive requests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8, help="archive download threads (default 8)")
    ap.add_argument("--repeats", type=int, default=15, help="warm loads per panel (best is reported)")
    add_plot_args(ap, "ingest_speed")
    args = ap.parse_args()
    data_dir = _data_dir()

    # Pay one-off costs (imports compile from source here, first CSV parse) before any clock starts.
    from aura.exchange_sim.archive import build_kline_csv
    from aura.exchange_sim.candles import CandleStore
    from services.ingest.providers.binance_archive import parse_kline_csv
    from shared.logging import setup_logging

    setup_logging("ingest", "ERROR")
    sample = CandleStore(data_dir).arrays("1d", "BTC_USDT")
    assert sample is not None
    parse_kline_csv(build_kline_csv({k: v[:5] for k, v in sample.items()}, 86_400_000, False))

    print("starting the venue simulator (separate process) and building its archive zips...", file=sys.stderr)
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(child, str(data_dir), ["1h", "1d"]), daemon=True)
    proc.start()
    url, built = parent.recv()
    print(f"simulated archive at {url}: {built} monthly zips ready", file=sys.stderr)

    stems_1h = sorted(p.stem for p in (data_dir / "binance" / "1h").glob("*.parquet"))
    stems_1d = sorted(p.stem for p in (data_dir / "binance" / "1d").glob("*.parquet"))
    with tempfile.TemporaryDirectory(prefix="aura-ingest-bench-") as tmp:
        cache_root = Path(tmp) / "cache"
        h = cold_sync(url, cache_root, "1h", [s.replace("_", "/") for s in stems_1h], args.workers)
        print(f"cold 1h: {h['candles']:,} candles in {h['wall_s']:.2f}s = {h['candles_per_s']:,.0f} candles/s "
              f"end to end ({h['requests']} requests); parse {h['parse_s']:.2f}s + merge {h['merge_s']:.2f}s "
              f"= {h['parse_merge_candles_per_s']:,.0f} candles/s parsed and merged", file=sys.stderr)
        d = cold_sync(url, cache_root, "1d", [s.replace("_", "/") for s in stems_1d], args.workers)
        print(f"cold 1d: {d['candles']:,} candles in {d['wall_s']:.2f}s ({d['requests']} requests)", file=sys.stderr)
        verify(cache_root, data_dir, "1h", stems_1h)
        verify(cache_root, data_dir, "1d", stems_1d)
        print("verified: every cached file equals its source parquet", file=sys.stderr)

        load_1d, shape_1d = warm_load_ms(cache_root, "1d", args.repeats)
        load_1h, shape_1h = warm_load_ms(cache_root, "1h", args.repeats)
        shared_1d, _ = warm_load_ms(data_dir, "1d", args.repeats)
        shared_1h, _ = warm_load_ms(data_dir, "1h", args.repeats)
        print(f"warm load_panel from the cache: 1d {shape_1d} {load_1d:.1f} ms, 1h {shape_1h} {load_1h:.1f} ms "
              f"(from /work/shared/data: {shared_1d:.1f} / {shared_1h:.1f} ms)", file=sys.stderr)

    parent.send("stop")
    served = parent.recv()
    proc.join(timeout=10)
    figures = {
        "cold_sync_candles_per_s": round(h["candles_per_s"]),
        "cold_sync_parse_merge_candles_per_s": round(h["parse_merge_candles_per_s"]),
        "cold_sync_candles": h["candles"],
        "cold_sync_s": round(h["wall_s"], 3),
        "cold_sync_requests": h["requests"],
        "cold_sync_1d_s": round(d["wall_s"], 3),
        "warm_load_1d_ms": round(load_1d, 2),
        "warm_load_1h_ms": round(load_1h, 2),
        "warm_load_shared_1d_ms": round(shared_1d, 2),
        "warm_load_shared_1h_ms": round(shared_1h, 2),
        "archive_requests_served": served,
        "cpus": os.cpu_count(),
    }
    extra: dict[str, str] = {}
    if (png := plot_path(args)) is not None:  # the simulator is stopped: nothing is timed any more
        extra["plot"] = str(plot(figures, len(stems_1h), shape_1d, shape_1h, args.repeats, png))
        print(f"plot: {png}")
    print(json.dumps({**figures, **extra}))


if __name__ == "__main__":
    main()

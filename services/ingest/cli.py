"""``aura data sync``: fill the candle cache from the providers, with a progress bar and a coverage table.

    aura data sync --exchange binance --timeframe 1d --symbols BTC/USDT,ETH/USDT --since 2020-01-01 [--until 2025-06-30]
    python -m services.ingest.cli data sync ...   (same thing without the console script)

Configuration comes from the environment:

* ``AURA_HOME``: the cache lives in ``$AURA_HOME/cache/<exchange>/<timeframe>/<BASE>_<QUOTE>.parquet``;
* ``AURA_BINANCE_ARCHIVE_URL`` (default https://data.binance.vision);
* ``AURA_BINANCE_API_URL`` (default https://api.binance.com) and ``AURA_<EXCHANGE>_API_URL`` for any other
  ccxt exchange: the REST base the tail feeds use;
* ``AURA_COINGECKO_URL`` (default https://api.coingecko.com);
* optional: ``AURA_INGEST_TAIL_EXCHANGES`` (more ccxt exchanges after the cache's own, comma separated),
  ``AURA_INGEST_PROVIDERS`` (default ``archive,tail,coingecko``), ``AURA_INGEST_LOOKBACK_BARS``.

Exit status: 0 when every symbol is complete (gaps the exchange's own sources confirm are reported, not
errors), 1 when the result is incomplete (a provider unreachable, a gap still pending) or a symbol hit an error
(e.g. the cache is not writable), 2 for bad arguments, among them a pair the exchange's market list lacks (checked
before anything is downloaded, when that list can be read).  Log lines are printed above the progress bar (rich), so
the two never mix.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.ingest.providers.base import SUPPORTED_TIMEFRAMES, Provider, Range, interval_ms, unified_symbol
from services.ingest.providers.ccxt_tail import CcxtTailProvider
from services.ingest.sync import sync
from services.ingest.sync_config import IngestConfig, SyncReport, build_providers
from shared.logging import redact, setup_logging

_DAY = 86_400_000


def parse_time(text: str) -> int:
    """'2020-01-01' or '2020-01-01T12:00[:00][Z]' (UTC) -> ms."""
    raw = text.strip().removesuffix("Z")
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return int(datetime.strptime(raw, fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a UTC date/time: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)")


def add_data_parser(subparsers: Any) -> None:
    """Register ``data sync`` on an argparse subparsers object (each leaf sets ``func(args) -> int``)."""
    data = subparsers.add_parser("data", help="market data cache")
    data_sub = data.add_subparsers(dest="data_command")
    data_sub.required = True
    p = data_sub.add_parser("sync", help="fill the candle cache from the archive, the exchange and CoinGecko")
    p.add_argument("--exchange", default="binance", help="ccxt exchange id whose candles are cached (default binance)")
    p.add_argument("--timeframe", default="1d", choices=SUPPORTED_TIMEFRAMES, help="candle interval (default 1d)")
    p.add_argument("--symbols", required=True, help="comma-separated, e.g. BTC/USDT,ETH/USDT")
    p.add_argument("--since", type=parse_time, default=None, help="first candle (UTC date), default: 2017-07-01")
    p.add_argument("--until", default=None, help="last day to include (UTC date, inclusive), default: up to now")
    p.add_argument("--now", type=parse_time, default=None,
                   help="pretend the clock reads this UTC time: which bars count as closed (a test and replay "
                        "hook; default: the real clock)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--include-unlisted", action="store_true",
                   help="sync pairs the exchange's market list lacks (delisted ones keep their history in the "
                        "archive: data free of survivorship bias needs them); default: refuse them")
    p.set_defaults(func=run_sync)


def _until_ms(text: str | None) -> int | None:
    if text is None:
        return None
    ms = parse_time(text)
    # A bare date means "through the end of that day"; an explicit time is taken as the last open time.
    return ms + _DAY - 1 if len(text.strip()) == 10 else ms


class ConsoleLogHandler(logging.Handler):
    """Log records printed through the rich console as one readable line (level, tag, message; the JSON a service
    logs repeated the gap table in 400-character lines, found by an audit): while the progress bar is live they
    appear above it instead of tearing it apart."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(TaggedLine())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # a log line must never break the sync
            self.handleError(record)


class TaggedLine(logging.Formatter):
    """``LEVEL [TAG] message``, secrets redacted as in the JSON lines, and a traceback below when there is one
    (a per-symbol ``SYNC_ERROR`` carries it)."""

    def format(self, record: logging.LogRecord) -> str:
        tag = getattr(record, "tag", None)
        text = record.getMessage()
        if tag and not text.startswith(f"[{tag}]"):
            text = f"[{tag}] {text}"
        line = f"{record.levelname} {redact(text)}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A rich progress bar on stderr for ``total`` symbols, with the root logger's lines printed above it."""
    if not enabled:
        yield None
        return
    console = Console(stderr=True)
    root = logging.getLogger()
    saved = list(root.handlers)
    root.handlers = [ConsoleLogHandler(console)]
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("", total=total)

            def update(done: int, _total: int, label: str) -> None:
                progress.update(task, completed=done, description=label)

            yield update
    finally:
        root.handlers = saved


def _day(ms: int | None, iv: int) -> str:
    if ms is None:
        return "-"
    fmt = "%Y-%m-%d" if iv >= _DAY else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.gmtime(ms / 1000))


def _span(r: Range, iv: int) -> str:
    return f"{_day(r[0], iv)}..{_day(r[1] - iv, iv)}"


def provider_stretches(ranges_by_provider: dict[str, list[Range]]) -> dict[str, list[Range]]:
    """Each provider's spans joined across holes no other provider filled (exchange gaps stay in the gap list)."""
    spans = sorted((r[0], r[1], name) for name, rs in ranges_by_provider.items() for r in rs)
    out: dict[str, list[Range]] = {}
    prev_name = None
    for start, end, name in spans:
        if name == prev_name:
            out[name][-1] = (out[name][-1][0], end)
        else:
            out.setdefault(name, []).append((start, end))
        prev_name = name
    return out


def format_summary(report: SyncReport) -> str:
    """The coverage table printed at the end of ``data sync``, then every gap on its own line."""
    iv = interval_ms(report.timeframe)
    header = ("symbol", "rows", "added", "first", "last", "complete", "gaps", "providers")
    lines: list[tuple[str, ...]] = []
    gap_lines: list[str] = []
    for sym, r in report.symbols.items():
        if r.error:
            lines.append((sym, "-", "-", "-", "-", "no", "-", f"ERROR: {r.error}"))
            continue
        providers = "; ".join(
            f"{name} {', '.join(_span(x, iv) for x in ranges)}"
            + (f" [{','.join(r.flags[name])}]" if r.flags.get(name) else "")
            for name, ranges in provider_stretches(r.ranges_by_provider).items()
        ) or "-"
        pending = len(r.pending_gaps)
        gaps = f"{len(r.gaps) - pending} confirmed" + (f", {pending} PENDING" if pending else "") if r.gaps else "none"
        lines.append((sym, str(r.rows), str(r.rows_added), _day(r.first_ms, iv), _day(r.last_ms, iv),
                      "yes" if r.complete else "no", gaps, providers))
        for g in r.gaps:
            verdict = f"confirmed by {', '.join(g.by)}" if g.confirmed else f"PENDING ({'; '.join(g.by)})"
            where = ""
            if g.confirmed and r.first_ms is not None and g.end == r.first_ms:
                where = "  (before the first candle: not listed yet)"
            elif g.confirmed and r.last_ms is not None and g.start == r.last_ms + iv:
                where = "  (after the last candle: delisted or halted)"
            gap_lines.append(
                f"  {sym}  {_span((g.start, g.end), iv)}  {(g.end - g.start) // iv} candles  {verdict}{where}")
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header) - 1)]
    out = ["  ".join(row[i].ljust(widths[i]) for i in range(len(widths))) + "  " + row[-1] for row in [header, *lines]]
    if gap_lines:
        out += ["gaps (no candle stored; confirmed = the exchange's own sources say none exists):", *gap_lines]
    out.append(
        f"complete: {'yes' if report.complete else 'no'}  requests: {report.requests}  "
        f"rows added: {report.rows_added}  time: {report.seconds:.1f}s"
    )
    return "\n".join(out)


def unlisted(asked: str, chain: list[Provider], exchange: str) -> str:
    """Why the sync must not start: the pairs of ``asked`` that ``exchange``'s market list lacks, named as given
    (every provider would only say it does not have them, and the sync would end "incomplete"); '' to go on.

    The list is the one the exchange's tail feed loads anyway (one request, kept for its fetches).  Without it
    (offline, the API down, or not among the providers) nothing is refused: the sync runs as it always did, and
    a line on stderr says the symbols were not checked."""
    tail = next((p for p in chain if isinstance(p, CcxtTailProvider) and p.exchange_id == exchange), None)
    if tail is None:
        print(f"aura data sync: symbols not checked: {exchange}'s API is not among the providers "
              "(AURA_INGEST_PROVIDERS)", file=sys.stderr)
        return ""
    markets, why = tail.listed()
    if markets is None:
        print(f"aura data sync: symbols not checked: {exchange}'s market list is unavailable ({why})",
              file=sys.stderr)
        return ""
    given = [s.strip() for s in asked.split(",") if s.strip()]
    missing = [s for s in dict.fromkeys(given) if unified_symbol(s) not in markets]
    if not missing:
        return ""
    wanted = {unified_symbol(s).split("/", 1)[0] for s in missing}
    bases = sorted(m for m in markets if m.split("/", 1)[0] in wanted)  # the same coin against other quotes
    hint = f"; it lists {', '.join(bases[:6])}{' …' if len(bases) > 6 else ''}" if bases else ""
    return (f"unknown symbol{'s' if len(missing) > 1 else ''} {', '.join(missing)}: not in {exchange}'s market list "
            f"({len(markets)} pairs){hint}; nothing downloaded (delisted? --include-unlisted asks the archive)")


def run_sync(args: argparse.Namespace) -> int:
    try:  # BTCUSDT, BTC_USDT and BTC/USDT are one symbol; anything else is refused here, in one line
        symbols = [unified_symbol(s) for s in args.symbols.split(",") if s.strip()]
    except ValueError as exc:
        print(f"aura data sync: {exc}", file=sys.stderr)
        return 2
    if not symbols:
        print("aura data sync: --symbols is empty", file=sys.stderr)
        return 2
    try:
        until = _until_ms(args.until)
    except argparse.ArgumentTypeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    now_ms = args.now if args.now is not None else int(time.time() * 1000)
    # An empty range was reported "complete: yes, rows added: 0" and exit 0: say what is wrong with it instead.
    if args.since is not None and until is not None and until < args.since:
        print(f"aura data sync: --until {args.until} is before --since (nothing to download)", file=sys.stderr)
        return 2
    if args.since is not None and args.since > now_ms:
        print(f"aura data sync: --since is in the future ({_day(args.since, 0)}; now {_day(now_ms, 0)}): no "
              "candle has closed there yet", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        # Run from the `aura` script nobody configured logging yet. Data warnings (gaps, rejects,
        # disagreements) still show as tagged JSON lines; per-symbol info lines only on request.
        setup_logging("ingest", level=os.environ.get("AURA_LOG_LEVEL") or "WARNING")
    config = IngestConfig.from_env()
    chain = build_providers(config, args.exchange)
    try:
        try:
            refusal = "" if args.include_unlisted else unlisted(args.symbols, chain, args.exchange)
        except ValueError as exc:  # no such ccxt exchange: a bad argument, like an unknown symbol
            refusal = str(exc)
        if refusal:
            print(f"aura data sync: {refusal}", file=sys.stderr)
            return 2
        with progress_bar(len(symbols), not args.no_progress) as bar:
            report = sync(symbols, args.exchange, args.timeframe, args.since, until, config, now_ms,
                          providers=chain, progress=bar)
    finally:
        for provider in chain:
            provider.close()
    print(format_summary(report))
    errors = [sym for sym, r in report.symbols.items() if r.error]
    if errors or not report.complete:
        incomplete = [sym for sym, r in report.symbols.items() if not r.complete]
        print(f"aura data sync: incomplete: {', '.join(incomplete)}" + (f" (errors: {', '.join(errors)})"
                                                                         if errors else ""), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura", description="AURA market data tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_data_parser(sub)
    args = parser.parse_args(argv)
    setup_logging("ingest", level=os.environ.get("AURA_LOG_LEVEL") or "WARNING")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""Alerts through apprise: the services' events, a service down too long, a daily summary.

Sending is the console's job alone, so no trading path ever waits on a chat service: the services publish
events (shared/events.py) and go on; the console decides here what to send, and one worker sends it from a
thread (apprise's ``notify`` blocks on the network), so neither the page nor the event consumer waits either.

* **Deduplicated**: an alert whose key was offered within ``notify_dedup_s`` is not sent again (counted
  ``duplicate``).  The key is the *incident*, not the wording: an event's service, kind and text with the fields
  that name what happened (INCIDENT_FIELDS: its cycle, its latch or reset time, its plan, ...), when it has
  any; a service's outage by when it began.  So the same event redelivered, or the same line
  said again, is one alert, while a second latch after a reset, a second reset or a second outage is news.
* **Rate-limited**: at most ``notify_rate_limit`` alerts per ``notify_rate_window_s``.  The rest are counted
  (``limited``) and summed up in one message once the window has room again: a burst (thirty distinct dead
  letters) costs ``limit`` alerts and one line, and nothing is dropped without a word.
* **Bounded**: at most QUEUE_MAX alerts wait to be sent; beyond that they are counted ``dropped``.

A notification URL can hold a bot token (``tgram://TOKEN/CHAT``): each is registered as a secret, so no log line
shows it, and only its scheme is ever named.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import apprise

from shared.contracts import ServiceEvent
from shared.health import HealthState
from shared.logging import error, info, register_secret, warn

QUEUE_MAX = 256
# A failed send is tried again after each of these delays, then given up (logged, counted).  Apprise reports a
# failure when any target failed, so a target that took the first try may get the alert twice: better than a
# kill-switch alert lost because a chat service blinked (its event is acknowledged, and a redelivery would be
# deduplicated).
RETRY_DELAYS_S = (5.0, 30.0, 120.0, 600.0)
NOTIFY_TYPES = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
                "error": apprise.NotifyType.FAILURE}


@dataclass(frozen=True)
class Alert:
    key: str  # what makes two alerts "the same" for deduplication
    title: str
    body: str
    severity: str = "warning"  # info | warning | error


# Fields that name the incident an event is about.  The same incident said again (the line logged anew after a
# restart or a retry) carries the same values; another one (another cycle, latch, reset, plan, order, stored
# message) differs in one of them.  Everything else in an event (a drawdown, an attempt count, an error text) is
# how it was said.  An event with none of these cannot be told from the next one like it (thirty malformed plans
# log the same line): each is its own incident, and the rate limit, not deduplication, bounds a flood of them.
INCIDENT_FIELDS = ("cycle_id", "plan_id", "target_id", "snapshot_id", "cid", "stream_seq", "sha256", "bar_ms",
                   "latched_at_ms", "rearmed_at_ms", "reset_at_ms", "requested_at_ms", "halted_since_ms",
                   "unverifiable_since_ms")
# Fields that differ between repeats of one condition (the error's wording, a count, a wait): not its identity.
REPEAT_FIELDS = frozenset({"error", "retry_in_s", "attempt", "attempts", "delivery", "deliveries", "failed_in_a_row",
                           "wait_s", "elapsed_s", "tries"})
FIELDS_SHOWN = 6
# An ``*_ms`` value below this (1973) is a duration, not a time of day, and is shown as it is.
EPOCH_MS_FLOOR = 100_000_000_000


def incident_key(event: ServiceEvent) -> str:
    named = [f"{k}={event.fields[k]}" for k in INCIDENT_FIELDS if k in event.fields]
    if not named:
        # Nothing names the incident: the line with its fields, less those that change on every repeat (keyed by
        # the event alone, an ingest poll failing every minute made an alert a minute, ~2,900 a day; found by an
        # audit), so other pairs delisted or another subject misrouted are still news.
        named = [f"{k}={v}" for k, v in sorted(event.fields.items()) if k not in REPEAT_FIELDS]
    return f"event:{event.service}:{event.kind}:{event.text}:" + ",".join(named)


def shown_field(key: str, value: str) -> str:
    """``key=value`` for a phone: an epoch-ms time (``*_ms``) as its UTC time, to the minute when it is a whole
    minute (a bar), else to the second; 0 (never, or only by hand) as "none"."""
    if not key.endswith("_ms"):
        return f"{key}={value}"
    try:
        ms = int(value)
    except ValueError:
        return f"{key}={value}"
    if ms == 0:
        return f"{key[:-3]}=none"
    if ms < EPOCH_MS_FLOOR:
        return f"{key}={value}"
    fmt = "%Y-%m-%dT%H:%MZ" if ms % 60_000 == 0 else "%Y-%m-%dT%H:%M:%SZ"
    return f"{key[:-3]}={time.strftime(fmt, time.gmtime(ms / 1000))}"


def alert_for_event(event: ServiceEvent) -> Alert:
    details = ", ".join(shown_field(k, v) for k, v in list(event.fields.items())[:FIELDS_SHOWN])
    return Alert(key=incident_key(event), title=f"AURA {event.service}: {event.kind}",
                 body=event.text + (f" ({details})" if details else ""), severity=event.severity)


def parse_urls(text: str) -> list[str]:
    return [url.strip() for url in text.split(",") if url.strip()]


class Notifier:
    def __init__(self, urls: list[str], dedup_s: float, limit: int, window_s: float, health: HealthState,
                 logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.dedup_s, self.limit, self.window_s = dedup_s, limit, window_s
        self.health, self.logger, self.clock = health, logger, clock
        self.apprise = apprise.Apprise()
        self.targets = 0
        for url in urls:
            register_secret(url)
            if self.apprise.add(url):
                self.targets += 1
            else:
                error(logger, "NOTIFY", "notification URL not understood by apprise; ignored",
                      scheme=url.partition("://")[0][:20])
        self.queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.last_sent: dict[str, float] = {}
        self.sent_at: deque[float] = deque()
        self.held_back: Counter[str] = Counter()
        self.failures: dict[str, int] = {}  # alert key -> failed sends so far
        self.retry_delays_s = RETRY_DELAYS_S

    def _expire(self, now: float) -> None:
        while self.sent_at and now - self.sent_at[0] >= self.window_s:
            self.sent_at.popleft()
        for key in [k for k, t in self.last_sent.items() if now - t >= self.dedup_s]:
            del self.last_sent[key]

    def offer(self, alert: Alert, scheduled: bool = False) -> str:
        """Decide now (never waits): "queued", "duplicate", "limited", "dropped", or "off" without any URL.
        ``scheduled``: a message that comes by the clock, not by events (the daily summary, once a day): the rate
        limit, there against bursts, never holds it back, or a busy day would reduce it to one line of a
        "held back" digest without its figures.  It still takes its place in the window."""
        now = self.clock()
        self._expire(now)
        if alert.key in self.last_sent:
            outcome = "duplicate"
        elif len(self.sent_at) >= self.limit and not scheduled:
            # Counted in the digest now: the same incident offered again (a redelivery) must not count twice.
            self.last_sent[alert.key] = now
            self.held_back[alert.title] += 1
            outcome = "limited"
        else:
            self.last_sent[alert.key] = now
            self.sent_at.append(now)
            outcome = self._enqueue(alert)
        if outcome in ("duplicate", "limited", "dropped"):
            self.health.inc("alerts", outcome=outcome)
        return outcome

    def _enqueue(self, alert: Alert) -> str:
        if not self.targets:
            return "off"
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            return "dropped"
        return "queued"

    def release_held_back(self) -> None:
        """Once the window has room again, one message sums up what the rate limit held back."""
        now = self.clock()
        self._expire(now)
        if not self.held_back or len(self.sent_at) >= self.limit:
            return
        total = sum(self.held_back.values())
        lines = [f"{n} x {title}" for title, n in self.held_back.most_common(10)]
        self.held_back.clear()
        self.sent_at.append(now)
        self._enqueue(Alert(key=f"held:{now}", title=f"AURA: {total} alerts held back by the rate limit",
                            body="\n".join(lines), severity="warning"))

    async def run(self, stop: asyncio.Event) -> None:
        """The one sender: takes queued alerts and sends each from a thread, until ``stop`` (retries still waiting
        then are said in one line: the process is going away)."""
        try:
            await self._send_until(stop)
        finally:
            if self.failures:
                error(self.logger, "NOTIFY", "stopping with alerts waiting for a retry; not sent",
                      alerts=len(self.failures))

    async def _send_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                alert = await asyncio.wait_for(self.queue.get(), timeout=1.0)
            except TimeoutError:
                self.release_held_back()
                continue
            if await self.send(alert):
                self.failures.pop(alert.key, None)
            else:
                self._retry_later(alert)

    def _retry_later(self, alert: Alert) -> None:
        tries = self.failures.get(alert.key, 0)
        if tries >= len(self.retry_delays_s):
            self.failures.pop(alert.key, None)
            self.health.inc("alerts", outcome="given_up")
            error(self.logger, "NOTIFY", "alert given up after every retry", title=alert.title, tries=tries + 1)
            return
        self.failures[alert.key] = tries + 1
        asyncio.get_running_loop().call_later(self.retry_delays_s[tries], self._retry_now, alert)

    def _retry_now(self, alert: Alert) -> None:
        outcome = self._enqueue(alert)
        if outcome != "queued":  # the queue full of newer alerts: said, never a silent loss
            self.failures.pop(alert.key, None)
            self.health.inc("alerts", outcome=outcome)
            error(self.logger, "NOTIFY", "alert retry not queued; given up", title=alert.title, outcome=outcome)

    async def send(self, alert: Alert) -> bool:
        try:
            ok = bool(await asyncio.to_thread(self.apprise.notify, body=alert.body, title=alert.title,
                                              notify_type=NOTIFY_TYPES.get(alert.severity, apprise.NotifyType.INFO)))
        except Exception as exc:  # a plugin that raises instead of returning False
            warn(self.logger, "NOTIFY", "alert could not be sent", title=alert.title, error=type(exc).__name__)
            ok = False
        self.health.inc("alerts", outcome="sent" if ok else "failed")
        if ok:
            info(self.logger, "NOTIFY", "alert sent", title=alert.title)
        else:
            warn(self.logger, "NOTIFY", "alert not delivered by every target", title=alert.title)
        return ok


class DownTracker:
    """A service alerted once it has been down or not ready for ``after_s``, and again when it is back.  Each
    outage is its own incident (keyed by when it began): a service down again after it came back is alerted
    again, however soon."""

    def __init__(self, after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after_s, self.clock = after_s, clock
        self.since: dict[str, float] = {}
        self.alerted: set[str] = set()

    def update(self, name: str, ready: bool, detail: str) -> Alert | None:
        now = self.clock()
        if ready:
            began = self.since.pop(name, None)
            if name in self.alerted:
                self.alerted.discard(name)
                return Alert(f"up:{name}:{began}", f"AURA {name} is ready again", f"{name} answers /readyz 200 again",
                             "info")
            return None
        start = self.since.setdefault(name, now)
        if now - start >= self.after_s and name not in self.alerted:
            self.alerted.add(name)
            return Alert(f"down:{name}:{start}", f"AURA {name} down",
                         f"{name} has been down or not ready for {now - start:.0f} s: {detail}", "error")
        return None

    def down(self) -> int:
        return len(self.since)


# --- the daily summary ---------------------------------------------------------------------------------------


def summary_due(now_s: float, hour: int, last_day: str) -> str:
    """Today's UTC date if the summary hour has come and today's summary was not sent yet, else ""."""
    if hour < 0:
        return ""
    day = time.strftime("%Y-%m-%d", time.gmtime(now_s))
    return day if time.gmtime(now_s).tm_hour >= hour and day != last_day else ""


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def _day_pnl(equity: float, chart: Mapping[str, Any], now_ms: int) -> str:
    """Equity's change over the 24 h before ``now_ms``, from the journal's equity history (with its commit times):
    against the last point at or before the cutoff, or, when the history starts within the window (a system
    started today), against its first point, and then it says since when."""
    commits, points = chart.get("commit_ms") or [], chart.get("equity") or []
    pairs = list(zip(commits, (p["value"] for p in points), strict=False))
    cutoff = now_ms - 86_400_000
    before = [(ms, v) for ms, v in pairs if ms <= cutoff]
    base_ms, base = before[-1] if before else pairs[0] if pairs else (0, 0.0)
    if base <= 0:
        return ""
    span = "in 24 h" if before else f"since {_utc(base_ms)}"
    return f"P&L {equity - base:+,.2f} USDT ({(equity / base - 1) * 100:+.2f}%) {span}"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items())


def daily_summary(day: str, state: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]],
                  now_s: float) -> Alert:
    """One message from the console's view of the bus (``BusView.state()``) at ``now_s``: equity and its P&L over
    the last 24 h, drawdown, exposure, positions with their P&L, the cycles closed in 24 h by outcome, the latch,
    the parameter version, services not ready and the events of the last 24 h by kind (the view's day counts, not
    its recent lists, which keep only the newest rows)."""
    now_ms = int(now_s * 1000)
    pf = state.get("portfolio") or {}
    lines = []
    if pf:
        lines.append(f"equity {pf['equity']:,.2f} USDT")
        pnl = _day_pnl(pf["equity"], state.get("chart") or {}, now_ms)
        if pnl:
            lines.append(pnl)
        held = [f"{p['symbol']} {p['qty']:g}" + (f" (P&L {p['pnl']:+,.2f} USDT)" if p.get("pnl") is not None else "")
                for p in pf.get("positions", [])]
        lines += [f"drawdown {pf.get('drawdown', 0.0) * 100:.1f}%, exposure {pf.get('exposure', 0.0) * 100:.0f}%",
                  "positions: " + (", ".join(held) or "none")]
    else:
        lines.append("no portfolio snapshot read from the bus")
    day_counts = state.get("last_24h") or {}
    cycles = day_counts.get("cycles") or {}
    lines.append(f"cycles in 24 h: {sum(cycles.values())}" + (f" ({_counts(cycles)})" if cycles else ""))
    latch = state.get("latch") or {}
    lines.append("kill-switch LATCHED" if latch.get("halted") else "kill-switch armed")
    lines.append(f"parameters version {(state.get('params') or {}).get('version', 0)}")
    down = sorted(n for n, s in services.items() if not s.get("ready"))
    lines.append("services not polled yet" if not services else
                 ("services not ready: " + ", ".join(down)) if down else "all services ready")
    events = day_counts.get("events") or {}
    lines.append("events in 24 h: " + (", ".join(f"{k} x{n}" for k, n in events.items()) or "none"))
    return Alert(f"summary:{day}", f"AURA daily summary {day}", "\n".join(lines), "info")

"""kill -9 of the real executor process in a live rehearsal, at seeded random moments across cycles.

The system runs as `aura rehearse` runs it (:class:`aura.rehearsal_lab.LiveRehearsal`: ingest syncing from the
venue simulator, signal, risk, the live executor, on an authenticated nats-server); only the executor process
(``python -m services.executor``) is killed with SIGKILL and started again on the same journal, while the
other services go on.  Plans reach it through risk, as always.

Where each kill lands is drawn from the seed: an *anchor* and a fraction ``u`` of the time that anchor's phase
usually takes (measured on this machine as the run goes, so the kills spread over the phase whatever its speed):

* ``boot``: ``u`` x the executor's boot time after its (re)start: imports, the journal, the broker, boot
  reconciliation of open intents, finishing a plan an earlier kill interrupted (its orders included), the book
  check against the exchange, the first snapshot.  Drawn right after a restart, it is the "killed again while
  booting" case.
* ``books``: ``u`` x the end of the boot, from "[BOOT] reconciliation finished" (open intents settled) to
  "[BOOT] executor ready": finishing an interrupted plan, then the book check against the exchange's balances
  ([RECONCILE]).
* ``plan``: ``u`` x the time from a bar's close to its cycle's commit, from the moment the restarted process
  is ready: the plan it finds waiting (or the next bar's), the pre-plan book check ([RECONCILE]), the stale and
  sync checks, journaling, the orders, the fills, the snapshot, the ack.
* ``order``: the next order's answer is held back by the venue (a "timeout" fault: booked, not yet answered)
  and the process dies as soon as the order is on the exchange: accepted there, unknown to the journal.

The same seed gives the same anchors and fractions (the wall-clock delays scale with the machine).  Each kill
records where it landed: the killed process's last log line, the boot phase, the journal's open plans and
intents, and how many exchange orders the journal did not know yet.  The verdict is
:func:`aura.rehearsal_lab.check_books` after the system has gone on for a few more cycles.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aura.exchange_sim import Fault
from aura.rehearsal_lab import LiveRehearsal, check_books, cycle_bar_ms

ANCHORS = (("boot", 0.4), ("books", 0.2), ("plan", 0.25), ("order", 0.15))
HOLD_S = 15.0  # how long the venue holds an order's answer for an "order" kill (the process dies long before)
ORDER_WAIT_CYCLES = 3  # an "order" kill waits this many cycles for an order, then falls back to a "plan" kill
FINAL_PLAN_STATES = ("executed", "partial", "rejected")


@dataclass
class Kill:
    n: int
    anchor: str
    u: float
    delay_s: float  # after the anchor: the restart (boot), "reconciliation finished" (books), ready (plan), the
    #                 order's booking (order)
    cycle: str  # the newest bar cycle in the journal when it died
    phase: str  # where in the process's life: startup / boot-reconcile / boot-recovery / boot-books / running
    last_log: str  # the killed process's last log message
    open_plans: int  # journaled plans neither executed nor refused
    open_intents: int  # intents pending/sent/acked
    unjournaled_orders: int  # orders on the exchange the journal did not know when it died
    status: int  # the process's exit status (-9)


@dataclass
class KillReport:
    seed: int
    system: int = 0  # which of the rehearsals run side by side (its kill points come from seed and system)
    start: str = ""  # the day its first cycle trades
    kills: list[Kill] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    cycles: int = 0  # bar cycles journaled in the whole run
    cycles_after_kills: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    orders: int = 0  # exchange orders checked against the journal at the end
    trades: int = 0  # exchange trades checked against the journal's fills
    ready_s: float = 0.0  # the system's start: every service ready
    boot_s: float = 0.0  # median boot of a restarted executor (spawn -> "[BOOT] executor ready")
    kill_phase_s: float = 0.0  # from the first kill to the restart after the last one
    elapsed_s: float = 0.0

    @property
    def kills_per_min(self) -> float:
        return round(60.0 * len(self.kills) / self.kill_phase_s, 1) if self.kill_phase_s else 0.0

    def counts(self) -> dict[str, Any]:
        def by(key: str) -> dict[str, int]:
            return dict(sorted(Counter(str(getattr(k, key)) for k in self.kills).items()))

        return {"anchors": by("anchor"), "phases": by("phase"),
                "with_unjournaled_orders": sum(1 for k in self.kills if k.unjournaled_orders),
                "mid_plan": sum(1 for k in self.kills if k.open_plans),
                "sigkilled": sum(1 for k in self.kills if k.status == -9)}

    def describe(self) -> str:
        """Everything needed to replay a failure: the seed and every kill point."""
        lines = [f"seed {self.seed} system {self.system} (from {self.start}): {len(self.kills)} kills, "
                 f"{self.cycles} cycles ({self.cycles_after_kills} after the last kill), statuses {self.statuses}, "
                 f"{self.orders} orders and {self.trades} trades checked, {json.dumps(self.counts())}"]
        lines += [f"  kill {k.n}: {k.anchor} u={k.u:.3f} +{k.delay_s:.2f}s at {k.cycle} [{k.phase}] "
                  f"plans open {k.open_plans}, intents open {k.open_intents}, unjournaled orders "
                  f"{k.unjournaled_orders}, last log: {k.last_log}" for k in self.kills]
        lines += [f"  VIOLATION {v}" for v in self.violations]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        return {"seed": self.seed, "system": self.system, "start": self.start, "kills": len(self.kills),
                "kills_per_min": self.kills_per_min, "ready_s": round(self.ready_s, 1), "boot_s": self.boot_s,
                "cycles": self.cycles, "cycles_after_kills": self.cycles_after_kills, "orders": self.orders,
                "trades": self.trades,
                "violations": len(self.violations), "elapsed_s": round(self.elapsed_s, 1), **self.counts(),
                "kill_points": [asdict(k) for k in self.kills]}


def schedule(seed: int, kills: int, system: int = 0) -> list[tuple[str, float]]:
    """The seeded kill points of one rehearsal: (anchor, fraction of the anchor's phase).  Each anchor gets its
    share of the kills exactly (then shuffled), so rehearsals run side by side take about as long as each other."""
    rng = random.Random(seed * 1_000 + system)
    counts = [int(kills * w) for _, w in ANCHORS]
    for i in sorted(range(len(ANCHORS)), key=lambda i: kills * ANCHORS[i][1] - counts[i], reverse=True):
        if sum(counts) < kills:
            counts[i] += 1
    anchors = [name for (name, _), n in zip(ANCHORS, counts, strict=True) for _ in range(n)]
    rng.shuffle(anchors)
    return [(anchor, rng.random()) for anchor in anchors]


def phase_of(log: str) -> tuple[str, str]:
    """(phase, last message) of a killed process, from its log since its start."""
    messages = []
    for line in log.splitlines():
        try:
            messages.append(str(json.loads(line).get("msg", "")))
        except (ValueError, AttributeError):
            continue
    text = "\n".join(messages)
    if "[BOOT] executor ready" in text:
        phase = "running"
    elif "finishing a plan interrupted" in text:
        phase = "boot-recovery"
    elif "[BOOT] reconciliation finished" in text:
        phase = "boot-books"
    elif "[BOOT] live broker configured" in text:
        phase = "boot-reconcile"
    else:
        phase = "startup"
    return phase, (messages[-1][:160] if messages else "(nothing logged yet)")


@dataclass
class Life:
    """One executor process, as this run watches it through its log: when it started, when boot reconciliation
    had settled its open intents ("[BOOT] reconciliation finished") and when it said it was ready."""

    started: float  # monotonic
    offset: int  # where its lines begin in the executor's log
    reconciled: float | None = None
    ready: float | None = None


class KillRun:
    def __init__(self, lab: LiveRehearsal, seed: int, kills: int, *, system: int = 0, settle_cycles: int = 2,
                 timeout_s: float = 600.0) -> None:
        self.lab, self.seed, self.settle_cycles = lab, seed, settle_cycles
        self.points = schedule(seed, kills, system)
        self.deadline = time.monotonic() + timeout_s
        self.report = KillReport(seed, system)
        self.boots: list[float] = []  # start -> ready of restarted processes
        self.books: list[float] = []  # "reconciliation finished" -> ready: recovery and the boot book check
        self.cycle_s = 3.0  # bar close -> cycle commit, re-measured from clean cycles before the first kill
        now = time.monotonic()
        self.life = Life(now, 0, now, now)  # the first process, ready before the first kill: its log is the file

    def run(self) -> KillReport:
        t0 = time.monotonic()
        lab = self.lab
        self.report.ready_s, self.report.start = lab.ready_s, lab.start
        lab.wait_cycles(2, self._left())  # the second one's close -> commit is measured (the first syncs history)
        self.cycle_s = max([self.cycle_s, *self._close_to_commit()])
        first = time.monotonic()
        for n, (anchor, u) in enumerate(self.points):
            self._kill(n, anchor, u)
        # The last restart's boot, polled like every other one (the settle wait below does not watch the log, so
        # its "ready" would otherwise be noticed only after the settle cycles); a kill counts with its restart.
        self._until("ready")
        self.report.kill_phase_s = time.monotonic() - first
        before = len(lab.bar_cycles())
        lab.wait_cycles(before + self.settle_cycles, self._left())
        self._watch()
        lab.raise_if_dead()
        lab.stop()
        cycles = lab.bar_cycles()
        self.report.cycles = len(cycles)
        self.report.cycles_after_kills = len(cycles) - before
        self.report.statuses = {s: sum(1 for c in cycles if c.status == s) for s in sorted({c.status for c in cycles})}
        self.report.boot_s = round(statistics.median(self.boots), 2) if self.boots else 0.0
        self.report.violations = self.verdict()
        self.report.elapsed_s = time.monotonic() - t0
        return self.report

    def verdict(self) -> list[str]:
        lab = self.lab
        assert lab.venue is not None
        out = check_books(lab.journal_path, lab.venue)
        self.report.orders, self.report.trades = len(lab.venue.sim.orders()), len(lab.venue.sim.state()["trades"])
        open_plans = lab.query("SELECT plan_id, status FROM plans WHERE status NOT IN (?, ?, ?)", FINAL_PLAN_STATES)
        out += [f"plan {p} left {s}" for p, s in open_plans]
        if self.report.cycles_after_kills < self.settle_cycles:
            out.append(f"only {self.report.cycles_after_kills} cycles after the last kill")
        # A restart must reconcile to agreeing books: a [RECONCILE] halt would stop trading (its cycles then end
        # "rejected", which the statuses alone would not tell from a plan refused for being stale).
        out += [f"executor halted trading on a book mismatch: {line[:300]}"
                for line in lab.log_since("executor", 0).splitlines()
                if "RECONCILE" in line and "trading halted" in line]
        return out

    # --- one kill --------------------------------------------------------------------------------------------

    def _kill(self, n: int, anchor: str, u: float) -> None:
        lab = self.lab
        assert lab.venue is not None
        if anchor == "order" and not self._hold_next_order():
            anchor = "plan"  # no order came within a few cycles: a plan kill instead
        if anchor == "order":
            start, span = time.monotonic(), 0.0
        elif anchor == "boot":
            start, span = self.life.started, self._median(self.boots, 4.0)
        elif anchor == "books":
            start, span = self._until("reconciled"), self._median(self.books, 1.0)
        else:
            start, span = self._until("ready"), self.cycle_s
        target = start + u * span
        while time.monotonic() < target:
            self._watch()
            time.sleep(min(0.005, max(0.0, target - time.monotonic())))
        self._watch()
        lab.raise_if_dead(allow=("executor",))
        if lab.executor().poll() is not None:  # it must only ever die by our hand
            raise RuntimeError(f"the executor exited by itself (status {lab.executor().returncode}) before kill {n}; "
                               f"its log:\n{lab.log_tail('executor', 40)}\n{self.report.describe()}")
        status = lab.kill_executor()
        delay = time.monotonic() - start
        lab.venue.sim.faults.clear()
        phase, last = phase_of(lab.log_since("executor", self.life.offset))
        self.report.kills.append(Kill(
            n, anchor, u, round(delay, 3), self._last_cycle(), phase, last,
            len(lab.query("SELECT 1 FROM plans WHERE status NOT IN (?, ?, ?)", FINAL_PLAN_STATES)),
            len(lab.query("SELECT 1 FROM intents WHERE status IN ('pending', 'sent', 'acked')")),
            self._unjournaled_orders(), status))
        self.life = Life(time.monotonic(), lab.log_size("executor"))
        lab.restart_executor()

    def _hold_next_order(self) -> bool:
        """Arm the venue to book the next order and hold its answer; True once an order is booked."""
        lab = self.lab
        assert lab.venue is not None
        sim = lab.venue.sim
        booked = len(sim.orders())
        sim.faults.add(Fault("timeout", "POST", "/api/v3/order", delay_s=HOLD_S))
        stop_at = len(lab.bar_cycles()) + ORDER_WAIT_CYCLES
        while len(sim.orders()) == booked:
            if len(lab.bar_cycles()) >= stop_at or time.monotonic() > self.deadline:
                sim.faults.clear()
                return False
            self._watch()
            lab.raise_if_dead(allow=("executor",))
            time.sleep(0.002)
        return True

    def _until(self, moment: str) -> float:
        """The monotonic time the running process reached ``moment`` ("reconciled" or "ready"); waits for it."""
        while getattr(self.life, moment) is None:
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"the executor never got {moment}; " + self.report.describe())
            self.lab.raise_if_dead(allow=("executor",))
            time.sleep(0.005)
            self._watch()
        return float(getattr(self.life, moment))

    # --- measurements --------------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Note when the running process's log says it has reconciled and is ready (polled: within ~5 ms)."""
        life = self.life
        if life.ready is not None:
            return
        text = self.lab.log_since("executor", life.offset)
        now = time.monotonic()
        if life.reconciled is None and "[BOOT] reconciliation finished" in text:
            life.reconciled = now
        if "[BOOT] executor ready" in text:
            life.ready = now
            self.boots.append(now - life.started)
            if life.reconciled is not None:
                self.books.append(now - life.reconciled)

    @staticmethod
    def _median(values: list[float], default: float) -> float:
        return statistics.median(values) if values else default

    def _close_to_commit(self) -> list[float]:
        lab = self.lab
        out = []
        for c in lab.bar_cycles()[1:]:
            bar = cycle_bar_ms(c.cycle_id)
            if bar is not None and bar in lab.bar_close_wall:
                out.append(c.seen_wall - lab.bar_close_wall[bar])
        return out

    def _last_cycle(self) -> str:
        cycles = self.lab.bar_cycles()
        return cycles[-1].cycle_id if cycles else "genesis"

    def _unjournaled_orders(self) -> int:
        lab = self.lab
        assert lab.venue is not None
        journaled = {r[0] for r in lab.query("SELECT client_order_id FROM orders")}
        return sum(1 for o in lab.venue.sim.orders() if o.client_order_id not in journaled)

    def _left(self) -> float:
        return max(1.0, self.deadline - time.monotonic())


def run_kill_trials(lab: LiveRehearsal, seed: int, kills: int, *, system: int = 0, settle_cycles: int = 2,
                    timeout_s: float = 600.0) -> KillReport:
    """Kill the executor of the running ``lab`` ``kills`` times at the seed's points, let the system go on for
    ``settle_cycles`` cycles, stop it and judge the books.  The lab is stopped on return (not closed)."""
    return KillRun(lab, seed, kills, system=system, settle_cycles=settle_cycles, timeout_s=timeout_s).run()


def kill_rehearsals(root: Path, seed: int, kills: int, *, starts: tuple[str, ...] = ("2021-03-01",),
                    settle_cycles: int = 2, timeout_s: float = 600.0, **lab_args: Any) -> list[KillReport]:
    """``kills`` kills spread over rehearsals run side by side, one per date in ``starts`` (each from that day,
    in its own home under ``root``: its own venue, bus, services and journal).  A rehearsal mostly waits (on the
    exchange's rate limit, the executor's settle and confirm delays, its boot), so two of them share two cores
    without slowing each other much: the way to many kills of the real process in little wall time.
    ``lab_args`` go to LiveRehearsal."""
    systems = len(starts)
    per_system = [kills // systems + (1 if i < kills % systems else 0) for i in range(systems)]
    reports: list[KillReport | None] = [None] * systems
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with LiveRehearsal(root / f"system-{i}", starts[i], **lab_args) as lab:
                reports[i] = run_kill_trials(lab, seed, per_system[i], system=i, settle_cycles=settle_cycles,
                                             timeout_s=timeout_s)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), name=f"rehearsal-{i}") for i in range(systems)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in reports if r is not None]

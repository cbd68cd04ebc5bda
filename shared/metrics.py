"""Every metric an AURA service exports, declared once: name, kind, help text, labels.

Services count through ``HealthState.inc/set/observe`` (shared/health.py) by the short name here; the exported
name is ``aura_<name>`` (``_total`` added to counters by prometheus-client), every series carries the
``service`` label, and a name missing from this catalog is an error, so no metric goes out without its help
text.  ``deploy/grafana/aura.json`` queries these names; a test checks each query names one that exists.
"""

from __future__ import annotations

from dataclasses import dataclass

# Latency buckets: a cycle takes milliseconds on the paper broker and seconds live; an order a few hundred ms.
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ORDER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# The pipeline services.  The console publishes nothing (no dead letters, no parameters), so it shares only the
# generic metrics that mean something for a reader: handler errors (its event handling) and the health gauges.
ALL = ("ingest", "signal", "risk", "executor", "optimizer")
INGEST, SIGNAL, RISK, EXECUTOR, CONSOLE = ("ingest",), ("signal",), ("risk",), ("executor",), ("console",)
PARAMS_READERS = ("signal", "risk", "optimizer")


# Label values known in advance, exported at zero from the start (Metric.initial): a labelled counter has no
# series until its first count, so a dashboard panel on it says "No data" on a calm system, as it does for a
# service that is not scraped at all.  With these it says 0, and "No data" keeps its meaning.  A value not listed
# still counts: its series appears at its first count.  tests/unit/test_metrics_zero_series.py checks each list
# against the code that counts it (aura.strategy's gates and leg reasons are not imported here: every service,
# the console included, imports this catalog, and should not load the strategy's numba code for four names).
GATES = ("pass", "hold", "kill_switch", "halted")  # aura.strategy.pipeline.GATES
LEG_REASONS = ("enter", "add", "trim", "exit", "stop_loss", "take_profit", "kill_switch", "data_end")  # rebalance
# The executor's refusals of a plan (services/executor/service.py ``_reject``, runner.py ``refuse_plan``).
PLAN_REFUSALS = ("malformed", "bad_signature", "malformed_plan", "cycle_done", "reconcile_halt", "stale_basis",
                 "handler_failed", "stale_plan", "future_plan", "out_of_sync")
# What any consumer may dead-letter (shared/consumer.py ``handle``); each service's own reasons come on top.
DEAD_LETTER_REASONS = ("malformed", "handler_failed")


@dataclass(frozen=True)
class Metric:
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    owners: tuple[str, ...] = ALL  # the services that export it (each from its start, at zero)
    initial: tuple[str, ...] = ()  # values of its one label exported at zero from the start (a counter's)

    def __post_init__(self) -> None:
        if self.initial and (self.kind != "counter" or len(self.labels) != 1):
            raise ValueError("initial label values are for counters with one label")


def _c(help_text: str, *labels: str, owners: tuple[str, ...] = ALL, initial: tuple[str, ...] = ()) -> Metric:
    return Metric("counter", help_text, labels, owners=owners, initial=initial)


def _g(help_text: str, *labels: str, owners: tuple[str, ...] = ALL) -> Metric:
    return Metric("gauge", help_text, labels, owners=owners)


def owned_by(service: str) -> dict[str, Metric]:
    return {name: m for name, m in METRICS.items() if service in m.owners}


METRICS: dict[str, Metric] = {
    # every service
    "dead_letters": _c("Messages refused and recorded on aura.dlq.<service>", "reason", initial=DEAD_LETTER_REASONS),
    "handler_errors": _c("Message handlings that failed and were retried or dead-lettered", owners=(*ALL, "console")),
    "params_refused": _c("Parameter documents refused (unsigned, forged or invalid)", owners=PARAMS_READERS),
    "params_read_errors": _c("Failed reads of the parameter bucket", owners=PARAMS_READERS),
    "params_version": _g("Parameter version in force", owners=PARAMS_READERS),
    "params_refused_version": _g("Newest parameter version refused", owners=PARAMS_READERS),
    # A stored message delivered onto a plain subscription by another principal's pull request (its reply subject
    # names ours): dropped, counted, said within an allowance (shared/allowance.py).
    "misrouted": _c("Stored messages of other subjects delivered to a plain subscription, dropped",
                    owners=("ingest", "risk")),
    # ingest
    "data_ready_published": _c("Complete candle snapshots announced (DataReady)", owners=INGEST),
    "stale_snapshots": _c("Incomplete snapshots announced as stale (DataStale)", owners=INGEST),
    "cycles_completed": _c("Cycles that ended in the executor's journal", owners=INGEST),
    "poll_errors": _c("Ingest polls that raised (bus, disk, a provider bug) and were retried", owners=INGEST),
    "cycle_timeouts": _c("Cycles republished because they did not end in time", owners=INGEST),
    "cycle_seconds": Metric("histogram", "From a DataReady to the executor's snapshot closing its cycle",
                            buckets=CYCLE_BUCKETS, owners=INGEST),
    "last_cycle_unix": _g("Unix time of the last cycle that ended", owners=INGEST),
    # signal
    "targets_published": _c("Target portfolios published", owners=SIGNAL),
    # risk
    "plans_approved": _c("Plans risk signed, by the gate that decided them", "gate", owners=RISK, initial=GATES),
    # The gate label says why a plan was signed; a stop-loss or take-profit exit passes the gates like any rebalance,
    # so the legs' own reasons (enter, add, trim, exit, stop_loss, take_profit, kill_switch) are counted apart.
    "legs_approved": _c("Order legs in the plans risk signed, by the reason of each leg", "reason", owners=RISK,
                        initial=LEG_REASONS),
    "tick_plans": _c("Exit plans the risk tick signed (stops, kill-switch)", owners=RISK),
    "risk_ticks": _c("Risk ticks run", owners=RISK),
    "risk_tick_errors": _c("Risk ticks that failed", owners=RISK),
    "forged_targets": _c("Targets refused because they disagree with the data they name", owners=RISK),
    "forged_snapshots": _c("Snapshots refused (unsigned, forged, or a known id with other contents)", owners=RISK),
    "forged_state": _c("Latch, operator requests or the bar's participation count that did not verify", owners=RISK),
    "bar_budget_write_errors": _c("Plans not published: the bar's participation count could not be stored",
                                  owners=RISK),
    "stale_notices_refused": _c("Stale-data notices refused (out of bounds)", owners=RISK),
    "stale_notices_unlettered": _c("Refused stale-data notices beyond the dead-letter allowance (a flood): counted, "
                                   "not dead-lettered", owners=RISK),
    "targets_not_replanned": _c("Targets acked without a plan: their cycle traded already or its plan is in flight",
                                owners=RISK),
    "drawdown": _g("Rolling drawdown the kill-switch measures", owners=RISK),
    "halted": _g("1 while the kill-switch is latched", owners=RISK),
    "stale_as_of_ms": _g("Bar time of the newest stale-data notice", owners=RISK),
    # executor
    "plans_executed": _c("Plans executed (all or part of their legs filled)", owners=EXECUTOR),
    "plans_rejected": _c("Plans refused, by reason", "reason", owners=EXECUTOR, initial=PLAN_REFUSALS),
    "fills": _c("Fills journaled", owners=EXECUTOR),
    "cycles_aborted": _c("Cycles closed as aborted", owners=EXECUTOR),
    "aborts_ignored": _c("Abort notices for cycles ingest did not announce", owners=EXECUTOR),
    "aborts_refused": _c("Abort notices refused (malformed, or another stage's), recorded or not (a flood)",
                         "reason", owners=EXECUTOR, initial=("malformed", "wrong_stage")),
    "journal_faults": _c("Plan handlings that met a journal the disk would not write", owners=EXECUTOR),
    "reconcile_halts": _c("Times trading halted because journal and exchange disagreed", owners=EXECUTOR),
    "adoptions": _c("Operator adoptions of the exchange's balances applied", owners=EXECUTOR),
    "adoptions_refused": _c("Adoption requests refused because they were made before the halt they would clear",
                            owners=EXECUTOR),
    "reconcile_unpriced": _c("Book comparisons that found coins with no USDT price the journal does not hold",
                             owners=EXECUTOR),
    "reconcile_unpriced_assets": _g("Coins with no USDT price the exchange holds beside the journal (last check)",
                                    owners=EXECUTOR),
    "exchange_faults": _c("Plan handlings (or boots) that met an exchange not answering; kept for redelivery",
                          owners=EXECUTOR),
    "markets_reloads": _c("Market rules read again from the exchange (due, or a plan named a new symbol)",
                          owners=EXECUTOR),
    "markets_reload_failures": _c("Market rule reloads that failed (the rules in force were kept)",
                                  owners=EXECUTOR),
    "order_seconds": Metric("histogram", "From an order request to the exchange's answer", ("side",),
                            ORDER_BUCKETS, owners=EXECUTOR),
    "equity": _g("Portfolio equity in the quote currency", owners=EXECUTOR),
    "exposure": _g("Share of equity held in coins", owners=EXECUTOR),
    "last_commit_unix": _g("Unix time of the last journal commit closing a cycle", owners=EXECUTOR),
    # every service except the console: events published for the console's alerts (shared/events.py)
    "events_published": _c("Events published for the alerts, by kind", "kind"),
    "events_dropped": _c("Events not published (bus unreachable, too many in flight): logged, never raised"),
    # console
    "console_refreshes": _c("Reads of the bus that refreshed the dashboard", owners=CONSOLE),
    "console_refresh_errors": _c("Dashboard refreshes that failed (the bus unreachable, a read refused)",
                                 owners=CONSOLE),
    "console_refresh_seconds": Metric("histogram", "Time one dashboard refresh took to read the bus",
                                      buckets=CYCLE_BUCKETS, owners=CONSOLE),
    "console_unverified": _c("Messages the console did not show because their signature did not verify", "what",
                             owners=CONSOLE),
    "events_received": _c("Service events the console consumed, by kind", "kind", owners=CONSOLE),
    "events_refused": _c("Events refused: malformed, or naming another service than their subject", owners=CONSOLE),
    "alerts": _c("Alerts by outcome: sent, failed (tried again later), given_up (after every retry), duplicate "
                 "(deduplicated), limited (rate limit), dropped",
                 "outcome", owners=CONSOLE),
    "services_down": _g("Services the console sees down or not ready", owners=CONSOLE),
}

"""Message contracts: every message on the bus is a versioned msgspec Struct defined here, once.

Each contract names the subject it travels on and the JetStream stream that holds it (see ``STREAMS``).
Ids are content hashes (never random, never wall-clock) so that a retry republishes the *same* id and
JetStream's duplicate window plus the executor's journal drop it.  Wall-clock fields (``emitted_at_ms``,
``committed_at_ms``) exist only for latency measurement and are excluded from every id and signature.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

# The wire format (canonical bytes, ids, encode and decode) is shared/wire.py's; importers find it here too.
from shared.wire import SCHEMA_VERSION as SCHEMA_VERSION
from shared.wire import ContractError as ContractError
from shared.wire import canonical_bytes as canonical_bytes
from shared.wire import content_id as content_id
from shared.wire import decode as decode
from shared.wire import encode as encode


class Contract(msgspec.Struct, kw_only=True, frozen=True):
    SUBJECT: ClassVar[str] = ""
    v: int = SCHEMA_VERSION


# --- ingest -> signal -----------------------------------------------------------------------------------


class MarketRuleMsg(msgspec.Struct, frozen=True):
    symbol: str
    step_size: float
    tick_size: float
    min_qty: float
    min_notional: float


class DataReady(Contract, frozen=True):
    """A complete candle snapshot for the universe; the candles live in the object store under ``digest``."""

    SUBJECT: ClassVar[str] = "aura.data.ready"
    cycle_id: str
    timeframe: str
    as_of_ms: int  # open time of the last closed bar in the snapshot
    digest: str  # sha256 of the encoded panel = object name in the candle object store
    symbols: list[str]
    bars: int
    markets: list[MarketRuleMsg]
    emitted_at_ms: int = 0


class DataStale(Contract, frozen=True):
    """The snapshot for ``cycle_id`` is incomplete or stale: no service may trade on it."""

    SUBJECT: ClassVar[str] = "aura.data.stale"
    cycle_id: str
    timeframe: str
    reason: str
    missing: list[str] = []
    as_of_ms: int = 0  # open time of the bar that is incomplete; risk refuses targets on older data


# --- signal -> risk ----------------------------------------------------------------------------------------


class TargetPortfolio(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.signal.targets"
    target_id: str
    cycle_id: str
    as_of_ms: int
    data_digest: str
    params_version: int
    params_digest: str
    regime: str
    weights: dict[str, float]
    prices: dict[str, float]
    markets: list[MarketRuleMsg]
    expected_returns: dict[str, float] = {}  # per-bar forecast per symbol: feeds risk's cost-benefit gate
    signal_state: dict[str, Any] = {}
    emitted_at_ms: int = 0


# --- risk -> executor ---------------------------------------------------------------------------------------


class PlanLeg(msgspec.Struct, frozen=True):
    index: int
    symbol: str
    side: str  # "buy" | "sell"
    qty: float
    ref_price: float
    reason: str


class PlanBody(msgspec.Struct, kw_only=True, frozen=True):
    """Everything the executor needs; signed by risk as a whole (see shared.signing)."""

    plan_id: str
    cycle_id: str
    as_of_ms: int
    data_digest: str
    target_id: str
    params_version: int
    params_digest: str
    basis_snapshot_id: str  # the executor state this plan was computed against
    gate: str
    halted: bool
    legs: list[PlanLeg]
    reasons: list[str]
    prices: dict[str, float]


def plan_id_for(body_without_id: dict[str, Any]) -> str:
    return content_id(body_without_id, prefix="p-")


class ApprovedPlan(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.plans.approved"
    plan: PlanBody
    signature: str  # hex Ed25519 signature over canonical_bytes(plan)
    key_id: str  # fingerprint of the risk public key
    emitted_at_ms: int = 0


class CycleAborted(Contract, frozen=True):
    """A stage could not finish a cycle (bad data, stale data, no basis): the executor journals it.

    Each stage publishes on its own subject (``aura.plans.aborted.<stage>``, see :func:`subject_of`), so the
    server's permissions, not the message, say who sent it; the executor refuses a ``stage`` that differs.
    """

    SUBJECT: ClassVar[str] = "aura.plans.aborted"
    cycle_id: str
    stage: str
    reason: str


ABORT_STAGES = ("ingest", "signal", "risk")


# --- executor -> everyone ---------------------------------------------------------------------------------


class FillMsg(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.exec.fills"
    fill_id: str
    cycle_id: str
    plan_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float


class PortfolioSnapshot(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.exec.snapshots"
    snapshot_id: str
    cycle_id: str
    plan_id: str
    status: str  # "genesis" | "executed" | "partial" | "rejected" | "aborted"
    cash: float
    holdings: dict[str, float]
    entry_prices: dict[str, float]
    equity: float
    equity_history: list[float]
    committed_at_ms: int = 0
    # Commit time (ms UTC) of each equity_history point, oldest first. Risk uses it to measure the
    # kill-switch's drawdown only from an operator's reset onwards. Empty from producers without it.
    equity_history_ms: list[int] = []
    # Ed25519 signature by the executor over the snapshot with these two fields empty (shared.signing):
    # risk plans on a snapshot only if it verifies, so no other bus client can invent a portfolio.
    signature: str = ""
    key_id: str = ""

    def held_beyond_dust(self, prices: dict[str, float], dust_usdt: float) -> set[str]:
        """The symbols held worth more than ``dust_usdt`` at ``prices`` (one with no price counts: never hidden).  An
        exit leaves a sliver below one lot step (sells round down, a buy's fee is taken in the coin): ingest keeps
        no pair in the universe for it, and risk's tick does not expect it priced."""
        return {sym for sym, qty in self.holdings.items()
                if qty > 0 and not 0 < qty * prices.get(sym, 0.0) <= dust_usdt}


# --- dead letters -----------------------------------------------------------------------------------------


# A dead letter carries at most this much of the refused payload (plus its size and sha256), so it always fits
# the DLQ stream's message limit however large the refused message was; the full message stays in its own
# stream (limits retention) until that stream's max_age.
DEAD_LETTER_PAYLOAD_PREFIX = 4096


class DeadLetter(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.dlq"  # + "." + service
    service: str
    subject: str
    reason: str
    error: str
    payload: bytes  # the first DEAD_LETTER_PAYLOAD_PREFIX bytes of the refused message
    received_at_ms: int
    payload_size: int = 0
    payload_sha256: str = ""


# --- events: what an operator should hear about -------------------------------------------------------------


class ServiceEvent(Contract, frozen=True):
    """Something an operator should be told (the kill-switch latched, a dead letter, stale data, a price-guard
    refusal, a reconcile halt...), published by the service it happened in on its own subject
    ``aura.events.<service>`` (shared/events.py turns tagged log lines into these).  The console reads them and
    sends the alerts, so no trading path ever waits on a notification service.  Bounded: ``text`` at most
    EVENT_TEXT_MAX characters, at most EVENT_FIELDS_MAX ``fields`` of at most EVENT_FIELD_MAX characters each."""

    SUBJECT: ClassVar[str] = "aura.events"  # + "." + service
    event_id: str
    service: str
    kind: str  # the permanent log tag it came from: KILL_SWITCH, DEAD_LETTER, DATA_STALE, PRICE_GUARD, ...
    severity: str  # "info" | "warning" | "error"
    text: str
    at_ms: int
    fields: dict[str, str] = {}


EVENT_TEXT_MAX, EVENT_FIELDS_MAX, EVENT_FIELD_MAX = 1000, 16, 300
EVENT_SEVERITIES = ("info", "warning", "error")


# --- the optimizer's work queue (issue 10): coordinator -> workers -> coordinator ---------------------------


class OptWindow(msgspec.Struct, frozen=True):
    start: int  # bars start .. stop - 1 of the inputs' panel
    stop: int
    run_from: int = -1  # the bar the backtest begins at, when before start (aura/optimize/folds.Window)


class OptTask(Contract, frozen=True):
    """A batch of work for the optimizer's workers (aura/optimize/tasks.py): every parameter set on every window
    (kind "eval"), or one CSCV or one SPA over a matrix object (kind "cscv", "spa").  Everything a worker needs
    is here or in the object it names, so any worker gives the same answer; ``task_id`` is a content hash of the
    rest."""

    SUBJECT: ClassVar[str] = "aura.optimize.tasks"
    task_id: str
    kind: str  # "eval" | "cscv" | "spa"
    inputs: str  # digest (object name in OPT_INPUTS_BUCKET): panel, rules and benchmarks, or a CSCV/SPA matrix
    engine: str  # fingerprint of the evaluation code: a worker running other code refuses the task
    settings: str  # canonical JSON of the settings (backtest costs and execution; CSCV partitions; SPA bootstrap)
    params: list[dict[str, Any]] = []
    windows: list[OptWindow] = []


class OptOutcome(msgspec.Struct, frozen=True):
    key: str  # content hash of (inputs, engine, settings, parameters, window): the result's name in the store
    # float64 little-endian: the strategy's per-bar returns (eval), one logit per split (cscv), or one p-value
    # per benchmark (spa)
    values: bytes
    turnover: float = 0.0  # eval: traded notional / mean equity, per year
    trades: int = 0
    rows_used: int = 0  # cscv: bars kept (a multiple of the partitions)
    distinct: int = 0  # cscv: candidates with distinct returns; spa: models (every trial of the selection)


class OptResult(Contract, frozen=True):
    SUBJECT: ClassVar[str] = "aura.optimize.results"
    task_id: str
    outcomes: list[OptOutcome]
    error: str = ""  # the task failed on its last delivery (or no worker may run it): the run stops with this
    deliveries: int = 1  # > 1: the task came back (its worker died, or failed on it) before this answer


# --- streams, buckets -------------------------------------------------------------------------------------


KIB = 1024
MIB = 1024 * KIB
# The server's max_payload: the largest legitimate message is one 128 KiB chunk of a candle object.
MAX_PAYLOAD = 256 * KIB


class StreamSpec(msgspec.Struct, frozen=True):
    """A stream with its limits set on purpose: no message, and no flood of them, can grow it without bound.

    ``max_msg_size``: the biggest legitimate message is a few KB (a snapshot with 365 equity points is ~15 KB;
    AURA_EXEC holds hourly ones with 4,000);
    the server refuses anything larger at publish time, before a consumer ever sees it.
    """

    name: str
    subjects: list[str]
    max_age_s: float
    max_bytes: int
    max_msg_size: int = 64 * KIB
    max_msgs: int = -1
    retention: str = "limits"  # "workqueue": a message is removed once its consumer acks it (optimizer tasks)
    max_msgs_per_subject: int = -1  # each subject keeps at most this many, dropping its own oldest


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("AURA_DATA", [DataReady.SUBJECT, DataStale.SUBJECT], max_age_s=7 * 86400, max_bytes=256 * MIB),
    StreamSpec("AURA_TARGETS", [TargetPortfolio.SUBJECT], max_age_s=7 * 86400, max_bytes=256 * MIB),
    # Aborted-cycle notices share the plans stream so the executor's single consumer sees them in cycle order
    # and closes every cycle in its journal; they carry no legs and are never executed.  Three publishers may
    # write aborts (ingest, signal, risk), so a flood of them must not push out a plan the executor has not read:
    # each subject keeps its own newest 1000, and the four subjects together (4 x 1000 x 64 KiB =
    # 250 MiB) can never reach max_bytes, so a flood on one subject only drops that subject's oldest messages.
    StreamSpec("AURA_PLANS", [ApprovedPlan.SUBJECT, CycleAborted.SUBJECT + ".*"], max_age_s=30 * 86400,
               max_bytes=256 * MIB, max_msgs_per_subject=1000),
    # A snapshot carries one equity point per bar of the longest kill-switch window (params.equity_points): 4,000
    # on hourly bars, ~125 KB of JSON.
    StreamSpec("AURA_EXEC", [FillMsg.SUBJECT, PortfolioSnapshot.SUBJECT], max_age_s=30 * 86400,
               max_bytes=512 * MIB, max_msg_size=192 * KIB),
    # Dead letters and events: each publisher has its own subject (``aura.dlq.<service>``, ``aura.events.<service>``,
    # shared/bus_access.py), but with only the byte limit (discard old) a flood on one subject pushed every other
    # service's records out: a compromised worker erased risk's and the executor's dead letters, a compromised signal
    # risk's [FORGED_TARGET] event before the console read it.  Each subject now keeps its own newest N, and all
    # subjects full stay below max_bytes (a stored message costs its size plus its subject and ~34 bytes):
    #   DLQ:    6 subjects (five services, the workers) x 2000 x 16 KiB = 188 MiB < 256 MiB;
    #   EVENTS: 5 subjects (five services)              x 1000 x  8 KiB =  39 MiB <  64 MiB;
    # so a flood only drops its own subject's oldest messages.  tests/security/test_stream_limits.py checks the
    # products against the matrix, so a new publisher that would break them fails there.
    StreamSpec("AURA_DLQ", [DeadLetter.SUBJECT + ".>"], max_age_s=30 * 86400, max_bytes=256 * MIB,
               max_msg_size=16 * KIB, max_msgs_per_subject=2000),
    # An event is at most ~6 KB (text and fields are capped); a week of them is what the console shows.
    StreamSpec("AURA_EVENTS", [ServiceEvent.SUBJECT + ".>"], max_age_s=7 * 86400, max_bytes=64 * MIB,
               max_msg_size=8 * KIB, max_msgs_per_subject=1000),
    # The optimizer's tasks: gone once a worker acks them; a day bounds what a dead coordinator leaves behind.  A
    # task holds at most 32 parameter sets of ~1.3 KB.
    StreamSpec("AURA_OPT_TASKS", [OptTask.SUBJECT], max_age_s=86400, max_bytes=256 * MIB, max_msg_size=64 * KIB,
               retention="workqueue"),
    # Results: at most ~18k bars of float64 returns in base64 per task (the coordinator sizes tasks so), or one
    # CSCV's 12,870 logits (S = 16).
    StreamSpec("AURA_OPT_RESULTS", [OptResult.SUBJECT], max_age_s=86400, max_bytes=1024 * MIB,
               max_msg_size=192 * KIB),
)
PLANS_FILTER = "aura.plans.>"
CANDLE_BUCKET = "aura_candles"  # object store: encoded panels by digest
# The largest candle object a reader fetches: the bucket holds up to 1 GiB, and a reader that believed the size
# (and chunk count) an object's meta claims would allocate all of it, so a compromised ingest could exhaust risk's
# memory with one announcement.  A panel costs 8 + 40 x symbols bytes a bar: the default 400 bars of the screened
# universe (universe_max <= 100) is 1.6 MB, and 20,000 bars (snapshot_bars' cap) of 100 symbols 80 MB.  A fixed
# symbol list or replay folder can be longer: ingest then refuses the cycle as stale, saying so, rather than
# announce an object both readers would refuse (services/ingest/service.py).
CANDLE_OBJECT_MAX_BYTES = 128 * MIB
PARAMS_BUCKET = "aura_params"  # KV: live strategy parameters (key "strategy"); revision = params version
OPT_INPUTS_BUCKET = "aura_opt_inputs"  # object store: the optimizer's inputs (panel, rules, benchmarks) by digest
# What a worker reads of one optimizer input, read (like a candle object) before it believes the meta: the 41-symbol
# 1h panel with its benchmarks is 43 MiB, the 1d one 4 MiB, a CSCV or SPA matrix a few MiB.  The coordinator
# refuses to write more, so an honest run meets the bound at its start, not in every worker.
OPT_INPUTS_OBJECT_MAX_BYTES = 256 * MIB
STATE_BUCKET = "aura_state"  # KV: service state that must survive restarts (replay cursor, regime, halt latch)


class ConsumerSpec(msgspec.Struct, frozen=True):
    """A durable pull consumer.  Provisioned with the admin credential (``aura bus provision``), never by the
    service that reads it: a service that may create consumers could also create push consumers that make the server
    deliver stored messages to subjects it may not publish on (nats-server issue 8274)."""

    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1
    # True: created at the stream's end, so what was stored before it existed is never delivered (events older
    # than the console are history on the dashboard, not alerts to send now).
    deliver_new: bool = False
    max_deliver: int = -1  # deliveries before the server gives up on a message (-1: never)


CONSUMERS: dict[str, ConsumerSpec] = {
    "signal": ConsumerSpec("AURA_DATA", "signal", DataReady.SUBJECT),
    "risk": ConsumerSpec("AURA_TARGETS", "risk", TargetPortfolio.SUBJECT),
    # After a crash the unacked plan comes back this long after it was delivered (boot recovery has usually
    # finished it already); a live plan heartbeats (in-progress acks) to keep it from expiring.
    "executor": ConsumerSpec("AURA_PLANS", "executor", PLANS_FILTER),
    # The console's alerts: at least once across console restarts (the durable remembers what was acked).
    "console": ConsumerSpec("AURA_EVENTS", "console", ServiceEvent.SUBJECT + ".>", max_ack_pending=64,
                            deliver_new=True),
    # The optimizer's work queue: every worker pulls from this one durable.  A task not acked within ack_wait_s
    # (its worker died) goes to another worker; a long task keeps its claim with in-progress acks; after
    # max_deliver deliveries the worker dead-letters it and answers with the error.
    "worker": ConsumerSpec("AURA_OPT_TASKS", "worker", OptTask.SUBJECT, ack_wait_s=10.0, max_ack_pending=256,
                           max_deliver=5),
    # The coordinator's results (one coordinator per bus at a time): acked once stored in its own result store.
    "optimizer": ConsumerSpec("AURA_OPT_RESULTS", "optimizer", OptResult.SUBJECT, max_ack_pending=1024),
}


def subject_of(msg: Contract) -> str:
    """The subject ``msg`` is published on: a stage's abort notices go on the stage's own subject."""
    if isinstance(msg, CycleAborted):
        return f"{CycleAborted.SUBJECT}.{msg.stage}"
    if isinstance(msg, ServiceEvent):
        return f"{ServiceEvent.SUBJECT}.{msg.service}"
    return msg.SUBJECT


def stream_of(subject: str) -> str:
    """The stream that stores ``subject`` (token-wise match against each stream's subject filters)."""
    tokens = subject.split(".")
    for spec in STREAMS:
        for pattern in spec.subjects:
            parts = pattern.split(".")
            if parts[-1] == ">" and len(tokens) >= len(parts) and _match(tokens[:len(parts) - 1], parts[:-1]):
                return spec.name
            if len(tokens) == len(parts) and _match(tokens, parts):
                return spec.name
    raise KeyError(f"no stream stores subject {subject!r}")


def _match(tokens: list[str], parts: list[str]) -> bool:
    return all(p in ("*", t) for t, p in zip(tokens, parts, strict=True))

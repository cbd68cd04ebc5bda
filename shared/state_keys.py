"""The KV keys of ``aura_state`` (and ``aura_params``), written once: the services use these names and the permission
matrix (shared/bus_access.py) grants each writer exactly these keys, never a wildcard.

Why exact keys: every principal that may write one key of a bucket could otherwise write any number of keys
under its prefix, and the bucket's byte limit is shared, so a compromised service (signal, say) could fill
``aura_state`` until risk can no longer write the kill-switch latch.  With a fixed set of keys, each holding at
most ``history`` revisions of at most ``max value size`` bytes (shared/provision.py), what all writers together
can store is bounded below the bucket's limit (``state_bytes_bound``; a test keeps it so).
"""

from __future__ import annotations

# The trading timeframes and ingest sources the settings accept (shared/config.py checks against these).
TIMEFRAMES: tuple[str, ...] = ("1h", "4h", "1d")
INGEST_SOURCES: tuple[str, ...] = ("replay", "sync")

PARAMS_KEY = "strategy"  # aura_params: the versioned, signed parameter document
SIGNAL_STATE_KEY = "signal.state"  # the regime and hysteresis state carried between cycles
HALT_KEY = "risk.halted"  # the kill-switch latch, signed by risk
BAR_SENT_KEY = "risk.bar_sent"  # what plans on the current decision bar sent (participation cap), signed by risk
DECISION_KEY = "optimizer.decision"  # the optimizer's latest decision, shown by the console
RESET_KEY = "operator.reset"  # kill-switch reset, applied by risk
ADOPT_KEY = "operator.adopt"  # adopt the exchange's balances into the journal, applied by the executor
SETTLE_KEY = "operator.settle"  # close an order the executor cannot settle (named by clientOrderId), applied by it


def ingest_cursor_key(source: str, timeframe: str) -> str:
    """Where ingest keeps how far it has announced, per data source and timeframe."""
    return f"ingest.cursor.{source}.{timeframe}"


def ingest_held_key(timeframe: str) -> str:
    """Where ingest keeps the pairs the portfolio holds (from the newest snapshot), per timeframe: held pairs stay
    in the universe after a restart, before the first snapshot arrives."""
    return f"ingest.held.{timeframe}"


INGEST_KEYS: tuple[str, ...] = (
    *(ingest_cursor_key(src, tf) for src in INGEST_SOURCES for tf in TIMEFRAMES),
    *(ingest_held_key(tf) for tf in TIMEFRAMES),
)
# principal -> the keys it writes (nobody else writes them).
WRITERS: dict[str, tuple[str, ...]] = {
    "ingest": INGEST_KEYS,
    "signal": (SIGNAL_STATE_KEY,),
    "risk": (HALT_KEY, BAR_SENT_KEY),
    "optimizer": (DECISION_KEY,),
    "operator": (RESET_KEY, ADOPT_KEY, SETTLE_KEY),
}


def state_bytes_bound(history: int, max_value_size: int) -> int:
    """The most every writer of ``aura_state`` together can keep in it (payloads; the server adds headers)."""
    return sum(len(keys) for keys in WRITERS.values()) * history * max_value_size

"""Live strategy parameters from the JetStream KV bucket (hot reload between cycles, never mid-cycle).

The KV revision is the parameter *version*: the signal service reads the newest revision at the start of
a cycle and records it in the target; risk then fetches exactly that revision, so one cycle never mixes
two parameter sets even if the optimizer promotes a new one while the cycle is in flight.
Version 0 means "no document promoted yet": the shipped defaults.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext

from aura.strategy.params import StrategyParams, validate_params
from shared.bus import params_kv

PARAMS_KEY = "strategy"


class ParamsError(ValueError):
    pass


def parse_params(raw: bytes) -> StrategyParams:
    try:
        params = msgspec.json.decode(raw, type=StrategyParams)
        validate_params(params)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise ParamsError(f"invalid parameter document: {exc}") from exc
    return params


async def load_params(js: JetStreamContext, revision: int | None = None) -> tuple[StrategyParams, int]:
    """(params, version). ``revision`` pins an exact version; None takes the newest."""
    if revision == 0:
        return StrategyParams(), 0
    kv = await params_kv(js)
    try:
        entry = await kv.get(PARAMS_KEY, revision=revision) if revision else await kv.get(PARAMS_KEY)
    except Exception as exc:
        if revision:
            raise ParamsError(f"parameter version {revision} not found: {exc}") from exc
        return StrategyParams(), 0
    if entry.value is None:
        return StrategyParams(), 0
    return parse_params(entry.value), int(entry.revision or 0)


async def promote_params(js: JetStreamContext, params: StrategyParams) -> int:
    """Publish a validated parameter set; returns its version. Only the optimizer (or an operator) calls it."""
    validate_params(params)
    kv = await params_kv(js)
    return int(await kv.put(PARAMS_KEY, msgspec.json.encode(params)))

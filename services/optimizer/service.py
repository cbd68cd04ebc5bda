"""Optimizer service shell.

With the operator, the only writer of the live parameter bucket; every document it writes is signed with its
own key.  The walk-forward search itself is not built yet (its issue is scheduled after the bus and live
safety); today the service makes sure a signed, validated parameter document exists, so every live cycle
runs on an explicit, versioned parameter set rather than on code defaults.
"""

from __future__ import annotations

from aura.strategy.params import StrategyParams, params_digest
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from shared.live_params import ParamsTracker, promote, sign_document
from shared.logging import info
from shared.service import ServiceContext


async def run(ctx: ServiceContext) -> None:
    key = signing_key(ctx.settings.keys, "optimizer")
    tracker = ParamsTracker(ctx.js, trusted_keys(ctx.settings.keys, "optimizer", PARAMS_SIGNERS), ctx.health,
                            ctx.logger)
    params, version = await tracker.current()
    if version == 0:  # nothing valid promoted yet: make the shipped defaults version 1, signed
        doc = sign_document(StrategyParams(), key, promoted_by="optimizer", reason="seed: the shipped defaults")
        version = await promote(ctx.js, doc)
        params, version = await tracker.current()
        info(ctx.logger, "PROMOTE", "seeded the shipped default parameters", version=version,
             digest=params_digest(params))
    await tracker.follow(ctx.stop)  # keeps readiness and metrics telling which version is in force

"""Optimizer service shell: keeps a signed parameter document in force.

With the operator, the only writer of the live parameter bucket; every document it writes is signed with its
own key.  At start, when no valid version exists, it makes the shipped defaults version 1, so every live cycle
runs on an explicit, versioned parameter set rather than on code defaults.  The walk-forward search is not run
here: `aura optimize` coordinates it (services/optimizer/coordinator.py), evaluation tasks go to the worker
processes (services/optimizer/worker.py) over the JetStream work queue, and a winner the gate passes is promoted
through services/optimizer/promote.py, which signal and risk then hot-reload like any other version.
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

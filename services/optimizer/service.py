"""Optimizer service shell.

It is the only writer of the live parameter bucket.  The walk-forward search itself is not built yet
(its issue has not been scheduled); today the service makes sure a validated parameter document exists, so
every live cycle runs on an explicit, versioned parameter set rather than on code defaults.
"""

from __future__ import annotations

from aura.strategy.params import params_digest
from shared.live_params import load_params, promote_params
from shared.logging import info
from shared.service import ServiceContext


async def run(ctx: ServiceContext) -> None:
    params, version = await load_params(ctx.js)
    if version == 0:  # load_params gave the shipped defaults: make them version 1
        version = await promote_params(ctx.js, params)
        info(ctx.logger, "PROMOTE", "seeded the shipped default parameters", version=version,
             digest=params_digest(params))
    ctx.health.set("params_version", version)
    ctx.health.checks["params"] = lambda: (True, f"version {version} digest {params_digest(params)}")
    await ctx.stop.wait()

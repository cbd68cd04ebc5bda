"""Optimizer service shell: keeps a signed parameter document in force.

With the operator, the only writer of the live parameter bucket; every document it writes is signed with its
own key.  At start, when no valid version exists, it makes the shipped defaults version 1, so every live cycle
runs on an explicit, versioned parameter set rather than on code defaults (scaled to the system's
timeframe when it is not 1d: the defaults count daily bars).  Not over a bucket whose every entry is refused: that
is a forgery or a flood (64 junk writes push every valid version out), and seeding would sign the defaults as
if somebody had chosen them; signal and risk run the defaults as version 0 until an operator promotes a version.
The walk-forward search is not run here: `aura optimize` coordinates it (services/optimizer/coordinator.py),
evaluation tasks go to the worker processes (services/optimizer/worker.py) over the JetStream work queue, and a
winner the gate passes is promoted through services/optimizer/promote.py, which signal and risk then hot-reload
like any other version.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aura.strategy.params import PARAMS_TIMEFRAME, StrategyParams, params_digest, rescale
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from shared.live_params import ParamsDocument, history, last_revision, promote, same_timeframe, sign_document
from shared.logging import error, info, warn
from shared.params_tracker import ParamsTracker
from shared.service import ServiceContext


def seed_document(ctx: ServiceContext) -> ParamsDocument:
    """Version 1 for a system with nothing valid: the shipped defaults, in the bars the system trades.

    The defaults count daily bars; on 1h they are scaled to the same durations (x24) and the record says
    "timeframe": "1h", so signal and risk take them up instead of refusing them.  On 1d the document is the
    one this service always wrote (no record)."""
    key = signing_key(ctx.settings.keys, "optimizer")
    timeframe = ctx.settings.timeframe
    if same_timeframe(timeframe, PARAMS_TIMEFRAME):
        return sign_document(StrategyParams(), key, promoted_by="optimizer", reason="seed: the shipped defaults")
    scaled = rescale(StrategyParams(), PARAMS_TIMEFRAME, timeframe)
    # What was scaled, field by field: the operator sees which lookbacks the system now counts in its bars.
    say = warn if scaled.clamped else info  # a clamp means a duration could not be kept exactly
    say(ctx.logger, "TIMEFRAME", scaled.summary(), timeframe=timeframe, factor=scaled.factor,
        clamped=list(scaled.clamped))
    return sign_document(scaled.params, key, promoted_by="optimizer",
                         reason=f"seed: the shipped defaults scaled from {PARAMS_TIMEFRAME} to {timeframe} bars",
                         record={"timeframe": timeframe})


async def may_seed(ctx: ServiceContext, trusted: dict[str, Ed25519PublicKey]) -> bool:
    """Seed only a bucket never written, or one whose valid versions are all for other bars (a new timeframe)."""
    if await last_revision(ctx.js) == 0:
        return True
    stored = await history(ctx.js, trusted)
    if any(doc is not None for _, doc, _ in stored):
        return True
    error(ctx.logger, "PARAMS_REFUSED", "no stored parameter version verifies: not signing the shipped defaults "
          "over them; signal and risk run the defaults as version 0 until an operator promotes a version "
          "(`aura params set`)", entries=len(stored), newest_refusal=stored[-1][2][:200] if stored else "")
    return False


async def run(ctx: ServiceContext) -> None:
    trusted = trusted_keys(ctx.settings.keys, "optimizer", PARAMS_SIGNERS)
    tracker = ParamsTracker(ctx.js, trusted, ctx.health, ctx.logger, max_loss_bound=ctx.settings.max_loss_bound,
                            timeframe=ctx.settings.timeframe)
    params, version = await tracker.current()
    # Nothing valid promoted yet (for this timeframe): make the shipped defaults version 1, signed.
    if version == 0 and await may_seed(ctx, trusted):
        version = await promote(ctx.js, seed_document(ctx), signing_key(ctx.settings.keys, "optimizer"))
        params, version = await tracker.current()
        info(ctx.logger, "PROMOTE", "seeded the shipped default parameters", version=version,
             digest=params_digest(params), timeframe=ctx.settings.timeframe)
    await tracker.follow(ctx.stop)  # keeps readiness and metrics telling which version is in force

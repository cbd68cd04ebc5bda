"""Parameter documents on a real secured nats-server, against a holder of the optimizer's bus credential who lacks
its signing key (shared/live_params.py): a document written again as a newer version, or a delete marker, must not
become what signal and risk trade on; and a promotion judged against one version never lands on top of another."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aura.strategy.params import StrategyParams
from shared.bus import close, params_kv
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from shared.live_params import (
    DELETED,
    PARAMS_KEY,
    ParamsError,
    history,
    last_revision,
    promote,
    read_version,
    sign_document,
)
from tests.conftest import NatsEndpoint
from tests.integration.test_params_timeframe_live import tracked

pytestmark = pytest.mark.integration


async def promoted(nats: NatsEndpoint, *top_k: int) -> list[int]:
    """Versions promoted by the operator, one per ``top_k``, in order."""
    nc = await nats.connect("operator")
    key = signing_key(nats.settings().keys, "operator")
    try:
        return [await promote(nc.jetstream(), sign_document(StrategyParams(top_k=k), key, "operator:t", "t"), key)
                for k in top_k]
    finally:
        await close(nc)


async def as_optimizers_credential(nats: NatsEndpoint, action: str, version: int = 0) -> None:
    nc = await nats.connect("optimizer")
    try:
        js = nc.jetstream()
        kv = await params_kv(js)
        if action == "delete":
            await kv.delete(PARAMS_KEY)
        else:  # an older version's document, signed and valid, written again as the newest
            raw = (await js.get_msg("KV_aura_params", seq=version, direct=True)).data
            await kv.put(PARAMS_KEY, bytes(raw or b""))
    finally:
        await close(nc)


async def newest_and_history(nats: NatsEndpoint) -> tuple[Any, list[tuple[int, Any, str]]]:
    nc = await nats.connect("operator")
    trusted = trusted_keys(nats.settings().keys, "operator", PARAMS_SIGNERS)
    try:
        try:
            newest: Any = await read_version(nc.jetstream(), trusted)
        except ParamsError as exc:
            newest = str(exc)
        return newest, await history(nc.jetstream(), trusted)
    finally:
        await close(nc)


@pytest.mark.parametrize("attack", ["delete", "replay"])
def test_a_deleted_or_replayed_document_leaves_the_last_valid_version_in_force(nats_server: NatsEndpoint,
                                                                              attack: str) -> None:
    v1, v2 = asyncio.run(promoted(nats_server, 2, 3))
    running: dict[str, Any] = {}
    assert asyncio.run(tracked(nats_server, "signal", "1d", running))[:2] == (StrategyParams(top_k=3), v2)
    asyncio.run(as_optimizers_credential(nats_server, attack, v1))
    why = DELETED if attack == "delete" else f"signed as version {v1} is stored as version {v2 + 1}"
    # A running service keeps its version and names the refusal; one starting now takes the last valid one (the
    # shipped defaults, version 0, were what a delete marker read as).
    params, version, tracker = asyncio.run(tracked(nats_server, "signal", "1d", running))
    assert (params, version) == (StrategyParams(top_k=3), v2) and why in tracker.refused[v2 + 1]
    params, version, tracker = asyncio.run(tracked(nats_server, "risk", "1d"))
    assert (params, version) == (StrategyParams(top_k=3), v2) and why in tracker.refused[v2 + 1]
    newest, stored = asyncio.run(newest_and_history(nats_server))
    assert isinstance(newest, str) and why in newest, newest
    assert [(v, d is not None) for v, d, _ in stored] == [(v1, True), (v2, True), (v2 + 1, False)]


def test_a_promotion_after_a_revision_does_not_land_on_top_of_another(nats_server: NatsEndpoint) -> None:
    """What the optimizer's promote_winner relies on: the incumbent it was judged against must still be the last
    revision when its winner is written."""
    (v1,) = asyncio.run(promoted(nats_server, 2))

    async def scenario() -> tuple[int, str]:
        nc = await nats_server.connect("optimizer")
        key = signing_key(nats_server.settings().keys, "optimizer")
        try:
            js = nc.jetstream()
            last = await last_revision(js)
            (v2,) = await promoted(nats_server, 3)  # the operator promotes meanwhile
            try:
                await promote(js, sign_document(StrategyParams(top_k=4), key, "optimizer", "winner"), key, after=last)
            except ParamsError as exc:
                return v2, str(exc)
            return v2, ""
        finally:
            await close(nc)

    v2, refusal = asyncio.run(scenario())
    assert v2 == v1 + 1 and f"changed after revision {v1}" in refusal
    newest, _ = asyncio.run(newest_and_history(nats_server))
    assert newest[:2] == (StrategyParams(top_k=3), v2)


def test_promote_winner_refuses_a_promotion_landing_after_its_incumbent_check(nats_server: NatsEndpoint,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator promotes right after the optimizer checked the incumbent: the winner, judged against the older
    version, is refused instead of landing on top of the operator's."""
    from services.optimizer import promote as promote_module

    (v1,) = asyncio.run(promoted(nats_server, 2))
    real = promote_module.live_incumbent

    async def then_the_operator_promotes(*args: Any, **kwargs: Any) -> Any:
        found = await real(*args, **kwargs)
        await promoted(nats_server, 3)
        return found

    monkeypatch.setattr(promote_module, "live_incumbent", then_the_operator_promotes)

    async def scenario() -> str:
        nc = await nats_server.connect("optimizer")
        keys = nats_server.settings().keys
        try:
            await promote_module.promote_winner(nc.jetstream(), signing_key(keys, "optimizer"),
                                                trusted_keys(keys, "optimizer", PARAMS_SIGNERS),
                                                StrategyParams(top_k=4), {}, "winner", v1, max_loss_bound=0.5,
                                                snapshot_bars=400)
        except promote_module.PromotionRefused as exc:
            return str(exc)
        finally:
            await close(nc)
        return ""

    assert f"changed after revision {v1}" in asyncio.run(scenario())
    newest, _ = asyncio.run(newest_and_history(nats_server))
    assert newest[:2] == (StrategyParams(top_k=3), v1 + 1)


def test_the_optimizer_does_not_sign_the_defaults_over_a_bucket_of_refused_entries(nats_server: NatsEndpoint) -> None:
    """Junk written with the optimizer's bus credential until no valid version is left: seeding would sign the
    shipped defaults as a version nobody chose.  A bucket never written is seeded (version 1)."""
    from services.optimizer.service import run
    from tests.integration.test_params_timeframe_live import context

    async def junk_then_start_the_optimizer(n: int) -> None:
        nc = await nats_server.connect("optimizer")
        try:
            kv = await params_kv(nc.jetstream())
            for _ in range(n):
                await kv.put(PARAMS_KEY, b"junk")
            await run(context(nats_server, nc))
        finally:
            await close(nc)

    asyncio.run(junk_then_start_the_optimizer(3))
    newest, stored = asyncio.run(newest_and_history(nats_server))
    assert isinstance(newest, str) and "malformed" in newest, newest
    assert len(stored) == 3 and all(doc is None for _, doc, _ in stored), "nothing was promoted over the junk"

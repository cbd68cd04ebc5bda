"""Floods a compromised principal can send without bound, against risk on a real secured nats-server (the risk
and executor service bodies, each attack published with the principal's own credential):

* junk parameter writes (the optimizer's or the operator's bus credential, no signing key): 64 of them push the
  version in force out of the key's history, and risk, reading each target's version again by revision, refused
  every target ("parameter version N not found") while its own tracker still held that version;
* refused stale-data notices (a compromised ingest): each was dead-lettered and logged, so a flood filled risk's
  dead-letter subject with junk and pushed risk's genuine dead letters out.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aura.strategy.params import StrategyParams
from services.signal.service import make_target
from shared.bus import params_kv, publish
from shared.contracts import DataStale
from shared.credentials import signing_key
from shared.live_params import PARAMS_KEY, promote, sign_document
from tests.bus_helpers import announce_panel, dead_letters, replay_snapshot, until
from tests.conftest import NatsEndpoint
from tests.risk.test_target_verification_bus import Rig, rig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_junk_flood_of_parameter_writes_leaves_risk_trading_on_the_version_in_force(
        nats_server: NatsEndpoint) -> None:
    versions: dict[str, int] = {}

    async def promote_first(js: dict[str, Any]) -> None:
        doc = sign_document(StrategyParams(), signing_key(nats_server.settings().keys, "operator"), "operator:t", "t")
        versions["chosen"] = await promote(js["operator"], doc, signing_key(nats_server.settings().keys, "operator"))

    async def cycle(r: Rig) -> Any:
        """The next genuine cycle, its target made with the version in force, as signal makes it."""
        cycle_id, panel, markets = replay_snapshot(r.bar, r.settings.snapshot_bars)
        r.bar += 1
        ready = await announce_panel(r.js["ingest"], panel, cycle_id, markets)
        target, r.state = make_target(ready, panel, StrategyParams(), versions["chosen"], r.state)
        await r.publish_target(target)
        return await r.cycle_closed(target.cycle_id, "executed")

    async def scenario() -> dict[str, Any]:
        async with rig(nats_server, before_boot=promote_first) as r:
            before = await cycle(r)
            kv = await params_kv(r.js["operator"])
            for i in range(64):  # the signed version leaves the key's 64-entry history
                await kv.put(PARAMS_KEY, f"junk {i}".encode())
            after = await cycle(r)
            return {"before": before, "after": after, "letters": await dead_letters(r.js["operator"], "risk")}

    out = asyncio.run(scenario())
    assert out["before"].status == out["after"].status == "executed"
    assert not [x for x in out["letters"] if x.reason == "bad_params"], [x.error for x in out["letters"]]


def test_a_flood_of_refused_stale_notices_is_counted_and_dead_lettered_only_within_an_allowance(
        nats_server: NatsEndpoint) -> None:
    async def scenario() -> tuple[Rig, list[Any], Any]:
        async with rig(nats_server) as r:
            for i in range(60):  # each dated far ahead: refused
                notice = DataStale(cycle_id=f"1d-forged-{i}", timeframe="1d", reason="forged", missing=[],
                                   as_of_ms=9_000_000_000_000_000 + i)
                await publish(r.js["ingest"], notice, msg_id=f"stale-forged-{i}")

            async def all_refused() -> bool:
                return r.health["risk"].counters.get("stale_notices_refused", 0) >= 60

            await until(all_refused, "risk to refuse the 60 notices", timeout=60)
            executed = await r.genuine_cycle_executes()
            return r, await dead_letters(r.js["operator"], "risk"), executed

    r, letters, executed = asyncio.run(scenario())
    counters = r.health["risk"].counters
    assert len(letters) == 20 and all(x.reason == "stale_out_of_bounds" for x in letters), len(letters)
    assert counters.get("stale_notices_unlettered") == 40, counters
    assert executed.status == "executed"

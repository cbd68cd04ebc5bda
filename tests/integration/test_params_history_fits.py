"""Parameters that read more history than each snapshot holds are never promoted, on a real secured nats-server.

Signal refuses a cycle whose snapshot is shorter than the parameters read ([WINDOW], services/signal), so such a
version, once written, would stop the system trading at its next cycle.  `aura params set` (and rollback) and the
optimizer's promotion refuse it before writing, naming AURA_SNAPSHOT_BARS and the bars needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from aura.optimize_job import snapshot_bars_on
from aura.strategy.params import StrategyParams, history_bars
from shared.bus import close
from shared.config import load_settings
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from tests.conftest import NatsEndpoint
from tests.integration.test_cli_params import aura, live_version, promoted, set_params

pytestmark = pytest.mark.integration

LONG = {"regime_sma": 200}  # reads 200 daily bars; the defaults read 100


def test_params_set_refuses_lookbacks_longer_than_the_snapshot(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    assert history_bars(msgspec.structs.replace(StrategyParams(), **LONG)) == 200
    refused = set_params(nats_server, tmp_path, LONG, "longer regime", AURA_SNAPSHOT_BARS="150")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "reads 200 bars" in refused.stderr and "AURA_SNAPSHOT_BARS >= 200" in refused.stderr, refused.stderr
    assert live_version(nats_server) == 0  # nothing written
    # The same document on a system whose snapshots hold the daily default (400 bars) is promoted.
    version = promoted(nats_server, tmp_path, LONG, "longer regime")
    # And a rollback to it from a system with shorter snapshots is refused too.
    promoted(nats_server, tmp_path, {"regime_sma": 100}, "back to 100")
    back = aura(nats_server, "params", "rollback", str(version), "--reason", "again", AURA_SNAPSHOT_BARS="150")
    assert back.returncode == 2 and "AURA_SNAPSHOT_BARS >= 200" in back.stderr, back.stderr
    assert live_version(nats_server) == version + 1


def test_the_optimizer_does_not_promote_a_winner_the_snapshot_cannot_feed(nats_server: NatsEndpoint) -> None:
    from services.optimizer.promote import PromotionRefused, promote_winner

    winner = msgspec.structs.replace(StrategyParams(), **LONG)

    async def go(snapshot_bars: int) -> int:
        nc = await nats_server.connect("optimizer")
        keys = nats_server.settings().keys
        try:
            return await promote_winner(nc.jetstream(), signing_key(keys, "optimizer"),
                                        trusted_keys(keys, "optimizer", PARAMS_SIGNERS), winner, {}, "winner", 0,
                                        max_loss_bound=0.5, snapshot_bars=snapshot_bars)
        finally:
            await close(nc)

    with pytest.raises(PromotionRefused, match=r"reads 200 bars .* each snapshot holds 199"):
        asyncio.run(go(199))
    assert live_version(nats_server) == 0
    assert asyncio.run(go(200)) == 1  # exactly enough history is enough


def test_the_optimizer_judges_the_snapshot_of_the_runs_timeframe(monkeypatch: pytest.MonkeyPatch) -> None:
    """An hourly run promoted from a shell with daily settings is checked against the hourly default (3,000 bars,
    as an hourly ingest cuts them), not the daily 400; a window the operator set is what counts either way."""
    monkeypatch.delenv("AURA_SNAPSHOT_BARS", raising=False)
    daily = load_settings({}, places_orders=False)
    assert snapshot_bars_on(daily, "1d") == 400 and snapshot_bars_on(daily, "1h") == 3000
    monkeypatch.setenv("AURA_SNAPSHOT_BARS", "900")
    assert snapshot_bars_on(load_settings(places_orders=False), "1h") == 900

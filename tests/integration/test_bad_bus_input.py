"""Bad input on the bus reaches the real signal service body on a real nats-server: each kind is dead-lettered
with its reason and a tagged log line, and the service keeps consuming (no crash, no crash loop)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aura.natsd import free_port
from aura.strategy.types import Panel
from services.signal import service as signal_service
from shared.bus import candle_store, connect, dead_letter, ensure_streams, settle_refused
from shared.candles import digest, encode_panel
from shared.config import SERVICE_NAMES, load_settings
from shared.contracts import ContractError, DataReady, DeadLetter, decode, encode
from shared.health import HealthState
from shared.service import ServiceContext
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
DAY = 86_400_000


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tags: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.tags.append(str(getattr(record, "tag", "")))


def panel_blob(last_close: float) -> bytes:
    t = 5
    close = np.array([[100.0], [101.0], [102.0], [103.0], [last_close]])
    return encode_panel(Panel(("BTC/USDT",), np.arange(t, dtype=np.int64) * DAY, close, close * 1.01, close * 0.99,
                              close, np.full((t, 1), 1e6)))


def ready_for(cycle: str, blob_digest: str) -> DataReady:
    return DataReady(cycle_id=cycle, timeframe="1d", as_of_ms=4 * DAY, digest=blob_digest, symbols=["BTC/USDT"],
                     bars=5, markets=[])


def nested(depth: int) -> bytes:
    return b'{"v":1,"x":' + b"[" * depth + b"]" * depth + b"}"


def test_deeply_nested_json_is_a_contract_error_not_a_crash() -> None:
    with pytest.raises(ContractError, match="nested too deeply"):
        decode(nested(5000), DataReady)


def test_each_kind_of_bad_input_is_dead_lettered_and_signal_keeps_running(nats_server: NatsEndpoint,
                                                                          tmp_path: Path) -> None:
    env = {"AURA_HOME": str(tmp_path / "home"), "AURA_NATS_URL": nats_server.url}
    env.update({f"AURA_{n.upper()}_PORT": str(free_port()) for n in SERVICE_NAMES})
    settings = load_settings(env)
    records = Records()

    async def scenario() -> tuple[list[DeadLetter], bool, HealthState]:
        logger = logging.getLogger("aura.test.bad-input")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(records)
        nc = await connect(settings.nats_url, "signal", logger)
        js = nc.jetstream()
        await ensure_streams(js, settings.dedup_window_s)
        ctx = ServiceContext("signal", settings, logger, nc, js, HealthState(service="signal"), asyncio.Event())
        task = asyncio.create_task(signal_service.run(ctx))
        try:
            store = await candle_store(js)
            nan_blob, good = panel_blob(float("nan")), panel_blob(104.0)
            await store.put(digest(nan_blob), nan_blob)
            await store.put("0" * 64, good)  # stored under a name that is not its digest
            await js.publish(DataReady.SUBJECT, nested(5000))
            await js.publish(DataReady.SUBJECT, encode(ready_for("1d-missing", "f" * 64)))
            await js.publish(DataReady.SUBJECT, encode(ready_for("1d-mismatch", "0" * 64)))
            await js.publish(DataReady.SUBJECT, encode(ready_for("1d-nan", digest(nan_blob))))
            sub = await js.subscribe(f"{DeadLetter.SUBJECT}.signal", ordered_consumer=True)
            letters: list[DeadLetter] = []
            deadline = asyncio.get_running_loop().time() + 60
            while len(letters) < 4 and asyncio.get_running_loop().time() < deadline:
                try:
                    letters.append(decode((await sub.next_msg(timeout=1)).data, DeadLetter))
                except Exception:
                    continue
            await asyncio.sleep(0.5)
            return letters, not task.done(), ctx.health
        finally:
            ctx.stop.set()
            await asyncio.wait_for(task, timeout=15)
            await nc.close()
            logger.removeHandler(records)

    letters, alive, health = asyncio.run(scenario())
    assert alive, "the signal service stopped on bad input"
    reasons = {(d.reason, decode(d.payload, DataReady).cycle_id if d.reason != "malformed" else "") for d in letters}
    assert reasons == {("malformed", ""), ("missing_candles", "1d-missing"), ("digest_mismatch", "1d-mismatch"),
                       ("bad_data", "1d-nan")}, reasons
    assert "nested too deeply" in next(d.error for d in letters if d.reason == "malformed")
    assert records.tags.count("DEAD_LETTER") >= 4
    assert health.counters["dead_letters"] == 4


class FailingJs:
    """A JetStream context whose publish fails, as during a bus outage."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise TimeoutError("nats: timeout")


class SettledMsg:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def term(self) -> None:
        self.calls.append("term")

    async def nak(self, delay: float = 0) -> None:
        self.calls.append(f"nak {delay}")


def test_a_message_whose_dead_letter_cannot_be_stored_is_kept_for_redelivery() -> None:
    async def scenario() -> tuple[bool, list[str]]:
        msg = SettledMsg()
        stored = await dead_letter(FailingJs(), logging.getLogger("aura.test.dlq"), "signal",  # type: ignore[arg-type]
                                   DataReady.SUBJECT, "malformed", "bad", b"payload")
        await settle_refused(msg, stored)  # type: ignore[arg-type]
        return stored, msg.calls

    stored, calls = asyncio.run(scenario())
    assert stored is False
    assert calls and calls[0].startswith("nak"), f"terminated a message whose dead letter was lost: {calls}"

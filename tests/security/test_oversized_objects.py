"""A candle object's meta is the writer's word: ingest sets its size and chunk count.  Read as claimed, one
announcement of an object claiming a gigabyte made risk and signal allocate all of it (the bucket holds 1 GiB),
so a compromised ingest could exhaust their memory while the stop-loss ticks run in the same process.  Now a
reader refuses an object over CANDLE_OBJECT_MAX_BYTES before reading a chunk, and stops as soon as the chunks
pass the size the meta claimed; signal dead-letters the announcement (``oversized_candles``)."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from shared.bus import publish
from shared.contracts import CANDLE_BUCKET, CANDLE_OBJECT_MAX_BYTES, DataReady
from shared.objects import ObjectTooLarge, candle_writer, read_object, verified_candles
from tests.bus_helpers import dead_letters, role_connections, running, until
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def forge_meta(js_ingest: object, name: str, like: str, size: int, chunks: int) -> None:
    """As ingest (it may write candle objects): a meta for ``name`` claiming ``size`` bytes in ``chunks`` chunks,
    pointing at the chunks of the real object ``like``."""
    real = await js_ingest.get_last_msg(  # type: ignore[attr-defined]
        f"OBJ_{CANDLE_BUCKET}", f"$O.{CANDLE_BUCKET}.M.{base64.urlsafe_b64encode(like.encode()).decode()}",
        direct=True)
    meta = json.loads(real.data) | {"name": name, "size": size, "chunks": chunks}
    subject = f"$O.{CANDLE_BUCKET}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    await js_ingest.publish(subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"},  # type: ignore
                            timeout=5)


def test_an_object_claiming_more_than_a_reader_accepts_is_refused_before_it_is_read(
        nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()

    async def scenario() -> tuple[str, str, str, bytes | None]:
        async with role_connections(settings, "ingest", "risk") as js:
            store = await candle_writer(js["ingest"])
            await store.put("real", b"x" * 300_000)  # three chunks of nats-py's 128 KiB
            await forge_meta(js["ingest"], "a" * 64, "real", 1 << 30, 8192)
            await forge_meta(js["ingest"], "b" * 64, "real", 1000, 1)  # its chunk holds more than it says
            # 50,000 empty chunks (3.5 MB, published in a second) each cost a direct get: 20 s a read, every tick.
            await forge_meta(js["ingest"], "c" * 64, "real", 300_000, 50_000)
            said = []
            for name in ("a" * 64, "b" * 64, "c" * 64):
                try:
                    await verified_candles(js["risk"], name)
                    said.append("read")
                except ObjectTooLarge as exc:
                    said.append(str(exc))
            return said[0], said[1], said[2], await read_object(js["risk"], CANDLE_BUCKET, "real")

    claimed_huge, ran_over, many_chunks, real = asyncio.run(scenario())
    assert f"claims {1 << 30} bytes, more than the {CANDLE_OBJECT_MAX_BYTES}" in claimed_huge, claimed_huge
    assert "holds more than the 1000 bytes its meta claims" in ran_over, ran_over
    assert "claims 50000 chunks for 300000 bytes" in many_chunks, many_chunks
    assert real == b"x" * 300_000  # an honest object still reads whole


def test_an_object_with_an_empty_chunk_is_refused(nats_server: NatsEndpoint) -> None:
    """Empty chunks never grow an object past the size its meta claims: refused as soon as one is read."""
    settings = nats_server.settings()

    async def scenario() -> str:
        async with role_connections(settings, "ingest", "risk") as js:
            store = await candle_writer(js["ingest"])
            await store.put("real", b"x" * 1000)
            await forge_meta(js["ingest"], "e" * 64, "real", 1000, 1)
            real = json.loads((await js["ingest"].get_last_msg(
                f"OBJ_{CANDLE_BUCKET}", f"$O.{CANDLE_BUCKET}.M.{base64.urlsafe_b64encode(b'real').decode()}",
                direct=True)).data)
            nuid = "empty" + real["nuid"][5:]
            meta_subject = f"$O.{CANDLE_BUCKET}.M.{base64.urlsafe_b64encode(('e' * 64).encode()).decode()}"
            meta = json.loads((await js["ingest"].get_last_msg(f"OBJ_{CANDLE_BUCKET}", meta_subject,
                                                                direct=True)).data) | {"nuid": nuid}
            await js["ingest"].publish(f"$O.{CANDLE_BUCKET}.C.{nuid}", b"", timeout=5)
            await js["ingest"].publish(meta_subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"},
                                       timeout=5)
            try:
                await read_object(js["risk"], CANDLE_BUCKET, "e" * 64)
            except ValueError as exc:
                return str(exc)
            return "read"

    assert "has an empty chunk" in asyncio.run(scenario())


def test_signal_dead_letters_an_announcement_of_an_oversized_object_and_goes_on(nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()
    name = "c" * 64

    async def scenario() -> list[str]:
        async with role_connections(settings, "ingest", "operator") as js, running(settings, "executor", "signal"):
            await (await candle_writer(js["ingest"])).put("real", b"x" * 1000)
            await forge_meta(js["ingest"], name, "real", 1 << 30, 8192)
            ready = DataReady(cycle_id="1d-20240105T0000", timeframe="1d", as_of_ms=1_704_412_800_000, digest=name,
                              symbols=["BTC/USDT"], bars=5, markets=[])
            await publish(js["ingest"], ready, msg_id="ready-oversized")

            async def refused() -> list[str]:
                return [f"{x.reason}: {x.error}" for x in await dead_letters(js["operator"], "signal")]

            return await until(refused, "signal's dead letter")

    letters = asyncio.run(scenario())
    assert len(letters) == 1 and letters[0].startswith("oversized_candles: ") and "claims" in letters[0], letters

"""Bad input on the bus reaches the real signal service body on a real nats-server: each kind is dead-lettered
with its reason and a tagged log line, and the service keeps consuming (no crash, no crash loop)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from nats.js.errors import APIError

from aura.strategy.types import Panel
from services.signal import service as signal_service
from shared.bus import (
    DEAD_LETTER_MAX_TRIES,
    DEAD_LETTER_RETRY_S,
    clip_json,
    close,
    connect,
    dead_letter,
    settle_refused,
)
from shared.candles import digest, encode_panel
from shared.contracts import DEAD_LETTER_PAYLOAD_PREFIX, KIB, ContractError, DataReady, DeadLetter, decode, encode
from shared.health import HealthState
from shared.objects import candle_writer
from shared.service import ServiceContext
from tests.bus_helpers import dead_letters, until
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


def oversized_json(size: int) -> bytes:
    """A well-formed JSON object of ``size`` bytes that is no DataReady (malformed for the contract)."""
    head, tail = b'{"v":1,"x":"', b'"}'
    return head + b"A" * (size - len(head) - len(tail)) + tail


def test_each_kind_of_bad_input_is_dead_lettered_and_signal_keeps_running(nats_server: NatsEndpoint) -> None:
    """Ingest (its credential, its rights) publishes bad announcements; the signal service body, connected as
    signal, refuses each with a bounded dead letter; the operator reads the dead letters."""
    settings = nats_server.settings()
    records = Records()
    # Bigger than the dead-letter stream's message limit (16 KiB), within the data stream's (64 KiB): its dead
    # letter must carry a bounded prefix, or it could not be stored and the message would come back forever.
    big = oversized_json(60 * KIB)
    nan_blob, good = panel_blob(float("nan")), panel_blob(104.0)
    sent = {
        "malformed-nested": nested(5000),
        "malformed-oversized": big,
        "missing": encode(ready_for("1d-missing", "f" * 64)),
        "mismatch": encode(ready_for("1d-mismatch", "0" * 64)),
        "nan": encode(ready_for("1d-nan", digest(nan_blob))),
    }

    async def scenario() -> tuple[list[DeadLetter], bool, HealthState, Exception]:
        logger = logging.getLogger("aura.test.bad-input")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(records)
        nc = await connect(settings, "signal", logger)
        ingest = await nats_server.connect("ingest")
        operator = await nats_server.connect("operator")
        ctx = ServiceContext("signal", settings, logger, nc, nc.jetstream(), HealthState(service="signal"),
                             asyncio.Event())
        task = asyncio.create_task(signal_service.run(ctx))
        try:
            js = ingest.jetstream()
            store = await candle_writer(js)
            await store.put(digest(nan_blob), nan_blob)
            await store.put("0" * 64, good)  # stored under a name that is not its digest
            for payload in sent.values():
                await js.publish(DataReady.SUBJECT, payload, stream="AURA_DATA", timeout=5)
            # Past the data stream's own limit the server refuses the message: no consumer ever sees it.
            try:
                await js.publish(DataReady.SUBJECT, oversized_json(65 * KIB), stream="AURA_DATA", timeout=5)
            except Exception as exc:
                too_big: Exception = exc
            else:
                raise AssertionError("the data stream stored a message over its max_msg_size")

            async def all_letters() -> list[DeadLetter] | None:
                letters = await dead_letters(operator.jetstream(), "signal")
                return letters if len(letters) >= len(sent) else None

            letters = await until(all_letters, "a dead letter for each bad input", timeout=90)
            await asyncio.sleep(0.5)
            return letters, not task.done(), ctx.health, too_big
        finally:
            ctx.stop.set()
            await asyncio.wait_for(task, timeout=15)
            for conn in (nc, ingest, operator):
                await close(conn)
            logger.removeHandler(records)

    letters, alive, health, too_big = asyncio.run(scenario())
    assert alive, "the signal service stopped on bad input"
    assert isinstance(too_big, APIError) and "message size exceeds maximum" in str(too_big), too_big
    assert len(letters) == len(sent), [d.reason for d in letters]
    by_sha = {hashlib.sha256(raw).hexdigest(): name for name, raw in sent.items()}
    seen = {}
    for letter in letters:
        name = by_sha.get(letter.payload_sha256)
        assert name is not None, f"dead letter for a payload nobody sent: {letter.payload_sha256}"
        raw = sent[name]
        assert letter.service == "signal" and letter.subject == DataReady.SUBJECT
        assert letter.payload_size == len(raw)
        assert letter.payload == raw[:DEAD_LETTER_PAYLOAD_PREFIX]
        assert len(encode(letter)) <= 16 * KIB, "a dead letter over the DLQ stream's message limit"
        seen[name] = letter
    assert {name: d.reason for name, d in seen.items()} == {
        "malformed-nested": "malformed", "malformed-oversized": "malformed", "missing": "missing_candles",
        "mismatch": "digest_mismatch", "nan": "bad_data"}
    for name, cycle in (("missing", "1d-missing"), ("mismatch", "1d-mismatch"), ("nan", "1d-nan")):
        assert decode(seen[name].payload, DataReady).cycle_id == cycle  # small payloads are carried whole
    assert "nested too deeply" in seen["malformed-nested"].error
    # The oversized payload: a prefix of exactly the bound, with the size and hash of the whole message.
    big_letter = seen["malformed-oversized"]
    assert len(big_letter.payload) == DEAD_LETTER_PAYLOAD_PREFIX < len(big)
    assert big_letter.payload_size == len(big) and big_letter.payload_sha256 == hashlib.sha256(big).hexdigest()
    assert records.tags.count("DEAD_LETTER") >= len(sent)
    assert health.counters["dead_letters"] == len(sent)


def test_a_dead_letter_carries_a_bounded_prefix_with_the_size_and_hash_of_the_whole() -> None:
    published: list[tuple[str, bytes]] = []

    class RecordingJs:
        async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> None:
            published.append((subject, payload))

    payload = bytes(range(256)) * 1000  # 256,000 bytes: the server's max_payload, far over the DLQ's limit
    stored = asyncio.run(dead_letter(RecordingJs(), logging.getLogger("aura.test.dlq"),  # type: ignore[arg-type]
                                     "executor", "aura.plans.approved", "malformed", "e" * 10_000, payload))
    assert stored is True and [s for s, _ in published] == [f"{DeadLetter.SUBJECT}.executor"]
    letter = decode(published[0][1], DeadLetter)
    assert letter.payload == payload[:DEAD_LETTER_PAYLOAD_PREFIX]
    assert letter.payload_size == len(payload)
    assert letter.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert letter.error.startswith("e" * 1000) and letter.error.endswith("…")
    assert len(published[0][1]) <= 16 * KIB, "the encoded dead letter must fit the DLQ stream's max_msg_size"


@pytest.mark.parametrize("text", ["\x01" * 9_000, "💥" * 9_000, "\\\"" * 9_000],
                         ids=["control characters", "emoji", "quotes and backslashes"])
def test_a_dead_letter_stays_bounded_in_bytes_whatever_its_error_text_holds(text: str) -> None:
    """The error often quotes what was refused (a forged cycle id from the bus): bounded in characters it was not
    bounded in bytes, as each control character takes six bytes of JSON (a 9,000-character id made a 17,622-byte
    letter that the DLQ refused to store)."""
    published: list[bytes] = []

    class RecordingJs:
        async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> None:
            published.append(payload)

    payload = bytes(range(256)) * 1000
    err = f"cycle {text} refused"
    assert asyncio.run(dead_letter(RecordingJs(), logging.getLogger("aura.test.dlq"),  # type: ignore[arg-type]
                                   "risk", "aura.data.stale", "stale_refused", err, payload))
    letter = decode(published[0], DeadLetter)
    assert len(published[0]) <= 16 * KIB, f"{len(published[0])} bytes: over the DLQ stream's max_msg_size"
    assert letter.error.startswith("cycle " + text[:100]) and letter.error.endswith("…")
    assert clip_json("short", 100) == "short"


class FailingJs:
    """A JetStream context whose publish fails, as during a bus outage."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise TimeoutError("nats: timeout")


class SettledMsg:
    """A delivered message as nats-py hands it over: subject, data, metadata (deliveries, stream sequence)."""

    def __init__(self, num_delivered: int, stream_seq: int = 42) -> None:
        self.subject = DataReady.SUBJECT
        self.data = b"payload"
        self.metadata = SimpleNamespace(num_delivered=num_delivered,
                                        sequence=SimpleNamespace(stream=stream_seq, consumer=num_delivered))
        self.calls: list[str] = []

    async def term(self) -> None:
        self.calls.append("term")

    async def nak(self, delay: float = 0) -> None:
        self.calls.append(f"nak {delay}")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def refuse(deliveries: int) -> tuple[bool, list[str], list[logging.LogRecord]]:
    """Dead-letter a message during a bus outage, then settle it at delivery number ``deliveries``."""
    logger = logging.getLogger(f"aura.test.dlq.{deliveries}")
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.addHandler(lines)

    async def scenario() -> tuple[bool, list[str]]:
        msg = SettledMsg(deliveries)
        stored = await dead_letter(FailingJs(), logger, "signal",  # type: ignore[arg-type]
                                   DataReady.SUBJECT, "malformed", "bad", msg.data)
        lines.records.clear()  # only what settling logs
        await settle_refused(msg, stored, logger)  # type: ignore[arg-type]
        return stored, msg.calls

    try:
        stored, calls = asyncio.run(scenario())
    finally:
        logger.removeHandler(lines)
    return stored, calls, lines.records


@pytest.mark.parametrize("deliveries", [1, DEAD_LETTER_MAX_TRIES - 1])
def test_a_message_whose_dead_letter_cannot_be_stored_is_kept_for_redelivery(deliveries: int) -> None:
    stored, calls, logged = refuse(deliveries)
    assert stored is False
    assert calls == [f"nak {DEAD_LETTER_RETRY_S}"], f"terminated a message whose dead letter was lost: {calls}"
    assert logged == []


def test_at_its_last_delivery_an_undeliverable_refusal_is_terminated_and_logged() -> None:
    """A message that can never be dead-lettered must not block its consumer (max_ack_pending=1) forever: at
    DEAD_LETTER_MAX_TRIES deliveries it is terminated, with an error line that lets an operator find it."""
    stored, calls, logged = refuse(DEAD_LETTER_MAX_TRIES)
    assert stored is False
    assert calls == ["term"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert getattr(logged[0], "tag", "") == "DEAD_LETTER"
    fields = getattr(logged[0], "fields", {})
    assert fields["stream_seq"] == 42 and fields["deliveries"] == DEAD_LETTER_MAX_TRIES
    assert fields["subject"] == DataReady.SUBJECT
    assert fields["bytes"] == len(b"payload") and fields["sha256"] == hashlib.sha256(b"payload").hexdigest()


def test_a_stored_dead_letter_terminates_the_message_at_any_delivery() -> None:
    async def scenario() -> list[list[str]]:
        out = []
        for deliveries in (1, DEAD_LETTER_MAX_TRIES):
            msg = SettledMsg(deliveries)
            await settle_refused(msg, True)  # type: ignore[arg-type]
            out.append(msg.calls)
        return out

    assert asyncio.run(scenario()) == [["term"], ["term"]]

"""A bucket that is missing and a server that is slow are told apart (found by an audit: a 24 s pause of the server
made a service say "KV bucket aura_params is not available (TimeoutError); run `aura bus provision`")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.errors import BucketNotFoundError

from shared import bus
from shared.bus import BusNotProvisioned, BusUnavailable, bind_kv


class Answers:
    """A JetStream context whose ``key_value`` answers with each of ``outcomes`` in turn (an exception is raised)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes, self.calls = list(outcomes), 0

    async def key_value(self, bucket: str) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep
    monkeypatch.setattr(bus.asyncio, "sleep", lambda _s: real_sleep(0))


def test_a_missing_bucket_is_said_to_need_provisioning() -> None:
    with pytest.raises(BusNotProvisioned, match="aura bus provision"):
        asyncio.run(bind_kv(Answers(BucketNotFoundError()), "aura_params"))  # type: ignore[arg-type]


def test_a_server_that_does_not_answer_is_said_to_be_slow_not_unprovisioned() -> None:
    js = Answers(*[TimeoutError()] * bus.BIND_TRIES)
    with pytest.raises(BusUnavailable, match="slow or overloaded") as raised:
        asyncio.run(bind_kv(js, "aura_params"))  # type: ignore[arg-type]
    assert "provision" not in str(raised.value) and js.calls == bus.BIND_TRIES


def test_a_server_that_answers_after_a_timeout_binds() -> None:
    js = Answers(TimeoutError(), "bucket")
    assert asyncio.run(bind_kv(js, "aura_params")) == "bucket"  # type: ignore[arg-type]

"""Live parameter documents carry the timeframe their lookbacks count (issue 11, item 6, the live half), on a real
secured nats-server:

* a service on 1h bars refuses a document made for 1d (``[TIMEFRAME]``, both timeframes and the fix named) and
  takes up one made for 1h; with nothing valid it runs the shipped defaults scaled to 1h, never the daily values;
* a 1h document whose scaled lookbacks lie beyond the daily ranges validates (with the 1h ranges);
* a document signed before the timeframe existed (no ``record["timeframe"]``) still verifies and counts as 1d;
* `aura params set` with ``"timeframe": "1h"`` round-trips through `aura params show` (and rollback keeps it);
* the optimizer service seeds the defaults scaled to a 1h system's bars, and on 1d exactly as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aura.strategy.params import PARAM_RANGES, StrategyParams, params_digest, rescale
from shared.bus import close, params_kv
from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys
from shared.health import HealthState
from shared.live_params import (
    PARAMS_KEY,
    ParamsDocument,
    ParamsError,
    _ParamsDocumentV1,
    default_params,
    document_timeframe,
    promote,
    read_version,
    sign_document,
    verify_document,
)
from shared.params_tracker import ParamsTracker
from shared.service import ServiceContext
from shared.signing import sign_struct
from tests.conftest import NatsEndpoint
from tests.integration.test_cli_params import aura, live_version, promoted, set_params, show

pytestmark = pytest.mark.integration

HOURLY = rescale(StrategyParams(), "1d", "1h")  # the shipped defaults at the same durations in hourly bars
HOURLY_ENV = {"AURA_TIMEFRAME": "1h"}  # the CLI of a system that trades hourly bars


def operator_doc(nats: NatsEndpoint, params: StrategyParams, record: dict[str, Any] | None = None) -> ParamsDocument:
    return sign_document(params, signing_key(nats.settings().keys, "operator"), "operator:test", "test",
                         record=record)


async def put(nats: NatsEndpoint, doc: ParamsDocument, raw: bool = False) -> int:
    """``doc`` promoted by the operator (signed with its key as the version it becomes), or with ``raw`` stored as
    it is, as the code before versions were bound stored documents."""
    nc = await nats.connect("operator")
    try:
        if raw:
            return int(await (await params_kv(nc.jetstream())).put(PARAMS_KEY, msgspec.json.encode(doc)))
        return await promote(nc.jetstream(), doc, signing_key(nats.settings().keys, "operator"))
    finally:
        await close(nc)


async def tracked(nats: NatsEndpoint, principal: str, timeframe: str, trackers: dict[str, ParamsTracker] | None = None,
                  ) -> tuple[StrategyParams, int, ParamsTracker]:
    """What ``principal``'s tracker (its own connection and pinned keys) holds after reading the bucket.  A tracker
    passed in ``trackers`` is reused (a running service's), else a new one starts (a service's start)."""
    nc = await nats.connect(principal)
    try:
        tracker = (trackers or {}).get(principal)
        if tracker is None:
            tracker = ParamsTracker(nc.jetstream(), trusted_keys(nats.settings().keys, principal, PARAMS_SIGNERS),
                                    HealthState(service=principal), logging.getLogger(f"aura.test.{principal}"),
                                    max_loss_bound=0.5, timeframe=timeframe)
            if trackers is not None:
                trackers[principal] = tracker
        tracker.js = nc.jetstream()
        params, version = await tracker.current()
        return params, version, tracker
    finally:
        await close(nc)


def test_hourly_services_refuse_a_daily_document_and_take_an_hourly_one(nats_server: NatsEndpoint,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    daily = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=2))))
    running: dict[str, ParamsTracker] = {}
    for principal in ("signal", "risk"):
        params, version, tracker = asyncio.run(tracked(nats_server, principal, "1h", running))
        # Refused like an invalid document: nothing valid for 1h, so version 0, the defaults *scaled* to 1h.
        assert version == 0 and params == HOURLY.params == default_params("1h"), principal
        assert params.momentum_lookback == 720 and params.rebalance_every == 24
        why = tracker.refused[daily]
        assert "1d bars" in why and "1h bars" in why and '"timeframe": "1h"' in why and "--timeframe 1h" in why
        assert tracker.health.counters["params_refused"] == 1 and tracker.check()[0]  # counted; still ready
    tagged = [r for r in caplog.records if getattr(r, "tag", None) == "TIMEFRAME"]
    assert tagged and all(r.levelno == logging.ERROR for r in tagged), [r.getMessage() for r in caplog.records]
    assert tagged[0].fields["version"] == daily  # type: ignore[attr-defined]

    # Risk fetches exactly the version signal named: the 1d one is refused there too, and version 0 has the digest
    # signal computed from its (scaled) defaults.
    async def risk_reads() -> None:
        nc = await nats_server.connect("risk")
        trusted = trusted_keys(nats_server.settings().keys, "risk", PARAMS_SIGNERS)
        try:
            zero, _, _ = await read_version(nc.jetstream(), trusted, 0, timeframe="1h")
            assert params_digest(zero) == params_digest(HOURLY.params)
            with pytest.raises(ParamsError, match="1d bars"):
                await read_version(nc.jetstream(), trusted, daily, timeframe="1h")
            # Without a timeframe (the operator's CLI, the console) the document reads as it is.
            assert (await read_version(nc.jetstream(), trusted, daily))[0].top_k == 2
        finally:
            await close(nc)

    asyncio.run(risk_reads())

    hourly_params = msgspec.structs.replace(HOURLY.params, top_k=2)
    hourly = asyncio.run(put(nats_server, operator_doc(nats_server, hourly_params, {"timeframe": "1h"})))
    for principal in ("signal", "risk"):
        params, version, _ = asyncio.run(tracked(nats_server, principal, "1h", running))  # hot reload
        assert (params, version) == (hourly_params, hourly), principal
    # And the other way round: a daily system refuses the hourly document, keeps the daily one in force.
    params, version, tracker = asyncio.run(tracked(nats_server, "signal", "1d"))
    assert (params, version) == (StrategyParams(top_k=2), daily)
    assert "1h bars" in tracker.refused[hourly] and "1d bars" in tracker.refused[hourly]


def test_an_hourly_document_beyond_the_daily_ranges_validates(nats_server: NatsEndpoint) -> None:
    params = msgspec.structs.replace(HOURLY.params, momentum_lookback=2000)
    assert params.momentum_lookback > PARAM_RANGES["momentum_lookback"][1]
    assert params.momentum_long_lookback > PARAM_RANGES["momentum_long_lookback"][1]
    doc = operator_doc(nats_server, params, {"timeframe": "1h"})
    trusted = trusted_keys(nats_server.settings().keys, "signal", PARAMS_SIGNERS)
    verified, signer = verify_document(msgspec.json.encode(doc), trusted)
    assert signer == "operator" and verified.params == params and document_timeframe(verified) == "1h"
    # The same values declared as daily (or not declared) are out of range.
    with pytest.raises(ParamsError, match="momentum_lookback"):
        operator_doc(nats_server, params)
    with pytest.raises(ParamsError, match="momentum_lookback"):
        operator_doc(nats_server, params, {"timeframe": "1d"})
    # An unknown timeframe in a record is refused, not guessed.
    for bad in ("banana", "0h", 24):
        with pytest.raises(ParamsError, match="timeframe"):
            operator_doc(nats_server, StrategyParams(), {"timeframe": bad})
    # The record is signed: relabelling a daily document as hourly breaks its signature.
    daily = msgspec.to_builtins(operator_doc(nats_server, StrategyParams()))
    daily["record"] = {"timeframe": "1h"}
    with pytest.raises(ParamsError, match="does not verify"):
        verify_document(json.dumps(daily).encode(), trusted)
    # Taken up by an hourly service through the bus.
    version = asyncio.run(put(nats_server, doc))
    assert asyncio.run(tracked(nats_server, "risk", "1h"))[:2] == (params, version)


def test_a_document_from_before_the_timeframe_verifies_and_counts_as_daily(nats_server: NatsEndpoint) -> None:
    """Signed as the code before this change signed (the struct as is, an optimizer record without the key): the
    encoding, and so the signature, is unchanged.  (Stored as that code stored it, when it was signed: the version
    it is stored as is not bound, live_params.check_version.)"""
    key = signing_key(nats_server.settings().keys, "optimizer")
    old = sign_struct(_ParamsDocumentV1(params=StrategyParams(top_k=4), promoted_by="optimizer", reason="old",
                                        promoted_at_ms=int(time.time() * 1000), record={"report_sha256": "ab" * 32}),
                      key)
    raw = msgspec.json.encode(old)
    assert b"timeframe" not in raw
    trusted = trusted_keys(nats_server.settings().keys, "signal", PARAMS_SIGNERS)
    doc, signer = verify_document(raw, trusted)
    assert signer == "optimizer" and document_timeframe(doc) == "1d" and doc.params.top_k == 4
    bare = msgspec.to_builtins(old)
    del bare["record"]  # a document with no record at all decodes to an empty one
    bare_doc = ParamsDocument(**{**bare, "params": StrategyParams(top_k=4), "record": {}})
    assert document_timeframe(bare_doc) == "1d"
    version = asyncio.run(put(nats_server, old, raw=True))
    assert asyncio.run(tracked(nats_server, "signal", "1d"))[:2] == (StrategyParams(top_k=4), version)
    params, in_force, tracker = asyncio.run(tracked(nats_server, "signal", "1h"))
    assert in_force == 0 and version in tracker.refused and params == HOURLY.params


def test_an_hourly_systems_operator_edits_the_defaults_it_runs(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    """Nothing promoted on an hourly system: `show` prints the defaults it runs (scaled to 1h, labelled 1h), and a
    bare edit builds on them; rollback to 0 restores them.  (Taken as the daily defaults, the edit was refused as a
    document for other bars.)"""
    first = show(nats_server, **HOURLY_ENV)
    assert first["version"] == 0 and first["timeframe"] == "1h"
    assert first["params"] == msgspec.to_builtins(HOURLY.params)
    v1 = promoted(nats_server, tmp_path, {"stop_loss": 0.1}, "tighter stop", **HOURLY_ENV)
    shown_after = show(nats_server)
    assert shown_after["version"] == v1 and shown_after["timeframe"] == "1h"
    assert shown_after["params"] == {**msgspec.to_builtins(HOURLY.params), "stop_loss": 0.1}
    back = aura(nats_server, "params", "rollback", "0", "--reason", "the defaults", **HOURLY_ENV)
    assert back.returncode == 0, back.stderr
    rolled = show(nats_server)
    assert rolled["timeframe"] == "1h" and rolled["params"] == msgspec.to_builtins(HOURLY.params)


def test_params_set_with_a_timeframe_round_trips_through_show(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    first = show(nats_server)
    assert first["timeframe"] == "1d" and first["version"] == 0
    # From a daily system's settings an hourly document is refused in one line: signal and risk would refuse it
    # ([TIMEFRAME]) while the CLI said "live services use it".
    daily = set_params(nats_server, tmp_path, {"timeframe": "1h", "momentum_lookback": 600}, "wrong system")
    assert daily.returncode == 2 and "AURA_TIMEFRAME=1h" in daily.stderr and "Traceback" not in daily.stderr
    assert live_version(nats_server) == 0
    # The operator of an hourly system (AURA_TIMEFRAME=1h, as its services run).  600 hourly bars: beyond the
    # daily range, valid on 1h; the keys left out keep their durations (x24).
    v1 = promoted(nats_server, tmp_path, {"timeframe": "1h", "momentum_lookback": 600}, "hourly system", **HOURLY_ENV)
    shown = show(nats_server)
    expected = {**msgspec.to_builtins(HOURLY.params), "momentum_lookback": 600}
    assert shown["version"] == v1 and shown["timeframe"] == "1h" and shown["record"] == {"timeframe": "1h"}
    assert shown["params"] == expected
    # What show printed, edited, goes back through set and keeps its timeframe.
    shown["params"]["top_k"] = 2
    proc = set_params(nats_server, tmp_path, shown, "fewer names", **HOURLY_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "top_k: 3 -> 2" in proc.stderr and "timeframe" not in proc.stderr
    again = show(nats_server)
    assert again["timeframe"] == "1h" and again["params"] == {**expected, "top_k": 2}
    # No timeframe in the file: the live version's (1h), so a bare knob does not relabel the document.
    promoted(nats_server, tmp_path, {"stop_loss": 0.1}, "tighter stop", **HOURLY_ENV)
    latest = show(nats_server)
    assert latest["timeframe"] == "1h"
    # A 1h system's tracker takes the promoted document up (nothing was promoted since that show).
    params, version, _ = asyncio.run(tracked(nats_server, "signal", "1h"))
    assert version == latest["version"] and params.momentum_lookback == 600
    # Rollback keeps the bars the old version was made for.
    back = aura(nats_server, "params", "rollback", str(v1), "--reason", "undo", **HOURLY_ENV)
    assert back.returncode == 0, back.stderr
    rolled = show(nats_server)
    assert rolled["timeframe"] == "1h" and rolled["params"] == expected
    # A timeframe that is not one, or 600 bars declared daily, are refused with one line and promote nothing.
    before = rolled["version"]
    for doc, named in (({"timeframe": "2x", "top_k": 2}, "2x"), ({"timeframe": "1d", "momentum_lookback": 600},
                                                                   "momentum_lookback")):
        proc = set_params(nats_server, tmp_path, doc, "bad", name="bad.json", **HOURLY_ENV)
        assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert live_version(nats_server) == before  # the newest stored version: nothing, valid or not, was added


def context(nats: NatsEndpoint, nc: Any, **env: str) -> ServiceContext:
    stop = asyncio.Event()
    stop.set()  # the service seeds, then its follow loop returns at once
    return ServiceContext(name="optimizer", settings=nats.settings(**env), logger=logging.getLogger("aura.optimizer"),
                          nc=nc, js=nc.jetstream(), health=HealthState(service="optimizer"), stop=stop)


async def run_optimizer(nats: NatsEndpoint, **env: str) -> tuple[StrategyParams, int, ParamsDocument | None]:
    from services.optimizer.service import run

    nc = await nats.connect("optimizer")
    try:
        await run(context(nats, nc, **env))
        trusted = trusted_keys(nats.settings().keys, "optimizer", PARAMS_SIGNERS)
        return await read_version(nc.jetstream(), trusted)
    finally:
        await close(nc)


def test_the_optimizer_seeds_scaled_defaults_on_an_hourly_system(nats_server: NatsEndpoint,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # A system switched from 1d to 1h: its daily version is refused, so nothing valid exists for 1h.
    daily = asyncio.run(put(nats_server, operator_doc(nats_server, StrategyParams(top_k=2))))
    params, version, doc = asyncio.run(run_optimizer(nats_server, AURA_TIMEFRAME="1h"))
    assert version == daily + 1 and doc is not None
    assert params == HOURLY.params and doc.record == {"timeframe": "1h"} and doc.promoted_by == "optimizer"
    assert "1h" in doc.reason
    lines = {getattr(r, "tag", None): r.getMessage() for r in caplog.records}
    assert "momentum_lookback 30->720" in lines["TIMEFRAME"] and "min_quote_volume" in lines["TIMEFRAME"]
    # Signal and risk on 1h run it.
    for principal in ("signal", "risk"):
        assert asyncio.run(tracked(nats_server, principal, "1h"))[:2] == (HOURLY.params, version)
    # Started again: a valid 1h version exists, nothing more is seeded.
    assert asyncio.run(run_optimizer(nats_server, AURA_TIMEFRAME="1h"))[1] == version


def test_an_hourly_optimizer_winner_is_promoted_for_hourly_bars(nats_server: NatsEndpoint) -> None:
    """promote_winner signs the run's timeframe into the record (beside the gate's), validated with its ranges."""
    from services.optimizer.promote import promote_winner

    winner = msgspec.structs.replace(HOURLY.params, momentum_lookback=2000)  # beyond the daily range

    async def go() -> int:
        nc = await nats_server.connect("optimizer")
        keys = nats_server.settings().keys
        try:
            return await promote_winner(nc.jetstream(), signing_key(keys, "optimizer"),
                                        trusted_keys(keys, "optimizer", PARAMS_SIGNERS), winner,
                                        {"report_sha256": "cd" * 32}, "test winner", 0, timeframe="1h",
                                        max_loss_bound=0.5, snapshot_bars=3000)
        finally:
            await close(nc)

    version = asyncio.run(go())
    assert asyncio.run(tracked(nats_server, "signal", "1h"))[:2] == (winner, version)
    params, in_force, tracker = asyncio.run(tracked(nats_server, "risk", "1d"))
    assert params == StrategyParams()  # nothing valid for 1d: the daily defaults
    assert in_force == 0 and version in tracker.refused


def test_a_daily_winner_is_not_written_onto_an_hourly_system(nats_server: NatsEndpoint) -> None:
    """The version in force says the system trades 1h bars: a 1d run's winner is refused before it is written,
    rather than written and then refused by signal and risk."""
    from services.optimizer.promote import PromotionRefused, live_incumbent, promote_winner

    async def go() -> tuple[int, int]:
        nc = await nats_server.connect("optimizer")
        keys = nats_server.settings().keys
        trusted = trusted_keys(keys, "optimizer", PARAMS_SIGNERS)
        try:
            # Nothing promoted yet: an hourly run is judged against the defaults at the same durations in hours.
            assert await live_incumbent(nc.jetstream(), trusted, "1h") == (HOURLY.params, 0)
            hourly = await promote_winner(nc.jetstream(), signing_key(keys, "optimizer"), trusted, HOURLY.params,
                                          {}, "hourly in force", 0, timeframe="1h", max_loss_bound=0.5,
                                          snapshot_bars=3000)
            # A daily run is refused before its search (the incumbent would be counted in other bars) ...
            with pytest.raises(PromotionRefused, match=r"version \(1\) counts 1h bars"):
                await live_incumbent(nc.jetstream(), trusted, "1d")
            # ... and its winner before it is written.
            with pytest.raises(PromotionRefused, match=r"version \(1\) counts 1h bars"):
                await promote_winner(nc.jetstream(), signing_key(keys, "optimizer"), trusted, StrategyParams(), {},
                                     "a daily winner", hourly, timeframe="1d", max_loss_bound=0.5,
                                     snapshot_bars=400)
            return hourly, (await live_incumbent(nc.jetstream(), trusted, "1h"))[1]
        finally:
            await close(nc)

    hourly, in_force = asyncio.run(go())
    assert in_force == hourly  # nothing was written after the hourly version


def test_the_daily_seed_is_unchanged(nats_server: NatsEndpoint) -> None:
    params, version, doc = asyncio.run(run_optimizer(nats_server))
    assert version == 1 and doc is not None and params == StrategyParams()
    assert doc.record == {} and doc.reason == "seed: the shipped defaults" and document_timeframe(doc) == "1d"

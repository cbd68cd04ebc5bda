"""Live decides on ingest's window of ``snapshot_bars`` bars, the backtest on the whole history: they agree only
when the window holds every bar a decision reads (aura/strategy/params.history_bars).

Found by an audit: the window was 400 bars on every timeframe while the shipped defaults scaled to 4h and 1h look
back 600 and 2,400 bars (an hourly system held no coin at all while its backtest traded), and valid daily
parameters (10 votes 30 bars apart over a 365-bar momentum) need 636.  The default window now follows the
timeframe, and signal refuses to trade on a window shorter than the parameters in force need (``[WINDOW]``)."""

from __future__ import annotations

import asyncio

import pytest

from aura.strategy.params import StrategyParams, history_bars
from aura.strategy.signal import compute_targets
from services.ingest.replay import load_history, replay_step
from services.signal.service import short_window
from shared.bus import publish
from shared.candles import digest, encode_panel
from shared.config import default_snapshot_bars, load_settings
from shared.contracts import CycleAborted, DataReady, TargetPortfolio, decode
from shared.live_params import default_params
from shared.objects import candle_writer
from tests.bus_helpers import Capture, replay_snapshot, role_connections, running, stream_messages, until
from tests.conftest import NatsEndpoint, shared_data_path

pytestmark = pytest.mark.integration
LONG_VOTES = StrategyParams(vote_offsets=10, vote_step=30, momentum_long_lookback=365)  # valid; reads 636 bars


def differing_bars(timeframe: str, params: StrategyParams, window: int, bars_back: int) -> list[int]:
    """The newest ``bars_back`` decision bars where the window's decision differs from the whole history's."""
    history = load_history(shared_data_path(), timeframe)
    out, live_state, back_state = [], None, None
    last = len(history.timestamps) - 1
    for t in range(last - bars_back, last + 1):
        step = replay_step(history, t, window, timeframe)
        if step.snapshot is None:
            continue
        live, live_state = compute_targets(step.snapshot, params, live_state)
        back, back_state = compute_targets(history.upto(t), params, back_state)
        if live.weights != back.weights or live.regime != back.regime:
            out.append(t)
    return out


def test_the_default_window_of_each_timeframe_holds_what_its_defaults_read() -> None:
    for timeframe in ("1d", "4h", "1h"):
        window = load_settings({"AURA_TIMEFRAME": timeframe}, places_orders=False).snapshot_bars
        assert window == default_snapshot_bars(timeframe) >= history_bars(default_params(timeframe)), timeframe
        assert short_window(window, default_params(timeframe), 0) == ""
    assert load_settings({"AURA_TIMEFRAME": "1h", "AURA_SNAPSHOT_BARS": "500"}, places_orders=False).snapshot_bars \
        == 500  # an operator's setting stands (signal then says what it lacks)


def test_a_window_of_history_bars_decides_as_the_backtest_and_a_shorter_one_does_not() -> None:
    needed = history_bars(LONG_VOTES)
    assert needed == 636
    assert differing_bars("1d", LONG_VOTES, needed, 30) == []
    assert differing_bars("1d", LONG_VOTES, 400, 30), "the old 400-bar window decided as the backtest"
    why = short_window(400, LONG_VOTES, 7)
    assert "parameters version 7 read 636 bars" in why and "this snapshot holds 400" in why
    # The regime's SMA and the liquidity window are read at the decision bar only, not at every vote snapshot.
    long_regime = StrategyParams(vote_offsets=10, vote_step=30, regime_sma=365)
    assert history_bars(long_regime) == 365
    assert differing_bars("1d", long_regime, 365, 30) == []
    assert differing_bars("1d", long_regime, 335, 30), "30 bars fewer decided as the backtest"


def test_the_4h_defaults_decide_as_the_backtest_on_the_default_window() -> None:
    window = default_snapshot_bars("4h")
    assert differing_bars("4h", default_params("4h"), window, 20) == []
    assert differing_bars("4h", default_params("4h"), 400, 20), "400 bars of 4h decided as the backtest"


def test_signal_aborts_a_cycle_on_a_window_shorter_than_the_parameters_read(nats_server: NatsEndpoint) -> None:
    """The running service: a snapshot of 60 bars under the shipped defaults (they read 100): the cycle ends aborted
    by signal with the reason, logged [WINDOW], readiness red; no target is published."""
    settings = nats_server.settings()  # signal's own setting is left at its default: the snapshot says
    capture = Capture()
    cycle_id, panel, markets = replay_snapshot(700, 60)
    ready = DataReady(cycle_id=cycle_id, timeframe="1d", as_of_ms=int(panel.timestamps[-1]),
                      digest=digest(encode_panel(panel)), symbols=list(panel.symbols), bars=len(panel.timestamps),
                      markets=markets)

    async def scenario() -> tuple[list[CycleAborted], tuple[bool, str]]:
        async with role_connections(settings, "ingest", "operator") as js, \
                running(settings, "executor", "signal", handler=capture) as ctxs:
            await (await candle_writer(js["ingest"])).put(ready.digest, encode_panel(panel))
            await publish(js["ingest"], ready, msg_id=f"ready-{cycle_id}")

            async def aborted() -> list[CycleAborted]:
                raw = await stream_messages(js["operator"], f"{CycleAborted.SUBJECT}.signal")
                return [decode(r, CycleAborted) for r in raw]

            found = await until(aborted, "signal's abort")
            assert not await stream_messages(js["operator"], TargetPortfolio.SUBJECT)
            return found, ctxs["signal"].health.checks["window"]()

    aborts, window = asyncio.run(scenario())
    assert len(aborts) == 1 and aborts[0].cycle_id == cycle_id and "this snapshot holds 60" in aborts[0].reason
    assert window[0] is False and "read 100 bars" in window[1]
    assert any("AURA_SNAPSHOT_BARS >= 100" in f.get("reason", "") for f in capture.fields("WINDOW"))

"""Live vs backtest parity: the running signal and risk services over NATS sign byte-identical plans to the
ones the backtester's decision path produces, cycle after cycle.

The test plays ingest (it publishes each day's snapshot through the object store) and the executor (before
each cycle it publishes, signed with the executor's key, the portfolio the reference backtest held at that
bar), so both sides decide on the same portfolio sequence; each role on its own connection with that role's
credential.  It promotes the parameters as the operator (a signed document), and sets the kill-switch latch
to the reference's halted flag as risk writes it (a LatchDoc signed with risk's key, on a risk connection:
only risk may write it).  The backtester side computes on its full history; the services see only the
``snapshot_bars`` window ingest ships, so the comparison also proves that window loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import NotFoundError

from aura.backtest.engine import BacktestConfig
from aura.backtest.parity import backtest_states, decision_bars, live_cycles
from aura.natsd import free_port
from aura.strategy.params import StrategyParams
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import Panel
from services.ingest.replay import load_history, load_market_rules, replay_step
from services.risk.latch import LatchDoc, read_latch, write_latch
from services.risk.plan_body import build_plan_body
from services.signal.service import make_target
from shared.bus import publish
from shared.candles import digest, encode_panel
from shared.config import load_settings
from shared.contracts import (
    ApprovedPlan,
    DataReady,
    MarketRuleMsg,
    PortfolioSnapshot,
    canonical_bytes,
    decode,
    stream_of,
)
from shared.credentials import signing_key
from shared.live_params import promote, sign_document
from shared.objects import candle_writer
from shared.signing import sign_struct
from tests.bus_helpers import role_connections
from tests.conftest import NatsEndpoint

pytestmark = pytest.mark.integration
REPLAY = Path(__file__).resolve().parents[2] / "data" / "replay"
CYCLES = 30
FIRST_BAR = 700  # mid-2019 in the bundled replay: every symbol of the day is past its warm-up
# Live checks stops on the latest price, the backtester intrabar on high/low (a documented difference), so
# stops are off here; every other gate (kill-switch, cost-benefit, lot/notional rules) is on.
PARAMS = StrategyParams(stop_loss=0.0, take_profit=0.0)


def _columns(panel: Panel, symbols: tuple[str, ...]) -> Panel:
    idx = [panel.symbols.index(s) for s in symbols]
    return Panel(symbols, panel.timestamps, panel.open[:, idx], panel.high[:, idx], panel.low[:, idx],
                 panel.close[:, idx], panel.volume[:, idx])


@pytest.fixture()
def services(nats_binary: NatsEndpoint) -> Iterator[dict[str, str]]:
    # The bus's AURA_HOME: its keys are the ones the server admits and the services sign and verify with.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    env.update({"AURA_HOME": str(nats_binary.home), "AURA_NATS_URL": nats_binary.url, "AURA_RISK_TICK_S": "0",
                "AURA_SIGNAL_PORT": str(free_port()), "AURA_RISK_PORT": str(free_port())})
    procs = [subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, stderr=subprocess.DEVNULL)
             for name in ("signal", "risk")]
    try:
        deadline = time.monotonic() + 60
        for port in (env["AURA_SIGNAL_PORT"], env["AURA_RISK_PORT"]):
            while True:
                assert time.monotonic() < deadline, "services not ready"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        yield env
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)


class PlanFeed:
    """Every plan on the approved-plans subject, in stream order, read with the operator's direct gets: none
    can be missed or skipped, as with a subscription, and a second plan for one cycle shows up as the next."""

    def __init__(self, js: Any) -> None:
        self.js, self.seq = js, 1

    async def _fetch(self) -> ApprovedPlan | None:
        try:
            msg = await self.js.get_msg(stream_of(ApprovedPlan.SUBJECT), seq=self.seq, subject=ApprovedPlan.SUBJECT,
                                        direct=True, next=True)
        except NotFoundError:
            return None
        self.seq = int(msg.seq or 0) + 1
        return decode(msg.data or b"", ApprovedPlan)

    async def next(self, timeout: float) -> ApprovedPlan:
        deadline = time.monotonic() + timeout
        while (plan := await self._fetch()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no approved plan within {timeout}s")
            await asyncio.sleep(0.05)
        return plan

    async def after_last(self, settle_s: float = 1.0) -> list[ApprovedPlan]:
        await asyncio.sleep(settle_s)
        out = []
        while (plan := await self._fetch()) is not None:
            out.append(plan)
        return out


async def _drive(env: dict[str, str]) -> list[tuple[str, bytes, bytes]]:
    settings = load_settings(env)
    history = load_history(REPLAY, "1d")
    rules = load_market_rules(REPLAY / "markets.json")
    markets = [MarketRuleMsg(r.symbol, r.step_size, r.tick_size, r.min_qty, r.min_notional)
               for _, r in sorted(rules.items())]
    bar_ms = timeframe_ms("1d")
    bars = decision_bars(history, PARAMS, bar_ms, FIRST_BAR, FIRST_BAR + CYCLES - 1)
    cfg = BacktestConfig(bar_ms=bar_ms, start=FIRST_BAR - 60, end=FIRST_BAR + CYCLES)
    states = backtest_states(history, PARAMS, cfg, rules)
    cost_rate = settings.paper_fee_rate + settings.paper_slippage_bps / 10_000.0

    # The day's universe is the same on every cycle of the window (no listing inside it); the backtester side
    # sees that universe's full history, the services only the window ingest ships.
    universe = replay_step(history, bars[0], settings.snapshot_bars, "1d").snapshot.symbols  # type: ignore[union-attr]
    full = _columns(history, universe)
    expected_cycles = live_cycles(full, PARAMS, bar_ms, bars[0], bars[-1], [states[t] for t in bars], rules,
                                  cost_rate)

    executor_key = signing_key(settings.keys, "executor")
    risk_key = signing_key(settings.keys, "risk")  # the harness holds the keys; risk's bus right writes the latch
    compared: list[tuple[str, bytes, bytes]] = []
    signal_state = None
    last_plan_id = ""
    async with role_connections(settings, "operator", "ingest", "executor", "risk") as js:
        operator_key = signing_key(settings.keys, "operator")
        doc = sign_document(PARAMS, operator_key, promoted_by="operator:parity-test",
                            reason="live/backtest parity: stops off")
        version = await promote(js["operator"], doc, operator_key)
        store = await candle_writer(js["ingest"])
        plans = PlanFeed(js["operator"])  # every approved plan, in order (reading them is the operator's job)
        for t, expected_cycle in zip(bars, expected_cycles, strict=True):
            state = states[t]
            step = replay_step(history, t, settings.snapshot_bars, "1d")
            assert step.snapshot is not None and step.snapshot.symbols == universe
            basis = sign_struct(PortfolioSnapshot(snapshot_id=f"s-parity-{t}", cycle_id=f"prev-{t}",
                                                  plan_id=last_plan_id, status="executed", cash=state.cash,
                                                  holdings=dict(state.holdings),
                                                  entry_prices=dict(state.entry_prices), equity=0.0,
                                                  equity_history=list(state.equity_history)), executor_key)
            await publish(js["executor"], basis, msg_id=basis.snapshot_id)
            revision = (await read_latch(js["risk"], risk_key.public_key()))[1]
            await write_latch(js["risk"], LatchDoc(halted=state.halted), risk_key, revision)
            blob = encode_panel(step.snapshot)
            await store.put(digest(blob), blob)
            ready = DataReady(cycle_id=step.cycle_id, timeframe="1d", as_of_ms=step.as_of_ms, digest=digest(blob),
                              symbols=list(universe), bars=len(step.snapshot.timestamps),
                              markets=[m for m in markets if m.symbol in universe])
            await publish(js["ingest"], ready, msg_id=f"parity-{step.cycle_id}")
            live = await plans.next(timeout=60)
            assert live.plan.cycle_id == step.cycle_id
            # Backtester side: the target envelope from the signal stage's pure function on full history, and
            # the legs from the backtester's decision path (live_cycles -> compute_targets, risk_plan).
            target, signal_state = make_target(ready, full.upto(t), PARAMS, version, signal_state)
            assert signal_state == expected_cycle.signal_state
            expected = build_plan_body(target, basis, expected_cycle.outcome, version, target.prices)
            compared.append((step.cycle_id, canonical_bytes(live.plan), canonical_bytes(expected)))
            last_plan_id = live.plan.plan_id
        extra = await plans.after_last()
        assert not extra, f"plans nobody asked for: {[p.plan.cycle_id for p in extra]}"
    return compared


def test_live_services_sign_the_backtesters_plans(services: dict[str, str]) -> None:
    compared = asyncio.run(_drive(services))
    assert len(compared) == CYCLES
    traded = held = 0
    for cycle_id, live, expected in compared:
        assert live == expected, f"{cycle_id}: live plan differs from the backtester's"
        traded += b'"legs":[]' not in live
        held += b'"gate":"hold"' in live
    assert traded >= 3, "the window should contain real trades, or the comparison proves little"
    # The cost-benefit gate needs the forecasts that travel in the target message: a window where it never
    # holds could not show them missing.
    assert held >= 1, "the window should contain a cost-benefit hold"

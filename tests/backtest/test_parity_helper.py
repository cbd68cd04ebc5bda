"""The live-replay helper gives, per cycle, the legs the backtest acted on (given the same portfolio states)."""

from __future__ import annotations

import msgspec

from aura.backtest.engine import BacktestConfig, run_reference
from aura.backtest.parity import backtest_states, live_cycles
from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import risk_plan
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule, Panel
from services.ingest.replay import replay_step
from services.risk.plan_body import targets_of
from services.signal.service import make_target
from shared.contracts import DataReady, TargetPortfolio, decode, encode

DAY = timeframe_ms("1d")
# Stops off: live checks them on the latest price, the backtest intrabar, so only then must legs coincide.
PARAMS = StrategyParams(stop_loss=0.0, kill_switch_drawdown=1.0, rebalance_every=2)


def test_live_cycles_reproduce_the_backtest_legs(panel_1d: Panel, rules_1d: dict[str, MarketRule]) -> None:
    cfg = BacktestConfig(bar_ms=DAY, start=1400, end=1700)
    _, cycles = run_reference(panel_1d, PARAMS, cfg, rules_1d, record_cycles=True)
    decided = [c for c in cycles if c.targets is not None]
    assert len(decided) == 150  # every second day
    states = backtest_states(panel_1d, PARAMS, cfg, rules_1d)
    live = live_cycles(panel_1d, PARAMS, DAY, 1400, 1700, [states[c.bar] for c in decided], rules_1d, 0.001)
    assert [c.bar for c in live] == [c.bar for c in decided]
    for lc, bc in zip(live, decided, strict=True):
        assert lc.targets == bc.targets
        assert lc.legs == bc.outcome.legs and lc.outcome.gate == bc.outcome.gate
    assert sum(len(c.legs) for c in live) > 50


def test_targets_through_the_bus_message_hold_exactly_when_the_backtest_does(
        panel_1d: Panel, rules_1d: dict[str, MarketRule]) -> None:
    """The cost-benefit gate needs the return forecasts: signal's TargetPortfolio must carry them through the
    bus encoding into risk's Targets, or live would trade where the backtest holds."""
    strict = msgspec.structs.replace(PARAMS, cost_benefit_margin=5.0, cost_benefit_horizon=1)
    cfg = BacktestConfig(bar_ms=DAY, start=1400, end=1700)
    states = backtest_states(panel_1d, strict, cfg, rules_1d)
    bars = sorted(states)
    direct = live_cycles(panel_1d, strict, DAY, 1400, 1700, [states[b] for b in bars], rules_1d, 0.001)
    held = [c for c in direct if c.outcome.gate == "hold"]
    assert held, "the cost-benefit gate never held in this window; pick another"
    signal_state = None
    for cycle, bar in zip(direct, bars, strict=True):
        step = replay_step(panel_1d, bar, bar + 1, "1d")  # the snapshot ingest would ship: listed symbols only
        assert step.snapshot is not None, f"bar {bar}: {step.missing}"
        ready = DataReady(cycle_id=step.cycle_id, timeframe="1d", as_of_ms=step.as_of_ms, digest="d",
                          symbols=list(step.snapshot.symbols), bars=bar + 1, markets=[])
        message, signal_state = make_target(ready, step.snapshot, strict, 1, signal_state)
        received = decode(encode(message), TargetPortfolio)
        prices = {s: float(p) for s, p in zip(panel_1d.symbols, panel_1d.close[bar], strict=True) if p > 0}
        outcome = risk_plan(targets_of(received), states[bar], prices, rules_1d, strict, 0.001)
        assert (outcome.gate, outcome.legs) == (cycle.outcome.gate, cycle.outcome.legs), f"bar {bar}"

"""The live-replay helper gives, per cycle, the legs the backtest acted on (given the same portfolio states)."""

from __future__ import annotations

import msgspec
import numpy as np

from aura.backtest.engine import BacktestConfig, run_reference
from aura.backtest.parity import backtest_states, live_cycles
from aura.strategy.params import StrategyParams
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule, Panel

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


def test_contract_targets_expose_the_missing_forecast_gap(panel_1d: Panel, rules_1d: dict[str, MarketRule],
                                                          ) -> None:
    """Today's TargetPortfolio carries weights and regime only; without expected returns risk_plan skips the
    cost-benefit gain test.  This pins the gap so it is visible until the message carries them."""
    strict = msgspec.structs.replace(PARAMS, cost_benefit_margin=5.0, cost_benefit_horizon=1)
    cfg = BacktestConfig(bar_ms=DAY, start=1400, end=1700)
    states = backtest_states(panel_1d, strict, cfg, rules_1d)
    bars = sorted(states)
    full = live_cycles(panel_1d, strict, DAY, 1400, 1700, [states[b] for b in bars], rules_1d, 0.001)
    thin = live_cycles(panel_1d, strict, DAY, 1400, 1700, [states[b] for b in bars], rules_1d, 0.001,
                       contract_targets=True)
    held = [i for i, c in enumerate(full) if c.outcome.gate == "hold"]
    assert held, "the cost-benefit gate never held in this window; pick another"
    assert all(thin[i].outcome.gate == "pass" for i in held)
    assert any(thin[i].legs != full[i].legs for i in held)
    assert np.all([thin[i].legs == full[i].legs for i in range(len(full)) if i not in held])

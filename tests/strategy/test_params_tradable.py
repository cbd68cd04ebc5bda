"""What may be traded, promoted or offered by the optimizer's grids: a kill-switch that bounds the loss.

A switch that re-arms by itself (``kill_switch_cooldown > 0``) bounds each episode only, so a run of episodes
needs the hard cap since the last operator reset; a switch of 1.0 with the cap off never fires.  A backtest may
still study such a set (the engine tests do); the live parameter path and the grids refuse it."""

from __future__ import annotations

import pytest

from aura.optimize.grids import load_grids
from aura.strategy.params import StrategyParams, validate_params, validate_tradable
from shared.live_params import ParamsError, params_from_user


@pytest.mark.parametrize("changes", [{"kill_switch_cooldown": 30}, {"kill_switch_cooldown": 1, "kill_switch_cap": 1.0},
                                     {"kill_switch_drawdown": 1.0}])
def test_a_kill_switch_that_bounds_no_loss_is_not_tradable(changes: dict[str, float]) -> None:
    params = StrategyParams(**changes)  # type: ignore[arg-type]
    validate_params(params)  # in range, field by field: a backtest may study it
    with pytest.raises(ValueError, match="kill_switch"):
        validate_tradable(params)
    with pytest.raises(ParamsError, match="kill_switch"):
        params_from_user({"params": changes}, StrategyParams(), "1d")


@pytest.mark.parametrize("changes", [{}, {"kill_switch_cooldown": 30, "kill_switch_cap": 0.5},
                                     {"kill_switch_drawdown": 1.0, "kill_switch_cap": 0.4}])
def test_a_latched_switch_or_a_capped_one_is_tradable(changes: dict[str, float]) -> None:
    validate_tradable(StrategyParams(**changes))  # type: ignore[arg-type]


def test_the_shipped_risk_stage_offers_only_tradable_sets() -> None:
    grids = load_grids()
    base = grids.apply_base(StrategyParams())
    risk = next(s for s in grids.stages if s.name == "risk")
    offered = risk.expand(base)
    assert len(offered) == 132 and len(risk.refusals(base)) == 216 - 132
    for params in offered:
        validate_tradable(params)
    assert any(p.kill_switch_cooldown > 0 for p in offered) and any(p.kill_switch_drawdown == 1.0 for p in offered)

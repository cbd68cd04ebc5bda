"""The plan risk signs, built from a target, its basis and the gates' outcome: pure, so the same inputs always give
the same body and plan id (the determinism the backtest parity tests check)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aura.strategy.pipeline import RiskOutcome
from aura.strategy.types import MarketRule, Targets
from shared.contracts import MarketRuleMsg, PlanBody, PlanLeg, PortfolioSnapshot, TargetPortfolio, plan_id_for


def build_plan_body(target: TargetPortfolio, basis: PortfolioSnapshot, outcome: RiskOutcome, params_version: int,
                    prices: Mapping[str, float]) -> PlanBody:
    """Pure: the same target, basis, outcome and prices always give the same body and plan id.  ``prices``: the
    closes risk planned with (live: a held coin's checked against the venue's candle, and left out where the venue
    has none), never the target's as announced: the executor marks its book at them, so a close made up by a
    compromised ingest for a held coin the venue no longer quotes became an equity peak and latched the switch."""
    # Numbers as floats, as the executor decodes them: the id is the digest of the body, and it checks it on the
    # decoded plan, where an int quantity or price would come back a float with another digest.
    legs = [PlanLeg(i, leg.symbol, leg.side, float(leg.qty), float(leg.ref_price), leg.reason)
            for i, leg in enumerate(outcome.legs)]
    fields: dict[str, Any] = {
        "cycle_id": target.cycle_id, "as_of_ms": target.as_of_ms, "data_digest": target.data_digest,
        "target_id": target.target_id, "params_version": params_version, "params_digest": target.params_digest,
        "basis_snapshot_id": basis.snapshot_id, "gate": outcome.gate, "halted": outcome.halted,
        "legs": legs, "reasons": outcome.reasons, "prices": {sym: float(px) for sym, px in sorted(prices.items())},
    }
    return PlanBody(plan_id=plan_id_for(fields), **fields)


def targets_of(target: TargetPortfolio) -> Targets:
    """What risk_plan needs from the signal stage's message: weights, regime and the return forecasts that
    feed the cost-benefit gate (without them the gate's gain test would be skipped)."""
    return Targets(weights=dict(target.weights), regime=target.regime, expected_returns=dict(target.expected_returns))


def rules_of(markets: list[MarketRuleMsg]) -> dict[str, MarketRule]:
    return {m.symbol: MarketRule(m.symbol, m.step_size, m.tick_size, m.min_qty, m.min_notional) for m in markets}

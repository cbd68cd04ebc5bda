"""Live-path replay for live-vs-backtest parity tests.

``live_cycles`` produces, for each signal cycle of a bar range, exactly what the live services compute:
the signal service's ``compute_targets(panel.upto(t), params, state)`` (state threaded from cycle to cycle)
and the risk service's ``risk_plan(targets, portfolio_state, prices, rules, params, fee_rate)`` with
``prices`` = the decision bar's closes (what the signal service publishes), the decision bar's volumes for the
participation cap, and no intrabar high/low (live checks stops on the latest price).  The portfolio states come
from the caller (for example the sequence a reference backtest went through: ``backtest_states``), so a parity
test can feed the same sequence to the real services over NATS and compare the legs one by one.

Known difference to the backtester, by design: the backtester's stops are intrabar (the bar's low/high);
live checks the latest price only; the backtester caps a leg at the volume of the bar it fills in, live risk
at the decision bar's.  With ``stop_loss=take_profit=0`` and legs within both caps the per-cycle legs coincide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aura.backtest.engine import BacktestConfig, run_reference
from aura.strategy.capacity import DEFAULT_MAX_PARTICIPATION, decision_bar_volumes
from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, RiskOutcome, risk_plan
from aura.strategy.schedule import is_decision_bar
from aura.strategy.signal import compute_targets
from aura.strategy.state import SignalState
from aura.strategy.types import Leg, MarketRule, Panel, Targets


@dataclass(frozen=True)
class LiveCycle:
    bar: int  # panel row of the decision bar
    timestamp: int  # its open time (ms)
    targets: Targets
    signal_state: SignalState  # state after this cycle (what the signal service stores)
    outcome: RiskOutcome

    @property
    def legs(self) -> list[Leg]:
        return self.outcome.legs


def decision_bars(panel: Panel, params: StrategyParams, bar_ms: int, first: int, last: int) -> list[int]:
    return [t for t in range(first, last + 1)
            if is_decision_bar(int(panel.timestamps[t]), bar_ms, params.rebalance_every)]


def live_cycles(panel: Panel, params: StrategyParams, bar_ms: int, first: int, last: int,
                portfolio_states: Sequence[PortfolioState] | Callable[[int], PortfolioState],
                rules: dict[str, MarketRule], fee_rate: float, signal_state: SignalState | None = None,
                max_participation: float = DEFAULT_MAX_PARTICIPATION) -> list[LiveCycle]:
    """One LiveCycle per signal cycle in ``[first, last]``.

    ``portfolio_states``: one state per cycle in order, or a function of the decision bar.  Every leg is capped
    at ``max_participation`` of the decision bar's volume, as live risk caps it (``AURA_MAX_PARTICIPATION``).
    """
    bars = decision_bars(panel, params, bar_ms, first, last)
    if not callable(portfolio_states) and len(portfolio_states) != len(bars):
        raise ValueError(f"{len(portfolio_states)} portfolio states for {len(bars)} cycles")
    out: list[LiveCycle] = []
    state = signal_state
    for k, t in enumerate(bars):
        targets, state = compute_targets(panel.upto(t), params, state)
        portfolio = portfolio_states(t) if callable(portfolio_states) else portfolio_states[k]
        prices = {s: float(p) for s, p in zip(panel.symbols, panel.close[t], strict=True) if p > 0}
        outcome = risk_plan(targets, portfolio, prices, rules, params, fee_rate,
                            volumes=decision_bar_volumes(panel, t), max_participation=max_participation)
        out.append(LiveCycle(t, int(panel.timestamps[t]), targets, state, outcome))
    return out


def backtest_states(panel: Panel, params: StrategyParams, cfg: BacktestConfig, rules: dict[str, MarketRule],
                    ) -> dict[int, PortfolioState]:
    """The portfolio state the reference backtest held at each decision bar (bar -> state), to feed
    ``live_cycles`` or the live services."""
    _, cycles = run_reference(panel, params, cfg, rules, record_cycles=True)
    return {c.bar: c.state for c in cycles if c.targets is not None}

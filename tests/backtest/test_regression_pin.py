"""Regression gate (Jesse-style): a SHA-256 over every fill of fixed runs on the shared data.

Any change of behaviour (a gate, a rounding, an indicator, the fill model) changes a digest, so it can only
land deliberately.  To update after an *intended* change:

    .venv/bin/python -c "from tests.backtest.test_regression_pin import current_digests; print(current_digests())"

then paste the new values into PINS below and say in the commit message why the trades changed.
"""

from __future__ import annotations

from pathlib import Path

from aura.backtest.data import default_rules, load_panel
from aura.backtest.engine import BacktestConfig, run_reference, trades_digest
from aura.backtest.fast import Market, run_fast
from aura.strategy.params import StrategyParams
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule, Panel

RUNS = {
    "defaults": StrategyParams(),  # the shipped parameter set (the kill-switch latches in July 2018)
    "no_kill_switch": StrategyParams(kill_switch_drawdown=1.0),  # seven years of trading, ~2000 fills
}
PINS = {
    "defaults": "70df1900bf2f55da123bb618e084b85529e048dfc332120b7f0709635f212f2b",
    "no_kill_switch": "86e4000e883cb2b65a53469b9ee317e993ce7161d7f2366aaea65ad4871cd163",
}


def _digests(panel: Panel, rules: dict[str, MarketRule]) -> dict[str, tuple[str, str, int]]:
    cfg = BacktestConfig(bar_ms=timeframe_ms("1d"))
    market = Market.build(panel, rules)
    out = {}
    for name, params in RUNS.items():
        ref, _ = run_reference(panel, params, cfg, rules)
        out[name] = (trades_digest(ref), trades_digest(run_fast(market, params, cfg)), len(ref.trades))
    return out


def current_digests() -> dict[str, str]:
    from tests.conftest import shared_data_path

    panel = load_panel(Path(shared_data_path()), "1d")
    return {name: d[0] for name, d in _digests(panel, default_rules(panel).rules).items()}


def test_trades_of_the_pinned_runs_are_unchanged(panel_1d: Panel, rules_1d: dict[str, MarketRule]) -> None:
    got = _digests(panel_1d, rules_1d)
    for name, (ref_digest, fast_digest, n_trades) in got.items():
        assert n_trades > 50, name
        assert fast_digest == ref_digest, f"{name}: fast path diverged from the reference path"
        assert ref_digest == PINS[name], f"{name}: trades changed (see the module docstring to re-pin)"

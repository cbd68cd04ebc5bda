"""Shared real-data fixtures for the backtest tests (loaded once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura.backtest.data import default_rules, load_panel
from aura.backtest.fast import Market
from aura.strategy.types import MarketRule, Panel


@pytest.fixture(scope="session")
def panel_1d(shared_data_dir: Path) -> Panel:
    return load_panel(shared_data_dir, "1d")


@pytest.fixture(scope="session")
def rules_1d(panel_1d: Panel) -> dict[str, MarketRule]:
    return default_rules(panel_1d).rules


@pytest.fixture(scope="session")
def market_1d(panel_1d: Panel, rules_1d: dict[str, MarketRule]) -> Market:
    return Market.build(panel_1d, rules_1d)

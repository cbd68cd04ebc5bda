"""`aura rehearse` runs the system live, and live mode refuses to start without a per-order cap the operator set
(shared/config.py): the rehearsal rehearses the operator's cap when there is one, else caps at the capital."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from aura.rehearse import rehearsal_env
from shared.config import load_settings


def fake_venue() -> Any:
    """What rehearsal_env reads of the simulator: its addresses and its key."""
    return types.SimpleNamespace(base_url="http://127.0.0.1:1", coingecko_url="http://127.0.0.1:1/cg",
                                 sim=types.SimpleNamespace(config=types.SimpleNamespace(api_key="k", api_secret="s")))


def env_of(base: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return rehearsal_env(base, fake_venue(), tmp_path / "home", 6.0, ["BTC/USDT"], paper_cash_usdt=2500.0)


def test_without_an_operator_cap_the_rehearsal_caps_each_order_at_the_capital(tmp_path: Path) -> None:
    env = env_of({}, tmp_path)
    settings = load_settings(env)  # live, and accepted: the cap is set
    assert (settings.dry_run, settings.max_order_usdt) == (False, 2500.0)


def test_the_operators_cap_from_the_environment_is_rehearsed_as_set(tmp_path: Path) -> None:
    env = env_of({"AURA_MAX_ORDER_USDT": "300"}, tmp_path)
    assert env["AURA_MAX_ORDER_USDT"] == "300" and load_settings(env).max_order_usdt == 300.0


def test_the_operators_cap_from_the_config_file_is_rehearsed_as_set(tmp_path: Path) -> None:
    cfg = tmp_path / "aura.toml"
    cfg.write_text("[aura]\nmax_order_usdt = 400\n")
    env = env_of({"AURA_CONFIG": str(cfg)}, tmp_path)
    assert "AURA_MAX_ORDER_USDT" not in env  # the file's value is not overridden by the capital
    assert load_settings(env).max_order_usdt == 400.0

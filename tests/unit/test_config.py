import logging
from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings


def test_defaults_are_valid() -> None:
    s = load_settings({})
    assert s.dry_run is True
    assert [s.port_for(n) for n in ("ingest", "signal", "risk", "executor", "optimizer")] == list(range(8101, 8106))


@pytest.mark.parametrize(("env", "name"), [
    ({"AURA_EXECUTOR_PORT": "abc"}, "executor_port"),
    ({"AURA_RISK_PORT": "70000"}, "risk_port"),
    ({"AURA_DRY_RUN": "maybe"}, "dry_run"),
    ({"AURA_NATS_URL": "http://x"}, "nats_url"),
    ({"AURA_PAPER_FEE_RATE": "nan"}, "paper_fee_rate"),
    ({"AURA_TIMEFRAME": "2m"}, "timeframe"),
    ({"AURA_MAX_PRICE_DEVIATION": "0.9"}, "max_price_deviation"),
    ({"AURA_MAX_SPREAD": "0"}, "max_spread"),
    ({"AURA_MARKETS_REFRESH_S": "172800"}, "markets_refresh_s"),  # the venue's rules are read at least daily
    ({"AURA_MARKETS_REFRESH_S": "0"}, "markets_refresh_s"),
    ({"AURA_UNIVERSE_MAX": "0"}, "universe_max"),
    ({"AURA_UNIVERSE_MAX": "500"}, "universe_max"),  # a target for that many pairs would not fit a message
    ({"AURA_UNIVERSE_MAX": "2.5"}, "universe_max"),
    ({"AURA_SNAPSHOT_BARS": "20001"}, "snapshot_bars"),  # a panel that long could pass the readers' object bound
])
def test_bad_setting_is_named(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_toml_file_then_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "aura.toml"
    cfg.write_text('[aura]\nreplay_interval_s = 3.5\nmax_order_usdt = 250\n')
    s = load_settings({"AURA_CONFIG": str(cfg), "AURA_MAX_ORDER_USDT": "100"})
    assert s.replay_interval_s == 3.5
    assert s.max_order_usdt == 100.0


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "aura.toml"
    cfg.write_text('[aura]\nmax_order_usd = 250\n')
    with pytest.raises(ConfigError, match="max_order_usd"):
        load_settings({"AURA_CONFIG": str(cfg)})


def test_live_trading_on_replayed_history_is_a_configuration_error() -> None:
    """AURA_DRY_RUN=false with the default replay source once sent real orders built from 2020 candles."""
    with pytest.raises(ConfigError, match=r"dry_run .*AURA_DRY_RUN=false.* ingest_source .*AURA_INGEST_SOURCE=replay"):
        load_settings({"AURA_DRY_RUN": "false"})
    assert load_settings({"AURA_DRY_RUN": "false", "AURA_INGEST_SOURCE": "sync",
                          "AURA_MAX_ORDER_USDT": "100"}).dry_run is False


LIVE = {"AURA_DRY_RUN": "false", "AURA_INGEST_SOURCE": "sync"}


def test_live_trading_without_a_per_order_cap_is_refused_naming_it() -> None:
    """`AURA_DRY_RUN=false AURA_INGEST_SOURCE=sync aura up` once traded real money under the code's default cap of
    1,000,000 USDT an order: no cap at all."""
    with pytest.raises(ConfigError, match=r"setting max_order_usdt \(env AURA_MAX_ORDER_USDT\) must be set for live "
                                          r"trading.*no cap at all for real money") as refused:
        load_settings(LIVE)
    assert "AURA_CONFIG" in str(refused.value)  # says where else it may be set
    # Set to the default's own value, it is the operator's choice, not an oversight: accepted.
    assert load_settings({**LIVE, "AURA_MAX_ORDER_USDT": "1000000"}).max_order_usdt == 1_000_000.0
    # An empty variable is unset (shared/config.py ignores it), so still refused.
    with pytest.raises(ConfigError, match="max_order_usdt"):
        load_settings({**LIVE, "AURA_MAX_ORDER_USDT": ""})


def test_live_trading_on_a_venue_the_executors_order_safety_is_not_tested_on_is_refused() -> None:
    """On Gemini ccxt's fetch_order ignores a client order id, so an order whose answer was lost could be sent twice,
    and a buy goes out by quantity, so a thin book spent past the cap (found by an audit).  Paper trading there is
    fine; live trading is refused by the executor's settings (and `aura up`'s) before anything starts."""
    venue = {**LIVE, "AURA_MAX_ORDER_USDT": "250", "AURA_EXCHANGE_ID": "gemini"}
    with pytest.raises(ConfigError, match=r"setting exchange_id \(env AURA_EXCHANGE_ID\): live trading "
                                          r"\(AURA_DRY_RUN=false\) on 'gemini' is refused.*binance, binanceus"):
        load_settings(venue)
    assert load_settings(venue, places_orders=False).exchange_id == "gemini"  # the services that place no order
    assert load_settings({**venue, "AURA_DRY_RUN": "true"}).exchange_id == "gemini"  # paper trading on its data
    assert load_settings({**venue, "AURA_EXCHANGE_ID": "binanceus"}).exchange_id == "binanceus"


def test_the_live_broker_refuses_a_ccxt_that_cannot_buy_by_quote_amount(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked on the ccxt in use too: a version of it without quote-amount market buys on the venue is refused."""
    from services.executor import live
    from services.executor.brokers.ccxt_broker import CcxtBroker

    class NoCostBuys(CcxtBroker):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.exchange.has = {**self.exchange.has, "createMarketBuyOrderWithCost": False}

    monkeypatch.setenv("AURA_EXCHANGE_API_KEY", "k")
    monkeypatch.setenv("AURA_EXCHANGE_API_SECRET", "s")
    settings = load_settings({**LIVE, "AURA_MAX_ORDER_USDT": "250"})
    logger = logging.getLogger("aura.test.live")
    assert live.make_live_broker(settings, logger).exchange.has["createMarketBuyOrderWithCost"]
    monkeypatch.setattr(live, "CcxtBroker", NoCostBuys)
    with pytest.raises(ConfigError, match=r"ccxt cannot place a market buy by quote amount on 'binance'"):
        live.make_live_broker(settings, logger)


def test_live_trading_with_the_cap_in_the_environment_is_accepted() -> None:
    s = load_settings({**LIVE, "AURA_MAX_ORDER_USDT": "250"})
    assert (s.dry_run, s.max_order_usdt) == (False, 250.0)


def test_live_trading_with_the_cap_in_the_config_file_is_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "aura.toml"
    cfg.write_text('[aura]\nmax_order_usdt = 250\n')
    s = load_settings({**LIVE, "AURA_CONFIG": str(cfg)})
    assert (s.dry_run, s.max_order_usdt) == (False, 250.0)
    cfg.write_text('[aura]\ndry_run = false\ningest_source = "sync"\n')  # live from the file, no cap anywhere
    with pytest.raises(ConfigError, match="max_order_usdt"):
        load_settings({"AURA_CONFIG": str(cfg)})


def test_a_dry_run_needs_no_cap() -> None:
    assert load_settings({}).max_order_usdt == 1_000_000.0
    assert load_settings({"AURA_INGEST_SOURCE": "sync"}).dry_run is True
    assert load_settings({"AURA_DRY_RUN": "true", "AURA_INGEST_SOURCE": "sync"}).dry_run is True


def test_a_process_that_sends_no_order_runs_live_without_the_cap() -> None:
    """Every service but the executor, and the operator's CLI: compose gives the cap to the executor alone."""
    assert load_settings(LIVE, places_orders=False).dry_run is False


def test_aura_up_refuses_live_trading_without_the_cap_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aura.launcher import up

    assert up(env={**LIVE, "AURA_HOME": str(tmp_path)}) == 2
    assert "aura up: configuration error: setting max_order_usdt (env AURA_MAX_ORDER_USDT)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no bus, no keys, no process: nothing was started

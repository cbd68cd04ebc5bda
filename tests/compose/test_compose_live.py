"""docker-compose.live.yml layered over docker-compose.yml, checked by the real Compose v2 parser.

What the layered file gives each service is then read the way the service reads it (``shared.config.
load_settings`` on the resolved environment), so "live" means what the code will do, not what a string says.
No container engine is needed: ``docker-compose config`` only parses, merges, interpolates and validates.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from services.executor.secrets import CREDENTIAL_ENV
from services.ingest.sync_config import IngestConfig
from shared.config import ConfigError, Settings, load_settings
from tests.compose.compose_cli import COMPOSE_FILE, LIVE_COMPOSE_FILE, REPO_ROOT, SERVICES, clean_env, run_compose
from tests.compose.settings_readers import settings_read_by

LAYERED = (COMPOSE_FILE, LIVE_COMPOSE_FILE)
EXECUTOR_USER = "10014:10001"
SECRET_TARGET = "/run/secrets/exchange"
# Settings that have no default in the live file: compose refuses to start without them.
REQUIRED = ("AURA_MAX_ORDER_USDT", "AURA_PAPER_CASH_USDT", "AURA_EXCHANGE_SECRETS_FILE_HOST")
# Exported by the caller but never to reach any container: keys travel only in the secret file.
KEY_SENTINELS = {"AURA_EXCHANGE_API_KEY": "sentinel-live-key-9f1c",
                 "AURA_EXCHANGE_API_SECRET": "sentinel-live-sec-77ab"}

# The mode: every process, and the operator's CLI (`aura params set` judges a document by the system's bars).
MODE = frozenset({*SERVICES, "operator"})
VENUE = frozenset({"risk", "executor"})
# Each live setting, a distinct realistic value, and exactly the services that read it.
LIVE_SETTINGS: dict[str, tuple[str, frozenset[str]]] = {
    # Every process validates dry-run against the source at start; all must agree on the bar size.
    "AURA_DRY_RUN": ("false", MODE),
    "AURA_INGEST_SOURCE": ("sync", MODE),
    "AURA_TIMEFRAME": ("4h", MODE),
    # The venue: ingest keys its cache and tail provider by the exchange id; risk reads public tickers and the
    # exchange's clock (services/risk/prices.py); the executor trades.
    "AURA_EXCHANGE_ID": ("binance", frozenset({"ingest", "risk", "executor"})),
    "AURA_TESTNET": ("false", VENUE),
    "AURA_EXCHANGE_API_URL": ("http://venue.test:9009", VENUE),
    "AURA_EXCHANGE_TESTNET_URL": ("http://testnet.test:9010", VENUE),
    # A plan's age both risk and the executor refuse beyond; what a plan may spend, the executor's alone.
    "AURA_PLAN_GRACE_S": ("120", VENUE),
    "AURA_MAX_ORDER_USDT": ("250", frozenset({"executor"})),
    "AURA_MAX_PRICE_DEVIATION": ("0.015", frozenset({"executor"})),
    "AURA_MAX_SPREAD": ("0.004", frozenset({"executor"})),
    # Dust: the executor's book comparison, ingest's universe and risk's tick all judge it alike.
    "AURA_RECONCILE_DUST_USDT": ("3", frozenset({"ingest", "risk", "executor"})),
    "AURA_PAPER_CASH_USDT": ("5000", frozenset({"executor"})),
    # Trading costs: risk's cost gate (slippage live and dry; the paper fee in a dry run) and the paper broker.
    "AURA_PAPER_FEE_RATE": ("0.00075", VENUE),
    "AURA_PAPER_SLIPPAGE_BPS": ("8", VENUE),
    # How often the venue's market rules and universe (ingest), its taker fee (risk) and the rules orders are
    # placed by (executor) are read again.
    "AURA_MARKETS_REFRESH_S": ("43200", frozenset({"ingest", "risk", "executor"})),
    "AURA_UNIVERSE_MAX": ("25", frozenset({"ingest"})),
    # The most of a market's volume in the decision bar one leg may be: risk cuts the plan's legs to it.
    "AURA_MAX_PARTICIPATION": ("0.05", frozenset({"risk"})),
    # Ingest's sync source and provider chain (shared/config.py and services/ingest/sync_config.py).
    "AURA_INGEST_POLL_S": ("45", frozenset({"ingest"})),
    "AURA_SYMBOLS": ("BTC/USDT,ETH/USDT", frozenset({"ingest"})),
    "AURA_BINANCE_ARCHIVE_URL": ("http://archive.test:9101", frozenset({"ingest"})),
    "AURA_BINANCE_API_URL": ("http://api.test:9102", frozenset({"ingest"})),
    "AURA_COINGECKO_URL": ("http://coingecko.test:9103", frozenset({"ingest"})),
    "AURA_INGEST_PROVIDERS": ("archive,tail", frozenset({"ingest"})),
    "AURA_INGEST_TAIL_EXCHANGES": ("kraken", frozenset({"ingest"})),
    "AURA_INGEST_LOOKBACK_BARS": ("12", frozenset({"ingest"})),
    "AURA_INGEST_CCXT_RATE_LIMIT_MS": ("250", frozenset({"ingest"})),
    "AURA_COINGECKO_MIN_INTERVAL_S": ("3.5", frozenset({"ingest"})),
}
# Read by ingest's provider chain from the environment (services/ingest/sync_config.py IngestConfig.from_env).
INGEST_CHAIN = frozenset({"AURA_BINANCE_ARCHIVE_URL", "AURA_BINANCE_API_URL", "AURA_COINGECKO_URL",
                          "AURA_INGEST_PROVIDERS", "AURA_INGEST_TAIL_EXCHANGES", "AURA_INGEST_LOOKBACK_BARS",
                          "AURA_INGEST_CCXT_RATE_LIMIT_MS", "AURA_COINGECKO_MIN_INTERVAL_S"})
# Not from the caller: the fixed path inside the executor where the secret appears.
FIXED = {"AURA_EXCHANGE_SECRETS_FILE": (SECRET_TARGET, frozenset({"executor"}))}
# Settings some service's code reads (tests/compose/settings_readers.py) that the live file leaves at the code's
# default on purpose: each means the same, with the same default, in a dry run, and the base file does not pass it
# either.  Any other setting a service reads must reach it live; a new one fails the test until it is passed or
# listed here with its reason.
NOT_LIVE = {
    "AURA_NATS_TLS_CA_FILE": "TLS for a bus spanning machines; compose's bus is on the services' own network",
    "AURA_REPLAY_START": "the replay source only",
    "AURA_SNAPSHOT_BARS": "bars per snapshot: the strategy's history, the same for both sources",
    "AURA_CYCLE_TIMEOUT_S": "pacing between services, the same for both sources",
    "AURA_RISK_TICK_S": "the stop-loss tick's interval, the same in a dry run",
    "AURA_CONSOLE_REFRESH_S": "the dashboard's refresh",
}


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty --env-file, so a developer's local .env never leaks into these checks."""
    path = tmp_path_factory.mktemp("compose-live-env") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The operator's keys file, in the format services/executor/secrets.py reads."""
    path = tmp_path_factory.mktemp("compose-live-secrets") / "exchange.toml"
    path.write_text('api_key = "sentinel-file-key-31d0"\napi_secret = "sentinel-file-sec-c4e2"\n')
    path.chmod(0o400)
    return path


def live_env(secrets_file: Path, **changes: str | None) -> dict[str, str]:
    """A realistic live environment: every live setting, the secrets file, and stray keys in the shell."""
    env = {name: value for name, (value, _) in LIVE_SETTINGS.items()}
    env |= KEY_SENTINELS | {"AURA_EXCHANGE_SECRETS_FILE_HOST": str(secrets_file)}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def compose_config(files: tuple[Path, ...], env_file: Path, extra_env: dict[str, str],
                   *args: str) -> dict[str, Any]:
    # With the "tools" profile, so the operator's CLI service is checked too.
    result = run_compose(["--profile", "tools", "config", "--format", "json", *args], compose_file=files,
                         env=clean_env(extra_env), env_file=env_file)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def live(empty_env_file: Path, secrets_file: Path) -> dict[str, Any]:
    return compose_config(LAYERED, empty_env_file, live_env(secrets_file))


@pytest.fixture(scope="module")
def base(empty_env_file: Path) -> dict[str, Any]:
    return compose_config((COMPOSE_FILE,), empty_env_file, {})


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # `config --no-interpolate` prints merged environments as KEY=VALUE lists
        env = dict(entry.partition("=")[::2] for entry in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def settings_of(services: dict[str, Any], name: str) -> Settings:
    """What service ``name``'s process will run with: its container environment, read by the real loader as
    shared.service.run_service reads it (only the executor, which sends orders, needs the per-order cap live)."""
    return load_settings(environment(services[name]), places_orders=name == "executor")


# --- the real parser ----------------------------------------------------------------------------------------


def test_the_layered_file_is_valid_without_warnings(empty_env_file: Path, secrets_file: Path) -> None:
    result = run_compose(["config", "-q"], compose_file=LAYERED, env=clean_env(live_env(secrets_file)),
                         env_file=empty_env_file)
    assert result.returncode == 0, f"docker-compose config -q rejected the layered files:\n{result.stderr}"
    assert "warn" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize(
    ("breakage", "original", "replacement", "expected_error"),
    [
        ("undefined secret", "- source: exchange", "- source: exchang", "refers to undefined secret exchang"),
        ("unknown key in the secret mount", "        target: /run", "        targett: /run",
         "'targett' not allowed"),
        ("unknown key in the secret definition", "    file: ${", "    fil: ${", "'fil' not allowed"),
        ("bad YAML", "services:\n", "services:\n  - [unbalanced\n", "yaml:"),
    ],
)
def test_a_broken_override_is_rejected(tmp_path: Path, empty_env_file: Path, secrets_file: Path, breakage: str,
                                       original: str, replacement: str, expected_error: str) -> None:
    text = LIVE_COMPOSE_FILE.read_text()
    assert original in text, f"test fixture out of date: {original!r} not in {LIVE_COMPOSE_FILE.name}"
    broken = tmp_path / LIVE_COMPOSE_FILE.name
    broken.write_text(text.replace(original, replacement, 1))
    result = run_compose(["config", "-q"], compose_file=(COMPOSE_FILE, broken),
                         env=clean_env(live_env(secrets_file)), env_file=empty_env_file)
    assert result.returncode != 0, f"{breakage}: the broken override was accepted"
    assert expected_error in result.stderr, f"{breakage}: rejected for another reason:\n{result.stderr}"


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_setting_without_a_safe_default_must_be_given(empty_env_file: Path, secrets_file: Path, name: str,
                                                        value: str | None) -> None:
    result = run_compose(["config", "-q"], compose_file=LAYERED, env=clean_env(live_env(secrets_file, **{name: value})),
                         env_file=empty_env_file)
    assert result.returncode != 0, f"compose accepted the live file without {name}"
    assert f"required variable {name} is missing a value" in result.stderr, result.stderr


# --- every service is live, with exactly the settings it reads ----------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_live_as_its_code_reads_it(live: dict[str, Any], name: str) -> None:
    settings = settings_of(live["services"], name)  # a ConfigError here: that service would refuse to start
    assert settings.dry_run is False
    assert settings.ingest_source == "sync"
    assert settings.timeframe == "4h"
    if name in VENUE:
        assert (settings.exchange_id, settings.testnet, settings.exchange_api_url,
                settings.exchange_testnet_url) == ("binance", False, "http://venue.test:9009", "http://testnet.test:9010")
        assert settings.plan_grace_s == 120.0
    if name in VENUE:
        assert (settings.paper_fee_rate, settings.paper_slippage_bps) == (0.00075, 8.0)
    if name == "executor":
        assert settings.paper_cash_usdt == 5000.0
        assert (settings.max_order_usdt, settings.max_price_deviation, settings.reconcile_dust_usdt) == (
            250.0, 0.015, 3.0)
    if name in ("ingest", "risk", "executor"):
        assert settings.markets_refresh_s == 43200.0
    if name == "ingest":
        assert (settings.ingest_poll_s, settings.symbols, settings.universe_max) == (45.0, "BTC/USDT,ETH/USDT", 25)


@pytest.mark.parametrize("var", [*LIVE_SETTINGS, *FIXED])
def test_each_live_setting_reaches_exactly_the_services_that_read_it(live: dict[str, Any], var: str) -> None:
    value, readers = (LIVE_SETTINGS | FIXED)[var]
    holders = {name for name, svc in live["services"].items() if var in environment(svc)}
    assert holders == readers, f"{var} reaches {sorted(holders)}, should reach {sorted(readers)}"
    for name in readers:
        assert environment(live["services"][name])[var] == value, f"{name}: {var}"


def test_the_override_adds_nothing_but_the_listed_settings(live: dict[str, Any], base: dict[str, Any]) -> None:
    """A setting added to the live file must be added to LIVE_SETTINGS with its readers (and so be tested)."""
    for name, svc in live["services"].items():
        added = set(environment(svc)) - set(environment(base["services"][name]))
        expected = {var for var, (_, readers) in (LIVE_SETTINGS | FIXED).items() if name in readers}
        assert added == expected - set(environment(base["services"][name])), name


@pytest.mark.parametrize("name", SERVICES)
def test_no_service_is_given_a_live_setting_its_code_does_not_read(live: dict[str, Any], name: str) -> None:
    """Least privilege for settings too: a limit passed to a service that never reads it reads as a check it does
    not make (risk was once given the executor's spending limits)."""
    # The mode settings are checked against each other by every process at start (shared/config.py), and
    # ingest's provider chain is read from the environment by IngestConfig: neither is a field access the
    # derivation sees.
    given = {var for var in LIVE_SETTINGS if var in environment(live["services"][name])} - {
        "AURA_DRY_RUN", "AURA_INGEST_SOURCE", "AURA_TIMEFRAME"} - INGEST_CHAIN
    assert given <= settings_read_by(name), sorted(given - settings_read_by(name))


@pytest.mark.parametrize("name", SERVICES)
def test_every_setting_a_services_code_reads_reaches_it_live(live: dict[str, Any], name: str) -> None:
    """The other direction, derived from the code: a setting a service reads but the live file does not pass
    would silently run at its default live (AURA_EXCHANGE_TESTNET_URL did, in risk and the executor)."""
    env = environment(live["services"][name])
    missing = sorted(var for var in settings_read_by(name) - set(NOT_LIVE) if var not in env)
    assert not missing, f"{name} reads {missing} but the live file does not pass them"


def test_the_derived_readers_see_what_the_services_read() -> None:
    """The scan behind the test above finds the reads it must (else that test would pass on an empty scan), and
    every exemption is a setting some service reads and the live file does not pass."""
    assert {"AURA_EXCHANGE_TESTNET_URL", "AURA_MARKETS_REFRESH_S", "AURA_MAX_ORDER_USDT",
            "AURA_RECONCILE_DUST_USDT"} <= settings_read_by("executor")
    assert {"AURA_EXCHANGE_TESTNET_URL", "AURA_TESTNET", "AURA_RISK_TICK_S"} <= settings_read_by("risk")
    assert {"AURA_SYMBOLS", "AURA_UNIVERSE_MAX", "AURA_INGEST_SOURCE"} <= settings_read_by("ingest")
    assert "AURA_PAPER_CASH_USDT" not in settings_read_by("signal")
    read = set().union(*(settings_read_by(name) for name in SERVICES))
    assert set(NOT_LIVE) <= read, sorted(set(NOT_LIVE) - read)
    assert not set(NOT_LIVE) & set(LIVE_SETTINGS), "a setting the live file passes is listed as not live"


def test_ingest_reads_the_provider_chain_settings(live: dict[str, Any]) -> None:
    """Read by services/ingest/sync_config.py straight from the environment, not through Settings."""
    config = IngestConfig.from_env(environment(live["services"]["ingest"]))
    assert (config.archive_url, config.coingecko_url, dict(config.api_urls)) == (
        "http://archive.test:9101", "http://coingecko.test:9103", {"binance": "http://api.test:9102"})
    assert (config.providers, config.tail_exchanges) == (("archive", "tail"), ("kraken",))
    assert (config.lookback_bars, config.ccxt_rate_limit_ms, config.coingecko_min_interval_s) == (12, 250, 3.5)
    assert config.cache_root == Path(environment(live["services"]["ingest"])["AURA_HOME"]) / "cache"


def test_every_variable_the_override_sets_is_one_the_code_reads() -> None:
    """A misspelt name (AURA_PLAN_GRACE for AURA_PLAN_GRACE_S) would be passed and silently ignored."""
    settings = {f"AURA_{name.upper()}" for name in Settings.__struct_fields__}
    for var in [*LIVE_SETTINGS, *FIXED]:
        assert var in settings or var in INGEST_CHAIN or var in CREDENTIAL_ENV, f"nothing reads {var}"


def test_defaults_are_the_safe_ones(empty_env_file: Path, secrets_file: Path) -> None:
    """Only the required settings given: a shadow run (live data, paper broker, testnet), with every other
    setting at the service's own default, so the defaults live in one place (shared/config.py)."""
    minimal = {"AURA_MAX_ORDER_USDT": "250", "AURA_PAPER_CASH_USDT": "5000",
               "AURA_EXCHANGE_SECRETS_FILE_HOST": str(secrets_file)}
    services = compose_config(LAYERED, empty_env_file, minimal)["services"]
    defaults = Settings()
    for name in SERVICES:
        settings = settings_of(services, name)
        assert settings.dry_run is True, f"{name}: real orders without AURA_DRY_RUN=false"
        assert settings.ingest_source == "sync", name
        assert settings.timeframe == defaults.timeframe, name
        if name in VENUE:
            assert settings.testnet is True, f"{name}: mainnet without AURA_TESTNET=false"
            assert (settings.exchange_id, settings.exchange_api_url) == (defaults.exchange_id, "")
            assert (settings.max_price_deviation, settings.plan_grace_s, settings.reconcile_dust_usdt) == (
                defaults.max_price_deviation, defaults.plan_grace_s, defaults.reconcile_dust_usdt)
    assert settings_of(services, "ingest").symbols == ""  # ingest's own universe


def test_a_live_run_on_replayed_history_refuses_to_start(empty_env_file: Path, secrets_file: Path) -> None:
    services = compose_config(LAYERED, empty_env_file, live_env(secrets_file, AURA_INGEST_SOURCE="replay"))["services"]
    for name in SERVICES:
        with pytest.raises(ConfigError, match=r"AURA_DRY_RUN=false.*AURA_INGEST_SOURCE=replay"):
            settings_of(services, name)


def test_nothing_is_hard_coded(empty_env_file: Path) -> None:
    """Before interpolation every value the override adds is a reference to the caller's variable of the same
    name; the one literal is the secret's fixed path inside the executor."""
    raw = compose_config(LAYERED, empty_env_file, {}, "--no-interpolate")
    plain = compose_config((COMPOSE_FILE,), empty_env_file, {}, "--no-interpolate")
    for name in SERVICES:
        before = environment(plain["services"][name])
        for var, value in environment(raw["services"][name]).items():
            if var in before and value == before[var]:
                continue  # the base file's own (tests/compose/test_compose_static.py)
            if var in FIXED:
                assert value == FIXED[var][0], f"{name}: {var}={value}"
            else:
                assert re.fullmatch(r"\$\{" + var + r"(:-[^}]*|:\?[^}]+)?\}", value), f"{name}: {var}={value}"
    assert re.search(r"\$\{AURA_EXCHANGE_SECRETS_FILE_HOST:\?[^}]+\}$", raw["secrets"]["exchange"]["file"])


# --- the exchange keys: a secret file, for the executor only ------------------------------------------------


def test_the_keys_file_is_a_secret_of_the_executor_alone(live: dict[str, Any], secrets_file: Path) -> None:
    assert live["secrets"] == {"exchange": {"name": "aura_exchange", "file": str(secrets_file)}}
    holders = {name for name, svc in live["services"].items() if svc.get("secrets")}
    assert holders == {"executor"}
    executor = live["services"]["executor"]
    (mount,) = executor["secrets"]
    assert (mount["source"], mount["target"]) == ("exchange", SECRET_TARGET)
    assert environment(executor)["AURA_EXCHANGE_SECRETS_FILE"] == SECRET_TARGET
    # Compose v2 bind-mounts a file secret as it is on the host and ignores uid/gid/mode (warning at `up`),
    # so none are given: the host file itself is made readable by the executor's user, as the README says.
    assert not {"uid", "gid", "mode"} & set(mount), mount
    assert executor["user"] == EXECUTOR_USER
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"chown {EXECUTOR_USER}" in readme and "docker-compose.live.yml" in readme


def test_a_relative_keys_file_is_found_from_the_repo(empty_env_file: Path, secrets_file: Path) -> None:
    env = live_env(secrets_file, AURA_EXCHANGE_SECRETS_FILE_HOST="secrets/exchange.toml")
    config = compose_config(LAYERED, empty_env_file, env)
    assert config["secrets"]["exchange"]["file"] == str(REPO_ROOT / "secrets" / "exchange.toml")


def test_no_key_value_or_key_variable_reaches_any_container(live: dict[str, Any], secrets_file: Path) -> None:
    blob = json.dumps(live)
    # Keys exported in the caller's shell go nowhere; neither do the variable names that would carry them.
    for var, value in KEY_SENTINELS.items():
        assert value not in blob and var not in blob, var
    # The keys file's content is never read into the configuration, only its path into the secret definition.
    for value in ("sentinel-file-key-31d0", "sentinel-file-sec-c4e2"):
        assert value not in blob
    for name, svc in live["services"].items():
        assert str(secrets_file) not in json.dumps(svc), f"{name} sees the host path of the keys file"
        credential_vars = {var for var in environment(svc) if var in CREDENTIAL_ENV or "EXCHANGE_SECRET" in var}
        assert credential_vars == ({"AURA_EXCHANGE_SECRETS_FILE"} if name == "executor" else set()), name


# --- what the override leaves alone -------------------------------------------------------------------------


def test_the_override_changes_only_settings_secrets_and_the_ingest_cache(live: dict[str, Any],
                                                                       base: dict[str, Any]) -> None:
    """Users, key volumes, ports, healthchecks, networks stay exactly as the base file has them."""
    assert live["services"].keys() == base["services"].keys()
    for name, svc in live["services"].items():
        strip = ("environment", "secrets", "volumes")
        assert {k: v for k, v in svc.items() if k not in strip} == {
            k: v for k, v in base["services"][name].items() if k not in strip}, name
        extra = [m for m in svc.get("volumes", []) if m not in base["services"][name].get("volumes", [])]
        assert [m["source"] for m in extra] == (["ingest-cache"] if name == "ingest" else []), name
        missing = [m for m in base["services"][name].get("volumes", []) if m not in svc.get("volumes", [])]
        assert not missing, name
    (cache,) = [m for m in live["services"]["ingest"]["volumes"] if m["source"] == "ingest-cache"]
    home = environment(live["services"]["ingest"])["AURA_HOME"]
    assert cache["target"] == f"{home}/cache" and cache["type"] == "volume" and not cache.get("read_only", False)


# --- the base file alone never trades -----------------------------------------------------------------------


def test_the_base_file_alone_is_a_dry_run(base: dict[str, Any]) -> None:
    assert "secrets" not in base
    for name in SERVICES:
        settings = settings_of(base["services"], name)
        assert (settings.dry_run, settings.ingest_source) == (True, "replay"), name


def test_the_base_file_alone_never_trades_even_with_a_live_shell(empty_env_file: Path, secrets_file: Path) -> None:
    """The caller's live environment without the override: no keys, no secret, and no service that would send
    an order (the executor, the only one given AURA_DRY_RUN, refuses live mode on the replay at start)."""
    config = compose_config((COMPOSE_FILE,), empty_env_file, live_env(secrets_file))
    blob = json.dumps(config)
    assert "secrets" not in config and str(secrets_file) not in blob
    assert not [v for v in KEY_SENTINELS.values() if v in blob]
    for name in SERVICES:
        try:
            settings = settings_of(config["services"], name)
        except ConfigError as exc:
            assert name == "executor", f"{name}: {exc}"
            assert "AURA_DRY_RUN=false" in str(exc) and "AURA_INGEST_SOURCE=replay" in str(exc)
        else:
            assert settings.dry_run is True and settings.ingest_source == "replay", name

"""Typed configuration: defaults < TOML file (``AURA_CONFIG``) < environment (``AURA_*``).

Every setting has one name used everywhere: the TOML key ``nats_url`` is the environment variable
``AURA_NATS_URL``.  A bad value fails at start with :class:`ConfigError` naming the setting, never later
in the middle of a cycle.  Exchange credentials are deliberately *not* here: only the executor reads them
(see ``services.executor.secrets``).
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from aura.strategy.params import PARAMS_TIMEFRAME, StrategyParams, history_bars, rescale
from shared.credentials import KeyLayout
from shared.state_keys import INGEST_SOURCES, TIMEFRAMES

# Every process `aura up` and compose start: the five pipeline services and the read-only console.
SERVICE_NAMES = ("ingest", "signal", "risk", "executor", "optimizer", "console")
DEFAULT_HEALTH_PORTS = {"ingest": 8101, "signal": 8102, "risk": 8103, "executor": 8104, "optimizer": 8105,
                        "console": 8100}
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    home: str = "./var"
    # "" = the bus of the `aura up` running on this AURA_HOME (its run file), see shared.runfile.
    nats_url: str = ""
    # Optional TLS for a bus that spans machines. Clients verify the server against nats_tls_ca_file (and then
    # require it); `aura up`'s embedded server serves nats_tls_server_cert_file / _key_file. Empty = plain TCP,
    # right for loopback or a private network; NKey authentication never sends a secret either way.
    nats_tls_ca_file: str = ""
    nats_tls_server_cert_file: str = ""
    nats_tls_server_key_file: str = ""
    health_host: str = "127.0.0.1"
    ingest_port: int = 8101
    signal_port: int = 8102
    risk_port: int = 8103
    executor_port: int = 8104
    optimizer_port: int = 8105
    # An optimizer worker's health app (python -m services.optimizer.worker; not started by `aura up`).  Compose
    # runs each scaled worker in its own container on this port, unpublished; `aura optimize` gives each local
    # worker a free port.
    worker_port: int = 8106
    # The console: its web page, /readyz and /metrics on this port (services/console).
    console_port: int = 8100
    # Where the console finds the other services' /readyz: this host ("" = health_host, or 127.0.0.1 when that
    # is 0.0.0.0); "{service}" is replaced by the service's name (compose: each service is its own host).
    console_peer_host: str = ""
    console_refresh_s: float = 1.0  # how often the console re-reads the bus for the page
    # Alerts (services/console/notify.py): apprise URLs, comma-separated (tgram://TOKEN/CHAT, discord://...,
    # slack://..., mailto://..., json://host/path); empty = no alerts sent (the page still lists the events).
    # A URL can hold a bot token: it is never logged or shown.
    notify_urls: str = ""
    notify_down_after_s: float = 120.0  # a service down or not ready this long is alerted (and again when back)
    notify_dedup_s: float = 600.0  # the same alert again within this window is not sent again
    notify_rate_limit: int = 20  # at most this many alerts per notify_rate_window_s; the rest are summed up
    notify_rate_window_s: float = 600.0
    notify_summary_hour_utc: int = 0  # the daily summary goes out at this UTC hour; -1 = no daily summary
    timeframe: str = "1d"
    # Replay: where the bundled history lives, how fast cycles come, how much history each snapshot carries.
    replay_dir: str = str(REPO_ROOT / "data" / "replay")
    replay_interval_s: float = 1.0
    replay_start: str = ""
    snapshot_bars: int = 400  # unless set: the timeframe's (default_snapshot_bars)
    # Where cycles come from: "replay" (bundled history and its markets.json, the default) or "sync" (the
    # provider chain into the Parquet cache under $AURA_HOME/cache, polled every ingest_poll_s, with the venue's
    # own market rules; universe = symbols if set, else the venue's USDT pairs, see services/ingest/venue.py).
    ingest_source: str = "replay"
    ingest_poll_s: float = 60.0
    symbols: str = ""
    # Sync mode: the venue's market rules and the universe are read again at least this often (by the venue's
    # clock: a day of market time, also in an accelerated rehearsal); live risk re-reads the taker fee as often,
    # and the executor the rules it places orders by (also at once for a plan naming a pair they lack).
    markets_refresh_s: float = 86_400.0
    # Sync mode without symbols: the universe is at most this many of the venue's trading USDT pairs, largest
    # 24h quote volume first (held pairs that still trade stay in it until sold).  The bound keeps a target
    # message well under the streams' 64 KiB limit.
    universe_max: int = 40
    cycle_timeout_s: float = 30.0
    # Paper broker.  Risk's cost gate prices trades at paper_fee_rate + paper_slippage_bps in a dry run; live,
    # at the venue's taker fee + paper_slippage_bps (services/risk/costs.py).
    paper_cash_usdt: float = 10_000.0
    paper_fee_rate: float = 0.001
    paper_slippage_bps: float = 5.0
    # Execution safety.
    dry_run: bool = True
    exchange_id: str = "binance"
    exchange_api_url: str = ""  # override the exchange REST base (the simulator, a proxy); "" = the real one
    testnet: bool = False
    # With testnet on, the testnet's REST base ("" = ccxt's sandbox URLs; a simulator playing the testnet).
    # exchange_api_url never applies then: no address of the main venue is reached while testnet is on.
    exchange_testnet_url: str = ""
    # The most one order may spend (the executor caps each leg).  The default is no cap at all, so live mode
    # refuses to start unless the operator set it (load_settings, places_orders).
    max_order_usdt: float = 1_000_000.0
    # Live only: a leg whose plan price is further than this from the exchange's price is refused ([PRICE_GUARD]).
    max_price_deviation: float = 0.02
    # Live only: a leg whose market's book is wider than this ((ask - bid) / mid) is refused ([PRICE_GUARD]): a
    # market order pays at least the half spread, and a wide book is a thin one.  Binance's majors quote ~0.01%.
    max_spread: float = 0.01
    # Capacity (risk, dry run and live alike): no leg is more than this share of its market's volume in the bar
    # the plan was decided on; the rest is cut, and the plan's reasons say so (aura/strategy/capacity.py).  The
    # backtest's --max-participation applies the same rule to the bar a leg fills in.
    max_participation: float = 0.10
    # The operator's loss envelope: signal, risk and the optimizer refuse a parameter version whose kill-switch
    # lets the book draw down further than this before it latches for good (aura.strategy.params.loss_bound),
    # whoever signed it: a compromised optimizer holds a valid signing key.
    max_loss_bound: float = 0.5
    # Live only: a plan on a data bar that closed more than one bar plus this grace before the exchange's clock
    # is refused ([STALE_PLAN]).
    plan_grace_s: float = 300.0
    # Live only: exchange holdings the journal does not know, worth less than this, are dust, not a surplus.
    reconcile_dust_usdt: float = 5.0
    # Risk tick between signal cycles: SL/TP and drawdown on the latest prices every this many seconds (0 = off).
    risk_tick_s: float = 60.0
    # Key material (shared.credentials): "" = $AURA_HOME/keys. Each principal reads only keys/<itself>/ and
    # keys/public/.
    keys_dir: str = ""
    dedup_window_s: float = 120.0
    log_level: str = "INFO"

    def port_for(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def keys(self) -> KeyLayout:
        return KeyLayout(Path(self.keys_dir).expanduser().resolve() if self.keys_dir else self.home_path / "keys")

    @property
    def private_key_path(self) -> Path:
        """The risk service's plan-signing key."""
        return self.keys.signing_key("risk")

    @property
    def public_key_path(self) -> Path:
        return self.keys.public_key("risk")

    @property
    def journal_path(self) -> Path:
        return self.home_path / "executor" / "journal.sqlite"


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


def _coerce(name: str, raw: Any, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {raw!r}")
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(f"expected an integer, got {raw!r}")
            return int(raw)
        if kind is float:
            value = float(raw)
            if value != value:  # NaN is never a valid setting
                raise ValueError("NaN is not allowed")
            return value
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name} (env AURA_{name.upper()}): {exc}") from exc


def _validate(s: Settings) -> None:
    for svc in SERVICE_NAMES:
        port = s.port_for(svc)
        if not 1 <= port <= 65535:
            raise ConfigError(f"setting {svc}_port (env AURA_{svc.upper()}_PORT): {port} is not a TCP port")
    if s.nats_url and not s.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"setting nats_url (env AURA_NATS_URL): {s.nats_url!r} is not a nats:// URL")
    if bool(s.nats_tls_server_cert_file) != bool(s.nats_tls_server_key_file):
        raise ConfigError("settings nats_tls_server_cert_file and nats_tls_server_key_file (env "
                          "AURA_NATS_TLS_SERVER_CERT_FILE / _KEY_FILE): set both or neither")
    for name in ("nats_tls_ca_file", "nats_tls_server_cert_file", "nats_tls_server_key_file"):
        value = getattr(s, name)
        if value and not Path(value).is_file():
            raise ConfigError(f"setting {name} (env AURA_{name.upper()}): file {value!r} does not exist")
    checks = {
        "replay_interval_s": s.replay_interval_s >= 0,
        "snapshot_bars": 50 <= s.snapshot_bars <= 20_000,  # two years of hours; bounds the candle object
        "cycle_timeout_s": s.cycle_timeout_s > 0,
        "ingest_poll_s": s.ingest_poll_s > 0,
        "markets_refresh_s": 0 < s.markets_refresh_s <= 86_400,  # "at least daily"
        "universe_max": 1 <= s.universe_max <= 100,
        "paper_cash_usdt": s.paper_cash_usdt > 0,
        "paper_fee_rate": 0 <= s.paper_fee_rate < 0.05,
        "paper_slippage_bps": 0 <= s.paper_slippage_bps < 500,
        "max_order_usdt": s.max_order_usdt > 0,
        "max_price_deviation": 0 < s.max_price_deviation < 0.5,
        "max_spread": 0 < s.max_spread < 0.5,
        "max_participation": 0 < s.max_participation <= 1,
        "max_loss_bound": 0 < s.max_loss_bound <= 1,
        "plan_grace_s": s.plan_grace_s >= 0,
        "reconcile_dust_usdt": s.reconcile_dust_usdt >= 0,
        "risk_tick_s": s.risk_tick_s >= 0,
        "dedup_window_s": s.dedup_window_s >= 1,
        "console_refresh_s": 0.1 <= s.console_refresh_s <= 60,
        "worker_port": 1 <= s.worker_port <= 65535,
        "notify_down_after_s": s.notify_down_after_s > 0,
        "notify_dedup_s": s.notify_dedup_s >= 0,
        "notify_rate_limit": s.notify_rate_limit >= 1,
        "notify_rate_window_s": s.notify_rate_window_s > 0,
        "notify_summary_hour_utc": -1 <= s.notify_summary_hour_utc <= 23,
    }
    for name, ok in checks.items():
        if not ok:
            raise ConfigError(f"setting {name} (env AURA_{name.upper()}): value {getattr(s, name)!r} is out of range")
    if s.ingest_source not in INGEST_SOURCES:
        raise ConfigError(f"setting ingest_source (env AURA_INGEST_SOURCE): {s.ingest_source!r} is not one of "
                          f"{', '.join(INGEST_SOURCES)}")
    if not s.dry_run and s.ingest_source == "replay":
        raise ConfigError("settings dry_run (env AURA_DRY_RUN=false) and ingest_source (env AURA_INGEST_SOURCE="
                          "replay): live trading on replayed history would send real orders built from old prices; "
                          "set AURA_INGEST_SOURCE=sync (live data) or keep AURA_DRY_RUN=true")
    if s.timeframe not in TIMEFRAMES:
        raise ConfigError(f"setting timeframe (env AURA_TIMEFRAME): {s.timeframe!r} is not one of "
                          f"{', '.join(TIMEFRAMES)}")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"setting log_level (env AURA_LOG_LEVEL): {s.log_level!r} is not a log level")


def _read(env: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the values set by the TOML file and the environment, and where each was set: "env AURA_X" or
    "x in FILE"; the environment wins)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    config_file = env.get("AURA_CONFIG")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"setting config (env AURA_CONFIG): file {config_file!r} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"setting config (env AURA_CONFIG): {config_file!r} is not valid TOML: {exc}") from exc
        section = data.get("aura", data)
        for key, raw in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"setting {key} in {config_file}: unknown setting")
            values[key] = _coerce(key, raw, _FIELDS[key].default)
            sources[key] = f"{key} in {config_file}"
    for name, field in _FIELDS.items():
        env_key = f"AURA_{name.upper()}"
        if env_key in env and env[env_key] != "":
            values[name] = _coerce(name, env[env_key], field.default)
            sources[name] = f"env {env_key}"
    return values, sources


def default_snapshot_bars(timeframe: str) -> int:
    """The history each snapshot carries unless set: 400 bars, or a quarter more than the shipped defaults need
    on ``timeframe`` when that is more (on 4h and 1h they look back 600 and 2,400 bars: 400 hourly bars held no
    coin ``min_history`` lets in, and a live system sat in cash while its backtest traded)."""
    return max(400, math.ceil(1.25 * history_bars(rescale(StrategyParams(), PARAMS_TIMEFRAME, timeframe).params)))


# The venues whose API the executor's order safety is built and tested on (the project's Binance-format simulator):
# an order is found again by its client order id (origClientOrderId), so an answer lost in a timeout is never taken
# for an order not placed and sent a second time; and a market buy spends an exact quote amount (quoteOrderQty).  On
# other ccxt venues the lookup is a guess (Gemini's fetch_order ignores a client id) and a buy by quantity on a thin
# book spent past AURA_MAX_ORDER_USDT and the journal's cash (found by an audit): paper trading on their data
# works, live trading is refused at start.
LIVE_VENUES = ("binance", "binanceus")


def _check_live_trading(s: Settings, sources: dict[str, str]) -> None:
    """Live trading needs a per-order cap the operator chose (the default is no cap at all for real money) and a
    venue the executor's order safety is tested on (``LIVE_VENUES``)."""
    if not s.dry_run and s.exchange_id not in LIVE_VENUES:
        raise ConfigError(
            f"setting exchange_id (env AURA_EXCHANGE_ID): live trading (AURA_DRY_RUN=false) on {s.exchange_id!r} is "
            f"refused: the executor finds a lost order by its client order id and buys by quote amount only on "
            f"{', '.join(LIVE_VENUES)}; elsewhere an order whose answer was lost could be sent twice and a buy could "
            f"spend past the caps; keep AURA_DRY_RUN=true on this venue")
    if not s.dry_run and "max_order_usdt" not in sources:
        raise ConfigError(
            f"setting max_order_usdt (env AURA_MAX_ORDER_USDT) must be set for live trading (AURA_DRY_RUN=false): "
            f"it is the most one order may spend, in USDT, and its default ({s.max_order_usdt:,.0f}) is no cap at "
            f"all for real money; set AURA_MAX_ORDER_USDT (or max_order_usdt in the AURA_CONFIG file), or keep "
            f"AURA_DRY_RUN=true")


def load_settings(env: dict[str, str] | None = None, *, places_orders: bool = True) -> Settings:
    """Build settings from defaults, the optional TOML file and the environment; raise ConfigError if bad.

    ``places_orders``: live mode (dry_run false) without an operator-set max_order_usdt is refused.  False only
    for a process that never sends an order nor starts one that does (every service but the executor, the
    operator's CLI): the cap is the executor's alone, and compose passes it to no other service."""
    values, sources = _read(dict(os.environ if env is None else env))
    if "snapshot_bars" not in sources and values.get("timeframe", "1d") in TIMEFRAMES:
        values["snapshot_bars"] = default_snapshot_bars(values.get("timeframe", "1d"))
    settings = Settings(**values)
    _validate(settings)
    if places_orders:
        _check_live_trading(settings, sources)
    return settings


def setting_sources(env: dict[str, str] | None = None) -> dict[str, str]:
    """Where each setting the operator set was set ("env AURA_X" or "x in FILE"); a setting absent here is at its
    default.  `aura up` moves a taken default port but refuses a taken port someone chose (aura/ports.py)."""
    return _read(dict(os.environ if env is None else env))[1]


def settings_for_command(prog: str) -> Settings | None:
    """Settings for a CLI command, or None after printing the named bad setting (the command exits 2)."""
    try:
        return load_settings(places_orders=False)  # no CLI command sends an order: the executor does
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None

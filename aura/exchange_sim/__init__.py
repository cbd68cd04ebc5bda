"""A local Binance Spot REST simulator for testing execution through the real ccxt client.

In-process (tests)::

    from aura.exchange_sim import Fault, SimConfig, SimServer
    with SimServer(config=SimConfig(symbols=("BTCUSDT",), start="2024-01-01")) as srv:
        srv.sim.faults.add(Fault("timeout", "POST", "/api/v3/order", delay_s=2.0))  # booked, answer too late
        srv.sim.set_price("BTCUSDT", 50_000)  # or srv.sim.advance(1) to the next real candle
        ...  # point ccxt at srv.base_url (services.executor.brokers.ccxt_broker.make_ccxt_binance)
        assert srv.sim.request_counts() == {...}

From a shell: ``python -m aura.exchange_sim --port 8765`` (or ``aura exchange-sim``).

Control endpoints (not Binance's API; loopback harness only, JSON bodies):
``GET /_sim/state`` (clock, prices, balances, orders, trades, request counts, armed faults),
``GET|DELETE /_sim/requests`` (per-endpoint counts), ``POST|DELETE /_sim/faults`` (a Fault as JSON, or a list),
``POST /_sim/prices`` ({"prices": {"BTCUSDT": "50000"}, "advance": 1, "clock_ms": ...}),
``POST /_sim/balances`` ({"USDT": "1000"}), ``POST /_sim/config`` (fill chunks, fees, skew...),
``POST /_sim/step`` (move partially filled orders one chunk on).
"""

from aura.exchange_sim.engine import DEFAULT_API_KEY, DEFAULT_API_SECRET, ExchangeSim, SimConfig
from aura.exchange_sim.faults import Fault
from aura.exchange_sim.server import SimServer

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "ExchangeSim", "Fault", "SimConfig", "SimServer"]

"""The venue simulator: one Binance-like venue (one market, one clock) behind one local port.

From the same candles and the same clock it serves the Binance Spot API (public market data and the signed
trading endpoints), the data.binance.vision archive and a CoinGecko-style fallback, so ingest's providers see
exactly the candles the trading API prices from, never one after the clock.  Faults can be injected on any of
it.  The clock runs at any speed from any start: a rehearsal (``aura rehearse``) trades the whole system live
against it, many days a minute.

In-process (tests)::

    from aura.exchange_sim import Fault, SimConfig, SimServer
    with SimServer(config=SimConfig(symbols=("BTCUSDT",), start="2024-01-01")) as srv:
        srv.sim.faults.add(Fault("timeout", "POST", "/api/v3/order", delay_s=2.0))  # booked, answer too late
        srv.sim.faults.add(Fault("http_error", path="/data/*", status=500, count=None))  # archive down
        srv.sim.set_price("BTCUSDT", 50_000)  # or srv.sim.advance(1) to the next real candle
        ...  # ccxt at srv.base_url; ingest at srv.base_url (archive, API) and srv.coingecko_url
        assert srv.sim.request_counts() == {...}

From a shell: ``python -m aura.exchange_sim --port 8765`` (or ``aura exchange-sim``).

Control endpoints (not Binance's API; loopback harness only, JSON bodies):
``GET /_sim/state`` (clock, prices, balances, orders, trades, request counts, armed faults),
``GET|DELETE /_sim/requests`` (per-endpoint counts), ``POST|DELETE /_sim/faults`` (a Fault as JSON, or a list),
``POST /_sim/clock`` ({"now_ms": ..., "speed": ...}),
``POST /_sim/prices`` ({"prices": {"BTCUSDT": "50000"}, "advance": 1, "clock_ms": <a bar's open time>}),
``POST /_sim/balances`` ({"USDT": "1000"}), ``POST /_sim/config`` (fill chunks, fees, skew...),
``POST /_sim/step`` (move partially filled orders one chunk on).
"""

from aura.exchange_sim.clock import SimClock
from aura.exchange_sim.config import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimConfig
from aura.exchange_sim.engine import ExchangeSim
from aura.exchange_sim.faults import Fault
from aura.exchange_sim.server import SimServer

__all__ = ["DEFAULT_API_KEY", "DEFAULT_API_SECRET", "ExchangeSim", "Fault", "SimClock", "SimConfig", "SimServer"]

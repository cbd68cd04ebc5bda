"""Each injected fault, as the real ccxt client experiences it, and what the exchange did meanwhile."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import ccxt
import httpx
import pytest

from aura.exchange_sim import Fault, SimServer
from tests.exchange_sim.conftest import sync_client

pytestmark = pytest.mark.integration

ORDER = ("POST", "/api/v3/order")


def _buy(client: Any, cid: str) -> Any:
    return client.create_order("BTC/USDT", "market", "buy", 0.01, None, {"newClientOrderId": cid})


def test_accept_then_timeout_books_the_order_although_the_client_timed_out(sim_server: SimServer) -> None:
    client = sync_client(sim_server, timeout_ms=300)
    client.load_markets()
    # The answer is held far longer than the client waits (the server lets go at its stop), so "the client gave
    # up at its own timeout" holds with seconds to spare on a loaded machine (held 1 s, a 0.6 s stall failed it).
    sim_server.sim.faults.add(Fault("timeout", *ORDER, delay_s=30.0))
    started = time.monotonic()
    with pytest.raises(ccxt.RequestTimeout):
        _buy(client, "lost-1")
    assert time.monotonic() - started < 10  # the client gave up at its own timeout, not when the answer came
    order = sim_server.sim.order_by_client_id("BTCUSDT", "lost-1")
    assert order is not None and order.status == "FILLED"
    assert sim_server.sim.free("BTC") == Decimal("0.00999")  # 0.01 less its fee, taken in BTC
    assert client.fetch_order("", "BTC/USDT", {"origClientOrderId": "lost-1"})["status"] == "closed"


def test_dropped_connection_after_booking(sim_server: SimServer, client: Any) -> None:
    sim_server.sim.faults.add(Fault("drop", *ORDER))
    with pytest.raises(ccxt.NetworkError):
        _buy(client, "dropped")
    assert sim_server.sim.order_by_client_id("BTCUSDT", "dropped") is not None


def test_drop_before_processing_books_nothing(sim_server: SimServer, client: Any) -> None:
    sim_server.sim.faults.add(Fault("drop", *ORDER, process=False))
    with pytest.raises(ccxt.NetworkError):
        _buy(client, "never")
    assert sim_server.sim.orders() == []
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order("", "BTC/USDT", {"origClientOrderId": "never"})


@pytest.mark.parametrize(("process", "booked"), [(False, False), (True, True)])
def test_5xx_on_order_with_and_without_execution(sim_server: SimServer, client: Any, process: bool,
                                                 booked: bool) -> None:
    sim_server.sim.faults.add(Fault("http_error", *ORDER, status=503, process=process))
    with pytest.raises(ccxt.OperationFailed):  # ExchangeNotAvailable (503) or OperationFailed (-1001 body)
        _buy(client, "five-xx")
    assert (sim_server.sim.order_by_client_id("BTCUSDT", "five-xx") is not None) is booked


def test_5xx_with_plain_body_on_account(sim_server: SimServer, client: Any) -> None:
    sim_server.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", status=502, body="Bad Gateway"))
    with pytest.raises(ccxt.ExchangeNotAvailable):
        client.fetch_balance()
    assert client.fetch_balance()["free"]["USDT"] == 10_000  # one-shot: the next call is fine


def test_rate_limit_has_retry_after_and_books_nothing(sim_server: SimServer, client: Any) -> None:
    sim_server.sim.faults.add(Fault("rate_limit", *ORDER, retry_after_s=7))
    with pytest.raises(ccxt.DDoSProtection, match="-1003"):
        _buy(client, "limited")
    assert client.last_response_headers.get("Retry-After") == "7"
    assert sim_server.sim.orders() == []


def test_empty_and_stale_balances(sim_server: SimServer, client: Any) -> None:
    before = client.fetch_balance()
    _buy(client, "moves-balance")
    sim_server.sim.faults.add(Fault("empty_balance", "GET", "/api/v3/account"))
    empty = client.fetch_balance()
    assert empty["info"]["balances"] == [] and "USDT" not in empty["free"]
    sim_server.sim.faults.add(Fault("stale_balance", "GET", "/api/v3/account"))
    stale = client.fetch_balance()
    assert stale["free"]["BTC"] == 0 and stale["info"]["updateTime"] == before["info"]["updateTime"]
    fresh = client.fetch_balance()
    assert fresh["free"]["BTC"] == 0.00999 and fresh["info"]["updateTime"] > before["info"]["updateTime"]


def test_fault_count_and_matching(sim_server: SimServer, client: Any) -> None:
    sim_server.sim.faults.add(Fault("http_error", "GET", "/api/v3/account", count=2))
    _buy(client, "unaffected")  # another endpoint: not matched
    for _ in range(2):
        with pytest.raises(ccxt.OperationFailed):
            client.fetch_balance()
    assert client.fetch_balance()["free"]["BTC"] == 0.00999  # 0.01 bought, its fee taken in BTC
    assert sim_server.sim.faults.pending() == []


def test_request_counts_per_endpoint(sim_server: SimServer) -> None:
    client = sync_client(sim_server)
    assert sim_server.sim.request_counts() == {}
    client.load_markets()
    client.fetch_balance()
    client.fetch_balance()
    assert sim_server.sim.request_counts() == {"GET /api/v3/exchangeInfo": 1, "GET /api/v3/account": 2}


def test_faults_prices_and_state_over_http_control_endpoints(sim_server: SimServer, client: Any) -> None:
    base = sim_server.base_url
    r = httpx.post(f"{base}/_sim/faults", json={"kind": "rate_limit", "method": "GET", "path": "/api/v3/account",
                                               "retry_after_s": 2})
    assert r.status_code == 200 and r.json()["faults"][0]["kind"] == "rate_limit"
    with pytest.raises(ccxt.DDoSProtection):
        client.fetch_balance()
    assert httpx.post(f"{base}/_sim/prices", json={"prices": {"BTCUSDT": "12345.67"}}).status_code == 200
    assert client.fetch_ticker("BTC/USDT")["last"] == 12345.67
    httpx.post(f"{base}/_sim/balances", json={"USDT": "50"})
    with pytest.raises(ccxt.InsufficientFunds):
        _buy(client, "poor")
    state = httpx.get(f"{base}/_sim/state").json()
    assert state["prices"]["BTCUSDT"] == "12345.67" and state["balances"]["USDT"]["free"] == "50.00000000"
    assert state["requests"]["GET /api/v3/account"] == 1 and state["requests"]["POST /api/v3/order"] == 1
    httpx.post(f"{base}/_sim/faults", json={"kind": "drop"})
    assert httpx.delete(f"{base}/_sim/faults").json()["faults"] == []
    httpx.post(f"{base}/_sim/config", json={"market_fill_chunks": 2})
    assert sim_server.sim.config.market_fill_chunks == 2
    assert httpx.get(f"{base}/_sim/requests").json() == state["requests"]
    httpx.delete(f"{base}/_sim/requests")
    assert sim_server.sim.request_counts() == {}
    clock = state["clock_ms"]
    httpx.post(f"{base}/_sim/prices", json={"advance": 2})
    assert httpx.get(f"{base}/_sim/state").json()["clock_ms"] == clock + 2 * 86_400_000


@pytest.mark.parametrize("payload", ['{"kind": "meteor"}', "not json", '{"kind": "drop", "count": 0}',
                                     '{"kind": "drop", "bogus": 1}'])
def test_bad_control_input_is_a_400_and_the_server_lives_on(sim_server: SimServer, payload: str) -> None:
    r = httpx.post(f"{sim_server.base_url}/_sim/faults", content=payload)
    assert r.status_code == 400 and "error" in r.json()
    assert httpx.get(f"{sim_server.base_url}/api/v3/ping").json() == {}

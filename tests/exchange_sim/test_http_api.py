"""Binance's wire rules checked byte by byte: signatures, timestamps, and bad input that must never crash."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import urlencode

import ccxt
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, SimServer
from tests.exchange_sim.conftest import sync_client

pytestmark = pytest.mark.integration

_HTTP = httpx.Client(timeout=5.0)  # one client: building an SSL context per request costs ~40 ms


def signed(params: dict[str, Any], secret: str = DEFAULT_API_SECRET) -> str:
    query = urlencode({**params, "timestamp": int(time.time() * 1000)})
    return query + "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()


def call(server: SimServer, method: str, path: str, *, query: str = "", body: str = "",
         key: str | None = DEFAULT_API_KEY) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if key is not None:
        headers["X-MBX-APIKEY"] = key
    url = f"{server.base_url}{path}" + (f"?{query}" if query else "")
    return _HTTP.request(method, url, content=body, headers=headers)


def test_ccxt_bad_secret_is_1022_and_bad_key_is_2015(sim_server: SimServer) -> None:
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        sync_client(sim_server, secret="wrong-secret").fetch_balance()
    with pytest.raises(ccxt.AuthenticationError, match="-2015"):
        sync_client(sim_server, key="wrong-key").fetch_balance()


@pytest.mark.parametrize(("skew_ms", "message"), [
    (20_000, "outside of the recvWindow"),  # server ahead: the client's timestamp is too old
    (-5_000, "1000ms ahead of the server's time"),  # server behind: the client is in the future
])
def test_ccxt_timestamp_outside_recv_window_is_1021(sim_server: SimServer, skew_ms: int, message: str) -> None:
    sim_server.sim.configure(clock_skew_ms=skew_ms)
    with pytest.raises(ccxt.InvalidNonce, match=message):  # ccxt's class for -1021 off api.binance.com
        sync_client(sim_server).fetch_balance()
    sim_server.sim.configure(clock_skew_ms=0)
    assert sync_client(sim_server).fetch_balance()["free"]["USDT"] == 10_000


def test_signature_covers_query_then_body(sim_server: SimServer) -> None:
    query = "symbol=BTCUSDT&side=BUY&type=MARKET"
    body = urlencode({"quantity": "0.001", "newClientOrderId": "split", "timestamp": int(time.time() * 1000)})
    sig = hmac.new(DEFAULT_API_SECRET.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
    r = call(sim_server, "POST", "/api/v3/order", query=query, body=f"{body}&signature={sig}")
    assert r.status_code == 200, r.text
    # A buy's commission is taken in (and reported in) the asset received, as Binance does without BNB.
    assert r.json()["status"] == "FILLED" and r.json()["fills"][0]["commissionAsset"] == "BTC"


@pytest.mark.parametrize(("method", "path", "query", "key", "status", "code"), [
    ("GET", "/api/v3/account", "", None, 401, -2014),
    ("GET", "/api/v3/account", "timestamp=1", DEFAULT_API_KEY, 400, -1102),  # no signature
    ("GET", "/api/v3/klines", "symbol=BTCUSDT&interval=3m", None, 400, -1120),
    ("GET", "/api/v3/klines", "symbol=BTCUSDT", None, 400, -1102),
    ("GET", "/api/v3/ticker/24hr", "symbol=DOGEUSDT", None, 400, -1121),
    ("GET", "/api/v3/ticker/price", "symbols=notjson", None, 400, -1100),
    ("GET", "/api/v3/klines", "symbol=BTCUSDT&interval=1d&limit=abc", None, 400, -1100),
    ("GET", "/api/v3/ping", "a=1&a=2", None, 400, -1101),
    ("PUT", "/api/v3/order", "", None, 405, -1020),
    ("GET", "/api/v3/nothing-here", "", None, 404, -1020),
])
def test_bad_requests_get_binance_error_json(sim_server: SimServer, method: str, path: str, query: str,
                                             key: str | None, status: int, code: int) -> None:
    r = call(sim_server, method, path, query=query, key=key)
    assert r.status_code == status and r.json()["code"] == code and r.json()["msg"]


@pytest.mark.parametrize(("params", "code"), [
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "abc"}, -1100),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET"}, -1102),
    ({"symbol": "BTCUSDT", "side": "HOLD", "type": "MARKET", "quantity": "1"}, -1117),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "STOP", "quantity": "1"}, -1116),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01", "price": "1"}, -1102),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.01", "newClientOrderId": "bad id!"},
     -1100),
    ({"side": "BUY", "type": "MARKET", "quantity": "1"}, -1102),
    ({"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "-1"}, -1100),
])
def test_malformed_orders(sim_server: SimServer, params: dict[str, str], code: int) -> None:
    r = call(sim_server, "POST", "/api/v3/order", body=signed(params))
    assert r.status_code == 400 and r.json()["code"] == code
    assert sim_server.sim.orders() == []


def test_get_order_needs_an_id(sim_server: SimServer) -> None:
    r = call(sim_server, "GET", "/api/v3/order", query=signed({"symbol": "BTCUSDT"}))
    assert r.json()["code"] == -1102


_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["symbol", "side", "type", "quantity", "price", "timeInForce",
                                               "quoteOrderQty", "newClientOrderId", "newOrderRespType",
                                               "orderId", "origClientOrderId", "recvWindow"]),
                              st.one_of(_text, st.sampled_from(["BTCUSDT", "BUY", "SELL", "MARKET", "LIMIT",
                                                                "GTC", "0.001", "1e5", "99999999999999999999"]))),
       method=st.sampled_from(["POST", "GET", "DELETE"]))
def test_fuzzed_signed_order_requests_never_crash(sim_server: SimServer, params: dict[str, str],
                                                  method: str) -> None:
    params.pop("recvWindow", None)  # keep the timestamp check out of the way
    r = call(sim_server, method, "/api/v3/order", body=signed(params) if method == "POST" else "",
             query="" if method == "POST" else signed(params))
    assert r.status_code in (200, 400), r.text
    assert isinstance(r.json(), dict)
    if r.status_code == 400:
        assert isinstance(r.json()["code"], int) and r.json()["code"] < 0

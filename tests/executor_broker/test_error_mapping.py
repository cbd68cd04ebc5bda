"""map_error on the exception classes ccxt raises for real api.binance.com URLs too, where some differ from
what the simulator's loopback URL produces (e.g. -1021 is BadRequest there, InvalidNonce here)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import ccxt
import pytest

from services.executor.brokers.base import (
    AmbiguousOrderError,
    CredentialsRejected,
    DuplicateOrderError,
    OrderRejectedError,
    RateLimitedError,
    TransientBrokerError,
)
from services.executor.brokers.ccxt_broker import CcxtBroker
from services.executor.brokers.ccxt_client import is_not_found


@pytest.fixture(scope="module")
def broker() -> Iterator[CcxtBroker]:
    b = CcxtBroker(api_key="k", secret="s", base_url="http://127.0.0.1:9")  # never contacted
    yield b
    asyncio.run(b.close())


def body(code: int, msg: str) -> str:
    return f'binance {{"code":{code},"msg":"{msg}"}}'


CASES = [
    # (exception, placing, expected class, expected code)
    (ccxt.RequestTimeout("binance POST /api/v3/order"), True, AmbiguousOrderError, None),
    (ccxt.RequestTimeout("binance GET /api/v3/account"), False, TransientBrokerError, None),
    (ccxt.ExchangeNotAvailable("binance POST 503"), True, AmbiguousOrderError, None),
    (ccxt.NetworkError("connection reset"), True, AmbiguousOrderError, None),
    (ccxt.OperationFailed(body(-1001, "Internal error")), True, AmbiguousOrderError, None),
    (ccxt.RequestTimeout(body(-1007, "Timeout waiting for response from backend server.")), True,
     AmbiguousOrderError, None),
    (OSError("socket closed"), True, AmbiguousOrderError, None),
    (ccxt.InvalidOrder(body(-2010, "Duplicate order sent.")), True, DuplicateOrderError, None),
    (ccxt.DuplicateOrderId("dup"), True, DuplicateOrderError, None),
    (ccxt.InsufficientFunds("binance Account has insufficient balance for requested action."), True,
     OrderRejectedError, None),
    (ccxt.ExchangeError(body(-1013, "Filter failure: NOTIONAL")), True, OrderRejectedError, -1013),  # spot URL
    (ccxt.BadRequest(body(-1013, "Filter failure: NOTIONAL")), True, OrderRejectedError, -1013),  # other URLs
    (ccxt.InvalidOrder(body(-1013, "Filter failure: LOT_SIZE")), True, OrderRejectedError, -1013),
    (ccxt.BadSymbol(body(-1121, "Invalid symbol.")), True, OrderRejectedError, -1121),
    (ccxt.MarketClosed(body(-1013, "Market is closed.")), True, OrderRejectedError, -1013),
    (ccxt.DDoSProtection("binance 429 Too Many Requests"), True, RateLimitedError, None),
    (ccxt.RateLimitExceeded(body(-1003, "Too much request weight used")), False, RateLimitedError, None),
    (ccxt.BadRequest(body(-1021, "Timestamp for this request is outside of the recvWindow.")), True,
     TransientBrokerError, None),
    (ccxt.InvalidNonce(body(-1021, "Timestamp for this request is outside of the recvWindow.")), True,
     TransientBrokerError, None),
    # The key, its signature, the IP or the permissions refused (nothing done): the environment, waited out.
    (ccxt.AuthenticationError(body(-1022, "Signature for this request is not valid.")), False, CredentialsRejected,
     None),
    (ccxt.DDoSProtection(body(-2015, "Invalid API-key, IP, or permissions for action.")), True, CredentialsRejected,
     None),
]


@pytest.mark.parametrize(("exc", "placing", "expected", "code"), CASES)
def test_mapping(broker: CcxtBroker, exc: Exception, placing: bool, expected: type, code: int | None) -> None:
    mapped = broker.map_error(exc, placing=placing)
    assert type(mapped) is expected
    if code is not None:
        assert isinstance(mapped, OrderRejectedError) and mapped.code == code


def test_only_order_posts_are_ever_ambiguous(broker: CcxtBroker) -> None:
    for exc, _, _, _ in CASES:
        assert not isinstance(broker.map_error(exc, placing=False), AmbiguousOrderError)


def test_not_found_detection() -> None:
    assert is_not_found(ccxt.OrderNotFound("x"))
    assert is_not_found(ccxt.OperationRejected(body(-2011, "Unknown order sent.")))  # spot URL class for -2011
    assert not is_not_found(ccxt.InvalidOrder(body(-2010, "Duplicate order sent.")))

"""Binance's error answers, with the codes and texts the real exchange sends.

ccxt maps errors partly by ``code`` and partly by the exact ``msg`` text, so both must match Binance's
wording exactly or a client would see a different exception class against the simulator than in production.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation


class BinanceError(Exception):
    """An error answer: HTTP ``status`` with JSON body ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"code": self.code, "msg": self.msg}


def mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def illegal_chars(name: str, legal: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def invalid_symbol() -> BinanceError:
    return BinanceError(-1121, "Invalid symbol.")


def filter_failure(name: str) -> BinanceError:
    return BinanceError(-1013, f"Filter failure: {name}")


def insufficient_balance() -> BinanceError:
    return BinanceError(-2010, "Account has insufficient balance for requested action.")


def duplicate_order() -> BinanceError:
    return BinanceError(-2010, "Duplicate order sent.")


def order_does_not_exist() -> BinanceError:
    return BinanceError(-2013, "Order does not exist.")


def unknown_order_sent() -> BinanceError:
    return BinanceError(-2011, "Unknown order sent.")


def too_many_requests(retry_after_s: float) -> BinanceError:
    return BinanceError(
        -1003,
        "Too much request weight used; current limit is 6000 request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API.",
        status=429,
        headers={"Retry-After": str(max(0, math.ceil(retry_after_s)))},
    )


def internal_error() -> BinanceError:
    return BinanceError(-1001, "Internal error; unable to process your request. Please try again.", status=500)


# Request parameters are checked with Binance's own patterns, and refused with the errors above.
CLIENT_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
_DECIMAL_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")


def parse_decimal(name: str, raw: str | None, *, required: bool = False) -> Decimal | None:
    """A decimal request parameter (quantity, price), or None when absent; Binance's error when malformed."""
    if raw is None or raw == "":
        if required:
            raise mandatory(name)
        return None
    if not _DECIMAL_RE.match(raw):
        raise illegal_chars(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$")
    try:
        return Decimal(raw)
    except InvalidOperation as exc:  # pragma: no cover - the regex already rules this out
        raise illegal_chars(name, "^([0-9]{1,20})(\\.[0-9]{1,20})?$") from exc

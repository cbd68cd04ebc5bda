"""Deterministic clientOrderIds: the idempotency key that makes a retried order a lookup, never a second order.

The same (plan, leg) always gives the same id, so after a crash or an ambiguous answer the executor can ask
the exchange "do you have <id>?" instead of guessing.  Ids satisfy Binance's rule ``^[a-zA-Z0-9-_]{1,36}$``.
"""

from __future__ import annotations

import hashlib
import json
import re

CLIENT_ORDER_ID_RE = re.compile(r"^[a-zA-Z0-9-_]{1,36}$")
MAX_LEN = 36
_MAX_PREFIX = 12
_MIN_DIGEST = 20  # 80 bits: collisions across all plans ever made stay negligible


def client_order_id(plan_id: str, leg_index: int, prefix: str = "aura") -> str:
    """``<prefix>-<sha256(plan_id, leg_index) hex>``, 36 characters at most."""
    if not isinstance(plan_id, str) or not plan_id:
        raise ValueError("plan_id must be a non-empty string")
    if isinstance(leg_index, bool) or not isinstance(leg_index, int) or leg_index < 0:
        raise ValueError("leg_index must be a non-negative int")
    clean = re.sub(r"[^a-zA-Z0-9_]", "", prefix)[:_MAX_PREFIX]
    # JSON keeps ("a|1", 2) and ("a", 12) apart, which naive string joining would not.
    digest = hashlib.sha256(json.dumps([plan_id, leg_index]).encode()).hexdigest()
    head = f"{clean}-" if clean else ""
    return head + digest[: max(_MIN_DIGEST, MAX_LEN - len(head))]

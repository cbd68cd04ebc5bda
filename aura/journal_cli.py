"""``aura journal adopt``: let the executor record what the exchange really holds, after it halted on a
disagreement ([RECONCILE]: coins the journal does not know, or an empty journal beside an account with coins).

Only the executor writes the journal, so this writes a request signed with the operator's key
(``operator.adopt``); the executor verifies it, records the exchange's balances at its current prices as an
``adopt`` entry with the reason given here, and resumes trading.  This command waits to see that happen.

``aura journal settle CID``: close an order the executor cannot settle (services/executor/settle.py) the same
way, through a signed ``operator.settle`` request naming the clientOrderId.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from typing import Any

from shared.bus import BusNotProvisioned, BusUnavailable, last_message, session, state_kv
from shared.config import Settings, settings_for_command
from shared.contracts import PortfolioSnapshot, decode
from shared.credentials import CredentialError, signing_key
from shared.operator_requests import ADOPT_KEY, SETTLE_KEY, SettleRequest, operator_request, write_request
from shared.signing import sign_struct

APPLY_WAIT_S = 15.0


async def _adopt(settings: Settings, reason: str) -> tuple[dict[str, Any], bool]:
    request = operator_request(ADOPT_KEY, f"operator:{getpass.getuser()}", reason,
                               signing_key(settings.keys, "operator"))
    cycle_id = f"adopt-{request.requested_at_ms}"
    async with session(settings, "operator") as nc:
        js = nc.jetstream()
        await write_request(await state_kv(js), ADOPT_KEY, request)
        deadline = time.monotonic() + APPLY_WAIT_S
        while time.monotonic() < deadline:
            raw = await last_message(js, PortfolioSnapshot.SUBJECT)
            snap = decode(raw, PortfolioSnapshot) if raw is not None else None
            if snap is not None and snap.cycle_id == cycle_id:
                return {"snapshot_id": snap.snapshot_id, "cash": snap.cash, "holdings": snap.holdings}, True
            await asyncio.sleep(0.2)
    return {"requested_at_ms": request.requested_at_ms, "reason": reason}, False


async def _settle(settings: Settings, cid: str, reason: str) -> int:
    key = signing_key(settings.keys, "operator")
    request = sign_struct(SettleRequest(requested_at_ms=int(time.time() * 1000),
                                        requested_by=f"operator:{getpass.getuser()}", reason=reason,
                                        action=SETTLE_KEY, client_order_id=cid), key)
    async with session(settings, "operator") as nc:
        await write_request(await state_kv(nc.jetstream()), SETTLE_KEY, request)
    return request.requested_at_ms


def run(args: argparse.Namespace) -> int:
    settings = settings_for_command("aura journal")
    if settings is None:
        return 2
    if args.journal_command == "settle":
        try:
            at = asyncio.run(_settle(settings, args.client_order_id, args.reason))
        except (BusUnavailable, BusNotProvisioned, CredentialError) as exc:
            print(f"aura journal: {exc}", file=sys.stderr)
            return 1
        print(f"[RECONCILE] settle requested for {args.client_order_id}: the executor closes it as canceled when the "
              "plan waiting on it is next retried (its log says so); a fill not journaled shows as a book "
              "difference, for `aura journal adopt`", file=sys.stderr)
        print(json.dumps({"client_order_id": args.client_order_id, "requested_at_ms": at}))
        return 0
    try:
        out, applied = asyncio.run(_adopt(settings, args.reason))
    except (BusUnavailable, BusNotProvisioned, CredentialError) as exc:
        print(f"aura journal: {exc}", file=sys.stderr)
        return 1
    if applied:
        print("[RECONCILE] the executor adopted the exchange's balances; trading resumes", file=sys.stderr)
    else:
        print(f"[RECONCILE] adoption requested; the executor applies it while halted (it did not within "
              f"{APPLY_WAIT_S:.0f}s: is it running, and halted?)", file=sys.stderr)
    print(json.dumps(out, sort_keys=True))
    return 0 if applied else 1


def add_journal_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("journal", help="the executor's journal: adopt the exchange's balances after a halt, "
                              "settle an order it cannot")
    sub = p.add_subparsers(dest="journal_command", required=True)
    adopt = sub.add_parser("adopt", help="record what the exchange holds, at its prices, as a journaled event")
    adopt.add_argument("--reason", required=True, help="why: recorded with the adoption")
    settle = sub.add_parser("settle", help="close an order the executor cannot settle (it waits on it, /readyz red, "
                            "[RECONCILE]) as canceled (its journaled fills stay), after checking it on the exchange")
    settle.add_argument("client_order_id", help="the order's clientOrderId, as the executor's log and /readyz name it")
    settle.add_argument("--reason", required=True, help="why: recorded with the settlement")
    p.set_defaults(func=run)

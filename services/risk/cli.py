"""``aura risk status|reset``: inspect or clear the kill-switch latch (KV ``risk.halted`` in ``aura_state``).

The kill-switch latches: once the rolling drawdown breaches its threshold the risk service liquidates and every
later plan stays in cash until an operator resets it here.  A reset is written as a new revision (not a delete)
so the bucket's history shows who reset it and when; the risk service reads it at its next cycle or tick.
Its ``reset_at_ms`` re-arms the switch: drawdown is measured from equity committed after the reset
(``services.risk.tick.equity_since_reset``), so the peak before the crash cannot latch it again.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from typing import Any

import msgspec
import nats

from shared.bus import kv_get, state_kv
from shared.config import settings_for_command

HALT_KEY = "risk.halted"  # the same key services.risk.service latches (kept here so the CLI imports no service)


async def _status(url: str) -> dict[str, Any]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        raw, revision = await kv_get(await state_kv(nc.jetstream()), HALT_KEY)
        doc = msgspec.json.decode(raw) if raw else {"halted": False}
        return {**doc, "revision": revision}
    finally:
        await nc.close()


async def _reset(url: str, reason: str) -> dict[str, Any]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        kv = await state_kv(nc.jetstream())
        raw, _ = await kv_get(kv, HALT_KEY)
        before = msgspec.json.decode(raw) if raw else {"halted": False}
        doc = {"halted": False, "reset_by": getpass.getuser(), "reset_at_ms": int(time.time() * 1000),
               "reason": reason, "was": before}
        revision = await kv.put(HALT_KEY, msgspec.json.encode(doc))
        return {**doc, "revision": int(revision)}
    finally:
        await nc.close()


def run(args: argparse.Namespace) -> int:
    settings = settings_for_command("aura risk")
    if settings is None:
        return 2
    try:
        if args.risk_command == "reset":
            out = asyncio.run(_reset(settings.nats_url, args.reason))
            was = "was latched" if out["was"].get("halted") else "was not latched"
            print(f"[KILL_SWITCH] latch cleared ({was}); trading resumes at the next cycle, with the drawdown "
                  "measured from the equity at this reset", file=sys.stderr)
        else:
            out = asyncio.run(_status(settings.nats_url))
    except Exception as exc:
        print(f"aura risk: cannot reach NATS at {settings.nats_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, sort_keys=True))
    return 0


def add_risk_parser(subparsers: Any) -> None:
    """Register ``risk status`` / ``risk reset`` on an argparse subparsers object (the ``aura`` console script)."""
    p = subparsers.add_parser("risk", help="inspect or reset the kill-switch latch (AURA_NATS_URL)")
    sub = p.add_subparsers(dest="risk_command", required=True)
    sub.add_parser("status", help="show the kill-switch latch")
    reset = sub.add_parser("reset", help="clear the kill-switch latch so trading can resume")
    reset.add_argument("--reason", default="operator reset", help="recorded with the reset")
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura")
    add_risk_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["risk", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

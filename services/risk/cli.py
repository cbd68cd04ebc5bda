"""``aura risk status|reset``: inspect the kill-switch latch, or ask risk to clear it.

The kill-switch latches: once the rolling drawdown breaches its threshold the risk service liquidates and every
later plan stays in cash until it re-arms by itself (``kill_switch_cooldown`` bars of data later; ``status`` shows
when) or an operator resets it; past ``kill_switch_cap`` only an operator can.  Only risk may write the latch
(bus permissions), so a reset is a request: this command writes ``operator.reset`` signed with the operator's
key, and risk applies it at its next cycle or tick (``services.risk.latch``), which re-arms the switch from the
equity at that moment.
Both keys keep their history in the bucket, so who reset it, when and why stays visible.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from services.risk.latch import UNVERIFIABLE_BY, LatchDoc, read_latch
from shared.bus import BusNotProvisioned, BusUnavailable, session, state_kv
from shared.config import Settings, settings_for_command
from shared.credentials import CredentialError, signing_key, trusted_key
from shared.operator_requests import RESET_KEY, operator_request, read_request, write_request

APPLY_WAIT_S = 10.0  # how long `reset` waits to see risk apply the request


async def _status(settings: Settings) -> dict[str, Any]:
    async with session(settings, "operator") as nc:
        js = nc.jetstream()
        kv = await state_kv(js)
        latch, revision, problem = await read_latch(js, trusted_key(settings.keys, "operator", "risk"))
        reset, _ = await read_request(kv, RESET_KEY, trusted_key(settings.keys, "operator", "operator"))
        out: dict[str, Any] = {**msgspec.to_builtins(latch), "revision": revision}
        out.pop("signature", None)
        if problem:
            out["problem"] = problem
        if latch.reset_by == UNVERIFIABLE_BY:  # when an unverifiable latch was stored, not a reset anyone made
            out["unverifiable_since_ms"] = out.pop("reset_at_ms")
            out.pop("reset_by")
        out.update(rearm_status(latch))
        if reset is not None and reset.requested_at_ms > latch.reset_at_ms:
            out["pending_reset"] = {"requested_at_ms": reset.requested_at_ms, "by": reset.requested_by,
                                    "reason": reset.reason}
        return out


async def _reset(settings: Settings, reason: str) -> tuple[dict[str, Any], bool]:
    request = operator_request(RESET_KEY, f"operator:{getpass.getuser()}", reason,
                               signing_key(settings.keys, "operator"))
    risk_key = trusted_key(settings.keys, "operator", "risk")
    async with session(settings, "operator") as nc:
        js = nc.jetstream()
        kv = await state_kv(js)
        was = (await read_latch(js, risk_key))[0].halted  # an unverifiable latch reads as latched
        await write_request(kv, RESET_KEY, request)
        deadline = time.monotonic() + APPLY_WAIT_S
        while time.monotonic() < deadline:
            latch, _, problem = await read_latch(js, risk_key)
            if not problem and latch.reset_by != UNVERIFIABLE_BY and latch.reset_at_ms >= request.requested_at_ms:
                return {"halted": latch.halted, "was_latched": was, "reset_at_ms": latch.reset_at_ms,
                        "reset_by": latch.reset_by, "reason": latch.reason}, True
            await asyncio.sleep(0.2)
        return {"requested_at_ms": request.requested_at_ms, "was_latched": was, "reason": reason}, False


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


def rearm_status(latch: LatchDoc) -> dict[str, Any]:
    """How the latch clears, for an operator: by itself at a data-bar time, or only by a reset."""
    if not latch.halted:
        return {"rearm": None}
    out: dict[str, Any] = {"latched_at": _iso(latch.latched_at_ms) if latch.latched_at_ms else None}
    if latch.capped:
        out["rearm"] = ("only by `aura risk reset` (capped: the drawdown since the last reset reached "
                        "kill_switch_cap, or the stored latch did not verify at a start)")
    elif latch.rearm_at_ms:
        out["rearm_at"] = _iso(latch.rearm_at_ms)
        out["rearm"] = (f"by itself at the first cycle or tick on data of {out['rearm_at']} or later "
                        "(kill_switch_cooldown), or by `aura risk reset`")
    else:
        out["rearm"] = "only by `aura risk reset` (kill_switch_cooldown is 0)"
    return out


def render_status(out: dict[str, Any]) -> str:
    """``status`` for a person: the latch, why and since when, how it clears, a reset not applied yet."""
    lines = []
    if out.get("problem"):
        lines.append(f"WARNING: the stored latch does not verify ({out['problem']}); risk treats it as latched")
    if out.get("halted"):
        since = f" since the bar of {out['latched_at']}" if out.get("latched_at") else ""
        lines.append(f"kill-switch: LATCHED{since} (cycle {out.get('cycle_id') or '?'}, drawdown "
                     f"{float(out.get('drawdown', 0.0)):.2%}); every plan stays in cash")
        if out.get("problem"):
            lines.append("  clears only by `aura risk reset` (the stored latch does not verify)")
        else:
            lines.append(f"  clears {out['rearm']}")
    else:
        lines.append("kill-switch: armed (trading)")
        if out.get("rearmed_at_ms"):
            lines.append(f"  re-armed by itself at the bar of {_iso(int(out['rearmed_at_ms']))}")
    if out.get("reset_at_ms"):
        lines.append(f"  last reset {_iso(int(out['reset_at_ms']))} by {out.get('reset_by') or '?'}: "
                     f"{out.get('reason') or '-'}")
    if out.get("unverifiable_since_ms"):
        lines.append(f"  latched since {_iso(int(out['unverifiable_since_ms']))}, when a latch that did not verify "
                     "was found: only a reset requested after that clears it")
    if out.get("peak_equity"):
        lines.append(f"  peak equity since the last reset {float(out['peak_equity']):,.2f}")
    pending = out.get("pending_reset")
    if pending:
        lines.append(f"  reset requested {_iso(int(pending['requested_at_ms']))} by {pending['by']} "
                     f"({pending['reason']}): risk applies it at its next cycle or tick")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    settings = settings_for_command("aura risk")
    if settings is None:
        return 2
    try:
        if args.risk_command == "reset":
            out, applied = asyncio.run(_reset(settings, args.reason))
            if applied:
                print(f"[KILL_SWITCH] latch cleared by risk ({'was' if out['was_latched'] else 'was not'} latched); "
                      "trading resumes at the next cycle, with the drawdown measured from the equity at this reset",
                      file=sys.stderr)
            else:
                print("[KILL_SWITCH] reset recorded; risk applies it at its next cycle or tick (it did not within "
                      f"{APPLY_WAIT_S:.0f}s: is the risk service running?)", file=sys.stderr)
        else:
            out = asyncio.run(_status(settings))
    except (BusUnavailable, BusNotProvisioned, CredentialError) as exc:
        print(f"aura risk: {exc}", file=sys.stderr)
        return 1
    if args.risk_command == "status" and not args.json:
        print(render_status(out))
    else:
        print(json.dumps(out, sort_keys=True))
    return 0


def add_risk_parser(subparsers: Any) -> None:
    """Register ``risk status`` / ``risk reset`` on an argparse subparsers object (the ``aura`` console script)."""
    p = subparsers.add_parser("risk", help="inspect or reset the kill-switch latch")
    sub = p.add_subparsers(dest="risk_command", required=True)
    status = sub.add_parser("status", help="show the kill-switch latch (and a reset risk has not applied yet)")
    status.add_argument("--json", action="store_true", help="the latch document as one JSON object (for scripts)")
    reset = sub.add_parser("reset", help="ask risk to clear the kill-switch latch so trading can resume")
    reset.add_argument("--reason", default="operator reset", help="recorded with the reset")
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura")
    add_risk_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["risk", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

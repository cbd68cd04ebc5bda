"""``aura params show|set|history|diff|rollback``: the live strategy parameters as an operator handles them.

Every command talks to the system running on this AURA_HOME (its run file) or ``AURA_NATS_URL``, as the
operator, and never creates anything on the bus.  ``show`` prints a document ``set`` accepts back, so
``aura params show > p.json``, an edit, and ``aura params set p.json --reason ...`` changes exactly what was
edited; unknown keys are an error that names them.  Every promoted version is signed with the operator's key
and records who promoted it and why; ``rollback`` promotes an older version's parameters as a new version.

Parameters count their lookbacks in bars: ``show`` prints the ``timeframe`` a version was made for, ``set``
accepts one (absent: the live version's), and it is signed into the document's record, because signal and
risk refuse a version made for other bars than the ones they trade.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from aura.strategy.params import FIELDS, PARAMS_TIMEFRAME, StrategyParams, params_digest
from shared.bus import BusNotProvisioned, BusUnavailable, session
from shared.config import Settings, settings_for_command
from shared.credentials import PARAMS_SIGNERS, CredentialError, signing_key, trusted_keys
from shared.live_params import (
    ParamsDocument,
    ParamsError,
    check_history_fits,
    check_loss_bound,
    default_params,
    document_timeframe,
    history,
    last_valid,
    params_from_user,
    promote,
    read_version,
    same_timeframe,
    sign_document,
)


def shown(version: int, doc: ParamsDocument | None, params: StrategyParams,
          timeframe: str = PARAMS_TIMEFRAME) -> dict[str, Any]:
    """The document `show` prints (and `set` accepts back); ``timeframe``: the bars of version 0 (the defaults)."""
    out: dict[str, Any] = {"version": version, "digest": params_digest(params)}
    if doc is not None:
        out.update(promoted_by=doc.promoted_by, reason=doc.reason, promoted_at_ms=doc.promoted_at_ms)
        if doc.record:
            out["record"] = doc.record
    # Beside the parameters, so that an edited `show` given back to `set` keeps the bars they count.
    out["timeframe"] = document_timeframe(doc) if doc is not None else timeframe
    out["params"] = msgspec.to_builtins(params)
    return out


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + "Z" if ms else "-"


def _diff(a: StrategyParams, b: StrategyParams) -> list[tuple[str, Any, Any]]:
    return [(f, getattr(a, f), getattr(b, f)) for f in FIELDS if getattr(a, f) != getattr(b, f)]


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    async with session(settings, "operator") as nc:  # first: "no system running" says so before any key check
        trusted = trusted_keys(settings.keys, "operator", PARAMS_SIGNERS)
        js = nc.jetstream()
        if args.action == "show":
            wanted = args.version
            if wanted is None:
                # The version in force, as signal and risk run it: the newest *valid* one.  A newer refused one
                # (a forgery, a bad document) is named, not shown, and must not keep the operator from editing.
                stored = await history(js, trusted, settings.max_loss_bound)
                wanted, _ = last_valid(stored)
                refused = [(v, why) for v, d, why in stored if d is None and v > wanted]
                if refused:
                    print(f"aura params show: showing version {wanted}, the one in force; newer version(s) "
                          f"{', '.join(str(v) for v, _ in refused)} refused ({refused[-1][1][:200]})",
                          file=sys.stderr)
            params, version, doc = await read_version(js, trusted, wanted)
            if doc is None:  # version 0: the defaults, at the durations of the system's bars (what it runs)
                params = default_params(settings.timeframe)
            print(json.dumps(shown(version, doc, params, settings.timeframe), indent=2))
            return 0
        if args.action == "history":
            for version, doc, problem in await history(js, trusted, settings.max_loss_bound):
                if doc is None:
                    print(f"{version:>4}  REFUSED  {problem}")
                else:
                    # The bars its lookbacks count: a system on other bars refuses the version ([TIMEFRAME]).
                    print(f"{version:>4}  {params_digest(doc.params)}  {document_timeframe(doc):>3}  "
                          f"{_when(doc.promoted_at_ms)}  {doc.promoted_by}  {doc.reason}")
            return 0
        if args.action == "diff":
            a = (await read_version(js, trusted, args.a))[0]
            b = (await read_version(js, trusted, args.b))[0]
            changes = _diff(a, b)
            for name, old, new in changes:
                print(f"{name}: {old} -> {new}")
            if not changes:
                print(f"versions {args.a} and {args.b} hold the same parameters")
            return 0
        # The base is the newest *valid* version: a refused newer document must not stop the operator fixing it.
        version, in_force = last_valid(await history(js, trusted, settings.max_loss_bound))
        # Nothing promoted: the defaults at the durations of the system's bars, as signal and risk run them.
        current = in_force.params if in_force is not None else default_params(settings.timeframe)
        current_tf = document_timeframe(in_force) if in_force is not None else settings.timeframe
        if args.action == "set":
            params, timeframe = params_from_user(args.document, current, current_tf)
            if not same_timeframe(timeframe, current_tf):
                print(f"  the file is for {timeframe} bars, version {version} for {current_tf} bars: parameters "
                      f"it leaves out keep their durations (scaled to {timeframe} bars)", file=sys.stderr)
            reason = args.reason
        else:  # rollback: the old version's parameters with the bars they were made for
            params, _, old_doc = await read_version(js, trusted, args.version)
            timeframe = document_timeframe(old_doc) if old_doc is not None else settings.timeframe
            if old_doc is None:  # version 0: the defaults, at the durations of the system's bars
                params = default_params(settings.timeframe)
            reason = f"rollback to version {args.version}: {args.reason}"
        check_loss_bound(params, settings.max_loss_bound, "(the new one)")  # signal and risk would refuse it
        if not same_timeframe(timeframe, settings.timeframe):  # so would they a document for other bars
            raise ParamsError(f"this document is for {timeframe} bars and the system trades {settings.timeframe} "
                              f"bars (AURA_TIMEFRAME): signal and risk would refuse it ([TIMEFRAME]) and keep the "
                              f"version in force. To move the system to {timeframe} bars, start it with "
                              f"AURA_TIMEFRAME={timeframe} and run this with the same setting")
        check_history_fits(params, settings.snapshot_bars, "(the new one)")  # signal would refuse every cycle
        changes = _diff(current, params)
        relabelled = not same_timeframe(timeframe, current_tf)
        if not changes and not relabelled:
            print(f"no change: version {version} already holds these parameters", file=sys.stderr)
            return 0
        # Daily documents keep the record they always had (none): only another timeframe needs saying.
        record = None if same_timeframe(timeframe, PARAMS_TIMEFRAME) else {"timeframe": timeframe}
        key = signing_key(settings.keys, "operator")
        signed = sign_document(params, key, f"operator:{getpass.getuser()}", reason, record=record)
        new_version = await promote(js, signed, key)
        if relabelled:
            print(f"  timeframe: {current_tf} -> {timeframe}", file=sys.stderr)
        for name, old, new in changes:
            print(f"  {name}: {old} -> {new}", file=sys.stderr)
        print(f"promoted parameter version {new_version} (digest {params_digest(params)}); live services use it "
              "from their next cycle")
        return 0


def _read_document(file: str) -> Any:
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError) as exc:
        raise ParamsError(f"cannot read {file}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    settings = settings_for_command("aura params")
    if settings is None:
        return 2
    try:
        if args.action == "set":  # the operator's own file first (once: it may be a pipe), not "no system running"
            args.document = _read_document(args.file)
        return asyncio.run(_run(settings, args))
    except ParamsError as exc:
        print(f"aura params {args.action}: {exc}", file=sys.stderr)
        return 2
    except (BusUnavailable, BusNotProvisioned, CredentialError) as exc:
        print(f"aura params: {exc}", file=sys.stderr)
        return 1


def add_params_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("params", help="show, set, list (history), compare (diff) or roll back the live "
                                             "strategy parameters")
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print a version (default: the one in force, the newest valid) as a document "
                                       "`set` accepts")
    show.add_argument("--version", type=int, default=None, help="the version to show")
    put = sub.add_parser("set", help="promote the parameters in a JSON file as a new version")
    put.add_argument("file", help="JSON: bare parameters, or what `params show` printed; omitted keys keep "
                                  "their live value; an optional \"timeframe\" (\"1d\", \"4h\", \"1h\") names "
                                  "the bars its lookbacks count (default: the live version's)")
    put.add_argument("--reason", required=True, help="why: recorded with the version")
    sub.add_parser("history", help="every stored version: digest, timeframe, time, who promoted it and why")
    diff = sub.add_parser("diff", help="the parameters that differ between two versions")
    diff.add_argument("a", type=int, help="a version")
    diff.add_argument("b", type=int, help="another version")
    back = sub.add_parser("rollback", help="promote an older version's parameters as a new version")
    back.add_argument("version", type=int, help="the version to return to")
    back.add_argument("--reason", required=True, help="why: recorded with the new version")
    p.set_defaults(func=run)

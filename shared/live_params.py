"""Live strategy parameters: signed, versioned documents in the KV bucket ``aura_params`` (key ``strategy``).

The KV revision is the parameter *version*: the signal service reads the newest valid revision at the start of
a cycle and records it in the target; risk then fetches exactly that revision, so one cycle never mixes two
parameter sets even if a new one is promoted while the cycle is in flight.  Version 0 means "no document
promoted yet": the shipped defaults.

Every document is signed (Ed25519) by the optimizer or the operator and says who promoted it and why.  A
reader verifies the signature against the keys it pinned (``shared.credentials.trusted_keys``) and validates
the parameters; a document that fails is refused, logged ``[PARAMS_REFUSED]`` and counted, and the reader
keeps running on the last valid version (``shared.params_tracker.ParamsTracker``), so a bad document can never
stop the risk tick's stop-loss checks.

Parameters count their lookbacks in bars, so a document says which bars: ``record["timeframe"]`` (absent: the
daily bars the shipped defaults count in, ``PARAMS_TIMEFRAME``; it lives in the signed record rather than in a new
field so documents signed before it existed still verify).  A document is validated against the ranges of its
own timeframe, and a service refuses one made for another timeframe than the one it runs on (``[TIMEFRAME]``):
daily lookbacks read as hourly bars are a different, untested strategy.  Version 0 on such a system is the
shipped defaults scaled to its bars (``default_params``), never the daily values.

A signature says who promoted a document, not which version it is: with the optimizer's or the operator's bus
credential alone (no signing key) one could write an older signed document again as the newest version, a
rollback nobody signed.  So ``promote`` signs each document with the version it becomes (``version``, written
with the bucket's expected last sequence, so it gets exactly that revision), and a reader refuses a document
stored under another version than the one it was signed as.  Documents signed before versions were
bound are believed where the server stored them when they were signed (``shared.kv_chain.LEGACY_SKEW_MS``).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from aura.strategy.params import (
    FIELDS,
    PARAMS_TIMEFRAME,
    StrategyParams,
    history_bars,
    loss_bound,
    rescale,
    timeframe_factor,
    validate_tradable,
)
from shared.bus import params_kv, stored_messages
from shared.contracts import PARAMS_BUCKET
from shared.kv_chain import LEGACY_SKEW_MS, WRONG_LAST_SEQUENCE
from shared.signing import SignatureError, sign_struct, verify_layouts
from shared.state_keys import PARAMS_KEY
from shared.wire import decode_document

# Keys of the document `aura params show` prints around the parameters; `aura params set` accepts them back.
SHOW_KEYS = frozenset({"version", "digest", "promoted_by", "reason", "promoted_at_ms", "signer", "record", "params",
                       "timeframe"})


class ParamsError(ValueError):
    pass


class _ParamsDocumentV1(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A document as signed before it named its version: still verifiable after an upgrade."""

    params: StrategyParams
    promoted_by: str
    reason: str
    promoted_at_ms: int
    record: dict[str, Any] = {}  # the optimizer's gate record (report digest, folds, test values)
    signature: str = ""
    key_id: str = ""


class ParamsDocument(_ParamsDocumentV1, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The version (KV revision) it was promoted as, under its signature (promote() sets it; 0 until then).  A
    # document that verified as the older layout, without the field, reads as OLDER_LAYOUT.
    version: int = 0


OLDER_LAYOUT = -1


def known_timeframe(timeframe: Any, where: str) -> str:
    """``timeframe`` if it names a bar length ("1d", "4h", "1h"); ParamsError naming ``where`` otherwise."""
    if not isinstance(timeframe, str):
        raise ParamsError(f"{where}: timeframe must be a string like \"1d\" or \"1h\", not {timeframe!r}")
    try:
        factor = timeframe_factor(PARAMS_TIMEFRAME, timeframe)
    except (ValueError, ZeroDivisionError) as exc:  # "0h" parses, but is no bar length
        raise ParamsError(f"{where}: unknown timeframe {timeframe!r} (expected one like \"1d\", \"4h\" or "
                          "\"1h\")") from exc
    if not 1 / 31 <= factor <= 1_440:
        # A minute to a month: "1000...0w" parses too, and its factor of 0.0 divided lookbacks by zero.
        raise ParamsError(f"{where}: timeframe {timeframe!r} is not a bar length between 1m and 31d")
    return timeframe


def same_timeframe(a: str, b: str) -> bool:
    """Bars of the same length ("24h" counts like "1d"): what decides whether a lookback means the same."""
    return timeframe_factor(a, b) == 1.0


def record_timeframe(record: dict[str, Any]) -> str:
    """The timeframe a signed record declares; documents from before the key existed were all daily."""
    return known_timeframe(record.get("timeframe", PARAMS_TIMEFRAME), "parameter document record")


def document_timeframe(doc: ParamsDocument) -> str:
    """The timeframe whose bars ``doc``'s lookbacks count (``record["timeframe"]``, absent: 1d)."""
    return record_timeframe(doc.record)


def default_params(timeframe: str = PARAMS_TIMEFRAME) -> StrategyParams:
    """Version 0 on a system running ``timeframe`` bars: the shipped (daily) defaults at the same durations."""
    return rescale(StrategyParams(), PARAMS_TIMEFRAME, timeframe).params


def check_timeframe(doc: ParamsDocument, timeframe: str, version: int) -> None:
    """ParamsError unless ``doc`` was made for ``timeframe`` bars, saying how to fix it."""
    made_for = document_timeframe(doc)
    if same_timeframe(made_for, timeframe):
        return
    raise ParamsError(
        f"parameter version {version} counts its lookbacks in {made_for} bars and this system runs on {timeframe} "
        f"bars: refused, so nothing trades on {made_for} lookbacks counted as {timeframe} bars; promote parameters "
        f"made for {timeframe} (`aura params set FILE --reason ...` with \"timeframe\": \"{timeframe}\" in FILE, "
        f"or `aura optimize --timeframe {timeframe} --promote`)")


def validated(params: StrategyParams, timeframe: str = PARAMS_TIMEFRAME) -> StrategyParams:
    try:
        validate_tradable(params, timeframe)
    except ValueError as exc:
        raise ParamsError(f"invalid parameters: {exc}") from exc
    return params


def params_from_user(doc: Any, base: StrategyParams,
                     base_timeframe: str = PARAMS_TIMEFRAME) -> tuple[StrategyParams, str]:
    """(parameters, timeframe) from a document a person wrote: the bare parameters or what `aura params show`
    printed, either with an optional top-level ``"timeframe"`` (the bars its lookbacks count).

    Unknown keys are an error that names them; keys left out keep their value in ``base`` (the live version,
    counted in ``base_timeframe`` bars), so ``{"top_k": 2}`` changes one knob instead of silently resetting the
    others to the shipped defaults.  Without a timeframe the document is for ``base_timeframe``; with another
    one the left-out keys keep their live *durations* (``base`` is rescaled), since their bar counts would mean
    something else there.  The result is validated with the ranges of its timeframe.
    """
    if not isinstance(doc, dict):
        raise ParamsError("a parameter document is a JSON object")
    doc = dict(doc)
    timeframe = base_timeframe
    if "timeframe" in doc:
        timeframe = known_timeframe(doc.pop("timeframe"), "\"timeframe\" in the parameter document")
        if not same_timeframe(timeframe, base_timeframe):
            base = rescale(base, base_timeframe, timeframe).params
    if "params" in doc:
        unknown = sorted(set(doc) - SHOW_KEYS)
        if unknown:
            raise ParamsError(f"unknown keys {unknown} around 'params' (allowed: {sorted(SHOW_KEYS)})")
        doc = doc["params"]
        if not isinstance(doc, dict):
            raise ParamsError("'params' must be a JSON object")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise ParamsError(f"unknown parameters {unknown}")
    merged = {**msgspec.to_builtins(base), **doc}
    try:
        params = msgspec.convert(merged, type=StrategyParams)
    except msgspec.ValidationError as exc:
        raise ParamsError(f"invalid parameters: {exc}") from exc
    return validated(params, timeframe), timeframe


def check_loss_bound(params: StrategyParams, max_loss_bound: float, version: int | str = "") -> None:
    """ParamsError when ``params`` let the book lose more than the operator's envelope (AURA_MAX_LOSS_BOUND)."""
    bound = loss_bound(params)
    if bound > max_loss_bound:
        raise ParamsError(f"parameter version {version} lets the kill-switch wait for a {bound:.0%} drawdown; the "
                          f"operator's envelope is {max_loss_bound:.0%} (AURA_MAX_LOSS_BOUND)")


def check_history_fits(params: StrategyParams, snapshot_bars: int, version: int | str = "") -> None:
    """ParamsError when ``params`` read more history than each snapshot holds (AURA_SNAPSHOT_BARS): signal would
    refuse every cycle on them ([WINDOW], services/signal), so the system would stop trading the moment they were
    promoted.  Asked before writing, by the operator's CLI and the optimizer alike."""
    needed = history_bars(params)
    if needed > snapshot_bars:
        raise ParamsError(f"parameter version {version} reads {needed} bars of history and each snapshot holds "
                          f"{snapshot_bars} (AURA_SNAPSHOT_BARS): signal would refuse every cycle on them; set "
                          f"AURA_SNAPSHOT_BARS >= {needed} for ingest and here, or choose shorter lookbacks")


def sign_document(params: StrategyParams, key: Ed25519PrivateKey, promoted_by: str, reason: str,
                  record: dict[str, Any] | None = None, now_ms: int | None = None) -> ParamsDocument:
    # Validated with the ranges of the timeframe the record declares: a 30-day momentum is 720 hourly bars.
    timeframe = record_timeframe(record or {})
    doc = ParamsDocument(params=validated(params, timeframe), promoted_by=promoted_by, reason=reason,
                         promoted_at_ms=int(time.time() * 1000) if now_ms is None else now_ms, record=record or {})
    return sign_struct(doc, key)


def verify_document(raw: bytes, trusted: dict[str, Ed25519PublicKey]) -> tuple[ParamsDocument, str]:
    """(document, signer name); ParamsError if it is malformed, unsigned, forged or out of range."""
    try:
        doc = decode_document(raw, ParamsDocument)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ParamsError(f"malformed parameter document: {exc}") from exc
    try:
        signer, older = verify_layouts(doc, raw, (_ParamsDocumentV1,), trusted)
    except SignatureError as exc:
        raise ParamsError(f"parameter document refused: {exc}") from exc
    if older:  # signed before versions were bound: check_version judges it by when it was stored
        doc = msgspec.structs.replace(doc, version=OLDER_LAYOUT)
    validated(doc.params, document_timeframe(doc))
    return doc, signer


PROMOTE_ATTEMPTS = 5  # another promotion landing first between reading the last version and writing is rare


async def last_revision(js: JetStreamContext) -> int:
    """The bucket's last revision, delete markers and refused documents included (0: never written).  It holds
    one key, so its stream's last sequence is that key's."""
    await params_kv(js)  # a clear BusNotProvisioned when the bucket does not exist
    return int((await js.stream_info(f"KV_{PARAMS_BUCKET}")).state.last_seq or 0)


async def promote(js: JetStreamContext, doc: ParamsDocument, key: Ed25519PrivateKey, after: int | None = None) -> int:
    """Sign ``doc`` with ``key`` as the version it becomes and write it; returns that version.  Only the optimizer
    and the operator may (permissions).  The next revision is the last one + 1, and the server refuses the write if
    anything was stored since that was read.  ``after``: the write must go right after that revision (read before
    the caller decided to promote): anything stored since is a ParamsError, not a retry."""
    for _ in range(1 if after is not None else PROMOTE_ATTEMPTS):
        last = after if after is not None else await last_revision(js)
        signed = sign_struct(msgspec.structs.replace(doc, version=last + 1), key)
        try:
            ack = await js.publish(f"$KV.{PARAMS_BUCKET}.{PARAMS_KEY}", msgspec.json.encode(signed),
                                   headers={"Nats-Expected-Last-Sequence": str(last)})
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            continue
        return int(ack.seq)
    if after is not None:
        raise ParamsError(f"the parameter bucket changed after revision {after}: not promoting on top of it")
    raise ParamsError(f"other promotions kept landing first ({PROMOTE_ATTEMPTS} attempts); try again")


def check_version(doc: ParamsDocument, version: int, stored_ms: int) -> None:
    """ParamsError unless ``doc`` is stored as the version it was signed as (module docstring)."""
    if doc.version == OLDER_LAYOUT:
        if stored_ms and abs(stored_ms - doc.promoted_at_ms) <= LEGACY_SKEW_MS:
            return
        raise ParamsError(f"parameter document promoted at {doc.promoted_at_ms} was stored as version {version} "
                          f"at {stored_ms}: written again later (replayed), refused")
    if doc.version != version:
        raise ParamsError(f"parameter document signed as version {doc.version} is stored as version {version}: "
                          "written again (replayed), refused")


async def stored_entry(js: JetStreamContext, revision: int | None) -> tuple[bytes, int, int] | None:
    """(value, version, server time in ms) of ``revision`` (None: the newest entry, a delete marker included);
    None when there is none.  A delete marker's value is empty (``stored_document`` refuses it)."""
    await params_kv(js)
    stream, subject = f"KV_{PARAMS_BUCKET}", f"$KV.{PARAMS_BUCKET}.{PARAMS_KEY}"
    try:
        msg = (await js.get_msg(stream, seq=revision, direct=True) if revision
               else await js.get_msg(stream, subject=subject, direct=True))
    except NotFoundError:
        return None
    if msg.subject != subject:
        return None
    return msg.data or b"", int(msg.seq or 0), _stored_ms(msg)


# AURA never deletes the parameter document: a delete marker is somebody's write with a writer's bus credential,
# and must not read as "nothing promoted" (the shipped defaults) any more than a forged document may.
DELETED = "the parameter document was deleted: refused (AURA never deletes it; the last valid version stays)"


def stored_document(raw: bytes, version: int, stored_ms: int, trusted: dict[str, Ed25519PublicKey],
                    max_loss_bound: float | None = None) -> tuple[ParamsDocument, str]:
    """(document, signer) of the entry stored as ``version``; ParamsError if it is a delete marker, does not verify
    or is not stored as the version it was signed as, or (with ``max_loss_bound``, the system's envelope) lets the
    book lose more than the operator allows.  Every reader that judges a stored version comes through here, so
    signal, risk, the console, the optimizer and the CLI refuse the same versions."""
    if not raw:
        raise ParamsError(DELETED)
    doc, signer = verify_document(raw, trusted)
    check_version(doc, version, stored_ms)
    if max_loss_bound is not None:
        check_loss_bound(doc.params, max_loss_bound, version)
    return doc, signer


def _stored_ms(msg: Any) -> int:
    return int(msg.time.timestamp() * 1000) if getattr(msg, "time", None) is not None else 0


async def read_version(js: JetStreamContext, trusted: dict[str, Ed25519PublicKey], revision: int | None = None,
                       timeframe: str | None = None, max_loss_bound: float | None = None,
                       ) -> tuple[StrategyParams, int, ParamsDocument | None]:
    """(params, version, document) of ``revision`` (None: the newest); ParamsError if it is missing or invalid.
    Version 0 (or an empty bucket when asking for the newest) is the shipped defaults.

    With ``timeframe`` (a service reading for the bars it trades) a document made for other bars is refused too,
    and version 0 is the defaults scaled to ``timeframe`` (what ParamsTracker uses, so the digests agree).  With
    ``max_loss_bound`` one beyond the operator's envelope is refused (``stored_document``)."""
    defaults = StrategyParams() if timeframe is None else default_params(timeframe)
    found = await stored_entry(js, revision) if revision != 0 else None
    if found is None:
        if revision:
            raise ParamsError(f"parameter version {revision} not found")
        if max_loss_bound is not None:  # the shipped defaults are version 0, judged by the envelope as any version
            check_loss_bound(defaults, max_loss_bound, 0)
        return defaults, 0, None
    raw, version, stored_ms = found
    doc, _ = stored_document(raw, version, stored_ms, trusted, max_loss_bound)
    if timeframe is not None:
        check_timeframe(doc, timeframe, version)
    return doc.params, version, doc


async def history(js: JetStreamContext, trusted: dict[str, Ed25519PublicKey], max_loss_bound: float | None = None,
                  ) -> list[tuple[int, ParamsDocument | None, str]]:
    """Every stored version, oldest first: (version, document or None, why it is refused or "").  With
    ``max_loss_bound`` (the system's envelope) a version beyond it is refused too, as signal and risk refuse it.

    Read with direct gets by revision (nats-py's ``kv.history`` would create a consumer), so any principal with
    read rights on the key's revisions may call it: the operator's CLI and the console alike."""
    await params_kv(js)  # a clear BusNotProvisioned when the bucket does not exist
    entries = await stored_messages(js, f"KV_{PARAMS_BUCKET}", f"$KV.{PARAMS_BUCKET}.{PARAMS_KEY}", limit=1000)
    out: list[tuple[int, ParamsDocument | None, str]] = []
    for entry in entries:
        try:
            doc, _ = stored_document(entry.data or b"", int(entry.seq or 0), _stored_ms(entry), trusted,
                                     max_loss_bound)
            out.append((int(entry.seq or 0), doc, ""))
        except ParamsError as exc:
            out.append((int(entry.seq or 0), None, str(exc)))
    return out


def last_valid(stored: list[tuple[int, ParamsDocument | None, str]], timeframe: str | None = None,
               ) -> tuple[int, ParamsDocument | None]:
    """The newest (version, document) of ``history()``'s list that verified and, with ``timeframe``, was made
    for those bars; (0, None) when there is none (the shipped defaults)."""
    for version, doc, _why in reversed(stored):
        if doc is not None and (timeframe is None or same_timeframe(document_timeframe(doc), timeframe)):
            return version, doc
    return 0, None

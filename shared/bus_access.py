"""Who may do what on the bus: the permission matrix, written once, and the nats-server configuration made from it.

Every principal (five services, the optimizer's workers, the read-only console, the operator's CLI and the admin
credential that provisions the bus) authenticates with its own NKey;
anonymous clients are refused.  Each may publish, consume, read or write exactly what the matrix below grants, down
to single subjects, KV keys and durable consumers, and nothing else: the server refuses the rest.  ARCHITECTURE.md shows
the same matrix (``python -m shared.bus_access`` prints it; a test keeps the two equal), and
``tests/security/test_permission_matrix.py`` walks it against a running server with every credential.

Design points, each a defence the threat model asks for:

* Streams, buckets and durable consumers are provisioned with the admin credential (``provision_bus``: `aura up` and
  `aura bus provision`, compose's one-shot ``provision``); no service, and not the operator's everyday CLI credential,
  can create, change or delete one: a stream update (a one-second max_age) empties a bucket as surely as a purge, the
  kill-switch latch with it, and deleting a durable consumer stops its service. In particular no service may create
  consumers: a push consumer makes the server deliver stored messages to any subject its creator names (nats-server
  issue 8274), a way to publish around the publish permissions.
* Reads use direct gets whose subject names what is read (``$JS.API.DIRECT.GET.<stream>.<subject>``), so a
  reader is granted single subjects and single KV keys, not whole streams.
* Each principal gets replies on its own inbox prefix (``_INBOX_<principal>``), so no client can read another's
  request replies.
* Each principal has an account of its own that imports only what it is granted; JetStream and the admin
  credential live in the ``AURA`` account (``server_config`` says why: a pull request's reply subject).
* The console (the dashboard and the alerts) reads whole streams by sequence and consumes the events through its
  own durable consumer; it may publish nothing, write nothing, manage nothing.  It serves a web page, so it is the
  principal most exposed: if it is compromised, the attacker can read what the dashboard shows and, as any
  credential can, load the server with requests (README, "Security"), but change nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from shared.contracts import (
    CANDLE_BUCKET,
    CONSUMERS,
    MAX_PAYLOAD,
    OPT_INPUTS_BUCKET,
    PARAMS_BUCKET,
    STATE_BUCKET,
    ApprovedPlan,
    CycleAborted,
    DataReady,
    DataStale,
    DeadLetter,
    FillMsg,
    OptResult,
    OptTask,
    PortfolioSnapshot,
    ServiceEvent,
    TargetPortfolio,
    stream_of,
)
from shared.credentials import PIPELINE, PRINCIPALS
from shared.state_keys import (
    ADOPT_KEY,
    BAR_SENT_KEY,
    DECISION_KEY,
    HALT_KEY,
    INGEST_KEYS,
    INGEST_SOURCES,
    PARAMS_KEY,
    RESET_KEY,
    SETTLE_KEY,
    SIGNAL_STATE_KEY,
    TIMEFRAMES,
)

# Access words (the cells of the matrix).
PUBLISH, CONSUME, READ, SUBSCRIBE, WRITE, MANAGE = "publish", "consume", "read", "subscribe", "write", "manage"
SERVICES = PIPELINE


def inbox_prefix(principal: str) -> str:
    return f"_INBOX_{principal}"


@dataclass(frozen=True)
class Resource:
    """One row of the matrix: a subject, a KV key pattern, an object bucket, or stream management."""

    label: str
    kind: str  # "subject" | "stream" | "kv" | "object" | "admin"
    grants: dict[str, tuple[str, ...]]  # principal -> access words
    subject: str = ""
    bucket: str = ""
    keys: tuple[str, ...] = ()  # KV: the exact keys (never a wildcard: shared/state_keys.py says why)
    revisions: bool = False  # KV: readers may also read older revisions by sequence (parameter versions)

    def nats(self, principal: str) -> tuple[list[str], list[str]]:
        """(publish, subscribe) subjects granting ``principal`` its access to this resource."""
        pub: list[str] = []
        sub: list[str] = []
        for access in self.grants.get(principal, ()):
            if self.kind == "subject":
                stream = stream_of(self.subject) if access in (READ, CONSUME) else ""
                if access == PUBLISH:
                    pub.append(self.subject)
                elif access == SUBSCRIBE:
                    sub.append(self.subject)
                elif access == READ:
                    pub.append(f"$JS.API.DIRECT.GET.{stream}.{self.subject}")
                elif access == CONSUME:
                    spec = CONSUMERS[principal]
                    pub += [f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}",
                            f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}",
                            f"$JS.ACK.{spec.stream}.{spec.durable}.>"]
            elif self.kind == "stream" and access == READ:
                # Every message of the stream by sequence (and the newest of any of its subjects), and its info
                # (first and last sequence): a reader that pages through history, never a consumer.
                pub += [f"$JS.API.DIRECT.GET.{self.bucket}", f"$JS.API.DIRECT.GET.{self.bucket}.>",
                        f"$JS.API.STREAM.INFO.{self.bucket}"]
            elif self.kind == "kv":
                stream = f"KV_{self.bucket}"
                pub.append(f"$JS.API.STREAM.INFO.{stream}")
                if access == WRITE:
                    pub += [f"$KV.{self.bucket}.{key}" for key in self.keys]
                elif access == READ:
                    pub += [f"$JS.API.DIRECT.GET.{stream}.$KV.{self.bucket}.{key}" for key in self.keys]
                    if self.revisions:
                        pub.append(f"$JS.API.DIRECT.GET.{stream}")
            elif self.kind == "object":
                stream = f"OBJ_{self.bucket}"
                pub += [f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]
                if access == WRITE:
                    # nats-py's ObjectStore.put binds the bucket, looks the name up, and purges the chunks of an
                    # object it replaces.
                    pub += [f"$O.{self.bucket}.>", f"$JS.API.STREAM.INFO.{stream}",
                            f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.STREAM.PURGE.{stream}"]
            elif self.kind == "admin" and access == MANAGE:
                pub.append("$JS.API.>")
        return pub, sub


def _subject(subject: str, **grants: tuple[str, ...]) -> Resource:
    return Resource(subject, "subject", dict(grants), subject=subject)


# The streams the console reads whole: the trading pipeline's record, nothing else (not the optimizer's queues).
CONSOLE_STREAMS = ("AURA_DATA", "AURA_TARGETS", "AURA_PLANS", "AURA_EXEC", "AURA_DLQ", "AURA_EVENTS")


def _stream(name: str, **grants: tuple[str, ...]) -> Resource:
    return Resource(f"stream `{name}`: every message, by sequence", "stream", dict(grants), bucket=name)


def _kv(bucket: str, keys: tuple[str, ...], revisions: bool = False, label: str = "",
        **grants: tuple[str, ...]) -> Resource:
    if any("*" in k or ">" in k for k in keys):
        raise ValueError(f"KV grants name exact keys, not patterns: {keys}")
    label = label or ", ".join(f"`{k}`" for k in keys)
    # Reading older revisions by sequence is a direct get on the whole bucket stream: the row says so.
    label += "; readers: the bucket by revision" if revisions else ""
    return Resource(f"KV `{bucket}` {'key' if len(keys) == 1 else 'keys'} {label}", "kv", dict(grants), bucket=bucket,
                    keys=keys, revisions=revisions)


R, W, P, C, S = (READ,), (WRITE,), (PUBLISH,), (CONSUME,), (SUBSCRIBE,)
RW = (READ, WRITE)

MATRIX: tuple[Resource, ...] = (
    _subject(DataReady.SUBJECT, ingest=P, signal=C, risk=R, executor=R, operator=R),
    _subject(DataStale.SUBJECT, ingest=P, risk=(SUBSCRIBE, READ), executor=R, operator=R),
    _subject(TargetPortfolio.SUBJECT, signal=P, risk=C, operator=R),
    _subject(ApprovedPlan.SUBJECT, risk=P, executor=C, operator=R),
    *(_subject(f"{CycleAborted.SUBJECT}.{stage}", **{stage: P}, executor=C, operator=R)
      for stage in ("ingest", "signal", "risk")),
    _subject(FillMsg.SUBJECT, executor=P, operator=R),
    _subject(PortfolioSnapshot.SUBJECT, executor=P, ingest=S, risk=R, operator=R),
    *(_subject(f"{DeadLetter.SUBJECT}.{svc}", **{svc: P}, operator=R) for svc in SERVICES),
    # Each service tells of its own events only: the subject, not the message, says who is speaking.
    *(_subject(f"{ServiceEvent.SUBJECT}.{svc}", **{svc: P}, console=C, operator=R) for svc in SERVICES),
    # The dashboard pages through the trading record (recent plans, fills, snapshots, dead letters, events).
    *(_stream(name, console=R, operator=R) for name in CONSOLE_STREAMS if name != "AURA_DATA"),
    # Risk and the executor check a target or an abort against ingest's newest *valid* announcement, so they may
    # step back past a malformed message on the data subjects (which they already read) by sequence.
    _stream("AURA_DATA", console=R, operator=R, risk=R, executor=R),
    Resource(f"object store `{CANDLE_BUCKET}`", "object",
             {"ingest": W, "signal": R, "risk": R, "console": R, "operator": R}, bucket=CANDLE_BUCKET),
    _kv(PARAMS_BUCKET, (PARAMS_KEY,), revisions=True, optimizer=RW, operator=RW, signal=R, risk=R, console=R),
    # Exact keys only: a wildcard would let a writer fill the shared bucket with keys of its own (state_keys.py).
    _kv(STATE_BUCKET, INGEST_KEYS, label=f"`ingest.cursor.<source>.<timeframe>`, `ingest.held.<timeframe>` "
        f"({len(INGEST_KEYS)} keys: sources {', '.join(INGEST_SOURCES)}; timeframes {', '.join(TIMEFRAMES)})",
        ingest=RW, operator=R),
    _kv(STATE_BUCKET, (SIGNAL_STATE_KEY,), signal=RW, operator=R),
    # Risk's two keys are chained (shared/kv_chain.py): a reader checks that the newest value is the first one after
    # the revision it names, by sequence, so their readers may read the bucket by revision (none of its keys is
    # secret; none of this is a write).  The console shows the kill-switch latch.
    _kv(STATE_BUCKET, (HALT_KEY,), revisions=True, risk=RW, console=R, operator=R),
    # What risk's plans on the current decision bar sent (the participation cap's count, services/risk/bar_budget.py):
    # risk's own memory across a restart; nobody else needs it, the operator may look.
    _kv(STATE_BUCKET, (BAR_SENT_KEY,), revisions=True, risk=RW, operator=R),
    # Reset (applied by risk), adopt and settle (applied by the executor) requests, signed by the operator; each read
    # only by the service that applies it.
    _kv(STATE_BUCKET, (RESET_KEY,), operator=RW, risk=R),
    _kv(STATE_BUCKET, (ADOPT_KEY,), operator=RW, executor=R),
    _kv(STATE_BUCKET, (SETTLE_KEY,), operator=RW, executor=R),
    # The optimizer's latest decision (issue 10), shown by the console.
    _kv(STATE_BUCKET, (DECISION_KEY,), optimizer=RW, console=R, operator=R),
    # The optimizer's work queue (issue 10): the coordinator (the optimizer principal) publishes tasks, writes their
    # inputs and reads the results; workers take tasks, read the inputs, answer, and dead-letter what fails.
    # Workers may do nothing else: no parameters, no state, no trading subject.
    _subject(OptTask.SUBJECT, optimizer=P, worker=C, operator=R),
    _subject(OptResult.SUBJECT, worker=P, optimizer=C, operator=R),
    _subject(f"{DeadLetter.SUBJECT}.worker", worker=P, operator=R),
    Resource(f"object store `{OPT_INPUTS_BUCKET}`", "object", {"optimizer": W, "worker": R, "operator": R},
             bucket=OPT_INPUTS_BUCKET),
    Resource("JetStream management: create/update streams, buckets, durable consumers", "admin",
             {"admin": (MANAGE,)}),
)

# The admin credential manages JetStream but may not destroy what the system keeps as its record.
ADMIN_DENY = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")


@dataclass(frozen=True)
class Permissions:
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    publish_deny: list[str] = field(default_factory=list)


def _grants(principal: str) -> tuple[list[str], list[str]]:
    """(publish, subscribe) subjects of ``principal``'s grants as JetStream's account names them."""
    pub: list[str] = []
    sub: list[str] = []
    for row in MATRIX:
        p, s = row.nats(principal)
        pub += [x for x in p if x not in pub]
        sub += [x for x in s if x not in sub]
    return pub, sub


# JetStream's API as each account sees it.  The AURA account (the admin credential) holds JetStream and calls it
# by its own name; every other account reaches the calls it was granted through imports renamed to this prefix:
# under their own name the server's answer for an account without JetStream ("JetStream not enabled", sent to
# every ``$JS.API`` request there) would shadow them.  shared/bus.py's connections use it.
JS_API = "$JS.API"
IMPORTED_JS_API = "JS.AURA.API"


def api_prefix(principal: str) -> str:
    return JS_API if principal == "admin" else IMPORTED_JS_API


def local_subject(principal: str, subject: str) -> str:
    """``subject`` (as JetStream's account names it) as ``principal``'s own account names it."""
    if subject.startswith(JS_API + ".") and principal != "admin":
        return IMPORTED_JS_API + subject[len(JS_API):]
    return subject


def permissions(principal: str) -> Permissions:
    """What ``principal``'s user may publish and subscribe to, in its own account's names."""
    pub, sub = _grants(principal)
    deny = list(ADMIN_DENY) if principal == "admin" else []
    return Permissions([local_subject(principal, x) for x in pub], [f"{inbox_prefix(principal)}.>", *sub], deny)


@dataclass(frozen=True)
class TlsFiles:
    cert_file: str
    key_file: str


# JetStream (every stream, bucket and consumer) lives in this account, with the admin credential alone.  Each other
# principal has an account of its own that imports from it exactly what its permissions name, and nothing else.
JS_ACCOUNT = "AURA"


def covers(pattern: str, subject: str) -> bool:
    """Whether NATS subject pattern ``pattern`` matches every subject ``subject`` (itself a pattern) can."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and (tok != s[i] or s[i] in ("*", ">"))):
            return False
    return len(p) == len(s)


def _widest(subjects: list[str]) -> list[str]:
    """``subjects`` once each, without those another one covers: two imports that both match would forward a
    message twice (a KV write made twice is two revisions)."""
    unique = list(dict.fromkeys(subjects))
    return [s for s in unique if not any(o != s and covers(o, s) for o in unique)]


def account_imports(principal: str) -> tuple[list[str], list[str]]:
    """(service imports, stream imports) of ``principal``'s account, as JetStream's account names them: what it
    publishes (plain subjects, KV and object writes, the JetStream API calls it may make, its acks) and what it
    subscribes to, its inbox aside."""
    pub, sub = _grants(principal)
    return _widest(pub), sub


def publishers(subject: str) -> list[str]:
    """Who may publish on plain ``subject``: a subscriber's account imports it from theirs (a message that
    reached JetStream's account through a service import goes no further, to no other account)."""
    return [p for row in MATRIX if row.kind == "subject" and row.subject == subject
            for p, access in row.grants.items() if PUBLISH in access]


# Connections each principal's account may hold at once, and subscriptions per connection (nats-server applies an
# account's max_subscriptions to each of its connections).  Without a per-account cap one
# credential (a worker's, the most widely copied; the read-only console's) could open every connection the server
# admits and keep every service from reconnecting after a blip, the executor's stop-loss exits included.  Each
# service runs one process with one connection (two while a restart overlaps); workers scale out (compose --scale);
# the operator runs several CLI commands at once.  The caps together stay well under the server's total, so no one
# account, nor all of them, can fill it.
ACCOUNT_CONNECTIONS = {"worker": 256, "operator": 64}
DEFAULT_ACCOUNT_CONNECTIONS = 32
ACCOUNT_SUBSCRIPTIONS = 4096  # per connection: a service holds a handful; a flood of them costs server memory
MAX_CONNECTIONS = 1024


def account_limits(principal: str) -> dict[str, int]:
    return {"max_connections": ACCOUNT_CONNECTIONS.get(principal, DEFAULT_ACCOUNT_CONNECTIONS),
            "max_subscriptions": ACCOUNT_SUBSCRIPTIONS}


def server_config(users: dict[str, str], host: str, port: int, store_dir: str, tls: TlsFiles | None = None,
                  monitor_port: int | None = None) -> str:
    """The nats-server configuration (JSON is valid NATS config syntax): NKey users with their permissions, each
    in an account of its own, JetStream in the ``AURA`` account, payload and connection limits, optional TLS.
    ``users``: principal -> public NKey.

    Why accounts and not only permissions: a consumer names the reply subject of its pull requests, and the
    server checks no permission on it.  In one account, a pull whose reply names ``$JS.API.CONSUMER.DELETE...`` or
    ``$JS.API.STREAM.PURGE...`` had the server send its empty "no messages" status there, which JetStream ran as a
    management request with the account's full rights: any consumer could delete another service's consumer or
    purge a stream.  Across accounts the server answers on the requester's own account, where only its own
    imports are, so a reply subject reaches nothing the principal could not publish itself.  The exports name
    the accounts allowed to import them, so the server, not this file alone, holds each account to its rights."""
    def user(principal: str) -> dict[str, object]:
        perm = permissions(principal)
        publish: dict[str, list[str]] = {"allow": perm.publish}
        if perm.publish_deny:
            publish["deny"] = perm.publish_deny
        return {"nkey": users[principal], "permissions": {"publish": publish, "subscribe": {"allow": perm.subscribe}}}

    accounts: dict[str, dict[str, object]] = {}
    exports: dict[tuple[str, str, str], list[str]] = {}  # (exporting account, kind, subject) -> importing accounts
    for principal in PRINCIPALS:
        if principal == "admin":
            continue
        services, streams = account_imports(principal)
        imports: list[dict[str, object]] = []
        for subject in services:
            exports.setdefault((JS_ACCOUNT, "service", subject), []).append(principal)
            entry: dict[str, object] = {"service": {"account": JS_ACCOUNT, "subject": subject}}
            if local_subject(principal, subject) != subject:
                entry["to"] = local_subject(principal, subject)
            imports.append(entry)
        for subject in streams:  # a plain subscription: straight from the publisher's account
            for source in publishers(subject):
                exports.setdefault((source, "stream", subject), []).append(principal)
                imports.append({"stream": {"account": source, "subject": subject}})
        accounts[principal] = {"users": [user(principal)], "imports": imports, "limits": account_limits(principal)}
    accounts[JS_ACCOUNT] = {"jetstream": "enabled", "users": [user("admin")], "limits": {
        # Connections only: JetStream's own subscriptions (streams, consumers, the imports it serves) live here.
        "max_connections": DEFAULT_ACCOUNT_CONNECTIONS}}
    for (source, kind, subject), importers in exports.items():
        export: dict[str, object] = {kind: subject, "accounts": importers}
        if kind == "service" and subject.startswith(f"{JS_API}.CONSUMER.MSG.NEXT."):
            export["response_type"] = "stream"  # a pull is answered with up to a batch of messages
        accounts[source].setdefault("exports", []).append(export)  # type: ignore[union-attr]
    conf: dict[str, object] = {
        "host": host, "port": port,
        "max_payload": MAX_PAYLOAD,
        "max_connections": MAX_CONNECTIONS,
        "max_control_line": 4096,
        "jetstream": {"store_dir": store_dir, "max_file_store": 8 * 1024**3, "max_memory_store": 256 * 1024**2},
        "authorization": {"timeout": 2},
        "accounts": accounts,
    }
    if tls is not None:
        conf["tls"] = {"cert_file": tls.cert_file, "key_file": tls.key_file, "timeout": 2}
    if monitor_port is not None:
        conf["http"] = f"127.0.0.1:{monitor_port}"
    return json.dumps(conf, indent=2) + "\n"


def matrix_markdown() -> str:
    """The permission matrix as the Markdown table ARCHITECTURE.md carries."""
    head = "| resource | " + " | ".join(PRINCIPALS) + " |"
    rule = "|---|" + "---|" * len(PRINCIPALS)
    rows = []
    for row in MATRIX:
        label = row.label if row.kind != "subject" else f"`{row.label}`"
        cells = [", ".join(row.grants.get(p, ())) or "·" for p in PRINCIPALS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *rows]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(matrix_markdown())

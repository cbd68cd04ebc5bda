"""Structured logging for every AURA process.

One JSON object per line on stderr, so that `journalctl` or `docker logs` piped through `jq` is enough to
find any cycle.  Permanent diagnostic tags (``[BOOT]``, ``[RISK_TICK]``, ``[SL_CHECK]``, ``[SYNC_GUARD]``, ...)
are part of the message text *and* a separate ``tag`` field, so a plain ``grep '\\[BOOT\\]'`` keeps working.

Secrets never reach a log line: every record passes through :func:`redact`, which masks values of keys that
look like credentials and any string registered with :func:`register_secret` (the executor registers the
exchange key and secret at start-up).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_SECRET_KEY_HINTS = ("secret", "api_key", "apikey", "password", "private_key", "token", "signature_key")
_REGISTERED_SECRETS: set[str] = set()
REDACTED = "***REDACTED***"


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line from now on."""
    if value and len(value) >= 4:
        _REGISTERED_SECRETS.add(value)


def redact(value: Any, key: str = "") -> Any:
    lowered = key.lower()
    if lowered and any(h in lowered for h in _SECRET_KEY_HINTS) and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        for secret in _REGISTERED_SECRETS:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        tag = getattr(record, "tag", None)
        msg = record.getMessage()
        if tag and not msg.startswith(f"[{tag}]"):
            msg = f"[{tag}] {msg}"
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": redact(msg),
        }
        if tag:
            payload["tag"] = tag
        fields = getattr(record, "fields", None)
        if fields:
            payload.update(redact(dict(fields)))
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str, separators=(",", ":"))


def setup_logging(service: str, level: str | None = None) -> logging.Logger:
    """Configure the root logger once per process and return the service logger."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("AURA_LOG_LEVEL", "INFO")).upper())
    # Third-party chatter (uvicorn access logs, nats reconnect spam) stays at WARNING.
    for noisy in ("uvicorn.access", "nats", "asyncio", "httpx", "httpcore", "urllib3", "ccxt"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(f"aura.{service}")


def log(logger: logging.Logger, level: int, tag: str | None, msg: str, **fields: Any) -> None:
    """Log ``msg`` with a permanent ``tag`` and structured ``fields``."""
    logger.log(level, msg, extra={"tag": tag, "fields": fields})


def info(logger: logging.Logger, tag: str | None, msg: str, **fields: Any) -> None:
    log(logger, logging.INFO, tag, msg, **fields)


def warn(logger: logging.Logger, tag: str | None, msg: str, **fields: Any) -> None:
    log(logger, logging.WARNING, tag, msg, **fields)


def error(logger: logging.Logger, tag: str | None, msg: str, **fields: Any) -> None:
    log(logger, logging.ERROR, tag, msg, **fields)

"""A tiny threaded HTTP server on 127.0.0.1 (port 0) that counts every request and can misbehave on demand.

Subclasses implement ``route(path, query) -> Reply``.  Fault switches (``set_fault``) apply to every path
or only to paths containing a substring, for a number of requests or until cleared:

* ``down``: the connection is closed without an answer (the client sees a network error);
* ``404`` / ``500`` / ``429`` (with ``Retry-After``): that status with a JSON error body;
* anything else (``corrupt_zip``, ``bad_checksum``...) is handed to the subclass's ``route``.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

_GENERIC_FAULTS = ("404", "429", "500")  # answered with an error status; "down" drops the connection


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(doc, separators=(",", ":")).encode(), "application/json", headers or {})


@dataclass
class _Fault:
    mode: str
    match: str | Callable[[str], bool] | None
    remaining: int | None
    retry_after: str

    def applies(self, path: str) -> bool:
        if self.match is None:
            return True
        if callable(self.match):
            return bool(self.match(path))
        return self.match in path


class FakeServer:
    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self.counts: Counter[str] = Counter()  # per route kind (see ``kind_of``)
        self.paths: list[str] = []  # every request path with its query, in arrival order
        self._last_retry_after = "0"

    # -- lifecycle
    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real CDNs and APIs

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- counters and faults
    @property
    def total(self) -> int:
        with self._lock:
            return len(self.paths)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()

    def set_fault(
        self, mode: str, match: str | Callable[[str], bool] | None = None, times: int | None = None,
        retry_after: str = "0",
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(mode, match, times, retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def fault_for(self, path: str) -> str | None:
        """The active fault for ``path`` (consuming one use of a counted fault), if any."""
        with self._lock:
            for fault in self._faults:
                if fault.applies(path) and (fault.remaining is None or fault.remaining > 0):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    self._last_retry_after = fault.retry_after
                    return fault.mode
        return None

    def kind_of(self, path: str) -> str:
        return path

    def route(self, path: str, query: dict[str, str], fault: str | None) -> Reply:
        """Answer one GET; ``fault`` is an app-specific fault mode active for this path (or None)."""
        raise NotImplementedError

    # -- request handling
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        with self._lock:
            self.paths.append(handler.path)
            self.counts[self.kind_of(parts.path)] += 1
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        fault = self.fault_for(parts.path)
        if fault == "down":
            handler.close_connection = True
            return
        if fault in _GENERIC_FAULTS:
            headers = {"Retry-After": self._last_retry_after} if fault == "429" else {}
            reply = Reply.json({"code": -1, "msg": f"fake fault {fault}"}, int(fault), headers)
        else:
            try:
                reply = self.route(parts.path, query, fault)
            except Exception as exc:  # a bug in a fake must be loud in the test, not a hung client
                reply = Reply.json({"error": f"fake crashed: {exc!r}"}, 500)
        handler.send_response(reply.status)
        handler.send_header("Content-Type", reply.content_type)
        handler.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(reply.body)

"""A stranger on a health port: a tiny HTTP server that answers every GET with 200 and a health-app-like body.

It plays another system's service (or anything else) sitting on the port a launcher or `aura status` would
otherwise take for its own; it counts the requests it got, so a test can say nobody even asked it.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aura.natsd import free_port


class FakeOccupant:
    """Answers GET on 127.0.0.1:``port`` with 200 and ``{"service": name, "ready": true, ...}``."""

    def __init__(self, port: int, service: str) -> None:
        self.requests = 0
        occupant = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                occupant.requests += 1
                body = json.dumps({"service": service, "ready": True, "status": "alive",
                                   "checks": {"bus": "connected"}, "pid": 1, "run_id": "someone-else"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextlib.contextmanager
def occupants(ports: dict[str, int]) -> Iterator[dict[str, FakeOccupant]]:
    """A FakeOccupant on each of ``ports`` (service -> port) that can be bound; a port something else holds
    already stays with that something (it is an occupant too, just not ours to count)."""
    placed: dict[str, FakeOccupant] = {}
    try:
        for service, port in ports.items():
            with contextlib.suppress(OSError):
                placed[service] = FakeOccupant(port, service)
        yield placed
    finally:
        for occupant in placed.values():
            occupant.close()


def free_ports(names: Iterable[str]) -> dict[str, int]:
    """A free port for each of ``names``, all different (aura.natsd.free_port never repeats one)."""
    return {name: free_port() for name in names}

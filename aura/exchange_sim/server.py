"""The simulator behind one real HTTP socket (stdlib ThreadingHTTPServer), startable in-process or from the CLI.

One port serves every face of the one venue, told apart by path: ``/data/...`` the data.binance.vision
archive, ``/coingecko/api/v3/...`` CoinGecko, ``/_sim/...`` the control endpoints, everything else the Binance
Spot API (market data and trading).  So ``base_url`` is at once ``AURA_BINANCE_ARCHIVE_URL``,
``AURA_BINANCE_API_URL`` and ``AURA_EXCHANGE_API_URL``, and ``coingecko_url`` is ``AURA_COINGECKO_URL``.

Transport faults live here because they are about the transport: a response held back past the client's
timeout, or a connection closed after the order was already booked.  Content faults go to the face.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aura.exchange_sim.api import BinanceApi
from aura.exchange_sim.archive import Archive
from aura.exchange_sim.clock import parse_ms
from aura.exchange_sim.coingecko import CoinGecko
from aura.exchange_sim.config import SimConfig
from aura.exchange_sim.engine import ExchangeSim
from aura.exchange_sim.errors import internal_error, too_many_requests
from aura.exchange_sim.faults import CONTENT_KINDS, Fault
from aura.exchange_sim.reply import Response, json_response

CONTROL_PREFIX = "/_sim/"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: SimServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-request (killed, timed out) is what a venue sees every day, not a server
        # error: no traceback for it (a rehearsal that kill -9s the executor would print one per kill).
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: ccxt's pooled connections stay open between requests
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK = 40 ms each
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr would drown test output

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _send(self, resp: Response) -> None:
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for key, value in resp.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(resp.body)
        except OSError:
            self.close_connection = True  # the client already gave up (timeout fault): nothing to do

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _handle(self, method: str) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length > 0 else ""
        except (ValueError, OSError):
            self._send(json_response({"code": -1100, "msg": "Malformed request."}, 400))
            self.close_connection = True
            return
        if split.path.startswith(CONTROL_PREFIX):
            self._send(owner.control(method, split.path, body))
            return
        sim = owner.sim
        sim.faults.count_request(method, split.path, split.query)
        fault = sim.faults.take(method, split.path)
        if fault is not None and not fault.process:
            if fault.kind == "rate_limit":
                err = too_many_requests(fault.retry_after_s)
                self._send(json_response(err.body(), err.status, err.headers))
            elif fault.kind == "http_error":
                self._send_http_error(fault)
            else:  # timeout / drop before the request reached the engine
                if fault.kind == "timeout":
                    owner.stopping.wait(fault.delay_s)
                self._drop()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        resp = owner.route(method, split.path, split.query, body, headers, fault)
        if fault is None or fault.kind in CONTENT_KINDS:
            self._send(resp)
        elif fault.kind == "http_error":  # processed, then a 5xx: Binance's "execution status unknown"
            self._send_http_error(fault)
        elif fault.kind == "timeout":
            owner.stopping.wait(fault.delay_s)
            self._send(resp)
        else:
            self._drop()

    def _send_http_error(self, fault: Fault) -> None:
        if fault.body is not None:
            self._send(Response(fault.status, fault.body.encode(), content_type="text/plain"))
        else:
            self._send(json_response(internal_error().body(), fault.status))


class SimServer:
    """``with SimServer(ExchangeSim(cfg)) as srv: ccxt against srv.base_url``; ``srv.sim`` is the live engine."""

    def __init__(self, sim: ExchangeSim | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 config: SimConfig | None = None) -> None:
        self.sim = sim or ExchangeSim(config)
        self.api = BinanceApi(self.sim)
        self.archive = Archive(self.sim.store, self.sim.clock.now_ms)
        self.coingecko = CoinGecko(self.sim.market)
        self.stopping = threading.Event()
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The Binance API and the archive (AURA_EXCHANGE_API_URL, AURA_BINANCE_API_URL, ..._ARCHIVE_URL)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def coingecko_url(self) -> str:
        return self.base_url + CoinGecko.PREFIX

    def route(self, method: str, path: str, query: str, body: str, headers: dict[str, str],
              fault: Fault | None) -> Response:
        """The face that owns ``path`` answers."""
        if path.startswith(Archive.PREFIX) or path.startswith(CoinGecko.PREFIX + "/"):
            if method != "GET":
                return json_response({"error": "only GET"}, 405)
            if path.startswith(Archive.PREFIX):
                return self.archive.handle(path, fault)
            with self.sim.lock:  # the forming candle reads the current (maybe pinned) price
                return self.coingecko.handle(path[len(CoinGecko.PREFIX):], dict(parse_qsl(query)), fault)
        return self.api.handle(method, path, query, body, headers, fault)

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"exchange-sim:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        with self._httpd.conn_lock:
            open_conns = list(self._httpd.connections)
        for conn in open_conns:  # idle keep-alive connections would keep handler threads blocked in recv
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- control endpoints (not Binance API; loopback test harness only) -----------------------------------

    def control(self, method: str, path: str, body: str) -> Response:
        sim = self.sim
        try:
            data = json.loads(body) if body.strip() else {}
            route = (method, path[len(CONTROL_PREFIX):].rstrip("/"))
            if route == ("GET", "state"):
                return json_response(sim.state())
            if route == ("GET", "requests"):
                return json_response(sim.faults.counts())
            if route == ("DELETE", "requests"):
                sim.faults.reset_counts()
            elif route == ("POST", "faults"):
                for raw in data if isinstance(data, list) else [data]:
                    sim.faults.add(Fault.from_dict(raw))
            elif route == ("DELETE", "faults"):
                sim.faults.clear()
            elif route == ("POST", "clock"):  # {"now_ms": ms or ISO, "speed": x real time}
                if "now_ms" in data:
                    sim.set_now(parse_ms(data["now_ms"]) or 0)
                if "speed" in data:
                    sim.clock.set_speed(float(data["speed"]))
            elif route == ("POST", "prices"):
                if "clock_ms" in data:
                    sim.set_clock(int(data["clock_ms"]))
                if data.get("advance"):
                    sim.advance(int(data["advance"]))
                for symbol, price in (data.get("prices") or {}).items():
                    sim.set_price(symbol, str(price))
            elif route == ("POST", "balances"):
                for asset, amount in data.items():
                    sim.set_balance(asset, str(amount))
            elif route == ("POST", "config"):
                sim.configure(**data)
            elif route == ("POST", "step"):
                sim.step()
            else:
                return json_response({"error": f"unknown control endpoint {method} {path}"}, 404)
            return json_response({"ok": True, "faults": sim.faults.pending()})
        except Exception as exc:  # bad control input is the caller's bug: say what, never crash the server
            return json_response({"error": f"{type(exc).__name__}: {exc}"}, 400)

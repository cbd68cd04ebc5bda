"""free_port hands out distinct ports: a stack takes one per service in a row, and the kernel may offer a
closed probe's port again (CI once gave ingest and the console the same one, and ingest could not start)."""

from __future__ import annotations

import socket

from aura import ports
from aura.ports import free_port


def test_ports_taken_in_a_row_are_distinct_and_free() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # nothing took it meanwhile: it is bindable


def test_a_port_the_kernel_offers_again_is_skipped(monkeypatch) -> None:
    """The kernel's answer is forced to repeat: the second caller gets another port, never the same one."""
    first = free_port()
    offers = iter([first, first, first])
    real_socket = socket.socket

    class Repeating(real_socket):  # type: ignore[misc, valid-type]
        def getsockname(self) -> tuple[str, int]:
            host, port = super().getsockname()
            return host, next(offers, port)

    monkeypatch.setattr(ports.socket, "socket", Repeating)
    second = free_port()
    assert second != first

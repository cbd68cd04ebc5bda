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
    monkeypatch.delenv("AURA_PORT_RANGE", raising=False)  # the kernel's ports, not a band's
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


def test_ports_come_from_aura_port_range_when_it_is_set(monkeypatch) -> None:
    """Two processes picking ports side by side (the suite's parallel workers) each draw from a band of their own,
    so neither hands out a port the other just did."""
    import pytest

    monkeypatch.setenv("AURA_PORT_RANGE", "23000-23099")
    drawn = [free_port() for _ in range(50)]
    assert len(set(drawn)) == 50 and all(23000 <= p <= 23099 for p in drawn)
    for bad in ("23000", "99-200", "30000-20000"):
        monkeypatch.setenv("AURA_PORT_RANGE", bad)
        with pytest.raises(ValueError, match="AURA_PORT_RANGE"):
            free_port()


def test_a_process_handing_out_thousands_of_ports_never_exhausts_its_band(monkeypatch) -> None:
    """Found by the CI run: remembering every port ever handed out, a test worker ran out of its band of 2,000
    after a few hundred tests.  Only the newest ports.RECENT are remembered, and none of those comes again."""
    monkeypatch.setenv("AURA_PORT_RANGE", "24000-26047")  # twice RECENT
    drawn = [free_port() for _ in range(3 * ports.RECENT)]
    assert all(24000 <= p <= 26047 for p in drawn)
    for i in range(0, len(drawn) - ports.RECENT, 97):
        window = drawn[i:i + ports.RECENT]
        assert len(set(window)) == len(window)

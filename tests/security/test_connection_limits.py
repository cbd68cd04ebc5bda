"""One credential cannot take the connections every other principal needs (a real nats-server, as `aura up`
configures it).

The attack: with only a server-wide cap, a compromised console (or a worker, whose credential is copied to every
machine that runs one) opened all 512 connections the server admitted; every service that then reconnected
after a blip was refused, the executor and its stop-loss exits included, and so was the operator's CLI.  Now each
principal's account holds a cap of its own (ARCHITECTURE.md, "Limits"), and the caps together stay under the
server's total.
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from shared.bus import client_options, resolve_nats_url
from shared.bus_access import ACCOUNT_CONNECTIONS, DEFAULT_ACCOUNT_CONNECTIONS, MAX_CONNECTIONS
from shared.credentials import PRINCIPALS
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_the_accounts_caps_together_leave_room_under_the_servers_total() -> None:
    caps = [ACCOUNT_CONNECTIONS.get(p, DEFAULT_ACCOUNT_CONNECTIONS) for p in PRINCIPALS]
    assert sum(caps) < MAX_CONNECTIONS


def test_a_console_holding_every_connection_it_may_open_locks_no_service_out(nats_server: NatsEndpoint) -> None:
    settings = nats_server.settings()

    async def attempt(principal: str) -> nats.NATS:
        # One try with the principal's own credential (the services' client keeps retrying a refusal).
        return await nats.connect(resolve_nats_url(settings), allow_reconnect=False, connect_timeout=5,
                                  **client_options(settings, principal))

    async def main() -> tuple[int, str, list[str]]:
        held = []
        refused = ""
        try:
            for _ in range(DEFAULT_ACCOUNT_CONNECTIONS + 8):
                try:
                    held.append(await attempt("console"))
                except Exception as exc:
                    refused = f"{type(exc).__name__}: {exc}"
                    break
            others = []
            for principal in ("executor", "risk", "operator"):
                nc = await attempt(principal)
                others.append(principal if nc.is_connected else "")
                await nc.close()
            return len(held), refused, others
        finally:
            await asyncio.gather(*(nc.close() for nc in held), return_exceptions=True)

    held, refused, others = asyncio.run(main())
    assert held == DEFAULT_ACCOUNT_CONNECTIONS, (held, refused)
    assert "maximum account active connections exceeded" in refused
    assert others == ["executor", "risk", "operator"]

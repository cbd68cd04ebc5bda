"""`aura status` says what latched the kill-switch, since when and how it clears, never an empty field.

An audit saw ``LATCHED at cycle 1d-20190224T0000 drawdown 12.9%:  (`aura risk status`)``: the row printed the
latch's ``reason``, which holds the note of the last operator reset (empty on a system never reset), not why it
latched.  Here risk's own key writes the latch as risk writes it (services/risk/latch.py: ``after_decision`` sets
the cycle, drawdown, bar and re-arm time and keeps the last reset's fields), on a real secured nats-server, and
the real command reads it as the operator.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any

import pytest

from aura.cli import main
from services.risk.latch import LatchDoc, read_latch, write_latch
from shared.config import Settings, load_settings
from shared.credentials import signing_key
from tests.bus_helpers import role_connections
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BAR = 1_550_966_400_000  # 2019-02-24 00:00 UTC, the bar of cycle 1d-20190224T0000
DAY = 86_400_000
RESET_AT = 1_550_656_800_000  # 2019-02-20 10:00 UTC


def store(settings: Settings, doc: LatchDoc) -> None:
    async def go() -> None:
        async with role_connections(settings, "risk") as js:
            key = signing_key(settings.keys, "risk")
            revision = (await read_latch(js["risk"], key.public_key()))[1]
            await write_latch(js["risk"], doc, key, revision)

    asyncio.run(go())


def status(capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, Any]]:
    code, _ = main(["status"]), None
    screen = capsys.readouterr().out
    assert code == 0
    assert main(["status", "--json"]) == 0
    return screen, json.loads(capsys.readouterr().out)["latch"]


def rows(screen: str) -> dict[str, str]:
    """The System table's rows, ``what -> value``, a value rich folded over lines joined again."""
    out: dict[str, str] = {}
    last = ""
    for line in screen.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) < 4:
            continue
        if cells[1]:
            last = cells[1]
            out[last] = cells[2]
        elif last:
            out[last] += " " + cells[2]
    return out


@pytest.fixture()
def bus(nats_server: NatsEndpoint, monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = nats_server.env()
    for key in [k for k in os.environ if k.startswith("AURA_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(env)


def test_a_latch_never_reset_shows_since_when_what_latched_it_and_how_it_clears(
        bus: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    # The audit's case: latched by the rolling drawdown, cooldown 0, never reset (reason "").
    store(bus, LatchDoc(halted=True, cycle_id="1d-20190224T0000", drawdown=0.1288, latched_at_ms=BAR))
    screen, latch = status(capsys)
    table = rows(screen)
    assert table["kill-switch"] == "LATCHED since the bar of 2019-02-24T00:00Z (cycle 1d-20190224T0000, drawdown " \
                                   "12.9%); `aura risk status`", screen
    assert table["latched by"] == "the rolling drawdown reached kill_switch_drawdown", screen
    assert table["clears"].startswith("only by `aura risk reset` (kill_switch_cooldown is 0)"), screen
    assert "last reset" not in table, "no reset was ever made"
    assert not re.search(r":\s+\(", screen) and ":  " not in screen, "an empty field"
    assert latch["latched_at"] == "2019-02-24T00:00Z" and latch["cause"] and latch["clears"]


def test_a_latch_after_a_reset_keeps_the_reset_note_apart_from_its_cause(
        bus: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    # Reset once (its note stays in the latch, as after_decision keeps it), then latched again with a cooldown.
    store(bus, LatchDoc(halted=True, cycle_id="1d-20190224T0000", drawdown=0.2, latched_at_ms=BAR,
                        rearm_at_ms=BAR + 7 * DAY, reset_at_ms=RESET_AT, reset_by="operator:ops",
                        reason="checked the books", equity_since_ms=RESET_AT))
    screen, _ = status(capsys)
    table = rows(screen)
    assert table["kill-switch"].startswith("LATCHED since the bar of 2019-02-24T00:00Z"), screen
    assert table["latched by"] == "the rolling drawdown reached kill_switch_drawdown", screen
    assert "2019-03-03T00:00Z" in table["clears"] and "aura risk reset" in table["clears"], screen
    assert table["last reset"] == "2019-02-20T10:00Z by operator:ops: checked the books", screen
    assert "checked the books" not in table["kill-switch"] + table["latched by"]


def test_a_capped_latch_names_the_cap(bus: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    store(bus, LatchDoc(halted=True, capped=True, cycle_id="1d-20190224T0000", drawdown=0.31, latched_at_ms=BAR))
    screen, _ = status(capsys)
    table = rows(screen)
    assert table["latched by"] == "the drawdown since the last reset reached kill_switch_cap", screen
    assert table["clears"].startswith("only by `aura risk reset`"), screen


def test_a_latch_that_does_not_verify_is_shown_latched_and_says_why(
        bus: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Risk's credential with another key's signature (risk's key not held): risk fails closed, and so does status."""
    async def forge() -> None:
        async with role_connections(bus, "risk") as js:
            revision = (await read_latch(js["risk"], signing_key(bus.keys, "risk").public_key()))[1]
            await write_latch(js["risk"], LatchDoc(halted=False), signing_key(bus.keys, "operator"), revision)

    asyncio.run(forge())
    screen, latch = status(capsys)
    table = rows(screen)
    assert table["kill-switch"] == "LATCHED; `aura risk status`", screen
    assert table["latched by"].startswith("a stored latch that does not verify ("), screen
    assert table["clears"].startswith("only by `aura risk reset`"), screen
    assert latch["unverifiable"] is True and "last reset" not in table

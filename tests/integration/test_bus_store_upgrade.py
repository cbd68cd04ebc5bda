"""A bus that ran before JetStream had an account of its own keeps its state when `aura up` starts it again.

A server without accounts keeps JetStream's store under the global account (``jetstream/$G``); since each principal
has an account of its own, JetStream lives in the ``AURA`` account (``jetstream/AURA``).  Started on the old store
as it was, the bus came up empty: the kill-switch latch, the parameter history and every stream gone, so a latched
system was armed again.  ``start_bus`` moves the old store first (compose's nats service does the same).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import nats
import pytest

from aura.natsd import adopt_global_store, free_port, nats_server_binary, start_bus
from shared.bus import session
from shared.config import load_settings
from shared.credentials import ensure_credentials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_store_of_the_global_account_is_adopted_with_its_messages(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = home / "nats"
    port = free_port()
    # The old layout: one account (the global one), JetStream's store under it.
    old_conf = tmp_path / "old.conf"
    old_conf.write_text(json.dumps({"host": "127.0.0.1", "port": port, "jetstream": {"store_dir": str(store)},
                                    "authorization": {"users": [{"user": "old", "password": "old"}]}}))
    server = subprocess.Popen([nats_server_binary(), "-c", str(old_conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)

    async def write_old() -> None:
        for _ in range(100):
            try:
                nc = await nats.connect(f"nats://old:old@127.0.0.1:{port}", connect_timeout=1, allow_reconnect=False)
                break
            except Exception:
                await asyncio.sleep(0.1)
        js = nc.jetstream()
        await js.add_stream(name="KV_aura_state", subjects=["$KV.aura_state.>"])
        await js.publish("$KV.aura_state.risk.halted", b"the latch, as it was")
        await nc.close()

    try:
        asyncio.run(write_old())
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (store / "jetstream" / "$G").is_dir()

    settings = load_settings({"AURA_HOME": str(home)})
    ensure_credentials(settings.keys)
    bus = start_bus(settings, free_port())
    try:
        async def read_new() -> tuple[int, bytes]:
            settings_here = load_settings({"AURA_HOME": str(home), "AURA_NATS_URL": bus.url})
            async with session(settings_here, "admin") as nc:
                js = nc.jetstream()
                info = await js.stream_info("KV_aura_state")
                msg = await js.get_last_msg("KV_aura_state", "$KV.aura_state.risk.halted")
                return info.state.messages, msg.data or b""

        messages, latch = asyncio.run(read_new())
    finally:
        bus.stop()
    assert (messages, latch) == (1, b"the latch, as it was")
    assert not (store / "jetstream" / "$G").exists() and (store / "jetstream" / "AURA").is_dir()
    assert adopt_global_store(store) is False  # done once: a store already under AURA is left alone

"""ccxt.async_support against the simulator, and the simulator started as a separate process by its CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import ccxt.async_support as ccxt_async
import pytest

from aura.exchange_sim import Fault, SimServer
from aura.exchange_sim.cli import add_exchange_sim_parser, config_from_args
from services.executor.brokers.ccxt_client import make_ccxt_binance
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_async_client_trades_and_sees_faults(sim_server: SimServer) -> None:
    async def scenario() -> None:
        ex = make_ccxt_binance(sim_server.base_url, "aura-sim-key", "aura-sim-secret", timeout_ms=300,
                               enable_rate_limit=False)
        try:
            await ex.load_markets()
            order = await ex.create_order("ETH/USDT", "market", "buy", 0.1, None, {"newClientOrderId": "a-1"})
            assert order["status"] == "closed" and order["filled"] == 0.1
            sim_server.sim.faults.add(Fault("timeout", "POST", "/api/v3/order", delay_s=1.0))
            with pytest.raises(ccxt_async.RequestTimeout):
                await ex.create_order("ETH/USDT", "market", "buy", 0.1, None, {"newClientOrderId": "a-2"})
            found = await ex.fetch_order("", "ETH/USDT", {"origClientOrderId": "a-2"})
            assert found["status"] == "closed"
            sim_server.sim.faults.add(Fault("drop", "POST", "/api/v3/order"))
            with pytest.raises(ccxt_async.NetworkError):
                await ex.create_order("ETH/USDT", "market", "buy", 0.1, None, {"newClientOrderId": "a-3"})
            balance = await ex.fetch_balance()
            # All three were booked exactly once (0.1 ETH each, less the 0.1% fee taken in ETH).
            assert balance["free"]["ETH"] == pytest.approx(0.2997)
        finally:
            await ex.close()

    asyncio.run(scenario())


def test_cli_serves_the_requested_account(candle_dir: Path) -> None:
    cmd = [sys.executable, "-m", "aura.exchange_sim", "--port", "0", "--data", str(candle_dir), "--symbols",
           "BTCUSDT", "--balance", "USDT=500", "--balance", "BTC=0.5", "--api-key", "k-123", "--api-secret",
           "s-456", "--start", "2024-06-01"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert line["symbols"] == ["BTCUSDT"] and line["clock_ms"] == 1717200000000
        ex = make_ccxt_binance(line["exchange_sim"], "k-123", "s-456", async_=False, enable_rate_limit=False)
        free = ex.fetch_balance()["free"]
        assert free["USDT"] == 500 and free["BTC"] == 0.5
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_subcommand_registration() -> None:
    parser = argparse.ArgumentParser(prog="aura")
    add_exchange_sim_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["exchange-sim", "--port", "9999", "--balance", "usdt=25"])
    assert callable(args.func) and args.port == 9999
    cfg = config_from_args(args)
    assert cfg.balances == {"USDT": "25"} and cfg.api_key == "aura-sim-key" and cfg.api_secret == "aura-sim-secret"
    assert cfg.speed == 1.0  # real time unless asked
    assert config_from_args(parser.parse_args(["exchange-sim", "--speed", "86400"])).speed == 86_400
    for bad in (["--balance", "nonsense"], ["--speed", "-1"], ["--speed", "fast"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["exchange-sim", *bad])

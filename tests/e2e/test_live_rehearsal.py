"""The whole system LIVE against the venue simulator, end to end: sync ingest from its archive and klines, the live
executor on its trading API, several daily cycles on an accelerated clock (``aura.rehearsal_lab``, built from
`aura rehearse`'s own parts).  The journal must end equal to the simulator's books exactly, and the testnet
switch must send every request of risk and the executor to the testnet, none to the main venue (which URL set
the switch picks: tests/executor_broker/test_testnet_switch.py).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from aura.exchange_sim import SimConfig, SimServer
from aura.rehearsal_lab import LiveRehearsal, check_books

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

START = "2021-03-01"
SPEED = 43_200.0  # a daily bar every 2 s: the pacing still closes a bar only once the last cycle is journaled


def test_a_live_rehearsal_keeps_the_journal_equal_to_the_exchange(tmp_path: Path, pycache: Path) -> None:
    with LiveRehearsal(tmp_path / "home", START, speed=SPEED, pycache=pycache) as lab:
        cycles = lab.wait_cycles(6, 300)
        lab.stop()
        assert lab.venue is not None
        violations = check_books(lab.journal_path, lab.venue)
        state = lab.venue.sim.state()
        plans = {c: json.loads(b) for c, b in lab.query("SELECT cycle_id, body FROM plans")}
        fills = lab.query("SELECT cycle_id, symbol, price FROM fills")
        refusals = lab.query("SELECT detail FROM events WHERE kind = 'plan_rejected'")
        executor_log = lab.log_tail("executor", 100_000)

    # Six daily cycles in a row from the chosen day, each traded (none refused: not stale, not out of sync).
    assert [c.cycle_id for c in cycles[:6]] == [f"1d-202103{d:02d}T0000" for d in range(1, 7)]
    assert all(c.status in ("executed", "partial") for c in cycles), [(c.cycle_id, c.status) for c in cycles]
    assert refusals == [] and "[STALE_PLAN]" not in executor_log

    # The books: every exchange order is a journaled intent booked once, every trade a journaled fill at the
    # exchange's own price, quantity and fee, and balances equal to the last 1e-8 (Decimal, no tolerance).
    assert violations == [], violations
    # Spelled out once more for the cash: the journal's last snapshot against the exchange's Decimal balance.
    [(cash,)] = lab.query("SELECT cash FROM snapshots ORDER BY seq DESC LIMIT 1")
    usdt = state["balances"]["USDT"]
    assert Decimal(repr(cash)) == Decimal(usdt["free"]) + Decimal(usdt["locked"])

    # Every fill at the close of the bar its plan was made on: the price ingest synced is the price charged.
    assert fills, "no order reached the simulator"
    for cycle_id, symbol, price in fills:
        assert price == plans[cycle_id]["prices"][symbol], (cycle_id, symbol)

    # The live path: market buys spend a quote amount (quoteOrderQty), sells a quantity; each leg was priced at
    # the exchange first (its ticker read) and each plan checked against the exchange's balances.
    orders = state["orders"]
    buys = [o for o in orders if o["side"] == "BUY"]
    assert buys and all(o["type"] == "MARKET" and Decimal(o["origQuoteOrderQty"]) > 0 for o in buys), buys
    assert all(Decimal(o["origQuoteOrderQty"]) == 0 for o in orders if o["side"] == "SELL")
    requests = state["requests"]
    assert sum(n for k, n in requests.items() if "/api/v3/ticker" in k) >= len(orders)
    assert requests.get("GET /api/v3/account", 0) >= 2 * len(plans)
    assert "live broker configured" in executor_log and "[RECONCILE]" not in executor_log


def test_the_testnet_switch_sends_risk_and_the_executor_to_the_testnet(tmp_path: Path, pycache: Path) -> None:
    """AURA_TESTNET=true with both addresses set: the simulator playing the testnet gets every request of risk
    (public tickers, markets, clock) and the executor (account, orders); the one playing the main venue none."""
    main_config = SimConfig(start=START, speed=0.0)
    with SimServer(config=main_config) as main, \
            LiveRehearsal(tmp_path / "home", START, speed=SPEED, pycache=pycache, as_testnet_of=main.base_url,
                          overrides={"AURA_RISK_TICK_S": "0.5"}) as lab:
        lab.wait_cycles(4, 300)
        lab.stop()
        assert lab.venue is not None
        violations = check_books(lab.journal_path, lab.venue)
        testnet_orders = lab.venue.sim.orders()
        executor_log, risk_log = lab.log_tail("executor", 100_000), lab.log_tail("risk", 100_000)
        assert main.sim.request_counts() == {}, "a request reached the main venue while AURA_TESTNET was on"
    assert testnet_orders and violations == [], violations
    boot = [json.loads(line) for line in executor_log.splitlines() if "live broker configured" in line]
    assert boot and all(b["testnet"] is True and b["base_url"] == lab.venue.base_url for b in boot), boot
    # Risk's ticks priced the positions from the testnet's tickers (the main venue was never asked).
    priced = [json.loads(line) for line in risk_log.splitlines() if '"tag":"SL_CHECK"' in line]
    assert any(p.get("price") for p in priced), "risk never priced a position"

"""kill -9 the real ``python -m services.executor`` (live mode, against the exchange simulator) in the middle of a
signed plan published over a real nats-server, restart it, and check the books end to end.

The kill lands at the worst moment: the first order is booked on the exchange but its answer has not reached
the executor (the simulator holds the response), so the journal says "sent" and nothing else.  The restarted
executor must find that order by its clientOrderId instead of placing it again, finish the plan, publish the
snapshot, ack the bus redelivery of the same plan without trading, and go on with the next plan.

The executor's durable consumer is provisioned with a 6 s ack wait instead of 30 s (as in
tests/e2e/test_live_kills.py): JetStream redelivers the plan the dead process received only once the ack wait has
passed, and the test waits for that redelivery; nothing else changes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aura.exchange_sim import DEFAULT_API_KEY, DEFAULT_API_SECRET, Fault, SimConfig, SimServer
from services.executor.brokers.client_order_id import client_order_id
from services.executor.portfolio import portfolio_from_fills
from shared.bus import last_message, publish, session
from shared.config import Settings
from shared.contracts import CONSUMERS, ApprovedPlan, PlanBody, PlanLeg, PortfolioSnapshot, decode, plan_id_for
from shared.credentials import signing_key
from shared.cycles import cycle_id_for
from shared.provision import provision_bus
from shared.signing import load_public_key, sign_plan, verify_struct
from tests.conftest import NatsEndpoint

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _last_snapshot(settings: Settings) -> PortfolioSnapshot | None:
    """The executor's newest snapshot, read as risk reads its basis (risk's credential)."""
    try:
        async with session(settings, "risk") as nc:
            raw = await last_message(nc.jetstream(), PortfolioSnapshot.SUBJECT)
    except Exception:
        return None
    return decode(raw, PortfolioSnapshot) if raw is not None else None


async def _publish(settings: Settings, plan: ApprovedPlan) -> None:
    """Publish a signed plan as risk does (risk's credential: only risk may publish approved plans)."""
    async with session(settings, "risk") as nc:
        await publish(nc.jetstream(), plan, msg_id=plan.plan.plan_id)


async def _executor_ack_wait(settings: Settings, seconds: float) -> None:
    """Provision the executor's durable consumer again with another ack wait (with the admin credential, which
    manages it)."""
    spec = CONSUMERS["executor"]
    async with session(settings, "admin") as nc:
        js = nc.jetstream()
        await js.delete_consumer(spec.stream, spec.durable)
        await provision_bus(js, 120.0, consumers={"executor": msgspec.structs.replace(spec, ack_wait_s=seconds)})


def journal(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    path = home / "executor" / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []  # schema not created yet
    finally:
        db.close()


class Executor:
    """The executor as an operator runs it: its own process, its own log file."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        self.runs += 1
        with open(self.logs / f"executor-{self.runs}.log", "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.executor"], env=self.env, cwd=REPO,
                                         stdout=out, stderr=subprocess.STDOUT)
        return self.proc

    def log(self) -> str:
        return (self.logs / f"executor-{self.runs}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def sim(shared_data_dir: Path) -> Iterator[SimServer]:
    config = SimConfig(data_dir=shared_data_dir / "binance" / "1d", symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
                       start="2024-01-01", balances={"USDT": 10_000},
                       duplicate_scope="open")  # as Binance: a filled order's id can be booked again
    with SimServer(config=config) as server:
        yield server


def signed(settings: Settings, basis: str, legs: list[tuple[str, str, float]], prices: dict[str, float],
           as_of_ms: int) -> ApprovedPlan:
    """A plan signed with risk's key (the one the executor pins at its first start), made on the bar that
    opened at ``as_of_ms`` and named by it (live: the exchange's clock decides whether that is fresh)."""
    fields: dict[str, Any] = {
        "cycle_id": cycle_id_for("1d", as_of_ms), "as_of_ms": as_of_ms, "data_digest": "d", "target_id": "t",
        "params_version": 0, "params_digest": "p", "basis_snapshot_id": basis, "gate": "pass", "halted": False,
        "reasons": [],
        "prices": prices, "legs": [PlanLeg(i, s, side, q, prices[s], "enter") for i, (s, side, q) in enumerate(legs)]}
    return sign_plan(PlanBody(plan_id=plan_id_for(fields), **fields), signing_key(settings.keys, "risk"))


def newest_bar(sim: SimServer) -> int:
    """The open of the bar the simulator's clock closed last: a plan on it is fresh by the exchange's clock."""
    return int(sim.sim.now_ms()) // 86_400_000 * 86_400_000 - 86_400_000


def signed_by_executor(settings: Settings, snap: PortfolioSnapshot) -> bool:
    """Whether ``snap`` carries a valid signature of the executor's key (what risk checks before using it)."""
    try:
        return verify_struct(snap, {"executor": load_public_key(settings.keys.public_key("executor"))}) == "executor"
    except Exception:
        return False


def test_kill9_of_the_live_executor_mid_plan_then_restart(nats_binary: NatsEndpoint, sim: SimServer,
                                                          tmp_path: Path) -> None:
    # The bus's AURA_HOME: the executor's credential and signing key, risk's public key it pins, the journal.
    home = nats_binary.home
    settings = nats_binary.settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")}
    # The cap is the capital (10,000 USDT, the default): each leg below stays well under it.
    env.update(nats_binary.env(AURA_DRY_RUN="false", AURA_INGEST_SOURCE="sync", AURA_MAX_ORDER_USDT="10000",
                               AURA_EXCHANGE_API_URL=sim.base_url,
                               AURA_EXCHANGE_API_KEY=DEFAULT_API_KEY, AURA_EXCHANGE_API_SECRET=DEFAULT_API_SECRET,
                               AURA_LOG_LEVEL="INFO"))
    asyncio.run(_executor_ack_wait(settings, 6.0))
    executor = Executor(env, tmp_path)
    prices = {s: float(sim.sim.price(s.replace("/", ""))) for s in ("BTC/USDT", "ETH/USDT", "SOL/USDT")}
    try:
        first = executor.start()
        genesis = wait_for("the genesis snapshot", lambda: asyncio.run(_last_snapshot(settings)))
        assert genesis.status == "genesis" and genesis.cash == 10_000 and signed_by_executor(settings, genesis)
        plan = signed(settings, genesis.snapshot_id,
                      [("BTC/USDT", "buy", 0.05), ("ETH/USDT", "buy", 1.0), ("SOL/USDT", "buy", 10.0)], prices,
                      newest_bar(sim))
        # Leg 0 is booked, then its answer is held back: the executor sits waiting for it when it dies.
        sim.sim.faults.add(Fault("timeout", "POST", "/api/v3/order", delay_s=30.0))
        asyncio.run(_publish(settings, plan))
        wait_for("the first order to be booked", lambda: len(sim.sim.orders()) == 1)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        cid0 = client_order_id(plan.plan.plan_id, 0)
        assert journal(home, "SELECT status FROM plans") == [("executing",)]
        assert journal(home, "SELECT status FROM intents WHERE client_order_id=?", (cid0,)) == [("sent",)]
        assert journal(home, "SELECT COUNT(*) FROM fills") == [(0,)]  # the fill is on the exchange only
        sim.sim.faults.clear()

        executor.start()  # the restart: reconcile, finish the interrupted plan, publish its snapshot
        wait_for("the interrupted plan to finish", lambda: journal(
            home, "SELECT status FROM plans WHERE plan_id=?", (plan.plan.plan_id,)) == [("executed",)])
        snap = wait_for("its snapshot on the bus", lambda: (s := asyncio.run(_last_snapshot(settings))) and
                        s.plan_id == plan.plan.plan_id and s)
        assert snap.status == "executed" and set(snap.holdings) == {"BTC/USDT", "ETH/USDT", "SOL/USDT"}
        assert signed_by_executor(settings, snap)
        log = executor.log()
        assert "reconciliation finished" in log and "finishing a plan interrupted by a crash" in log
        assert sim.sim.faults.counts()["POST /api/v3/order"] == 3, "an order was placed twice"

        # JetStream redelivers the plan the dead process never acked: acked as journaled, nothing traded.
        wait_for("the redelivery to be acked", lambda: "plan already journaled" in executor.log(), timeout=90)
        assert sim.sim.faults.counts()["POST /api/v3/order"] == 3

        # And the system goes on: the next plan, computed on the new snapshot, executes (after the live sync
        # check of journal holdings against exchange balances).
        # The next bar's plan (the executor trades a bar once), at that bar's prices.
        sim.sim.advance(1)
        prices = {s: float(sim.sim.price(s.replace("/", ""))) for s in prices}
        follow = signed(settings, snap.snapshot_id, [("ETH/USDT", "sell", 1.0), ("BTC/USDT", "buy", 0.01)], prices,
                        newest_bar(sim))
        asyncio.run(_publish(settings, follow))
        wait_for("the next plan", lambda: journal(
            home, "SELECT status FROM plans WHERE plan_id=?", (follow.plan.plan_id,)) == [("executed",)])
    finally:
        executor.stop()

    # The books: one exchange order per clientOrderId, all known to the journal, same fills, same balances.
    orders = sim.sim.orders()
    per_cid = Counter(o.client_order_id for o in orders)
    assert len(orders) == 5 and set(per_cid.values()) == {1}
    intents = {r[0] for r in journal(home, "SELECT client_order_id FROM intents")}
    assert set(per_cid) == intents
    fills = {r[0]: r[1] for r in journal(home, "SELECT trade_id, client_order_id FROM fills")}
    assert fills == {str(t.trade_id): o.client_order_id for o in orders for t in o.trades}
    rows = journal(home, "SELECT symbol, side, qty, price, fee_base, fee_quote FROM fills ORDER BY rowid")
    pf = portfolio_from_fills(10_000.0, rows)
    assert float(sim.sim.free("USDT")) == pf.cash  # exactly: the journal sums the exchange's 8-decimal amounts
    for symbol, qty in pf.holdings.items():
        assert float(sim.sim.free(symbol.split("/")[0])) == qty
    # Each buy's 0.1% fee was taken in the coin bought (0.05 BTC, 10 SOL; the follow-up buy spent 0.01 BTC's
    # worth at the plan's price as a quote amount, so a hair less BTC at the exchange's ask); the ETH sell (1.0
    # planned, 0.999 held) was clamped to the holding and left none behind.
    assert set(pf.holdings) == {"BTC/USDT", "SOL/USDT"} and pf.holdings["SOL/USDT"] == 9.99
    assert 0.05994 - 0.0001 < pf.holdings["BTC/USDT"] <= 0.05994

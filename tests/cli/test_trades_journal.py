"""`aura trades` and `aura pnl --daily` on real journal files: fee dust, the bar clock, the day of a cycle.

Each journal is written through the executor's own journal and snapshot code, as the executor leaves it, and
read back by the commands (read-only) in a fresh AURA_HOME.  No bus: these commands read the journal alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from aura.cli import main
from aura.trades_cli import utc
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis, write_snapshot
from shared.config import load_settings
from shared.cycles import as_of_of_cycle, cycle_id_for

DAY = 86_400_000
DOT, BTC, ETH = "DOT/USDT", "BTC/USDT", "ETH/USDT"
Leg = tuple[str, str, float, float, float, float, str]  # symbol, side, qty, price, fee_base, fee_quote, reason
Cycle = tuple[str, list[Leg], dict[str, float]]  # cycle id, legs, the marks the books are valued at

# DOT in the audited rehearsal (`aura rehearse --from 2021-03-01 --cycles 30`): bought and fully sold three times,
# the buy's fee taken in DOT each time, so each full exit (lot step 0.01) left a sliver no order can sell.
DOT_CYCLES: list[Cycle] = [
    ("1d-20210305T0000", [(DOT, "buy", 89.21, 33.6194, 0.08921, 0.0, "enter")], {DOT: 33.6194}),
    ("1d-20210306T0000", [], {DOT: 34.0}),
    ("1d-20210307T0000", [(DOT, "sell", 89.12, 35.095, 0.0, 3.1276664, "exit")], {DOT: 35.095}),
    # The strategy labels the next buys "add": to it the dust was a holding.  To the trips it is nothing.
    ("1d-20210311T0000", [(DOT, "buy", 95.33, 36.9026, 0.09533, 0.0, "add")], {DOT: 36.9026}),
    ("1d-20210317T0000", [(DOT, "sell", 95.23, 36.1036, 0.0, 3.43814583, "exit")], {DOT: 36.1036}),
    ("1d-20210321T0000", [(DOT, "buy", 85.3, 36.6851, 0.0853, 0.0, "add")], {DOT: 36.6851}),
    ("1d-20210322T0000", [(DOT, "sell", 85.22, 35.2338, 0.0, 3.00262444, "exit")], {DOT: 35.2338}),
    ("1d-20210325T0000", [], {DOT: 33.0}),
]
DUST = [0.00079, 0.00546, 0.00016]  # 89.12079 - 89.12; 0.00079 + 95.23467 - 95.23; 0.00546 + 85.2147 - 85.22


def venue_clock(n: int, cycle_id: str) -> int:
    """Live: the exchange stamps a fill a minute after the close of the bar the cycle traded."""
    return int(as_of_of_cycle(cycle_id) or 0) + DAY + 60_000


def paper_clock(n: int, cycle_id: str) -> int:
    """A paper replay: fills stamped with the wall clock, seconds apart whatever bars the cycles traded."""
    return 1_796_531_480_000 + 9_000 * n


def write_journal(path: Path, cycles: list[Cycle], fill_ms: Callable[[int, str], int]) -> None:
    journal = Journal(path)
    ensure_genesis(journal, 10_000.0)
    for n, (cycle_id, legs, marks) in enumerate(cycles):
        plan_id = f"p-{n}"
        body = {"plan_id": plan_id, "cycle_id": cycle_id, "as_of_ms": as_of_of_cycle(cycle_id),
                "legs": [{"index": i, "symbol": s, "side": side, "qty": q, "ref_price": px, "reason": why}
                         for i, (s, side, q, px, _, _, why) in enumerate(legs)]}
        journal.begin()
        journal.record_plan(plan_id, cycle_id, "pass", 1, "basis", json.dumps(body), [])
        for i, (symbol, side, qty, price, fee_base, fee_quote, _) in enumerate(legs):
            cid = f"{plan_id}-{i}"
            journal.record_intent(cid, cycle_id, plan_id, i, symbol, side, qty, price, status="filled")
            journal.record_fill(f"t{n}{i}", cycle_id, cid, symbol, side, qty, price, fee_quote + fee_base * price,
                                fill_ms(n, cycle_id), fee_base=fee_base, fee_quote=fee_quote)
        journal.set_plan_status(plan_id, "executed")
        write_snapshot(journal, cycle_id, plan_id, "executed", marks)
        journal.commit()
    journal.close()


def home_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cycles: list[Cycle],
              fill_ms: Callable[[int, str], int], source: str = "replay") -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("AURA_HOME", str(home))
    monkeypatch.setenv("AURA_INGEST_SOURCE", source)
    monkeypatch.delenv("AURA_NATS_URL", raising=False)
    path = load_settings({"AURA_HOME": str(home)}).journal_path
    write_journal(path, cycles, fill_ms)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def bar(cycle_id: str) -> int:
    ms = as_of_of_cycle(cycle_id)
    assert ms is not None
    return ms


# --- fee dust ----------------------------------------------------------------------------------------------------


# replay: the bundled markets.json the paper venue enforces (DOT: step 0.01, min 0.01 DOT and 5 USDT); sync: the
# venue's rules are not in the journal, so the fallback line, AURA_RECONCILE_DUST_USDT (5 USDT) at the exit price.
@pytest.mark.parametrize("source", ["replay", "sync"])
def test_full_exits_that_leave_fee_dust_close_their_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str],
                                                                source: str) -> None:
    home_with(tmp_path, monkeypatch, DOT_CYCLES, venue_clock, source)
    doc = json.loads(cli(capsys, "trades", "--json", "--limit", "0"))
    trips = doc["trips"]
    assert [(t["symbol"], t["open"]) for t in trips] == [(DOT, False)] * 3
    assert [t["dust"] for t in trips] == pytest.approx(DUST, abs=1e-12)
    assert [t["qty"] for t in trips] == pytest.approx([89.12079, 95.23467, 85.2147])
    assert [t["exit_reason"] for t in trips] == ["exit"] * 3
    # Each trip is its own: bought and sold in its own cycles, its P&L the cash it moved.
    assert [t["entry_time"] for t in trips] == [bar("1d-20210305T0000"), bar("1d-20210311T0000"),
                                                bar("1d-20210321T0000")]
    assert [t["holding_ms"] for t in trips] == [2 * DAY, 6 * DAY, 1 * DAY]
    pnl = [89.12 * 35.095 - 3.1276664 - 89.21 * 33.6194, 95.23 * 36.1036 - 3.43814583 - 95.33 * 36.9026,
           85.22 * 35.2338 - 3.00262444 - 85.3 * 36.6851]
    assert [t["pnl"] for t in trips] == pytest.approx(pnl)
    summary = doc["summary"]
    assert summary["closed"] == 3 and summary["open"] == 0
    assert summary["realized_pnl"] == pytest.approx(sum(pnl))
    # What the books still hold, not silently dropped: the journal's own DOT balance.
    assert summary["dust"] == {DOT: pytest.approx(DUST[-1], abs=1e-12)}

    out = cli(capsys, "trades", "--limit", "0")
    assert "3 closed, 0 open" in out and "0.00016 DOT/USDT" in out and "dust" in out
    assert "0.00079" in out and "0.00546" in out


# --- the bar clock -------------------------------------------------------------------------------------------------


CLOCK_CYCLES: list[Cycle] = [
    ("1d-20240101T0000", [(BTC, "buy", 0.1, 40_000.0, 0.0, 4.0, "enter"),
                          (ETH, "buy", 1.0, 2_000.0, 0.0, 2.0, "enter")], {BTC: 40_000.0, ETH: 2_000.0}),
    ("1d-20240103T0000", [(BTC, "sell", 0.1, 42_000.0, 0.0, 4.2, "take_profit")], {BTC: 42_000.0, ETH: 2_000.0}),
    # A risk tick's stop between two cycles: no bar of its own, it trades while 2024-01-03 is the newest bar.
    ("tick-0123456789abcdef", [(ETH, "sell", 1.0, 1_900.0, 0.0, 1.9, "stop_loss")], {ETH: 1_900.0}),
    ("1d-20240105T0000", [(BTC, "buy", 0.05, 41_000.0, 0.0, 2.05, "enter")], {BTC: 41_000.0}),
    ("1d-20240110T0000", [], {BTC: 43_000.0}),
]


@pytest.mark.parametrize("clock", [paper_clock, venue_clock], ids=["paper replay", "live venue"])
def test_trips_are_timed_by_the_bars_their_cycles_traded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str],
                                                        clock: Callable[[int, str], int]) -> None:
    home_with(tmp_path, monkeypatch, CLOCK_CYCLES, clock)
    doc = json.loads(cli(capsys, "trades", "--json"))
    btc, eth, still = doc["trips"]
    t0 = bar("1d-20240101T0000")
    # In a replay the fills were seconds apart on the wall clock; the bars they traded were days apart.
    assert (btc["entry_time"], btc["exit_time"], btc["holding_ms"]) == (t0, t0 + 2 * DAY, 2 * DAY)
    assert (eth["entry_time"], eth["exit_time"], eth["exit_reason"]) == (t0, t0 + 2 * DAY, "stop_loss")
    # Open: held up to the newest cycle's bar (the journal's clock), not to the local wall clock.
    assert still["open"] and still["entry_time"] == t0 + 4 * DAY and still["exit_time"] is None
    assert still["holding_ms"] == 5 * DAY
    assert doc["summary"]["as_of"] == bar("1d-20240110T0000")
    assert doc["summary"]["median_holding_h"] == pytest.approx(48.0)

    out = cli(capsys, "trades")
    assert "2024-01-01 00:00" in out and "2024-01-03 00:00" in out and "2d 0h" in out and "5d 0h" in out
    assert "median holding 2d 0h" in out and " 0m " not in out and "bar 2024-01-10 00:00" in out


# --- partial exits -------------------------------------------------------------------------------------------------


TRIM_CYCLES: list[Cycle] = [
    ("1d-20240101T0000", [(BTC, "buy", 0.2, 40_000.0, 0.0, 8.0, "enter")], {BTC: 40_000.0}),
    ("1d-20240102T0000", [(BTC, "sell", 0.1, 25_000.0, 0.0, 2.5, "stop_loss")], {BTC: 25_000.0}),
    ("1d-20240103T0000", [(BTC, "sell", 0.05, 25_200.0, 0.0, 1.26, "kill_switch")], {BTC: 25_200.0}),
]


def test_an_open_trip_shows_what_it_still_holds_and_what_its_partial_exits_realized(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Bought 0.2 BTC, sold 0.1 and 0.05 at a loss: the trip is open with 0.05 held.  It showed qty 0.2 and a
    realized P&L of +0.00 while `aura pnl` said -3,017 (found by an audit)."""
    home_with(tmp_path, monkeypatch, TRIM_CYCLES, venue_clock)
    doc = json.loads(cli(capsys, "trades", "--json"))
    (trip,) = doc["trips"]
    assert trip["open"] and trip["qty"] == pytest.approx(0.2) and trip["held"] == pytest.approx(0.05)
    cost_sold = (0.2 * 40_000.0 + 8.0) * 0.15 / 0.2  # the average cost of what the exits sold
    realized = 0.1 * 25_000.0 - 2.5 + 0.05 * 25_200.0 - 1.26 - cost_sold
    assert trip["realized"] == pytest.approx(realized) and realized < -2_000
    assert doc["summary"]["realized_pnl"] == pytest.approx(realized)
    out = cli(capsys, "trades")
    assert "0.05 of 0.2" in out and f"{realized:,.2f}" in out


def test_a_partial_exit_realizes_against_the_coins_held_when_it_sold_not_later_buys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Buy 1 at 100, sell 0.5 at 110, add 1 at 200: the trim made +5, not -20 (the average of every buy of the
    trip, later ones included, found by a review)."""
    cycles: list[Cycle] = [
        ("1d-20240101T0000", [(ETH, "buy", 1.0, 100.0, 0.0, 0.0, "enter")], {ETH: 100.0}),
        ("1d-20240102T0000", [(ETH, "sell", 0.5, 110.0, 0.0, 0.0, "exit")], {ETH: 110.0}),
        ("1d-20240103T0000", [(ETH, "buy", 1.0, 200.0, 0.0, 0.0, "add")], {ETH: 200.0}),
    ]
    home_with(tmp_path, monkeypatch, cycles, venue_clock)
    (trip,) = json.loads(cli(capsys, "trades", "--json"))["trips"]
    assert trip["open"] and trip["held"] == pytest.approx(1.5) and trip["realized"] == pytest.approx(5.0)


# --- the day of a cycle --------------------------------------------------------------------------------------------


def test_a_cycles_daily_pnl_is_booked_on_the_day_of_the_bar_status_shows(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cycles: list[Cycle] = [
        ("1d-20190124T0000", [(BTC, "buy", 0.1, 3_500.0, 0.0, 0.35, "enter")], {BTC: 3_500.0}),
        ("1d-20190125T0000", [], {BTC: 3_600.0}),
        ("tick-fedcba9876543210", [(BTC, "sell", 0.1, 3_550.0, 0.0, 0.355, "stop_loss")], {}),
        ("1d-20190126T0000", [], {}),
    ]
    home_with(tmp_path, monkeypatch, cycles, paper_clock)
    doc = json.loads(cli(capsys, "pnl", "--daily", "--json"))
    rows = doc["daily"]
    # `aura status` shows a cycle as `bar <its as_of>` (the open of the bar it traded); cycle ids are made from it.
    as_of = bar("1d-20190125T0000")
    assert cycle_id_for("1d", as_of) == "1d-20190125T0000" and utc(as_of) == "2019-01-25 00:00"
    assert [r["day"] for r in rows] == ["2019-01-24", "2019-01-25", "2019-01-26"]
    # The genesis capital starts the first day; the tick is booked with the bar it traded under (the 25th).
    assert rows[0]["start_equity"] == 10_000.0 and [r["cycles"] for r in rows] == [1, 2, 1]
    assert rows[1]["end_equity"] == pytest.approx(10_000.0 - 0.35 + 0.1 * 3_550.0 - 0.355 - 350.0)
    assert sum(r["pnl"] for r in rows) == pytest.approx(doc["totals"]["pnl"])

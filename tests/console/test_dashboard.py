"""The console's page in a real headless browser (Debian's chromium through selenium) against a running system:
the page loads everything from the console itself, the chart holds the journal's equity points, a new cycle
appears without a reload, and with the bus down the page says so (and recovers when it is back).

The tests run in file order on one system: first while the replay is still trading, then once it is idle.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import hashlib
import itertools
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aura import optimize_job
from aura.natsd import start_bus
from aura.strategy.params import params_digest
from services.console.service import STATIC
from shared.bus import close, connect, last_message
from shared.contracts import PortfolioSnapshot, decode
from tests.conftest import REPO_ROOT
from tests.console.conftest import ConsoleSystem, start_system, wait_until
from tests.optimize.test_end_to_end import TINY
from tests.optimize.test_promotion import with_verdict

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
VENDORED_JS = "vendor/lightweight-charts-5.3.0/lightweight-charts.standalone.production.js"
VENDORED_SHA256 = "338a625ece52c5b85fb026e222dad5d0f365f745060afbfae96bda91636142e9"
# The bundled history ends 2024-12-05: ~45 cycles (~32 s), then idle.  Cycles must still be coming when the
# new-cycle test runs, after the browser's start and the first test: with ~31 (~21 s) that margin was a few
# seconds in one CI run (found by an audit).
REPLAY_START = "2024-10-21"
INTERVAL_S = 0.7  # slow enough that cycles are still coming while the first tests run


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleSystem]:
    system = start_system(tmp_path_factory.mktemp("console") / "home", REPLAY_START, INTERVAL_S)
    try:
        yield system
    finally:
        system.stack.stop()
        system.server.stop()


def js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def page_equity(driver: Any) -> list[dict[str, float]]:
    return js(driver, "return window.auraConsole ? window.auraConsole.equity() : []") or []


def bus_snapshot(system: ConsoleSystem) -> PortfolioSnapshot:
    async def read() -> PortfolioSnapshot:
        nc = await connect(system.settings, "operator", logging.getLogger("test"), connect_timeout_s=10)
        try:
            raw = await last_message(nc.jetstream(), PortfolioSnapshot.SUBJECT)
            assert raw is not None
            return decode(raw, PortfolioSnapshot)
        finally:
            await close(nc)

    return asyncio.run(read())


def test_the_vendored_chart_library_is_the_pinned_build_with_its_license() -> None:
    path = STATIC / VENDORED_JS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == VENDORED_SHA256
    assert "Lightweight Charts™ v5.3.0" in path.read_text()[:400]
    license_text = (path.parent / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "TradingView" in (path.parent / "NOTICE").read_text()
    assert VENDORED_JS in (STATIC / "index.html").read_text()


def test_the_page_loads_everything_from_the_console(system: ConsoleSystem, browser: Any) -> None:
    browser.get(system.url + "/")
    wait_until(lambda: js(browser, "return window.auraConsole && window.auraConsole.polls") >= 1, "the first poll")
    wait_until(lambda: len(page_equity(browser)) >= 2, "equity points on the chart")
    assert browser.title == "AURA console"
    assert js(browser, "return document.querySelectorAll('#equity-chart canvas').length") > 0
    assert js(browser, "return typeof window.LightweightCharts.createChart") == "function"
    origin = system.url
    resources = js(browser, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(origin) for name in resources), resources
    served = httpx.get(f"{origin}/static/{VENDORED_JS}", timeout=5).content
    assert hashlib.sha256(served).hexdigest() == VENDORED_SHA256
    headers = httpx.get(origin + "/", timeout=5).headers
    assert "default-src 'self'" in headers["content-security-policy"]
    # Every panel drew: services polled, plans listed, the optimizer slot says it has nothing yet.
    wait_until(lambda: js(browser, "return document.querySelectorAll('#services tr').length") >= 6, "service rows")
    assert "ready" in browser.find_element("id", "services").text
    assert "no decision yet" in browser.find_element("id", "optimizer").text
    wait_until(lambda: "pass" in browser.find_element("id", "plans").text, "plans with their gate")
    assert browser.find_element("id", "banner").get_attribute("hidden") is not None  # the bus is up: no banner
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, severe
    # The page's own formatters: a memecoin position and its price read whole (50,000,000 once showed as "5",
    # a price of 0.00001234 as "0.0000").
    shown = js(browser, "return [qty(50000000), qty(48310000), qty(0.5), price(0.00001234), price(40123.45)]")
    assert shown == ["50,000,000", "48,310,000", "0.5", "0.00001234", "40,123.45"], shown


def test_a_new_cycle_appears_without_a_reload(system: ConsoleSystem, browser: Any) -> None:
    js(browser, "window.__sameDocument = 'yes'")
    before = len(page_equity(browser))
    cycle_before = browser.find_element("id", "cycle").text
    wait_until(lambda: len(page_equity(browser)) > before, "a new equity point on the chart", timeout=60)
    wait_until(lambda: browser.find_element("id", "cycle").text != cycle_before, "the new cycle in the header", 30)
    assert js(browser, "return window.__sameDocument") == "yes", "the page was reloaded"
    assert js(browser, "return performance.getEntriesByType('navigation').length") == 1


def test_the_chart_holds_the_journals_points(system: ConsoleSystem, browser: Any) -> None:
    # Once the replay is idle, the chart must hold exactly the journal's equity history (the newest signed snapshot
    # carries the last 365 points of the journal, with their commit times).
    # Idle: more than 10 cycles and none for 3 intervals and a second, the count read every 0.1 s (the quiet time
    # runs from the last change seen, not in fixed windows that a last cycle could straddle).
    last: dict[str, float] = {"count": -1.0, "since": 0.0}

    def idle() -> bool:
        count, now = system.cycles(), time.monotonic()
        if count != last["count"]:
            last.update(count=count, since=now)
        return count > 10 and now - last["since"] >= 3 * INTERVAL_S + 1

    wait_until(idle, "the replay to finish", timeout=180, every=0.1)
    rows = system.journal("SELECT equity, committed_ts_ms FROM snapshots ORDER BY seq DESC LIMIT 365")[::-1]
    snap = bus_snapshot(system)
    assert [r[0] for r in rows] == list(snap.equity_history)
    assert [r[1] for r in rows] == list(snap.equity_history_ms)
    wait_until(lambda: len(page_equity(browser)) == len(rows), f"{len(rows)} points on the chart", timeout=30)
    points = page_equity(browser)
    assert [p["value"] for p in points] == pytest.approx([r[0] for r in rows], rel=1e-12)
    times = [p["time"] for p in points]
    assert all(b > a for a, b in itertools.pairwise(times)), "chart times must increase"
    # Bar cycles sit at their bar's close: the last point is the close of the last replayed day.
    last_cycle = system.journal("SELECT cycle_id FROM snapshots ORDER BY seq DESC LIMIT 1")[0][0]
    assert last_cycle.startswith("1d-")
    assert times[-1] * 1000 == calendar.timegm(time.strptime(last_cycle[3:], "%Y%m%dT%H%M")) * 1000 + 86_400_000
    # Benchmarks start where the equity starts (the same money at the first point) and are on the same times.
    for name in ("BTC", "SPY", "GOLD"):
        series = js(browser, f"return window.auraConsole.benchmark('{name}')")
        assert series, f"{name} missing"
        assert math.isclose(series[0]["value"], points[0]["value"], rel_tol=1e-9) or series[0]["time"] > times[0]
        assert {p["time"] for p in series} <= set(times)
    # The positions table holds the snapshot's holdings.
    state = httpx.get(system.url + "/api/state", timeout=5).json()
    holdings = {p["symbol"] for p in state["portfolio"]["positions"]}
    assert holdings == set(snap.holdings)
    table = browser.find_element("id", "positions").text
    assert all(symbol in table for symbol in holdings)
    assert state["open_orders"]["known"] is True  # under `aura up` the journal is read (read-only) for them
    # Once idle nothing is open: the table says so, and no note says the orders are unknown.
    open_rows = system.journal("SELECT count(*) FROM intents WHERE status IN ('pending', 'sent', 'acked')")[0][0]
    assert len(state["open_orders"]["rows"]) == open_rows
    if not open_rows:
        assert "no open orders" in browser.find_element("id", "orders").text
    assert browser.find_element("id", "orders-note").text == ""
    # The drawdown chart: the fall from the running peak of the same points, in percent.
    peak, want = 0.0, []
    for equity, _ in rows:
        peak = max(peak, equity)
        want.append(100.0 * (equity / peak - 1.0))
    dd = js(browser, "return window.auraConsole.drawdown()")
    assert [p["time"] for p in dd] == times
    assert [p["value"] for p in dd] == pytest.approx(want, abs=1e-4)
    # The parameters in force and their history, as the bus holds them.
    params = state["params"]
    kv_text = browser.find_element("id", "params").text
    assert f"version in force\n{params['version']}" in kv_text or f"version in force {params['version']}" in kv_text
    history_rows = js(browser, "return document.querySelectorAll('#params-history tr').length")
    assert history_rows == len(params["history"]) + 1 if params["history"] else history_rows >= 1


def optimizer_panel(driver: Any) -> dict[str, tuple[str, str]]:
    """The optimizer panel's rows as {label: (value, css class)} (it is a grid of label, value spans)."""
    spans = js(driver, "return [...document.querySelectorAll('#optimizer span')]"
                       ".map(s => [s.textContent, s.className])") or []
    return {k[0]: (v[0], v[1]) for k, v in zip(spans[::2], spans[1::2], strict=True)}


def test_the_optimizers_decision_is_shown(system: ConsoleSystem, browser: Any, tmp_path: Path) -> None:
    """A real decision, written by `aura optimize --promote`'s own step (aura/optimize_job.py ``promote``, through
    services/optimizer/promote.py, with the optimizer's credential) on the running system: first the tiny run's
    own verdict, a no, then the same run flipped to a yes, which becomes a signed parameter version."""
    grids = tmp_path / "tiny.toml"
    grids.write_text(TINY)
    job = optimize_job.prepare_job(argparse.Namespace(
        data=REPO_ROOT / "data" / "replay", timeframe=system.settings.timeframe, grids=grids, anchored=False,
        symbols="BTC_USDT,ETH_USDT,BNB_USDT,XRP_USDT,LTC_USDT", folds=2, min_budget=None, eta=3, spa_reps=300))
    no = optimize_job.local_record(job)
    assert not no.decision.passed and no.decision.failed, "this tiny run is known to fail the gate"
    digests = optimize_job.write(no, tmp_path / "out")
    _, incumbent = optimize_job.read_incumbent(system.settings, "", system.settings.timeframe)
    say = optimize_job.Say(True)
    assert optimize_job.promote(no, digests, system.settings, "", incumbent, say) == 0
    # The console's state carries the document as written and what it reads from it.
    failing = [c.name for c in no.decision.failed]

    def shown() -> dict[str, Any] | None:
        o = httpx.get(system.url + "/api/state", timeout=5).json()["optimizer"]
        return o if o["decision"] and o["decision"]["report_sha256"] == digests["decision.json"] else None

    o = wait_until(shown, "the decision in the console's state", timeout=30)
    assert o["decision"] == {"promoted": False, "verdict": no.decision.summary(), "version": None,
                             "incumbent_version": incumbent, "report_sha256": digests["decision.json"],
                             "parameters_digest": params_digest(no.run.winner)}
    assert o["summary"] == {"promoted": False, "version": None, "incumbent_version": incumbent,
                            "verdict": no.decision.summary(), "failing": failing, "problem": "",
                            "parameters_digest": params_digest(no.run.winner),
                            "report_sha256": digests["decision.json"]}
    # The page shows it without a reload: promoted no, no new version, the failing tests, the verdict.
    wait_until(lambda: optimizer_panel(browser).get("promoted", ("",))[0] == "no", "the no on the page", timeout=30)
    panel = optimizer_panel(browser)
    assert panel["promoted"] == ("no", "bad")
    assert panel["new version"][0] == "none: the live parameters are unchanged"
    assert panel["judged against"][0] == f"version {incumbent}"
    assert panel["failing tests"] == (", ".join(failing), "bad") and "deflated_sharpe" in failing
    assert panel["verdict"][0] == no.decision.summary() and panel["verdict"][0].startswith("NO PROMOTION: ")
    assert panel["report sha256"][0] == digests["decision.json"][:16]
    assert "no decision yet" not in browser.find_element("id", "optimizer").text
    # A yes: the winner becomes the next version, the page says so and shows it in force.
    yes = with_verdict(no, True)
    assert optimize_job.promote(yes, digests, system.settings, "", incumbent, say) == 0
    wait_until(lambda: optimizer_panel(browser).get("promoted", ("",))[0] == "yes", "the yes on the page", timeout=30)
    panel = optimizer_panel(browser)
    assert panel["promoted"] == ("yes", "good")
    assert panel["new version"][0] == str(incumbent + 1)
    assert panel["verdict"][0] == yes.decision.summary() and panel["verdict"][0].startswith("PROMOTE: ")
    assert "failing tests" not in panel
    state = httpx.get(system.url + "/api/state", timeout=5).json()
    assert state["optimizer"]["summary"]["version"] == incumbent + 1
    wait_until(lambda: httpx.get(system.url + "/api/state", timeout=5).json()["params"]["version"] == incumbent + 1,
               "the promoted version in force", timeout=30)


def test_aura_status_on_the_running_system_shows_the_journals_positions(system: ConsoleSystem) -> None:
    """`aura status --json` against the running system (its AURA_HOME, bus and health ports, as `aura up` leaves
    them): every service ready, the bus reachable, and the positions the journal holds, with their quantities."""
    proc = subprocess.run([sys.executable, "-m", "aura.cli", "status", "--json"], env=system.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["bus"]["reachable"] is True, report["bus"]
    assert {name: s["ready"] for name, s in report["services"].items()} == dict.fromkeys(report["services"], True)
    cycle_id, holdings = system.journal("SELECT cycle_id, holdings FROM snapshots ORDER BY seq DESC LIMIT 1")[0]
    held = {sym: qty for sym, qty in json.loads(holdings).items() if qty}
    assert held, "the replay ends holding coins (late 2024): positions to compare"
    shown = {p["symbol"]: p["qty"] for p in report["portfolio"]["positions"]}
    assert report["portfolio"]["cycle_id"] == cycle_id
    assert shown == pytest.approx(held), (shown, held)


def test_a_screenshot_of_the_page(system: ConsoleSystem, browser: Any, tmp_path: Path) -> None:
    shot = tmp_path / "console.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_with_the_bus_down_the_page_says_so(system: ConsoleSystem, browser: Any) -> None:
    banner = browser.find_element("id", "banner")
    port = system.server.port
    system.server.stop()
    try:
        wait_until(lambda: banner.get_attribute("hidden") is None and "bus is down" in banner.text,
                   "the bus-down banner", timeout=30)
        assert js(browser, "return document.body.dataset.bus") == "down"
        assert len(page_equity(browser)) > 0, "the page keeps the last figures"
        assert json.loads(httpx.get(system.url + "/api/state", timeout=5).text)["bus"]["connected"] is False
        assert httpx.get(f"http://127.0.0.1:{system.settings.console_port}/readyz", timeout=5).status_code == 503
    finally:
        system.server = start_bus(system.settings, port)  # the same bus comes back on its port and store
    wait_until(lambda: banner.get_attribute("hidden") is not None, "the banner to go once the bus is back", 60)
    assert js(browser, "return document.body.dataset.bus") == "up"

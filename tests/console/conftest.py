"""A whole running system for the console's tests (`aura up`'s launcher on its own authenticated bus, on free
ports, never the machine's 4222), a local webhook server for the alerts, and a headless Debian chromium."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from aura.launcher import Stack, wait_ready
from aura.natsd import NatsServer
from shared.config import Settings
from tests.bus_helpers import journal_rows, launch_system

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the background-networking flags chromium dials out at start (updates, sync, field trials), and this
# network refuses it; with them the browser talks to the console alone.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,2200")


@dataclass
class ConsoleSystem:
    stack: Stack
    server: NatsServer
    settings: Settings
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.console_port}"

    def journal(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return journal_rows(self.settings, sql, args)

    def cycles(self) -> int:
        return int(self.journal("SELECT count(*) FROM snapshots WHERE status != 'genesis'")[0][0])


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def start_system(home: Path, replay_start: str, interval_s: float, **extra: str) -> ConsoleSystem:
    stack, server, env = launch_system(home, AURA_REPLAY_START=replay_start, AURA_REPLAY_INTERVAL_S=str(interval_s),
                                       AURA_CONSOLE_REFRESH_S="0.5", **extra)
    try:
        wait_ready(stack, 120)
    except BaseException:
        stack.stop()
        server.stop()
        raise
    return ConsoleSystem(stack, server, stack.settings, env)


class Webhook:
    """A local HTTP endpoint apprise's ``json://`` posts to; every notification it received, in order."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({**json.loads(body), "path": self.path, "at": time.monotonic()})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/aura"

    def titled(self, text: str) -> list[dict[str, Any]]:
        return [n for n in self.received if text in n.get("title", "")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    try:
        yield hook
    finally:
        hook.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's chromium, headless, through /usr/bin/chromedriver: nothing downloads a browser or a driver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        why = ("Debian's chromium and chromium-driver are not installed (`make install` installs them as root: "
               "apt-get install chromium chromium-driver)")
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs them (make test): a skip there would hide a missing browser test
        pytest.skip(why)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager, were it ever asked, must not download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()

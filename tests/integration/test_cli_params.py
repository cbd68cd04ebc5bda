"""`aura params show|set` against a real nats-server: validated promotion, visible version."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NatsEndpoint

pytestmark = pytest.mark.integration


def aura(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AURA_")} | {"AURA_NATS_URL": nats_url}
    return subprocess.run([sys.executable, "-m", "aura.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_show_then_set_then_show(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    shown = aura(nats_server.url, "params", "show")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["version"] == 0  # nothing promoted yet: shipped defaults
    doc = json.loads(shown.stdout)["params"]
    doc["top_k"] = 2
    good = tmp_path / "p.json"
    good.write_text(json.dumps(doc))
    promoted = aura(nats_server.url, "params", "set", str(good))
    assert promoted.returncode == 0, promoted.stderr
    after = json.loads(aura(nats_server.url, "params", "show").stdout)
    assert after["version"] >= 1 and after["params"]["top_k"] == 2


def test_out_of_range_parameters_are_refused(nats_server: NatsEndpoint, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"top_k": 10_000}))
    proc = aura(nats_server.url, "params", "set", str(bad))
    assert proc.returncode == 2 and "top_k" in proc.stderr
    assert json.loads(aura(nats_server.url, "params", "show").stdout)["version"] == 0

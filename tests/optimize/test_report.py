"""What the report says about the data it was run on."""

from __future__ import annotations

from pathlib import Path

from aura.optimize.report import GENERIC_CAVEAT, survivorship_caveat
from tests.conftest import REPO_ROOT


def test_the_bundled_data_states_its_own_survivorship_caveat() -> None:
    caveat = survivorship_caveat(REPO_ROOT / "data" / "replay")
    assert caveat != GENERIC_CAVEAT
    assert caveat.startswith("From README.md: Survivorship bias")
    assert "still traded on Binance at the end of 2024" in caveat and "better than trading the market" in caveat


def test_a_folder_that_says_nothing_gets_the_generic_warning(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Some candles\n\nDaily bars.\n")
    assert survivorship_caveat(tmp_path) == GENERIC_CAVEAT

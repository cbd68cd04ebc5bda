"""The journal is opened read-only whatever its path, and the book's exposure is the executor's.

Found by an audit: the read-only URI was ``file:{path}?mode=ro`` unquoted, so under an AURA_HOME holding '#' or '?'
the path ended there, ``mode=ro`` was dropped, and SQLite created the truncated file read-write (the command then
failed with "no such table").  And exposure was the positions valued at the newest prices over the equity, so a
book 90% in coins showed 0% with the bus unreadable (no prices)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura.cli import main
from services.console.view import book_exposure
from services.executor.journal import Journal
from services.executor.runner import ensure_genesis
from shared.config import load_settings
from shared.read_only import connect_read_only


@pytest.mark.parametrize("odd", ["a#b", "a?b"])
def test_a_journal_under_a_path_with_uri_characters_is_read_not_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], odd: str) -> None:
    home = tmp_path / odd / "home"
    monkeypatch.setenv("AURA_HOME", str(home))
    monkeypatch.delenv("AURA_NATS_URL", raising=False)
    journal = Journal(load_settings({"AURA_HOME": str(home)}, places_orders=False).journal_path)
    ensure_genesis(journal, 10_000.0)
    journal.close()
    assert main(["pnl", "--json"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "a").exists(), "a truncated journal path was created"
    db = connect_read_only(home / "executor" / "journal.sqlite", timeout=1)
    with pytest.raises(Exception, match="readonly"):
        db.execute("CREATE TABLE x (y)")
    db.close()


def test_exposure_is_the_share_of_the_book_in_coins_whatever_the_prices_known() -> None:
    assert book_exposure(10_000.0, 990.0) == pytest.approx(0.901)
    assert book_exposure(10_000.0, 10_000.0) == 0.0
    assert book_exposure(0.0, 0.0) == 0.0

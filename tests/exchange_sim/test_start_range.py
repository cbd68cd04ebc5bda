"""A start outside the data is refused, in one line naming the range the data covers, before anything starts:
by ``aura exchange-sim --start`` and by ``aura rehearse --from`` (both build the simulator's clock from it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aura.exchange_sim import ExchangeSim, SimConfig, SimServer
from aura.exchange_sim.cli import main as exchange_sim_main
from aura.rehearse import rehearse
from tests.exchange_sim.conftest import make_config

DAY = 86_400_000
FIRST_BAR = 1_502_928_000_000  # 2017-08-17, BTCUSDT's first daily candle in the shared data
LAST_BAR = 1_733_356_800_000  # 2024-12-05, its last


@pytest.mark.parametrize("start", ["2040-01-01", "2010-01-01"])
def test_exchange_sim_refuses_a_start_outside_the_data(start: str, candle_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def no_serving(self: SimServer) -> SimServer:
        self.stop()  # its socket is bound already
        raise AssertionError(f"the simulator was started at --start {start}, a day the data does not have")

    # Accepted, main() would serve until interrupted: fail at once instead.
    monkeypatch.setattr(SimServer, "start", no_serving)
    code = exchange_sim_main(["--data", str(candle_dir), "--symbols", "BTCUSDT", "--start", start, "--port", "0"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""  # no "exchange_sim" line: nothing was served
    [line] = err.strip().splitlines()
    assert line.startswith("exchange-sim: cannot start: ") and start in line
    assert "bars open from 2017-08-17 to 2024-12-05" in line, line


def test_rehearse_refuses_a_from_day_after_the_data(candle_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AURA_HOME", str(tmp_path / "home"))

    def no_system(**kwargs: object) -> int:
        raise AssertionError("the system was started for a day the data does not have")

    monkeypatch.setattr("aura.rehearse.up", no_system)
    assert rehearse("2040-01-01", cycles=2, data_dir=candle_dir) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("aura rehearse: ") and "2040-01-01" in line
    assert "bars open from 2017-08-17 to 2024-12-05" in line, line
    assert not (tmp_path / "home" / "rehearsals").exists()


def test_a_start_inside_the_data_and_the_clamping_moves_still_work(candle_dir: Path) -> None:
    # The last day itself, and a time inside its bar, are in range: the clock starts at that bar's close.
    for start in ("2024-12-05", "2024-12-05T12:00"):
        # Speed 0: at speed 1 the clock runs on in real time, and a millisecond passing between the two
        # reads made this check flaky (seen in CI: now_ms() == LAST_BAR + DAY + 1).
        sim = ExchangeSim(make_config(candle_dir, symbols=("BTCUSDT",), start=start, speed=0.0))
        assert sim.market.clock_ms == LAST_BAR and sim.now_ms() == LAST_BAR + DAY
    # No start: a year before the data ends, as before.
    sim = ExchangeSim(SimConfig(data_dir=candle_dir, symbols=("BTCUSDT",)))
    assert sim.market.clock_ms == LAST_BAR - 365 * DAY
    # Moving by bars past either end still stops at the data's ends, as the simulator's controls promise.
    sim.advance(100_000)
    assert sim.market.clock_ms == LAST_BAR
    sim.advance(-100_000)
    assert sim.market.clock_ms == FIRST_BAR
    with pytest.raises(ValueError, match="outside the data"):
        sim.set_clock(LAST_BAR + DAY)  # a bar the data does not have is refused, not silently the last one

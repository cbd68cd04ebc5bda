"""The simulator's one clock: speed, jumps, the pacing ceiling, and which signed timestamps are in sync."""

from __future__ import annotations

import pytest

from aura.exchange_sim.clock import SimClock, parse_ms

T0 = 1_704_153_600_000  # 2024-01-02 00:00 UTC
WALL = 1_800_000_000_000


class Wall:
    def __init__(self) -> None:
        self.ms = WALL

    def __call__(self) -> int:
        return self.ms


def test_speed_set_and_ceiling() -> None:
    wall = Wall()
    clock = SimClock(T0, speed=1000, wall_ms=wall)
    wall.ms += 10
    assert clock.now_ms() == T0 + 10_000
    clock.set(T0)
    clock.hold_at(T0 + 5_000)
    wall.ms += 60
    assert clock.now_ms() == T0 + 5_000  # held at the ceiling however long the wall clock runs
    wall.ms += 60
    clock.hold_at(T0 + 100_000)
    wall.ms += 1
    assert clock.now_ms() == T0 + 6_000  # and on from the ceiling once raised, not from where it would be
    clock.set_speed(0)
    wall.ms += 1_000
    assert clock.now_ms() == T0 + 6_000
    assert parse_ms("2024-01-02") == T0 and parse_ms(str(T0)) == T0 and parse_ms(None) is None


def test_a_client_in_sync_by_either_clock_is_accepted() -> None:
    wall = Wall()
    clock = SimClock(T0, speed=14_400, wall_ms=wall)
    synced = clock.now_ms() - wall.ms  # ccxt's adjustForTimeDifference: the server's time once, then real time
    wall.ms += 30_000  # half a minute later the simulated clock is five days on
    assert clock.judge(wall.ms + synced, 5_000) == ""  # the adjusted client: still in sync
    assert clock.judge(wall.ms, 5_000) == ""  # a client on its machine's clock
    assert clock.judge(wall.ms - 6_000, 5_000) == "old"
    assert clock.judge(wall.ms + 1_500, 5_000) == "ahead"


@pytest.mark.parametrize(("skew_ms", "verdict"), [(20_000, "old"), (-5_000, "ahead"), (0, "")])
def test_a_skewed_server_clock_refuses_the_wall_clock(skew_ms: int, verdict: str) -> None:
    wall = Wall()
    clock = SimClock(T0, wall_ms=wall)
    assert clock.judge(wall.ms, 5_000, skew_ms) == verdict

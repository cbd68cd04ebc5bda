"""Market regime from breadth and the BTC trend, with hysteresis so the regime does not flip on one bar."""

from __future__ import annotations

from numba import njit

BEAR = 0
SIDEWAYS = 1
BULL = 2
REGIME_NAMES = ("bear", "sideways", "bull")
NO_CANDIDATE = -1

BTC_DOWN = 0
BTC_UP = 1
BTC_UNKNOWN = -1  # no BTC column (or not enough BTC history): the regime then rests on breadth alone


@njit(cache=True)
def breadth_value(above: int, counted: int) -> float:
    """Share of the eligible universe trading above its SMA (0 when nothing is eligible)."""
    return above / counted if counted > 0 else 0.0


@njit(cache=True)
def btc_trend(btc_close: float, btc_sma: float) -> int:
    if btc_close > 0 and btc_sma > 0:
        return BTC_UP if btc_close > btc_sma else BTC_DOWN
    return BTC_UNKNOWN


@njit(cache=True)
def raw_regime(breadth: float, btc: int, breadth_bull: float, breadth_bear: float) -> int:
    if breadth >= breadth_bull and btc != BTC_DOWN:
        return BULL
    if breadth < breadth_bear and btc != BTC_UP:
        return BEAR
    return SIDEWAYS


@njit(cache=True)
def regime_step(regime: int, candidate: int, count: int, raw: int, confirm: int) -> tuple[int, int, int]:
    """Adopt ``raw`` only once it has been seen on ``confirm`` consecutive cycles.

    Returns (regime in force, pending candidate or NO_CANDIDATE, cycles the candidate has been seen).
    """
    if raw == regime:
        return regime, NO_CANDIDATE, 0
    count = count + 1 if raw == candidate else 1
    if count >= confirm:
        return raw, NO_CANDIDATE, 0
    return regime, raw, count

"""Universe screen: which symbols may be ranked on this cycle."""

from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def passes_screen(eligible: bool, mom_short: float, mom_long: float, trend: float, vol_adj: float,
                  drawdown: float, quote_volume: float, min_momentum: float, max_drawdown: float,
                  min_quote_volume: float) -> bool:
    """Eligible (listed long enough), every factor known, momentum above the bar, price above its SMA,
    not too far below its rolling high, and liquid enough.

    Requiring every factor to be finite is what makes a new listing wait for its full history.
    """
    if not eligible:
        return False
    # ``not x > y`` is also true for NaN, so a missing value fails the screen.
    if not mom_short > min_momentum:
        return False
    if not trend > 0.0:
        return False
    if not drawdown <= max_drawdown:
        return False
    if not quote_volume >= min_quote_volume:
        return False
    return mom_long == mom_long and vol_adj == vol_adj  # both not NaN

"""What risk checks before it plans on a target: the signal stage is trusted with its choice of weights, and
with nothing else.

A compromised signal service keeps its right to publish targets, so a target is only ever read against what
ingest (the only writer of data) published for the same cycle: the newest ``DataReady`` and the candle object
it names, fetched and digest-checked by risk itself.  From those come the prices risk plans with and the
market rules it rounds with; the target's own copies must agree exactly, and its return forecasts must be the
ones the shared decision code computes from that data (they feed the cost-benefit gate).  Weights must be
finite, non-negative, name only symbols of that universe quoted in USDT and be a book the parameters size for the stated
regime (``check_sizing``).  Anything else is
:class:`ForgedTarget`.  Pure: no I/O here.
"""

from __future__ import annotations

import math

import numpy as np

from aura.strategy.params import StrategyParams, params_digest
from aura.strategy.regime import REGIME_NAMES
from aura.strategy.selector import regime_book
from aura.strategy.signal import compute_targets
from aura.strategy.types import Panel
from shared.contracts import DataReady, TargetPortfolio
from shared.cycles import cycle_id_for
from shared.market_rules import QUOTE, in_account_currency

WEIGHT_SUM_TOLERANCE = 1e-9  # float sums of weights that are meant to total 1


class ForgedTarget(ValueError):
    """The target disagrees with the data it names: refuse it, never plan on any part of it."""


class SupersededTarget(ValueError):
    """A target for a cycle that is no longer the newest ingest announced: it is not traded."""


def verified_prices(panel: Panel) -> dict[str, float]:
    """The decision bar's closes, as the signal stage publishes them (positive and finite only)."""
    out: dict[str, float] = {}
    for symbol, price in zip(panel.symbols, panel.close[-1], strict=True):
        value = float(price)
        if math.isfinite(value) and value > 0:
            out[symbol] = value
    return out


def check_announcement(target: TargetPortfolio, ready: DataReady | None, timeframe: str = "1d") -> None:
    """The target must be for the newest cycle ingest announced, on exactly that data, under the id of its bar
    (shared/cycles.py: the executor orders cycles by it, so a plan under an id dated years ahead would make it
    ignore every later abort)."""
    if ready is None:
        raise SupersededTarget("no DataReady has been announced")
    if target.cycle_id != ready.cycle_id:
        raise SupersededTarget(f"target for {target.cycle_id}, but the newest data announced is {ready.cycle_id}")
    if ready.timeframe != timeframe or ready.cycle_id != cycle_id_for(timeframe, ready.as_of_ms):
        raise ForgedTarget(f"data announced as {ready.cycle_id[:80]!r} ({ready.timeframe[:20]!r} bars) does not name "
                           f"its {timeframe} bar ({cycle_id_for(timeframe, ready.as_of_ms)})")
    if (target.data_digest, target.as_of_ms) != (ready.digest, ready.as_of_ms):
        raise ForgedTarget(f"target names data {target.data_digest[:16]} as of {target.as_of_ms}; ingest announced "
                           f"{ready.digest[:16]} as of {ready.as_of_ms} for {ready.cycle_id}")
    if list(target.markets) != list(ready.markets):
        raise ForgedTarget("target's market rules differ from the ones ingest announced")


def check_sizing(target: TargetPortfolio, params: StrategyParams) -> None:
    """The weights must be a book the parameters in force can size for the regime the target states: at most
    that regime's number of names, each at most ``max_weight``, together at most its exposure.  The regime itself
    rests on the signal state (hysteresis) and is not recomputed here, so a compromised signal can still claim
    another one; but never a whole book on one illiquid coin, nor more than the strategy would ever hold."""
    exposure, names = regime_book(REGIME_NAMES.index(target.regime), params.exposure_bull, params.exposure_sideways,
                                  params.exposure_bear, params.top_k, params.top_k_sideways, params.top_k_bear)
    held = [w for w in target.weights.values() if w > 0]
    if len(held) > names:
        raise ForgedTarget(f"{len(held)} names weighted; the {target.regime} regime holds at most {names}")
    if max(held, default=0.0) > params.max_weight + WEIGHT_SUM_TOLERANCE:
        raise ForgedTarget(f"a weight of {max(held):.6f} is above max_weight {params.max_weight}")
    if sum(held) > exposure + WEIGHT_SUM_TOLERANCE:
        raise ForgedTarget(f"weights sum to {sum(held):.6f}, above the {target.regime} exposure {exposure}")


def check_target(target: TargetPortfolio, ready: DataReady, panel: Panel, params: StrategyParams) -> dict[str, float]:
    """Verify ``target`` against the data and parameters it names; return the verified prices to plan with."""
    if tuple(panel.symbols) != tuple(ready.symbols) or len(panel.timestamps) == 0 \
            or int(panel.timestamps[-1]) != ready.as_of_ms:
        raise ForgedTarget("candle object does not match its announcement")
    if target.params_digest != params_digest(params):
        raise ForgedTarget(f"params digest {target.params_digest!r} is not that of version {target.params_version}")
    if target.regime not in REGIME_NAMES:
        raise ForgedTarget(f"unknown regime {target.regime!r}")
    # Before anything is priced: a pair quoted in another currency (a compromised ingest may list one) would be
    # sized and capped in USDT while its notional is in that currency.
    foreign = sorted(s for s in target.weights if not in_account_currency(s))
    if foreign:
        raise ForgedTarget(f"weights name {len(foreign)} pairs not quoted in {QUOTE}: {foreign[:5]}")
    prices = verified_prices(panel)
    if dict(target.prices) != prices:
        wrong = sorted(s for s in set(prices) | set(target.prices) if target.prices.get(s) != prices.get(s))
        raise ForgedTarget(f"prices differ from the candle data for {wrong[:10]}")
    universe = set(panel.symbols)
    strangers = sorted(set(target.weights) - universe)
    if strangers:
        raise ForgedTarget(f"weights name {len(strangers)} symbols outside the data's universe: {strangers[:5]}")
    values = np.array(list(target.weights.values()), dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ForgedTarget("weights must be finite and non-negative")
    if float(values.sum()) > 1.0 + WEIGHT_SUM_TOLERANCE:
        raise ForgedTarget(f"weights sum to {float(values.sum()):.6f} > 1")
    check_sizing(target, params)
    unpriced = sorted(s for s, w in target.weights.items() if w > 0 and s not in prices)
    if unpriced:
        raise ForgedTarget(f"weights on symbols without a price: {unpriced[:5]}")
    # The forecasts do not depend on the signal state (only the regime does), so they are recomputed exactly.
    expected = compute_targets(panel, params, None)[0].expected_returns
    if dict(target.expected_returns) != expected:
        raise ForgedTarget("expected returns differ from the ones the data and parameters give")
    return prices

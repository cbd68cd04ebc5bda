"""Compile the decision kernels ahead of the first cycle.

numba compiles a ``@njit`` function on its first call.  On a cold cache that takes tens of seconds on two
cores, and a service that compiles inside its first live cycle answers nothing else meanwhile: the first
plan is late and a supervisor probing /healthz sees a hung process.  ``compile_decision_kernels`` runs
``compute_targets`` and ``risk_plan`` once on a small synthetic panel, which compiles (or loads from the
on-disk cache) every kernel the live path uses.  The container image runs it at build time
(``python -m aura.warmup``) so its cache ships warm, and the signal and risk services run it at boot
before they report ready.

The inputs are synthetic on purpose: warm-up must not depend on market data being present, and its result
is discarded.  A seeded generator keeps it deterministic.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, risk_plan
from aura.strategy.risk_gates import kill_switch_after, rearm_due, stop_trigger
from aura.strategy.signal import compute_targets
from aura.strategy.types import MarketRule, Panel
from shared.candles import decode_panel, encode_panel

_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT")
_BARS = 420  # longer than every default lookback, so the scoring path (not just the screen) is compiled
_DAY_MS = 86_400_000


def _synthetic_panel() -> Panel:
    rng = np.random.default_rng(20260101)
    steps = rng.normal(0.001, 0.03, size=(_BARS, len(_SYMBOLS)))
    close = 100.0 * np.exp(np.cumsum(steps, axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    high = np.maximum(open_, close) * 1.01
    low = np.minimum(open_, close) * 0.99
    volume = np.full_like(close, 1e7)
    timestamps = np.arange(_BARS, dtype=np.int64) * _DAY_MS
    # Round-tripped through the bus encoding: the service decodes read-only arrays, and numba compiles a
    # separate specialisation for read-only inputs, so warming on writable arrays would compile the wrong one.
    return decode_panel(encode_panel(Panel(_SYMBOLS, timestamps, open_, high, low, close, volume)))


def compile_decision_kernels(params: StrategyParams | None = None) -> float:
    """Run the live decision path once on synthetic data; returns the seconds it took."""
    started = time.perf_counter()
    params = params or StrategyParams()
    panel = _synthetic_panel()
    targets, _ = compute_targets(panel, params, None)
    prices = {s: float(panel.close[-1, j]) for j, s in enumerate(_SYMBOLS)}
    rules = {s: MarketRule(s, step_size=1e-5, tick_size=0.01, min_qty=1e-5, min_notional=5.0) for s in _SYMBOLS}
    holding = {_SYMBOLS[1]: 1.0}
    state = PortfolioState(cash=10_000.0, holdings=holding, entry_prices={_SYMBOLS[1]: prices[_SYMBOLS[1]] * 1.5},
                           equity_history=(10_000.0, 10_500.0, 9_000.0))
    # With the decision bar's volumes, as risk plans (the participation cap's kernel too).
    risk_plan(targets, state, prices, rules, params, 0.001, volumes=dict.fromkeys(_SYMBOLS, 1e9),
              max_participation=0.1)
    risk_plan(None, state, prices, rules, params, 0.001)  # the tick path: stops and kill-switch without targets
    price = prices[_SYMBOLS[1]]
    stop_trigger(price * 1.5, price, price, price, params.stop_loss, params.take_profit)  # the tick's [SL_CHECK]
    # The latch policy risk applies around each decision (services.risk.service: rearm, latch), with the Python
    # types it passes: bools and integer times.
    rearm_due(True, False, _DAY_MS, 2 * _DAY_MS, params.kill_switch_cooldown, _DAY_MS)
    kill_switch_after(False, True, False, False, 0, _DAY_MS)
    return time.perf_counter() - started


def main() -> int:
    seconds = compile_decision_kernels()
    print(f"decision kernels ready in {seconds:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

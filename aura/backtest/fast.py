"""Fast path: the reference loop (engine.py) as one numba kernel over precomputed indicator tensors.

Why it is the same strategy and not a look-alike: the indicator tensors are built by the very functions
``compute_targets`` evaluates per bar (indicators.indicator_at, score.normalize_row, score.expected_return),
and the kernel calls the same numba cores for the screen, the composite, the vote, the regime step, the
selector, the sizing, the gates and the rebalance (pipeline.plan_core, on the same compact symbol set that
``risk_plan`` builds: held or targeted names in name order) and the fills (execution.py).  What differs is
only the bookkeeping around them (arrays instead of Panel slices and dicts).
tests/backtest/test_fast_parity.py asserts identical trades and equity on real data for several parameter
sets.  The portfolio pass lives in portfolio_kernel.py, the tensor builders in tensors.py, the signal pass here.

``IndicatorCache`` computes each tensor once per distinct lookback (and min_history / normalisation), so a
grid of parameter sets shares them; ``run_fast`` then costs one kernel call per parameter set.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import njit

from aura.backtest.data import last_valid_index
from aura.backtest.engine import BacktestConfig, BacktestResult, Trades
from aura.backtest.portfolio_kernel import exec_array, portfolio_pass
from aura.backtest.refcount import alive as _alive
from aura.backtest.refcount import uncounted as _uncounted
from aura.backtest.tensors import (
    breadth_series,
    btc_series,
    expected_return_tensor,
    mark_tensor,
    normalize_tensor,
    screen_lists,
)
from aura.strategy.indicators import (
    DRAWDOWN,
    MOMENTUM,
    QUOTE_VOLUME,
    SMA,
    TREND,
    VOL_ADJ,
    VOLATILITY,
    eligible_tensor,
    indicator_tensor,
)
from aura.strategy.packing import (
    F_B_BEAR,
    F_B_BULL,
    F_EXP_BEAR,
    F_EXP_BULL,
    F_EXP_SIDE,
    F_W_DD,
    F_W_ML,
    F_W_MS,
    F_W_TR,
    F_W_VA,
    I_CONFIRM,
    I_K_BEAR,
    I_K_BULL,
    I_K_SIDE,
    I_VOTE_STEP,
    I_VOTES,
    pack_params,
    signal_key,
)
from aura.strategy.params import StrategyParams
from aura.strategy.rebalance import rule_arrays
from aura.strategy.regime import NO_CANDIDATE, raw_regime, regime_step
from aura.strategy.score import composite_value
from aura.strategy.selector import regime_book
from aura.strategy.signal import btc_column, choose_into, name_ranks
from aura.strategy.types import MarketRule, Panel


class IndicatorCache:
    """Indicator tensors keyed by what they depend on, shared by every parameter set evaluated on a panel."""

    def __init__(self, panel: Panel) -> None:
        self.panel = panel
        self.close = np.ascontiguousarray(panel.close, dtype=np.float64)
        self.volume = np.ascontiguousarray(panel.volume, dtype=np.float64)
        self.name_rank, self.name_order = name_ranks(panel.symbols)
        self.btc_j = btc_column(panel.symbols)
        self._store: dict[tuple[object, ...], np.ndarray] = {}

    def _get(self, key: tuple[object, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        arr = self._store.get(key)
        if arr is None:
            arr = make()
            self._store[key] = arr
        return arr

    def raw(self, kind: int, n: int) -> np.ndarray:
        return self._get(("raw", kind, n), lambda: indicator_tensor(kind, self.close, self.volume, n))

    def eligible(self, min_history: int) -> np.ndarray:
        return self._get(("elig", min_history), lambda: eligible_tensor(self.close, min_history))

    def normalized(self, kind: int, n: int, min_history: int, method: int) -> np.ndarray:
        return self._get(("z", kind, n, min_history, method), lambda: normalize_tensor(
            self.raw(kind, n), self.eligible(min_history), method, self.name_order))

    def expected_returns(self, lookback: int) -> np.ndarray:
        return self._get(("er", lookback), lambda: expected_return_tensor(self.raw(MOMENTUM, lookback), lookback))

    def breadth(self, sma: int, min_history: int) -> np.ndarray:
        return self._get(("breadth", sma, min_history), lambda: breadth_series(
            self.close, self.raw(SMA, sma), self.eligible(min_history)))

    def btc(self, regime_sma: int) -> np.ndarray:
        return self._get(("btc", regime_sma), lambda: btc_series(self.close, self.btc_j, regime_sma))

    def screen(self, p: StrategyParams) -> tuple[np.ndarray, np.ndarray]:
        """screen_lists for ``p``'s screen (lookbacks, min_history, thresholds): (ptr, idx)."""
        key = (p.momentum_lookback, p.momentum_long_lookback, p.sma_length, p.vol_window, p.drawdown_window,
               p.liquidity_window, p.min_history, float(p.screen_min_momentum), float(p.screen_max_drawdown),
               float(p.min_quote_volume))
        ptr = self._store.get(("screen_ptr", *key))
        if ptr is None:
            ptr, idx = screen_lists(
                self.eligible(p.min_history), self.raw(MOMENTUM, p.momentum_lookback),
                self.raw(MOMENTUM, p.momentum_long_lookback), self.raw(TREND, p.sma_length),
                self.raw(VOL_ADJ, p.vol_window), self.raw(DRAWDOWN, p.drawdown_window),
                self.raw(QUOTE_VOLUME, p.liquidity_window), *key[7:])
            self._store[("screen_ptr", *key)] = ptr
            self._store[("screen_idx", *key)] = idx
        return ptr, self._store[("screen_idx", *key)]

    def marks(self) -> np.ndarray:
        return self._get(("marks",), lambda: mark_tensor(self.close))

    def decision_bars(self, bar_ms: int, every: int) -> np.ndarray:
        """schedule.is_decision_bar for every bar (same integer arithmetic, vectorised)."""
        ts = self.panel.timestamps  # converted inside: a cached mask must not cost a copy of the clock
        return self._get(("decide", bar_ms, every), lambda: (
            np.ones(len(ts), dtype=np.bool_) if every <= 1 else ((ts.astype(np.int64) // bar_ms) % every == 0)))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._store.values())


@dataclass(frozen=True)
class Market:
    """Panel-level arrays the kernel needs besides the indicators (built once per panel and rule set)."""

    panel: Panel
    cache: IndicatorCache
    opn: np.ndarray  # the candle columns below are symbol-major copies (N, T) for the portfolio pass
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    marks: np.ndarray
    last: np.ndarray
    rules: tuple[np.ndarray, ...]  # rebalance.rule_arrays: has_rule, step, step_scale, step_units, min_qty, ...
    ts: np.ndarray  # bar open times, int64: the kill-switch cooldown's clock

    @classmethod
    def build(cls, panel: Panel, rules: dict[str, MarketRule]) -> Market:
        if list(panel.symbols) != sorted(panel.symbols):
            raise ValueError("panel columns must be in symbol-name order (load_panel does this)")
        cache = IndicatorCache(panel)

        def by_symbol(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(a, dtype=np.float64).T)

        return cls(panel, cache, by_symbol(panel.open), by_symbol(panel.high), by_symbol(panel.low),
                   by_symbol(panel.close), by_symbol(panel.volume), by_symbol(cache.marks()),
                   last_valid_index(panel), rule_arrays(panel.symbols, rules),
                   np.ascontiguousarray(panel.timestamps, dtype=np.int64))


@njit(cache=True)
def signal_pass(dmask: np.ndarray, z_ms: np.ndarray, z_ml: np.ndarray, z_tr: np.ndarray, z_va: np.ndarray,
                z_dd: np.ndarray, r_vol: np.ndarray, er_t: np.ndarray, cand_ptr: np.ndarray, cand_idx: np.ndarray,
                breadth: np.ndarray, btc: np.ndarray, ip: np.ndarray, fp: np.ndarray, name_rank: np.ndarray,
                start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """compute_targets on every decision bar of the run: (regime in force per run bar, and per decision bar
    in order: how many names are targeted, their columns in name order, their weights).

    signal.decide read from tensors: the screen's candidates come from ``screen_lists`` (shared by the grid),
    their composites are gathered straight into the vote's buffer, and signal.choose_into votes, selects and
    sizes.  Sparse on purpose: hourly runs have 64k bars, and a dense (bars x symbols) weight matrix would
    cost more to allocate than the signal itself.  The signal does not depend on the portfolio, so this pass
    is memoised on the signal parameters and shared by every parameter set that differs only in gates and
    execution knobs.
    """
    n = z_ms.shape[1]
    run_len = max(0, end - start + 1)
    n_dec = 0
    for t in range(start, end + 1):
        n_dec += dmask[t]
    regimes = np.zeros(run_len, dtype=np.int8)
    w = np.zeros(n)
    votes = ip[I_VOTES]
    vstep = ip[I_VOTE_STEP]
    cands = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.int64)
    order = np.zeros(n, dtype=np.int64)
    vals = np.zeros(votes * n)
    k_max = max(1, ip[I_K_BULL], ip[I_K_SIDE], ip[I_K_BEAR])
    n_targets = np.zeros(n_dec, dtype=np.int64)
    t_sym = np.zeros((n_dec, k_max), dtype=np.int64)
    t_w = np.zeros((n_dec, k_max))
    w_ms, w_ml, w_tr, w_va, w_dd = fp[F_W_MS], fp[F_W_ML], fp[F_W_TR], fp[F_W_VA], fp[F_W_DD]
    # uncounted aliases of what each choose_into binds (see _uncounted; owners alive to the end)
    u_cands, u_vals, u_total, u_order, u_w = (_uncounted(cands), _uncounted(vals), _uncounted(total),
                                              _uncounted(order), _uncounted(w))
    u_vol, u_er, u_ip, u_fp, u_rank = (_uncounted(r_vol), _uncounted(er_t), _uncounted(ip), _uncounted(fp),
                                       _uncounted(name_rank))
    regime = 0
    cand = NO_CANDIDATE
    count = 0
    d = 0
    for t in range(start, end + 1):
        if dmask[t]:
            raw = raw_regime(breadth[t], btc[t], fp[F_B_BULL], fp[F_B_BEAR])
            regime, cand, count = regime_step(regime, cand, count, raw, ip[I_CONFIRM])
            exposure, k = regime_book(regime, fp[F_EXP_BULL], fp[F_EXP_SIDE], fp[F_EXP_BEAR],
                                      ip[I_K_BULL], ip[I_K_SIDE], ip[I_K_BEAR])
            c = 0
            p0 = cand_ptr[t]
            m = cand_ptr[t + 1] - p0
            if exposure > 0 and k > 0 and m > 0:  # otherwise decide() leaves every weight at 0
                for a in range(m):
                    cands[a] = cand_idx[p0 + a]
                for v in range(votes):
                    s = t - v * vstep
                    base = v * m
                    if s < 0:
                        for a in range(m):
                            vals[base + a] = np.nan
                    else:
                        for a in range(m):
                            j = cands[a]
                            vals[base + a] = composite_value(z_ms[s, j], z_ml[s, j], z_tr[s, j], z_va[s, j],
                                                             z_dd[s, j], w_ms, w_ml, w_tr, w_va, w_dd)
                kept = choose_into(u_cands, m, votes, u_vals, u_vol[t], u_er[t], exposure, k, u_ip, u_fp, u_rank,
                                   u_total, u_order, u_w)
                # order[:kept] is in name order, which is column order (Market.build checks it), so the
                # targets come out as a scan of w by column would give them.
                for a in range(kept):
                    j = order[a]
                    if w[j] > 0:
                        t_sym[d, c] = j
                        t_w[d, c] = w[j]
                        c += 1
                    w[j] = 0.0
            n_targets[d] = c
            d += 1
        regimes[t - start] = regime
    _alive(cands)
    _alive(vals)
    _alive(total)
    _alive(order)
    _alive(w)
    return regimes, n_targets, t_sym, t_w


def kernel_inputs(market: Market, params: StrategyParams) -> tuple[np.ndarray, ...]:
    """The tensors a parameter set's signal pass reads (from the shared cache), in argument order."""
    c = market.cache
    mh, norm = params.min_history, params.normalization
    return (
        c.normalized(MOMENTUM, params.momentum_lookback, mh, norm),
        c.normalized(MOMENTUM, params.momentum_long_lookback, mh, norm),
        c.normalized(TREND, params.sma_length, mh, norm),
        c.normalized(VOL_ADJ, params.vol_window, mh, norm),
        c.normalized(DRAWDOWN, params.drawdown_window, mh, norm),
        c.raw(VOLATILITY, params.vol_window),
        c.expected_returns(params.momentum_lookback),
        *c.screen(params),
        c.breadth(params.sma_length, mh),
        c.btc(params.regime_sma),
    )


class SignalCache:
    """Signal-pass results keyed by (signal parameters, run range), least recently used dropped first."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[tuple[object, ...], tuple[np.ndarray, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, market: Market, params: StrategyParams, cfg: BacktestConfig, start: int, end: int,
            packed: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
        """``packed``: pack_params(params) if the caller has it already."""
        key = (signal_key(params), cfg.bar_ms, start, end)
        hit = self._store.get(key)
        if hit is not None:
            self.hits += 1
            self._store.move_to_end(key)
            return hit
        self.misses += 1
        ip, fp = packed or pack_params(params)
        result = signal_pass(market.cache.decision_bars(cfg.bar_ms, params.rebalance_every),
                             *kernel_inputs(market, params), ip, fp, market.cache.name_rank, start, end)
        self._store[key] = result
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return result


_scratch = threading.local()


def _trade_buffers(capacity: int) -> tuple[np.ndarray, ...]:
    """The trade columns (bar, sym, side, qty, px, fee, reason, at) of at least ``capacity`` rows, this
    thread's own (a kernel call and the copy of its output are not atomic under the GIL)."""
    bufs: tuple[np.ndarray, ...] | None = getattr(_scratch, "trades", None)
    if bufs is None or bufs[0].shape[0] < capacity:
        i8, f8 = np.int64, np.float64
        bufs = tuple(np.empty(capacity, dtype=t) for t in (i8, i8, i8, f8, f8, f8, i8, i8))
        _scratch.trades = bufs
    return bufs


def run_fast(market: Market, params: StrategyParams, cfg: BacktestConfig, trade_capacity: int = 16384,
             signals: SignalCache | None = None) -> BacktestResult:
    """engine.run_reference's result, computed by the two numba passes."""
    panel = market.panel
    t_len = len(panel.timestamps)
    end = t_len - 1 if cfg.end < 0 else min(cfg.end, t_len - 1)
    start = max(0, cfg.start)
    run_len = max(0, end - start + 1)
    ip, fp = pack_params(params)
    regime, n_targets, t_sym, t_w = (signals or SignalCache(1)).get(market, params, cfg, start, end, (ip, fp))
    dmask = market.cache.decision_bars(cfg.bar_ms, params.rebalance_every)
    er_t = market.cache.expected_returns(params.momentum_lookback)
    eq = np.empty(run_len)  # the kernel writes every run bar
    cash = np.empty(run_len)
    halted = np.zeros(run_len, dtype=np.bool_)
    xp = exec_array(cfg)
    while True:
        # Written up to the count the kernel returns, read no further and copied out below, so they are
        # scratch, reused by the thread's next call (eight fresh 128 kB buffers per evaluation were a
        # measurable part of a daily evaluation).
        tr = _trade_buffers(trade_capacity)
        nt, halted_bar, skipped, capped_bar, capped_legs, capped_notional = portfolio_pass(
            dmask, n_targets, t_sym, t_w, market.opn, market.high, market.low, market.close, market.volume,
            market.marks, market.last, *market.rules, er_t, ip, fp, xp, market.ts, cfg.bar_ms,
            cfg.fill_at == "close", start, end, eq, cash, halted, *tr)
        if nt <= tr[0].shape[0]:  # every trade fitted (the kernel counts past its capacity)
            break
        trade_capacity = 2 * nt
    trades = Trades(*(a[:nt].copy() for a in tr))
    return BacktestResult(panel.symbols, panel.timestamps[start:end + 1].copy(), eq, cash, regime.copy(), trades,
                          cfg.bar_ms, int(halted_bar), int(skipped), start, halted, int(capped_bar),
                          int(capped_legs), float(capped_notional))

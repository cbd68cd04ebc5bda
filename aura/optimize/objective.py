"""The one objective: how good a parameter set is against buy-and-hold gold and SPY, written once.

For each window, the strategy's per-bar returns after costs (the fast backtester, aura.backtest.fast) are set
against each benchmark's per-bar returns on the same bars; the window's figure is the *worst* over the
benchmarks of the Sharpe ratio of the excess returns (strategy minus benchmark).  The score is the mean of
that figure over the windows given, annualised, minus a turnover penalty:

    score = sqrt(bars_per_year) * mean_w[ min_b SR(r_w - b_w) ] - turnover_penalty * mean_w[ turnover_w ]

The worst benchmark is taken per window, then averaged, because that is what the promotion gate demands
(both benchmarks beaten on every window): a set that beats SPY in one year and gold in the next is not
what gets promoted, so it should not be what gets selected.

Calendar alignment (the strategy's bars are the calendar): crypto trades every day (every hour on 1h), SPY and
gold only on US sessions.  A benchmark close labelled trading date D is known from D 21:00 UTC (the later
bound of the US close, aura.backtest.metrics), so on the crypto grid bar t carries the newest close known at
bar t's close.  The benchmark's return on bar t is that close over the one carried by bar t - 1, minus one:
zero on weekends, holidays and intraday bars (a held ETF keeps its last price; nothing is invented), and the
whole Friday-to-Monday move on Monday's bar.  Compounded over a window it is exactly the benchmark's return
between the closes known at the window's edges, and the strategy and both benchmarks always have one return
per bar, on the same bars, over the same close-to-close intervals.

Selection and judgement cannot be mixed up: ``selection_score`` accepts training windows only and returns a
``SelectionScore``, the only thing successive halving ranks on; ``validation_score`` accepts validation
windows only.  Both call the same ``_score``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, SignalCache, run_fast
from aura.backtest.metrics import align_equity_benchmark, bars_per_year
from aura.optimize.folds import TrainWindow, ValidationWindow, Window
from aura.strategy.params import StrategyParams

BENCHMARK_NAMES: tuple[str, ...] = ("GOLD", "SPY")  # the promotion gate's two alternatives (data/.../benchmarks/1d)


@dataclass(frozen=True, eq=False)
class BenchmarkCloses:
    """Benchmark closes on the panel's bar grid: ``closes[b, t]`` is benchmark b's close known at bar t's close
    (NaN before its first close is known)."""

    names: tuple[str, ...]
    bar_open_ms: np.ndarray  # (T,) the panel's bar open times
    bar_ms: int
    closes: np.ndarray  # (B, T)
    # returns() per window, read-only: a coordinator turns thousands of answers on a handful of windows into
    # WindowResults, and each asked for the same benchmark returns again.
    _returns: dict[tuple[int, int], np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def align(cls, series: Mapping[str, tuple[np.ndarray, np.ndarray]], bar_open_ms: np.ndarray, bar_ms: int,
              ) -> BenchmarkCloses:
        """``series``: name -> (trading-date label ms, close), as aura.backtest.data.load_benchmark returns."""
        names = tuple(sorted(series))
        if not names:
            raise ValueError("no benchmark series given")
        bars = np.asarray(bar_open_ms, dtype=np.int64)
        rows = [align_equity_benchmark(np.asarray(series[n][0], dtype=np.int64),
                                       np.asarray(series[n][1], dtype=np.float64), bars, bar_ms) for n in names]
        return cls(names, bars, int(bar_ms), np.vstack(rows))

    def returns(self, window: Window) -> np.ndarray:
        """(B, len(window)) per-bar returns, read-only; the first is from the close known at bar
        ``window.start - 1``."""
        known = self._returns.get((window.start, window.stop))
        if known is not None:
            return known
        if window.stop > self.closes.shape[1]:
            raise ValueError(f"window [{window.start}, {window.stop}) runs past the {self.closes.shape[1]} bars")
        if window.start < 1:
            raise ValueError("a window must start at bar 1 or later: its first return needs the bar before")
        seg = self.closes[:, window.start - 1:window.stop]
        for b, name in enumerate(self.names):
            if not np.all(np.isfinite(seg[b])):
                raise ValueError(f"benchmark {name} has no close known before bar {window.start - 1}: it cannot be "
                                 f"compared on window [{window.start}, {window.stop})")
        out = seg[:, 1:] / seg[:, :-1] - 1.0
        out.flags.writeable = False
        self._returns[window.start, window.stop] = out
        return out


@dataclass(frozen=True, eq=False)
class WindowResult:
    """One parameter set on one window: what a worker sends back (arrays and numbers only)."""

    window: Window  # TrainWindow or ValidationWindow
    returns: np.ndarray  # (n,) strategy per-bar returns after fees and slippage, from initial cash
    bench: np.ndarray  # (B, n) benchmark per-bar returns on the same bars
    bench_names: tuple[str, ...]
    bar_ms: int
    turnover: float  # traded notional / mean equity, per year
    trades: int

    def __post_init__(self) -> None:
        n = len(self.window)
        if self.returns.shape != (n,) or self.bench.shape != (len(self.bench_names), n):
            raise ValueError(f"window of {n} bars with returns {self.returns.shape} and benchmarks "
                             f"{self.bench.shape}: the calendars are not aligned")


def evaluate_window(market: Market, params: StrategyParams, window: Window, benchmarks: BenchmarkCloses,
                    cfg: BacktestConfig, signals: SignalCache | None = None) -> WindowResult:
    """Run the fast backtester on the bars of ``window``: from cash at ``window.first_bar`` (the bars before are
    indicator history), scored from ``window.start`` (the bars between only make the state it opens with)."""
    panel = market.panel
    if benchmarks.bar_ms != cfg.bar_ms or not np.array_equal(benchmarks.bar_open_ms, panel.timestamps):
        raise ValueError("the benchmarks were aligned to another bar grid than this market's panel")
    result = run_fast(market, params, dataclasses.replace(cfg, start=window.first_bar, end=window.stop - 1),
                      signals=signals)
    path = np.concatenate([[cfg.initial_cash], result.equity])
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(path[:-1] > 0, path[1:] / path[:-1] - 1.0, 0.0)
    skip = window.start - window.first_bar
    returns, equity = returns[skip:], result.equity[skip:]
    t = result.trades
    scored = np.asarray(t.bar, dtype=np.int64) >= window.start  # the trades of the scored bars
    qty, price = np.asarray(t.qty, dtype=np.float64)[scored], np.asarray(t.price, dtype=np.float64)[scored]
    notional = float(np.sum(qty * price))
    years = len(equity) / bars_per_year(cfg.bar_ms)
    mean_eq = float(np.mean(equity))
    turnover = notional / mean_eq / years if mean_eq > 0 else 0.0
    return WindowResult(window, returns, benchmarks.returns(window), benchmarks.names, cfg.bar_ms, turnover,
                        int(np.count_nonzero(scored)))


@dataclass(frozen=True)
class ObjectiveSettings:
    # Score points per unit of annual turnover (the whole book traded once a year).  Fees and slippage are
    # already in the returns; this charges them a second time as a haircut for what the backtest does not
    # model well (market impact of size, queue position, partial fills), converted to Sharpe units at a
    # typical 60% annual volatility of crypto excess returns: 0.15% per side / 0.6 = 0.0025.  It makes a
    # set that trades twice as much for the same excess Sharpe lose, which is the point.
    turnover_penalty: float = 0.0025

    def __post_init__(self) -> None:
        if not self.turnover_penalty >= 0:
            raise ValueError(f"turnover_penalty must be >= 0, got {self.turnover_penalty}")


def sharpe(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Per-bar Sharpe ratio (mean / sample standard deviation, ddof 1); 0 where the deviation is 0."""
    mean = np.mean(x, axis=axis)
    std = np.std(x, axis=axis, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(std > 0, mean / np.where(std > 0, std, 1.0), 0.0)


def excess_sharpe(result: WindowResult) -> np.ndarray:
    """(B,) per-bar Sharpe ratio of the strategy's excess returns over each benchmark."""
    return np.atleast_1d(sharpe(result.returns[None, :] - result.bench))


def _score(results: Sequence[WindowResult], settings: ObjectiveSettings) -> tuple[float, float]:
    """(score, worst-benchmark per-bar excess Sharpe averaged over the windows)."""
    if not results:
        raise ValueError("no windows to score")
    bar_ms, names = results[0].bar_ms, results[0].bench_names
    if any(r.bar_ms != bar_ms or r.bench_names != names for r in results):
        raise ValueError("windows with different timeframes or benchmarks cannot be averaged")
    worst = float(np.mean([np.min(excess_sharpe(r)) for r in results]))
    turnover = float(np.mean([r.turnover for r in results]))
    return worst * math.sqrt(bars_per_year(bar_ms)) - settings.turnover_penalty * turnover, worst


@dataclass(frozen=True)
class SelectionScore:
    """What a candidate is ranked on: made from training windows only (checked here, and by selection_score)."""

    value: float  # the objective (annualised, penalised); higher is better
    sharpe: float  # worst-benchmark excess Sharpe per bar, unpenalised: the trial's Sharpe for the DSR
    windows: tuple[TrainWindow, ...]

    def __post_init__(self) -> None:
        if not self.windows or not all(isinstance(w, TrainWindow) for w in self.windows):
            raise TypeError(f"a selection score is made from training windows only, got {self.windows}")

    @property
    def bars(self) -> int:
        return sum(len(w) for w in self.windows)


def selection_score(results: Sequence[WindowResult], settings: ObjectiveSettings = ObjectiveSettings(),
                    ) -> SelectionScore:
    """The objective on training windows: the only score selection (successive halving) ranks on."""
    bad = [r.window for r in results if not isinstance(r.window, TrainWindow)]
    if bad:
        raise TypeError(f"selection may only see training windows; got {bad[0]!r}")
    value, worst = _score(results, settings)
    return SelectionScore(value, worst, tuple(r.window for r in results))  # type: ignore[misc]


def rung_scores(results: Sequence[WindowResult], settings: ObjectiveSettings = ObjectiveSettings(),
                ) -> list[SelectionScore]:
    """``selection_score([r])`` of each result, the same floats, in one array pass per window: successive
    halving scores every candidate of a rung on one window, and one numpy call per candidate was most of a
    coordinator's CPU.  (Each row is reduced along its contiguous last axis, as for one result alone.)"""
    out: list[SelectionScore | None] = [None] * len(results)
    groups: dict[tuple[Window, int], list[int]] = {}  # one benchmark array per window (BenchmarkCloses.returns)
    for i, r in enumerate(results):
        if not isinstance(r.window, TrainWindow):
            raise TypeError(f"selection may only see training windows; got {r.window!r}")
        groups.setdefault((r.window, id(r.bench)), []).append(i)
    for idx in groups.values():
        first = results[idx[0]]
        strat = np.stack([results[i].returns for i in idx])  # (k, n)
        worst = np.min(sharpe(strat[:, None, :] - first.bench[None, :, :]), axis=1)  # (k,)
        ann = math.sqrt(bars_per_year(first.bar_ms))
        for k, i in enumerate(idx):
            w = float(worst[k])
            value = w * ann - settings.turnover_penalty * float(results[i].turnover)
            out[i] = SelectionScore(value, w, (first.window,))  # type: ignore[arg-type]
    return [s for s in out if s is not None]


def validation_score(results: Sequence[WindowResult], settings: ObjectiveSettings = ObjectiveSettings()) -> float:
    """The same objective on validation windows (the gate's comparison with the incumbent)."""
    bad = [r.window for r in results if not isinstance(r.window, ValidationWindow)]
    if bad:
        raise TypeError(f"judgement is on validation windows only; got {bad[0]!r}")
    return _score(results, settings)[0]


def excess_matrix(results: Sequence[WindowResult]) -> np.ndarray:
    """(B, n, N) excess returns of N candidates on one common window: a CSCV input (stats.pbo_cscv).

    Every candidate of a halving run has a result on the run's smallest budget, pruned ones included, so
    that window holds them all.
    """
    if len(results) < 2:
        raise ValueError("CSCV compares at least two candidates")
    first = results[0]
    if any(r.window != first.window or r.bench_names != first.bench_names for r in results):
        raise ValueError("every candidate must be on the same window with the same benchmarks")
    return np.stack([r.returns[None, :] - r.bench for r in results], axis=-1)

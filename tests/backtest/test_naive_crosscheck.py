"""Independent check: top-k momentum without gates, re-implemented naively in plain Python.

The naive version shares no code with the strategy or the backtester (only the written spec: screen
close > SMA and momentum > -50%, top-k by momentum with ties to the symbol name, equal weights,
sells before buys, lot-floored quantities, minimum notional, buys scaled into the cash, fills at the
next open with slippage and fees; each fill at most a share of the bar's volume, the rest dropped, and
square-root impact on top of the slippage).  Both must produce the same trades and final equity.
"""

from __future__ import annotations

import math

import pytest

from aura.backtest.engine import BacktestConfig, run_reference
from aura.backtest.fast import Market, run_fast
from aura.strategy.params import StrategyParams
from aura.strategy.rebalance import REASONS
from aura.strategy.schedule import timeframe_ms
from aura.strategy.types import MarketRule, Panel

K, L, SMA, HIST = 2, 20, 20, 30
FEE, SLIP, CASH0, STEP, MIN_NOTIONAL, MIN_TRADE = 0.001, 0.0005, 10_000.0, 1e-6, 5.0, 5.0
IMPACT = 0.03  # slippage = SLIP + IMPACT * sqrt(quantity / bar volume)
SYMBOLS = ("ADA_USDT", "BNB_USDT", "BTC_USDT", "ETH_USDT", "LTC_USDT", "XRP_USDT")

# The full strategy reduced to plain top-k momentum: one factor, one snapshot, every regime the same,
# every gate off, nothing held back.
PARAMS = StrategyParams(
    momentum_lookback=L, momentum_long_lookback=L, sma_length=SMA, drawdown_window=SMA, vol_window=10,
    liquidity_window=5, min_history=HIST, min_quote_volume=0.0, screen_min_momentum=-0.5, screen_max_drawdown=1.0,
    w_mom_short=1.0, w_mom_long=0.0, w_trend=0.0, w_vol_adj=0.0, w_drawdown=0.0, vote_offsets=1,
    exposure_bull=1.0, exposure_sideways=1.0, exposure_bear=1.0, top_k=K, top_k_sideways=K, top_k_bear=K,
    max_weight=1.0, kill_switch_drawdown=1.0, stop_loss=0.0, take_profit=0.0, cost_benefit_margin=0.0,
    rebalance_band=0.0, cash_buffer=0.0, min_trade_usdt=MIN_TRADE)


def lots(q: float) -> int:
    """Whole lots in ``q``; a value within float noise (1e-13 relative, 1e-9 absolute) below a whole number
    of lots counts as that number.  Holdings are kept as exact integers of lots, so they carry no noise."""
    x = q / STEP
    n = round(x)
    return n if n - max(1e-9, 1e-13 * x) <= x < n else math.floor(x)


def naive_backtest(panel: Panel, start: int, max_part: float,
                   ) -> tuple[list[tuple[int, str, str, float, float, str]], float, int]:
    syms = list(panel.symbols)
    close = panel.close.tolist()
    opn = panel.open.tolist()
    vol = panel.volume.tolist()
    cash = CASH0
    hold: dict[str, int] = {}  # lots
    pending: list[tuple[str, str, int, str]] = []
    trades: list[tuple[int, str, str, float, float, str]] = []
    equity = CASH0
    cut = 0
    for t in range(start, len(close)):
        for sym, side, n, reason in pending:  # fills at this bar's open
            j = syms.index(sym)
            o, v = opn[t][j], vol[t][j]
            if not (o > 0 and v > 0):
                continue
            if side == "sell":
                n = min(n, hold[sym])  # a cut sell left less than the plan assumed
            if n * STEP > max_part * v:  # more than the bar can take: the rest is dropped
                cut += 1
                n = lots(max_part * v)
                if n < 1 or n * STEP * o < MIN_NOTIONAL:
                    continue
            slip = SLIP + IMPACT * math.sqrt(n * STEP / v)
            if side == "sell":
                px = o * (1 - slip)
                gross = n * STEP * px
                cash += gross - gross * FEE
                hold[sym] -= n
                if hold[sym] == 0:
                    del hold[sym]
            else:
                px = o * (1 + slip)
                if n * STEP * px * (1 + FEE) > cash:  # dearer than planned: buy what the cash allows
                    n = lots(cash / (px * (1 + FEE)))
                    if n * STEP * px * (1 + FEE) > cash:
                        n -= 1
                    if n * STEP * px < MIN_NOTIONAL:
                        continue
                cash -= n * STEP * px * (1 + FEE)
                hold[sym] = hold.get(sym, 0) + n
            trades.append((t, sym, side, n * STEP, px, reason))
        pending = []
        # decision at the close of t: screen, then the k strongest momentum names
        momentum: dict[str, float] = {}
        for j, sym in enumerate(syms):
            history = [c for c in (close[i][j] for i in range(t + 1)) if c == c]
            if len(history) < HIST or math.isnan(close[t][j]):
                continue
            sma = sum(close[i][j] for i in range(t - SMA + 1, t + 1)) / SMA
            mom = close[t][j] / close[t - L][j] - 1
            if close[t][j] > sma and mom > -0.5:
                momentum[sym] = mom
        chosen = sorted(momentum, key=lambda s: (-momentum[s], s))[:K]
        weights = {s: 1.0 / len(chosen) for s in chosen}
        price = {sym: close[t][j] for j, sym in enumerate(syms)}
        equity = cash + sum(n * STEP * price[s] for s, n in hold.items())
        sells, buys = [], []
        for sym in sorted(set(weights) | set(hold)):
            current = hold.get(sym, 0)
            delta = weights.get(sym, 0.0) * equity / price[sym] - current * STEP
            if delta < 0:
                exit_all = sym not in weights
                n = current if exit_all else min(lots(-delta), current)
                if n >= 1 and n * STEP * price[sym] >= (MIN_NOTIONAL if exit_all else max(MIN_NOTIONAL, MIN_TRADE)):
                    sells.append((sym, "sell", n, "exit" if exit_all else "trim"))
            elif delta > 0:
                buys.append((sym, "buy", lots(delta), "enter" if current == 0 else "add"))
        cash_after = cash + sum(n * STEP * price[s] * (1 - FEE) for s, _, n, _ in sells)
        need = sum(n * STEP * price[s] * (1 + FEE) for s, _, n, _ in buys)
        scale = min(1.0, cash_after / need) if need > 0 else 1.0
        fitted = []
        for sym, side, n, reason in buys:
            n = lots(n * STEP * scale)
            if n >= 1 and n * STEP * price[sym] >= max(MIN_NOTIONAL, MIN_TRADE):
                fitted.append((sym, side, n, reason))
        pending = sells + fitted
        equity = cash + sum(n * STEP * price[s] for s, n in hold.items())
    return trades, equity, cut


@pytest.fixture(scope="module")
def small(panel_1d: Panel) -> Panel:
    cols = [panel_1d.symbols.index(s) for s in SYMBOLS]
    rows = slice(900, 1500)  # 2020-02 .. 2021-09: a crash, a long bull run, a correction
    return Panel(SYMBOLS, panel_1d.timestamps[rows],
                 *(getattr(panel_1d, f)[rows][:, cols].copy() for f in ("open", "high", "low", "close", "volume")))


def _rules(panel: Panel) -> dict[str, MarketRule]:
    return {s: MarketRule(s, STEP, 0.0, STEP, MIN_NOTIONAL) for s in panel.symbols}


# 10%: the default, which never binds on these liquid names with 10k USDT; 2e-5 of a bar's volume cuts about half
# of the legs (678 of them), so the cut, the dropped remainders and the sells of what is left are checked too.
@pytest.mark.parametrize("max_part", [0.1, 2e-5])
def test_naive_top_k_momentum_matches_the_strategy(small: Panel, max_part: float) -> None:
    start = 40
    naive_trades, naive_equity, naive_cut = naive_backtest(small, start, max_part)
    cfg = BacktestConfig(bar_ms=timeframe_ms("1d"), initial_cash=CASH0, fee_rate=FEE, slippage=SLIP, start=start,
                         max_participation=max_part, impact_coefficient=IMPACT)
    ref, _ = run_reference(small, PARAMS, cfg, _rules(small))
    assert ref.capped_legs == naive_cut and (naive_cut > 100) == (max_part < 0.1)
    ours = [(bar, small.symbols[s], "buy" if d > 0 else "sell", q, p, REASONS[r])
            for bar, s, d, q, p, _f, r, _a in ref.trades.rows()]
    assert len(ours) == len(naive_trades) > 50
    for a, b in zip(ours, naive_trades, strict=True):
        assert a[:3] == b[:3] and a[5] == b[5], (a, b)
        # Float quantities vs integer lots: where a value sits within rounding noise of a lot boundary the
        # two may floor one lot apart (a buy clamped to the cash does, once in this run), and the cash that
        # differs by a fraction of a cent then moves later sizes by a lot or two.  Decisions (bar, symbol,
        # side, reason) must be identical, quantities equal to 1e-8, prices to the last bits.
        assert a[3] == pytest.approx(b[3], rel=1e-8, abs=3 * STEP), (a, b)
        assert a[4] == pytest.approx(b[4], rel=1e-12), (a, b)
    assert ref.equity[-1] == pytest.approx(naive_equity, rel=1e-9)
    fast = run_fast(Market.build(small, _rules(small)), PARAMS, cfg)
    assert fast.trades.rows() == ref.trades.rows()

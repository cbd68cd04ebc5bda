"""The fast backtester frees every array its kernels allocate.

``pipeline.plan_rows`` is compiled without numba's reference counting (``_nrt=False``: it allocates nothing, and
the counting calls were 15% of a daily portfolio pass).  Code that allocates inside it fails to compile, but a
call from it to another compiled function that returns an array would compile and leak that array on every
plan, silently.  So the allocations of numba's runtime are counted (NUMBA_NRT_STATS, in a fresh process: the
switch is read at import) over repeated evaluations, stops and the participation cap included: every
allocation after the warm-up run must be freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json, sys
from pathlib import Path
from numba.core.runtime import rtsys
from aura.backtest.data import default_rules, load_panel
from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, run_fast
from aura.strategy.params import StrategyParams

panel = load_panel(Path(sys.argv[1]), "1d", ["BTC_USDT", "ETH_USDT", "SOL_USDT", "XRP_USDT", "DOGE_USDT"])
market = Market.build(panel, default_rules(panel).rules)
cfg = BacktestConfig(bar_ms=86_400_000, start=30, max_participation=0.01)
sets = [StrategyParams(stop_loss=0.1, take_profit=0.5, top_k=2), StrategyParams(kill_switch_drawdown=0.2)]
for p in sets:  # warm-up: compiled kernels, cached tensors and signal passes stay allocated on purpose
    run_fast(market, p, cfg)
gc.collect()
before = rtsys.get_allocation_stats()
trades = 0
for _ in range(10):
    for p in sets:
        result = run_fast(market, p, cfg)
        trades += len(result.trades.qty)
        del result
gc.collect()
after = rtsys.get_allocation_stats()
print(json.dumps({"alloc": after.alloc - before.alloc, "free": after.free - before.free,
                  "mi_alloc": after.mi_alloc - before.mi_alloc, "mi_free": after.mi_free - before.mi_free,
                  "trades": trades}))
"""


def test_repeated_evaluations_free_every_array_the_kernels_allocate(shared_data_dir: Path) -> None:
    env = {**os.environ, "NUMBA_NRT_STATS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(shared_data_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["trades"] > 0 and stats["alloc"] > 0, stats  # the runs traded and the counter counts
    assert stats["alloc"] == stats["free"] and stats["mi_alloc"] == stats["mi_free"], stats

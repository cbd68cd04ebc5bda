"""The boot warm-up compiles exactly the kernel specialisations a live cycle and a risk tick use.

If it compiled different ones (writable vs read-only arrays, other dtypes), the first live cycle would
still compile for tens of seconds inside the service's event loop: the bug this warm-up exists to prevent.
"""

from __future__ import annotations

import sys
from pathlib import Path

from numba.core.dispatcher import Dispatcher

from aura.strategy.params import StrategyParams
from aura.strategy.pipeline import PortfolioState, risk_plan
from aura.strategy.risk_gates import rearm_due
from aura.strategy.signal import compute_targets
from aura.warmup import compile_decision_kernels
from services.ingest.replay import load_history, load_market_rules, replay_step
from services.risk.latch import LatchDoc, after_decision
from services.risk.sync_guard import GuardState
from services.risk.tick import Latch, evaluate_tick
from shared.candles import decode_panel, encode_panel
from shared.contracts import PortfolioSnapshot

REPLAY = Path(__file__).resolve().parents[2] / "data" / "replay"


def compiled_signatures() -> dict[str, int]:
    out: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("aura.strategy") or module is None:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, Dispatcher):
                out[f"{name}.{attr}"] = len(value.signatures)
    return out


def test_live_cycle_and_tick_after_warmup_compile_nothing_new() -> None:
    compile_decision_kernels()
    before = compiled_signatures()
    assert sum(before.values()) > 0, "warm-up compiled no numba kernel at all"

    history = load_history(REPLAY, "1d")
    step = replay_step(history, len(history.timestamps) - 1, 400, "1d")
    assert step.snapshot is not None
    panel = decode_panel(encode_panel(step.snapshot))  # exactly what the signal service receives
    params = StrategyParams()
    targets, _ = compute_targets(panel, params, None)
    prices = {s: float(panel.close[-1, j]) for j, s in enumerate(panel.symbols)}
    rules = load_market_rules(REPLAY / "markets.json")
    held = panel.symbols[0]
    state = PortfolioState(cash=5_000.0, holdings={held: 0.1}, entry_prices={held: prices[held]},
                           equity_history=(10_000.0, 9_000.0))
    risk_plan(targets, state, prices, rules, params, 0.001)
    snapshot = PortfolioSnapshot(snapshot_id="s", cycle_id="c", plan_id="p", status="executed", cash=5_000.0,
                                 holdings={held: 0.1}, entry_prices={held: prices[held] * 1.3}, equity=6_000.0,
                                 equity_history=[10_000.0, 9_000.0])
    decision = evaluate_tick(snapshot, prices, rules, params, 0.001, Latch(), GuardState(), {})
    assert decision.checks and decision.checks[0].verdict in ("hold", "stop_loss")
    # and the latch transitions risk runs around each decision (a re-arm check, the latch after it)
    assert decision.outcome is not None
    after_decision(LatchDoc(halted=False), decision.outcome, "c", int(panel.timestamps[-1]), 3, 86_400_000, 6_000.0)
    rearm_due(True, False, int(panel.timestamps[-2]), int(panel.timestamps[-1]), 3, 86_400_000)

    after = compiled_signatures()
    grown = {k: (before.get(k, 0), v) for k, v in after.items() if v != before.get(k, 0)}
    assert not grown, f"a live cycle compiled kernels the warm-up did not: {grown}"

"""Every benchmark still runs and ends with its JSON line (small sizes; no figure is judged here).

Benchmarks are not timed assertions, but they rot silently when the code under them changes: this session's
fee and close-grace fixes each broke one without any test noticing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CASES = {
    "cycle_latency": (["--cycles", "5"], {"p50_ms", "p99_ms", "all_ready_s"}),
    "executor_speed": (["-n", "20", "--plans", "2", "--legs", "4"],
                       {"executor_intents_per_s", "plan_path_intents_per_s"}),
    "crash_trials": (["--trials", "4"], {"crash_trials_per_min", "violations"}),
    # One measured cycle and two kills, a daily bar every 0.25 s (the pacing still waits for each commit), the
    # services on the bytecode beside their sources instead of compiling ccxt into a fresh folder first.
    "live_cycle": (["--cycles", "1", "--kills", "2", "--speed", "345600", "--bytecode-in-place"],
                   {"bar_close_to_orders_acked_p50_ms", "bar_close_to_orders_acked_p99_ms", "kill_trials_per_min",
                    "violations"}),
    "ingest_speed": (["--repeats", "1"], {"cold_sync_parse_merge_candles_per_s", "warm_load_1d_ms", "warm_load_1h_ms"}),
    # vectorbt is in the bench dependency group, not the test one: the smoke run leaves it out.
    "backtest_speed": (["--quick", "--sets", "8", "--vbt-combos", "0"], {"evals_per_s_1d", "evals_per_s_1h"}),
    # The optimizer on five bundled symbols, one fold, the tiny grids of tests/optimize, one worker.
    "optimize_speed": (["--data", str(REPO / "data" / "replay"), "--symbols", "BTC_USDT,ETH_USDT,BNB_USDT,XRP_USDT,"
                        "LTC_USDT", "--folds", "1", "--workers", "1", "--spa-reps", "200"],
                       {"wall_s_1_workers", "evaluations", "full_grid_evaluations", "fewer_bars_x", "same_winner"}),
}
# The benches that draw their compared figures (bench/plotting.py); crash_trials has one figure, nothing to compare.
PLOTTED = {"backtest_speed", "cycle_latency", "executor_speed", "ingest_speed", "live_cycle", "optimize_speed"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_and_ends_with_its_figures(name: str, tmp_path: Path, shared_data_dir: Path) -> None:
    args, keys = CASES[name]
    if name == "backtest_speed":
        args = [*args, "--data", str(shared_data_dir), "--out", str(tmp_path / "backtest_speed.json")]
    if name == "optimize_speed":
        from tests.optimize.test_end_to_end import TINY

        (tmp_path / "tiny.toml").write_text(TINY)
        args = [*args, "--grids", str(tmp_path / "tiny.toml")]
    png = tmp_path / f"{name}.png"
    if name in PLOTTED:
        args = [*args, "--plot", str(png)]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=540, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, f"bench/{name}.py exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert keys <= set(figures), f"bench/{name}.py's last line lacks {keys - set(figures)}: {last}"
    if name in ("crash_trials", "live_cycle"):
        assert figures["violations"] == 0
    if name in PLOTTED:
        assert png.is_file(), f"bench/{name}.py drew no {png}"
        assert png.read_bytes().startswith(b"\x89PNG"), f"{png} is not a PNG"
        assert f"plot: {png}" in proc.stdout.splitlines() and figures["plot"] == str(png)

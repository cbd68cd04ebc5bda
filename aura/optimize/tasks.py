"""The optimizer's unit of distributed work, pure: what a task holds, how a result is named, how a worker computes it.

A coordinator turns the requests of a walk-forward run (plan.py) into tasks (``OptTask`` in shared/contracts.py):
a batch of parameter sets x windows to evaluate (kind "eval"), or one CSCV over a candidate matrix (kind "cscv"), or
one fold selection's SPA over its matrix of every trial (kind "spa": a few tenths of a second per benchmark, too much
to leave on the coordinator while the workers idle).
A task names its inputs by digest: one object in the optimizer's object store holding the candle panel, the
market rules and the benchmark closes (``EvalInputs``), or a matrix (``encode_matrix``).  So every worker that
runs the same code computes the same bytes, and a worker running other code says so instead of answering
(``engine_fingerprint``: the evaluation code and the numerical libraries, hashed).

Every answer is named by a content hash of what determines it (``eval_key``: inputs digest, engine, evaluation
settings, parameters, window).  A redelivered task (its worker was killed) yields outcomes under the same names
with the same values, so storing it twice changes nothing, and a restarted coordinator finds what is already
answered by name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

import msgspec
import numpy as np

from aura.backtest.engine import BacktestConfig
from aura.backtest.fast import Market, SignalCache
from aura.optimize.folds import TrainWindow, ValidationWindow, Window
from aura.optimize.gate import SpaFold
from aura.optimize.objective import BenchmarkCloses, WindowResult, evaluate_window
from aura.optimize.stats import CSCV, pbo_cscv, spa_excess_pvalue
from aura.strategy.params import StrategyParams, validate_params
from aura.strategy.types import MarketRule, Panel
from shared.candles import decode_panel, encode_panel
from shared.contracts import OptOutcome, OptTask, OptWindow, content_id

INPUTS_MAGIC = "aura-opt-inputs-v1"
MATRIX_MAGIC = "aura-opt-matrix-v1"
EVAL, CSCV_KIND, SPA_KIND = "eval", "cscv", "spa"
EVAL_KEY_PREFIX, CSCV_KEY_PREFIX, SPA_KEY_PREFIX = "e-", "c-", "s-"
# Task sizes.  A task is worth a bus round trip (~1 ms) only if it carries tens of milliseconds of work; it must
# also stay small enough that several workers share a rung (the ladder's upper rungs have few candidates) and
# that its answer fits the results stream's 192 KiB messages: 16,000 bars of float64 returns are 125 KiB in
# base64.
MAX_PARAMS_PER_TASK = 32
MAX_BARS_PER_TASK = 16_000
# A CSCV answer carries one float64 logit per split: C(16, 8) = 12,870 fit a message, C(18, 9) = 48,620 do not.
MAX_CSCV_SPLITS = 16_000


class TaskError(ValueError):
    """A task this worker cannot run (malformed, other code, inputs that do not match their digest)."""


# --- inputs: one object a task names by digest -------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EvalInputs:
    """Everything an evaluation reads besides the parameters and the window."""

    timeframe: str
    panel: Panel
    rules: dict[str, MarketRule]
    benchmarks: BenchmarkCloses

    def encode(self) -> bytes:
        """Canonical bytes: a JSON header line, the encoded panel (shared.candles), then the benchmark closes."""
        panel = encode_panel(self.panel)
        rules = [[s, *(float(x) for x in (r.step_size, r.tick_size, r.min_qty, r.min_notional))]
                 for s, r in sorted(self.rules.items())]
        header = {"magic": INPUTS_MAGIC, "timeframe": self.timeframe, "bar_ms": self.benchmarks.bar_ms,
                  "rules": rules, "benchmarks": list(self.benchmarks.names), "panel_bytes": len(panel)}
        closes = np.ascontiguousarray(self.benchmarks.closes, dtype="<f8")
        closes = np.where(np.isnan(closes), np.nan, closes)  # one NaN bit pattern: equal inputs, equal digest
        return json.dumps(header, separators=(",", ":"), sort_keys=True).encode() + b"\n" + panel + closes.tobytes()

    @classmethod
    def decode(cls, data: bytes) -> EvalInputs:
        newline = data.index(b"\n")
        header = json.loads(data[:newline])
        if header.get("magic") != INPUTS_MAGIC:
            raise TaskError(f"not optimizer inputs (magic {header.get('magic')!r})")
        start = newline + 1
        panel = decode_panel(data[start:start + int(header["panel_bytes"])])
        names = tuple(header["benchmarks"])
        closes = np.frombuffer(data, dtype="<f8", offset=start + int(header["panel_bytes"]))
        if closes.size != len(names) * len(panel.timestamps):
            raise TaskError(f"optimizer inputs: {closes.size} benchmark closes for {len(names)} x "
                            f"{len(panel.timestamps)} bars")
        rules = {r[0]: MarketRule(r[0], *(float(x) for x in r[1:])) for r in header["rules"]}
        bench = BenchmarkCloses(names, panel.timestamps, int(header["bar_ms"]), closes.reshape(len(names), -1))
        return cls(str(header["timeframe"]), panel, rules, bench)


def encode_matrix(matrix: np.ndarray) -> bytes:
    """A CSCV input (benchmarks, bars, candidates) as canonical bytes: a JSON header line, then float64 C order."""
    m = np.ascontiguousarray(matrix, dtype="<f8")
    header = json.dumps({"magic": MATRIX_MAGIC, "shape": list(m.shape)}, separators=(",", ":")).encode()
    return header + b"\n" + m.tobytes()


def decode_matrix(data: bytes) -> np.ndarray:
    newline = data.index(b"\n")
    header = json.loads(data[:newline])
    if header.get("magic") != MATRIX_MAGIC:
        raise TaskError(f"not a CSCV matrix (magic {header.get('magic')!r})")
    return np.frombuffer(data, dtype="<f8", offset=newline + 1).reshape(tuple(header["shape"]))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- what determines an answer ------------------------------------------------------------------------------------


@functools.cache
def engine_fingerprint() -> str:
    """Hash of the code an evaluation runs (the backtester, the strategy, the objective, the statistics) and of
    the numerical libraries: results computed by another version are other results, never mixed in."""
    h = hashlib.sha256()
    for package in ("aura.backtest", "aura.strategy"):
        root = resources.files(package)
        for name in sorted(p.name for p in root.iterdir() if p.name.endswith(".py")):
            h.update(f"{package}/{name}\n".encode() + root.joinpath(name).read_bytes())
    for name in ("objective.py", "stats.py", "tasks.py"):
        h.update(f"aura.optimize/{name}\n".encode() + resources.files("aura.optimize").joinpath(name).read_bytes())
    for dist in ("numpy", "numba", "arch"):  # arch: its bootstrap draws the SPA's p-values
        h.update(f"{dist}=={metadata.version(dist)}\n".encode())
    # The machine's architecture: libm's log may round differently on another, and the coordinator checks the
    # answers a promotion stands on bit for bit (audit.py), so a worker elsewhere declines the run's tasks.
    h.update(f"machine={platform.machine()}\n".encode())
    return h.hexdigest()[:32]


def settings_json(cfg: BacktestConfig) -> str:
    """The evaluation settings a result depends on (costs, fills, capacity), as canonical JSON.  The run range
    is the window's, so ``start``/``end`` are left out; infinities are written as strings (JSON has none)."""
    doc = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("start", "end")}
    doc = {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in doc.items()}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def config_from_json(text: str) -> BacktestConfig:
    doc: dict[str, Any] = json.loads(text)
    doc = {k: (float(v) if v in ("inf", "-inf", "nan") else v) for k, v in doc.items()}
    fields = {f.name for f in dataclasses.fields(BacktestConfig)}
    unknown = sorted(set(doc) - fields)
    if unknown:
        raise TaskError(f"evaluation settings name fields this code does not know: {unknown}")
    return BacktestConfig(**doc)


def eval_key(inputs: str, engine: str, settings: str, params: StrategyParams, window: Window) -> str:
    """The name of one evaluation's answer (the window's kind does not change the numbers, so it is left out;
    the bar its run begins at does, when it is not the window's start)."""
    bars = [window.start, window.stop] + ([window.first_bar] if window.first_bar != window.start else [])
    return content_id(["eval", inputs, engine, settings, msgspec.to_builtins(params), bars],
                      prefix=EVAL_KEY_PREFIX, length=40)


def cscv_key(matrix_digest: str, engine: str, partitions: int) -> str:
    return content_id(["cscv", matrix_digest, engine, partitions], prefix=CSCV_KEY_PREFIX, length=40)


def spa_key(matrix_digest: str, engine: str, settings: str) -> str:
    return content_id(["spa", matrix_digest, engine, settings], prefix=SPA_KEY_PREFIX, length=40)


def spa_settings(reps: int, block_size: int | None, seed: int) -> str:
    """The SPA bootstrap's settings as canonical JSON (a task's ``settings``, part of its answer's key)."""
    return json.dumps({"block_size": block_size, "reps": reps, "seed": seed}, separators=(",", ":"), sort_keys=True)


def is_eval_key(key: str) -> bool:
    """Whether an answer's key names one evaluation on a window (not a statistic: a CSCV, an SPA)."""
    return key.startswith(EVAL_KEY_PREFIX)


# --- tasks ----------------------------------------------------------------------------------------------------------


def eval_task(inputs: str, engine: str, settings: str, params: Sequence[StrategyParams],
              windows: Sequence[Window]) -> OptTask:
    body = {"kind": EVAL, "inputs": inputs, "engine": engine, "settings": settings,
            "params": [msgspec.to_builtins(p) for p in params],
            "windows": [OptWindow(w.start, w.stop, w.run_from) for w in windows]}
    return OptTask(task_id=content_id(body, prefix="t-", length=32), **body)


def cscv_task(matrix_digest: str, engine: str, partitions: int) -> OptTask:
    body = {"kind": CSCV_KIND, "inputs": matrix_digest, "engine": engine,
            "settings": json.dumps({"partitions": partitions})}
    return OptTask(task_id=content_id(body, prefix="t-", length=32), **body)


def spa_task(matrix_digest: str, engine: str, settings: str) -> OptTask:
    body = {"kind": SPA_KIND, "inputs": matrix_digest, "engine": engine, "settings": settings}
    return OptTask(task_id=content_id(body, prefix="t-", length=32), **body)


def batches(requests: Sequence[tuple[StrategyParams, Window]], max_params: int = MAX_PARAMS_PER_TASK,
            max_bars: int = MAX_BARS_PER_TASK) -> list[tuple[list[StrategyParams], Window]]:
    """Group evaluation requests into tasks of one window each, in the order given (deterministic), each at most
    ``max_params`` parameter sets and ``max_bars`` bars of answers."""
    by_window: dict[Window, list[StrategyParams]] = {}
    for params, window in requests:
        by_window.setdefault(window, []).append(params)
    out = []
    for window, params in by_window.items():
        size = max(1, min(max_params, max_bars // max(1, len(window))))
        out += [(params[i:i + size], window) for i in range(0, len(params), size)]
    return out


# --- the worker's side -------------------------------------------------------------------------------------------


class Evaluator:
    """Evaluates tasks on one set of inputs; keeps the Market and the signal passes between tasks (a stage's
    candidates that differ only in gates share their signal pass)."""

    def __init__(self, inputs: EvalInputs) -> None:
        self.inputs = inputs
        self.market = Market.build(inputs.panel, inputs.rules)
        self.signals = SignalCache(256)

    def run(self, task: OptTask) -> Iterator[OptOutcome]:
        """One outcome per (parameter set, window), yielded as computed so the caller can heartbeat between."""
        cfg = config_from_json(task.settings)
        params = [task_params(doc) for doc in task.params]
        for p in params:
            for w in task.windows:
                window = Window(w.start, w.stop, w.run_from)
                result = evaluate_window(self.market, p, window, self.inputs.benchmarks, cfg, self.signals)
                yield OptOutcome(eval_key(task.inputs, task.engine, task.settings, p, window),
                                 np.ascontiguousarray(result.returns, dtype="<f8").tobytes(), result.turnover,
                                 result.trades)


def warm_up() -> float:
    """Compile (or load from numba's cache) the fast backtester's kernels and the CSCV kernel on small synthetic
    inputs, decoded from their bus encoding like a task's (numba compiles read-only arrays separately), so that a
    worker's first task does not pay the compile.  Returns the seconds it took; the result is discarded."""
    started = time.perf_counter()
    rng = np.random.default_rng(20260101)
    bars, day = 400, 86_400_000
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.001, 0.03, size=(bars, 4)), axis=0))
    opn = np.vstack([close[:1], close[:-1]])
    panel = Panel(("A_USDT", "B_USDT", "C_USDT", "D_USDT"), np.arange(bars, dtype=np.int64) * day, opn,
                  np.maximum(opn, close) * 1.01, np.minimum(opn, close) * 0.99, close, np.full_like(close, 1e7))
    rules = {s: MarketRule(s, 1e-5, 0.01, 1e-5, 5.0) for s in panel.symbols}
    bench = BenchmarkCloses(("GOLD", "SPY"), panel.timestamps, day, close[:, :2].T.copy())
    blob = EvalInputs("1d", panel, rules, bench).encode()
    task = eval_task(digest(blob), engine_fingerprint(), settings_json(BacktestConfig(bar_ms=day)),
                     [StrategyParams(min_quote_volume=0.0)], [Window(bars - 100, bars)])
    for _ in Evaluator(EvalInputs.decode(blob)).run(task):
        pass
    # The CSCV kernel too, on a matrix decoded as a task's is: a worker's first CSCV task must not compile it.
    run_cscv(cscv_task("warm-up", "warm-up", 16), decode_matrix(encode_matrix(rng.normal(0, 0.01, (2, 64, 3)))))
    # And the SPA: its first call imports arch, pandas and scipy.
    run_spa(spa_task("warm-up", "warm-up", spa_settings(10, None, 0)), rng.normal(0, 0.01, (2, 64, 3)))
    return time.perf_counter() - started


def task_params(doc: dict[str, Any]) -> StrategyParams:
    try:
        params = msgspec.convert(doc, StrategyParams)
        validate_params(params)
    except (msgspec.ValidationError, ValueError) as exc:
        raise TaskError(f"invalid parameter set in task: {exc}") from exc
    return params


def run_cscv(task: OptTask, matrix: np.ndarray) -> OptOutcome:
    partitions = int(json.loads(task.settings)["partitions"])
    result = pbo_cscv(matrix, partitions)
    return OptOutcome(cscv_key(task.inputs, task.engine, partitions),
                      np.ascontiguousarray(result.logits, dtype="<f8").tobytes(), rows_used=result.rows_used,
                      distinct=result.distinct)


def run_spa(task: OptTask, matrix: np.ndarray) -> OptOutcome:
    """One fold selection's SPA: a p-value per benchmark row of its (B, bars, models) excess matrix."""
    doc = json.loads(task.settings)
    pvalues = [spa_excess_pvalue(matrix[b], int(doc["reps"]), doc["block_size"], int(doc["seed"]))
               for b in range(matrix.shape[0])]
    return OptOutcome(spa_key(task.inputs, task.engine, task.settings), np.asarray(pvalues, dtype="<f8").tobytes(),
                      distinct=int(matrix.shape[2]))


# --- the coordinator's side: outcomes back into the core's types ------------------------------------------------


def window_result(outcome: OptOutcome, window: TrainWindow | ValidationWindow, benchmarks: BenchmarkCloses,
                  ) -> WindowResult:
    returns = np.frombuffer(outcome.values, dtype="<f8").copy()
    return WindowResult(window, returns, benchmarks.returns(window), benchmarks.names, benchmarks.bar_ms,
                        float(outcome.turnover), int(outcome.trades))


def cscv_result(outcome: OptOutcome, partitions: int) -> CSCV:
    logits = np.frombuffer(outcome.values, dtype="<f8").copy()
    pbo = float(np.mean(logits <= 0)) if len(logits) else math.nan
    return CSCV(pbo, logits, partitions, int(outcome.rows_used), int(outcome.distinct))


def spa_result(outcome: OptOutcome, fold: int, names: Sequence[str]) -> SpaFold:
    pvalues = np.frombuffer(outcome.values, dtype="<f8")
    if len(pvalues) != len(names):
        raise TaskError(f"an SPA answer with {len(pvalues)} p-values for benchmarks {list(names)}")
    return SpaFold(fold, int(outcome.distinct), {n: float(p) for n, p in zip(names, pvalues, strict=True)})


def inputs_document(inputs: EvalInputs) -> dict[str, Any]:
    """What the report says about the inputs (symbols, bars, dates), without the arrays."""
    ts = inputs.panel.timestamps
    return {"timeframe": inputs.timeframe, "symbols": list(inputs.panel.symbols), "bars": len(ts),
            "first_bar_ms": int(ts[0]), "last_bar_ms": int(ts[-1]), "benchmarks": list(inputs.benchmarks.names)}

"""What an optimizer run leaves behind: decision.json, trials.parquet, report.html, and the gate's record.

Everything here is a pure function of the finished run (plan.WalkForwardRun), the gate's decision and the run's
inputs: no clock, no host, no path, no count of workers, no trace of a resumed coordinator.  So identical inputs
give byte-identical files, which is what lets a reader trust that a report describes the parameters it names.

``decision.json`` is the machine-readable verdict: promoted yes/no and which test failed by how much, the winning
parameters and what changed from the incumbent, per validation window the returns of the strategy, the
incumbent, gold and SPY, the DSR, PBO and SPA figures, the number of trials counted (pruned ones included), the
evaluations made against the full grid, and the in-sample against the out-of-sample Sharpe.  ``gate_record`` is
the part that travels in the promoted parameter document (shared/live_params.py, ``record``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import polars as pl

from aura.backtest.metrics import bars_per_year
from aura.optimize.folds import FoldSpec, Window
from aura.optimize.gate import FINAL_SPA, GateDecision, GateSettings
from aura.optimize.grids import Grids
from aura.optimize.halving import PRUNED
from aura.optimize.objective import ObjectiveSettings, sharpe
from aura.optimize.plan import FINAL, WalkForwardRun
from aura.optimize.tasks import EvalInputs
from aura.strategy.params import StrategyParams, params_digest

DECISION, TRIALS, REPORT = "decision.json", "trials.parquet", "report.html"
GENERIC_CAVEAT = ("The data folder says nothing about how its symbols were chosen.  If they are coins that still "
                  "trade today, the universe is survivor-biased: coins that died during the period are missing, so "
                  "every figure here is better than a strategy trading the market of the time could have done.")


@dataclass(frozen=True, eq=False)
class RunRecord:
    """A finished run and everything that determined it."""

    run: WalkForwardRun
    decision: GateDecision
    inputs: EvalInputs
    inputs_digest: str
    engine: str
    settings: str  # evaluation settings (tasks.settings_json)
    grids: Grids
    grids_sha256: str
    spec: FoldSpec
    eta: int
    min_budget: int
    gate: GateSettings
    objective: ObjectiveSettings
    caveat: str

    def date(self, bar: int) -> str:
        ts = self.inputs.panel.timestamps
        return datetime.fromtimestamp(int(ts[min(bar, len(ts) - 1)]) / 1000, UTC).strftime("%Y-%m-%d %H:%M")

    def span(self, w: Window) -> list[str]:
        """First and last bar of a window, as dates (bar open times, UTC)."""
        return [self.date(w.start), self.date(w.stop - 1)]


def survivorship_caveat(data_dir: Path) -> str:
    """The data folder's own words on how its universe was chosen (PROVENANCE.md or README.md), else a warning."""
    for name in ("PROVENANCE.md", "README.md"):
        path = Path(data_dir) / name
        if not path.is_file():
            continue
        lines = [ln.strip().lstrip("-* ").strip() for ln in path.read_text(encoding="utf-8").splitlines()
                 if re.search(r"surviv", ln, re.IGNORECASE)]
        if lines:
            return f"From {name}: " + " ".join(lines)
    return GENERIC_CAVEAT


def _clean(x: Any) -> Any:
    """JSON-safe and stable: NaN and infinities become null, tuples lists, numpy scalars Python numbers."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def annual_sharpe(returns: np.ndarray, bar_ms: int) -> float:
    return float(sharpe(np.asarray(returns))) * math.sqrt(bars_per_year(bar_ms))


def trial_counts(run: WalkForwardRun) -> dict[str, int]:
    """Evaluations the search made (every rung of every selection), against the full grid: every candidate of every
    stage once on its full budget.  Bar-weighted figures count each evaluation by its window's length."""
    made = made_bars = full = full_bars = counted = pruned = 0
    for sel in run.selections:
        for stage in sel.runs:
            if stage.halving is None:
                continue
            trials = stage.halving.trials()
            made += len(trials)
            made_bars += sum(t.budget for t in trials)
            full += len(stage.candidates)
            full_bars += len(stage.candidates) * stage.halving.budgets[-1]
            # Every selection's trials count, the final one's too: its winner is the one that would go live.
            counted += stage.halving.n_trials
            pruned += sum(1 for t in trials if t.status == PRUNED)
    return {"counted": counted, "pruned_evaluations": pruned, "evaluations": made, "evaluation_bars": made_bars,
            "full_grid_evaluations": full, "full_grid_bars": full_bars}


def decision_document(rec: RunRecord) -> dict[str, Any]:
    run, d = rec.run, rec.decision
    bar_ms = rec.inputs.benchmarks.bar_ms
    winner, incumbent = run.winner, run.incumbent
    mine, theirs = msgspec.to_builtins(winner), msgspec.to_builtins(incumbent)
    per_fold = []
    for label, fold in run.folds_by_label.items():
        val = run.validation[label]
        per_fold.append({"fold": fold.index, "in_sample": annual_sharpe(run.in_sample[label].returns, bar_ms),
                         "out_of_sample": annual_sharpe(val.winner.returns, bar_ms)})
    is_mean = float(np.mean([f["in_sample"] for f in per_fold]))
    windows = []
    for w in d.windows:
        windows.append({"fold": w.fold, "dates": rec.span(Window(w.start, w.stop)), "bars": w.stop - w.start,
                        "strategy": w.strategy, "incumbent": w.incumbent, **w.benchmarks})
    doc = {
        "promoted": d.passed,
        "verdict": d.summary(),
        "failed_tests": [c.name for c in d.failed],
        "parameters": mine,
        "parameters_digest": params_digest(winner),
        "changed_from_incumbent": {k: [theirs[k], v] for k, v in mine.items() if theirs[k] != v},
        "incumbent": theirs,
        "incumbent_digest": params_digest(incumbent),
        "checks": [dataclasses.asdict(c) for c in d.checks],
        "windows": windows,
        "dsr": {name: dataclasses.asdict(x) for name, x in d.dsr.items()},
        "pbo": d.pbo,
        "spa_pvalues": d.spa_pvalues,
        # Every fold's search and the final one's ("fold": "final"), whose winner is the one that would go live.
        "spa_by_fold": [{"fold": "final" if f.fold == FINAL_SPA else f.fold, "models": f.models, **f.pvalues}
                        for f in d.spa_folds],
        "trials": trial_counts(run),
        "sharpe": {"in_sample": is_mean, "out_of_sample": d.oos_sharpe, "gap": is_mean - d.oos_sharpe,
                   "out_of_sample_excess": d.oos_excess_sharpe, "per_fold": per_fold,
                   "final_in_sample": annual_sharpe(run.in_sample[run.live_label].returns, bar_ms),
                   "note": "annualised Sharpe of the strategy's returns after costs: in-sample on each fold "
                           "winner's whole training window, out-of-sample on its validation window"},
        "scores": {"validation": d.validation_score, "incumbent": d.incumbent_score},
        "folds": [{"fold": f.index, "train": rec.span(f.train), "embargo_bars": f.embargo,
                   "validate": rec.span(f.validate)} for f in run.folds],
        # The window the set that would go live was chosen on: the newest fold's training window, or with
        # --refit the newest training window (ending on the last bar).
        "live_train": rec.span(run.selection(FINAL).train),
        # Whose winner would go live: the newest fold's (validated on its window) or, with --refit, a final
        # selection on the newest training window that no window judged.
        "promoted_from": run.live_label,
        "promoted_set_validated": run.live_label != FINAL,
        "universe": {"symbols": list(rec.inputs.panel.symbols), "bars": len(rec.inputs.panel.timestamps),
                     "first": rec.date(0), "last": rec.date(len(rec.inputs.panel.timestamps) - 1),
                     "survivorship": rec.caveat},
        "settings": {"timeframe": rec.inputs.timeframe, "evaluation": json.loads(rec.settings),
                     "folds": dataclasses.asdict(rec.spec), "eta": rec.eta, "min_budget": rec.min_budget,
                     "gate": dataclasses.asdict(rec.gate), "objective": dataclasses.asdict(rec.objective),
                     "grids_sha256": rec.grids_sha256, "grids_pending": list(rec.grids.pending)},
        "inputs": {"digest": rec.inputs_digest, "engine": rec.engine},
    }
    return _clean(doc)


def decision_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n").encode()


def trials_frame(rec: RunRecord) -> pl.DataFrame:
    """One row per evaluation of the search: which selection and stage, the candidate, its rung and budget, the
    objective and per-bar Sharpe there, what became of it, and the parameters it varied."""
    rows: dict[str, list[Any]] = {k: [] for k in ("selection", "fold", "stage", "candidate", "rung", "budget",
                                                  "value", "sharpe", "status", "changes")}
    for sel in rec.run.selections:
        fold = int(sel.label.split()[1]) if sel.label != FINAL else -1
        for stage in sel.runs:
            if stage.halving is None:
                continue
            knobs = rec.grids.stage(stage.stage).names
            for t in stage.halving.trials():
                p = stage.candidates[t.candidate]
                rows["selection"].append(sel.label)
                rows["fold"].append(fold)
                rows["stage"].append(stage.stage)
                rows["candidate"].append(t.candidate)
                rows["rung"].append(t.rung)
                rows["budget"].append(t.budget)
                rows["value"].append(t.value)
                rows["sharpe"].append(t.sharpe)
                rows["status"].append(t.status)
                rows["changes"].append(json.dumps({k: getattr(p, k) for k in knobs}, sort_keys=True))
    schema = {"selection": pl.Utf8, "fold": pl.Int64, "stage": pl.Utf8, "candidate": pl.Utf8, "rung": pl.Int64,
              "budget": pl.Int64, "value": pl.Float64, "sharpe": pl.Float64, "status": pl.Utf8, "changes": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def write_outputs(rec: RunRecord, out_dir: Path) -> dict[str, str]:
    """Write the three files; returns file name -> sha256 of its bytes."""
    from aura.optimize.report_html import render_html  # the HTML is long; kept in its own module

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = decision_document(rec)
    blobs = {DECISION: decision_bytes(doc), REPORT: render_html(rec, doc).encode()}
    for name, blob in blobs.items():
        (out_dir / name).write_bytes(blob)
    trials_frame(rec).write_parquet(out_dir / TRIALS, compression="zstd", statistics=False)
    blobs[TRIALS] = (out_dir / TRIALS).read_bytes()
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}


def gate_record(doc: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    """What the promoted parameter document carries of the gate (kept small: the KV value limit is 64 KiB)."""
    return {
        "report_sha256": digests[DECISION],
        "html_sha256": digests[REPORT],
        "trials_sha256": digests[TRIALS],
        "inputs": doc["inputs"],
        "verdict": doc["verdict"],
        "tests": {c["name"]: {"passed": c["passed"], "value": c["value"], "threshold": c["threshold"]}
                  for c in doc["checks"]},
        "folds": [{"fold": w["fold"], "dates": w["dates"], "strategy": w["strategy"],
                   **{b: w[b] for b in ("GOLD", "SPY") if b in w}} for w in doc["windows"]],
        "dsr": {name: x["dsr"] for name, x in doc["dsr"].items()},
        "pbo": doc["pbo"],
        "spa_pvalues": doc["spa_pvalues"],
        "trials_counted": doc["trials"]["counted"],
        # Which selection's winner this is, and whether a window that never chose it judged it (the newest
        # fold's: its validation window is in "folds"; --refit's final selection: none did).
        "promoted_from": doc["promoted_from"],
        "promoted_set_validated": doc["promoted_set_validated"],
        # The folds' figures are the fold winners' (the procedure's record); final_in_sample is the promoted
        # set's own Sharpe on the window it was chosen on.
        "sharpe": {k: doc["sharpe"][k] for k in ("in_sample", "out_of_sample", "final_in_sample")},
    }


def params_of(doc: dict[str, Any]) -> StrategyParams:
    return msgspec.convert(doc["parameters"], StrategyParams)

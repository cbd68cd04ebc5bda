"""The steps of `aura optimize` between its arguments and its outputs: inputs from files, the coordinated run on a
bus with a progress display, the three output files, and (with --promote) the promotion into a running system.

The decisions are aura/optimize's (pure); the bus work is services/optimizer's; this only wires them to files, a
terminal and a system.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aura.backtest.data import default_rules, load_benchmark, load_panel, resolve_symbols
from aura.backtest.engine import BacktestConfig
from aura.optimize.folds import Fold, FoldSpec, TrainWindow, default_fold_spec, final_train_window, walk_forward_folds
from aura.optimize.gate import GateSettings
from aura.optimize.grids import Grids, load_grids, shipped_grids_text
from aura.optimize.objective import BENCHMARK_NAMES, BenchmarkCloses, ObjectiveSettings
from aura.optimize.plan import WalkForwardRun
from aura.optimize.report import RunRecord, decision_document, gate_record, survivorship_caveat, write_outputs
from aura.optimize.tasks import EvalInputs, digest, engine_fingerprint, settings_json
from aura.strategy.params import StrategyParams, params_digest
from aura.strategy.schedule import timeframe_ms
from services.optimizer.coordinator import Coordinator, Progress, ResultStore, RunFailed
from shared.config import Settings, default_snapshot_bars, load_settings, setting_sources
from shared.live_params import default_params, same_timeframe
from shared.logging import JsonFormatter

RunFailedError = RunFailed


class Say:
    """One-line messages on stderr (the progress display shares it); ``quiet`` keeps only the verdict lines."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, msg: str, always: bool = False) -> None:
        if always or not self.quiet:
            print(f"[aura] {msg}", file=sys.stderr, flush=True)


@dataclass
class OptimizeJob:
    inputs: EvalInputs
    cfg: BacktestConfig
    grids: Grids
    grids_sha256: str
    spec: FoldSpec
    folds: tuple[Fold, ...]
    final_train: TrainWindow | None  # None: the newest fold's winner would go live (plan.WalkForwardRun)
    eta: int
    min_budget: int
    gate: GateSettings
    objective: ObjectiveSettings
    incumbent: StrategyParams
    caveat: str


def load_inputs(data: Path, timeframe: str, symbols: list[str] | None) -> EvalInputs:
    panel = load_panel(data, timeframe, symbols)
    series = {}
    for name in BENCHMARK_NAMES:
        loaded = load_benchmark(data, name)
        if loaded is None:
            raise FileNotFoundError(f"{data}/benchmarks/1d/{name}.parquet is missing: the gate must compare with "
                                    f"{' and '.join(BENCHMARK_NAMES)}")
        series[name] = loaded
    bench = BenchmarkCloses.align(series, panel.timestamps, timeframe_ms(timeframe))
    return EvalInputs(timeframe, panel, default_rules(panel).rules, bench)


def gate_settings(args: argparse.Namespace) -> GateSettings:
    """The gate's settings from the command line; GateSettings refuses a threshold outside [0, 1] (ValueError).
    A namespace without a threshold (a caller other than the CLI) gets the default."""
    default = GateSettings()
    return GateSettings(dsr_min=getattr(args, "dsr_min", default.dsr_min),
                        pbo_max=getattr(args, "pbo_max", default.pbo_max),
                        spa_alpha=getattr(args, "spa_alpha", default.spa_alpha), spa_reps=args.spa_reps)


def prepare_job(args: argparse.Namespace) -> OptimizeJob:
    symbols = resolve_symbols(args.data, args.timeframe, args.symbols.split(",")) if args.symbols else None
    inputs = load_inputs(args.data, args.timeframe, symbols)
    grids = load_grids(args.grids, args.timeframe)
    text = args.grids.read_text(encoding="utf-8") if args.grids else shipped_grids_text()
    spec = default_fold_spec(args.timeframe, anchored=args.anchored)
    n_bars = len(inputs.panel.timestamps)
    folds = walk_forward_folds(n_bars, spec)
    if args.folds is not None:
        if args.folds < 1:
            raise ValueError("--folds must be at least 1")
        folds = folds[-args.folds:]
    min_budget = args.min_budget or spec.min_budget
    if not 1 <= min_budget <= spec.train:
        raise ValueError(f"--min-budget must lie in [1, {spec.train}] bars")
    return OptimizeJob(inputs, BacktestConfig(bar_ms=timeframe_ms(args.timeframe)), grids,
                       hashlib.sha256(text.encode()).hexdigest(), spec, folds,
                       final_train_window(n_bars, spec) if getattr(args, "refit", False) else None,
                       args.eta, min_budget, gate_settings(args), ObjectiveSettings(),
                       default_params(args.timeframe), survivorship_caveat(args.data))


def file_logger(path: Path) -> logging.Logger:
    """The coordinator's log lines go to a file: the terminal shows the progress display."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"aura.optimize.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(JsonFormatter("optimize"))
        logger.addHandler(handler)
    return logger


def build_run(job: OptimizeJob) -> WalkForwardRun:
    start = job.grids.start_from(job.incumbent, default_params(job.inputs.timeframe))
    return WalkForwardRun(job.folds, job.final_train, job.grids, job.incumbent, job.min_budget, job.eta,
                          job.objective, start=start)


async def coordinate_async(job: OptimizeJob, bus: Settings, store: ResultStore, logger: logging.Logger,
                           on_progress: Callable[[Progress], None] | None = None) -> tuple[RunRecord, Progress]:
    """The whole run on ``bus``, as its optimizer, with answers kept in ``store``; raises RunFailed."""
    from shared.bus import close, connect

    run = build_run(job)
    nc = await connect(bus, "optimizer", logger, connect_timeout_s=15)
    try:
        coordinator = Coordinator(nc.jetstream(), run, job.inputs, job.cfg, store, job.gate, logger, on_progress)
        decision = await coordinator.execute()
    finally:
        await close(nc)
    record = RunRecord(run, decision, job.inputs, coordinator.inputs_digest, coordinator.engine,
                       coordinator.settings, job.grids, job.grids_sha256, job.spec, job.eta, job.min_budget, job.gate,
                       job.objective, job.caveat)
    return record, coordinator.progress


def coordinate(job: OptimizeJob, bus: Settings, store_path: Path, logger: logging.Logger, say: Say,
               procs: list[Any]) -> RunRecord:
    """``coordinate_async`` with a progress display, stopped if every local worker died."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    store = ResultStore(store_path)
    bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              TextColumn("{task.fields[detail]}"), console=Console(stderr=True), disable=say.quiet)
    task = bar.add_task("starting", total=None, detail="")

    def show(p: Progress) -> None:
        detail = f"{p.received} answered, {p.replayed} replayed" + (f", {p.redelivered} redelivered"
                                                                   if p.redelivered else "")
        bar.update(task, description=p.phase, completed=p.evaluations, total=max(p.planned, p.evaluations),
                   detail=detail)

    async def main() -> RunRecord:
        work = asyncio.create_task(coordinate_async(job, bus, store, logger, show))
        while not work.done():
            await asyncio.wait({work}, timeout=1.0)
            if procs and all(p.poll() is not None for p in procs) and not work.done():
                work.cancel()
                raise RunFailed("every local worker died; see the worker logs under the state directory")
        record, progress = work.result()
        if progress.replayed:
            say(f"resumed: {progress.replayed} evaluations replayed from {store_path}")
        return record

    try:
        with bar:
            return asyncio.run(main())
    finally:
        store.close()


def local_record(job: OptimizeJob) -> RunRecord:
    """The same run without a bus, evaluated in this process (tests and benchmarks compare with it)."""
    from aura.backtest.fast import Market, SignalCache
    from aura.optimize.objective import evaluate_window

    run = build_run(job)
    market, cache = Market.build(job.inputs.panel, job.inputs.rules), SignalCache(256)
    answers: dict[Any, Any] = {}
    while not run.done:
        for req in run.requests():
            answers[req.ident] = evaluate_window(market, req.params, req.window, job.inputs.benchmarks, job.cfg, cache)
        run.advance(lambda r: answers.get(r.ident))
    blob = job.inputs.encode()
    return RunRecord(run, run.decide(job.gate), job.inputs, digest(blob), engine_fingerprint(),
                     settings_json(job.cfg), job.grids, job.grids_sha256, job.spec, job.eta, job.min_budget,
                     job.gate, job.objective, job.caveat)


def audit(record: RunRecord) -> list[str]:
    """The answers a promotion stands on that this process, evaluating them itself, does not reproduce."""
    from aura.backtest.fast import Market, SignalCache
    from aura.optimize.audit import disagreements
    from aura.optimize.objective import evaluate_window
    from aura.optimize.tasks import config_from_json

    market, cache, cfg = Market.build(record.inputs.panel, record.inputs.rules), SignalCache(256), \
        config_from_json(record.settings)
    return disagreements(record.run, lambda req: evaluate_window(market, req.params, req.window,
                                                                 record.inputs.benchmarks, cfg, cache),
                         record.gate, record.decision)


def write(record: RunRecord, out: Path) -> dict[str, str]:
    return write_outputs(record, out)


# --- a running system: its incumbent, and the promotion -------------------------------------------------------------


def system_settings(settings: Settings, url: str) -> Settings:
    return load_settings({"AURA_HOME": str(settings.home_path), "AURA_NATS_URL": url,
                          **({"AURA_KEYS_DIR": settings.keys_dir} if settings.keys_dir else {})}) if url else settings


def read_incumbent(settings: Settings, url: str, timeframe: str) -> tuple[StrategyParams, int]:
    """The system's parameters in force for a run on ``timeframe`` bars; PromotionRefused if they count others."""
    from services.optimizer.promote import live_incumbent
    from shared.bus import session
    from shared.credentials import PARAMS_SIGNERS, trusted_keys

    system = system_settings(settings, url)
    trusted = trusted_keys(system.keys, "optimizer", PARAMS_SIGNERS)

    async def read() -> tuple[StrategyParams, int]:
        async with session(system, "optimizer", timeout_s=5) as nc:
            return await live_incumbent(nc.jetstream(), trusted, timeframe, system.max_loss_bound)

    return asyncio.run(read())


def snapshot_bars_on(settings: Settings, timeframe: str) -> int:
    """The history each snapshot holds on a system trading ``timeframe``, as this operator's settings say: theirs
    when they are for that timeframe or AURA_SNAPSHOT_BARS is set, else that timeframe's default (ingest's rule)."""
    if same_timeframe(settings.timeframe, timeframe) or "snapshot_bars" in setting_sources():
        return settings.snapshot_bars
    return default_snapshot_bars(timeframe)


def promote(record: RunRecord, digests: dict[str, str], settings: Settings, url: str, incumbent_version: int,
            say: Say) -> int:
    """Write the winner to the system if the gate said yes; the decision's summary either way.  Exit status."""
    from services.optimizer.promote import PromotionRefused, promote_winner, publish_decision
    from shared.bus import session
    from shared.credentials import PARAMS_SIGNERS, signing_key, trusted_keys

    d = record.decision
    refusal = ""
    if d.passed:
        # The workers' answers the verdict reads directly, evaluated again here: a forged one promotes nothing.
        try:
            wrong = audit(record)
        except Exception as exc:  # an answer this process cannot even take up: not promoted either
            wrong = [f"the audit failed ({type(exc).__name__}: {exc})"[:300]]
        if wrong:
            refusal = (f"{len(wrong)} checks of the workers' answers failed against this process's own evaluation "
                       f"({'; '.join(wrong[:3])}); check the workers")
    system = system_settings(settings, url)
    doc = decision_document(record)
    record_doc = gate_record(doc, digests)
    reason = (f"walk-forward optimizer: {d.summary()[:200]}; report sha256 {digests['decision.json'][:16]}")
    summary = {"promoted": d.passed and not refusal,
               "verdict": f"not promoted: {refusal}"[:500] if refusal else d.summary(),
               "parameters_digest": params_digest(record.run.winner),
               "report_sha256": digests["decision.json"], "incumbent_version": incumbent_version, "version": None}

    async def act() -> int:
        async with session(system, "optimizer", timeout_s=5) as nc:
            js = nc.jetstream()
            version = None
            if d.passed and not refusal:
                key = signing_key(system.keys, "optimizer")
                trusted = trusted_keys(system.keys, "optimizer", PARAMS_SIGNERS)
                try:
                    version = await promote_winner(js, key, trusted, record.run.winner, record_doc, reason,
                                                   incumbent_version, timeframe=record.inputs.timeframe,
                                                   max_loss_bound=system.max_loss_bound,
                                                   snapshot_bars=snapshot_bars_on(settings, record.inputs.timeframe))
                except PromotionRefused as exc:  # the console hears of a refused yes as of any decision
                    await publish_decision(js, {**summary, "promoted": False,
                                                "verdict": f"not promoted: {exc}"[:500]})
                    raise
            await publish_decision(js, {**summary, "version": version})
            return version or 0

    try:
        version = asyncio.run(act())
    except PromotionRefused as exc:
        say(f"not promoted: {exc}", always=True)
        return 1
    if refusal:  # said to the console too (the decision published above)
        say(f"not promoted: {refusal}", always=True)
        return 1
    if d.passed:
        say(f"promoted: parameter version {version} (signed by the optimizer; `aura params history` shows it, "
            f"`aura params rollback {incumbent_version}` undoes it)", always=True)
    else:
        say("not promoted: the gate said no; the live parameters are unchanged", always=True)
    return 0


def decision_json(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / "decision.json").read_text()))

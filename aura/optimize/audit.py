"""What a promotion stands on, evaluated again by the coordinator itself (pure: no I/O, no clock).

Workers hold the ``worker`` credential and nothing else, but a compromised one still answers the tasks it takes:
made-up returns for a candidate would steer which parameters win and carry them past the gate, and the optimizer
then signs them with its own key.  Before it promotes, the coordinator evaluates again, in its own process:

* every answer the gate's comparisons read directly: each fold's winner and the incumbent on the fold's
  validation window, and each selection's winner on its whole training window (the in-sample figure);
* every selection, whole (each fold's and the final one: every stage and rung): the final winner is what is
  promoted, which no validation window judges, so forged ranking answers there could choose it outright; the
  folds' rankings choose the winners the validation windows judge, and every selection's trials are the
  overfitting tests' inputs (the trials the DSR counts, the CSCV and SPA matrices);
* the verdict itself, computed again here from those verified trials (the CSCV and SPA a worker computed
  included): bit for bit the same, or nothing is promoted.

Evaluation is deterministic on one machine architecture (the engine fingerprint includes it, so a worker on
another declines the tasks), so any difference is a wrong answer, not noise.  The price: a promotion costs the
run's evaluations once more, in one process (seconds on the bundled daily data, the run's single-worker time in
general), and only a "yes" pays it: a run the gate refuses promotes nothing whatever its answers were.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aura.optimize.gate import GateDecision, GateSettings
from aura.optimize.objective import WindowResult
from aura.optimize.plan import Request, SelectionState, WalkForwardRun
from aura.optimize.walkforward import Selection
from aura.strategy.params import params_digest


def audited(run: WalkForwardRun) -> list[tuple[str, Request, WindowResult]]:
    """(what, request, the answer the run holds) for every answer a promotion stands on directly, in run order."""
    out: list[tuple[str, Request, WindowResult]] = []
    for sel in run.selections:
        record = run.validation.get(sel.label)
        if record is not None:
            out.append((f"{sel.label}: its winner on the validation window", Request(sel.base, record.fold.validate),
                        record.winner))
            out.append((f"{sel.label}: the incumbent on the validation window",
                        Request(run.incumbent, record.fold.validate), record.incumbent))
        in_sample = run.in_sample.get(sel.label)
        if in_sample is not None:
            out.append((f"{sel.label}: its winner on the training window", Request(sel.base, sel.train), in_sample))
    return out


def same_result(a: WindowResult, b: WindowResult) -> bool:
    """Bit for bit (NaN equal to NaN): evaluation is deterministic."""
    return (a.window == b.window and a.bench_names == b.bench_names and a.bar_ms == b.bar_ms
            and a.trades == b.trades and (a.turnover == b.turnover or (a.turnover != a.turnover
                                                                      and b.turnover != b.turnover))
            and np.array_equal(a.returns, b.returns, equal_nan=True)
            and np.array_equal(a.bench, b.bench, equal_nan=True))


def selected_again(selection: SelectionState, evaluate: Callable[[Request], WindowResult]) -> SelectionState:
    """``selection`` made again from its start with ``evaluate``'s answers."""
    fresh = SelectionState(selection.label, selection.train, selection.grids, selection.start, selection.min_budget,
                           selection.eta, selection.objective)
    while not fresh.done:
        answers = {req.ident: evaluate(req) for _, req in fresh.pending()}
        fresh.advance(lambda req, got=answers: got.get(req.ident))
    return fresh


def same_trials(a: Selection, b: Selection) -> bool:
    """The same trials (every candidate's Sharpe on the smallest budget: the DSR's) and the same excess-return
    matrices (the CSCV's and SPA's), bit for bit."""
    pairs = [*((x.sharpes, y.sharpes) for x, y in zip(a.trial_sharpes, b.trial_sharpes, strict=False)),
             *zip(a.matrices, b.matrices, strict=False)]
    return ([t.bars for t in a.trial_sharpes] == [t.bars for t in b.trial_sharpes]
            and len(a.matrices) == len(b.matrices)
            and all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True) for x, y in pairs))


def disagreements(run: WalkForwardRun, evaluate: Callable[[Request], WindowResult], gate: GateSettings,
                  decision: GateDecision) -> list[str]:
    """What of ``audited(run)`` differs from ``evaluate``'s own answer, every selection that, made again, picks
    another winner or counts other trials, and ``decision`` if the gate, run again here on the verified record,
    says anything else (empty: everything checked holds)."""
    wrong = [what for what, request, answered in audited(run) if not same_result(answered, evaluate(request))]
    for selection in run.selections:
        again = selected_again(selection, evaluate)
        if params_digest(again.base) != params_digest(selection.base):
            wrong.append(f"{selection.label}: the winner, selected again in this process, is another parameter set")
        if not same_trials(again.selection(), selection.selection()):
            wrong.append(f"{selection.label}: its trials (the overfitting tests' inputs), made again, differ")
    if not wrong and repr(run.decide(gate)) != repr(decision):  # repr: NaN figures compare equal as text
        wrong.append("the gate's verdict, computed again in this process (the overfitting tests included), differs")
    return wrong

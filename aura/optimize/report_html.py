"""report.html of an optimizer run: one self-contained page (inline SVG, no script, no external file).

Sections: the verdict and every test with its margin; per validation window the equity of the winner, the
incumbent, gold and SPY; the in-sample against the out-of-sample Sharpe; the halving ladder of every selection and
what it saved against the full grid; a heatmap per stage of the search whose winner would go live; the universe
and its survivorship caveat.  Every number is formatted with a fixed precision and nothing depends on the
clock, so the page is byte-identical for identical inputs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aura.optimize.plan import FINAL
from aura.optimize.report import RunRecord
from aura.report_html_common import BASE_CSS, esc, heat_color, line_chart, num, pct, table

COLORS = {"fold winner": "#1f5fbf", "incumbent": "#888888", "GOLD": "#c9a227", "SPY": "#2e8b57"}
CSS = BASE_CSS + """.ok{color:#1a7f37}.no{color:#b42318}
.verdict{padding:1em;border-radius:6px;font-weight:600}.yes{background:#e6f4ea}.nope{background:#fdecea}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0;max-width:360px}
figcaption{font-size:.85em;color:#555}
.caveat{background:#fff8e1;padding:.8em;border-left:4px solid #c9a227}code{font-size:.9em}"""


def _line_chart(series: dict[str, np.ndarray], width: int = 340, height: int = 190) -> str:
    """Growth of 1 for each series (same bars), on one shared scale; the incumbent dashed."""
    curves = {k: np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(v, dtype=np.float64))]) for k, v in series.items()}
    return line_chart(curves, COLORS, width=width, height=height, dashed=("incumbent",))


def _heatmap(rec: RunRecord, stage_name: str) -> tuple[str, str]:
    """The final selection's stage: the objective on the smallest budget over its two widest axes, each cell the
    best over the stage's other knobs; the winner's cell outlined."""
    stage = next(r for r in rec.run.selection(FINAL).stages if r.stage == stage_name)
    if stage.halving is None:
        return "<p>One candidate: nothing to choose.</p>", ""
    axes = sorted(rec.grids.stage(stage_name).axes, key=lambda a: -len(a[1]))
    if len(axes) < 2:
        axes = [*axes, ("(none)", (0,))]
    (xn, xv), (yn, yv) = axes[0], axes[1]
    rung0 = {t.candidate: t.value for t in stage.halving.trials() if t.rung == 0}
    grid = np.full((len(yv), len(xv)), np.nan)
    for digest, value in rung0.items():
        p = stage.candidates[digest]
        i = yv.index(getattr(p, yn)) if yn != "(none)" else 0
        j = xv.index(getattr(p, xn))
        if not math.isfinite(grid[i, j]) or value > grid[i, j]:
            grid[i, j] = value
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    wi = yv.index(getattr(stage.winner, yn)) if yn != "(none)" else 0
    wj = xv.index(getattr(stage.winner, xn))
    cell, left, top = 56, 90, 24
    w, h = left + cell * len(xv) + 10, top + cell * len(yv) + 10
    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" font-size="11">']
    for j, v in enumerate(xv):
        out.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 6}" text-anchor="middle">{esc(v)}</text>')
    for i, v in enumerate(yv):
        out.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end">{esc(v)}</text>')
        for j in range(len(xv)):
            val = grid[i, j]
            t = (val - lo) / (hi - lo) if hi > lo else 0.5
            stroke = ' stroke="#000" stroke-width="3"' if (i, j) == (wi, wj) else ' stroke="#fff"'
            out.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                       f'fill="{heat_color(t)}"{stroke}/>')
            out.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" '
                       f'text-anchor="middle">{num(float(val), ".2f")}</text>')
    out.append("</svg>")
    return "".join(out), (f"x: {xn}, y: {yn}; a cell: the best objective over the stage's other knobs on "
                          f"{stage.halving.budgets[0]} bars; outlined: the winner")


def _ladders(rec: RunRecord) -> str:
    rows = []
    for sel in rec.run.selections:
        cells = [esc(sel.label)]
        for stage in sel.runs:
            if stage.halving is None:
                cells.append("1 (fixed)")
                continue
            cells.append(" → ".join(f"{len(r.candidates)}@{r.budget}" for r in stage.halving.ladder()))
        rows.append(cells)
    return table(["selection", *[s.name for s in rec.grids.stages]], rows, left=len(rec.grids.stages) + 1)


def render_html(rec: RunRecord, doc: dict[str, Any]) -> str:
    run = rec.run
    ok = doc["promoted"]
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>AURA optimizer report</title>"
             f"<style>{CSS}</style></head><body><h1>AURA walk-forward optimizer</h1>",
             f'<p class="verdict {"yes" if ok else "nope"}">{esc(doc["verdict"])}</p>',
             "<p>The gate judges the procedure, as any walk-forward does: on each fold, the set the search chose on "
             "that fold's training bars (the fold winner) must beat buy-and-hold gold and SPY after costs on the "
             "fold's validation window and beat the incumbent there, each run from the start of the fold's "
             "training window so that it opens the window with the state (positions, kill-switch latch) it would "
             "have had; and the multiple-testing controls must pass over every trial, pruned ones included. "
             + ("The set that would go live is the newest fold's winner, judged by these tests on the newest "
                "bars, which never chose it."
                if doc["promoted_set_validated"] else
                "The set that would go live is the same search run once more on the newest training window (the "
                "final selection, --refit): no window it never saw judges it itself.")
             + " An honest no is a correct outcome.</p>"]
    checks = [[esc(c["name"]), f'<span class="{"ok" if c["passed"] else "no"}">{"pass" if c["passed"] else "FAIL"}'
               f"</span>", num(c["value"]), num(c["threshold"]), num(c["margin"]), esc(c["detail"])]
              for c in doc["checks"]]
    parts += ["<h2>Tests</h2>", table(["test", "result", "value", "threshold", "margin", "detail"], checks,
                                       text_last=True)]
    t = doc["trials"]
    parts.append(f"<p>Trials counted (every fold, every stage, pruned included): <b>{t['counted']}</b>. "
                 f"Evaluations made by the search (all selections): {t['evaluations']} "
                 f"({t['evaluation_bars']:,} bars) against {t['full_grid_evaluations']} for the full grid "
                 f"({t['full_grid_bars']:,} bars), {num(t['full_grid_bars'] / max(1, t['evaluation_bars']), '.2f')}x "
                 "fewer bars evaluated.</p>")
    parts.append("<h2>Validation windows: each fold's winner against the incumbent, gold and SPY</h2>"
                 "<div class=\"charts\">")
    for label, fold in run.folds_by_label.items():
        val = run.validation[label]
        series = {"fold winner": val.winner.returns, "incumbent": val.incumbent.returns,
                  **{n: val.winner.bench[b] for b, n in enumerate(val.winner.bench_names)}}
        dates = rec.span(fold.validate)
        parts.append(f"<figure>{_line_chart(series)}<figcaption>fold {fold.index}: {esc(dates[0])} .. "
                     f"{esc(dates[1])}</figcaption></figure>")
    parts.append("</div>")
    names = list(rec.inputs.benchmarks.names)
    rows = [[str(w["fold"]), f"{esc(w['dates'][0])} .. {esc(w['dates'][1])}", pct(w["strategy"]), pct(w["incumbent"]),
             *[pct(w.get(n)) for n in names]] for w in doc["windows"]]
    parts.append(table(["fold", "window", "fold winner", "incumbent", *names], rows, left=2))
    s = doc["sharpe"]
    rows = [[str(f["fold"]), num(f["in_sample"], ".2f"), num(f["out_of_sample"], ".2f"),
             num(f["in_sample"] - f["out_of_sample"] if None not in (f["in_sample"], f["out_of_sample"]) else None,
                  ".2f")] for f in s["per_fold"]]
    rows.append(["all", num(s["in_sample"], ".2f"), num(s["out_of_sample"], ".2f"), num(s["gap"], ".2f")])
    parts += ["<h2>In-sample against out-of-sample Sharpe</h2>",
              f"<p>{esc(s['note'])}. In-sample Sharpe of the set that would go live ({esc(doc['promoted_from'])}): "
              f"{num(s['final_in_sample'], '.2f')}.</p>",
              table(["fold", "in-sample", "out-of-sample", "gap"], rows)]
    dsr = [[esc(n), num(x["dsr"]), num(x["sharpe"]), num(x["sr0"]), num(x["skew"], ".2f"),
            num(x["kurtosis"], ".2f"), str(x["n_obs"]), str(x["n_trials"])] for n, x in doc["dsr"].items()]
    parts += ["<h2>Multiple testing</h2>", table(["benchmark", "DSR", "SR/bar", "SR0/bar", "skew", "kurtosis", "T",
                                                 "N"], dsr),
              f"<p>PBO (CSCV, S = {rec.gate.cscv_partitions}): {num(doc['pbo'])}. SPA p-values (the largest over "
              "the folds and, with --refit, the final selection): " + ", ".join(f"{esc(k)} {num(v)}" for k, v in
                                                               doc["spa_pvalues"].items()) + ". Per "
              "fold (and with --refit for the final selection), Hansen's SPA of the best of every "
              "trial that selection made (pruned ones included), on the window they were all compared on:</p>",
              table(["fold", "models", *map(esc, doc["spa_pvalues"])],
                    [[str(f["fold"]), str(f["models"]), *(num(f[k]) for k in doc["spa_pvalues"])]
                     for f in doc["spa_by_fold"]])]
    parts += ["<h2>Successive halving: the ladder of every selection</h2>",
              "<p>candidates@budget (bars of recent training history) per rung; the best 1/"
              f"{rec.eta} go on.</p>", _ladders(rec)]
    parts.append(f"<h2>A heatmap per stage ({esc(doc['promoted_from'])}: the search that chose what would go "
                 "live)</h2><div class=\"charts\">")
    for stage in rec.grids.stages:
        svg, caption = _heatmap(rec, stage.name)
        parts.append(f"<figure>{svg}<figcaption><b>{esc(stage.title)}</b><br>{esc(caption)}</figcaption></figure>")
    parts.append("</div>")
    changed = [[esc(k), esc(v[0]), esc(v[1])] for k, v in doc["changed_from_incumbent"].items()]
    parts += [f"<h2>What would go live ({esc(doc['promoted_from'])}'s winner)</h2>",
              f"<p>digest <code>{esc(doc['parameters_digest'])}</code> (incumbent "
              f"<code>{esc(doc['incumbent_digest'])}</code>)</p>",
              table(["parameter", "incumbent", "would go live"], changed, left=3) if changed
              else "<p>Same as the incumbent.</p>"]
    u = doc["universe"]
    parts += ["<h2>Universe</h2>", f"<p>{len(u['symbols'])} symbols, {u['bars']} bars of {esc(rec.inputs.timeframe)} "
              f"from {esc(u['first'])} to {esc(u['last'])}: {esc(', '.join(u['symbols']))}.</p>",
              f'<p class="caveat"><b>Survivorship.</b> {esc(u["survivorship"])}</p>',
              f"<p>Inputs digest <code>{esc(doc['inputs']['digest'])}</code>, evaluation code "
              f"<code>{esc(doc['inputs']['engine'])}</code>, grids sha256 <code>{esc(doc['settings']['grids_sha256'])}"
              "</code>.</p></body></html>\n"]
    return "".join(parts)

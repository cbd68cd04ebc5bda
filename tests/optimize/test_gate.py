"""The promotion gate on synthetic out-of-sample records: what passes, what fails and by how much, what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from aura.optimize.folds import Fold, TrainWindow, ValidationWindow
from aura.optimize.gate import FINAL_SPA, GateSettings, ValidationRecord, promotion_gate
from aura.optimize.objective import WindowResult
from aura.optimize.stats import TrialSharpes

DAY_MS = 86_400_000
NAMES = ("GOLD", "SPY")


def fold(k: int) -> Fold:
    # train 200, embargo 10, validate 100, step 100
    return Fold(k, TrainWindow(100 * k, 100 * k + 200), ValidationWindow(100 * k + 210, 100 * k + 310), 10)


def records(strategy_mean: float = 0.004, incumbent_mean: float = 0.001, seed: int = 0,
            ) -> list[ValidationRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(3):
        f = fold(k)
        bench = rng.normal(0.0003, 0.01, (2, 100))
        win = WindowResult(f.validate, rng.normal(strategy_mean, 0.01, 100), bench, NAMES, DAY_MS, 5.0, 40)
        inc = WindowResult(f.validate, rng.normal(incumbent_mean, 0.01, 100), bench, NAMES, DAY_MS, 5.0, 40)
        out.append(ValidationRecord(f, win, inc, (f.train, f.train.recent(67))))
    return out


def trial_sharpes() -> list[TrialSharpes]:
    # 100 trials, two selection runs, each ranked on the 67 bars of records()' shortest budget
    return [TrialSharpes(np.linspace(-0.05, 0.05, 50), 67), TrialSharpes(np.linspace(0.0, 0.1, 50), 67)]


def dominated_matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 0.01, (2, 64, 1))
    return base + np.array([0.0, 0.001, 0.002, 0.01])[None, None, :] + rng.normal(0, 0.001, (2, 64, 4))


def edges() -> dict[int, np.ndarray]:
    """Per fold of records(), a selection whose best trial clearly beats both benchmarks."""
    return {k: dominated_matrix(k) for k in range(3)}


def test_a_clear_winner_passes_every_test() -> None:
    d = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=500),
                       spa_matrices=edges())
    assert d.passed, d.summary()
    assert [c.name for c in d.checks] == ["beats_GOLD_every_window", "beats_SPY_every_window", "beats_incumbent",
                                          "deflated_sharpe", "pbo", "spa_GOLD", "spa_SPY"]
    assert all(c.margin > 0 for c in d.checks)
    assert d.n_trials == 100
    assert d.pbo == 0.0
    assert d.dsr["GOLD"].n_obs == 300 and d.dsr["SPY"].n_trials == 100
    assert [w.fold for w in d.windows] == [0, 1, 2]
    assert d.summary().startswith("PROMOTE")
    again = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=500),
                           spa_matrices=edges())
    assert again.checks == d.checks and again.spa_pvalues == d.spa_pvalues  # seeded, deterministic
    assert [f.fold for f in d.spa_folds] == [0, 1, 2] and [f.models for f in d.spa_folds] == [4, 4, 4]


def test_one_window_behind_a_benchmark_fails_and_says_where_and_by_how_much() -> None:
    recs = records()
    w = recs[1].winner
    lagging = WindowResult(w.window, w.returns - 0.006, w.bench, NAMES, DAY_MS, w.turnover, w.trades)
    recs[1] = ValidationRecord(recs[1].fold, lagging, recs[1].incumbent, recs[1].selected_on)
    d = promotion_gate(recs, trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=200), spa_matrices=edges())
    assert not d.passed
    failed = {c.name: c for c in d.failed}
    assert "beats_GOLD_every_window" in failed and "beats_SPY_every_window" in failed
    gold = failed["beats_GOLD_every_window"]
    lead = d.windows[1].strategy - d.windows[1].benchmarks["GOLD"]
    assert gold.value == pytest.approx(lead) and gold.margin == pytest.approx(lead) and lead < 0
    assert "behind on 1 of 3 windows: fold 1" in gold.detail
    assert "NO PROMOTION" in d.summary() and "beats_GOLD_every_window" in d.summary()


def test_worse_than_the_incumbent_fails() -> None:
    d = promotion_gate(records(strategy_mean=0.004, incumbent_mean=0.008), trial_sharpes(), [dominated_matrix()],
                       GateSettings(spa_reps=200), spa_matrices=edges())
    inc = next(c for c in d.checks if c.name == "beats_incumbent")
    assert not inc.passed and inc.margin == pytest.approx(d.validation_score - d.incumbent_score) and inc.margin < 0


def test_many_dispersed_trials_deflate_a_modest_sharpe() -> None:
    recs = records(strategy_mean=0.0015, incumbent_mean=0.0)
    d = promotion_gate(recs, [TrialSharpes(np.random.default_rng(5).normal(0, 0.1, 5000), 67)], [dominated_matrix()],
                       GateSettings(spa_reps=200), spa_matrices=edges())
    dsr = next(c for c in d.checks if c.name == "deflated_sharpe")
    assert not dsr.passed and dsr.value < 0.5 and "N=5000" in dsr.detail


def test_noise_selection_fails_pbo() -> None:
    rng = np.random.default_rng(9)
    noise = [rng.normal(0, 0.01, (2, 64, 20)) for _ in range(4)]
    d = promotion_gate(records(), trial_sharpes(), noise, GateSettings(spa_reps=200), spa_matrices=edges())
    pbo = next(c for c in d.checks if c.name == "pbo")
    assert not pbo.passed and pbo.value > 0.2 and pbo.margin == pytest.approx(0.2 - pbo.value)
    assert f"{4 * 12870} splits over 4 selection runs" in pbo.detail


def test_a_search_of_noise_fails_spa_and_every_fold_must_show_an_edge() -> None:
    """SPA is on each fold's selection (every trial, on their common window), not on the validation record: a
    clear out-of-sample winner found by a search whose trials were noise fails, and one fold of noise is enough
    (the gate takes the largest p-value over the folds)."""
    rng = np.random.default_rng(10)
    # Trials with no edge in sample (each demeaned): a null the test must not call superior.  Raw draws would
    # carry chance means, and a fold's SPA is rightly below 0.05 in a few percent of such searches.
    noise = {k: (x := rng.normal(0.0, 0.01, (2, 64, 40))) - x.mean(axis=1, keepdims=True) for k in range(3)}
    d = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=500),
                       spa_matrices=noise)
    spa = [c for c in d.checks if c.name.startswith("spa_")]
    assert [c.name for c in spa] == ["spa_GOLD", "spa_SPY"]
    assert all(not c.passed and c.value > 0.05 for c in spa)
    assert [f.models for f in d.spa_folds] == [40, 40, 40]
    one_bad = {**edges(), 1: noise[1]}
    d = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=500),
                       spa_matrices=one_bad)
    for name in ("GOLD", "SPY"):
        per_fold = [f.pvalues[name] for f in d.spa_folds]
        assert per_fold[0] <= 0.05 and per_fold[2] <= 0.05 < per_fold[1]
        assert d.spa_pvalues[name] == max(per_fold)
        check = next(c for c in d.checks if c.name == f"spa_{name}")
        assert not check.passed and check.value == per_fold[1] and "fold 1 " in check.detail
    no_choice = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=200),
                               spa_matrices={**edges(), 2: None})
    assert "spa_GOLD" in {c.name for c in no_choice.failed} and no_choice.spa_folds[2].models == 0
    with pytest.raises(ValueError, match="SPA needs every fold"):
        promotion_gate(records(), trial_sharpes(), [dominated_matrix()], spa_matrices={0: dominated_matrix()})


def test_the_final_selections_search_must_show_an_edge_too() -> None:
    """With --refit the set that would go live is the final selection's winner, which no validation window judges:
    a search of noise there fails SPA though every fold's search found an edge (found by an audit: only the folds'
    were tested)."""
    rng = np.random.default_rng(11)
    noise = (x := rng.normal(0.0, 0.01, (2, 64, 40))) - x.mean(axis=1, keepdims=True)
    d = promotion_gate(records(), trial_sharpes(), [dominated_matrix()], GateSettings(spa_reps=500),
                       spa_matrices={**edges(), FINAL_SPA: noise})
    assert [f.label for f in d.spa_folds] == ["fold 0", "fold 1", "fold 2", "final"]
    for name in ("GOLD", "SPY"):
        *folds, final = (f.pvalues[name] for f in d.spa_folds)
        assert max(folds) <= 0.05 < final and d.spa_pvalues[name] == final
        check = next(c for c in d.checks if c.name == f"spa_{name}")
        assert not check.passed and "final " in check.detail


def test_leaks_and_misaligned_records_are_refused_not_answered() -> None:
    recs = records()
    r = recs[0]
    leak = ValidationRecord(r.fold, r.winner, r.incumbent, (TrainWindow(0, 250),))  # reaches into validation
    with pytest.raises(ValueError, match="winner chosen on bars it is judged on"):
        promotion_gate([leak, *recs[1:]], trial_sharpes(), [dominated_matrix()], spa_matrices=edges())
    other = WindowResult(recs[1].fold.validate, r.incumbent.returns, r.incumbent.bench, NAMES, DAY_MS, 5.0, 4)
    with pytest.raises(ValueError, match="the incumbent was evaluated on"):
        promotion_gate([ValidationRecord(r.fold, r.winner, other, r.selected_on)], trial_sharpes(),
                       [dominated_matrix()], spa_matrices=edges())
    only_spy = WindowResult(r.fold.validate, r.winner.returns, r.winner.bench[1:], ("SPY",), DAY_MS, 5.0, 4)
    with pytest.raises(ValueError, match="the gate needs"):
        promotion_gate([ValidationRecord(r.fold, only_spy, only_spy, r.selected_on)], trial_sharpes(),
                       [dominated_matrix()], spa_matrices=edges())
    with pytest.raises(ValueError, match="PBO needs"):
        promotion_gate(recs, trial_sharpes(), [], spa_matrices=edges())
    f9 = Fold(9, TrainWindow(0, 200), ValidationWindow(250, 350), 10)
    w9 = WindowResult(f9.validate, r.winner.returns, r.winner.bench, NAMES, DAY_MS, 5.0, 4)
    with pytest.raises(ValueError, match="validation windows of folds 0 and 9 overlap"):
        promotion_gate([recs[0], ValidationRecord(f9, w9, w9, (f9.train,))], trial_sharpes(), [dominated_matrix()],
                       spa_matrices=edges())

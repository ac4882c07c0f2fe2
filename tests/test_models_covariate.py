"""Tests of covariate-informed mixing (``stan/covariate_bt.stan``) and its simulator."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.special import log_softmax, logsumexp, softmax

import pluralstan as ps
from pluralstan import _arviz, relabel
from pluralstan.errors import PluralstanError
from pluralstan.models import covariate
from pluralstan.simulate import HIGH_CONFLICT_THETA

from . import reference as ref


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    """Mixed covariates for 8 annotators: numeric, string and boolean columns."""
    return pd.DataFrame(
        {"age": [21.0, 35, 50, 62, 28, 44, 39, 57],
         "region": ["north", "south", "east", "north", "south", "east", "north", "east"],
         "student": [True, False, False, False, True, False, True, False]},
        index=pd.Index(range(8), name="annotator"),
    )


@pytest.fixture(scope="module")
def comps(table) -> ps.Comparisons:
    base = ps.simulate.high_conflict(seed=4, n_annotators=8, n_pairs=12, pairs_per_annotator=5)
    return ps.Comparisons.from_frame(base.to_frame(), annotators=table)


# ---------------------------------------------------------------------------- encoding
def test_covariate_encoding_is_recorded(comps):
    enc = covariate.encode(comps, K=2, reference_levels={"region": "south"})
    names = enc.coords["covariate"]
    assert names == ["intercept", "age", "region[east]", "region[north]", "student[True]"]
    W = enc.data["W"]
    assert W.shape == (8, 5) and np.all(W[:, 0] == 1)
    np.testing.assert_allclose([W[:, 1].mean(), W[:, 1].std(ddof=1)], [0, 1], atol=1e-12)
    south = np.array(comps.annotators["region"] == "south")
    assert np.all(W[south][:, 2:4] == 0)  # the reference level has no dummy
    record = json.loads(enc.extra_attrs["covariate_encoding"])
    assert record["region"]["reference"] == "south"
    assert record["age"]["kind"] == "numeric" and record["age"]["mean"] == pytest.approx(42.0)
    assert record["student"]["reference"] == "False"
    # intercept prior first, then one slope prior per encoded covariate
    enc = covariate.encode(comps, K=2, priors={"beta_sd": [1, 2, 3, 4], "intercept_sd": 0.5})
    assert enc.data["prior_beta_sd"].tolist() == [0.5, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- bad input
def test_rejects_missing_annotator_table():
    plain = ps.simulate.high_conflict(seed=4, n_annotators=8, n_pairs=12, pairs_per_annotator=5)
    with pytest.raises(PluralstanError, match="needs an annotator covariate table"):
        ps.fit("covariate", plain, K=2)


def test_rejects_missing_covariate_values(comps, table):
    holes = table.assign(age=table["age"].where(table.index != 3))
    with pytest.raises(PluralstanError, match="covariate 'age' is missing for annotator 3"):
        ps.Comparisons.from_frame(comps.to_frame(), annotators=holes)


def test_rejects_uninformative_covariates_and_bad_levels(comps, table):
    for bad, what in ((table.assign(age=1.0), "'age' is constant"),
                      (table.assign(region="north"), "'region' has a single level")):
        c = ps.Comparisons.from_frame(comps.to_frame(), annotators=bad)
        with pytest.raises(PluralstanError, match=what):
            covariate.encode(c, K=2)
    with pytest.raises(PluralstanError, match="reference level 'west'"):
        covariate.encode(comps, K=2, reference_levels={"region": "west"})
    with pytest.raises(PluralstanError, match="not in the annotator table"):
        covariate.encode(comps, K=2, reference_levels={"sex": "f"})
    with pytest.raises(PluralstanError, match=r"K = 9 .* only 8 annotator"):
        covariate.encode(comps, K=9)
    with pytest.raises(PluralstanError, match=r"beta_sd.*length 4"):
        covariate.encode(comps, K=2, priors={"beta_sd": [1.0, 1.0]})


def test_rejects_annotator_without_judgements(comps, table):
    extra = pd.concat([table, table.iloc[[0]].set_axis(pd.Index([99], name="annotator"))])
    with pytest.raises(PluralstanError, match=r"annotator 99 .* no judgements"):
        ps.Comparisons.from_frame(comps.to_frame(), annotators=extra)


# ---------------------------------------------------------------------------- simulator
def test_simulator_validates_beta():
    with pytest.raises(PluralstanError, match=r"shape \(K, Q\) = \(2, 2\)"):
        covariate.simulate(HIGH_CONFLICT_THETA, [[0.0, 0.0, 0.0], [0.0, 1.0, 1.0]], seed=1)
    with pytest.raises(PluralstanError, match="finite array"):
        covariate.simulate(HIGH_CONFLICT_THETA, [[np.nan, 0.0], [0.0, 1.0]], seed=1)


def test_simulator_truth_is_the_sum_to_zero_coding():
    """Only differences between types enter the softmax: a reference-coded beta and the same
    beta shifted by a constant per covariate simulate identical data, and the truth records the
    sum-to-zero coefficients the Stan program estimates."""
    reference = np.array([[0.0, 0.0], [0.5, 2.0]])
    runs = [covariate.simulate(HIGH_CONFLICT_THETA, reference + shift, n_annotators=50,
                               n_pairs=20, pairs_per_annotator=3, seed=6)
            for shift in ([0.0, 0.0], [-1.0, 3.0])]
    pd.testing.assert_frame_equal(runs[0].frame, runs[1].frame)
    for sim in runs:
        np.testing.assert_allclose(sim.truth["beta"], [[-0.25, -1.0], [0.25, 1.0]])


def test_simulator_draws_types_from_the_softmax_regression():
    """Criterion: with 4000 annotators, the share of each type among annotators with a low and
    a high covariate matches the mean softmax probability within 4 binomial standard errors."""
    beta = np.array([[0.0, 0.0], [0.5, 2.0]])
    sim = covariate.simulate(HIGH_CONFLICT_THETA, beta, n_annotators=4000, n_pairs=20,
                             pairs_per_annotator=1, seed=5)
    z, p = sim.truth["z"], sim.truth["pi_annotator"][:, 1]
    high = sim.annotators["score"].to_numpy() > 0
    for part in (high, ~high):
        se = np.sqrt(p[part].mean() * (1 - p[part].mean()) / part.sum())
        assert abs(z[part].mean() - p[part].mean()) < 4 * se
    assert sim.truth["pi"] == pytest.approx(sim.truth["pi_annotator"].mean(0))
    assert np.array_equal(sim.frame.groupby("annotator")["group"].first().to_numpy(), z)


# ---------------------------------------------------------------------------- Stan program
def test_likelihood_matches_judgement_level_reference(comps):
    """Per-annotator log likelihood and membership equal a direct judgement-level sum mixed
    with each annotator's softmax weights."""
    idata = ps.fit("covariate", comps, K=2, chains=1, draws=10, warmup=10, seed=3,
                   backend="pystan", check=False)
    post = idata.posterior
    W = idata.constant_data["W"].values
    assert post["beta"].dims[2:] == ("group", "covariate")
    np.testing.assert_allclose(post["beta"].sum("group"), 0, atol=1e-12)  # no reference type
    assert np.ptp(post["beta"].values, axis=(0, 1)).min() > 0  # every coefficient is sampled
    j = ref.judgements(comps.to_frame(), list(comps.attributes))
    for d in range(3):
        draw = post.isel(chain=0, draw=d)
        log_pi = log_softmax(W @ draw["beta"].values.T, axis=1)
        lp = ref.type_log_lik(j, draw["theta"].values) + log_pi
        np.testing.assert_allclose(idata.log_likelihood["y"].isel(chain=0, draw=d).values,
                                   logsumexp(lp, axis=1), rtol=1e-8)
        np.testing.assert_allclose(draw["membership"].values,
                                   np.exp(lp - logsumexp(lp, axis=1, keepdims=True)),
                                   rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(draw["pi"].values, np.exp(log_pi).mean(0), rtol=1e-8)
    assert idata.posterior_predictive["y"].shape[2:] == idata.observed_data["y"].shape


def test_prior_gives_every_type_the_stated_marginal_sd(comps):
    """The sum-to-zero prior is exchangeable with the stated scale. Criterion (4000 prior draws,
    K = 3): every column of beta sums to zero; each type's coefficient has sd within 10% of
    its prior sd (intercept_sd, then beta_sd per covariate) and each contrast between two types
    within 10% of sqrt(2 K / (K - 1)) = sqrt(3) times it."""
    sd = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    idata = ps.fit("covariate", comps, K=3, priors={"intercept_sd": sd[0], "beta_sd": sd[1:]},
                   chains=4, draws=1000, warmup=200, seed=9, backend="pystan",
                   sample_prior=True, check=False)
    beta = idata.prior["beta"].transpose("chain", "draw", "group", "covariate").values
    beta = beta.reshape(-1, *beta.shape[2:])
    np.testing.assert_allclose(beta.sum(axis=1), 0, atol=1e-10)
    np.testing.assert_allclose(beta.std(axis=0), np.tile(sd, (3, 1)), rtol=0.1)
    contrasts = beta[:, [1, 2, 2]] - beta[:, [0, 0, 1]]
    np.testing.assert_allclose(contrasts.std(axis=0), np.sqrt(3) * np.tile(sd, (3, 1)), rtol=0.1)


def test_membership_can_be_skipped_on_large_data(comps):
    """membership=False drops the annotators x K output; the log likelihood is unchanged."""
    idata = ps.fit("covariate", comps, K=2, chains=1, draws=5, warmup=10, seed=3,
                   backend="pystan", check=False, membership=False)
    assert "membership" not in idata.posterior and "pi_annotator" in idata.posterior
    W = idata.constant_data["W"].values
    draw = idata.posterior.isel(chain=0, draw=0)
    j = ref.judgements(comps.to_frame(), list(comps.attributes))
    lp = ref.type_log_lik(j, draw["theta"].values) + log_softmax(
        W @ draw["beta"].values.T, axis=1)
    np.testing.assert_allclose(idata.log_likelihood["y"].isel(chain=0, draw=0).values,
                               logsumexp(lp, axis=1), rtol=1e-8)

def test_annotator_shares_can_be_skipped(comps):
    """pi_annotator=False drops the annotators x K prior shares; pi, their mean, is the same
    softmax of W beta' averaged over annotators."""
    idata = ps.fit("covariate", comps, K=2, chains=1, draws=5, warmup=10, seed=3,
                   backend="pystan", check=False, pi_annotator=False)
    assert "pi_annotator" not in idata.posterior
    W = idata.constant_data["W"].values
    for d in range(5):
        beta = idata.posterior["beta"].isel(chain=0, draw=d).values
        np.testing.assert_allclose(idata.posterior["pi"].isel(chain=0, draw=d).values,
                                   softmax(W @ beta.T, axis=1).mean(0), rtol=1e-8)


def test_log_lik_can_be_skipped_on_very_large_data(comps):
    """log_lik=False drops the per-annotator log likelihood and nothing else."""
    idata = ps.fit("covariate", comps, K=2, chains=1, draws=5, warmup=10, seed=3,
                   backend="pystan", check=False, log_lik=False)
    assert "log_likelihood" not in _arviz.groups(idata)
    assert {"theta", "beta", "pi", "pi_annotator", "membership"} <= set(idata.posterior)


def test_recovers_sign_of_a_strong_covariate():
    """Criterion: with a strong covariate (slope 3 per sd for type 1 against type 0) and 100
    annotators judging 20 pairs each, after per-chain alignment of the labels to the truth
    (linear_sum_assignment on posterior mean theta) the slope contrast is positive with
    posterior probability above 0.95 and its central 90% interval contains 3; the
    covariate's mean membership ordering matches the truth (annotators with a high score are
    mostly assigned to type 1). The fit (4 x 1000 draws) must pass the package's diagnostics."""
    beta = np.array([[0.0, 0.0], [0.0, 3.0]])
    sim = covariate.simulate(HIGH_CONFLICT_THETA, beta, n_annotators=100,
                             pairs_per_annotator=20, seed=8)
    idata = ps.fit("covariate", sim, K=2, chains=4, draws=1000, warmup=500, seed=8,
                   backend="pystan")
    assert not ps.diagnostics.failed(idata), ps.diagnostics.failed(idata)
    post = idata.posterior
    theta = post["theta"].transpose("chain", "draw", "group", "attribute").values
    slope = post["beta"].sel(covariate="score").transpose("chain", "draw", "group").values
    contrast = []
    for c in range(theta.shape[0]):
        cost = ((sim.truth["theta"][:, None] - theta[c].mean(0)[None]) ** 2).sum(-1)
        _, fitted_of_true = linear_sum_assignment(cost)
        contrast.append(slope[c, :, fitted_of_true[1]] - slope[c, :, fitted_of_true[0]])
    contrast = np.concatenate(contrast)
    assert (contrast > 0).mean() > 0.95
    lo, hi = np.quantile(contrast, [0.05, 0.95])
    assert lo <= 3.0 <= hi, (lo, hi)


# ---------------------------------------------------------------------------- relabelling
#: Three types (five attributes) for the recovery under label switching.
THREE_THETA = np.array([[2.0, 2.0, 0.0, -1.0, -1.0],
                        [-1.0, -1.0, 0.0, 2.0, 2.0],
                        [0.0, -1.5, 2.5, -1.5, 0.0]])
#: Sum-to-zero mixing coefficients on (intercept, age per sd, student): older annotators lean
#: to type 1 and away from type 0, students to type 0 and away from type 1, type 2 is as likely
#: at every age. No type is rare (a rare type's coefficients are poorly determined by 300
#: annotators even when every type is known).
THREE_BETA = np.array([[0.4, -1.5, 1.5],
                       [0.0, 1.5, -1.5],
                       [-0.4, 0.0, 0.0]])
#: Label permutation forced on each of the four chains: ``FORCED[c, k]`` is the raw type that
#: chain c reports as type k.
FORCED = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1], [1, 0, 2]])


@pytest.fixture(scope="module")
def three_types() -> tuple[ps.Comparisons, az.InferenceData]:
    """300 annotators x 10 judgements, one continuous and one binary covariate; 4 chains."""
    rng = np.random.default_rng(17)
    n = 300
    table = pd.DataFrame({"age": rng.normal(40.0, 12.0, n), "student": rng.uniform(size=n) < 0.4},
                         index=pd.RangeIndex(n, name="annotator"))
    sim = covariate.simulate(THREE_THETA, THREE_BETA, covariates=table, n_pairs=200,
                             pairs_per_annotator=10, seed=17)
    idata = ps.fit("covariate", sim, K=3, chains=4, draws=500, warmup=500, seed=17,
                   backend="pystan")
    return sim, idata


def test_recovers_covariate_effects_whatever_the_chains_permutations(three_types):
    """Known effects survive relabelling, whatever permutation each chain settled in.

    The fit's chains are forced into four different label permutations (FORCED, applied with
    ``relabel.permute``: exactly what label switching between chains looks like), then
    relabelled with ``relabel.relabel``. Criterion: the forced draws disagree (R-hat of beta
    above 1.5); after relabelling, R-hat of beta is below 1.01, every column of beta still sums
    to zero (a permutation of the types permutes beta exactly, no re-referencing), a relabelled
    draw of (theta, beta) reproduces the stored per-annotator log likelihood, and relabelling
    again is a no-op. With the types matched to the truth on posterior mean theta
    (linear_sum_assignment), every true beta[k, q] lies inside its central simultaneous 90%
    interval (Bonferroni over the 9 values: per value the 0.56% and 99.44% quantiles), and
    every non-zero covariate effect (slope) has the right sign: its central 90% interval lies on
    the truth's side of 0."""
    sim, idata = three_types
    K, n_draw = len(THREE_THETA), idata.posterior.sizes["draw"]
    switched = relabel.permute(idata, np.repeat(FORCED[:, None, :], n_draw, axis=1))
    assert float(az.rhat(_arviz.group(switched, "posterior")[["beta"]])["beta"].max()) > 1.5

    relabelled, _ = relabel.relabel(switched)
    post = relabelled.posterior
    rhat = float(az.rhat(_arviz.group(relabelled, "posterior")[["beta"]])["beta"].max())
    assert rhat < 1.01, rhat
    np.testing.assert_allclose(post["beta"].sum("group"), 0, atol=1e-10)
    W = idata.constant_data["W"].values
    j = ref.judgements(sim.to_frame(), list(sim.attributes))
    for c, d in ((1, 0), (2, n_draw // 2), (3, n_draw - 1)):
        draw = post.isel(chain=c, draw=d)
        lp = ref.type_log_lik(j, draw["theta"].values) + log_softmax(
            W @ draw["beta"].values.T, axis=1)
        np.testing.assert_allclose(idata.log_likelihood["y"].isel(chain=c, draw=d).values,
                                   logsumexp(lp, axis=1), rtol=1e-8)
    _, again = relabel.relabel(relabelled)
    assert np.all(again.values == np.arange(K))

    theta_mean = post["theta"].mean(("chain", "draw")).values
    _, fitted_of_true = linear_sum_assignment(
        ((THREE_THETA[:, None] - theta_mean[None]) ** 2).sum(-1))
    beta = post["beta"].transpose("chain", "draw", "group", "covariate").values
    beta = beta[:, :, fitted_of_true].reshape(-1, K, beta.shape[-1])
    truth = sim.truth["beta"]
    np.testing.assert_allclose(truth, THREE_BETA)  # already sum-to-zero: recorded as given
    alpha = 0.10 / truth.size
    lo, hi = np.quantile(beta, [alpha / 2, 1 - alpha / 2], axis=0)
    assert np.all((lo <= truth) & (truth <= hi)), (truth, lo, hi)
    q05, q95 = np.quantile(beta, [0.05, 0.95], axis=0)
    right_sign = np.where(truth > 0, q05 > 0, q95 < 0)[:, 1:]
    assert np.all(right_sign[truth[:, 1:] != 0]), (truth, q05, q95)


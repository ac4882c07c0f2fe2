"""PAL ideal-point mixture (model A, linear map): simulator, encoding, identification, recovery of
identified quantities, seen / unseen / few-shot accuracy, and input validation."""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit
from scipy.stats import special_ortho_group

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import pal_users
from pluralstan.errors import IdentificationWarning, PluralstanError
from pluralstan.models import get_model, pal

from . import reference as ref
from .strict import converged

#: Heterogeneous population: K = 2 conflicting prototype utilities, users near the vertices
#: (Dirichlet(0.5)), 3 attributes, metric M = I (a typical value under the W_sd = 1 prior, whose
#: mean is 3 I). 48 seen users (30 training + 20 held-out judgements each) and 24 unseen users
#: (50 judgements each). M is fixed rather than drawn: a draw with a large shared quadratic term
#: (seed 1 gave diag(M) = 4.3, 9.2, 7.8) makes users agree on most pairs whatever their weights
#: (sd of true user-pair agreement 0.047 vs 0.122 with M = I; population-average oracle accuracy
#: 0.86 vs per-user 0.90), which leaves nothing for the heterogeneity tests below to detect.
THETA = np.array([[-3.0, 2.0, 0.0], [3.0, -2.0, 1.0]])
TRUE = {"K": 2, "n_attributes": 3, "theta": THETA, "w_alpha": 0.5, "M": np.eye(3)}
PRIORS = {"W_sd": 1.0, "theta_sd": 3.0, "w_alpha": 0.5}
SAMPLER = {"chains": 4, "draws": 1000, "warmup": 1000, "backend": "pystan"}


def true_probability(comps: ps.Comparisons) -> np.ndarray:
    """P(a > b) per judgement under the simulation truth, from PAL's distance form with the
    users' ideal points (``tests/reference.py``), not from the package's utility form."""
    frame, truth = comps.to_frame(), comps.truth
    A = frame[[f"a_{n}" for n in comps.attributes]].to_numpy(float)
    B = frame[[f"b_{n}" for n in comps.attributes]].to_numpy(float)
    ideal = truth["ideal"][frame["annotator"].to_numpy(int)]
    return expit(ref.pal_distance_log_odds(A, B, ideal, truth["M"]))


@pytest.fixture(scope="module")
def population():
    comps = pal.simulate(n_annotators=72, judgements=50, seed=1, **TRUE)
    return pal.train_test_split(comps, test_per_user=20, n_unseen=24)


@pytest.fixture(scope="module")
def seen_fit(population):
    train, _, _ = population
    return converged(ps.fit, "pal", train, K=2, priors=PRIORS, seed=3, sample_prior=True, **SAMPLER)


# ---------------------------------------------------------------------- simulator and encoding
def test_simulator_draws_from_the_stated_likelihood():
    """Criterion: the share of 'a preferred' among 6,000 simulated judgements matches the mean
    true probability within 4 binomial standard errors, and so does every decile bin of the true
    probability (a wrong sign or a missing quadratic term fails this by tens of SEs)."""
    comps = pal.simulate(n_annotators=100, judgements=60, seed=7, **TRUE)
    p, y = true_probability(comps), comps.frame["y"].to_numpy()
    # the package's own truth helper agrees with the independent one
    np.testing.assert_allclose(pal.true_probability(comps), p, rtol=1e-12)
    bins = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 9)
    for b in range(10):
        sel = which == b
        se = np.sqrt(np.sum(p[sel] * (1 - p[sel]))) / sel.sum()
        assert abs(y[sel].mean() - p[sel].mean()) < 4 * se + 1e-12, b


def test_truth_is_in_the_programs_parameterisation():
    """The prototype and user ideal points are M^{-1} theta / 2 and M^{-1} beta / 2, and the
    users' utilities lie in the prototypes' convex hull."""
    comps = pal.simulate(3, n_annotators=20, judgements=5, seed=2, n_attributes=4)
    t = comps.truth
    np.testing.assert_allclose(2 * t["proto"] @ t["M"], t["theta"])
    np.testing.assert_allclose(t["beta"], t["w"] @ t["theta"])
    np.testing.assert_allclose(t["ideal"], t["w"] @ t["proto"])


def test_distance_form_equals_sampled_form_and_ignores_rotations():
    """PAL's ||W(b - a_i)||^2 - ||W(a - a_i)||^2 equals beta_i'(a - b) - (a'Ma - b'Mb) with
    M = W'W and beta_i = 2 M a_i, and rotating the latent space (W -> R W) changes nothing:
    the non-identification the (theta, M) parameterisation removes."""
    rng = np.random.default_rng(0)
    W, ideal = rng.normal(size=(3, 3)), rng.normal(size=(50, 3))
    A, B = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    M = W.T @ W
    expected = pal.distance_log_odds(W, ideal, A, B)
    np.testing.assert_allclose(pal.log_odds(M, 2 * ideal @ M, A, B), expected)
    R = special_ortho_group.rvs(3, random_state=1)
    np.testing.assert_allclose(pal.distance_log_odds(R @ W, ideal, A, B), expected)


def test_cells_keep_option_sums_apart():
    """Two judgements with the same a - b but different a + b have different ideal-point
    likelihoods, so they must not share a cell; identical judgements of one annotator must."""
    comps = ps.Comparisons.from_frame(
        pd.DataFrame({
            "annotator": [1, 1, 1, 2],
            "a_x": [1.0, 2.0, 1.0, 1.0], "b_x": [0.0, 1.0, 0.0, 0.0], "y": [1, 0, 0, 1],
        })
    )
    cells = comps.cells(by=("annotator",), options=True)
    assert cells.counts[:, :2].tolist() == [[1, 1], [1, 0], [0, 1]]
    assert cells.cell_of_row.tolist() == [0, 1, 0, 2]
    assert cells.annotator.tolist() == [0, 0, 1]
    assert cells.A.ravel().tolist() == [1.0, 2.0, 1.0] and cells.B.ravel().tolist() == [0, 1, 0]
    # keyed on a - b alone (the linear models' sufficient statistics) rows 0 and 1 would merge
    assert comps.cells(by=("annotator",)).cell_of_row.tolist() == [0, 0, 0, 1]
    # and the program's data are these cells
    data = pal.encode(comps, K=1).data
    np.testing.assert_array_equal(data["y"], cells.counts[:, :2])
    np.testing.assert_array_equal(data["X_a"], cells.A)


def test_constant_attribute_combination_warns_about_translation():
    """Shares summing to one make the latent space translatable: the encoder says so."""
    frame = pd.DataFrame({"annotator": [0, 0, 1, 1], "y": [1, 0, 1, 1],
                          "a_s": [0.2, 0.7, 0.4, 0.1], "a_t": [0.8, 0.3, 0.6, 0.9],
                          "b_s": [0.5, 0.9, 0.3, 0.6], "b_t": [0.5, 0.1, 0.7, 0.4]})
    with pytest.warns(IdentificationWarning, match="translated"):
        pal.encode(ps.Comparisons.from_frame(frame), K=1)


# ---------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    ("K", "options", "match"),
    [(0, {}, "at least 1"), (49, {}, r"only 48 annotator\(s\)"), (1.5, {}, "integer"),
     (2, {"priors": {"w_alpha": [1.0, -1.0]}}, "w_alpha"), (2, {"priors": {"W_sd": -1.0}}, "W_sd"),
     (2, {"priors": {"proto_sd": 1.0}}, "unknown prior")],
)
def test_bad_input_is_rejected_before_stan(population, K, options, match):
    train, _, _ = population
    with pytest.raises(PluralstanError, match=match):
        ps.fit("pal", train, K=K, backend="no-such-backend", **options)


def test_ties_and_missing_K_are_rejected(population):
    train, _, _ = population
    frame = train.frame.copy()
    frame.loc[3, "y"] = 0.5
    with pytest.raises(PluralstanError, match="no tie outcome"):
        pal.encode(ps.Comparisons.from_frame(frame), K=2)
    with pytest.raises(PluralstanError, match="needs the number of components K"):
        ps.fit("pal", train)


# ---------------------------------------------------------------------- the fit
def test_fit_layout_follows_the_conventions(seen_fit, population):
    train, _, _ = population
    assert get_model("pal").needs_K
    post = seen_fit.posterior
    assert post["M"].dims[2:] == ("attribute", "attribute_other")
    assert post["w"].dims[2:] == ("annotator", "group")
    assert post["theta"].dims[2:] == ("group", "attribute")
    assert seen_fit.log_likelihood["y"].dims[2:] == ("annotator",)
    assert seen_fit.log_likelihood.sizes["annotator"] == len(train.annotator_levels)
    assert seen_fit.posterior_predictive["y"].shape[2:] == seen_fit.observed_data["y"].shape
    assert int(seen_fit.observed_data["y"].sum()) == train.n
    assert "lprior" in seen_fit.log_prior
    # M is symmetric positive definite in every draw
    M = post["M"].values
    np.testing.assert_allclose(M, np.swapaxes(M, -1, -2))
    assert np.all(np.linalg.eigvalsh(M) > 0)
    # annotator log likelihood = Bernoulli log probability of that annotator's judgements
    y = train.frame["y"].to_numpy()
    p = pal_users.preference_probability(seen_fit, train).values
    by_row = np.where(y == 1, np.log(p), np.log1p(-p))
    code = train.codes("annotator")
    total = np.stack([by_row[..., code == i].sum(-1) for i in range(3)], axis=-1)
    np.testing.assert_allclose(seen_fit.log_likelihood["y"].values[..., :3], total, rtol=1e-6)


def test_replicate_false_skips_replicated_data_and_keeps_user_utilities(population):
    """``replicate=False``: no posterior predictive group. The users' utilities ``beta``
    (computed in Python, not by the program) equal w @ theta in every draw, and the program's
    per-user log likelihood equals the Bernoulli log probability of the user's judgements under
    them."""
    train, _, _ = population
    idata = ps.fit("pal", train, K=2, chains=1, draws=20, warmup=20, seed=2, backend="pystan",
                   check=False, replicate=False)
    assert "posterior_predictive" not in _arviz.groups(idata)
    post = idata.posterior
    assert post["beta"].dims[2:] == ("annotator", "attribute")
    np.testing.assert_allclose(post["beta"].values, np.einsum(
        "cdik,cdkp->cdip", post["w"].values, post["theta"].values), atol=1e-12)
    y = train.frame["y"].to_numpy()
    p = pal_users.preference_probability(idata, train).values
    by_row = np.where(y == 1, np.log(p), np.log1p(-p))
    code = train.codes("annotator")
    total = np.stack([by_row[..., code == i].sum(-1)
                      for i in range(len(train.annotator_levels))], axis=-1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, total, rtol=1e-6)


def test_prior_on_the_metric_is_that_of_an_iid_normal_map(seen_fit):
    """M = W'W for W with iid normal(0, W_sd) entries is Wishart(D, W_sd^2 I), so under the
    prior E[M] = D W_sd^2 I. Criterion: every entry of the prior-draw mean of M is within 4 Monte
    Carlo standard errors (ArviZ mcse) of D W_sd^2 I = 3 I."""
    import arviz as az

    M = seen_fit.prior["M"]
    mean = M.mean(("chain", "draw")).values
    se = az.mcse(_arviz.group(seen_fit, "prior")[["M"]])["M"].values
    target = 3 * PRIORS["W_sd"] ** 2 * np.eye(3)
    assert np.all(np.abs(mean - target) < 4 * se), (mean, se)


def test_heldout_preference_probabilities_are_recovered(seen_fit, population):
    """Identified quantity: P(a > b | user) on held-out pairs of seen users. Criterion: mean
    absolute error of the posterior mean below 0.06 on the probability scale, and the central
    90% intervals cover the truth for at least 80% of the 960 held-out judgements."""
    _, test, _ = population
    truth = true_probability(test)
    p = pal_users.preference_probability(seen_fit, test)
    mae = float(np.mean(np.abs(p.mean(("chain", "draw")).values - truth)))
    lo, hi = p.quantile([0.05, 0.95], dim=("chain", "draw")).values
    cover = float(np.mean((lo <= truth) & (truth <= hi)))
    assert mae < 0.06, mae
    assert cover >= 0.8, cover


def test_user_agreement_is_recovered(seen_fit, population):
    """Identified quantity: user-by-user agreement over the observed pairs. Criterion: the
    correlation of posterior-mean and true agreement over all user pairs exceeds 0.9."""
    train, _, _ = population
    est = pal_users.agreement(seen_fit, train, n_draws=60)
    A, B = train.options()
    _, keep = np.unique(np.hstack([A, B]), axis=0, return_index=True)
    truth = train.truth
    ids = np.asarray(est["annotator"].values, dtype=int)
    p = np.stack([expit(ref.pal_distance_log_odds(A[keep], B[keep], truth["ideal"][i][None],
                                                  truth["M"])) for i in ids])
    true_agree = (p @ p.T + (1 - p) @ (1 - p).T) / len(keep)
    iu = np.triu_indices(len(ids), 1)
    r = np.corrcoef(est.values[iu], true_agree[iu])[0, 1]
    print(f"user-agreement correlation {r:.3f} over {iu[0].size} user pairs")
    assert r > 0.9, r


def test_pal_predicts_heterogeneous_users_better_than_aggregate_bt(seen_fit, population):
    """Criterion: on held-out judgements of seen users, PAL's accuracy exceeds the aggregate
    Bradley-Terry model's (fit to the same training data) by more than three binomial standard
    errors of the difference (paired judgements, conservative independent-sample SE)."""
    train, test, _ = population
    table = pal_users.accuracy(seen_fit, test)
    agg = ps.fit("aggregate", train, seed=2, **SAMPLER)
    assert not ps.diagnostics.failed(agg), ps.diagnostics.failed(agg)
    p_agg = expit(test.design() @ agg.posterior["theta"].mean(("chain", "draw")).values)
    y = test.frame["y"].to_numpy()
    acc_agg = float(np.mean((p_agg > 0.5) == (y == 1)))
    acc_pal = float(table.loc[table.setting == "seen", "accuracy"].iloc[0])
    se = np.sqrt((acc_pal * (1 - acc_pal) + acc_agg * (1 - acc_agg)) / len(y))
    assert acc_pal - acc_agg > 3 * se, (acc_pal, acc_agg, se)


def test_new_user_fit_layout(seen_fit, population):
    """A short new-user fit (the few-shot test judges its statistics): a weight vector on the
    simplex per new user, ``n_draws`` seen draws carried over evenly thinned, each draw paired
    with one of them, and a log likelihood per new user."""
    _, _, new = population
    n_draws = 3
    idata = pal_users.fit_new_users(seen_fit, new, n_draws=n_draws, chains=1, draws=30,
                                    warmup=30, seed=4, backend="pystan", check=False)
    post = _arviz.group(idata, "posterior")
    assert post["w"].dims[2:] == ("annotator", "group")
    assert list(post["annotator"].values) == list(new.annotator_levels)
    assert post.sizes["group"] == seen_fit.posterior.sizes["group"]
    np.testing.assert_allclose(post["w"].sum("group"), 1.0, rtol=1e-10)
    total = seen_fit.posterior.sizes["chain"] * seen_fit.posterior.sizes["draw"]
    np.testing.assert_array_equal(_arviz.group(idata, "constant_data")["seen_sample"],
                                  np.linspace(0, total - 1, n_draws).round())
    assert np.isin(post["seen_draw"].values, np.arange(1, n_draws + 1)).all()
    log_lik = _arviz.group(idata, "log_likelihood")["y"]
    assert log_lik.dims[2:] == ("annotator",)
    assert log_lik.sizes["annotator"] == len(new.annotator_levels)
    assert (log_lik.values < 0).all()


def test_few_shot_accuracy_increases_with_shots(seen_fit, population):
    """PAL section 3.3.1 / Fig. 2d. Criteria, on the same held-out judgements of 24 unseen
    users: (1) 20-shot accuracy exceeds both zero-shot and 1-shot accuracy by more than two
    standard errors of the difference; (2) 20-shot accuracy is within 0.05 of seen accuracy
    (localisation from 20 judgements is nearly as good as from 30). The new-user fits (4 x 2000
    draws, 20 carried-over posterior draws of the shared parameters) must pass the package's
    diagnostics."""
    _, test, new = population
    # 2000 draws per chain: the diagnostics check 24 users' weights at four shot counts, and
    # at 1000 draws R-hat's own noise took one of them to 1.011
    table = converged(pal_users.accuracy, seen_fit, test, new, shots=(0, 1, 5, 20), n_draws=20,
                      seed=5, **{**SAMPLER, "draws": 2000})
    assert list(table["setting"]) == ["seen", "unseen", "unseen", "unseen", "unseen"]
    print(table.to_string())
    acc = dict(zip(table["shots"].fillna(-1), table["accuracy"], strict=True))
    se = dict(zip(table["shots"].fillna(-1), table["accuracy_se"], strict=True))
    for low in (0, 1):
        assert acc[20] - acc[low] > 2 * np.hypot(se[20], se[low]), table
    assert acc[20] > acc[-1] - 0.05, table
    assert (table["judgements"].iloc[1:] == 24 * 30).all()


def _synthetic_posteriors(seen: ps.Comparisons, new: ps.Comparisons, chains: int, draws: int,
                          K: int = 2, n_carried: int = 7):
    """A PAL-shaped seen-user posterior and a :func:`pal_users.fit_new_users`-shaped new-user
    posterior, drawn at random (no Stan), with the package's dims and coords."""
    rng = np.random.default_rng(11)
    attrs, D = list(seen.attributes), len(seen.attributes)
    L = rng.normal(size=(chains, draws, D, D))
    theta = rng.normal(size=(chains, draws, K, D))
    w = rng.dirichlet(np.ones(K), size=(chains, draws, len(seen.annotator_levels)))
    base = {"chain": np.arange(chains), "draw": np.arange(draws)}
    posterior = xr.Dataset(
        {"M": (("chain", "draw", "attribute", "attribute_other"), L @ L.swapaxes(2, 3)),
         "theta": (("chain", "draw", "group", "attribute"), theta),
         "beta": (("chain", "draw", "annotator", "attribute"),
                  np.einsum("cdik,cdkp->cdip", w, theta)),
         "gamma": (("chain", "draw"), rng.normal(size=(chains, draws)))},
        coords={**base, "attribute": attrs, "attribute_other": attrs, "group": np.arange(K),
                "annotator": list(seen.annotator_levels)})
    J = len(new.annotator_levels)
    new_post = xr.Dataset(
        {"w": (("chain", "draw", "annotator", "group"),
               rng.dirichlet(np.ones(K), size=(chains, draws, J))),
         # floats, as some engines return Stan's integers
         "seen_draw": (("chain", "draw", "annotator"),
                       rng.integers(1, n_carried + 1, size=(chains, draws, J)).astype(float))},
        coords={**base, "annotator": list(new.annotator_levels), "group": np.arange(K)})
    carried = np.sort(rng.choice(chains * draws, n_carried, replace=False))
    return (_arviz.make_idata({"posterior": posterior}),
            _arviz.make_idata({"posterior": new_post,
                               "constant_data": xr.Dataset({"seen_sample": ("carried", carried)})}))


def _reference_probability(post: xr.Dataset, comps: ps.Comparisons, users: xr.Dataset | None = None,
                           carried: np.ndarray | None = None) -> np.ndarray:
    """P(a > b) draw by draw with :func:`pal.log_odds`, (chain, draw, comparison)."""
    A, B = comps.options()
    order = comps.order_sign()
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    ann = comps.frame["annotator"].to_numpy()
    out = np.empty((chains, draws, len(A)))
    for c in range(chains):
        for d in range(draws):
            if users is None:
                code = pd.Index(post["annotator"].values).get_indexer(ann)
                M, beta = post["M"].values[c, d], post["beta"].values[c, d][code]
                gamma = post["gamma"].values[c, d]
                out[c, d] = expit(pal.log_odds(M, beta, A, B) + gamma * order)
                continue
            code = pd.Index(users["annotator"].values).get_indexer(ann)
            flat = carried[users["seen_draw"].values[c, d].astype(int) - 1]  # per new user
            sc, sd = np.divmod(flat, draws)
            for n, j in enumerate(code):
                M = post["M"].values[sc[j], sd[j]]
                beta = users["w"].values[c, d, j] @ post["theta"].values[sc[j], sd[j]]
                out[c, d, n] = expit(pal.log_odds(M, beta[None], A[n:n + 1], B[n:n + 1])[0]
                                     + post["gamma"].values[sc[j], sd[j]] * order[n])
    return out


def test_predictions_match_a_draw_by_draw_reference():
    """Seen-user, new-user and zero-shot probabilities equal a draw-by-draw evaluation of
    :func:`pal.log_odds` plus the position effect (to 1e-12), with blocks of draws forced small
    so that several blocks are joined."""
    comps = pal.simulate(n_annotators=12, judgements=6, seed=4)
    # a recorded presentation order, so the position effect enters too
    comps = dataclasses.replace(comps, frame=comps.frame.assign(order=np.arange(comps.n) % 2))
    seen, new = comps.subset(np.flatnonzero(comps.frame["annotator"] < 8)), \
        comps.subset(np.flatnonzero(comps.frame["annotator"] >= 8))
    fit, fit_new = _synthetic_posteriors(seen, new, chains=2, draws=9)
    post = _arviz.group(fit, "posterior")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pal_users, "_BLOCK_VALUES", 50)
        p_seen = pal_users.preference_probability(fit, seen)
        p_new = pal_users.preference_probability(fit, new, fit_new)
        p_zero = pal_users._zero_shot(fit, new)
    np.testing.assert_allclose(p_seen.values, _reference_probability(post, seen), atol=1e-12)
    carried = _arviz.group(fit_new, "constant_data")["seen_sample"].values
    np.testing.assert_allclose(
        p_new.values, _reference_probability(post, new, _arviz.group(fit_new, "posterior"),
                                             carried), atol=1e-12)
    # zero-shot: every seen user's probability for each new judgement, averaged over users
    each = [_reference_probability(post, dataclasses.replace(
        new, frame=new.frame.assign(annotator=a))) for a in seen.annotator_levels]
    np.testing.assert_allclose(p_zero.values, np.mean(each, axis=0), atol=1e-12)


def test_zero_shot_predictions_are_computed_a_block_of_draws_at_a_time():
    """Zero-shot prediction averages over every seen user, so all at once it would hold draws x
    users x judgements values (here 2 x 400 x 200 x 300 floats, 384 MB). Criterion: with blocks
    of 2**18 values, the peak of traced allocations stays under 48 MB, an eighth of that."""
    comps = pal.simulate(n_annotators=500, judgements=3, seed=4)
    seen = comps.subset(np.flatnonzero(comps.frame["annotator"] < 200))
    new = comps.subset(np.flatnonzero(comps.frame["annotator"] >= 400))
    fit, _ = _synthetic_posteriors(seen, new, chains=2, draws=400)
    assert new.n * 2 * 400 * 200 * 8 == 384_000_000
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pal_users, "_BLOCK_VALUES", 2**18)
        tracemalloc.start()
        try:
            p = pal_users._zero_shot(fit, new)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert p.shape == (2, 400, new.n)
    assert peak < 48e6, f"{peak / 1e6:.0f} MB"


def test_new_users_must_be_unseen_and_have_enough_judgements(seen_fit, population):
    train, _, new = population
    with pytest.raises(PluralstanError, match="was seen in the fit"):
        pal_users.fit_new_users(seen_fit, train.subset(np.arange(10)))
    with pytest.raises(PluralstanError, match="more than max"):
        pal_users.accuracy(seen_fit, None, new, shots=(1, 50))
    with pytest.raises(PluralstanError, match="n_draws"):
        pal_users.fit_new_users(seen_fit, new, n_draws=0)

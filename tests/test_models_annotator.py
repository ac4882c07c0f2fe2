"""Tests of the annotator-level latent-type model (``stan/annotator_bt.stan``).

Recovery criterion (stated once, used below): the fits come back relabelled (the default of
``ps.fit``); chains are then aligned to the true labels one chain at a time, by the permutation
that best matches the chain's posterior mean of theta to the truth
(:func:`pluralstan.relabel.match_components`, least squares); this is the test's scoring rule,
not a relabelling method.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy.sparse import csr_matrix
from scipy.special import logsumexp

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.errors import DiagnosticWarning, PluralstanError
from pluralstan.models import annotator
from pluralstan.models.annotator import distinct_rows
from pluralstan.relabel import match_components

from . import reference as ref

#: Sampler settings of the recovery fits: long enough for every one of them to pass the
#: package's own diagnostics (R-hat, bulk and tail ESS >= 400, also of the label-invariant lp).
FIT = {"chains": 4, "draws": 500, "warmup": 500, "backend": "pystan"}


# ---------------------------------------------------------------------------- helpers
def judgements_of(comps: ps.Comparisons) -> ref.Judgements:
    """The judgements as plain arrays for the reference likelihood, annotators in the fit's
    order (first seen)."""
    return ref.judgements(comps.to_frame(), list(comps.attributes))


def align_chains(idata: az.InferenceData, theta_true: np.ndarray) -> dict[str, np.ndarray]:
    """Per-chain permutation of the group axis onto the true labels (see module docstring).

    Returns theta ``(chain, draw, K, P)``, pi ``(chain, draw, K)``, membership
    ``(chain, draw, I, K)`` in the true labelling, and ``perm`` ``(chain, K)`` with
    ``perm[c, true_k]`` = the fitted group that chain c uses for true group k.
    """
    post = idata.posterior
    theta = post["theta"].transpose("chain", "draw", "group", "attribute").values
    pi = post["pi"].transpose("chain", "draw", "group").values
    memb = post["membership"].transpose("chain", "draw", "annotator", "group").values
    perm = np.array([match_components(theta[c].mean(axis=0), theta_true)
                     for c in range(theta.shape[0])])
    take = np.arange(theta.shape[0])[:, None]
    return {
        "theta": theta[take, :, perm].transpose(0, 2, 1, 3),
        "pi": pi.transpose(0, 2, 1)[take, perm].transpose(0, 2, 1),
        "membership": memb.transpose(0, 3, 1, 2)[take, perm].transpose(0, 2, 3, 1),
        "perm": perm,
    }


def passing_fit(*args, **kwargs) -> az.InferenceData:
    """Fit and require the package's own diagnostics to pass (no warning is silenced)."""
    idata = ps.fit(*args, **kwargs)
    assert not ps.diagnostics.failed(idata), ps.diagnostics.failed(idata)
    return idata


def ties_order_data(seed: int = 3) -> ps.Comparisons:
    """Small mixture data with ties, presentation order and repeated identical judgements."""
    comps = ps.simulate.high_conflict(seed=seed, n_annotators=12, n_pairs=15,
                                      pairs_per_annotator=4)
    frame = comps.to_frame().drop(columns="group")
    rng = np.random.default_rng(seed)
    frame.loc[rng.uniform(size=len(frame)) < 0.2, "y"] = 0.5
    frame["order"] = rng.integers(0, 2, size=len(frame)).astype(float)
    frame = pd.concat([frame, frame.iloc[::3]], ignore_index=True)  # identical repeats
    return ps.Comparisons.from_frame(frame)


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small() -> ps.Comparisons:
    return ps.simulate.high_conflict(seed=1, n_annotators=6, n_pairs=10, pairs_per_annotator=3)


@pytest.mark.parametrize("K", [0, -1, 1.5, "2", True, None])
def test_rejects_bad_K(small, K):
    with pytest.raises(PluralstanError, match="K"):
        annotator.encode(small, K=K)


def test_rejects_more_types_than_annotators(small):
    with pytest.raises(PluralstanError, match=r"K = 7 .* only 6 annotator"):
        ps.fit("annotator", small, K=7)


def test_rejects_bad_identify_and_priors(small):
    with pytest.raises(PluralstanError, match="identify='sorted'"):
        annotator.encode(small, K=2, identify="sorted")
    with pytest.raises(PluralstanError, match="needs identify='ordered'"):
        annotator.encode(small, K=2, ordered_attribute="x2")
    with pytest.raises(PluralstanError, match="'x9' is not an attribute"):
        annotator.encode(small, K=2, identify="ordered", ordered_attribute="x9")
    enc = annotator.encode(small, K=2, identify="ordered", ordered_attribute="x3")
    assert (enc.data["identify"], enc.data["ident_attr"]) == (1, 3)
    with pytest.raises(PluralstanError, match="pi_alpha"):
        annotator.encode(small, K=2, priors={"pi_alpha": [1.0, 0.0]})
    with pytest.raises(PluralstanError, match=r"pi_alpha.*length 2"):
        annotator.encode(small, K=2, priors={"pi_alpha": [1.0, 1.0, 1.0]})
    with pytest.raises(PluralstanError, match="theta_sd"):
        annotator.encode(small, K=2, priors={"theta_sd": -1.0})
    with pytest.raises(PluralstanError, match="unknown prior"):
        annotator.encode(small, K=2, priors={"alpha": 1.0})


def test_rejects_annotator_without_judgements(small):
    table = pd.DataFrame({"age": np.arange(7.0)}, index=pd.Index(range(7), name="annotator"))
    with pytest.raises(PluralstanError, match=r"annotator 6 .* no judgements"):
        ps.Comparisons.from_frame(small.to_frame(), annotators=table)
    # a table that bypassed validation is caught by the encoder, before Stan runs
    sneaky = dataclasses.replace(small, annotators=table)
    with pytest.raises(PluralstanError, match=r"annotator 6 .* no judgements"):
        annotator.encode(sneaky, K=2)


# ---------------------------------------------------------------------------- encoding
def test_cells_sorted_by_annotator_and_sufficient(small):
    enc = annotator.encode(small, K=2)
    ann = enc.data["ann"]
    assert np.all(np.diff(ann) >= 0) and set(ann) == set(range(1, 7))
    assert enc.data["y"].sum() == small.n
    # every judgement maps to a cell of its own annotator with its own design row
    rows = enc.constant["cell_of_row"]
    assert np.array_equal(ann[rows] - 1, small.codes("annotator"))
    assert np.allclose(enc.constant["X"][rows], small.design())
    assert enc.coords["group"].tolist() == [0, 1]
    assert enc.log_lik_dims == {"y": ["annotator"]}


# ---------------------------------------------------------------------------- Stan program
@pytest.mark.parametrize("sparse", [False, True])
def test_cells_share_the_distinct_design_rows(sparse):
    # criterion: every cell's (design row, order) is its distinct row's, exactly; the distinct
    # rows are pairwise different and as many as pandas finds; dense and sparse input agree
    rng = np.random.default_rng(3)
    X = rng.integers(-1, 2, size=(200, 4)).astype(float)
    order = rng.choice([-1.0, 0.0, 1.0], 200)
    first, row = distinct_rows(csr_matrix(X) if sparse else X, order)
    assert np.array_equal(X[first][row], X) and np.array_equal(order[first][row], order)
    keys = pd.DataFrame(np.column_stack([X, order]))
    assert len(first) == len(keys.drop_duplicates()) < len(X)
    assert not keys.iloc[first].duplicated().any()
    if sparse:  # the same partition of the cells as from the dense form
        _, dense_row = distinct_rows(X, order)
        assert len(set(zip(dense_row, row, strict=True))) == len(first)


def test_likelihood_matches_judgement_level_reference():
    """Cells, sparse per-annotator sums and the Davidson/order terms equal a direct sum."""
    comps = ties_order_data()
    idata = ps.fit("annotator", comps, K=2, chains=1, draws=10, warmup=10, seed=2,
                   backend="pystan", check=False)
    post = idata.posterior
    assert {"gamma", "log_nu"} <= set(post.data_vars)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "annotator") and ll.sizes["annotator"] == 12
    j = judgements_of(comps)
    for d in range(3):
        draw = post.isel(chain=0, draw=d)
        lp = ref.type_log_lik(j, draw["theta"].values, float(draw["gamma"]),
                              float(draw["log_nu"])) + np.log(draw["pi"].values)
        np.testing.assert_allclose(ll.isel(chain=0, draw=d).values, logsumexp(lp, axis=1),
                                   rtol=1e-8)
        memb = np.exp(lp - logsumexp(lp, axis=1, keepdims=True))
        np.testing.assert_allclose(draw["membership"].values, memb, rtol=1e-6, atol=1e-12)
    # replicated counts: same shape as y, same number of judgements per cell
    y, y_rep = idata.observed_data["y"], idata.posterior_predictive["y"]
    assert y_rep.shape[2:] == y.shape and y.sizes["outcome"] == 3
    assert np.all(y_rep.sum("outcome") == y.sum("outcome"))


def test_large_data_options_skip_membership_and_replicates():
    """membership=False, replicate=False: the output per draw is the parameters and the
    per-annotator log likelihood (still exact), and the fit's own relabelling falls back to the
    pivot method."""
    comps = ties_order_data()
    idata = ps.fit("annotator", comps, K=2, chains=1, draws=10, warmup=10, seed=2,
                   backend="pystan", check=False, membership=False, replicate=False)
    assert "membership" not in idata.posterior
    assert "posterior_predictive" not in _arviz.groups(idata)
    ll = idata.log_likelihood["y"]
    assert ll.sizes["annotator"] == 12
    draw = idata.posterior.isel(chain=0, draw=0)
    lp = ref.type_log_lik(judgements_of(comps), draw["theta"].values, float(draw["gamma"]),
                          float(draw["log_nu"])) + np.log(draw["pi"].values)
    np.testing.assert_allclose(ll.isel(chain=0, draw=0).values, logsumexp(lp, axis=1),
                               rtol=1e-8)
    assert json.loads(idata.posterior.attrs["relabelling"])["method"] == "pivot"
    assert idata.sample_stats["label_permutation"].dims == ("chain", "draw", "group")

def test_log_lik_can_be_skipped_on_very_large_data():
    """log_lik=False: no log_likelihood group, the same draws as with it (the generated
    quantities take no random numbers without replicates), and LOO says why it cannot run."""
    comps = ties_order_data()
    opts = dict(K=2, chains=1, draws=10, warmup=10, seed=2, backend="pystan", check=False,
                replicate=False)
    with_ll = ps.fit("annotator", comps, **opts)
    without = ps.fit("annotator", comps, log_lik=False, **opts)
    assert "log_likelihood" not in _arviz.groups(without)
    assert "membership" in without.posterior
    np.testing.assert_array_equal(without.posterior["theta"].values,
                                  with_ll.posterior["theta"].values)
    np.testing.assert_array_equal(without.posterior["membership"].values,
                                  with_ll.posterior["membership"].values)
    with pytest.raises(PluralstanError, match="log_lik=False"):
        ps.checks.loo(without, level="annotator")


def test_prior_only_run_draws_types_from_pi():
    """With the likelihood switched off, membership is pi itself (types drawn from the prior),
    and the prior predictive replicates every cell's number of judgements."""
    comps = ties_order_data(seed=4)
    idata = ps.fit("annotator", comps, K=3, chains=1, draws=10, warmup=10, seed=5,
                   backend="pystan", check=False, sample_prior=True)
    prior = idata.prior
    pi = prior["pi"].expand_dims(annotator=prior.sizes["annotator"], axis=2)
    np.testing.assert_allclose(prior["membership"].values, pi.values)
    y = idata.observed_data["y"]
    assert np.all(idata.prior_predictive["y"].sum("outcome") == y.sum("outcome"))


def test_one_type_model_is_the_aggregate_model():
    """With K = 1 the annotator program's log density equals the aggregate program's up to a
    constant at every point (Davidson ties and a position effect included), and
    :func:`annotator.as_aggregate` reads the aggregate fit off a K = 1 fit (the audit fits the
    two as one)."""
    from pluralstan.engine import get_engine
    from pluralstan.models import get_model

    comps = ties_order_data()
    engine = get_engine("pystan")
    # theta (the one type's lead coordinate, then the rest), gamma, log nu in both programs
    points = np.random.default_rng(0).normal(size=(6, len(comps.attributes) + 2))
    values, grads = {}, {}
    for name, options in (("aggregate", {}), ("annotator", {"K": 1})):
        spec = get_model(name)
        enc = spec.encode(comps, whiten=False, replicate=False, **options)
        # each density is used before the next program's module is loaded: httpstan loads
        # every module under one name, and a module loaded again (here, after this file's
        # fits) can take over the calls of one loaded between
        density = engine.log_density(spec.program, enc.data)
        assert density.dims == points.shape[1]
        values[name] = np.array([density.log_prob(x) for x in points])
        grads[name] = density.grad(points[0])
    gaps = values["aggregate"] - values["annotator"]
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-8)
    np.testing.assert_allclose(grads["aggregate"], grads["annotator"], rtol=1e-10)

    fit = ps.fit("annotator", comps, K=1, chains=1, draws=20, warmup=20, seed=2,
                 backend="pystan", check=False, replicate=False)
    derived = annotator.as_aggregate(fit)
    post = derived.posterior
    assert post.attrs["model"] == "aggregate" and "K = 1" in post.attrs["derived_from"]
    assert set(post.data_vars) == {"theta", "gamma", "log_nu"}
    np.testing.assert_array_equal(post["theta"].values,
                                  fit.posterior["theta"].isel(group=0).values)
    assert derived.log_likelihood["y"].dims == ("chain", "draw", "annotator")
    with pytest.raises(PluralstanError, match="K = 1 annotator fit"):
        annotator.as_aggregate(ps.fit("annotator", comps, K=2, chains=1, draws=5, warmup=5,
                                      seed=2, backend="pystan", check=False))


# ---------------------------------------------------------------------------- recovery
@pytest.fixture(scope="module")
def by_m() -> dict[int, tuple[ps.Comparisons, az.InferenceData]]:
    """One population (Table 1 design, 100 annotators), m = 1, 2, 5, 20 judgements each.

    Twice :data:`FIT`'s draws: with one or two judgements per annotator the types are weakly
    informed, the chains mix slowly, and R-hat from 500 draws per chain sits at its bound (one
    coefficient just above it at m = 2 with today's dependency versions)."""
    out = {}
    for m in (1, 2, 5, 20):
        comps = ps.simulate.high_conflict(seed=11, pairs_per_annotator=m)
        out[m] = comps, passing_fit("annotator", comps, K=2, seed=11,
                                    **{**FIT, "draws": 1000})
    return out


def test_recovery_of_theta_and_pi(by_m):
    """Criterion: over three data sets (m = 20), at least 27 of the 36 true values of theta and
    pi lie inside the central 90% posterior intervals (expected 32.4) and every |z-score|
    (posterior mean - truth) / posterior sd is below 3.5, after per-chain label alignment;
    the ``identify="ordered"`` fit keeps theta[:, 0] increasing in every draw (its constraint
    labels the types, so the fit does not relabel it), and the relabelled fits' chains share
    one alignment to the truth (relabelling made their labels agree).

    The ordering constraint has a local mode where the types' theta[:, 0] are pinned together
    (the other attributes in the opposite labelling); with this seed one of the four chains
    starts in it. The fit must detect that (a "modes stacked" DiagnosticWarning), stack the
    modes with more than 0.9 of the weight on the best one, and pass every other check (each
    mode's chains on their own: 4 x 2000 draws, so the one-chain mode has ESS >= 400 too);
    the criterion above is scored on the stacked draws."""
    comps = ps.simulate.high_conflict(seed=12, pairs_per_annotator=20)
    runs = [by_m[20], (comps, passing_fit("annotator", comps, K=2, seed=12, **FIT))]
    comps = ps.simulate.high_conflict(seed=13, pairs_per_annotator=20)
    with pytest.warns(DiagnosticWarning, match="modes stacked") as record:
        ordered_fit = passing_fit("annotator", comps, K=2, seed=13, identify="ordered",
                                  **(FIT | {"draws": 2000, "warmup": 1000}))
    diagnostic = [str(w.message) for w in record if issubclass(w.category, DiagnosticWarning)]
    assert len(diagnostic) == 1, diagnostic
    weights = [m["weight"] for m in json.loads(ordered_fit.posterior.attrs["modes"])["modes"]]
    assert max(weights) > 0.9, weights
    runs.append((comps, ordered_fit))
    inside, zs = 0, []
    for comps, idata in runs:
        al = align_chains(idata, comps.truth["theta"])
        for name in ("theta", "pi"):
            draws = al[name].reshape(-1, *al[name].shape[2:])
            lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
            truth = comps.truth[name]
            inside += int(((lo <= truth) & (truth <= hi)).sum())
            zs.append(np.abs(draws.mean(0) - truth) / draws.std(0))
    assert inside >= 27, inside
    assert max(z.max() for z in zs) < 3.5
    ordered = runs[2][1].posterior["theta"].isel(attribute=0)
    assert bool((ordered.diff("group") > 0).all())
    assert "relabelling" not in runs[2][1].posterior.attrs
    for comps, idata in runs[:2]:
        assert "relabelling" in idata.posterior.attrs
        perm = align_chains(idata, comps.truth["theta"])["perm"]
        assert (perm == perm[0]).all(), perm


def test_recovery_improves_with_judgements_per_annotator(by_m):
    """Criterion: with the same population, going from m = 1, 2 to m = 5 to m = 20
    (a) the mean posterior sd of theta shrinks: sd(20) < sd(5) < min(sd(1), sd(2));
    (b) membership accuracy (share of annotators whose posterior mean membership puts more
    than 1/2 on their true type) rises: acc(20) > acc(5) > max(acc(1), acc(2)), acc(20) >= 0.95;
    (c) the error of the posterior mean of theta falls: err(20) < err(5) < max(err(1), err(2))."""
    sd, acc, err = {}, {}, {}
    for m, (comps, idata) in by_m.items():
        al = align_chains(idata, comps.truth["theta"])
        theta = al["theta"].reshape(-1, *al["theta"].shape[2:])
        sd[m] = float(theta.std(0).mean())
        err[m] = float(np.sqrt(((theta.mean(0) - comps.truth["theta"]) ** 2).mean()))
        memb = al["membership"].reshape(-1, *al["membership"].shape[2:]).mean(0)
        acc[m] = float((memb[np.arange(memb.shape[0]), comps.truth["z"]] > 0.5).mean())
    summary = f"sd={sd}, acc={acc}, err={err}"
    assert sd[20] < sd[5] < min(sd[1], sd[2]), summary
    assert acc[20] > acc[5] > max(acc[1], acc[2]) and acc[20] >= 0.95, summary
    assert err[20] < err[5] < max(err[1], err[2]), summary


def test_leave_one_annotator_out_loo(by_m):
    """The log-likelihood group has one value per annotator, so PSIS-LOO leaves out annotators."""
    _, idata = by_m[5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loo = az.loo(idata, pointwise=True)
    assert loo.n_data_points == 100
    assert np.isfinite(_arviz.elpd(loo)[0])


def test_concentrated_mixing_prior_is_honoured():
    """A sharp Dirichlet (pi_alpha = 1000 * (0.3, 0.7)) dominates 100 annotators of two equally
    common types (true pi = (0.5, 0.5)). Its asymmetry makes the labels matter: which type
    holds 30% is a genuine second mode that no label permutation maps onto the first, and with
    this seed the four chains fall into both. Criterion: the fit detects it (one
    DiagnosticWarning, "modes stacked") and passes every other check, each mode's chains judged
    on their own (4 x 1000 draws); no divergences; the stacked posterior mean of pi sorted within
    each draw is within 0.05 of (0.3, 0.7) and its sd below 0.03."""
    comps = ps.simulate.high_conflict(seed=21, pairs_per_annotator=10)
    with pytest.warns(DiagnosticWarning, match="modes stacked") as record:
        idata = passing_fit("annotator", comps, K=2, seed=21,
                            priors={"pi_alpha": 1000 * np.array([0.3, 0.7])},
                            **(FIT | {"draws": 1000, "warmup": 1000}))
    diagnostic = [str(w.message) for w in record if issubclass(w.category, DiagnosticWarning)]
    assert len(diagnostic) == 1, diagnostic
    assert ps.diagnostics.recorded(idata)["divergences"] == 0
    # the prior labels the types, so the draws are kept as sampled, and the record says why
    assert any("not exchangeable across types (pi_alpha = [300.0, 700.0])" in n
               for n in ps.diagnostics.notes(idata))
    # sorted within each draw: the modes differ in which type holds 30%
    pi = np.sort(idata.posterior["pi"].transpose(..., "group").values.reshape(-1, 2), axis=1)
    np.testing.assert_allclose(pi.mean(0), [0.3, 0.7], atol=0.05)
    assert float(pi.std(0).max()) < 0.03


# ---------------------------------------------------------------------------- warm starts
def test_scales_only_reparametrise():
    """``scales`` divide the free coordinates on the sampler's space (the shares' log ratios
    first, then theta's lead coordinate and the rest column by column, then the position and
    tie parameters: the layout the program declares) and leave the density unchanged: the log
    density at the same parameters differs by the scaling's log Jacobian alone."""
    from pluralstan.engine import get_engine

    comps = ties_order_data()
    rng = np.random.default_rng(0)
    K = 3
    plain = annotator.encode(comps, K=K)
    P = plain.data["P"]
    scales = {"pi_coord": rng.uniform(0.1, 3.0, K - 1), "theta": rng.uniform(0.1, 3.0, (K, P)),
              "gamma": 0.3, "log_nu": 2.5}
    scaled = annotator.encode(comps, K=K, scales=scales)
    program = annotator.SPEC.program
    one, other = (get_engine("pystan").log_density(program, enc.data) for enc in (plain, scaled))
    params = {"pi_coord": rng.normal(size=K - 1), "theta_lead_free": rng.normal(size=K),
              "theta_rest": rng.normal(size=(K, P - 1)), "gamma": [0.2], "log_nu": [-0.5]}
    x1, xs = one.unconstrain(params), other.unconstrain(params)
    every = np.concatenate([scales["pi_coord"], scales["theta"][:, 0],
                            scales["theta"][:, 1:].ravel(order="F"),
                            [scales["gamma"], scales["log_nu"]]])
    assert x1.shape == every.shape
    np.testing.assert_allclose(xs, x1 / every)
    assert other.log_prob(xs) - one.log_prob(x1) == pytest.approx(np.log(every).sum(), abs=1e-8)


def test_share_coordinates_are_the_programs():
    """:func:`annotator.share_coordinates` inverts the program's map ``pi = softmax(V
    pi_coord)`` (warm starts pass them as inits), and the map's log Jacobian in the program
    makes ``pi`` Dirichlet: the log density of ``pi_coord`` in a prior-only run differs from
    the Dirichlet's log density of ``pi`` plus ``sum(log pi)`` by one constant."""
    from scipy.stats import dirichlet

    from pluralstan.engine import get_engine

    comps = ties_order_data()
    K, alpha = 4, np.array([0.8, 1.5, 2.0, 3.0])
    enc = annotator.encode(comps, K=K, priors={"pi_alpha": alpha})
    data = {**enc.data, "prior_only": 1}
    density = get_engine("pystan").log_density(annotator.SPEC.program, data)
    rng = np.random.default_rng(1)
    P = data["P"]
    gaps = []
    for pi in rng.dirichlet(np.ones(K), size=5):
        coords = annotator.share_coordinates(pi)
        params = {"pi_coord": coords, "theta_lead_free": np.zeros(K),
                  "theta_rest": np.zeros((K, P - 1)), "gamma": [0.0], "log_nu": [0.0]}
        x = density.unconstrain(params)
        np.testing.assert_allclose(density.constrain(x, transformed=True)["pi"], pi, rtol=1e-10)
        gaps.append(density.log_prob(x) - dirichlet.logpdf(pi, alpha) - np.log(pi).sum())
    np.testing.assert_allclose(gaps, gaps[0], rtol=0, atol=1e-8)


def test_loo_mixture_is_checked_and_recorded(small):
    # the weights reach the program as data, the fit is marked as not the posterior, and bad
    # weights are refused before any Stan code runs, naming the annotator
    levels = pd.Index(small.annotator_levels).tolist()
    enc = annotator.encode(small, K=2, loo_mixture=np.arange(len(levels), dtype=float))
    assert enc.data["loo_mixture"] == 1
    np.testing.assert_array_equal(enc.data["loo_log_weight"], np.arange(len(levels)))
    assert enc.extra_attrs["loo_mixture"] == 1
    plain = annotator.encode(small, K=2)
    assert plain.data["loo_mixture"] == 0 and plain.data["loo_log_weight"].shape == (0,)
    assert "loo_mixture" not in plain.extra_attrs
    with pytest.raises(PluralstanError, match=rf"one log weight per annotator \({len(levels)}\)"):
        annotator.encode(small, K=2, loo_mixture=np.zeros(len(levels) - 1))
    bad = np.zeros(len(levels))
    bad[3] = np.nan
    with pytest.raises(PluralstanError, match=f"annotator {levels[3]!r} has nan"):
        annotator.encode(small, K=2, loo_mixture=bad)
    with pytest.raises(PluralstanError, match="loo_mixture and held_out do not go together"):
        annotator.encode(small, K=2, loo_mixture=np.zeros(len(levels)), held_out=levels[:1])


def test_scales_are_checked(small):
    with pytest.raises(PluralstanError, match=r"scales\['theta'\] must hold positive finite "
                                              r"numbers of shape \(2, 5\), got shape \(2, 4\)"):
        annotator.encode(small, K=2, scales={"theta": np.ones((2, 4))})
    with pytest.raises(PluralstanError, match=r"scales\['pi_coord'\] must hold positive"):
        annotator.encode(small, K=2, scales={"pi_coord": [-1.0]})
    with pytest.raises(PluralstanError, match="scales has no parameter 'pi'"):
        annotator.encode(small, K=2, scales={"pi": [1.0, 1.0]})
    with pytest.raises(PluralstanError, match="scales of theta need exchangeable types"):
        annotator.encode(small, K=2, identify="ordered", scales={"theta": np.ones((2, 5))})


def test_a_warm_started_refit_samples_the_refit_posterior_as_well_as_a_fresh_fit():
    """A K-fold refit started from the full fit (``warm_start``: its draws, posterior scales and
    step size, 19 warm-up iterations that adapt the step size alone) against the same refit
    from Stan's inits with :data:`FIT`'s 500 warm-up iterations, same chains and draws, on two
    types of unequal shares (0.9 and 0.1 of 200 annotators), whose coordinates' posterior
    scales differ by a factor of about three between the types.

    Criterion: the warm-started refit passes the package's diagnostics with no divergence; its
    held-out log predictive density (the quantity K-fold cross-validation uses) agrees with the
    fresh refit's within 3 combined Monte Carlo standard errors, and each type's theta within 4
    (types matched by their posterior means); it takes at most 1.5 times the fresh refit's
    gradients per draw, where the same start with unit scales takes more than 1.5 times its
    own: the scales stand in for the adapted metric.

    The refits' seed is 13: with 12, the fresh reference refit missed the R-hat bound (1.014)
    once the shares became log-ratio coordinates, while seeds 13 to 15 pass every check."""
    from pluralstan.checks.compare import annotator_folds, held_out_lpd
    from pluralstan.simulate import HIGH_CONFLICT_THETA

    comps = ps.simulate.mixture(HIGH_CONFLICT_THETA, [0.9, 0.1], n_pairs=200,
                                n_annotators=200, pairs_per_annotator=20, seed=11)
    full = passing_fit("annotator", comps, K=2, seed=11, **{**FIT, "draws": 1000})
    part = annotator_folds(comps, 5, 1)[0]
    start = annotator.warm_start(full, annotator.encode(comps, K=2).data, chains=4)
    assert start["warmup"] == annotator.WARM_START_WARMUP == 19
    warm = passing_fit("annotator", comps, K=2, held_out=part, seed=13, **{**FIT, **start})
    fresh = passing_fit("annotator", comps, K=2, held_out=part, seed=13, **FIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticWarning)
        unit = ps.fit("annotator", comps, K=2, held_out=part, seed=13,
                      **{**FIT, **start, "scales": None})
    assert warm.posterior.attrs["warmup"] == 19
    assert int(warm.sample_stats["diverging"].sum()) == 0
    (lpd_w, mc_w), (lpd_f, mc_f) = (
        held_out_lpd(fit.log_likelihood["y"].sel(annotator=part)) for fit in (warm, fresh))
    combined = np.sqrt(np.sum(mc_w ** 2) + np.sum(mc_f ** 2))
    assert abs(lpd_w.sum() - lpd_f.sum()) < 3 * combined
    theta_w, theta_f = (fit.posterior["theta"] for fit in (warm, fresh))
    perm = match_components(theta_f.mean(("chain", "draw")).to_numpy(),
                            theta_w.mean(("chain", "draw")).to_numpy())
    theta_f = theta_f.isel(group=perm).assign_coords(group=theta_w["group"])
    mcse = np.hypot(az.mcse(theta_w.to_dataset())["theta"], az.mcse(theta_f.to_dataset())["theta"])
    gap = abs(theta_w.mean(("chain", "draw")) - theta_f.mean(("chain", "draw")))
    assert float((gap / mcse).max()) < 4
    steps = {name: float(fit.sample_stats["n_steps"].mean())
             for name, fit in (("warm", warm), ("fresh", fresh), ("unit", unit))}
    assert steps["warm"] <= 1.5 * steps["fresh"] and steps["unit"] > 1.5 * steps["warm"], steps

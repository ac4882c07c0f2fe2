"""The labeled and unlabeled K-mixture Bradley-Terry models: encoding, bad input, recovery,
non-identification and relabelling on real fits.

Fits are small (2-4 chains, 300 draws); each recovery or contraction test states its criterion.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan.errors import PluralstanError
from pluralstan.models import labeled, unlabeled
from pluralstan.relabel import label_switching_report, relabel

from . import reference as ref
from .strict import converged

SMALL = {"chains": 2, "draws": 300, "warmup": 300}


def _fit(*args, **kwargs):
    """Fit quietly: diagnostics are recorded on the fit and asserted on where it matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        return ps.fit(*args, **kwargs)


#: The package's default run length, for the recovery fits, which must pass its diagnostics.
#: Partial pooling over two groups is a funnel: at the default adapt_delta = 0.8 a few of the
#: 4,000 transitions diverge, so the hierarchical fits take the usual remedy, smaller steps.
CONVERGED = {"chains": 4, "draws": 1000, "warmup": 1000}


def _labeled_data(seed: int, **kwargs) -> ps.Comparisons:
    """The position paper's high-conflict population, labels observed (a small design)."""
    opts = {"n_pairs": 60, "n_annotators": 40, "pairs_per_annotator": 30} | kwargs
    return ps.simulate.high_conflict(seed=seed, **opts)


def _aggregate_only(comps: ps.Comparisons) -> ps.Comparisons:
    """Drop labels and annotator ids: the aggregate pairwise data of Proposition 1."""
    return ps.Comparisons.from_frame(comps.to_frame().drop(columns=["group", "annotator"]))


def _tiny_frame(**extra) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({
        "annotator": np.repeat(np.arange(8), 5),
        "group": np.repeat(["u", "v"], 20),
        "y": rng.choice([0.0, 1.0], size=n),
        "a_x1": rng.uniform(size=n), "b_x1": rng.uniform(size=n),
        "a_x2": rng.uniform(size=n), "b_x2": rng.uniform(size=n),
    })
    return frame.assign(**extra)


# ---------------------------------------------------------------------- encoding (no Stan)
def test_labeled_encoding_counts_annotators_and_splits_cells_by_group() -> None:
    comps = ps.Comparisons.from_frame(_tiny_frame())
    enc = labeled.encode(comps)
    assert enc.coords["group"] == ["u", "v"]
    # 8 annotators, 4 per label: pi is informed by distinct annotators, not by judgements
    np.testing.assert_array_equal(enc.data["n_annotators"], [4, 4])
    assert enc.data["y"].sum() == comps.n
    # every cell belongs to one group and carries that group's code (1-based in Stan)
    cells = comps.cells(by=["group"])
    np.testing.assert_array_equal(enc.data["group"], cells.group + 1)
    assert enc.data["partial"] == 1 and labeled.encode(comps, pooling="none").data["partial"] == 0


def test_partial_pooling_defaults_to_the_conditional_form(monkeypatch) -> None:
    """centring=None: the conditional parametrisation (pilot information and linear term per
    group, weights unused) with each group's whole information up to
    CONDITIONAL_MAX_ATTRIBUTES attributes, with its diagonal plus a low-rank correction
    beyond."""
    from pluralstan.audit import labeled_options

    frame = _tiny_frame(group=np.repeat(["u", "v", "w", "x"], 10))
    comps = ps.Comparisons.from_frame(frame)
    enc = labeled.encode(comps)
    assert enc.data["conditional"] == 1
    assert np.shape(enc.data["pilot_info"]) == (4, 2, 2)
    assert np.shape(enc.data["pilot_score"]) == (4, 2)
    assert not enc.data["centring"].any()
    assert labeled_options(comps, None) == {"pooling": "partial"}
    assert labeled.encode(comps, pooling="none").data["conditional"] == 0
    assert labeled.encode(comps, centring="auto").data["conditional"] == 0
    monkeypatch.setattr(labeled, "CONDITIONAL_MAX_ATTRIBUTES", 1)
    low_rank = labeled.encode(comps).data
    assert low_rank["conditional"] == 2 and np.shape(low_rank["pilot_info"]) == (0, 2, 2)
    # rank min(LOW_RANK, P): on two attributes the correction is the whole information
    assert low_rank["pilot_rank"] == 2
    np.testing.assert_allclose(
        [np.diag(d) + B @ np.diag(e) @ B.T for d, B, e in zip(
            low_rank["pilot_info_diagonal"], low_rank["pilot_info_basis"],
            low_rank["pilot_info_eigen"], strict=True)],
        enc.data["pilot_info"], atol=1e-10)
    np.testing.assert_allclose(low_rank["pilot_score"], enc.data["pilot_score"])


def test_low_rank_information_keeps_the_poorly_informed_directions() -> None:
    """A comparison graph coded against a reference item: items 1..P each compared 50 times
    with one another and 2 times with the reference. Its diagonal scale leaves one direction
    (every item against the reference) far less informed than the rest; rank 1 keeps exactly
    that direction, so the approximation's eigenvalues in the whole information's scale are
    all close to 1 where the diagonal's are not; rank P - 1 plus the diagonal is exact; an
    item never compared keeps a zero row."""
    P = 6
    W = np.full((P + 1, P + 1), 50.0)
    W[0, :] = W[:, 0] = 2.0
    np.fill_diagonal(W, 0.0)
    laplacian = np.diag(W.sum(axis=1)) - W
    info = np.zeros((P + 1, P + 1))
    info[:P, :P] = laplacian[1:, 1:]               # reference removed; attribute P never seen

    def spread(approx: np.ndarray) -> float:
        seen = slice(0, P)
        vals = np.linalg.eigvals(np.linalg.solve(approx[seen, seen], info[seen, seen])).real
        return vals.max() / vals.min()

    d, B, e = labeled.low_rank_information(info, 1)
    assert d[P] == 0 and not B[P].any() and B.shape == (P + 1, 1)
    assert spread(np.diag(d)) > 20
    assert spread(np.diag(d) + B @ np.diag(e) @ B.T) < 1.5
    np.testing.assert_allclose(np.abs(B[:P, 0]) / np.sqrt(d[:P]), 1 / np.sqrt(P))
    d, B, e = labeled.low_rank_information(info, P)
    np.testing.assert_allclose(np.diag(d) + B @ np.diag(e) @ B.T, info, atol=1e-9)
    assert (e >= -1).all()
    # a group that saw fewer attributes than the rank: exact, and the basis keeps full column
    # rank (unit vectors of unseen attributes, uncorrected), as the program's root needs
    few = np.zeros((P + 1, P + 1))
    few[:2, :2] = laplacian[1:3, 1:3]
    d, B, e = labeled.low_rank_information(few, 4)
    np.testing.assert_allclose(np.diag(d) + B @ np.diag(e) @ B.T, few, atol=1e-9)
    assert B.shape == (P + 1, 4) and np.linalg.matrix_rank(B) == 4 and not e[2:].any()
    with pytest.raises(PluralstanError, match=r"rank must lie in 1\.\.7"):
        labeled.low_rank_information(info, 0)


def test_unpooled_groups_are_whitened_each_in_its_own_basis() -> None:
    """pooling='none': one basis per group, orthonormalising that group's judgement-weighted
    design and no other; partial pooling is not whitened, and whiten=True says why."""
    comps = ps.Comparisons.from_frame(_tiny_frame())
    enc = labeled.encode(comps, pooling="none")
    assert enc.data["whiten"] == 1 and enc.extra_attrs["whitened"] == 1
    bases = np.asarray(enc.data["theta_basis"])
    assert bases.shape == (2, 2, 2)
    X, n = np.asarray(enc.data["X"]), enc.data["y"].sum(axis=1)
    for k in range(2):
        rows = enc.data["group"] == k + 1
        gram = (X[rows] * n[rows, None]).T @ X[rows] / n[rows].sum()
        np.testing.assert_allclose(bases[k].T @ gram @ bases[k], np.eye(2), atol=1e-12)
    # the two groups' designs differ, so one shared basis would not do
    assert not np.allclose(bases[0], bases[1])
    assert labeled.encode(comps, pooling="none", whiten=False).data["whiten"] == 0
    assert labeled.encode(comps).data["whiten"] == 0
    with pytest.raises(PluralstanError, match="whiten=True needs pooling='none'"):
        labeled.encode(comps, whiten=True)
    # a group whose judgements never vary x2 cannot be whitened: automatic falls back, True
    # names the group
    flat = _tiny_frame()
    flat.loc[flat["group"] == "v", ["a_x2", "b_x2"]] = 0.5
    flat_comps = ps.Comparisons.from_frame(flat, warn_unidentified=False)
    assert labeled.encode(flat_comps, pooling="none").data["whiten"] == 0
    with pytest.raises(PluralstanError, match=r"group 'v'.*not identified"):
        labeled.encode(flat_comps, pooling="none", whiten=True)


def test_unlabeled_encoding_pools_cells_and_orders_by_the_named_attribute() -> None:
    comps = ps.Comparisons.from_frame(_tiny_frame())
    enc = unlabeled.encode(comps, K=3, identify="ordered", ordered_attribute="x2",
                           priors={"pi_alpha": [500.0, 300.0, 200.0]})
    assert enc.data["C"] == comps.cells().n_cells  # pooled: labels ignored
    assert (enc.data["identify"], enc.data["ident_attr"]) == (1, 2)
    np.testing.assert_array_equal(enc.data["prior_pi_alpha"], [500.0, 300.0, 200.0])
    assert list(enc.coords["group"]) == [0, 1, 2]
    assert enc.dims["alloc"] == ["cell", "outcome", "group"]


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (_tiny_frame().drop(columns="group"), {}, "needs the subgroup label column 'group'"),
        (_tiny_frame(), {"K": 3}, "K=3 but column 'group' has 2 label level"),
        (_tiny_frame(group=np.repeat([1, 2], 20)), {"K": 2}, "integer label 2, outside 0..1"),
        (_tiny_frame(group=["u"] * 3 + ["v"] * 37), {}, "annotator 0 carries 2 different labels"),
        (_tiny_frame(), {"pooling": "full"}, "unknown pooling 'full'"),
        (_tiny_frame(), {"priors": {"pi_alpha": [1.0, -1.0]}}, "'pi_alpha' must be finite"),
        (_tiny_frame(), {"priors": {"pi_alpha": [1.0, 1.0, 1.0]}}, "must be a scalar or have"),
        (_tiny_frame(y=[0.5] + [1.0] * 39), {"ties": False}, "contains ties"),
    ],
)
def test_labeled_bad_input(frame: pd.DataFrame, kwargs: dict, message: str) -> None:
    comps = ps.Comparisons.from_frame(frame)
    with pytest.raises(PluralstanError, match=message):
        labeled.encode(comps, **kwargs)


def _groups(spread: float, each: int, seed: int = 0) -> ps.Comparisons:
    """Eight labeled groups of 20 annotators x ``each`` judgements; the groups' preference
    vectors scatter around a shared one with sd ``spread`` per attribute."""
    rng = np.random.default_rng(seed)
    thetas = np.array([1.0, -0.5, 0.3, 0.8, -1.0]) + spread * rng.standard_normal((8, 5))
    return ps.simulate.mixture(thetas, np.full(8, 1 / 8), n_pairs=400, n_annotators=160,
                               pairs_per_annotator=each, seed=seed)


def test_auto_centring_follows_how_much_each_group_says_and_how_far_groups_differ() -> None:
    """The pilot's weights: 2,000 judgements per group and groups 1 sd apart pin every theta_k
    down far more tightly than tau spreads them (weights near 1, centred); the same groups with
    two judgements per annotator say little (weights near 0, non-centred), and so do groups
    that do not differ at all (tau estimated as 0: the funnel only the non-centred form
    samples)."""
    heavy = labeled.encode(_groups(1.0, 100), centring="auto").data["centring"]
    sparse_ = labeled.encode(_groups(1.0, 2), centring="auto").data["centring"]
    alike = labeled.encode(_groups(0.0, 100), centring="auto").data["centring"]
    assert heavy.shape == (8, 5)
    assert heavy.min() > 0.8, heavy
    assert sparse_.mean() < 0.2 and np.all(sparse_ <= heavy + 1e-9), sparse_
    assert alike.max() < 0.2, alike


def test_centring_choices_encode_as_weights() -> None:
    comps = _groups(1.0, 10)
    np.testing.assert_array_equal(labeled.encode(comps).data["centring"], np.zeros((8, 5)))
    np.testing.assert_array_equal(labeled.encode(comps, centring="centred").data["centring"],
                                  np.ones((8, 5)))
    np.testing.assert_array_equal(labeled.encode(comps, centring=0.25).data["centring"],
                                  np.full((8, 5), 0.25))
    # without pooling there is no hierarchy to parametrise
    enc = labeled.encode(comps, pooling="none", centring="centred")
    np.testing.assert_array_equal(enc.data["centring"], np.zeros((8, 5)))
    assert enc.dims["centring"] == ["group", "attribute"]
    for bad, message in [("half", "unknown centring 'half'"),
                         (np.ones((8, 4)), r"shape \(8, 4\) do not broadcast to .* \(8, 5\)"),
                         (1.5, r"must lie in \[0, 1\], got values from 1.5 to 1.5")]:
        with pytest.raises(PluralstanError, match=message):
            labeled.encode(comps, centring=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs the number of latent subgroups K"),
        ({"K": 0}, r"K \(the number of latent subgroups\) must be at least 1, got 0"),
        ({"K": 2.5}, r"K \(the number of latent subgroups\) must be a positive integer"),
        ({"K": 2, "identify": "sorted"}, "unknown identify 'sorted'"),
        ({"K": 2, "identify": "ordered", "ordered_attribute": "x9"}, "'x9' is not an attribute"),
        ({"K": 2, "ordered_attribute": "x1"}, "needs identify='ordered'"),
        ({"K": 2, "priors": {"pi_alpha": 0.0}}, "'pi_alpha' must be finite and positive"),
        ({"K": 2, "priors": {"pi_sd": 1.0}}, "unknown prior hyperparameter 'pi_sd'"),
    ],
)
def test_unlabeled_bad_input(kwargs: dict, message: str) -> None:
    comps = ps.Comparisons.from_frame(_tiny_frame())
    with pytest.raises(PluralstanError, match=message):
        unlabeled.encode(comps, **kwargs)


def test_fit_rejects_bad_input_before_stan() -> None:
    comps = ps.Comparisons.from_frame(_tiny_frame().drop(columns="group"))
    with pytest.raises(PluralstanError, match="'group'"):
        ps.fit("labeled", comps, backend="no-such-engine")  # encode fails first
    with pytest.raises(PluralstanError, match="needs the number of components K"):
        ps.fit("unlabeled", comps)


# ---------------------------------------------------------------------- labeled fits
@pytest.fixture(scope="module")
def labeled_fits() -> dict[int, tuple[ps.Comparisons, object]]:
    return {seed: (comps := _labeled_data(seed),
                   converged(ps.fit, "labeled", comps, seed=seed, adapt_delta=0.99, **CONVERGED))
            for seed in (1, 2, 3)}


def test_labeled_layout(labeled_fits) -> None:
    comps, idata = labeled_fits[1]
    post = idata.posterior
    assert post["theta"].dims == ("chain", "draw", "group", "attribute")
    assert list(post["group"].values) == ["0", "1"]
    assert {"mu", "tau", "pi", "theta_bar"} <= set(post.data_vars)
    assert "z" not in post and "log_p_cell" not in post
    assert idata.log_likelihood["y"].shape[-1] == comps.n
    assert idata.posterior_predictive["y"].shape[2:] == idata.observed_data["y"].shape
    # the label counts are modelled data too (n ~ multinomial(pi)), replicated per draw
    n_obs = idata.observed_data["n_annotators"]
    assert list(n_obs.values) == list(labeled.annotators_per_group(comps))
    n_rep = idata.posterior_predictive["n_annotators"]
    assert n_rep.dims == ("chain", "draw", "group")
    assert (n_rep.sum("group") == n_obs.sum()).all()
    assert "lprior" in idata.log_prior
    assert (post.attrs["group_labels"], post.attrs["K"]) == ("observed", 2)
    with pytest.raises(PluralstanError, match="observed subgroup labels"):
        relabel(idata)


def test_labeled_recovers_subgroup_preferences(labeled_fits) -> None:
    """Criterion: in each of 3 simulated data sets, at least 8 of the 10 coordinates of theta
    (K = 2 groups x 5 attributes) lie inside their central 90% posterior interval, and at least
    25 of the 30 overall (nominal 27); every fit passed the package's diagnostics
    (:func:`tests.strict.converged`)."""
    hits = []
    for comps, idata in labeled_fits.values():
        assert not ps.diagnostics.failed(idata), ps.diagnostics.failed(idata)
        q = idata.posterior["theta"].quantile([0.05, 0.95], dim=("chain", "draw")).values
        truth = comps.truth["theta"]
        inside = (q[0] <= truth) & (truth <= q[1])
        assert inside.sum() >= 8, inside
        hits.append(inside.sum())
    assert sum(hits) >= 25


def test_labeled_pi_is_the_conjugate_dirichlet_posterior(labeled_fits) -> None:
    """pi depends on the data only through the annotator label counts n, so its posterior is
    Dirichlet(pi_alpha + n) exactly; the Monte Carlo mean must be within 4 MCSE of it."""
    import arviz as az

    comps, idata = labeled_fits[2]
    alpha = 1.0 + labeled.annotators_per_group(comps)
    exact = alpha / alpha.sum()
    mean = idata.posterior["pi"].mean(("chain", "draw")).values
    mcse = az.mcse(idata, var_names=["pi"])["pi"].values
    assert np.all(np.abs(mean - exact) < 4 * mcse + 1e-12), (mean, exact, mcse)


def test_labeled_no_pooling_recovers_too() -> None:
    """Criterion as above for one data set with pooling='none' (8 of 10 coordinates), on a fit
    that passed the package's diagnostics."""
    comps = _labeled_data(4)
    idata = converged(ps.fit, "labeled", comps, pooling="none", seed=4, **CONVERGED)
    assert "mu" not in idata.posterior and "tau" not in idata.posterior
    q = idata.posterior["theta"].quantile([0.05, 0.95], dim=("chain", "draw")).values
    inside = (q[0] <= comps.truth["theta"]) & (comps.truth["theta"] <= q[1])
    assert inside.sum() >= 8, inside


#: Relative tolerance of posterior sd vs Laplace (Hessian) sd under a weak prior, and the share
#: of it Monte Carlo error may take (as in test_aggregate.py).
SD_RTOL = 0.05
SD_MCSE_SHARE = 0.25


def test_labeled_posterior_matches_each_groups_ml_fit_under_weak_prior() -> None:
    """No pooling and a weak prior (theta_sd 100): each group's theta posterior is the
    Bernstein-von Mises normal of that group's own logistic likelihood. Reference: an ML fit of
    each group's judgements alone (SciPy, per-judgement likelihood) and the exact Hessian there,
    H_k = X_k' diag(p (1 - p)) X_k, plus the prior precision 1 / 100^2.

    Criteria, per group and attribute (2,000 judgements per group, 5 attributes): the posterior
    mean is within 0.25 posterior sd of the MLE; the posterior sd is within SD_RTOL = 5% of the
    Laplace sd. Budget of the 5%: the prior precision is 1e-4 of the data's (and included);
    the Bernstein-von Mises error of the sd at 400 judgements per parameter is about 1%; Monte
    Carlo error may take at most a quarter (MCSE(sd) < 1.25% of sd, checked; 4 x 3,000 draws).
    The fit must pass the package's own diagnostics.
    """
    import arviz as az

    comps = _labeled_data(11, n_pairs=100, n_annotators=100, pairs_per_annotator=40)
    idata = ps.fit("labeled", comps, pooling="none", priors={"theta_sd": 100.0}, seed=11,
                   chains=4, draws=3000, warmup=500, backend="pystan")
    assert not ps.diagnostics.failed(idata), ps.diagnostics.failed(idata)
    levels = list(idata.posterior["group"].values)
    j = ref.judgements(comps.to_frame(), list(comps.attributes), group_levels=levels)
    mcse = az.mcse(idata, var_names=["theta"], method="sd")["theta"]
    for k, label in enumerate(levels):
        rows = j.group == k
        X, y = j.X[rows], (j.outcome[rows] == 1).astype(float)
        mle = ref.logistic_mle(X, y)
        laplace = ref.laplace_sd(X, mle, np.ones(len(y)), prior_sd=100.0)
        post = idata.posterior["theta"].sel(group=label)
        mean, sd = post.mean(("chain", "draw")).values, post.std(("chain", "draw")).values
        assert np.all(np.abs(mean - mle) < 0.25 * sd), (label, mean, mle, sd)
        mcse_sd = mcse.sel(group=label).values
        assert np.all(mcse_sd < SD_MCSE_SHARE * SD_RTOL * sd), (label, mcse_sd / sd)
        np.testing.assert_allclose(sd, laplace, rtol=SD_RTOL, err_msg=f"group {label}")


def test_ties_and_order_run_in_both_programs() -> None:
    rng = np.random.default_rng(5)
    frame = _tiny_frame(y=rng.choice([0.0, 0.5, 1.0], size=40), order=rng.integers(0, 2, 40))
    comps = ps.Comparisons.from_frame(frame)
    for model, K in (("labeled", None), ("unlabeled", 2)):
        idata = _fit(model, comps, K=K, chains=2, draws=100, warmup=100, seed=1)
        assert {"gamma", "log_nu"} <= set(idata.posterior.data_vars)
        assert list(idata.observed_data["outcome"].values) == ["b", "a", "tie"]
        assert idata.posterior_predictive["y"].shape[2:] == (comps.cells(
            by=["group"] if model == "labeled" else ()).n_cells, 3)


# ---------------------------------------------------------------------- unlabeled fits
@pytest.fixture(scope="module")
def unlabeled_fit():
    """K = 2 unlabeled mixture on aggregate-only data from the high-conflict population
    (60 pairs x 20 judgements; labels and annotator ids dropped), with prior draws."""
    comps = _aggregate_only(_labeled_data(8))
    idata = _fit("unlabeled", comps, K=2, priors={"theta_sd": 2.5}, chains=4, draws=300,
                 warmup=300, seed=8, sample_prior=True)
    return comps, idata


THETA_PRIOR_VAR = 2.5**2


def _contraction(post, prior_var):
    """Posterior contraction 1 - Var_post / Var_prior (Schad, Betancourt & Vasishth 2021)."""
    return 1.0 - post.var(("chain", "draw")).values / prior_var


def test_unlabeled_aggregate_contracts_but_subgroups_do_not(unlabeled_fit) -> None:
    """Proposition 1 made measurable on aggregate-only data.

    Criteria. Identified, label-invariant quantities: the aggregate P(a preferred) p_agg
    contracts by more than 0.9 in every cell and theta_bar = sum_k pi_k theta_k by more than
    0.9 in every attribute (prior variances from the prior draws). Not identified: the
    label-invariant between-group difference |theta[0, j] - theta[1, j]|, the heterogeneity the
    aggregate hides, contracts by less than 0.5 in every attribute (prior variance from the
    prior draws); the within-group coordinates theta[k, j], after Stephens relabelling (which
    can only shrink their variance), contract by less than 0.9 each and less than 0.75 on
    average (prior variance 2.5^2, the sd passed). The logistic curvature does carry some
    information about the components, so within-group contraction is not zero; it grows with
    the judgements per cell (about 0.8-0.9 at 50 per cell in the same population).
    """
    _, idata = unlabeled_fit
    post, prior = idata.posterior, idata.prior
    p_contraction = _contraction(post["p_agg"], prior["p_agg"].var(("chain", "draw")).values)
    assert np.all(p_contraction > 0.9), p_contraction.min()
    bar = _contraction(post["theta_bar"], prior["theta_bar"].var(("chain", "draw")).values)
    assert np.all(bar > 0.9), bar

    def spread(theta):
        return abs(theta.sel(group=0) - theta.sel(group=1))

    spread_prior_var = spread(prior["theta"]).var(("chain", "draw")).values
    spread_contraction = _contraction(spread(post["theta"]), spread_prior_var)
    assert np.all(spread_contraction < 0.5), spread_contraction.round(2)
    rel, _ = relabel(idata)
    theta_contraction = _contraction(rel.posterior["theta"], THETA_PRIOR_VAR)
    assert np.all(theta_contraction < 0.9), theta_contraction.round(2)
    assert theta_contraction.mean() < 0.75, theta_contraction.round(2)


def test_unlabeled_layout_and_label_switching_report(unlabeled_fit) -> None:
    comps, idata = unlabeled_fit
    post = idata.posterior
    assert post["theta"].dims == ("chain", "draw", "group", "attribute")
    assert post["alloc"].dims == ("chain", "draw", "cell", "outcome", "group")
    np.testing.assert_allclose(post["alloc"].sum("group").values, 1.0)
    assert idata.log_likelihood["y"].shape[-1] == comps.n
    assert idata.posterior_predictive["y"].shape[2:] == idata.observed_data["y"].shape
    report = label_switching_report(idata)
    assert set(report["chains"]) == {"0", "1", "2", "3"}
    # the report is on the fit, and any problem it found is what diagnostics.failed returns
    assert set(report["problems"]) <= set(ps.diagnostics.failed(idata))
    # label-invariant summaries are what the data pin down: their chains agree
    assert report["rhat"]["label_invariant"]["p_agg"] < 1.05
    # relabelling removes the between-chain disagreement that is only a permutation
    assert report["rhat"]["relabelled"]["theta"] < report["rhat"]["raw"]["theta"]
    assert report["method"] == "stephens"


def test_unlabeled_large_concentration_pins_pi() -> None:
    """The prior-sensitivity grid fixes pi through pi_alpha = concentration * pi_0. With
    concentration 1e4 (prior sd of pi_0 about 0.005) the sampler must still work and the
    posterior of pi stay at pi_0 = (0.3, 0.7): mean within 0.01, sd below 0.01."""
    comps = _aggregate_only(_labeled_data(5))
    idata = _fit("unlabeled", comps, K=2, priors={"pi_alpha": [3000.0, 7000.0]}, seed=5,
                 **SMALL)
    pi = idata.posterior["pi"]
    assert int(idata.sample_stats["diverging"].sum()) == 0
    assert np.all(np.abs(pi.mean(("chain", "draw")).values - [0.3, 0.7]) < 0.01)
    assert np.all(pi.std(("chain", "draw")).values < 0.01)


def test_unlabeled_ordered_constraint_holds_in_every_draw() -> None:
    comps = _aggregate_only(_labeled_data(6))
    idata = _fit("unlabeled", comps, K=2, identify="ordered", ordered_attribute="x4", seed=6,
                 **SMALL)
    theta = idata.posterior["theta"].sel(attribute="x4").values
    assert np.all(theta[..., 0] < theta[..., 1])
    assert idata.posterior.attrs["ordered_attribute"] == "x4"

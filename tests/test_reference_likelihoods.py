"""Every Stan program's log density against an independent NumPy/SciPy reference.

For each program (aggregate, labeled with and without pooling, unlabeled with and without the
ordering constraint, annotator, covariate-informed mixing, PAL and PAL's new-user program) and
several random parameter values, three numbers are compared with the reference of
``tests/reference.py``, which is written judgement by judgement from the models' equations:

* the per-unit log likelihood the fit stores (``log_likelihood`` group, via the model's own
  expansion from cells to judgements or annotators), to a relative 1e-8;
* the log density of the ``model`` block (``stan.Model.log_prob`` without the Jacobian, at the
  parameter values' unconstrained image): Stan drops terms that do not depend on the parameters
  from ``~`` statements, so differences between parameter values are compared, to 1e-8;
* the generated ``lprior`` (used for power-scaling, where only differences matter), likewise as
  differences, to 1e-8.

The data have ties, presentation order, repeated identical judgements, unsorted annotator ids,
group labels whose sorted and first-seen orders differ, and both design forms (dense attributes,
and a one-hot item-like design that goes to Stan in compressed row storage). Priors are passed
explicitly, with values differing per attribute, and the reference uses the same numbers, so an
encoder that passed a prior wrongly would fail here too. Every fit-free call runs on PyStan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp, softmax

import pluralstan as ps
from pluralstan.engine import StanProgram
from pluralstan.models import get_model, labeled, pal
from pluralstan.models.annotator import PYTHON_OUTPUTS, share_coordinates
from pluralstan.models.base import load_program, log_normaliser, theta_coordinates

from . import reference as ref
from .test_models_annotator import ties_order_data

BACKEND = "pystan"
ENGINE = ps.get_engine(BACKEND)
#: Tolerance of every comparison (log densities of order 10-1000 nats: double precision leaves
#: about 1e-12; a wrong term shifts them by far more than 1e-8).
RTOL = ATOL = 1e-8
#: Random parameter values per case.
N_POINTS = 4

P_ATTR = 5
BT_PRIORS = {
    "theta_mean": [0.3, -0.2, 0.0, 0.1, -0.4],
    "theta_sd": [1.7, 0.9, 2.2, 1.1, 1.4],
    "order_sd": 0.8,
    "log_nu_mean": -0.4,
    "log_nu_sd": 0.9,
}


# ---------------------------------------------------------------------------- data
def attribute_frame(seed: int = 3) -> pd.DataFrame:
    """High-conflict data (5 dense attributes, labels per annotator) with ties, order and
    repeated identical judgements."""
    comps = ps.simulate.high_conflict(seed=seed, n_annotators=12, n_pairs=15,
                                      pairs_per_annotator=4)
    frame = comps.to_frame()
    rng = np.random.default_rng(seed)
    frame.loc[rng.uniform(size=len(frame)) < 0.2, "y"] = 0.5
    frame["order"] = rng.integers(0, 2, size=len(frame)).astype(float)
    return pd.concat([frame, frame.iloc[::3]], ignore_index=True)


def item_frame(seed: int = 5, n: int = 90) -> pd.DataFrame:
    """Six items as one-hot attributes (item 0 the zero vector), so at most two of the five
    design entries per row are non-zero and the programs get the design in compressed rows.
    Annotator ids are unsorted strings; group labels are first seen in reverse sorted order."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=n)
    b = (a + rng.integers(1, 6, size=n)) % 6
    onehot = np.eye(6)[:, 1:]
    who = rng.permutation(10)[rng.integers(0, 10, size=n)]
    frame = pd.DataFrame({
        "annotator": [f"r{i}" for i in who],
        "group": np.where(who % 2 == who[0] % 2, "v", "u"),
        "y": rng.choice([0.0, 1.0, 0.5], size=n, p=[0.4, 0.4, 0.2]),
        "order": rng.integers(0, 2, size=n).astype(float),
    })
    for j in range(5):
        frame[f"a_i{j + 1}"] = onehot[a, j]
        frame[f"b_i{j + 1}"] = onehot[b, j]
    return frame


FRAMES = {"attributes": attribute_frame, "items": item_frame}


@cache
def comps_of(kind: str, ties: bool, order: bool) -> ps.Comparisons:
    """The judgements of ``FRAMES[kind]``; without ties the tied rows are recoded as wins for a,
    without order the column is dropped."""
    frame = FRAMES[kind]()
    if not ties:
        frame.loc[frame["y"] == 0.5, "y"] = 1.0
    if not order:
        frame = frame.drop(columns="order")
    return ps.Comparisons.from_frame(frame)


def judgements_of(comps: ps.Comparisons, **levels) -> ref.Judgements:
    return ref.judgements(comps.to_frame(), list(comps.attributes), **levels)


# ---------------------------------------------------------------------------- Stan side
def log_density(program: StanProgram, data: dict, params: Sequence[dict]) -> np.ndarray:
    """The model block's log density (no Jacobian) at each constrained parameter value."""
    import stan

    ENGINE.compile(program)
    model = stan.build(program.code, data=data, random_seed=1)
    values = []
    for p in params:
        unconstrained = model.unconstrain_pars(stan_init(p))
        values.append(model.log_prob(unconstrained, adjust_transform=False))
    return np.array(values)


def stan_init(params: dict) -> dict:
    """Parameter values as Stan reads them (nested lists)."""
    return {k: np.asarray(v).tolist() for k, v in params.items()}


def generated(program: StanProgram, data: dict, params: dict) -> dict[str, np.ndarray]:
    """Every output at fixed parameter values, with (chain, draw) axes of length 1."""
    out = ENGINE.generate(program, data, params, seed=7)
    return {k: v[None] for k, v in out.items()}


def assert_differences_match(stan_values: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Stan's and the reference's values agree up to one additive constant."""
    np.testing.assert_allclose(stan_values[1:] - stan_values[0], reference[1:] - reference[0],
                               rtol=RTOL, atol=ATOL, err_msg=what)


def check_program(program: StanProgram, data: dict, points: Sequence[dict],
                  log_lik: Callable[[dict], np.ndarray],
                  stan_log_lik: Callable[[dict[str, np.ndarray]], np.ndarray],
                  model_density: Callable[[dict], float], lprior: Callable[[dict], float],
                  ) -> None:
    """Compare generated log likelihood, model-block density and lprior with the reference.

    ``points`` are dicts with ``"stan"`` (parameters-block values) and ``"ref"`` (the
    reference's parameters); ``stan_log_lik`` maps the generated outputs to per-unit values.
    """
    lpriors = []
    for point in points:
        out = generated(program, data, point["stan"])
        np.testing.assert_allclose(stan_log_lik(out), log_lik(point["ref"]), rtol=RTOL,
                                   atol=ATOL, err_msg="generated log likelihood")
        lpriors.append(float(out["lprior"].squeeze()))
    assert_differences_match(np.array(lpriors), np.array([lprior(p["ref"]) for p in points]),
                             "generated lprior")
    assert_differences_match(log_density(program, data, [p["stan"] for p in points]),
                             np.array([model_density(p["ref"]) for p in points]),
                             "model-block log density")


def optional(value: float, present: bool) -> list[float]:
    """An ``array[flag] real`` parameter's value."""
    return [value] if present else []


def bt_extras(rng: np.random.Generator, has_order: bool, has_ties: bool) -> dict:
    """Random position effect and log tie parameter (``None`` when absent)."""
    return {"gamma": rng.normal(0.0, 0.8) if has_order else None,
            "log_nu": rng.normal(-0.4, 0.9) if has_ties else None}


def bt_extras_prior(p: dict) -> float:
    """Log prior of gamma and log nu, when present (``BT_PRIORS``)."""
    out = 0.0
    if p["gamma"] is not None:
        out += ref.normal_lpdf(p["gamma"], 0.0, BT_PRIORS["order_sd"])
    if p["log_nu"] is not None:
        out += ref.normal_lpdf(p["log_nu"], BT_PRIORS["log_nu_mean"], BT_PRIORS["log_nu_sd"])
    return out


def stan_extras(p: dict) -> dict:
    return {"gamma": optional(p["gamma"], p["gamma"] is not None),
            "log_nu": optional(p["log_nu"], p["log_nu"] is not None)}


def per_judgement(enc) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The model's own expansion of generated outputs (with those computed in Python,
    ``Encoded.complete``) to its stored log likelihood."""
    return lambda out: enc.log_lik(enc.complete(out))["y"][0, 0]


CASES = [("attributes", True, True), ("items", True, True), ("attributes", False, False),
         ("items", False, True)]
CASE_IDS = ["dense-ties-order", "sparse-ties-order", "dense-binomial", "sparse-binomial-order"]


def gamma_of(p: dict) -> float:
    return 0.0 if p["gamma"] is None else p["gamma"]


# ---------------------------------------------------------------------------- aggregate
@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_aggregate_matches_reference(kind, ties, order):
    comps = comps_of(kind, ties, order)
    enc = get_model("aggregate").encode(comps, priors=BT_PRIORS)
    assert enc.data["X_sparse"] == (kind == "items")
    assert enc.data["whiten"] == 1  # the density is checked through the QR basis
    j = judgements_of(comps)
    rng = np.random.default_rng(11)
    points = []
    for _ in range(N_POINTS):
        p = {"theta": rng.normal(0.0, 1.5, size=P_ATTR), **bt_extras(rng, order, ties)}
        points.append({"ref": p, "stan": {"theta_coord": theta_coordinates(p["theta"], enc.data),
                                          **stan_extras(p)}})

    def log_lik(p):
        return ref.aggregate_log_lik(j, p["theta"], gamma_of(p), p["log_nu"])

    def prior(p):
        return (ref.normal_lpdf(p["theta"], BT_PRIORS["theta_mean"], BT_PRIORS["theta_sd"])
                + bt_extras_prior(p))

    check_program(get_model("aggregate").program, enc.data, points, log_lik,
                  per_judgement(enc), lambda p: prior(p) + log_lik(p).sum(), prior)


def test_prior_only_runs_sample_theta_itself():
    """A prior-only run of a whitened program samples theta on the prior's own axes: its
    parameters are theta (no basis), and its density is the prior of theta."""
    comps = comps_of("attributes", False, False)
    enc = get_model("aggregate").encode(comps, priors=BT_PRIORS)
    assert enc.data["whiten"] == 1
    rng = np.random.default_rng(17)
    thetas = [rng.normal(0.0, 1.5, size=P_ATTR) for _ in range(N_POINTS)]
    stan = log_density(get_model("aggregate").program, {**enc.data, "prior_only": 1},
                       [{"theta_coord": theta} for theta in thetas])
    prior = [ref.normal_lpdf(theta, BT_PRIORS["theta_mean"], BT_PRIORS["theta_sd"])
             for theta in thetas]
    assert_differences_match(stan, np.array(prior), "prior-only log density")


# ---------------------------------------------------------------------------- labeled
LABELED_PRIORS = {**BT_PRIORS, "tau_sd": [0.6, 1.3, 0.8, 1.0, 0.5], "pi_alpha": [1.5, 2.5]}


def annotators_per_label(comps: ps.Comparisons, levels: list) -> np.ndarray:
    """Distinct annotators carrying each label, counted from the table."""
    frame = comps.to_frame()
    counts = frame.groupby("group")["annotator"].nunique()
    counts.index = counts.index.map(str)  # a fit's coordinates are text
    return counts.reindex([str(level) for level in levels]).to_numpy()


def conditional_coordinates(theta: np.ndarray, mu: np.ndarray, tau: np.ndarray, data: dict,
                            prior_mean: np.ndarray, prior_sd: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, float]:
    """The conditional parametrisation's coordinates of (theta, mu) given tau, z (K x P) and
    mu_coord (P), and the map's log |Jacobian|, from the program header's definitions, with
    dense solves: Lambda_k = I_k + diag(tau^-2), theta_k = Lambda_k^-1 (b_k + mu / tau^2) +
    chol(Lambda_k)'^-1 z_k; Q = sum_k (I_k - I_k Lambda_k^-1 I_k) + diag(prior_sd^-2),
    mu = Q^-1 (sum_k (b_k - I_k Lambda_k^-1 b_k) + prior_mean / prior_sd^2) + chol(Q)'^-1 mu_coord.
    """
    z, log_jac = [], 0.0
    Q, r = np.diag(prior_sd ** -2.0), prior_mean / prior_sd ** 2
    for info, score, row in zip(data["pilot_info"], data["pilot_score"], theta, strict=True):
        lam = info + np.diag(tau ** -2.0)
        L = np.linalg.cholesky(lam)
        z.append(L.T @ (row - np.linalg.solve(lam, score + mu / tau ** 2)))
        log_jac -= np.log(np.diag(L)).sum()
        Q = Q + info - info @ np.linalg.solve(lam, info)
        r = r + score - info @ np.linalg.solve(lam, score)
    L_Q = np.linalg.cholesky(Q)
    mu_coord = L_Q.T @ (mu - np.linalg.solve(Q, r))
    return np.array(z), mu_coord, log_jac - np.log(np.diag(L_Q)).sum()


def low_rank_pieces(data: dict, tau: np.ndarray, prior_mean: np.ndarray, prior_sd: np.ndarray
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The low-rank conditional form's matrices from the program header's definitions, with
    dense algebra: Lambda_k = D_k + B_k E_k B_k' + diag(tau^-2), Q = sum_k (T - T Lambda_k^-1 T)
    + diag(prior_sd^-2) and r = sum_k T Lambda_k^-1 b_k + prior_mean / prior_sd^2, T =
    diag(tau^-2) (the precision and linear term of mu given tau)."""
    T = np.diag(tau ** -2.0)
    lams = [np.diag(d) + B @ np.diag(e) @ B.T + T for d, B, e in zip(
        data["pilot_info_diagonal"], data["pilot_info_basis"], data["pilot_info_eigen"],
        strict=True)]
    Q = np.diag(prior_sd ** -2.0) + sum(T - T @ np.linalg.solve(lam, T) for lam in lams)
    r = prior_mean / prior_sd ** 2 + sum(
        T @ np.linalg.solve(lam, b) for lam, b in zip(lams, data["pilot_score"], strict=True))
    return lams, Q, r


def low_rank_log_jacobian(data: dict, tau: np.ndarray, prior_mean: np.ndarray,
                          prior_sd: np.ndarray) -> float:
    """log |d(mu, theta) / d(mu_coord, z)| of the low-rank form, whatever square roots the
    program takes: -log det(Lambda_k) / 2 per group, and -log det(diag(Q)) / 2 for mu, which
    is rooted by Q's diagonal."""
    lams, Q, _ = low_rank_pieces(data, tau, prior_mean, prior_sd)
    return -0.5 * (sum(np.linalg.slogdet(lam)[1] for lam in lams) + np.log(np.diag(Q)).sum())


@pytest.mark.parametrize(("pooling", "whiten", "centring"),
                         [("partial", None, "non-centred"), ("partial", None, "conditional"),
                          ("partial", None, "conditional-low-rank"),
                          ("none", None, "non-centred"), ("none", False, "non-centred")],
                         ids=["partial", "partial-conditional", "partial-conditional-low-rank",
                              "none-whitened", "none-theta"])
@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_labeled_matches_reference(kind, ties, order, pooling, whiten, centring, monkeypatch):
    # a correction of rank 2 < P_ATTR, so that the low-rank form approximates the pilot
    monkeypatch.setattr(labeled, "LOW_RANK", 2)
    comps = comps_of(kind, ties, order)
    enc = get_model("labeled").encode(comps, priors=LABELED_PRIORS, pooling=pooling,
                                      whiten=whiten, centring=centring)
    # unpooled groups are whitened by default (one basis per group), partially pooled never
    whitened = pooling == "none" and whiten is None
    conditional = centring == "conditional"
    low_rank = centring == "conditional-low-rank"
    assert enc.data["whiten"] == int(whitened)
    assert enc.data["conditional"] == int(conditional) + 2 * int(low_rank)
    levels = list(enc.coords["group"])
    j = judgements_of(comps, group_levels=levels)
    n_labels = annotators_per_label(comps, levels)
    K = len(levels)
    m, s = np.array(BT_PRIORS["theta_mean"]), np.array(BT_PRIORS["theta_sd"])
    tau_sd = np.array(LABELED_PRIORS["tau_sd"])
    rng = np.random.default_rng(12)
    points = []
    for _ in range(N_POINTS):
        p = {"z": rng.normal(size=(K, P_ATTR)), "pi": rng.dirichlet(np.ones(K)),
             **bt_extras(rng, order, ties)}
        stan = {"z": p["z"], "pi": p["pi"], **stan_extras(p)}
        if conditional:
            # theta_k, mu and tau drawn directly; z from the header's definition
            p["mu"], p["tau"] = rng.normal(size=P_ATTR), np.abs(rng.normal(size=P_ATTR))
            p["theta"] = p["mu"] + p["tau"] * rng.normal(size=(K, P_ATTR))
            p["z"], mu_coord, p["log_jacobian"] = conditional_coordinates(
                p["theta"], p["mu"], p["tau"], enc.data, m, s)
            stan |= {"z": p["z"], "mu_coord": mu_coord, "tau": p["tau"]}
        elif low_rank:
            # coordinates drawn; (mu, theta) are the program's map of them, whose Jacobian
            # the reference computes from the header's matrices (test_low_rank_map checks the
            # map itself)
            p["tau"] = np.abs(rng.normal(size=P_ATTR))
            stan |= {"mu_coord": rng.normal(size=P_ATTR), "tau": p["tau"]}
            out = generated(get_model("labeled").program, enc.data, stan)
            p["mu"], p["theta"] = out["mu"][0, 0], out["theta"][0, 0]
            p["log_jacobian"] = low_rank_log_jacobian(enc.data, p["tau"], m, s)
        elif pooling == "partial":
            # the header's non-centred hierarchy: theta_k = mu + tau .* z_k
            p["mu"], p["tau"] = rng.normal(size=P_ATTR), np.abs(rng.normal(size=P_ATTR))
            p["theta"] = p["mu"] + p["tau"] * p["z"]
            stan |= {"mu_coord": p["mu"], "tau": p["tau"]}
        elif whitened:
            # z_k are theta_k's coordinates in group k's basis
            p["theta"] = rng.normal(0.0, 1.5, size=(K, P_ATTR))
            stan |= {"z": theta_coordinates(p["theta"], enc.data), "mu_coord": [], "tau": []}
        else:
            # independent theta_k ~ normal(theta_mean, theta_sd), written as m + s .* z_k
            p["theta"] = m + s * p["z"]
            stan |= {"mu_coord": [], "tau": []}
        points.append({"ref": p, "stan": stan})

    def log_lik(p):
        return ref.labeled_log_lik(j, p["theta"], gamma_of(p), p["log_nu"])

    def top_prior(p):
        out = (ref.dirichlet_lpdf(p["pi"], LABELED_PRIORS["pi_alpha"]) + bt_extras_prior(p))
        if pooling == "partial":
            return (out + ref.normal_lpdf(p["mu"], m, s)
                    + ref.half_normal_lpdf(p["tau"], tau_sd))
        return out + ref.normal_lpdf(p["theta"], m, s)

    def density(p):
        # model block: z ~ std_normal (+ mu, tau), or theta's own prior when whitened (a linear
        # map: a constant Jacobian); labels n ~ multinomial(pi); judgements
        if conditional or low_rank:  # theta_k ~ normal(mu, tau), plus the map's log Jacobian
            latent = ref.normal_lpdf(p["theta"], p["mu"], p["tau"]) + p["log_jacobian"]
        elif whitened:
            latent = ref.normal_lpdf(p["theta"], m, s)
        else:
            latent = ref.normal_lpdf(p["z"], 0.0, 1.0)
        out = (latent + ref.multinomial_lpmf(n_labels, p["pi"])
               + ref.dirichlet_lpdf(p["pi"], LABELED_PRIORS["pi_alpha"]) + bt_extras_prior(p)
               + log_lik(p).sum())
        if pooling == "partial":
            out += ref.normal_lpdf(p["mu"], m, s) + ref.half_normal_lpdf(p["tau"], tau_sd)
        return out

    check_program(get_model("labeled").program, enc.data, points, log_lik, per_judgement(enc),
                  density, top_prior)


def test_low_rank_map(monkeypatch):
    """The low-rank form's map is the header's: at zero coordinates mu is Q^-1 r and theta_k
    is Lambda_k^-1 (b_k + mu / tau^2); theta_k moves with z_k alone, by a square root S_k of
    Lambda_k^-1 (S_k S_k' = Lambda_k^-1); mu moves with mu_coord by diag(Q)^-1/2. The map is
    affine in the coordinates, so unit steps read its Jacobian exactly."""
    monkeypatch.setattr(labeled, "LOW_RANK", 2)
    comps = comps_of("attributes", False, False)
    data = get_model("labeled").encode(comps, priors=LABELED_PRIORS,
                                       centring="conditional-low-rank").data
    K = len(data["n_annotators"])
    assert data["conditional"] == 2 and np.shape(data["pilot_info_basis"]) == (K, P_ATTR, 2)
    m, s = np.array(BT_PRIORS["theta_mean"]), np.array(BT_PRIORS["theta_sd"])
    density = ENGINE.log_density(get_model("labeled").program, data)
    rng = np.random.default_rng(21)
    tau = np.abs(rng.normal(size=P_ATTR)) + 0.2
    lams, Q, r = low_rank_pieces(data, tau, m, s)
    # the pilot's rank-2 correction is an approximation here, not the information itself
    assert not np.allclose(lams[0] - np.diag(tau ** -2.0), pilot_information(comps, data)[0])
    base = {"tau": tau, "pi": np.full(K, 1.0 / K)}

    def mapped(mu_coord: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = density.constrain(density.unconstrain({**base, "mu_coord": mu_coord, "z": z}),
                                transformed=True)
        return out["mu"], out["theta"]

    zero_mu, zero_z = np.zeros(P_ATTR), np.zeros((K, P_ATTR))
    mu0, theta0 = mapped(zero_mu, zero_z)
    np.testing.assert_allclose(mu0, np.linalg.solve(Q, r), rtol=1e-8, atol=1e-10)
    for k in range(K):
        np.testing.assert_allclose(
            theta0[k], np.linalg.solve(lams[k], data["pilot_score"][k] + mu0 / tau ** 2),
            rtol=1e-8, atol=1e-10)
        steps = []
        for j in range(P_ATTR):
            z = zero_z.copy()
            z[k, j] = 1.0
            mu, theta = mapped(zero_mu, z)
            np.testing.assert_allclose(mu, mu0, rtol=0, atol=1e-12)
            np.testing.assert_allclose(np.delete(theta, k, axis=0), np.delete(theta0, k, axis=0),
                                       rtol=0, atol=1e-12)
            steps.append(theta[k] - theta0[k])
        S = np.array(steps).T
        np.testing.assert_allclose(S @ S.T, np.linalg.inv(lams[k]), rtol=1e-7, atol=1e-10)
    mu_steps = np.array([mapped(np.eye(P_ATTR)[j], zero_z)[0] - mu0 for j in range(P_ATTR)]).T
    np.testing.assert_allclose(mu_steps, np.diag(np.diag(Q) ** -0.5), rtol=1e-7, atol=1e-10)


def pilot_information(comps: ps.Comparisons, data: dict) -> np.ndarray:
    """The whole pilot information of each group, as the conditional form receives it."""
    whole = get_model("labeled").encode(comps, priors=LABELED_PRIORS, centring="conditional")
    assert data["pilot_score"].shape == whole.data["pilot_score"].shape
    return whole.data["pilot_info"]


# ---------------------------------------------------------------------------- unlabeled
UNLABELED_PRIORS = {**BT_PRIORS, "pi_alpha": [1.2, 2.0, 0.7]}


def mixture_stan_theta(theta: np.ndarray, lead: int, ordered: bool, data: dict) -> dict:
    """theta (K, P) as the mixture programs' parameters: its coordinates in the program's basis
    (the QR reparameterisation, ``theta_coordinates``), split into the lead attribute's column
    (ordered or free) and the other columns."""
    coordinates = theta_coordinates(theta, data)
    rest = np.delete(coordinates, lead, axis=1)
    column = coordinates[:, lead]
    return {"theta_lead_ordered": column if ordered else [],
            "theta_lead_free": [] if ordered else column, "theta_rest": rest}


@pytest.mark.parametrize("identify", ["none", "ordered"])
@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_unlabeled_matches_reference(kind, ties, order, identify):
    comps = comps_of(kind, ties, order)
    ordered = identify == "ordered"
    options = {"ordered_attribute": comps.attributes[2]} if ordered else {}
    K = 3
    enc = get_model("unlabeled").encode(comps, K=K, priors=UNLABELED_PRIORS, identify=identify,
                                        **options)
    assert enc.data["whiten"] == (not ordered)  # an order on theta's own coordinate: no basis
    j = judgements_of(comps)
    rng = np.random.default_rng(13)
    points = []
    for _ in range(N_POINTS):
        theta = rng.normal(0.0, 1.5, size=(K, P_ATTR))
        if ordered:
            theta[:, 2] = np.sort(theta[:, 2])
        p = {"theta": theta, "pi": rng.dirichlet(np.ones(K)), **bt_extras(rng, order, ties)}
        stan = {"pi": p["pi"], **mixture_stan_theta(theta, 2 if ordered else 0, ordered, enc.data),
                **stan_extras(p)}
        points.append({"ref": p, "stan": stan})

    def log_lik(p):
        return ref.unlabeled_log_lik(j, p["theta"], p["pi"], gamma_of(p), p["log_nu"])

    def prior(p):
        return (ref.normal_lpdf(p["theta"], BT_PRIORS["theta_mean"], BT_PRIORS["theta_sd"])
                + ref.dirichlet_lpdf(p["pi"], UNLABELED_PRIORS["pi_alpha"])
                + bt_extras_prior(p))

    check_program(get_model("unlabeled").program, enc.data, points, log_lik,
                  per_judgement(enc), lambda p: prior(p) + log_lik(p).sum(), prior)


# ---------------------------------------------------------------------------- annotator
#: Scale of the last point's theta in the annotator test: types so far apart that annotators'
#: log likelihoods under them differ by more than exp's range (about 709).
FAR_SCALE = 1000.0


@pytest.mark.parametrize(("mixture", "K"), [(False, 2), (True, 2), (False, 3)],
                         ids=["posterior", "loo-mixture", "posterior-K3"])
def test_annotator_model_block_matches_reference(mixture, K):
    """The annotator program's model block against the judgement-level reference
    (``reference.type_log_lik``) and the priors, and with ``loo_mixture`` the mixture of
    leave-one-annotator-out posteriors: the posterior times ``sum_i c_i / p(y_i | theta, pi)``.
    At every point the generated log likelihood per annotator and membership are checked too.
    The program sums over the types a column at a time (``log_sum_exp_rows``), so K = 3
    checks more than one step, and the last point puts the types so far apart that an
    annotator's log likelihoods under them differ by more than exp's range."""
    comps = ties_order_data()
    priors = {**BT_PRIORS, "pi_alpha": [0.8, 1.6, 1.2][:K]}
    spec = get_model("annotator")
    rng = np.random.default_rng(14)
    log_c = rng.normal(0.0, 2.0, len(comps.annotator_levels)) if mixture else None
    enc = spec.encode(comps, K=K, priors=priors, loo_mixture=log_c)
    assert enc.data["whiten"] == 1  # the density is checked through the QR basis
    j = judgements_of(comps, annotator_levels=list(enc.coords["annotator"]))
    refs, stans = [], []
    for n in range(N_POINTS):
        scale = FAR_SCALE if n == N_POINTS - 1 else 1.5
        p = {"theta": rng.normal(0.0, scale, size=(K, P_ATTR)), "pi": rng.dirichlet(np.ones(K)),
             **bt_extras(rng, True, True)}
        refs.append(p)
        stans.append({"pi_coord": share_coordinates(p["pi"]),
                      **mixture_stan_theta(p["theta"], 0, False, enc.data), **stan_extras(p)})

    def type_log_lik(p):  # log pi_k + log p(y_i | theta_k), annotators x types
        return ref.type_log_lik(j, p["theta"], p["gamma"], p["log_nu"]) + np.log(p["pi"])

    def density(p):
        ll = logsumexp(type_log_lik(p), axis=1)  # log p(y_i | theta, pi)
        return (ref.normal_lpdf(p["theta"], BT_PRIORS["theta_mean"], BT_PRIORS["theta_sd"])
                + ref.dirichlet_lpdf(p["pi"], priors["pi_alpha"]) + bt_extras_prior(p)
                + ll.sum() + (logsumexp(log_c - ll) if mixture else 0.0)
                # the program samples the shares' log ratios: the map's log Jacobian
                + np.log(p["pi"]).sum())

    assert np.ptp(type_log_lik(refs[-1]), axis=1).max() > 1000  # beyond exp's range
    assert_differences_match(log_density(spec.program, enc.data, stans),
                             np.array([density(p) for p in refs]), "model-block log density")
    own = {**enc.data, **{flag: 1 for flag in PYTHON_OUTPUTS}}  # the program writes them
    for p, point in zip(refs, stans, strict=True):
        out = generated(spec.program, own, point)
        lp = type_log_lik(p)
        ll = logsumexp(lp, axis=1)
        np.testing.assert_allclose(out["log_lik"].squeeze(), ll, rtol=RTOL, atol=ATOL,
                                   err_msg="generated log likelihood")
        np.testing.assert_allclose(out["membership"].squeeze(), np.exp(lp - ll[:, None]),
                                   rtol=1e-6, atol=1e-12, err_msg="generated membership")


# ---------------------------------------------------------------------------- covariate
#: Marginal prior sd of each type's intercept and of its slope on each encoded covariate
#: (``COVARIATES`` order after the intercept), differing per column.
COVARIATE_PRIORS = {**BT_PRIORS, "intercept_sd": 0.7, "beta_sd": [1.3, 0.6, 2.1, 0.9]}
#: Encoded covariates: intercept, standardised age, region dummies against "north", student.
COVARIATES = ["intercept", "age", "region[east]", "region[south]", "student[True]"]


def annotator_table(ids: Sequence, seed: int) -> pd.DataFrame:
    """Numeric, string and boolean covariates for the annotators ``ids``, every level present."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    return pd.DataFrame(
        {"age": rng.normal(40.0, 12.0, size=n),
         "region": np.array(["east", "north", "south"])[rng.permutation(np.arange(n) % 3)],
         "student": rng.permutation(np.arange(n) % 2 == 0)},
        index=pd.Index(ids, name="annotator"),
    )


def covariate_design(table: pd.DataFrame, levels: Sequence) -> np.ndarray:
    """``(I, Q)`` mixing design in the order of the annotator ``levels`` (matched as text), from
    the model's definition: an intercept, age centred and divided by its sample sd, one
    indicator per region other than the reference "north", and an indicator of students."""
    rows = table.set_axis(table.index.map(str)).loc[[str(level) for level in levels]]
    age = rows["age"].to_numpy(float)
    return np.column_stack([
        np.ones(len(rows)),
        (age - age.mean()) / age.std(ddof=1),
        (rows["region"] == "east").to_numpy(float),
        (rows["region"] == "south").to_numpy(float),
        rows["student"].to_numpy(float),
    ])


@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_covariate_matches_reference(kind, ties, order):
    """Covariate-informed mixing (``covariate_bt.stan``, K = 3): annotator i's types are mixed
    with weights softmax(beta w_i), every column of beta summing to zero across types through
    the Helmert basis of the program's header (``reference.sum_to_zero``), with an isotropic
    normal prior on that subspace whose per-entry marginal sd is the stated one."""
    frame = comps_of(kind, ties, order).to_frame()
    ids = list(pd.unique(frame["annotator"]))
    table = annotator_table(ids, seed=len(ids))
    comps = ps.Comparisons.from_frame(frame, annotators=table)
    K = 3
    enc = get_model("covariate").encode(comps, K=K, priors=COVARIATE_PRIORS,
                                        reference_levels={"region": "north"})
    assert enc.coords["covariate"] == COVARIATES
    assert enc.data["whiten"] == 1  # the density is checked through the QR basis
    levels = list(enc.coords["annotator"])
    j = judgements_of(comps, annotator_levels=levels)
    W = covariate_design(table, levels)
    marginal_sd = np.array([COVARIATE_PRIORS["intercept_sd"], *COVARIATE_PRIORS["beta_sd"]])
    # an isotropic normal of scale s on the K - 1 dimensional subspace has per-entry sd
    # s sqrt(1 - 1 / K)
    scale = marginal_sd / np.sqrt(1.0 - 1.0 / K)
    rng = np.random.default_rng(17)
    points = []
    for _ in range(N_POINTS):
        beta_raw = rng.normal(0.0, 1.5, size=(K - 1, len(COVARIATES)))
        p = {"theta": rng.normal(0.0, 1.5, size=(K, P_ATTR)), "beta": ref.sum_to_zero(beta_raw),
             **bt_extras(rng, order, ties)}
        stan = {"beta_raw": beta_raw, **mixture_stan_theta(p["theta"], 0, False, enc.data),
                **stan_extras(p)}
        points.append({"ref": p, "stan": stan})

    out = enc.complete(generated(get_model("covariate").program, enc.data, points[0]["stan"]))
    np.testing.assert_allclose(out["beta"][0, 0], points[0]["ref"]["beta"], rtol=RTOL,
                               atol=ATOL, err_msg="sum-to-zero coefficients")
    np.testing.assert_allclose(out["pi_annotator"][0, 0],
                               softmax(W @ points[0]["ref"]["beta"].T, axis=1), rtol=RTOL,
                               atol=ATOL, err_msg="annotator type shares")

    def log_lik(p):
        return ref.covariate_log_lik(j, p["theta"], p["beta"], W, gamma_of(p), p["log_nu"])

    def prior(p):
        return (ref.normal_lpdf(p["theta"], BT_PRIORS["theta_mean"], BT_PRIORS["theta_sd"])
                + ref.sum_to_zero_normal_lpdf(p["beta"], scale) + bt_extras_prior(p))

    check_program(get_model("covariate").program, enc.data, points, log_lik,
                  lambda out: enc.complete(out)["log_lik"][0, 0],
                  lambda p: prior(p) + log_lik(p).sum(), prior)


@pytest.mark.parametrize("model", ["annotator", "covariate"])
@pytest.mark.parametrize("prior_only", [0, 1])
@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_python_outputs_equal_the_programs_own(model, prior_only, kind, ties, order):
    """``membership``, ``log_lik`` (and the covariate model's ``pi_annotator``) are computed in
    Python from the parameter draws (``Encoded.derive``), not written by the program. With the
    programs' output flags set, their generated quantities must give the same numbers, at
    random parameter values, for every design form, with and without ties and order, and in
    prior-only runs (membership = the prior shares)."""
    frame = comps_of(kind, ties, order).to_frame()
    ids = list(pd.unique(frame["annotator"]))
    comps = ps.Comparisons.from_frame(frame, annotators=annotator_table(ids, seed=len(ids)))
    K = 3
    spec = get_model(model)
    enc = spec.encode(comps, K=K, priors=COVARIATE_PRIORS if model == "covariate" else BT_PRIORS)
    names = ["membership", "log_lik"] + (["pi_annotator"] if model == "covariate" else [])
    flags = {f"save_{name}": 1 for name in names}
    data = {**enc.data, "prior_only": prior_only}
    rng = np.random.default_rng(23 + prior_only)
    for _ in range(2):
        p = {"theta": rng.normal(0.0, 1.5, size=(K, P_ATTR)), **bt_extras(rng, order, ties)}
        mixing = ({"beta_raw": rng.normal(0.0, 1.5, size=(K - 1, len(COVARIATES)))}
                  if model == "covariate" else {"pi": rng.dirichlet(np.ones(K))})
        stan = {**mixing, **mixture_stan_theta(p["theta"], 0, False, data), **stan_extras(p)}
        own = generated(spec.program, {**data, **flags}, stan)
        derived = enc.complete(generated(spec.program, data, stan), data)
        for name in names:
            assert derived[name].size and derived[name].shape == own[name].shape, name
            np.testing.assert_allclose(derived[name], own[name], rtol=RTOL, atol=ATOL,
                                       err_msg=name)


# ---------------------------------------------------------------------------- PAL
PAL_PRIORS = {"W_sd": 0.7, "theta_sd": 1.8, "w_alpha": [0.6, 1.4], "order_sd": 0.8}


def pal_comps(seed: int, n_annotators: int, order: bool = True) -> ps.Comparisons:
    comps = pal.simulate(2, n_annotators=n_annotators, judgements=8, seed=seed,
                         n_attributes=3)
    frame = comps.to_frame()
    rng = np.random.default_rng(seed)
    if order:
        frame["order"] = rng.integers(0, 2, size=len(frame))
    # annotator ids as unsorted strings: their order must not matter
    rename = rng.permutation(n_annotators)
    frame["annotator"] = [f"u{rename[i]}" for i in frame["annotator"]]
    return ps.Comparisons.from_frame(frame)


def random_cholesky(rng: np.random.Generator, D: int) -> np.ndarray:
    L = np.tril(rng.normal(0.0, 0.5, size=(D, D)), -1)
    return L + np.diag(np.exp(rng.normal(0.0, 0.3, size=D)))


@pytest.mark.parametrize("order", [True, False])
def test_pal_matches_reference(order):
    comps = pal_comps(4, n_annotators=7, order=order)
    spec = get_model("pal")
    enc = spec.encode(comps, K=2, priors=PAL_PRIORS)
    levels = list(enc.coords["annotator"])
    j = judgements_of(comps, annotator_levels=levels)
    n_users, K, D = len(levels), 2, 3
    rng = np.random.default_rng(15)
    points = []
    for _ in range(N_POINTS):
        p = {"L": random_cholesky(rng, D), "theta": rng.normal(0.0, 1.5, size=(K, D)),
             "w": rng.dirichlet(np.ones(K), size=n_users),
             "gamma": rng.normal(0.0, 0.8) if order else None}
        stan = {"L_M": p["L"], "theta": p["theta"], "w": p["w"],
                "gamma": optional(gamma_of(p), order)}
        points.append({"ref": p, "stan": stan})

    def log_lik(p):
        # PAL's utility form with M = L L' and each user's beta_i = sum_k w_ik theta_k
        return ref.pal_log_lik(j, p["L"] @ p["L"].T, p["w"] @ p["theta"], gamma_of(p))

    def prior(p):
        out = (ref.wishart_cholesky_lpdf(p["L"], D, PAL_PRIORS["W_sd"] ** 2 * np.eye(D))
               + ref.normal_lpdf(p["theta"], 0.0, PAL_PRIORS["theta_sd"])
               + ref.dirichlet_lpdf(p["w"], PAL_PRIORS["w_alpha"]))
        if p["gamma"] is not None:
            out += ref.normal_lpdf(p["gamma"], 0.0, PAL_PRIORS["order_sd"])
        return out

    check_program(spec.program, enc.data, points, log_lik,
                  lambda out: out["log_lik"][0, 0], lambda p: prior(p) + log_lik(p).sum(),
                  prior)


def test_pal_new_users_matches_reference():
    """pal_new_users.stan: each new user's posterior mixes over S fixed draws of the shared
    parameters, p(w_j | y) propto p(w_j) (1/S) sum_s p(y_j | w_j, theta_s); its stored log
    likelihood is the value under the draw ``seen_draw`` it pairs with w_j."""
    comps = pal_comps(6, n_annotators=5)
    enc = pal.encode(comps, K=2, priors=PAL_PRIORS)
    levels = list(enc.coords["annotator"])
    j = judgements_of(comps, annotator_levels=levels)
    J, K, D, S = len(levels), 2, 3, 4
    rng = np.random.default_rng(16)
    L = np.stack([random_cholesky(rng, D) for _ in range(S)])
    shared = {"M": L @ np.swapaxes(L, 1, 2), "theta": rng.normal(0.0, 1.5, size=(S, K, D)),
              "gamma": rng.normal(0.0, 0.5, size=S)}
    alpha = np.array([0.6, 1.4])
    d = enc.data
    data = {"J": J, "K": K, "D": D, "S": S, "L_M": L, "theta": shared["theta"],
            "gamma": shared["gamma"], "C": d["C"], "X_a": d["X_a"], "X_b": d["X_b"],
            "user": d["annotator"], "order": d["order"], "y": d["y"], "prior_w_alpha": alpha,
            "prior_only": 0}
    program = load_program("pal_new_users.stan")
    ws = [rng.dirichlet(np.ones(K), size=J) for _ in range(N_POINTS)]
    lprior = []
    for w in ws:
        out = generated(program, data, {"w": w})
        ll = ref.pal_new_users_log_lik(j, shared["M"], shared["theta"], shared["gamma"], w)
        seen = out["seen_draw"][0, 0].astype(int) - 1
        np.testing.assert_allclose(out["log_lik"][0, 0], ll[seen, np.arange(J)], rtol=RTOL,
                                   atol=ATOL, err_msg="generated log likelihood")
        lprior.append(float(out["lprior"].squeeze()))
    assert_differences_match(np.array(lprior), np.array([ref.dirichlet_lpdf(w, alpha)
                                                         for w in ws]), "generated lprior")

    def density(w):
        ll = ref.pal_new_users_log_lik(j, shared["M"], shared["theta"], shared["gamma"], w)
        return ref.dirichlet_lpdf(w, alpha) + logsumexp(ll, axis=0).sum()

    assert_differences_match(log_density(program, data, [{"w": w} for w in ws]),
                             np.array([density(w) for w in ws]), "model-block log density")


def test_log_normaliser_is_log_d_without_overflow():
    """NumPy's log D(eta) (the annotator outputs' and the Davidson outcome probabilities'):
    log(1 + exp(eta)) without ties and log(exp(eta / 2) + exp(-eta / 2) + nu) with them,
    written directly where that does not overflow, finite at |eta| = 800, and the input
    left as it was."""
    rng = np.random.default_rng(3)
    eta = rng.normal(scale=4.0, size=(50, 6))
    log_nu = rng.normal(size=6)
    kept = eta.copy()
    np.testing.assert_allclose(log_normaliser(eta, None), np.log1p(np.exp(eta)), rtol=1e-13)
    np.testing.assert_allclose(log_normaliser(eta, log_nu),
                               np.log(np.exp(eta / 2) + np.exp(-eta / 2) + np.exp(log_nu)),
                               rtol=1e-13)
    np.testing.assert_array_equal(eta, kept)
    far = np.array([[800.0, -800.0]])
    np.testing.assert_allclose(log_normaliser(far, None), [[800.0, 0.0]], atol=1e-300)
    np.testing.assert_allclose(log_normaliser(far, np.zeros(2)), [[400.0, 400.0]])

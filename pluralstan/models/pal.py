"""PAL ideal-point mixture, Bayesian (``stan/pal_ideal_point.stan``, ``stan/pal_new_users.stan``).

The variant implemented is PAL's **model A with a linear map** (Chen, Chen, Rege & Vinayak 2024,
eq. 8 and the synthetic experiments of their section 4.1), with a full-rank map (d' = D):
options are attribute vectors x in R^D, f(x) = W x, there are K prototype ideal points p_k and
user i's ideal point is a_i = sum_k w_ik p_k with w_i on the simplex, w_i ~ Dirichlet(alpha).
User i prefers the closer option::

    P(a > b | i) = logistic(||W (b - a_i)||^2 - ||W (a - a_i)||^2)
                 = logistic(beta_i' (a - b) - (a' M a - b' M b)),

with the metric M = W'W, prototype utilities theta_k = 2 M p_k and beta_i = sum_k w_ik theta_k.
The Stan program samples this identified parameterisation (theta, M): PAL-A with a linear map
is a Bradley-Terry model whose user utilities lie in the convex hull of K prototype utilities,
plus a shared concave quadratic term. PAL leaves the link h unspecified and trains with hinge or
logistic losses; we take the logistic link (which fixes the scale) and put priors on everything:
M ~ Wishart(D, W_sd^2 I) (the law of W'W for iid normal W), theta_k ~ normal(0, theta_sd),
w_i ~ Dirichlet(w_alpha). Model B (prompt-dependent ideal points) and non-linear maps are not
implemented; neither is a reduced-rank map (d' < D), whose posterior was multimodal in our runs
(the row space of W is a point on a Grassmannian; R-hat 1.6 with d' = 2, D = 3).

Identification. Distances are invariant to rotations of the latent space (W -> R W); sampling M
instead of W removes them. Prototype labels are exchangeable (an ordering constraint on theta's
first attribute trapped 2 of 4 chains in a local mode at the constraint boundary, 85 units of
log density below the mode, in our runs), so label-dependent summaries (theta, w, pi, proto)
need :mod:`pluralstan.relabel` across chains. The data identify M, every user's utility
U_i(x) = beta_i' x - x' M x, preference probabilities
(:func:`preference_probability`) and user-by-user agreement (:func:`agreement`). The prototypes
(vertices of a simplex containing the users' beta_i) and hence the weights w_i are only weakly
identified: a larger simplex fits equally well and only the priors pull the vertices in.

Unseen users (PAL section 3.3.1). :func:`fit_new_users` localises new users from a few
judgements with the shared parameters held at their posterior: it passes ``n_draws`` evenly
thinned posterior draws of (M, theta, gamma) to ``pal_new_users.stan``, where each new user's
posterior is the mixture over those draws reweighted by that user's own judgements,
p(w_j | y_j, y_seen), marginalised exactly (``log_sum_exp``); no plug-in posterior mean is used.
:func:`accuracy` then reports seen, zero-shot and few-shot held-out accuracy as PAL does.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from .. import _arviz, diagnostics
from ..data import Cells, Comparisons
from ..engine import SamplerConfig
from ..errors import IdentificationWarning, PluralstanError
from .base import (
    Encoded,
    ModelSpec,
    broadcast_prior,
    load_program,
    merge_priors,
    positive,
    register,
    require_annotators,
    scalar_prior,
)

DEFAULT_PRIORS: dict[str, Any] = {
    "W_sd": 1.0,  # M = W'W ~ Wishart(D, W_sd^2 I): the law of W'W for iid normal(0, W_sd) W
    "theta_sd": 2.5,  # prototype utilities theta_k: iid normal(0, theta_sd), logit scale
    "w_alpha": 1.0,  # user weights: Dirichlet(w_alpha), scalar or one value per prototype
    "order_sd": 1.0,  # position (shown-first) effect gamma
}

#: Outcome labels of the count columns (PAL has no tie outcome).
PAL_OUTCOMES = ("b", "a")


# ---------------------------------------------------------------------- encoding
def _cells(comps: Comparisons) -> Cells:
    """Counts per distinct (option a, option b, order, annotator), columns (b, a).

    Keyed on both options, not on a - b as the linear models are: the ideal-point log-odds
    depend on a + b too. PAL has no tie outcome (checked by the callers).
    """
    cells = comps.cells(by=("annotator",), options=True)
    return dataclasses.replace(cells, counts=cells.counts[:, :2])


def _check_no_ties(comps: Comparisons, what: str) -> None:
    if comps.has_ties:
        rows = np.flatnonzero(comps.frame["y"].to_numpy() == 0.5)
        raise PluralstanError(
            f"{what}: outcome column 'y' has ties (0.5) at rows {list(rows[:5])}; the PAL model "
            "has no tie outcome (accepted: 1 a preferred, 0 b preferred); drop the tied rows"
        )


def _check_K(K: Any, n_annotators: int) -> int:
    if isinstance(K, bool) or not isinstance(K, int | np.integer):
        raise PluralstanError(f"K (number of prototypes) must be an integer, got {K!r}")
    if K < 1:
        raise PluralstanError(f"K (number of prototypes) must be at least 1, got {K}")
    if K > n_annotators:
        raise PluralstanError(
            f"K = {K} prototypes exceeds the {n_annotators} annotator(s) in the table; "
            f"accepted: 1 <= K <= {n_annotators}"
        )
    return int(K)


def _check_translation(A: np.ndarray, B: np.ndarray) -> None:
    """Warn when a combination of attributes is constant over all options.

    Then c'x = 1 for every option and W -> W + t c', a_i -> a_i + t (a translation of the
    latent space) leaves every distance difference unchanged: in the sampled parameters, M can
    trade off against the utilities theta and only the priors separate them.
    """
    X = np.vstack([A, B])
    coef, *_ = np.linalg.lstsq(X, np.ones(len(X)), rcond=None)
    if np.allclose(X @ coef, 1.0, atol=1e-8):
        warnings.warn(
            "a linear combination of the attributes is constant over all options (e.g. shares "
            "summing to 1), so the latent space can be translated without changing any "
            "preference: M and the prototype utilities theta are separated by their priors alone",
            IdentificationWarning,
            stacklevel=3,
        )


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    order: bool | None = None,
) -> Encoded:
    """Encode a comparison table for the PAL ideal-point model.

    Parameters
    ----------
    comps
        The judgements, with annotator ids (each annotator is a user with its own ideal point).
    K
        Number of prototypes, ``1 <= K <= number of annotators``.
    priors
        Overrides of :data:`DEFAULT_PRIORS`.
    order
        Estimate a position effect; default: when the table records presentation order.

    Raises
    ------
    PluralstanError
        For K out of range, ties, or bad or unknown prior values.
    """
    p = merge_priors(DEFAULT_PRIORS, priors)
    require_annotators(comps)
    annotators = comps.annotator_levels
    K = _check_K(K, len(annotators))
    _check_no_ties(comps, "pal")
    D = len(comps.attributes)
    has_order = comps.has_order if order is None else bool(order) and comps.has_order
    cells = _cells(comps)
    _check_translation(cells.A, cells.B)
    sd = {name: scalar_prior(p[name], name) for name in ("W_sd", "theta_sd", "order_sd")}
    alpha = positive(broadcast_prior(p["w_alpha"], K, "w_alpha"), "w_alpha")
    data = {
        "I": len(annotators), "K": K, "D": D, "C": len(cells.counts),
        "X_a": cells.A, "X_b": cells.B, "annotator": cells.annotator + 1,
        "order": cells.order, "has_order": int(has_order), "y": cells.counts,
        "prior_W_sd": sd["W_sd"], "prior_theta_sd": sd["theta_sd"],
        "prior_w_alpha": alpha, "prior_order_sd": sd["order_sd"], "prior_only": 0,
    }
    coords = {
        "attribute": list(comps.attributes),
        "attribute_other": list(comps.attributes),
        "group": np.arange(K),
        "annotator": list(annotators),
        "cell": np.arange(len(cells.counts)),
        "outcome": list(PAL_OUTCOMES),
    }
    return Encoded(
        data=data,
        coords=coords,
        dims={
            "theta": ["group", "attribute"], "w": ["annotator", "group"],
            "beta": ["annotator", "attribute"], "M": ["attribute", "attribute_other"],
            "proto": ["group", "attribute"], "pi": ["group"], "y_rep": ["cell", "outcome"],
        },
        observed={"y": cells.counts},
        constant={"X_a": cells.A, "X_b": cells.B, "order": cells.order,
                  "annotator_code": cells.annotator, "cell_of_row": cells.cell_of_row},
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": v["log_lik"]},
        log_lik_dims={"y": ["annotator"]},
        # the Cholesky factor is kept only through M
        drop=("log_lik", "L_M"),
        optional_scalars=("gamma",),
        label_dim="group",
        extra_attrs={"order_effect": int(has_order)},
    )


SPEC = register(
    ModelSpec(
        name="pal",
        program_file="pal_ideal_point.stan",
        summary="PAL model A: K prototype ideal points, users in their convex hull, full-rank "
        "linear map (metric M), logistic link on squared-distance differences",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
        needs_K=True,
    )
)


# ---------------------------------------------------------------------- simulation
def log_odds(M: np.ndarray, beta: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``beta_i' (a - b) - (a' M a - b' M b)`` per judgement.

    ``M`` is (D, D), ``beta`` (N, D) (the judging user's utility) and ``A`` / ``B`` (N, D).
    """
    return np.sum((A - B) * beta, axis=1) - np.sum(((A - B) @ M) * (A + B), axis=1)


def distance_log_odds(W: np.ndarray, ideal: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """PAL's form ``||W (b - a_i)||^2 - ||W (a - a_i)||^2``; ``ideal`` is (N, D).

    Equal to :func:`log_odds` with M = W'W and beta_i = 2 M a_i (the reparameterisation the Stan
    program samples).
    """
    return np.sum(((B - ideal) @ W.T) ** 2, axis=1) - np.sum(((A - ideal) @ W.T) ** 2, axis=1)


def simulate(
    K: int = 3,
    *,
    n_annotators: int = 60,
    judgements: int = 40,
    n_attributes: int = 3,
    n_items: int = 40,
    item_sd: float | None = None,
    M: np.ndarray | None = None,
    theta: np.ndarray | None = None,
    W_sd: float = 1.0,
    theta_sd: float = 2.5,
    w_alpha: float | Sequence[float] = 1.0,
    partition: bool = False,
    seed: int | None = None,
) -> Comparisons:
    """Simulate PAL model A with a linear map (the generative model of ``pal_ideal_point.stan``).

    A pool of ``n_items`` options has attributes x ~ normal(0, item_sd^2 I_D) (PAL section 4.1:
    item_sd = 1 / sqrt(D), the default). Unless given, M = W'W with W iid normal(0, W_sd) (D x D)
    and the prototype utilities theta_k ~ normal(0, theta_sd). Each annotator has weights
    w_i ~ Dirichlet(w_alpha) (PAL's *mixture* setting) or, with ``partition=True``, sits on
    prototype ``i mod K`` (PAL's *partition* setting, the alpha -> 0 limit). Each annotator
    judges ``judgements`` pairs of distinct items drawn uniformly, each independently with
    P(a > b) = logistic(beta_i'(a - b) - (a'Ma - b'Mb)).

    Returns
    -------
    Comparisons
        Attribute-mode table with ``annotator`` (0..I-1) and ``pair`` ids; ``truth`` holds
        ``M``, ``theta`` (K, D), ``proto`` (K, D; the ideal points M^{-1} theta_k / 2), ``w``
        (I, K), ``beta`` (I, D), ``ideal`` (I, D; the users' ideal points) and ``pi``.
    """
    if n_items < 2 or judgements < 1 or n_attributes < 1:
        raise PluralstanError("n_items must be at least 2, judgements and n_attributes at least 1")
    _check_K(K, n_annotators)
    rng = np.random.default_rng(seed)
    D = n_attributes
    sd = 1.0 / np.sqrt(D) if item_sd is None else float(item_sd)
    items = rng.normal(0.0, sd, size=(n_items, D))
    if M is None:
        W = rng.normal(0.0, W_sd, size=(D, D))
        M = W.T @ W
    M = np.asarray(M, dtype=float)
    theta = rng.normal(0.0, theta_sd, size=(K, D)) if theta is None else np.asarray(theta, float)
    if M.shape != (D, D) or theta.shape != (K, D):
        raise PluralstanError(f"M must be ({D}, {D}) and theta ({K}, {D}); got {M.shape} and "
                              f"{theta.shape}")
    if partition:
        w = np.eye(K)[np.arange(n_annotators) % K]
    else:
        w = rng.dirichlet(broadcast_prior(w_alpha, K, "w_alpha"), size=n_annotators)
    beta = w @ theta
    ann = np.repeat(np.arange(n_annotators), judgements)
    first = rng.integers(0, n_items, size=ann.size)
    second = (first + rng.integers(1, n_items, size=ann.size)) % n_items  # distinct from first
    A, B = items[first], items[second]
    y = rng.uniform(size=ann.size) < expit(log_odds(M, beta[ann], A, B))
    names = [f"x{j + 1}" for j in range(D)]
    frame = pd.DataFrame({"annotator": ann, "pair": first * n_items + second, "y": y.astype(float)})
    frame = frame.join(pd.DataFrame(A, columns=[f"a_{n}" for n in names]))
    frame = frame.join(pd.DataFrame(B, columns=[f"b_{n}" for n in names]))
    truth = {"M": M, "theta": theta, "proto": 0.5 * np.linalg.solve(M, theta.T).T, "w": w,
             "beta": beta, "ideal": 0.5 * np.linalg.solve(M, beta.T).T, "pi": w.mean(axis=0)}
    return Comparisons.from_frame(frame, truth=truth)


def train_test_split(
    comps: Comparisons, *, test_per_user: int, n_unseen: int = 0
) -> tuple[Comparisons, Comparisons, Comparisons | None]:
    """PAL's evaluation split: seen users' training / held-out judgements, and unseen users.

    The last ``n_unseen`` annotators (first-seen order) are unseen: all their judgements go to
    the third table. Of every other annotator the last ``test_per_user`` judgements (table
    order) are held out.
    """
    levels = pd.Index(comps.annotator_levels)
    if not 0 <= n_unseen < len(levels):
        raise PluralstanError(f"n_unseen must lie in 0..{len(levels) - 1}, got {n_unseen}")
    code = comps.codes("annotator")
    unseen = code >= len(levels) - n_unseen
    position = comps.frame.groupby("annotator", sort=False).cumcount(ascending=False).to_numpy()
    test = ~unseen & (position < test_per_user)
    train = ~unseen & ~test
    short = pd.Index(comps.frame.loc[~unseen, "annotator"]).difference(
        pd.Index(comps.frame.loc[train, "annotator"]))
    if len(short):
        raise PluralstanError(
            f"annotator {short[0]!r} has no more than test_per_user = {test_per_user} "
            "judgements, so none would be left to train on"
        )
    new = comps.subset(np.flatnonzero(unseen)) if n_unseen else None
    return comps.subset(np.flatnonzero(train)), comps.subset(np.flatnonzero(test)), new


def true_probability(comps: Comparisons) -> np.ndarray:
    """P(a > b) per judgement under the simulation truth (annotator ids index ``beta``)."""
    truth = comps.truth or {}
    if "M" not in truth or "beta" not in truth:
        raise PluralstanError("this table carries no PAL simulation truth (see pal.simulate)")
    A, B = comps.options()
    ann = comps.frame["annotator"].to_numpy().astype(np.int64)
    return expit(log_odds(truth["M"], truth["beta"][ann], A, B))


# ---------------------------------------------------------------------- prediction
def _check_attributes(idata: _arviz.Idata, comps: Comparisons) -> None:
    fitted = [str(v) for v in _arviz.group(idata, "posterior")["attribute"].values]
    if fitted != [str(v) for v in comps.attributes]:
        raise PluralstanError(
            f"the table's attributes {list(comps.attributes)} differ from the fitted model's "
            f"{fitted}; give options with the same attributes in the same order"
        )


def _design(comps: Comparisons) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    A, B = comps.options()
    dims = ("comparison", "attribute")
    coords = {"attribute": list(comps.attributes)}
    return (xr.DataArray(A - B, dims=dims, coords=coords),
            xr.DataArray(A + B, dims=dims, coords=coords),
            xr.DataArray(comps.order_sign(), dims=("comparison",)))


def _seen_codes(idata: _arviz.Idata, comps: Comparisons) -> np.ndarray:
    index = pd.Index(_arviz.group(idata, "posterior")["annotator"].values)
    code = index.get_indexer(comps.frame["annotator"])
    if np.any(code < 0):
        who = comps.frame["annotator"][code < 0].iloc[0]
        raise PluralstanError(
            f"annotator {who!r} was not in the fit ({int(np.sum(code < 0))} judgement(s) of "
            "unknown annotators); localise new users with pal.fit_new_users first"
        )
    return code


def _eta(beta: xr.DataArray, M: xr.DataArray, gamma: xr.DataArray | float,
         design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]) -> xr.DataArray:
    """Log-odds beta'(a - b) - (a - b)' M (a + b) + gamma order, broadcast by xarray."""
    X_diff, X_sum, order = design
    quad = xr.dot(X_diff, xr.dot(M, X_sum.rename(attribute="attribute_other"),
                                 dim="attribute_other"), dim="attribute")
    return xr.dot(X_diff, beta, dim="attribute") - quad + gamma * order


def preference_probability(
    idata_seen: _arviz.Idata,
    comps: Comparisons,
    idata_new: _arviz.Idata | None = None,
) -> xr.DataArray:
    """Posterior draws of P(a > b) for every judgement of ``comps``.

    Parameters
    ----------
    idata_seen
        A ``"pal"`` fit.
    comps
        Judgements of annotators in ``idata_seen`` (or, with ``idata_new``, in ``idata_new``);
        their outcomes are not used.
    idata_new
        A :func:`fit_new_users` result; each of its draws is paired with the seen-fit draw of the
        shared parameters it was localised under.

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw, comparison)``.
    """
    _check_attributes(idata_seen, comps)
    post = _arviz.group(idata_seen, "posterior")
    design = _design(comps)
    if idata_new is None:
        code = xr.DataArray(_seen_codes(idata_seen, comps), dims="comparison")
        beta, M = post["beta"].isel(annotator=code), post["M"]
        gamma = post["gamma"] if "gamma" in post else 0.0
    else:
        code = xr.DataArray(_seen_codes(idata_new, comps), dims="comparison")
        new = _arviz.group(idata_new, "posterior")
        names = ["M", "theta"] + (["gamma"] if "gamma" in post else [])
        flat = post[names].stack(sample=("chain", "draw"))
        flat = flat.drop_vars(["sample", "chain", "draw"])
        # Stan's integer outputs arrive as floats from some engines
        draw_index = new["seen_draw"].values.astype(np.int64) - 1
        pick = _arviz.group(idata_new, "constant_data")["seen_sample"].values[draw_index]
        pick = xr.DataArray(pick, dims=("chain", "draw", "annotator"),
                            coords={"chain": new.chain, "draw": new.draw})
        shared = flat.isel(sample=pick).isel(annotator=code)
        beta = xr.dot(new["w"].isel(annotator=code), shared["theta"], dim="group")
        M = shared["M"]
        gamma = shared["gamma"] if "gamma" in shared else 0.0
    eta = _eta(beta, M, gamma, design)
    return xr.apply_ufunc(expit, eta).transpose("chain", "draw", "comparison")


def _population_probability(post: xr.Dataset, comps: Comparisons) -> xr.DataArray:
    """P(a > b) per posterior draw, seen annotator and judgement of ``comps``."""
    gamma = post["gamma"] if "gamma" in post else 0.0
    return xr.apply_ufunc(expit, _eta(post["beta"], post["M"], gamma, _design(comps)))


def agreement(idata: _arviz.Idata, comps: Comparisons, *, n_draws: int = 100) -> xr.DataArray:
    """Posterior mean probability that two seen users pick the same option, over the table's pairs.

    For users i, j and an option pair, the chance of agreeing is p_i p_j + (1 - p_i)(1 - p_j)
    with p = P(a > b); it is averaged over the distinct option pairs of ``comps`` and
    ``n_draws`` thinned posterior draws. Rotation-invariant, hence identified.

    Returns
    -------
    xarray.DataArray
        Dims ``("annotator", "annotator_other")``.
    """
    _check_attributes(idata, comps)
    A, B = comps.options()
    _, keep = np.unique(np.hstack([A, B]), axis=0, return_index=True)
    pairs = dataclasses.replace(comps, frame=comps.frame.iloc[np.sort(keep)].reset_index(drop=True))
    post = _arviz.group(idata, "posterior").stack(sample=("chain", "draw"))
    take = np.linspace(0, post.sizes["sample"] - 1, min(n_draws, post.sizes["sample"])).astype(int)
    p = _population_probability(post.isel(sample=take), pairs)
    p = p.transpose("sample", "annotator", "comparison").values
    same = (np.einsum("sic,sjc->ij", p, p) + np.einsum("sic,sjc->ij", 1 - p, 1 - p)) / (
        p.shape[0] * p.shape[2])
    ann = _arviz.group(idata, "posterior")["annotator"].values
    return xr.DataArray(same, dims=("annotator", "annotator_other"),
                        coords={"annotator": ann, "annotator_other": ann})


# ---------------------------------------------------------------------- unseen users
def _fit_priors(idata: _arviz.Idata) -> dict[str, Any]:
    raw = _arviz.group(idata, "posterior").attrs.get("priors")
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})


def fit_new_users(
    idata_seen: _arviz.Idata,
    comps_new: Comparisons,
    *,
    n_draws: int = 100,
    w_alpha: float | Sequence[float] | None = None,
    chains: int = 2,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 1,
    adapt_delta: float = 0.8,
    backend: str = "auto",
    check: bool = True,
) -> _arviz.Idata:
    """Localise unseen users from a few judgements, the shared parameters held at their posterior.

    ``n_draws`` evenly thinned posterior draws of (M, theta, gamma) from ``idata_seen``
    enter ``pal_new_users.stan`` as data; each new user's weights get the posterior
    p(w_j | y_j, y_seen), the mixture over those draws reweighted by the user's own judgements
    (not a plug-in of the posterior mean).

    Parameters
    ----------
    idata_seen
        A ``"pal"`` fit.
    comps_new
        Judgements of users not in ``idata_seen``, on options with the same attributes.
    n_draws
        Number of posterior draws of the shared parameters to carry over.
    w_alpha
        Dirichlet concentration of the new users' weights (default: the seen fit's).
    chains, draws, warmup, seed, adapt_delta, backend, check
        As for :func:`pluralstan.fit`.

    Returns
    -------
    arviz.InferenceData
        Posterior ``w`` (annotator, group) and ``seen_draw`` (the 1-based index, into
        ``constant_data.seen_sample``, of the carried-over draw paired with each draw),
        annotator-level ``log_likelihood``, ``posterior_predictive`` ``y`` per cell.
    """
    seen_post = _arviz.group(idata_seen, "posterior")
    if "M" not in seen_post or "theta" not in seen_post:
        raise PluralstanError("idata_seen is not a 'pal' fit (it has no M / theta posterior)")
    _check_attributes(idata_seen, comps_new)
    _check_no_ties(comps_new, "fit_new_users")
    seen = pd.Index(_arviz.group(idata_seen, "posterior")["annotator"].values)
    overlap = pd.Index(comps_new.annotator_levels).intersection(seen)
    if len(overlap):
        raise PluralstanError(
            f"annotator {overlap[0]!r} of comps_new was seen in the fit ({len(overlap)} such); "
            "new users must be unseen (use preference_probability for seen users)"
        )
    flat = _arviz.group(idata_seen, "posterior").stack(sample=("chain", "draw"))
    total = flat.sizes["sample"]
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or not 1 <= n_draws <= total:
        raise PluralstanError(f"n_draws must be an integer in 1..{total}, got {n_draws!r}")
    sample = np.linspace(0, total - 1, n_draws).round().astype(np.int64)
    flat = flat.isel(sample=sample)
    K = flat.sizes["group"]
    alpha = w_alpha if w_alpha is not None else _fit_priors(idata_seen).get("prior_w_alpha", 1.0)
    cells = _cells(comps_new)
    gamma = (flat["gamma"].values if "gamma" in flat else np.zeros(n_draws))
    data = {
        "J": len(comps_new.annotator_levels), "K": K, "D": len(comps_new.attributes),
        "S": n_draws,
        "L_M": np.linalg.cholesky(flat["M"].transpose("sample", ...).values),
        "theta": flat["theta"].transpose("sample", "group", "attribute").values,
        "gamma": gamma, "C": len(cells.counts), "X_a": cells.A, "X_b": cells.B,
        "user": cells.annotator + 1, "order": cells.order, "y": cells.counts,
        "prior_w_alpha": broadcast_prior(alpha, K, "w_alpha"), "prior_only": 0,
    }
    enc = Encoded(
        data=data,
        coords={"annotator": list(comps_new.annotator_levels), "group": np.arange(K),
                "cell": np.arange(len(cells.counts)), "outcome": list(PAL_OUTCOMES)},
        dims={"w": ["annotator", "group"], "seen_draw": ["annotator"],
              "y_rep": ["cell", "outcome"]},
        observed={"y": cells.counts},
        constant={"seen_sample": sample, "X_a": cells.A, "X_b": cells.B,
                  "user_code": cells.annotator},
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": v["log_lik"]},
        log_lik_dims={"y": ["annotator"]},
        drop=("log_lik",),
    )
    from ..pipeline import run  # here: the pipeline imports the models

    config = SamplerConfig(chains, draws, warmup, seed, adapt_delta)
    config.validate()
    return run(load_program("pal_new_users.stan"), enc, config, comps_new,
               model="pal_new_users", backend=backend, check=check, var_names=["w"],
               extra={"K": K, "n_draws": n_draws,
                      "priors": {"prior_w_alpha": data["prior_w_alpha"].tolist()}})


# ---------------------------------------------------------------------- accuracy
def _scores(p: xr.DataArray, comps: Comparisons) -> dict[str, float]:
    """Accuracy (posterior-mean probability thresholded at 1/2) and mean log predictive density."""
    p_bar = p.mean(("chain", "draw")).values
    y = comps.frame["y"].to_numpy()
    hit = np.where(p_bar == 0.5, 0.5, (p_bar > 0.5) == (y == 1))
    acc = float(np.mean(hit))
    return {
        "judgements": len(y),
        "accuracy": acc,
        "accuracy_se": float(np.sqrt(acc * (1 - acc) / len(y))),
        "log_score": float(np.mean(np.where(y == 1, np.log(p_bar), np.log1p(-p_bar)))),
    }


def _oracle(comps: Comparisons) -> float:
    """Accuracy of the true probabilities on the same judgements (NaN without truth)."""
    try:
        p = true_probability(comps)
    except PluralstanError:
        return np.nan
    y = comps.frame["y"].to_numpy()
    return float(np.mean((p > 0.5) == (y == 1)))


def _zero_shot(idata_seen: _arviz.Idata, comps: Comparisons) -> xr.DataArray:
    """P(a > b) for a user drawn from the seen population: averaged over the seen users."""
    p = _population_probability(_arviz.group(idata_seen, "posterior"), comps).mean("annotator")
    return p.transpose("chain", "draw", "comparison")


def _relabel(comps: Comparisons, rows: np.ndarray, suffix: str) -> Comparisons:
    """Rows of ``comps`` with annotator ids ``"<id>@<suffix>"`` (no re-validation needed)."""
    frame = comps.frame.iloc[rows].reset_index(drop=True)
    frame["annotator"] = [f"{a}@{suffix}" for a in frame["annotator"]]
    return dataclasses.replace(comps, frame=frame, annotators=None)


def accuracy(
    idata_seen: _arviz.Idata,
    test_seen: Comparisons | None = None,
    comps_new: Comparisons | None = None,
    *,
    shots: Sequence[int] = (0, 1, 2, 5, 10, 20),
    n_draws: int = 100,
    chains: int = 2,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 1,
    backend: str = "auto",
) -> pd.DataFrame:
    """Seen, zero-shot and few-shot held-out accuracy, as PAL reports them (its Fig. 2d, 4d).

    * ``seen``: held-out judgements ``test_seen`` of users in the fit (unseen pairs, seen users).
    * ``unseen``, ``shots = n``: each user of ``comps_new`` is localised from their first ``n``
      judgements (table order) with :func:`fit_new_users` and scored on their judgements after
      the first ``max(shots)``, so every point of the curve uses the same test judgements. All
      shot counts are localised in one Stan run (each (user, n) is its own pseudo-user).
      ``n = 0`` is PAL's zero-shot prediction: P(a > b) averaged over the seen users.

    A prediction is the posterior mean of P(a > b) thresholded at 1/2.

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``setting``, ``shots`` (<NA> for seen), ``users``, ``judgements``,
        ``accuracy``, ``accuracy_se`` (binomial), ``log_score`` (mean log predictive
        probability), ``oracle_accuracy`` (the true probabilities' accuracy on the same
        judgements, for simulated data; else NaN) and ``diagnostics``
        (:func:`pluralstan.diagnostics.flag` of the fits involved).
    """
    rows: list[dict[str, Any]] = []
    seen_flag = diagnostics.flag(idata_seen)
    if test_seen is not None:
        p = preference_probability(idata_seen, test_seen)
        rows.append({"setting": "seen", "shots": pd.NA,
                     "users": len(test_seen.annotator_levels), **_scores(p, test_seen),
                     "oracle_accuracy": _oracle(test_seen), "diagnostics": seen_flag})
    if comps_new is not None:
        rows += _unseen_rows(idata_seen, comps_new, shots, seen_flag,
                             {"n_draws": n_draws, "chains": chains, "draws": draws,
                              "warmup": warmup, "seed": seed, "backend": backend})
    table = pd.DataFrame(rows)
    if len(table):
        table["shots"] = table["shots"].astype("Int64")
    return table


def _unseen_rows(idata_seen: _arviz.Idata, comps_new: Comparisons, shots: Sequence[int],
                 seen_flag: str, fit_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    shots = sorted({int(n) for n in shots})
    if not shots or shots[0] < 0:
        raise PluralstanError(f"shots must be non-negative integers, got {shots}")
    position = comps_new.frame.groupby("annotator", sort=False).cumcount().to_numpy()
    counts = comps_new.frame["annotator"].value_counts()
    short = counts[counts <= shots[-1]]
    if len(short):
        raise PluralstanError(
            f"new user {short.index[0]!r} has {short.iloc[0]} judgement(s); every new user needs "
            f"more than max(shots) = {shots[-1]} (the rest are the test judgements)"
        )
    test_rows = np.flatnonzero(position >= shots[-1])
    test = comps_new.subset(test_rows)
    oracle = _oracle(test)
    n_users = len(comps_new.annotator_levels)
    out = []
    if shots[0] == 0:
        out.append({"setting": "unseen", "shots": 0, "users": n_users,
                    **_scores(_zero_shot(idata_seen, test), test),
                    "oracle_accuracy": oracle, "diagnostics": seen_flag})
    positive = [n for n in shots if n > 0]
    if positive:
        train = [_relabel(comps_new, np.flatnonzero(position < n), str(n)) for n in positive]
        frame = pd.concat([c.frame for c in train], ignore_index=True)
        idata_new = fit_new_users(idata_seen, dataclasses.replace(train[0], frame=frame),
                                  **fit_kwargs)
        flag = " ".join(f for f in (seen_flag, diagnostics.flag(idata_new)) if f)
        for n in positive:
            tested = _relabel(comps_new, test_rows, str(n))
            p = preference_probability(idata_seen, tested, idata_new)
            out.append({"setting": "unseen", "shots": n, "users": n_users,
                        **_scores(p, tested), "oracle_accuracy": oracle, "diagnostics": flag})
    return out


__all__ = [
    "DEFAULT_PRIORS", "accuracy", "agreement", "distance_log_odds", "encode", "fit_new_users",
    "log_odds", "preference_probability", "simulate", "train_test_split", "true_probability",
]

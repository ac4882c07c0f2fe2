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
(:func:`pluralstan.checks.pal_users.preference_probability`) and user-by-user agreement
(:func:`~pluralstan.checks.pal_users.agreement`). The prototypes
(vertices of a simplex containing the users' beta_i) and hence the weights w_i are only weakly
identified: a larger simplex fits equally well and only the priors pull the vertices in.

Prediction for seen and unseen users (PAL section 3.3.1), new-user fits and held-out accuracy
are in :mod:`pluralstan.checks.pal_users`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from ..data import Cells, Comparisons
from ..errors import IdentificationWarning, PluralstanError
from .base import (
    Encoded,
    ModelSpec,
    broadcast_prior,
    check_K,
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
def pal_cells(comps: Comparisons) -> Cells:
    """Counts per distinct (option a, option b, order, annotator), columns (b, a).

    Keyed on both options, not on a - b as the linear models are: the ideal-point log-odds
    depend on a + b too. PAL has no tie outcome (checked by the callers).
    """
    cells = comps.cells(by=("annotator",), options=True)
    return dataclasses.replace(cells, counts=cells.counts[:, :2])


def check_no_ties(comps: Comparisons, what: str) -> None:
    if comps.has_ties:
        rows = np.flatnonzero(comps.frame["y"].to_numpy() == 0.5)
        raise PluralstanError(
            f"{what}: outcome column 'y' has ties (0.5) at rows {list(rows[:5])}; the PAL model "
            "has no tie outcome (accepted: 1 a preferred, 0 b preferred); drop the tied rows"
        )


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
    replicate: bool = True,
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
    replicate
        Generate replicated data ``y_rep`` (posterior predictive checks, SBC). Its cells x 2
        counts per draw are most of what the program writes; skip them when they are not used.

    Raises
    ------
    PluralstanError
        For K out of range, ties, or bad or unknown prior values.
    """
    p = merge_priors(DEFAULT_PRIORS, priors)
    require_annotators(comps)
    annotators = comps.annotator_levels
    K = check_K(K, "prototypes", n_annotators=len(annotators))
    check_no_ties(comps, "pal")
    D = len(comps.attributes)
    has_order = comps.has_order if order is None else bool(order) and comps.has_order
    cells = pal_cells(comps)
    _check_translation(cells.A, cells.B)
    sd = {name: scalar_prior(p[name], name) for name in ("W_sd", "theta_sd", "order_sd")}
    alpha = positive(broadcast_prior(p["w_alpha"], K, "w_alpha"), "w_alpha")
    data = {
        "I": len(annotators), "K": K, "D": D, "C": len(cells.counts),
        "X_a": cells.A, "X_b": cells.B, "annotator": cells.annotator + 1,
        "order": cells.order, "has_order": int(has_order), "y": cells.counts,
        "prior_W_sd": sd["W_sd"], "prior_theta_sd": sd["theta_sd"],
        "prior_w_alpha": alpha, "prior_order_sd": sd["order_sd"], "prior_only": 0,
        "replicate": int(replicate),
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
        derive=derive_outputs,
    )


def derive_outputs(values: Mapping[str, np.ndarray], data: Mapping[str, Any]
                   ) -> dict[str, np.ndarray]:
    """The users' utilities ``beta_i = sum_k w_ik theta_k`` of every draw.

    They are computed here from the draws of ``w`` and ``theta`` rather than written by the
    program: PyStan sends every value of every draw as JSON text, and users x attributes values
    per draw cost it far more than this product costs NumPy.
    """
    return {"beta": np.einsum("...ik,...kd->...id", values["w"], values["theta"])}


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
    check_K(K, "prototypes", n_annotators=n_annotators)
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

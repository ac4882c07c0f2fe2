"""Reference log densities of pluralstan's Stan programs, in NumPy/SciPy, for the tests.

Each function is written from the model's equations (the program's header comment and the
position paper), judgement by judgement, straight from the comparison table's columns: no cells,
no sufficient statistics, no sparse products, and nothing imported from the code under test
(``pluralstan.data.Comparisons.design`` and the model modules are not used, so an encoding or
sign error there cannot cancel out). The tests compare these against the Stan log density and
the programs' generated ``log_lik`` / ``lprior`` (``tests/test_reference_likelihoods.py``).

Notation: eta = (a - b)' theta + gamma * order is the log-odds that option a is preferred,
order = +1 when a was shown first, -1 when b was, 0 when unknown. Outcomes are coded
0 = b preferred, 1 = a preferred, 2 = tie. Davidson (1970) ties:
P(a) = exp(eta / 2) / D, P(b) = exp(-eta / 2) / D, P(tie) = nu / D,
D = exp(eta / 2) + exp(-eta / 2) + nu; without ties P(a) = 1 / (1 + exp(-eta)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from scipy.linalg import helmert
from scipy.optimize import minimize
from scipy.special import expit, log_expit, log_softmax, logsumexp


@dataclass(frozen=True)
class Judgements:
    """The judgements of a comparison table as plain arrays (one row per judgement).

    Attributes
    ----------
    A, B
        ``(N, P)`` attributes of option a and option b.
    order
        ``(N,)`` +1 a shown first, -1 b shown first, 0 not recorded.
    outcome
        ``(N,)`` 0 b preferred, 1 a preferred, 2 tie.
    group, annotator
        ``(N,)`` 0-based positions of each judgement's label in the given levels (``None`` when
        the column is absent): the row of a per-group or per-annotator parameter array.
    """

    A: np.ndarray
    B: np.ndarray
    order: np.ndarray
    outcome: np.ndarray
    group: np.ndarray | None
    annotator: np.ndarray | None

    @property
    def X(self) -> np.ndarray:
        """``(N, P)`` attribute difference a - b."""
        return self.A - self.B


def _positions(column: pd.Series, levels: list | None) -> np.ndarray:
    """Position of every value of ``column`` in ``levels`` (default: order of first appearance).
    Labels are matched as text, since fits may store coordinates as strings."""
    if levels is None:
        levels = list(pd.unique(column))
    lookup = {str(level): i for i, level in enumerate(levels)}
    return np.array([lookup[str(value)] for value in column], dtype=np.int64)


def judgements(frame: pd.DataFrame, attributes: list[str], *, group_levels: list | None = None,
               annotator_levels: list | None = None) -> Judgements:
    """Read an attribute-mode comparison table (``a_<attr>``, ``b_<attr>``, ``y``, optional
    ``order`` in {0, 1}, ``group``, ``annotator``) into :class:`Judgements`.

    ``group_levels`` / ``annotator_levels`` list the labels in the order of the parameter arrays
    the judgements will index (a fit's ``group`` / ``annotator`` coordinates).
    """
    A = frame[[f"a_{n}" for n in attributes]].to_numpy(float)
    B = frame[[f"b_{n}" for n in attributes]].to_numpy(float)
    order = (2.0 * frame["order"].to_numpy(float) - 1.0) if "order" in frame else np.zeros(len(A))
    y = frame["y"].to_numpy(float)
    outcome = np.select([y == 0.0, y == 1.0, y == 0.5], [0, 1, 2], default=-1)
    if np.any(outcome < 0):
        raise ValueError("y must be 0, 1 or 0.5")
    group = _positions(frame["group"], group_levels) if "group" in frame else None
    annotator = (_positions(frame["annotator"], annotator_levels) if "annotator" in frame
                 else None)
    return Judgements(A, B, order, outcome, group, annotator)


# ---------------------------------------------------------------------------- likelihoods
def outcome_log_probs(eta: np.ndarray, log_nu: float | None = None) -> np.ndarray:
    """Log probabilities of (b preferred, a preferred[, tie]) along a new last axis.

    ``log_nu=None``: the logistic (binomial) model, two outcomes. Otherwise Davidson's, three.
    """
    eta = np.asarray(eta, dtype=float)
    if log_nu is None:
        log_d = np.logaddexp(0.0, eta)  # log(1 + exp(eta))
        return np.stack([-log_d, eta - log_d], axis=-1)
    terms = np.stack([-eta / 2, eta / 2, np.full_like(eta, log_nu)], axis=-1)
    return terms - logsumexp(terms, axis=-1, keepdims=True)


def judgement_log_lik(eta: np.ndarray, outcome: np.ndarray, log_nu: float | None = None
                      ) -> np.ndarray:
    """Log probability of each judgement's own outcome; ``eta`` and ``outcome`` ``(N,)``."""
    lp = outcome_log_probs(eta, log_nu)
    return np.take_along_axis(lp, outcome[:, None], axis=-1)[:, 0]


def aggregate_log_lik(j: Judgements, theta: np.ndarray, gamma: float = 0.0,
                      log_nu: float | None = None) -> np.ndarray:
    """``(N,)`` per-judgement log likelihood of the aggregate model (``aggregate_bt.stan``)."""
    return judgement_log_lik(j.X @ theta + gamma * j.order, j.outcome, log_nu)


def labeled_log_lik(j: Judgements, theta: np.ndarray, gamma: float = 0.0,
                    log_nu: float | None = None) -> np.ndarray:
    """``(N,)`` per-judgement log likelihood of the labeled model: judgement n uses the row of
    ``theta`` (``(K, P)``) of its observed group."""
    eta = np.einsum("np,np->n", j.X, theta[j.group]) + gamma * j.order
    return judgement_log_lik(eta, j.outcome, log_nu)


def unlabeled_log_lik(j: Judgements, theta: np.ndarray, pi: np.ndarray, gamma: float = 0.0,
                      log_nu: float | None = None) -> np.ndarray:
    """``(N,)`` per-judgement log likelihood of the unlabeled mixture: the group of every
    judgement is marginalised, log sum_k pi_k P_k(outcome_n)."""
    per_k = np.stack([judgement_log_lik(j.X @ theta[k] + gamma * j.order, j.outcome, log_nu)
                      for k in range(len(pi))], axis=-1)
    return logsumexp(per_k + np.log(pi), axis=-1)


def per_unit(values: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    """Sum per-judgement values over each unit (annotator): ``(..., N) -> (..., n_units)``."""
    out = np.zeros((*values.shape[:-1], n_units))
    for i in range(n_units):
        out[..., i] = values[..., unit == i].sum(axis=-1)
    return out


def type_log_lik(j: Judgements, theta: np.ndarray, gamma: float = 0.0,
                  log_nu: float | None = None) -> np.ndarray:
    """``(I, K)`` log p(y_i | theta_k): every judgement of annotator i scored under type k's
    preference vector (``theta`` ``(K, P)``) and summed per annotator, the annotators being the
    positions 0 .. I - 1 of ``j.annotator`` (annotator-level latent types: ``annotator_bt.stan``,
    ``covariate_bt.stan``)."""
    per_k = np.stack([judgement_log_lik(j.X @ theta[k] + gamma * j.order, j.outcome, log_nu)
                      for k in range(theta.shape[0])])  # (K, N)
    return per_unit(per_k, j.annotator, int(j.annotator.max()) + 1).T


def sum_to_zero(z: np.ndarray) -> np.ndarray:
    """Sum-to-zero coefficients from free coordinates: ``z`` ``(K - 1, Q)`` -> ``(K, Q)``
    = V z, V the transposed Helmert contrasts (SciPy's ``helmert``: orthonormal columns
    orthogonal to the ones vector), so every column sums to zero and keeps its length."""
    return helmert(z.shape[0] + 1).T @ z


def covariate_log_lik(j: Judgements, theta: np.ndarray, beta: np.ndarray, W: np.ndarray,
                      gamma: float = 0.0, log_nu: float | None = None) -> np.ndarray:
    """``(I,)`` log likelihood of each annotator under covariate-informed mixing: the types are
    marginalised with the annotator's own shares pi_i = softmax(beta w_i), ``beta`` ``(K, Q)``,
    ``W`` ``(I, Q)`` (row i = w_i), log sum_k pi_ik p(y_i | theta_k)."""
    return logsumexp(type_log_lik(j, theta, gamma, log_nu) + log_softmax(W @ beta.T, axis=1),
                     axis=1)


def sum_to_zero_normal_lpdf(beta: np.ndarray, scale: np.ndarray) -> float:
    """Log density, up to a constant, of the columns of ``beta`` ``(K, Q)`` (each summing to
    zero) under an isotropic normal on the sum-to-zero subspace, scale ``scale[q]`` for column q
    (Stan's ``sum_to_zero_vector beta_q ~ normal(0, scale_q)``): -||beta_q||^2 / (2 scale_q^2)
    plus a constant; computed as the normal density of all K entries, which differs from the
    density on the (K - 1)-dimensional subspace by a constant per column."""
    return normal_lpdf(beta, 0.0, np.broadcast_to(scale, beta.shape))


def pal_eta(j: Judgements, M: np.ndarray, beta: np.ndarray, gamma: float = 0.0) -> np.ndarray:
    """PAL model A's log-odds that a is preferred, from its utility form:
    beta_i'(a - b) - (a' M a - b' M b) + gamma * order, with beta ``(I, D)`` per annotator."""
    quad_a = np.einsum("nd,de,ne->n", j.A, M, j.A)
    quad_b = np.einsum("nd,de,ne->n", j.B, M, j.B)
    return np.einsum("nd,nd->n", beta[j.annotator], j.X) - (quad_a - quad_b) + gamma * j.order


def pal_distance_log_odds(A: np.ndarray, B: np.ndarray, ideal: np.ndarray, M: np.ndarray
                          ) -> np.ndarray:
    """PAL's own form (Chen et al. 2024, eq. 8, linear map W with M = W'W): the log-odds that a
    is preferred by a user with ideal point ``ideal`` is ||W (b - ideal)||^2 - ||W (a - ideal)||^2
    = (b - ideal)' M (b - ideal) - (a - ideal)' M (a - ideal); all arrays ``(N, D)`` but M."""
    da, db = A - ideal, B - ideal
    return np.einsum("nd,de,ne->n", db, M, db) - np.einsum("nd,de,ne->n", da, M, da)


def pal_log_lik(j: Judgements, M: np.ndarray, beta: np.ndarray, gamma: float = 0.0
                ) -> np.ndarray:
    """``(I,)`` log likelihood of each annotator's judgements under PAL (no ties)."""
    ll = judgement_log_lik(pal_eta(j, M, beta, gamma), j.outcome)
    return per_unit(ll, j.annotator, beta.shape[0])


def pal_new_users_log_lik(j: Judgements, M: np.ndarray, theta: np.ndarray, gamma: np.ndarray,
                          w: np.ndarray) -> np.ndarray:
    """``(S, J)`` log p(y_j | w_j, shared draw s) for new users j given S draws of the shared
    parameters: ``M`` ``(S, D, D)``, ``theta`` ``(S, K, D)``, ``gamma`` ``(S,)``;
    ``w`` ``(J, K)``."""
    return np.stack([pal_log_lik(j, M[s], w @ theta[s], gamma[s]) for s in range(len(gamma))])


# ---------------------------------------------------------------------------- priors
def normal_lpdf(x: np.ndarray, mean: np.ndarray | float, sd: np.ndarray | float) -> float:
    """Sum of independent normal log densities."""
    return float(np.sum(stats.norm.logpdf(x, loc=mean, scale=sd)))


def half_normal_lpdf(x: np.ndarray, sd: np.ndarray | float) -> float:
    """Sum of independent half-normal log densities (x >= 0)."""
    return float(np.sum(stats.halfnorm.logpdf(x, scale=sd)))


def dirichlet_lpdf(p: np.ndarray, alpha: np.ndarray) -> float:
    """Dirichlet log density; ``p`` ``(K,)`` or ``(n, K)`` (rows independent, summed)."""
    p = np.atleast_2d(p)
    return float(sum(stats.dirichlet.logpdf(row, alpha) for row in p))


def wishart_cholesky_lpdf(L: np.ndarray, nu: float, scale: np.ndarray) -> float:
    """Log density of the Cholesky factor ``L`` of W = L L' ~ Wishart(nu, scale): the Wishart
    density of W times the Jacobian of L -> L L', 2^D prod_k L_kk^(D - k + 1)."""
    D = L.shape[0]
    jacobian = D * np.log(2.0) + np.sum((D - np.arange(D)) * np.log(np.diag(L)))
    return float(stats.wishart.logpdf(L @ L.T, df=nu, scale=scale) + jacobian)


def multinomial_lpmf(counts: np.ndarray, p: np.ndarray) -> float:
    """Multinomial log probability of ``counts`` given probabilities ``p``."""
    return float(stats.multinomial.logpmf(counts, n=int(np.sum(counts)), p=p))


# ---------------------------------------------------------------------------- ML and Laplace
def logistic_mle(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Maximum-likelihood logistic regression without intercept, one row per judgement
    (y in {0, 1}), by SciPy's BFGS with the analytic gradient."""

    def nll(beta: np.ndarray) -> float:
        eta = X @ beta
        return -float(np.sum(y * log_expit(eta) + (1 - y) * log_expit(-eta)))

    def grad(beta: np.ndarray) -> np.ndarray:
        return -X.T @ (y - expit(X @ beta))

    res = minimize(nll, np.zeros(X.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-8})
    return res.x


def laplace_sd(X: np.ndarray, theta: np.ndarray, n: np.ndarray, prior_sd: float) -> np.ndarray:
    """Laplace sd of a binomial-logit model at ``theta``: sqrt(diag((H + I / prior_sd^2)^-1)),
    with H = X' diag(n p (1 - p)) X the exact Hessian of the negative log likelihood (``n``
    trials per row of ``X``) and the normal prior's precision."""
    p = expit(X @ theta)
    H = X.T @ (X * (n * p * (1 - p))[:, None]) + np.eye(X.shape[1]) / prior_sd**2
    return np.sqrt(np.diag(np.linalg.inv(H)))

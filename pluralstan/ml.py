"""Maximum-likelihood Bradley-Terry fits: the reference a Bayesian fit is checked against.

The Bradley-Terry log likelihood is concave in the linear predictor's coefficients (and, with
Davidson (1970) ties, jointly concave in the coefficients and ``log nu``), so Newton's method with
the exact Hessian converges quadratically to the unique maximum whenever one exists. The fits
here use SciPy's exact-Hessian trust-region method (``trust-exact``) on analytic gradients and
Hessians, then certify the optimum with the **Newton decrement** ``lambda^2 = g' H^{-1} g``:
for a concave log likelihood near its maximum, ``lambda^2 / 2`` estimates the log-likelihood gap
to the maximum, and the Newton step ``H^{-1} g`` estimates the distance of the estimate from the
maximiser. A fit counts as converged when that gap is below ``rtol`` times the log likelihood's
scale (``max(1, |loglik|)``); standard errors come from the exact observed information at the
optimum. A likelihood without a finite maximum (an item that never wins, complete separation)
fails this certificate and raises :class:`~pluralstan.errors.PluralstanError`.

Three likelihoods on cell counts ``n[:, (b, a, tie)]`` and design ``X`` (rows a - b):

``"binomial"``
    ``P(a > b) = logistic(x' theta)``; ties are refused.
``"halfwin"``
    A tie counts as half a win for each side (BradleyTerry2's ``win.adj``).
``"davidson"``
    Davidson (1970): ``P(a) : P(b) : P(tie) = exp(eta/2) : exp(-eta/2) : nu``, parameters
    ``(theta, log nu)``, the likelihood of pluralstan's aggregate program with ``ties="davidson"``.

:func:`penalised_mode` adds independent normal priors to the binomial likelihood: a posterior
mode that exists for any data, for pilots such as the labeled model's centring weights.

SciPy provides the optimiser; the log likelihoods, their derivatives and the certificate are
written here because no maintained Python package fits Davidson-tie Bradley-Terry models on a
general design (``choix`` fits item abilities without ties or covariates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import linprog, minimize
from scipy.special import expit, log_expit, log_softmax

from .errors import PluralstanError

Likelihood = Literal["binomial", "halfwin", "davidson"]

#: Default certificate: the estimated log-likelihood gap to the maximum, relative to its scale.
RTOL = 1e-12
#: Newton steps taken after the trust region stops (convergence is quadratic by then).
_POLISH_STEPS = 5


@dataclass(frozen=True)
class MLFit:
    """A certified maximum-likelihood fit.

    Attributes
    ----------
    estimate
        The maximiser, one entry per name in ``names``.
    se
        Standard errors from the exact observed information at ``estimate``.
    loglik
        Maximised log likelihood.
    gap
        Newton decrement ``lambda^2 / 2``: the estimated log-likelihood gap to the maximum.
    step
        Largest absolute entry of the Newton step ``H^{-1} g``: the estimated distance of any
        coordinate from the maximiser.
    iterations
        Trust-region iterations taken.
    names
        Parameter names (the attributes, then ``log_nu`` for Davidson ties).
    """

    estimate: np.ndarray
    se: np.ndarray
    loglik: float
    gap: float
    step: float
    iterations: int
    names: tuple[str, ...]

    def table(self) -> pd.DataFrame:
        """Estimates and standard errors, one row per parameter."""
        return pd.DataFrame({"estimate": self.estimate, "se": self.se},
                            index=pd.Index(self.names, name="parameter"))


Derivatives = tuple[float, np.ndarray, np.ndarray]


def _binomial(theta: np.ndarray, X: np.ndarray, wins: np.ndarray,
              total: np.ndarray) -> Derivatives:
    """Log likelihood, gradient and Hessian of ``wins ~ Binomial(total, logistic(X theta))``
    (fractional ``wins`` allowed, as for half-win ties)."""
    eta = X @ theta
    p = expit(eta)
    ll = float(np.sum(wins * log_expit(eta) + (total - wins) * log_expit(-eta)))
    grad = X.T @ (wins - total * p)
    hess = -(X.T * (total * p * (1.0 - p))) @ X
    return ll, grad, hess


def _davidson(params: np.ndarray, X: np.ndarray, counts: np.ndarray) -> Derivatives:
    """Log likelihood, gradient and Hessian of Davidson's tie model in ``(theta, log nu)``.

    Per cell, with ``D = exp(eta/2) + exp(-eta/2) + nu`` and outcome probabilities
    ``p_a, p_b, p_t``, ``log L = (n_a - n_b) eta / 2 + n_t log nu - m log D``;
    ``d log D / d eta = (p_a - p_b) / 2``, ``d log D / d log nu = p_t``,
    ``d2 / d eta2 = (p_a + p_b) / 4 - ((p_a - p_b) / 2)^2``, ``d2 / d log nu2 = p_t (1 - p_t)``,
    ``d2 / d eta d log nu = -p_t (p_a - p_b) / 2``.
    """
    theta, log_nu = params[:-1], params[-1]
    eta = X @ theta
    n_b, n_a, n_t = counts[:, 0], counts[:, 1], counts[:, 2]
    m = counts.sum(axis=1)
    logits = np.column_stack([-0.5 * eta, 0.5 * eta, np.full_like(eta, log_nu)])
    log_p = log_softmax(logits, axis=1)
    p_b, p_a, p_t = np.exp(log_p).T
    ll = float(np.sum(counts * log_p))
    half_diff = 0.5 * (p_a - p_b)
    d_eta = 0.5 * (n_a - n_b) - m * half_diff
    d_nu = float(np.sum(n_t - m * p_t))
    h_eta = -m * (0.25 * (p_a + p_b) - half_diff**2)
    h_nu = -float(np.sum(m * p_t * (1.0 - p_t)))
    h_cross = X.T @ (m * p_t * half_diff)
    P = X.shape[1]
    hess = np.empty((P + 1, P + 1))
    hess[:P, :P] = (X.T * h_eta) @ X
    hess[:P, P] = hess[P, :P] = h_cross
    hess[P, P] = h_nu
    return ll, np.append(X.T @ d_eta, d_nu), hess


def _objective(likelihood: Likelihood, X: np.ndarray,
               counts: np.ndarray) -> Callable[[np.ndarray], Derivatives]:
    """The chosen log likelihood as a function of the parameter vector."""
    if likelihood == "davidson":
        return lambda params: _davidson(params, X, counts)
    total = counts.sum(axis=1).astype(float)
    wins = counts[:, 1] + 0.5 * counts[:, 2]
    if likelihood == "binomial" and counts[:, 2].any():
        raise PluralstanError(
            "the binomial likelihood has no ties; use likelihood='davidson' or 'halfwin' for "
            f"the {int(counts[:, 2].sum())} tied judgements"
        )
    return lambda theta: _binomial(theta, X, wins, total)


def _diverging_direction(X: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """A direction along which the log likelihood increases without bound, if one exists.

    The likelihood has no finite maximum exactly when some ``d != 0`` never lowers the linear
    predictor of a cell's observed winners: ``x'd >= 0`` where only a won, ``x'd <= 0`` where only
    b won, ``x'd = 0`` where both won or a tie occurred, with one inequality strict (complete or
    quasi-complete separation; Albert & Anderson 1984). Found by a linear program (Konis 2007).
    """
    a_only = (counts[:, 1] > 0) & (counts[:, 0] == 0) & (counts[:, 2] == 0)
    b_only = (counts[:, 0] > 0) & (counts[:, 1] == 0) & (counts[:, 2] == 0)
    one_sided = np.where(a_only, 1.0, -1.0)[a_only | b_only, None] * X[a_only | b_only]
    two_sided = X[~(a_only | b_only) & (counts.sum(axis=1) > 0)]
    if not len(one_sided):
        return None
    res = linprog(-one_sided.sum(axis=0), A_ub=-one_sided, b_ub=np.zeros(len(one_sided)),
                  A_eq=two_sided if len(two_sided) else None,
                  b_eq=np.zeros(len(two_sided)) if len(two_sided) else None,
                  bounds=(-1.0, 1.0), method="highs")
    return res.x if res.status == 0 and -res.fun > 1e-9 else None


def _newton(grad: np.ndarray, hess: np.ndarray) -> tuple[np.ndarray, float]:
    """The Newton step ``-H^{-1} g`` and the decrement ``g' (-H)^{-1} g / 2``.

    Raises :class:`~pluralstan.errors.PluralstanError` when ``-H`` is not positive definite.
    """
    try:
        info = np.linalg.cholesky(-hess)
    except np.linalg.LinAlgError:
        raise PluralstanError(
            "the observed information is singular at the ML estimate: some direction of the "
            "design is not identified by these judgements (check for a disconnected comparison "
            "graph, a constant attribute or collinear columns)"
        ) from None
    step = np.linalg.solve(info.T, np.linalg.solve(info, grad))
    return step, 0.5 * float(grad @ step)


def fit_ml(
    X: np.ndarray,
    counts: np.ndarray,
    *,
    likelihood: Likelihood = "binomial",
    names: list[str] | tuple[str, ...] | None = None,
    rtol: float = RTOL,
    max_iter: int = 200,
) -> MLFit:
    """Maximum-likelihood Bradley-Terry fit, certified by the Newton decrement.

    Parameters
    ----------
    X
        Design, one row per cell: attribute (or one-hot item) differences a - b.
    counts
        Judgement counts per cell and outcome, columns ``(b, a, tie)`` (as
        :meth:`pluralstan.data.Comparisons.cells` returns them).
    likelihood
        ``"binomial"``, ``"halfwin"`` or ``"davidson"`` (see the module docstring).
    names
        Names of the columns of ``X`` (default ``x0, x1, ...``).
    rtol
        Largest accepted estimated log-likelihood gap to the maximum, relative to
        ``max(1, |loglik|)``.
    max_iter
        Trust-region iterations before giving up.

    Returns
    -------
    MLFit

    Raises
    ------
    PluralstanError
        When the design and counts do not match, the information matrix is singular (a
        direction of ``X`` the data cannot identify), or the optimum is not certified (no finite
        maximum, e.g. an item that never wins).
    """
    X = np.asarray(X, dtype=float)
    counts = np.asarray(counts)
    if X.ndim != 2 or counts.shape != (X.shape[0], 3):
        raise PluralstanError(
            f"design {X.shape} and counts {counts.shape} do not match: counts need one row per "
            "design row and three columns (b, a, tie)"
        )
    if likelihood not in ("binomial", "halfwin", "davidson"):
        raise PluralstanError(
            f"likelihood must be 'binomial', 'halfwin' or 'davidson', got {likelihood!r}")
    names = tuple(names) if names is not None else tuple(f"x{j}" for j in range(X.shape[1]))
    if likelihood == "davidson":
        names += ("log_nu",)
    derivs = _objective(likelihood, X, counts)
    direction = _diverging_direction(X, counts)
    if direction is not None:
        worst = int(np.argmax(np.abs(direction)))
        raise PluralstanError(
            f"the {likelihood} likelihood has no finite maximum: the judgements are separated "
            f"along a direction led by {names[worst]!r} (an item that never loses or never "
            "wins, or attributes that order every judgement); a Bayesian fit with a proper prior "
            "still works"
        )
    if likelihood == "davidson" and not counts[:, 2].any():
        raise PluralstanError("Davidson's tie parameter has no finite maximum without ties: "
                              "no judgement is a tie; use likelihood='binomial'")
    res = minimize(lambda x: tuple(-d for d in derivs(x)[:2]), np.zeros(len(names)), jac=True,
                   hess=lambda x: -derivs(x)[2], method="trust-exact",
                   options={"gtol": 1e-12, "maxiter": max_iter})
    estimate, (ll, grad, hess) = res.x, derivs(res.x)
    for _ in range(_POLISH_STEPS):  # trust-exact stops near the maximum: finish with Newton
        newton, gap = _newton(grad, hess)
        trial = estimate + newton
        derivs_trial = derivs(trial)
        if not derivs_trial[0] >= ll:  # no further progress at machine precision
            break
        estimate, (ll, grad, hess) = trial, derivs_trial
    newton, gap = _newton(grad, hess)
    if not gap <= rtol * max(1.0, abs(ll)):
        raise PluralstanError(
            f"the {likelihood} ML fit is not at a maximum after {res.nit} iterations: estimated "
            f"log-likelihood gap {gap:.3g} (criterion {rtol:g} x max(1, |loglik| = {abs(ll):.4g}))"
            " (the optimiser stalled: try a larger max_iter)"
        )
    cov = np.linalg.inv(-hess)
    return MLFit(estimate=estimate, se=np.sqrt(np.diag(cov)), loglik=ll, gap=gap,
                 step=float(np.max(np.abs(newton))), iterations=int(res.nit), names=names)


def penalised_mode(X: np.ndarray, counts: np.ndarray, prior_mean: np.ndarray,
                   prior_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mode of ``theta`` under the binomial Bradley-Terry likelihood and independent
    ``normal(prior_mean, prior_sd)`` priors, and the likelihood's Fisher information there.

    Unlike :func:`fit_ml` it always exists (the prior bounds it under separation), so it serves
    as a quick pilot (:func:`pluralstan.models.labeled.centring_weights`). Ties are left out:
    only the decided judgements (columns ``b`` and ``a`` of ``counts``) enter.

    Returns
    -------
    tuple of numpy.ndarray
        The mode ``(P,)`` and the information ``X' diag(n p (1 - p)) X`` at it ``(P, P)``.
    """
    X = np.asarray(X, dtype=float)
    wins, total = counts[:, 1].astype(float), (counts[:, 0] + counts[:, 1]).astype(float)
    precision = 1.0 / np.square(prior_sd)

    def negative(theta: np.ndarray) -> Derivatives:
        ll, grad, hess = _binomial(theta, X, wins, total)
        offset = theta - prior_mean
        return (-ll + 0.5 * float(precision @ np.square(offset)), precision * offset - grad,
                np.diag(precision) - hess)

    mode = minimize(lambda t: negative(t)[:2], np.asarray(prior_mean, dtype=float), jac=True,
                    hess=lambda t: negative(t)[2], method="trust-exact").x
    return mode, -_binomial(mode, X, wins, total)[2]

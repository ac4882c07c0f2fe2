"""The maximum-likelihood reference fits: derivatives, optimum, certificate and failures."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime

from pluralstan.errors import PluralstanError
from pluralstan.ml import _binomial, _davidson, fit_ml, penalised_mode


def _simulated_cells(seed: int, n_cells: int = 60, P: int = 3, ties: bool = False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_cells, P))
    theta = np.array([1.0, -0.5, 0.25])[:P]
    eta = X @ theta
    m = rng.integers(5, 40, size=n_cells)
    if ties:
        logits = np.column_stack([-0.5 * eta, 0.5 * eta, np.full(n_cells, np.log(0.4))])
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        counts = np.array([rng.multinomial(k, p) for k, p in zip(m, prob, strict=True)])
    else:
        a = rng.binomial(m, 1.0 / (1.0 + np.exp(-eta)))
        counts = np.column_stack([m - a, a, np.zeros_like(a)])
    return X, counts


def _irls(X: np.ndarray, wins: np.ndarray, total: np.ndarray, steps: int = 50) -> np.ndarray:
    """Iteratively reweighted least squares for a binomial logit: an independent algorithm."""
    beta = np.zeros(X.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        w = total * p * (1.0 - p)
        z = X @ beta + (wins - total * p) / w
        beta = np.linalg.solve(X.T @ (X * w[:, None]), X.T @ (w * z))
    return beta


@pytest.mark.parametrize("likelihood", ["binomial", "davidson"])
def test_gradient_and_hessian_match_finite_differences(likelihood):
    X, counts = _simulated_cells(1, ties=likelihood == "davidson")
    total = counts.sum(axis=1).astype(float)
    wins = counts[:, 1] + 0.5 * counts[:, 2]
    if likelihood == "davidson":
        def f(x):
            return _davidson(x, X, counts)
        x0 = np.array([0.3, -0.2, 0.1, -0.7])
    else:
        def f(x):
            return _binomial(x, X, wins, total)
        x0 = np.array([0.3, -0.2, 0.1])
    _, grad, hess = f(x0)
    num_grad = approx_fprime(x0, lambda x: f(x)[0], 1e-7)
    num_hess = np.array([approx_fprime(x0, lambda x, j=j: f(x)[1][j], 1e-7)
                         for j in range(len(x0))])
    np.testing.assert_allclose(grad, num_grad, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(hess, num_hess, rtol=1e-5, atol=1e-4)


def test_binomial_fit_matches_independent_irls_to_machine_precision():
    X, counts = _simulated_cells(2)
    fit = fit_ml(X, counts, names=["x", "y", "z"])
    reference = _irls(X, counts[:, 1].astype(float), counts.sum(axis=1).astype(float))
    np.testing.assert_allclose(fit.estimate, reference, rtol=0, atol=1e-10)
    # the certificate: the estimated log-likelihood gap is below 1e-12 of its scale, and the
    # Newton step (the estimated distance to the maximiser) is far below the standard errors
    assert fit.gap <= 1e-12 * max(1.0, abs(fit.loglik))
    assert fit.step < 1e-6 * fit.se.min()
    assert list(fit.table().index) == ["x", "y", "z"]


def test_davidson_fit_on_one_cell_has_the_closed_form():
    # one cell, one attribute: the model is saturated, so the fitted outcome probabilities are
    # the observed shares: exp(eta) = n_a / n_b and nu = n_t / sqrt(n_a n_b)
    counts = np.array([[30, 50, 20]])
    fit = fit_ml(np.ones((1, 1)), counts, likelihood="davidson")
    assert fit.names == ("x0", "log_nu")
    np.testing.assert_allclose(fit.estimate[0], np.log(50 / 30), atol=1e-10)
    np.testing.assert_allclose(fit.estimate[1], np.log(20 / np.sqrt(50 * 30)), atol=1e-10)


def test_standard_errors_are_the_inverse_information():
    # one cell with m judgements and one unit attribute: se(theta) = 1 / sqrt(m p (1 - p))
    counts = np.array([[40, 60, 0]])
    fit = fit_ml(np.ones((1, 1)), counts)
    np.testing.assert_allclose(fit.se[0], 1 / np.sqrt(100 * 0.6 * 0.4), rtol=1e-10)


def test_halfwin_counts_a_tie_as_half_a_win():
    counts = np.array([[30, 50, 20]])
    fit = fit_ml(np.ones((1, 1)), counts, likelihood="halfwin")
    np.testing.assert_allclose(fit.estimate[0], np.log(60 / 40), atol=1e-10)


def test_ties_are_refused_by_the_binomial_likelihood():
    with pytest.raises(PluralstanError, match="20 tied judgements"):
        fit_ml(np.ones((1, 1)), np.array([[30, 50, 20]]))


def test_no_finite_maximum_is_refused_not_returned():
    # item x0 never loses (to the reference or to x1): its ability runs off to infinity
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    counts = np.array([[0, 10, 0], [5, 5, 0], [0, 6, 0]])
    with pytest.raises(PluralstanError, match="no finite maximum"):
        fit_ml(X, counts)


def test_penalised_mode_is_the_ridge_irls_solution_and_exists_under_separation():
    """The pilot's mode solves the penalised score equation X'(a - n p) = (theta - m) / sd^2
    (checked against an independent ridge IRLS); its information is X' diag(n p (1 - p)) X at
    the mode; and where the ML fit has no finite maximum the prior still gives a mode."""
    X, counts = _simulated_cells(3)
    mean, sd = np.array([0.5, 0.0, -0.5]), np.array([0.5, 1.0, 2.0])
    mode, info = penalised_mode(X, counts, mean, sd)
    wins, total = counts[:, 1].astype(float), counts[:, :2].sum(axis=1).astype(float)
    beta = mean.copy()
    for _ in range(50):  # Newton on the penalised log likelihood, written out
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        hess = X.T @ (X * (total * p * (1 - p))[:, None]) + np.diag(1 / sd**2)
        beta = beta + np.linalg.solve(hess, X.T @ (wins - total * p) - (beta - mean) / sd**2)
    np.testing.assert_allclose(mode, beta, atol=1e-6)
    p = 1.0 / (1.0 + np.exp(-(X @ mode)))
    np.testing.assert_allclose(info, X.T @ (X * (total * p * (1 - p))[:, None]), rtol=1e-10)
    separated = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]), np.array([[0, 10, 0],
                                                                          [5, 5, 0],
                                                                          [0, 6, 0]])
    mode, _ = penalised_mode(*separated, np.zeros(2), np.ones(2))
    assert np.all(np.isfinite(mode)) and mode[0] > max(mode[1], 0.0)  # x0 never loses


def test_unidentified_direction_is_refused():
    X = np.column_stack([np.arange(5.0), 2 * np.arange(5.0)])  # collinear columns
    counts = np.array([[3, 7, 0]] * 5)
    with pytest.raises(PluralstanError, match="not identified"):
        fit_ml(X, counts)


def test_mismatched_shapes_are_refused():
    with pytest.raises(PluralstanError, match="do not match"):
        fit_ml(np.ones((2, 1)), np.array([[1, 2, 0]]))


def test_davidson_without_ties_is_refused():
    with pytest.raises(PluralstanError, match="without ties"):
        fit_ml(np.ones((2, 1)), np.array([[3, 7, 0], [4, 6, 0]]), likelihood="davidson")

"""Hand-built fits with the layout of CONTRIBUTING.md, for tests of figures and of the checks
behind them (no sampling: the draws are built to have known properties)."""

from __future__ import annotations

import json

import numpy as np
from scipy.special import expit

from pluralstan import _arviz

ATTRS = ["x1", "x2", "x3", "x4"]


def mixture_idata(*, K: int = 2, failed: bool = False, model: str = "unlabeled", seed: int = 0,
                  chains: int = 2, draws: int = 200, cells: int = 30, annotators: int = 12):
    """A hand-built fit with the mixture layout of CONTRIBUTING.md.

    theta ``(group, attribute)`` is centred on a known matrix with a built-in non-identified
    direction: theta[0, x1] + theta[1, x1] is pinned, their difference is not (posterior
    correlation about -0.9). The log likelihood is per annotator, as in annotator-level models.
    """
    rng = np.random.default_rng(seed)
    P = len(ATTRS)
    truth = rng.normal(0, 1, size=(K, P))
    truth[:, 0] = [0.2 + 1.5 * k for k in range(K)]  # groups far apart: unambiguous matching
    ridge = rng.normal(0, 0.5, size=(chains, draws))
    theta = truth + 0.15 * rng.normal(size=(chains, draws, K, P))
    theta[..., 0, 0] += ridge
    theta[..., 1, 0] -= ridge
    pi = rng.dirichlet(np.full(K, 20.0), size=(chains, draws))
    X = rng.uniform(-1, 1, size=(cells, P))
    n = rng.integers(5, 30, size=cells)
    n_a = rng.binomial(n, expit(X @ truth.T).mean(-1))
    p_rep = (expit(np.einsum("jp,cdkp->cdjk", X, theta)) * pi[:, :, None, :]).sum(-1)
    rep_a = rng.binomial(n, p_rep)
    diverging = np.zeros((chains, draws), bool)
    if failed:
        diverging[0, ::40] = True
    idata = _arviz.from_dict(
        {"posterior": {"theta": theta, "pi": pi},
         "posterior_predictive": {"y": np.stack([n - rep_a, rep_a], axis=-1)},
         "observed_data": {"y": np.stack([n - n_a, n_a], axis=-1)},
         "log_likelihood": {"y": rng.normal(-5, 0.3, size=(chains, draws, annotators))},
         "sample_stats": {"diverging": diverging, "energy": rng.normal(size=(chains, draws))}},
        coords={"group": list(range(K)), "attribute": ATTRS, "cell": np.arange(cells),
                "outcome": ["b", "a"], "annotator": np.arange(annotators)},
        dims={"theta": ["group", "attribute"], "pi": ["group"], "y": ["cell", "outcome"]},
    )
    idata.posterior.attrs["model"] = model
    problems = [f"{int(diverging.sum())} of {chains * draws} transitions diverged"]
    if not failed:
        problems = []
    idata.posterior.attrs["diagnostics"] = json.dumps({"problems": problems})
    return idata, {"theta": truth, "pi": np.full(K, 1.0 / K), "z": np.zeros(annotators)}


def count_idata(p_obs: np.ndarray, p_rep: np.ndarray, n: np.ndarray, seed: int = 0):
    """Cell counts observed with probability ``p_obs`` and replicated with ``p_rep``."""
    rng = np.random.default_rng(seed)
    n_a = rng.binomial(n, p_obs)
    rep_a = rng.binomial(n, p_rep, size=(2, 250, n.size))
    return _arviz.from_dict(
        {"posterior": {"theta": rng.normal(size=(2, 250))},
         "posterior_predictive": {"y": np.stack([n - rep_a, rep_a], axis=-1)},
         "observed_data": {"y": np.stack([n - n_a, n_a], axis=-1)}},
        coords={"cell": np.arange(n.size), "outcome": ["b", "a"]},
        dims={"y": ["cell", "outcome"]},
    )

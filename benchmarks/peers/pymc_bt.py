"""The benchmark's Bradley-Terry models written idiomatically in PyMC (PyTensor C back end).

The same two models as :mod:`benchmarks.peers.numpyro_bt` (see there): the aggregate model as a
``pm.Binomial`` on cell counts, and the annotator-level latent-group mixture as a ``pm.Potential``
holding the marginal log likelihood (PyMC's idiom for a likelihood no built-in distribution
expresses), with per-annotator sums by ``inc_subtensor`` on an integer index (duplicates
accumulate, as ``numpy.add.at``).

Imported only by the benchmark harness: PyMC is an optional extra, never a runtime dependency.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

NAME = "pymc"


def version() -> str:
    """``pymc x / pytensor y``."""
    return f"pymc {pm.__version__} / pytensor {pytensor.__version__}"


def aggregate_model(X, n_a, n_total, theta_mean, theta_sd) -> pm.Model:
    """Aggregate BT on cell counts: ``n_a ~ binomial_logit(n_total, X theta)``."""
    with pm.Model(coords={"attribute": np.arange(X.shape[1])}) as model:
        theta = pm.Normal("theta", theta_mean, theta_sd, dims="attribute")
        pm.Binomial("y", n=n_total, logit_p=pt.dot(X, theta), observed=n_a)
    return model


def annotator_model(X, y, annotator, n_annotators, K, theta_mean, theta_sd,
                    pi_alpha) -> pm.Model:
    """Annotator-level latent-group BT mixture, the group marginalised per annotator."""
    P = X.shape[1]
    with pm.Model() as model:
        theta = pm.Normal("theta", theta_mean, theta_sd, shape=(K, P))
        pi = pm.Dirichlet("pi", a=pi_alpha * np.ones(K))
        eta = pt.dot(X, theta.T)  # (N, K)
        log_lik = pt.switch(pt.eq(y[:, None], 1), -pt.softplus(-eta), -pt.softplus(eta))
        per_annotator = pt.inc_subtensor(pt.zeros((n_annotators, K))[annotator], log_lik)
        pm.Potential("y", pm.math.logsumexp(pt.log(pi) + per_annotator, axis=1).sum())
    return model


MODELS = {"aggregate": aggregate_model, "annotator": annotator_model}


def sample(
    model: str, data: dict[str, Any], *, chains: int, warmup: int, draws: int, seed: int
) -> dict[str, Any]:
    """Run PyMC's NUTS; return draws ``(chain, draw, ...)``, sampler statistics and timings.

    ``sample_seconds`` is PyMC's own ``sampling_time`` (warm-up plus draws, compilation of the
    PyTensor functions excluded), the same span that Stan's sampling time covers.
    """
    logging.getLogger("pymc").setLevel(logging.ERROR)  # progress lines; timings are returned
    t0 = time.perf_counter()
    pm_model = MODELS[model](**data)
    with pm_model:
        idata = pm.sample(draws=draws, tune=warmup, chains=chains, cores=chains,
                          random_seed=seed, target_accept=0.8, progressbar=False,
                          compute_convergence_checks=False)
    wall = time.perf_counter() - t0
    post, stats = idata.posterior, idata.sample_stats
    sample_seconds = float(stats.attrs["sampling_time"])
    return {
        "variables": {k: post[k].to_numpy() for k in post.data_vars},
        "sample_stats": {
            "diverging": stats["diverging"].to_numpy().astype(bool),
            "tree_depth": stats["tree_depth"].to_numpy().astype(np.int64),
            "n_steps": stats["n_steps"].to_numpy().astype(np.int64),
            "energy": stats["energy"].to_numpy(),
        },
        "build_seconds": wall - sample_seconds,
        "sample_seconds": sample_seconds,
    }


def gradient_seconds(model: str, data: dict[str, Any], *, repeats: int = 200,
                     seed: int = 1) -> float:
    """Seconds per evaluation of the log density and its gradient (compiled function)."""
    pm_model = MODELS[model](**data)
    fn = pm_model.logp_dlogp_function(ravel_inputs=True)
    fn.set_extra_values({})
    rng = np.random.default_rng(seed)
    size = sum(np.size(v) for v in pm_model.initial_point().values())  # unconstrained dims
    x = rng.uniform(-1, 1, size=size)
    fn(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return (time.perf_counter() - t0) / repeats

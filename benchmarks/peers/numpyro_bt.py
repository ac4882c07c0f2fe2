"""The benchmark's Bradley-Terry models written idiomatically in NumPyro (JAX on CPU).

Two models, the same likelihoods and priors as the Stan programs they are compared with:

* :func:`aggregate_model` - one theta, binomial counts per distinct cell (the sufficient statistics
  that ``stan/aggregate_bt.stan`` receives), ``theta ~ normal(mean, sd)``.
* :func:`annotator_model` - each annotator belongs to one of K latent groups; the log likelihood of
  an annotator's whole set of judgements is mixed over K (``log_sum_exp``), the discrete group
  marginalised out as in the Stan program. NumPyro's idiom for a marginal likelihood that no
  built-in distribution expresses is ``numpyro.factor``; the per-annotator sums are a
  ``jax.ops.segment_sum``.

This module is imported only by the benchmark harness: NumPyro and JAX are an optional extra
(``pip install pluralstan[bench]``), never runtime dependencies of pluralstan.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

# Chains run in parallel on as many host devices as the Stan runs use processes; this must be
# set before JAX is first imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import initialize_model

from pluralstan.engine import cache_root

jax.config.update("jax_enable_x64", True)  # Stan computes in double precision; so do we
# JAX's persistent compilation cache plays the part of httpstan's model cache: a re-run with
# the same shapes loads the compiled XLA programs instead of compiling them again.
jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

NAME = "numpyro"


def version() -> str:
    """``numpyro x / jax y``."""
    return f"numpyro {numpyro.__version__} / jax {jax.__version__}"


def aggregate_model(X, n_a, n_total, theta_mean, theta_sd) -> None:
    """Aggregate BT on cell counts: ``n_a ~ binomial_logit(n_total, X theta)``."""
    P = X.shape[1]
    theta = numpyro.sample("theta", dist.Normal(theta_mean, theta_sd).expand([P]).to_event(1))
    numpyro.sample("y", dist.Binomial(total_count=n_total, logits=X @ theta), obs=n_a)


def annotator_model(X, y, annotator, n_annotators, K, theta_mean, theta_sd, pi_alpha) -> None:
    """Annotator-level latent-group BT mixture, the group marginalised per annotator."""
    P = X.shape[1]
    theta = numpyro.sample(
        "theta", dist.Normal(theta_mean, theta_sd).expand([K, P]).to_event(2)
    )
    pi = numpyro.sample("pi", dist.Dirichlet(pi_alpha * jnp.ones(K)))
    eta = X @ theta.T  # (N, K) utility differences under each group's theta
    log_lik = jnp.where(y[:, None] == 1, jax.nn.log_sigmoid(eta), jax.nn.log_sigmoid(-eta))
    per_annotator = jax.ops.segment_sum(log_lik, annotator, num_segments=n_annotators)
    numpyro.factor("y", logsumexp(jnp.log(pi) + per_annotator, axis=1).sum())


def annotator_cells_model(X, row, ann, n_a, n_total, S, n_annotators, K, theta_mean, theta_sd,
                          pi_alpha) -> None:
    """The same mixture on the sufficient statistics ``stan/annotator_bt.stan`` receives.

    Cells are distinct (annotator, design row) pairs with their counts; the linear part of each
    annotator's log likelihood is ``S theta'`` (``S``: the annotator's summed ``n_a x`` rows)
    and the log normaliser ``log1p_exp`` is evaluated once per distinct design row and type,
    then summed per annotator with the cells' totals, as the Stan program does.
    """
    P = X.shape[1]
    theta = numpyro.sample(
        "theta", dist.Normal(theta_mean, theta_sd).expand([K, P]).to_event(2)
    )
    pi = numpyro.sample("pi", dist.Dirichlet(pi_alpha * jnp.ones(K)))
    log_norm = jax.nn.softplus(X @ theta.T)  # (R, K): one evaluation per distinct row and type
    per_annotator = S @ theta.T - jax.ops.segment_sum(
        n_total[:, None] * log_norm[row], ann, num_segments=n_annotators)
    numpyro.factor("y", logsumexp(jnp.log(pi) + per_annotator, axis=1).sum())


MODELS = {"aggregate": aggregate_model, "annotator": annotator_model,
          "annotator_cells": annotator_cells_model}


def _bind(model: str, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split the data into static settings (bound to the model) and arrays (traced by JAX)."""
    arrays = {k: jnp.asarray(v) for k, v in data.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in data.items() if k not in arrays}
    return functools.partial(MODELS[model], **static), arrays


def sample(
    model: str, data: dict[str, Any], *, chains: int, warmup: int, draws: int, seed: int
) -> dict[str, Any]:
    """Run NUTS; return draws ``(chain, draw, ...)``, sampler statistics and timings.

    The model is run twice with the same shapes: the first run compiles (XLA) into JAX's
    persistent cache and is timed as ``build_seconds``; the second, with another seed, loads
    the compiled programs from that cache and is the one timed and returned, so NumPyro's
    compile time is excluded as Stan's is.
    """
    fn, kwargs = _bind(model, data)
    kernel = NUTS(fn, target_accept_prob=0.8, max_tree_depth=10)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="parallel", progress_bar=False, jit_model_args=True)
    fields = ("diverging", "num_steps", "energy")
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed + 10_000), extra_fields=fields, **kwargs)
    jax.block_until_ready(mcmc.get_samples())
    t1 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=fields, **kwargs)
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    t2 = time.perf_counter()
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {
        "variables": {k: np.asarray(v) for k, v in samples.items()},
        "sample_stats": {
            "diverging": np.asarray(extra["diverging"]).astype(bool),
            "n_steps": np.asarray(extra["num_steps"]).astype(np.int64),
            "energy": np.asarray(extra["energy"]),
        },
        "build_seconds": t1 - t0,
        "sample_seconds": t2 - t1,
    }


def gradient_seconds(model: str, data: dict[str, Any], *, repeats: int = 200,
                     seed: int = 1) -> float:
    """Seconds per evaluation of the log density and its gradient (jitted, compile excluded)."""
    fn, kwargs = _bind(model, data)
    init = initialize_model(jax.random.PRNGKey(seed), fn, model_kwargs=kwargs)
    value_and_grad = jax.jit(jax.value_and_grad(init.potential_fn))
    params = init.param_info.z
    jax.block_until_ready(value_and_grad(params))  # compile
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = value_and_grad(params)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / repeats

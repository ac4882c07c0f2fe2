"""Build a fit's ArviZ container from engine draws: one function for every model and both engines.

The container is the installed ArviZ's own (:data:`pluralstan._arviz.Idata`: InferenceData on
ArviZ 0.23, DataTree on ArviZ 1.x)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import xarray as xr

from . import _arviz
from .data import Comparisons
from .engine import Draws, StanProgram
from .models.base import Encoded


def _split(draws: Draws, enc: Encoded) -> tuple[dict, dict, dict]:
    """Sort Stan outputs into posterior, predictive and internal variables.

    Zero-size outputs are outputs a fit was asked to skip (``replicate=False``,
    ``membership=False``, no position effect): they are left out.
    """
    posterior, predictive, internal = {}, {}, {}
    for name, arr in draws.variables.items():
        if name in enc.drop:
            internal[name] = arr
        elif not arr.size:
            continue
        elif name in enc.predictive:
            predictive[enc.predictive[name]] = arr
        elif name in enc.optional_scalars:
            posterior[name] = arr[..., 0]
        elif name == "lprior":
            internal[name] = arr
        else:
            posterior[name] = arr
    return posterior, predictive, internal


def _dims(enc: Encoded) -> dict[str, list[str]]:
    dims = dict(enc.dims)
    for stan_name, new_name in enc.predictive.items():
        if stan_name in dims:
            dims[new_name] = dims.pop(stan_name)
    return dims


def data_hash(comps: Comparisons) -> str:
    """SHA-256 of the canonical comparison table (recorded for provenance)."""
    h = hashlib.sha256(comps.frame.to_csv(index=False).encode())
    if comps.items is not None:
        h.update(comps.items.to_csv().encode())
    if comps.annotators is not None:
        h.update(comps.annotators.to_csv().encode())
    return h.hexdigest()


def provenance(
    model: str, program: StanProgram, draws: Draws, comps: Comparisons, seed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Attributes that let a result be traced back to its inputs."""
    from . import __version__

    attrs = {
        "pluralstan_version": __version__,
        "model": model,
        "engine": draws.engine,
        "engine_version": draws.engine_version,
        "stan_program": program.name,
        "stan_program_sha256": program.sha,
        "seed": int(seed),
        "data_sha256": data_hash(comps),
        "build_seconds": round(draws.build_seconds, 3),
        "sample_seconds": round(draws.sample_seconds, 3),
        "compiled": int(draws.compiled),
    }
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, int | float | str) else json.dumps(value)
    return attrs


def to_inference_data(
    draws: Draws,
    enc: Encoded,
    attrs: dict[str, Any],
    prior_draws: Draws | None = None,
) -> _arviz.Idata:
    """Assemble the InferenceData (ArviZ 0.23) or DataTree (ArviZ 1.x) of a fit.

    Groups: ``posterior``, ``posterior_predictive``, ``log_likelihood``, ``log_prior``,
    ``sample_stats``, ``observed_data``, ``constant_data`` and, when ``prior_draws`` is given,
    ``prior`` and ``prior_predictive``.
    """
    posterior, predictive, internal = _split(draws, enc)
    dims = _dims(enc)
    coords = enc.coords

    def sampled(values: dict[str, np.ndarray], group_dims: dict[str, list[str]]) -> xr.Dataset:
        return _arviz.dataset_from_dict(values, coords=coords, dims=group_dims, attrs=attrs)

    def fixed(values: dict[str, np.ndarray]) -> xr.Dataset:
        return _arviz.dataset_from_dict(values, coords=coords, dims=dims, attrs=attrs,
                                        sampled=False)

    groups: dict[str, xr.Dataset] = {
        "posterior": sampled(posterior, dims),
        "posterior_predictive": sampled(predictive, dims),
        "log_likelihood": sampled(enc.log_lik(draws.variables), enc.log_lik_dims),
        "log_prior": sampled({"lprior": internal["lprior"]}, {}),
        "sample_stats": sampled(draws.sample_stats, {}),
        "observed_data": fixed(enc.observed),
        "constant_data": fixed(enc.constant),
    }
    if prior_draws is not None:
        prior, prior_pred, _ = _split(prior_draws, enc)
        groups["prior"] = sampled(prior, dims)
        groups["prior_predictive"] = sampled(prior_pred, dims)
    for dataset in groups.values():
        dataset.attrs.update(attrs)
    return _arviz.make_idata(groups)

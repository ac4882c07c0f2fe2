"""Posterior contraction and z-scores (Betancourt 2018; Schad, Betancourt & Vasishth 2021).

For every scalar parameter,

    contraction = 1 - Var_post / Var_prior,        z = (E_post - truth) / sd_post.

Contraction near 1: the data identify the parameter; near 0: its posterior is its prior (the
position paper's item two asks exactly this of every within-subgroup preference). The prior
variance comes from prior draws of the same Stan program (``fit(..., sample_prior=True)`` adds a
``prior`` group), never from a formula that could drift from the Stan code. There is no hard
threshold: contraction near 1 with small |z| is the ideal; high contraction with large |z|
signals overfitting or bias; low contraction with large |z| signals prior-data conflict.

For mixture models the table has one row per group and attribute. Latent group labels are only
meaningful on a posterior without label switching (see :mod:`pluralstan.diagnostics`); the
table carries the fit's diagnostic flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .. import _arviz, diagnostics
from ..errors import PluralstanError

__all__ = ["contraction"]

SAMPLE_DIMS = ("chain", "draw")
_VALUE_COLUMNS = ("prior_sd", "post_mean", "post_sd", "contraction", "truth", "z")


def _truth_array(value: np.ndarray, post: xr.DataArray) -> xr.DataArray | None:
    """The known value of a parameter shaped like one draw of ``post`` (None if it does not fit)."""
    arr = np.asarray(value, dtype=float)
    shape = tuple(post.sizes[d] for d in post.dims if d not in SAMPLE_DIMS)
    if arr.shape != shape:
        return None
    dims = [d for d in post.dims if d not in SAMPLE_DIMS]
    return xr.DataArray(arr, dims=dims, coords={d: post[d].values for d in dims})


def contraction(
    idata: _arviz.Idata,
    var_names: Sequence[str] | None = None,
    *,
    truth: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Posterior contraction per scalar parameter, with z-scores when the truth is known.

    Parameters
    ----------
    idata
        A fit with ``posterior`` and ``prior`` groups (``fit(..., sample_prior=True)``).
    var_names
        Parameters to report; default: every posterior variable that also has prior draws.
    truth
        Known generating values (e.g. ``comps.truth`` from :mod:`pluralstan.simulate`), keyed by
        parameter name; a value is used when its shape matches one draw of the parameter
        (e.g. a ``(K, d)`` theta for a mixture fit, not for the aggregate fit).

    Returns
    -------
    pandas.DataFrame
        One row per scalar parameter: ``variable``, one column per dim (e.g. ``group``,
        ``attribute``), ``prior_sd``, ``post_mean``, ``post_sd``, ``contraction``, ``truth``,
        ``z`` and ``flag`` (:func:`pluralstan.diagnostics.flag` of the fit).

    Raises
    ------
    PluralstanError
        Without a ``prior`` group, or for a variable missing from either group.
    """
    if "prior" not in _arviz.groups(idata):
        raise PluralstanError(
            "contraction needs prior draws of the same program: fit with sample_prior=True "
            "(the InferenceData has no 'prior' group)"
        )
    post, prior = _arviz.group(idata, "posterior"), _arviz.group(idata, "prior")
    names = list(var_names) if var_names is not None else [
        v for v in post.data_vars if v in prior.data_vars
    ]
    missing = [v for v in names if v not in post.data_vars or v not in prior.data_vars]
    if missing:
        raise PluralstanError(
            f"variable(s) {missing} are not in both the posterior and the prior; variables with "
            f"prior draws: {sorted(set(post.data_vars) & set(prior.data_vars))}"
        )
    flag = diagnostics.flag(idata)
    frames = []
    for name in names:
        stats = xr.Dataset({
            "prior_sd": prior[name].std(SAMPLE_DIMS, ddof=1),
            "post_mean": post[name].mean(SAMPLE_DIMS),
            "post_sd": post[name].std(SAMPLE_DIMS, ddof=1),
        })
        stats["contraction"] = 1.0 - stats["post_sd"] ** 2 / stats["prior_sd"] ** 2
        known = None
        if truth is not None and name in truth:
            known = _truth_array(truth[name], post[name])
        stats["truth"] = known if known is not None else xr.full_like(stats["post_mean"], np.nan)
        stats["z"] = (stats["post_mean"] - stats["truth"]) / stats["post_sd"]
        frame = stats.to_dataframe() if stats["post_mean"].ndim else pd.DataFrame(
            {k: [float(v)] for k, v in stats.items()}
        )
        frames.append(frame.reset_index().assign(variable=name))
    table = pd.concat(frames, ignore_index=True)
    lead = ["variable"] + [c for c in table.columns if c not in (*_VALUE_COLUMNS, "variable")]
    table = table[lead + list(_VALUE_COLUMNS)]
    table["flag"] = flag
    return table


"""A posterior seen component by component: flattening, truth alignment, least-identified pairs.

The dashboards (:mod:`pluralstan.plots`) show single components of the parameters (``theta[0,
x1]``): the ones with the highest R-hat, the pairs the data identify least, and the generating
values beside them when known. This module computes those selections and alignments; the
figures only draw them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from .. import _arviz
from ..diagnostics import parameter_names
from ..errors import PluralstanError
from ..relabel import match_components

__all__ = [
    "DERIVED",
    "LATENT_GROUP_MODELS",
    "aligned_truth",
    "component_name",
    "flatten_components",
    "latent_groups",
    "nonidentified_pairs",
    "pair_correlations",
    "rhat_order",
    "truth_components",
]

#: Models whose groups are latent classes: their labels are arbitrary, so a known truth is
#: matched to the fitted components before it is compared with them.
LATENT_GROUP_MODELS = frozenset({"unlabeled", "annotator", "covariate", "pal"})
#: Deterministic summaries of other parameters (theta_bar = sum_k pi_k theta_k): their
#: correlation with what they summarise is structural, so pair selections leave them out.
DERIVED = frozenset({"theta_bar"})
SAMPLE_DIMS = ("chain", "draw")


def component_name(var: str, coords: Sequence[Hashable]) -> str:
    """``theta[0, x1]``: the variable with its coordinate values, as ArviZ labels components."""
    return var if not coords else f"{var}[{', '.join(map(str, coords))}]"


def flatten_components(
    idata: _arviz.Idata, var_names: Sequence[str] | None = None
) -> xr.Dataset:
    """One scalar ``(chain, draw)`` variable per parameter component, named ``theta[0, x1]``.

    Parameters
    ----------
    idata
        A fit with a posterior group.
    var_names
        Posterior variables to flatten (default:
        :func:`pluralstan.diagnostics.parameter_names`, the varying parameters).

    Returns
    -------
    xarray.Dataset
        One variable per component, dims ``(chain, draw)``.
    """
    post = _arviz.group(idata, "posterior")
    names = list(var_names) if var_names is not None else parameter_names(idata)
    out: dict[str, xr.DataArray] = {}
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        if not extra:
            out[name] = da.reset_coords(drop=True)
            continue
        for idx in np.ndindex(*(da.sizes[d] for d in extra)):
            sel = {d: i for d, i in zip(extra, idx, strict=True)}
            labels = [da[d].values[i] for d, i in sel.items()]
            out[component_name(name, labels)] = da.isel(sel).reset_coords(drop=True)
    return xr.Dataset(out)


def rhat_order(flat: xr.Dataset) -> tuple[list[str], xr.Dataset | None]:
    """Components of ``flat`` by decreasing rank-normalised R-hat, and the R-hat values.

    Parameters
    ----------
    flat
        Output of :func:`flatten_components`.

    Returns
    -------
    names : list of str
        The components, worst R-hat first (in their order when there is a single chain).
    rhat : xarray.Dataset or None
        R-hat per component; ``None`` with a single chain.
    """
    names = list(flat.data_vars)
    if flat.sizes.get("chain", 0) < 2:
        return names, None
    rhat = az.rhat(flat)
    return sorted(names, key=lambda n: -float(rhat[n])), rhat


def latent_groups(idata: _arviz.Idata) -> bool:
    """Whether the fit's groups are latent classes (arbitrary labels) rather than observed."""
    attrs = _arviz.group(idata, "posterior").attrs
    if "group_labels" in attrs:
        return attrs["group_labels"] == "latent"
    return attrs.get("model") in LATENT_GROUP_MODELS


def aligned_truth(
    idata: _arviz.Idata, truth: Mapping[str, Any] | None, match: bool
) -> dict[str, np.ndarray]:
    """Validate ``truth`` against the posterior and, for latent groups, relabel it.

    Parameters
    ----------
    idata
        A fit.
    truth
        Known generating values by parameter name (e.g. ``comps.truth``). Keys that are not
        posterior variables (e.g. the simulators' per-annotator ``z``) are ignored.
    match
        Permute the truth's groups to the fitted components whose posterior mean theta is
        closest (:func:`pluralstan.relabel.match_components`), because a latent-class model's
        labels are arbitrary.

    Returns
    -------
    dict
        Posterior variable name -> known values with the posterior's component shape.

    Raises
    ------
    PluralstanError
        When ``truth`` is not a mapping or a posterior variable is given with the wrong shape.
    """
    if not truth:
        return {}
    if not isinstance(truth, Mapping):
        raise PluralstanError(
            f"truth must be a mapping of parameter name to values (e.g. comps.truth), got "
            f"{type(truth).__name__}"
        )
    post = _arviz.group(idata, "posterior")
    out: dict[str, np.ndarray] = {}
    for name, value in truth.items():
        if name not in post:
            continue
        arr = np.asarray(value, dtype=float)
        shape = tuple(s for d, s in post[name].sizes.items() if d not in SAMPLE_DIMS)
        if arr.shape != shape:
            dims = [d for d in post[name].dims if d not in SAMPLE_DIMS]
            raise PluralstanError(
                f"truth[{name!r}] has shape {arr.shape} but the posterior's {name!r} has shape "
                f"{shape} (dims {dims}); give one value per component"
            )
        out[name] = arr
    if match and "theta" in out and "group" in post["theta"].dims and out["theta"].ndim == 2:
        mean = post["theta"].mean(SAMPLE_DIMS).transpose("group", ...).values
        perm = match_components(out["theta"], mean)  # fitted component k <- true group perm[k]
        for name, arr in out.items():
            dims = [d for d in post[name].dims if d not in SAMPLE_DIMS]
            if dims and dims[0] == "group":
                out[name] = arr[perm]
    return out


def truth_components(
    idata: _arviz.Idata, truth: Mapping[str, Any] | None, match: bool
) -> dict[str, float]:
    """Known values by component name (the names of :func:`flatten_components`).

    The truth is validated and aligned by :func:`aligned_truth` (``match`` as there).
    """
    post = _arviz.group(idata, "posterior")
    out: dict[str, float] = {}
    for name, value in aligned_truth(idata, truth, match).items():
        da = post[name]
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        for idx in np.ndindex(*value.shape):
            labels = [da[d].values[i] for d, i in zip(extra, idx, strict=True)]
            out[component_name(name, labels)] = float(value[idx])
    return out


def nonidentified_pairs(idata: _arviz.Idata, max_pairs: int = 4) -> list[tuple[str, str]]:
    """Pairs of components along which the posterior is least identified.

    Mixture models first: theta of groups 0 and 1 on the attribute where they are most
    correlated (a trade-off between subgroups the data cannot separate), then each pi against
    the theta component it is most correlated with. The rest, and everything for the aggregate
    model, are the strongest absolute posterior correlations among all components (pairs within
    the simplex pi are skipped: their correlation is fixed by the sum-to-one constraint, and so
    are the deterministic summaries in :data:`DERIVED`).

    Parameters
    ----------
    idata
        A fit.
    max_pairs
        Return at most this many pairs.

    Returns
    -------
    list of tuple
        Component names (as in :func:`flatten_components`), least identified first.
    """
    names_kept = [v for v in parameter_names(idata) if v not in DERIVED]
    flat = flatten_components(idata, names_kept)
    names = list(flat.data_vars)
    if len(names) < 2:
        return []
    corr = np.corrcoef(np.stack([flat[n].values.ravel() for n in names]))
    index = {n: i for i, n in enumerate(names)}

    def strength(a: str, b: str) -> float:
        return abs(float(np.nan_to_num(corr[index[a], index[b]])))

    chosen: list[tuple[str, str]] = []
    post = _arviz.group(idata, "posterior")
    theta = post.get("theta")
    if theta is not None and "group" in theta.dims and theta.sizes["group"] >= 2:
        g0, g1 = theta["group"].values[:2]
        pairs = [(component_name("theta", [g0, a]), component_name("theta", [g1, a]))
                 for a in theta["attribute"].values]
        chosen.append(max(pairs, key=lambda p: strength(*p)))
        if "pi" in post and "pi" in names_kept:
            thetas = [n for n in names if n.startswith("theta[")]
            for g in post["pi"]["group"].values[:1]:
                pi_name = component_name("pi", [g])
                chosen.append((pi_name, max(thetas, key=lambda t: strength(pi_name, t))))
    rest = sorted(
        (p for p in combinations(names, 2)
         if not (p[0].startswith("pi[") and p[1].startswith("pi["))
         and p not in chosen and p[::-1] not in chosen),
        key=lambda p: -strength(*p),
    )
    return (chosen + rest)[:max_pairs]


def pair_correlations(flat: xr.Dataset, pairs: Sequence[tuple[str, str]]) -> pd.Series:
    """Posterior correlation of each pair of components, over all chains and draws.

    Parameters
    ----------
    flat
        Output of :func:`flatten_components`.
    pairs
        Component name pairs (e.g. from :func:`nonidentified_pairs`).

    Returns
    -------
    pandas.Series
        Pearson correlation, indexed by ``(x, y)``.
    """
    values = [float(np.corrcoef(flat[a].values.ravel(), flat[b].values.ravel())[0, 1])
              for a, b in pairs]
    index = pd.MultiIndex.from_tuples(list(pairs), names=["x", "y"])
    return pd.Series(values, index=index, name="correlation", dtype=float)

"""The one module that knows which ArviZ is installed.

pluralstan runs on ArviZ 0.23 (Python 3.11: :class:`arviz.InferenceData`) and on ArviZ 1.x
(Python 3.12+: :class:`xarray.DataTree`, built by ``arviz_base``, statistics from
``arviz_stats``, plots from ``arviz_plots``). :func:`pluralstan.fit` returns the *native*
container of the installed ArviZ (:data:`Idata`), so ``az.summary``, ``az.loo`` and
``az.compare`` take it as it is. Every pluralstan function accepts either container: it reads
groups through :func:`groups` and :func:`group` (plain :class:`xarray.Dataset` objects) and hands
ArviZ :func:`native` containers.

Everything that differs between the two ArviZ lines lives here, and only public ArviZ names are
used; no other pluralstan module imports ``arviz_base``, ``arviz_stats`` or ``arviz_plots``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

__all__ = [
    "ARVIZ_1",
    "COMPARE_COLUMNS",
    "Idata",
    "bfmi",
    "compare",
    "dataset_from_dict",
    "ecdf",
    "ecdf_band",
    "elpd",
    "elpd_pointwise",
    "from_dict",
    "from_netcdf",
    "group",
    "groups",
    "is_idata",
    "make_idata",
    "native",
    "power_scale_sensitivity",
    "psislw",
    "replace_groups",
    "stacking_weights",
    "summary",
    "to_netcdf",
]

#: True on ArviZ 1.x (DataTree based), False on ArviZ 0.x (InferenceData).
ARVIZ_1: bool = int(az.__version__.split(".")[0]) >= 1

#: The container :func:`pluralstan.fit` returns on the installed ArviZ.
Idata: type = xr.DataTree if ARVIZ_1 else az.InferenceData

#: Groups without ``chain`` and ``draw`` dimensions.
FIXED_GROUPS = ("observed_data", "constant_data", "predictions_constant_data")

#: Columns of :func:`compare`, the same on both ArviZ lines (ArviZ 0.23's names).
COMPARE_COLUMNS = ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning")


# --------------------------------------------------------------------------- containers
def dataset_from_dict(
    values: Mapping[str, np.ndarray],
    *,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    sampled: bool = True,
) -> xr.Dataset:
    """One group's Dataset from arrays.

    Parameters
    ----------
    values
        Variable name -> array, shaped ``(chain, draw, *shape)`` when ``sampled``, else ``shape``.
    coords, dims
        Coordinates and per-variable dimension names (ArviZ conventions).
    attrs
        Attributes of the Dataset.
    sampled
        Whether the arrays carry the ``chain`` and ``draw`` dimensions (``False`` for
        ``observed_data`` and ``constant_data``).
    """
    kwargs: dict[str, Any] = {"coords": coords, "dims": dims, "attrs": dict(attrs or {})}
    if ARVIZ_1:
        import arviz_base

        return arviz_base.dict_to_dataset(dict(values), sample_dims=None if sampled else [],
                                          **kwargs)
    return az.dict_to_dataset(dict(values), **kwargs, **({} if sampled else {"default_dims": []}))


def make_idata(datasets: Mapping[str, xr.Dataset]) -> Any:
    """The installed ArviZ's container holding ``datasets`` as its groups.

    A Dataset without variables (an output a fit was asked to skip) makes no group, on either
    ArviZ line (InferenceData drops it; a DataTree would keep an empty node).
    """
    kept = {name: ds for name, ds in datasets.items() if ds.data_vars}
    if ARVIZ_1:
        return xr.DataTree.from_dict(kept)
    return az.InferenceData(**kept)


def from_dict(data: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> Any:
    """``az.from_dict`` taking ArviZ 1.x's form ``{group: {variable: array}}`` on both lines.

    ``kwargs`` (``coords``, ``dims``, ...) are passed on. Used by tests and fixtures that build
    small fits by hand.
    """
    if ARVIZ_1:
        return az.from_dict(dict(data), **kwargs)
    # ArviZ 0.23's from_dict takes a keyword per group it knows and drops the others
    # (log_prior among them): those are added as sampled groups with the same coords and dims
    import inspect

    known = set(inspect.signature(az.from_dict).parameters)
    idata = az.from_dict(**{g: v for g, v in data.items() if g in known}, **kwargs)
    extra = {g: dataset_from_dict(v, coords=kwargs.get("coords"), dims=kwargs.get("dims"),
                                  sampled=g not in FIXED_GROUPS)
             for g, v in data.items() if g not in known}
    if extra:
        idata.add_groups(extra)
    return idata


def is_idata(obj: Any) -> bool:
    """Whether ``obj`` is a fit container (an InferenceData or a DataTree)."""
    return isinstance(obj, xr.DataTree) or (not ARVIZ_1 and isinstance(obj, az.InferenceData))


def native(idata: Any) -> Any:
    """``idata`` as the installed ArviZ's container (a DataTree is converted on ArviZ 0.23)."""
    if not ARVIZ_1 and isinstance(idata, xr.DataTree):
        return az.InferenceData.from_datatree(idata)
    return idata


def groups(idata: Any) -> list[str]:
    """Names of the groups of an InferenceData or a DataTree."""
    if isinstance(idata, xr.DataTree):
        return list(idata.children)
    return list(idata.groups())


def group(idata: Any, name: str) -> xr.Dataset | None:
    """Group ``name`` as a plain :class:`xarray.Dataset` (``None`` when absent).

    The Dataset shares its data with the container; on a DataTree it is a view, so write
    attributes through ``idata[name].attrs`` instead.
    """
    if name not in groups(idata):
        return None
    node = idata[name]
    return node.to_dataset() if isinstance(node, xr.DataTree) else node


def replace_groups(idata: Any, **datasets: xr.Dataset | None) -> Any:
    """A new container: ``idata``'s groups with those given replaced, added or (``None``) dropped.

    The result is the installed ArviZ's container; groups not named are shallow copies (their
    arrays are shared with ``idata``, their attributes and variable sets are not).
    """
    merged = {g: group(idata, g).copy() for g in groups(idata)} | datasets  # own attrs
    return make_idata({g: ds for g, ds in merged.items() if ds is not None})


# --------------------------------------------------------------------------- files
def to_netcdf(idata: Any, path: str | Path) -> None:
    """Write either container to a NetCDF file (h5netcdf engine, one HDF5 group per group),
    uncompressed, as ArviZ 1.x writes it: posterior draws are noise to zlib (a tax-conjoint
    fit shrinks by 7%), and ArviZ 0.x's default compression made writing it take 8x longer."""
    if ARVIZ_1:
        idata.to_netcdf(str(path), engine="h5netcdf")
    else:
        idata.to_netcdf(str(path), engine="h5netcdf", compress=False)


def from_netcdf(path: str | Path) -> Any:
    """Read a file written by :func:`to_netcdf` fully into the installed ArviZ's container."""
    if ARVIZ_1:
        with xr.open_datatree(str(path), engine="h5netcdf") as tree:
            return tree.load()
    return az.from_netcdf(str(path), engine="h5netcdf")


# --------------------------------------------------------------------------- statistics
def bfmi(idata: Any) -> np.ndarray:
    """E-BFMI per chain (from ``sample_stats.energy``)."""
    if ARVIZ_1:
        return np.asarray(az.bfmi(native(idata))["energy"].values, dtype=float).ravel()
    return np.asarray(az.bfmi(native(idata)), dtype=float).ravel()


def psislw(log_ratios: xr.DataArray, reff: float, dim: str) -> tuple[xr.DataArray, xr.DataArray]:
    """Pareto-smoothed log importance weights over the sample dimension ``dim`` and Pareto k.

    Returns ``(log_weights, khat)``: normalised log weights with ``log_ratios``' dims and k
    with the remaining dims.
    """
    if ARVIZ_1:
        # ArviZ 1 takes log likelihood values (it smooths their negation, as LOO needs)
        log_w, khat = (-log_ratios).azstats.psislw(dim=dim, r_eff=reff)
        return log_w.transpose(*log_ratios.dims), khat
    sample = "__sample__"  # the dimension name ArviZ 0.23's psislw expects
    log_w, khat = az.psislw(log_ratios.rename({dim: sample}).transpose(..., sample), reff=reff)
    return log_w.rename({sample: dim}).transpose(*log_ratios.dims), khat


def elpd(result: Any) -> tuple[float, float, float]:
    """``(elpd, se, p)`` of an ``az.loo`` result (the attribute names changed in ArviZ 1)."""
    if ARVIZ_1:
        return float(result.elpd), float(result.se), float(result.p)
    return float(result.elpd_loo), float(result.se), float(result.p_loo)


def elpd_pointwise(result: Any) -> xr.DataArray:
    """Pointwise elpd of an ``az.loo(..., pointwise=True)`` result."""
    return result.elpd_i if ARVIZ_1 else result.loo_i


def compare(fits: Mapping[str, Any], var_name: str | None = None) -> pd.DataFrame:
    """``az.compare`` by PSIS-LOO with stacking weights, in one column set on both ArviZ lines.

    Returns
    -------
    pandas.DataFrame
        One row per fit, best first, columns :data:`COMPARE_COLUMNS`: ``rank`` (0 = best),
        ``elpd_loo``, ``p_loo``, ``elpd_diff`` (best minus this fit, so >= 0), ``weight``
        (stacking), ``se``, ``dse`` (se of the difference) and ``warning`` (ArviZ flagged the
        estimate: high Pareto k or, on ArviZ 1, a diagnostic of the difference).
    """
    data = {name: native(fit) for name, fit in fits.items()}
    if not ARVIZ_1:
        table = az.compare(data, ic="loo", var_name=var_name)
        table["warning"] = table["warning"].astype(bool)
        return table[list(COMPARE_COLUMNS)]
    table = az.compare(data, var_name=var_name, round_to="none")
    out = pd.DataFrame({
        "rank": table["rank"].astype(int),
        "elpd_loo": table["elpd"].astype(float),
        "p_loo": table["p"].astype(float),
        "elpd_diff": -table["elpd_diff"].astype(float),  # ArviZ 1 reports this fit minus best
        "weight": table["weight"].astype(float),
        "se": table["se"].astype(float),
        "dse": table["dse"].astype(float),
        "warning": (table["diag_elpd"].astype(str).str.strip() != "")
                   | (table["diag_diff"].astype(str).str.strip() != ""),
    }, index=table.index)
    return out.sort_values("rank")


def _pointwise_elpd(values: np.ndarray) -> Any:
    """An ``ELPDData`` holding pointwise values only, as ``az.compare`` reads them."""
    n = values.size
    pointwise = xr.DataArray(values, dims=("observation",))
    se = float(np.sqrt(n * np.var(values)))
    if ARVIZ_1:
        return az.ELPDData(elpd=float(values.sum()), se=se, p=0.0, n_samples=0, n_data_points=n,
                           scale="log", warning=False, good_k=0.7, elpd_i=pointwise,
                           pareto_k=xr.zeros_like(pointwise))
    return az.ELPDData(
        data=[float(values.sum()), se, 0.0, 0, n, False, pointwise.rename("loo_i"), "log"],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i",
               "scale"],
    )


def stacking_weights(lpd: np.ndarray) -> np.ndarray:
    """Stacking weights of the columns of an (observation x model) table of log densities.

    ArviZ's stacking optimiser (``az.compare(method="stacking")``) on the columns as pointwise
    elpd values: weights on the simplex maximising ``sum_i log sum_k w_k exp(lpd[i, k])``.
    """
    lpd = np.asarray(lpd, dtype=float)
    names = [f"m{k}" for k in range(lpd.shape[1])]
    data = {name: _pointwise_elpd(lpd[:, k]) for k, name in enumerate(names)}
    if ARVIZ_1:
        table = az.compare(data, method="stacking", round_to="none")
    else:
        table = az.compare(data, ic="loo", method="stacking", scale="log")
    return table["weight"].reindex(names).to_numpy(float)


def summary(
    idata: Any,
    var_names: Sequence[str] | None = None,
    *,
    kind: str = "all",
    ci_prob: float = 0.94,
    round_to: int | None = None,
) -> pd.DataFrame:
    """``az.summary`` with a highest-density interval of mass ``ci_prob``.

    The interval columns carry ArviZ 0.23's names on both lines (``hdi_5%`` and ``hdi_95%``
    for ``ci_prob=0.9``); the other columns are ArviZ's (``mean``, ``sd``, ``ess_bulk``,
    ``ess_tail``, ``r_hat``, ``mcse_mean``, ``mcse_sd``). Values are floats rounded to
    ``round_to`` decimals (``None``: unrounded).
    """
    names = None if var_names is None else list(var_names)
    lo, hi = (f"hdi_{100 * p:g}%" for p in ((1 - ci_prob) / 2, (1 + ci_prob) / 2))
    if ARVIZ_1:
        table = az.summary(native(idata), var_names=names, kind=kind, ci_prob=ci_prob,
                           ci_kind="hdi", round_to="none")
        prefix = next((c[:-3] for c in table.columns if c.startswith("hdi") and
                       c.endswith("_lb")), None)
        if prefix is not None:
            table = table.rename(columns={f"{prefix}_lb": lo, f"{prefix}_ub": hi})
        table = table.astype(float)
    else:
        table = az.summary(native(idata), var_names=names, kind=kind, hdi_prob=ci_prob,
                           round_to="none")
    return table if round_to is None else table.round(round_to)


def power_scale_sensitivity(idata: Any, var_names: Sequence[str], *,
                            threshold: float) -> pd.DataFrame:
    """Power-scaling prior and likelihood sensitivity (Kallioinen et al. 2023) per parameter.

    ``arviz_stats.psense_summary`` (ArviZ 0.23's ``az.psens`` ignores its ``coords``, so the
    preview package serves 0.23 too). Returns ArviZ's table: index = parameter label, columns
    ``prior``, ``likelihood`` (cumulative Jensen-Shannon distances) and ``diagnosis``.
    """
    if ARVIZ_1:
        psense_summary = az.psense_summary
    else:
        from arviz_stats import psense_summary
    # psense_summary logs a warning with reading advice when it flags something; the returned
    # table (and every pluralstan report built on it) already says it, so the log line is held
    logger = logging.getLogger(psense_summary.__module__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        table = psense_summary(native(idata), var_names=list(var_names), threshold=threshold,
                               round_to=6)
    finally:
        logger.setLevel(level)
    return table.astype({"prior": float, "likelihood": float})


# --------------------------------------------------------------------------- ECDF band
# Hand-written on both ArviZ lines: ArviZ 0.23 keeps its simultaneous ECDF band in a private
# module (arviz.stats.ecdf_utils) and ArviZ 1.x offers it only inside its plotting functions, while
# SBC's rank test and the cell PIT plot need the band's values themselves.
def ecdf(sample: np.ndarray, eval_points: np.ndarray) -> np.ndarray:
    """Empirical CDF of ``sample`` at ``eval_points``."""
    ordered = np.sort(np.asarray(sample, dtype=float).ravel())
    return np.searchsorted(ordered, eval_points, side="right") / ordered.size


def _pointwise_band(gamma: float, n: int, cdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central binomial interval of mass ``gamma`` of the ECDF count at each point."""
    tail = (1 - gamma) / 2
    return stats.binom.ppf(tail, n, cdf), stats.binom.ppf(1 - tail, n, cdf)


def _inside_probability(gamma: float, n: int, cdf: np.ndarray) -> float:
    """Probability that the ECDF of ``n`` draws stays within the pointwise-``gamma`` band.

    The ECDF counts at increasing points form a Markov chain: given ``m`` draws at or below
    the previous point, the number added by the next is Binomial(n - m, conditional
    probability of the interval). Propagating the distribution over the allowed counts gives
    the exact probability of staying inside at every point.
    """
    lower, upper = _pointwise_band(gamma, n, cdf)
    previous_cdf = np.concatenate([[0.0], cdf[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.clip((cdf - previous_cdf) / (1 - previous_cdf), 0.0, 1.0)
    counts, prob = np.array([0]), np.array([1.0])
    for k in range(cdf.size):
        nxt = np.arange(int(lower[k]), int(upper[k]) + 1)
        added = nxt[None, :] - counts[:, None]
        trans = stats.binom.pmf(added, n - counts[:, None], step[k])
        counts, prob = nxt, prob @ trans
    return float(prob.sum())


def ecdf_band(n: int, eval_points: np.ndarray, cdf_at_eval_points: np.ndarray,
              prob: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Simultaneous band for the ECDF of ``n`` draws (Säilynoja, Bürkner & Vehtari 2022).

    The optimised method: the pointwise binomial band whose level is the smallest that keeps
    the whole ECDF inside it with probability at least ``prob`` when the draws come from the
    reference distribution (computed exactly, see :func:`_inside_probability`).

    Parameters
    ----------
    n
        Number of draws behind the ECDF.
    eval_points
        Points where the ECDF is evaluated, increasing (kept for ArviZ's signature; the band
        depends on them only through ``cdf_at_eval_points``).
    cdf_at_eval_points
        Reference CDF at ``eval_points`` (``eval_points`` themselves for uniform draws).
    prob
        Simultaneous coverage.

    Returns
    -------
    lower, upper
        ECDF values bounding the band at each evaluation point.
    """
    cdf = np.asarray(cdf_at_eval_points, dtype=float)
    if len(eval_points) != cdf.size:
        raise ValueError("eval_points and cdf_at_eval_points differ in length")
    lo, hi = prob, 1.0 - 1e-12
    if _inside_probability(lo, n, cdf) < prob:
        for _ in range(40):  # the inside probability grows with the pointwise level
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if _inside_probability(mid, n, cdf) >= prob else (mid, hi)
            if hi - lo < 1e-6:
                break
        gamma = hi
    else:
        gamma = lo
    lower, upper = _pointwise_band(gamma, n, cdf)
    return lower / n, upper / n

"""Posterior predictive checks per Stan cell: frequencies, intervals and randomised (LOO-)PIT.

A cell is a distinct attribute difference and presentation order (and, for models that split
cells by them, group or annotator); ``observed_data["y"]`` and ``posterior_predictive["y"]``
hold its counts per outcome. These checks need no comparison table, so every fit that stores
replicated counts can be checked with them (:mod:`pluralstan.checks.ppc` maps cells back to
pairs and groups of the table).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import xarray as xr

from .. import _arviz
from ..diagnostics import parameter_names
from ..errors import PluralstanError
from .ecdf import ecdf_difference
from .intervals import SAMPLE_DIMS, central_interval

__all__ = [
    "cell_frequencies",
    "cell_groups",
    "cell_intervals",
    "cell_log_likelihood",
    "cell_pit",
    "pit_ecdf",
]


def cell_frequencies(idata: _arviz.Idata, outcome: str = "a") -> tuple[xr.DataArray,
                                                                          xr.DataArray]:
    """Observed and replicated share of judgements with ``outcome`` in each cell.

    Parameters
    ----------
    idata
        A fit with ``observed_data["y"]`` and ``posterior_predictive["y"]``, counts with dims
        ``(..., "cell", "outcome")``.
    outcome
        The outcome whose share is returned.

    Returns
    -------
    observed : xarray.DataArray
        Dims ``("cell",)``.
    replicated : xarray.DataArray
        Dims ``("chain", "draw", "cell")``.
    """
    for group in ("observed_data", "posterior_predictive"):
        if group not in _arviz.groups(idata) or "y" not in _arviz.group(idata, group):
            raise PluralstanError(
                f"the fit has no {group}['y'] (counts per cell and outcome); groups present: "
                f"{list(_arviz.groups(idata))}"
            )
    obs = _arviz.group(idata, "observed_data")["y"]
    rep = _arviz.group(idata, "posterior_predictive")["y"]
    if "outcome" not in obs.dims or outcome not in obs["outcome"].values:
        raise PluralstanError(
            f"observed_data['y'] has dims {obs.dims}; needs an 'outcome' dim with coordinate "
            f"{outcome!r}"
        )
    totals = obs.sum("outcome")
    return obs.sel(outcome=outcome) / totals, rep.sel(outcome=outcome) / totals


def cell_groups(idata: _arviz.Idata) -> np.ndarray | None:
    """Group label of every cell when cells are split by an observed group, else ``None``.

    Read from ``constant_data["cell_group"]`` (0-based codes into the posterior's ``group``
    coordinate), which labeled models record.
    """
    const = _arviz.group(idata, "constant_data")
    post = _arviz.group(idata, "posterior")
    if const is None or "cell_group" not in const or "group" not in post.coords:
        return None
    codes = np.asarray(const["cell_group"].values)
    if codes.shape != (_arviz.group(idata, "observed_data").sizes.get("cell", -1),):
        return None
    return np.asarray(post["group"].values)[codes.astype(int)]


def cell_intervals(idata: _arviz.Idata, prob: float = 0.9, outcome: str = "a") -> xr.Dataset:
    """Observed share of ``outcome`` per cell against its replicated central interval.

    Parameters
    ----------
    idata
        A fit with observed and replicated counts (see :func:`cell_frequencies`).
    prob
        Mass of the central interval of the replicated share.
    outcome
        The outcome whose share is checked.

    Returns
    -------
    xarray.Dataset
        Over dim ``cell``: ``n`` (judgements), ``observed``, ``rep_lower``, ``rep_median``,
        ``rep_upper``, ``rep_mean`` and ``outside`` (observed outside the interval); a ``group``
        coordinate when cells are split by an observed group (:func:`cell_groups`).
    """
    obs, rep = cell_frequencies(idata, outcome)
    summary = central_interval(rep, prob, median=True)
    lower, upper = summary["lower"], summary["upper"]
    out = xr.Dataset({
        "n": _arviz.group(idata, "observed_data")["y"].sum("outcome"),
        "observed": obs, "rep_lower": lower, "rep_median": summary["median"],
        "rep_upper": upper, "rep_mean": summary["mean"],
        "outside": (obs < lower) | (obs > upper),
    }).reset_coords(drop=True)
    groups = cell_groups(idata)
    if groups is not None:
        out = out.assign_coords(group=("cell", groups))
    return out.assign_attrs(prob=float(prob))


def cell_log_likelihood(idata: _arviz.Idata) -> xr.DataArray | None:
    """Log likelihood of each cell's counts, ``(chain, draw, cell)``, or ``None``.

    Summed from the per-judgement log likelihood (dim ``comparison``) over the judgements of
    each cell (``constant_data["cell_of_row"]``); this is the cell's multinomial log likelihood
    up to its multinomial coefficient, a constant that cancels from importance weights. Models
    whose log likelihood is per annotator cannot be cut into cells: ``None``.
    """
    if "log_likelihood" not in _arviz.groups(idata):
        return None
    ll = _arviz.group(idata, "log_likelihood")
    da = ll["y"] if "y" in ll else next(iter(ll.data_vars.values()), None)
    if da is None:
        return None
    if "cell" in da.dims:
        return da
    const = _arviz.group(idata, "constant_data")
    if "comparison" in da.dims and const is not None and "cell_of_row" in const:
        cell_of_row = np.asarray(const["cell_of_row"].values)
        if cell_of_row.shape == (da.sizes["comparison"],):
            key = xr.DataArray(cell_of_row, dims="comparison", name="cell")
            return da.groupby(key).sum()
    return None


def cell_pit(
    idata: _arviz.Idata, outcome: str = "a", *, loo: bool = True, seed: int = 0
) -> xr.Dataset:
    """Randomised PIT of the count of ``outcome`` in each cell.

    For a discrete count the ordinary PIT ``P(y_rep <= y)`` is not uniform even under the true
    model, so the randomised PIT (Czado, Gneiting & Held 2009) is used,
    ``P(y_rep < y) + U * P(y_rep = y)`` with ``U ~ Uniform(0, 1)``, which is exactly uniform
    when the predictive distribution is right. (ArviZ's ``loo_pit`` instead smooths discrete
    values with a spline over the observation index, which has no meaning for cells, and the
    per-judgement log likelihood does not match the per-cell counts, so this is written here.)

    With ``loo`` and a log likelihood that can be summed per cell (:func:`cell_log_likelihood`)
    the predictive probabilities are leave-one-cell-out, by Pareto-smoothed importance weights
    (:func:`pluralstan._arviz.psislw`); otherwise they are in-sample posterior predictive
    probabilities, which are conservative (too central) for an over-fitting model.

    Parameters
    ----------
    idata
        A fit with observed and replicated counts (see :func:`cell_frequencies`).
    outcome
        The outcome whose count is transformed.
    loo
        Leave each cell out when the log likelihood allows it.
    seed
        Seed of the uniform draws that randomise the PIT.

    Returns
    -------
    xarray.Dataset
        ``pit`` over dim ``cell`` and, for leave-one-cell-out PIT, ``pareto_k`` (the Pareto
        shape estimate of each cell's importance weights); ``attrs["kind"]`` is
        ``"leave-one-cell-out"`` or ``"in-sample"``.
    """
    obs = _arviz.group(idata, "observed_data")["y"].sel(outcome=outcome)
    rep = _arviz.group(idata, "posterior_predictive")["y"].sel(outcome=outcome)
    rep = rep.stack(__sample__=SAMPLE_DIMS).transpose("cell", "__sample__").values
    n_samples = rep.shape[1]
    ll = cell_log_likelihood(idata) if loo else None
    out: dict[str, tuple[str, np.ndarray]] = {}
    if ll is not None:
        stacked = ll.stack(__sample__=SAMPLE_DIMS).transpose("cell", "__sample__")
        ess = az.ess(_arviz.group(idata, "posterior")[parameter_names(idata)], method="mean")
        reff = float(np.mean([ess[v].mean() for v in ess.data_vars])) / n_samples
        log_w, khat = _arviz.psislw(-stacked, reff=min(reff, 1.0), dim="__sample__")
        weights = np.exp(log_w.values)
        kind = "leave-one-cell-out"
        out["pareto_k"] = ("cell", np.asarray(khat.values))
    else:
        weights = np.full(rep.shape, 1.0 / n_samples)
        kind = "in-sample"
    y = obs.values[:, None]
    u = np.random.default_rng(seed).uniform(size=y.shape[0])
    below = (weights * (rep < y)).sum(axis=1)
    equal = (weights * (rep == y)).sum(axis=1)
    out["pit"] = ("cell", np.clip(below + u * equal, 0.0, 1.0))
    return xr.Dataset(out, coords={"cell": obs["cell"].values}, attrs={"kind": kind})


def pit_ecdf(idata: _arviz.Idata, *, seed: int = 0, prob: float = 0.95,
             n_points: int = 101) -> xr.Dataset:
    """ECDF difference of the cell PIT (:func:`cell_pit`) with its simultaneous band.

    Parameters
    ----------
    idata
        A fit with observed and replicated counts.
    seed
        Seed of the randomised PIT.
    prob
        Simultaneous coverage of the band.
    n_points
        Evaluation points, evenly spaced on [0, 1].

    Returns
    -------
    xarray.Dataset
        :func:`pluralstan.checks.ecdf.ecdf_difference` of the PIT values, with the PIT's
        ``pareto_k`` (over ``cell``, LOO only) and ``attrs["kind"]``.
    """
    pit = cell_pit(idata, seed=seed)
    z = np.linspace(0, 1, n_points)
    diff = ecdf_difference(pit["pit"].values, z, prob=prob)
    if "pareto_k" in pit:
        diff["pareto_k"] = pit["pareto_k"]
    return diff.assign_attrs(kind=pit.attrs["kind"])

"""Posterior predictive checks of preference frequencies, and calibration.

Fits store replicated counts ``y_rep`` (in ``posterior_predictive`` as ``y``) with the layout of
the observed counts ``y`` (``observed_data``): one row per Stan cell and one column per outcome
("b", "a"[, "tie"]). A cell is a distinct attribute difference and presentation order (and, for
models that split cells by them, group or annotator), so cells are finer than option pairs.
This module maps cells back to the pairs and groups of the comparison table:

* per pair, replicated counts are summed over the pair's cells (outcomes of cells that show the
  pair reversed are swapped);
* per group, when a model pools groups in one cell, the replicated outcomes of the cell are
  split among its groups by a multivariate hypergeometric draw. Judgements in one cell are
  exchangeable under such a model, so this split is an exact draw from its posterior predictive
  distribution of the per-group counts; it is what exposes an aggregate model whose pooled
  frequencies look fine while each group's frequencies are far from their replications.

The frequency of a pair is the share of judgements preferring its option a, ties counting one
half (the mean of ``y``). Checks per Stan cell, which need no comparison table, are in
:mod:`pluralstan.checks.cells`; the figures are drawn by :mod:`pluralstan.plots`
(:func:`~pluralstan.plots.plot_calibration`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from scipy.stats import beta

from .. import _arviz, diagnostics
from ..data import Comparisons
from ..errors import PluralstanError
from .intervals import central_interval
from .predict import pair_table

__all__ = ["calibration_table", "ppc_frequencies", "replicated_frequencies"]


def _cell_layout(idata: _arviz.Idata, comps: Comparisons) -> tuple[np.ndarray, np.ndarray]:
    """Cell of every judgement and the outcome column meaning "a preferred"."""
    constant = _arviz.group(idata, "constant_data")
    if constant is None or "cell_of_row" not in constant:
        raise PluralstanError(
            "the fit has no constant_data.cell_of_row (map from judgements to Stan cells); "
            "posterior predictive frequencies need a comparison-level model"
        )
    cell_of_row = constant["cell_of_row"].to_numpy().astype(np.int64)
    if cell_of_row.shape != (comps.n,):
        raise PluralstanError(
            f"the fit encodes {cell_of_row.size} judgements but the comparison table has "
            f"{comps.n}; pass the table the model was fitted to"
        )
    return cell_of_row, np.asarray(_arviz.group(idata, "observed_data")["outcome"].values)


def _split_hypergeometric(
    counts: np.ndarray, sizes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Split replicated outcome counts of one cell among groups without replacement.

    ``counts`` is ``(S, O)`` (draws x outcomes), ``sizes`` the number of judgements of each group
    in the cell (summing to the row totals of ``counts``). Returns ``(S, G, O)``. NumPy's
    hypergeometric sampler is vectorised over draws; the multivariate split is built from it
    outcome by outcome (NumPy's ``multivariate_hypergeometric`` is not vectorised over draws).
    """
    remaining = counts.astype(np.int64).copy()
    out = np.zeros((counts.shape[0], sizes.size, counts.shape[1]), dtype=np.int64)
    for g, size in enumerate(sizes[:-1]):
        to_draw = np.full(counts.shape[0], int(size))
        for o in range(counts.shape[1] - 1):
            rest = remaining[:, o + 1:].sum(axis=1)
            took = rng.hypergeometric(remaining[:, o], rest, to_draw) if size else 0
            out[:, g, o] = took
            to_draw = to_draw - took
        out[:, g, -1] = to_draw
        remaining -= out[:, g]
    out[:, -1] = remaining
    return out


def replicated_frequencies(
    idata: _arviz.Idata, comps: Comparisons, *, by_group: bool = False, seed: int = 0
) -> xr.Dataset:
    """Observed and replicated preference frequencies per pair (and group).

    Parameters
    ----------
    idata
        A comparison-level fit with ``posterior_predictive.y`` and ``constant_data.cell_of_row``.
    comps
        The table the model was fitted to.
    by_group
        Split by the observed ``group`` labels.
    seed
        Seed of the hypergeometric split of pooled cells among groups.

    Returns
    -------
    xarray.Dataset
        ``n`` (judgements), ``observed`` (frequency) with dims ``([group,] pair)`` and
        ``replicated`` with dims ``(chain, draw, [group,] pair)``.
    """
    cell_of_row, outcomes = _cell_layout(idata, comps)
    table = pair_table(comps)
    y_rep = _arviz.group(idata, "posterior_predictive")["y"]
    chains, draws = y_rep.sizes["chain"], y_rep.sizes["draw"]
    rep = y_rep.transpose("chain", "draw", ...).to_numpy().reshape(chains * draws, -1,
                                                                     len(outcomes))
    score = np.array([{"b": 0.0, "a": 1.0, "tie": 0.5}[str(o)] for o in outcomes])
    groups = comps.codes("group") if by_group else np.zeros(comps.n, dtype=np.int64)
    levels = list(comps.group_levels) if by_group else [None]
    # judgements per (cell, group) and the pair / orientation of every cell
    cells = pd.DataFrame({"cell": cell_of_row, "group": groups, "pair": table.pair_of_row,
                          "sign": table.sign_of_row})
    per_cell = cells.groupby("cell")[["pair", "sign"]].agg(["min", "max"])
    mixed = per_cell[("pair", "min")] != per_cell[("pair", "max")]
    if mixed.any():
        c = int(per_cell.index[mixed][0])
        raise PluralstanError(
            f"Stan cell {c} holds judgements of different pair ids (identical attribute "
            "differences under different ids); per-pair frequencies need one pair per cell, so "
            "give such judgements one pair id"
        )
    rng = np.random.default_rng(seed)
    wins = np.zeros((chains * draws, len(levels), table.pairs.size))
    n = np.zeros((len(levels), table.pairs.size))
    for cell, rows in cells.groupby("cell"):
        pair, sign = int(rows["pair"].iloc[0]), float(rows["sign"].iloc[0])
        sizes = np.bincount(rows["group"], minlength=len(levels))
        split = _split_hypergeometric(rep[:, cell], sizes, rng) if np.count_nonzero(sizes) > 1 \
            else _one_group(rep[:, cell], sizes)
        a_share = split @ score  # (S, G): judgements preferring a (ties one half)
        wins[:, :, pair] += a_share if sign > 0 else sizes[None, :] - a_share
        n[:, pair] += sizes
    y = comps.frame["y"].to_numpy(float)
    oriented = np.where(table.sign_of_row > 0, y, 1.0 - y)
    observed = np.zeros_like(n)
    np.add.at(observed, (groups, table.pair_of_row), oriented)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = observed / n
        replicated = wins / n[None]
    dims = ("group", "pair")
    coords = {"group": levels, "pair": table.pairs}
    ds = xr.Dataset({
        "n": (dims, n.astype(np.int64)),
        "observed": (dims, observed),
        "replicated": (("chain", "draw", *dims), replicated.reshape(chains, draws, *n.shape)),
    }, coords={**coords, "chain": y_rep["chain"].values, "draw": y_rep["draw"].values})
    return ds if by_group else ds.isel(group=0, drop=True)


def _one_group(counts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """A cell whose judgements all come from one group: ``(S, G, O)`` with zeros elsewhere."""
    out = np.zeros((counts.shape[0], sizes.size, counts.shape[1]), dtype=np.int64)
    out[:, int(np.argmax(sizes))] = counts
    return out


def ppc_frequencies(
    idata: _arviz.Idata,
    comps: Comparisons,
    *,
    by_group: bool = False,
    prob: float = 0.9,
    seed: int = 0,
) -> pd.DataFrame:
    """Observed vs replicated preference frequency per pair (and group), as a tidy table.

    Returns
    -------
    pandas.DataFrame
        One row per pair (and group) with judgements: ``pair``, [``group``], ``n``,
        ``observed``, ``rep_mean``, ``rep_lower``, ``rep_upper`` (equal-tailed ``prob``
        interval), ``p_value`` (two-sided posterior predictive p-value:
        2 min(P(rep <= obs), P(rep >= obs)), capped at 1), ``outside`` (observed outside the
        interval) and ``flag`` (the fit's diagnostics).
    """
    ds = replicated_frequencies(idata, comps, by_group=by_group, seed=seed)
    rep = ds["replicated"]
    summary = central_interval(rep, prob)
    below = (rep <= ds["observed"]).mean(("chain", "draw"))
    above = (rep >= ds["observed"]).mean(("chain", "draw"))
    out = xr.Dataset({
        "n": ds["n"],
        "observed": ds["observed"],
        "rep_mean": summary["mean"],
        "rep_lower": summary["lower"],
        "rep_upper": summary["upper"],
        "p_value": np.minimum(1.0, 2.0 * np.minimum(below, above)),
    })
    table = out.to_dataframe().reset_index()
    table = table[table["n"] > 0].reset_index(drop=True)
    table["outside"] = (table["observed"] < table["rep_lower"]) | (
        table["observed"] > table["rep_upper"])
    table["flag"] = diagnostics.flag(idata)
    return table


def calibration_table(
    idata: _arviz.Idata,
    comps: Comparisons,
    *,
    bins: int = 10,
    by_group: bool = False,
    prob: float = 0.9,
    seed: int = 0,
) -> pd.DataFrame:
    """Predicted probability against observed frequency, pairs binned by prediction.

    The predicted probability of a pair is its posterior predictive mean frequency (the
    posterior mean of P(a preferred), ties one half), which needs only ``y_rep`` and so works
    for every model. Binning averages pairs with similar predictions, so opposed subgroups can
    cancel inside a bin: an aggregate model can look calibrated for each group in this table
    while missing each group's pairs; :func:`ppc_frequencies` with ``by_group=True`` checks
    pair by pair.

    Parameters
    ----------
    bins
        Number of equal-width bins of predicted probability on [0, 1].
    by_group
        Calibrate each observed group's frequencies (where an aggregate model fails).
    prob
        Mass of the interval for the observed frequency of a bin (Jeffreys beta interval on the
        judgements of the bin).

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin (and group): ``bin_lower``, ``bin_upper``, ``pairs``,
        ``judgements``, ``predicted`` (judgement-weighted mean), ``observed``, ``lower``,
        ``upper``, ``flag``.
    """
    if int(bins) < 1:
        raise PluralstanError(f"bins must be a positive integer, got {bins!r}")
    tidy = ppc_frequencies(idata, comps, by_group=by_group, seed=seed)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    tidy["bin"] = np.clip(np.digitize(tidy["rep_mean"], edges[1:-1]), 0, int(bins) - 1)
    tidy["wins"] = tidy["observed"] * tidy["n"]
    tidy["pred_n"] = tidy["rep_mean"] * tidy["n"]
    keys = ["group", "bin"] if by_group else ["bin"]
    agg = tidy.groupby(keys).agg(pairs=("pair", "size"), judgements=("n", "sum"),
                                 wins=("wins", "sum"), pred_n=("pred_n", "sum")).reset_index()
    agg["bin_lower"], agg["bin_upper"] = edges[agg["bin"]], edges[agg["bin"] + 1]
    agg["predicted"] = agg["pred_n"] / agg["judgements"]
    agg["observed"] = agg["wins"] / agg["judgements"]
    # Jeffreys interval for a binomial share (ties count one half, so wins may be fractional)
    a, b = agg["wins"] + 0.5, agg["judgements"] - agg["wins"] + 0.5
    agg["lower"], agg["upper"] = beta.ppf(0.5 - prob / 2, a, b), beta.ppf(0.5 + prob / 2, a, b)
    agg["flag"] = diagnostics.flag(idata)
    lead = ["group"] if by_group else []
    return agg[[*lead, "bin_lower", "bin_upper", "pairs", "judgements", "predicted",
                "observed", "lower", "upper", "flag"]]


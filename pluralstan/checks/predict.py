"""Preference probabilities per posterior draw for option pairs, from any Bradley-Terry-type fit.

Every workflow quantity (masking ratio, calibration, aggregation audit) is a function of the
probability that option a is preferred to option b. For a fit that follows the naming convention
of :mod:`pluralstan.models` this is

* aggregate model (``theta`` with dims ``("attribute",)``):
  ``p(pair) = logistic(x_pair' theta)``;
* mixture models (``theta`` with dims ``("group", "attribute")`` and weights ``pi`` with dims
  ``("group",)``): ``p_k(pair) = logistic(x_pair' theta_k)`` per group and the population
  probability ``p(pair) = sum_k pi_k p_k(pair)`` (the position paper's Eq. 2),

where ``x_pair`` is the attribute difference a - b. Probabilities are for a decisive judgement
(P(a > b | not a tie), which is ``logistic(eta)`` in the Davidson model too) with presentation
order averaged out (order = 0), so they compare across models with and without those terms.

Pairs are identified by the ``pair`` column of the comparison table (or, without one, by the
distinct unordered attribute difference); :func:`pair_table` records for every judgement which
pair it belongs to and whether it showed the pair in reversed orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from .. import _arviz
from ..data import Comparisons
from ..errors import PluralstanError

__all__ = [
    "PairTable",
    "mixture_weights",
    "observed_frequencies",
    "pair_table",
    "preference_probability",
]


@dataclass(frozen=True)
class PairTable:
    """The distinct option pairs of a comparison table.

    Attributes
    ----------
    design
        ``(pair, attribute)`` attribute difference a - b of each pair in its reference
        orientation (that of its first judgement).
    pair_of_row
        ``(N,)`` position (0-based, along ``design.pair``) of the pair of every judgement.
    sign_of_row
        ``(N,)`` +1 when the judgement shows the pair in the reference orientation, -1 when a and
        b are swapped.
    """

    design: xr.DataArray
    pair_of_row: np.ndarray
    sign_of_row: np.ndarray

    @property
    def pairs(self) -> pd.Index:
        """The pair ids."""
        return self.design.indexes["pair"]


def pair_table(comps: Comparisons) -> PairTable:
    """Identify the option pairs of ``comps`` and orient every judgement against its pair.

    With a ``pair`` column, all judgements with the same id must show the same two options, in
    either orientation; without one, pairs are the distinct unordered attribute differences
    (numbered in order of first appearance).

    Raises
    ------
    PluralstanError
        When a pair id is used for judgements of different option pairs.
    """
    X = comps.design()
    if "pair" in comps.frame.columns:
        ids = comps.frame["pair"]
        codes, levels = pd.factorize(ids, sort=False)
        first = pd.Series(np.arange(comps.n)).groupby(codes).first().to_numpy()
        ref = X[first[codes]]
        same = np.all(np.isclose(X, ref), axis=1)
        flipped = np.all(np.isclose(X, -ref), axis=1) & ~same
        bad = ~(same | flipped)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise PluralstanError(
                f"pair id {ids.iloc[row]!r} at row {row} shows options whose attribute difference "
                f"differs from the first judgement of that pair (row {int(first[codes[row]])}); "
                "a pair id must always name the same two options (in either order)"
            )
        sign = np.where(flipped, -1.0, 1.0)
        pair_ids = pd.Index(levels, name="pair")
    else:
        nonzero = X != 0
        lead = np.where(nonzero.any(axis=1), np.argmax(nonzero, axis=1), 0)
        sign = np.where(X[np.arange(comps.n), lead] < 0, -1.0, 1.0)
        canonical = X * sign[:, None]
        _, first, inverse = np.unique(canonical, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        codes = rank[inverse.reshape(-1)]
        first = first[order]
        sign = sign * sign[first[codes]]  # reference orientation = the pair's first judgement
        pair_ids = pd.Index(np.arange(len(first)), name="pair")
    design = xr.DataArray(
        X[first], dims=("pair", "attribute"),
        coords={"pair": pair_ids, "attribute": list(comps.attributes)},
    )
    return PairTable(design, np.asarray(codes, dtype=np.int64), sign)


def observed_frequencies(comps: Comparisons, by: str | None = None) -> xr.Dataset:
    """Observed share of judgements preferring a (ties count one half) per pair.

    Parameters
    ----------
    comps
        The judgements.
    by
        ``None`` (pooled) or ``"group"`` (split by the observed subgroup labels).

    Returns
    -------
    xarray.Dataset
        ``n`` (judgements) and ``freq`` (share preferring the pair's option a), dims
        ``("pair",)`` or ``("group", "pair")``; cells without judgements have ``n = 0`` and
        ``freq = nan``.
    """
    table = pair_table(comps)
    y = comps.frame["y"].to_numpy(float)
    oriented = np.where(table.sign_of_row > 0, y, 1.0 - y)
    frame = pd.DataFrame({"pair": table.pairs[table.pair_of_row], "y": oriented})
    keys = ["pair"]
    if by is not None:
        if by != "group":
            raise PluralstanError(f"by must be None or 'group', got {by!r}")
        if not comps.has_groups:
            raise PluralstanError("by='group' needs a 'group' column in the comparison table")
        frame["group"] = comps.frame["group"].to_numpy()
        keys = ["group", "pair"]
    agg = frame.groupby(keys, sort=False)["y"].agg(["size", "mean"])
    ds = xr.Dataset.from_dataframe(agg.rename(columns={"size": "n", "mean": "freq"}))
    ds = ds.reindex(pair=table.pairs)
    if by is not None:
        ds = ds.reindex(group=list(comps.group_levels))
    ds["n"] = ds["n"].fillna(0).astype(np.int64)
    return ds


def _design(pairs: Comparisons | PairTable | xr.DataArray | pd.DataFrame) -> xr.DataArray:
    """Attribute differences ``(pair, attribute)`` from the accepted pair descriptions."""
    if isinstance(pairs, Comparisons):
        return pair_table(pairs).design
    if isinstance(pairs, PairTable):
        return pairs.design
    if isinstance(pairs, xr.DataArray):
        if set(pairs.dims) != {"pair", "attribute"}:
            raise PluralstanError(
                f"a pair design needs dims ('pair', 'attribute'), got {pairs.dims}"
            )
        return pairs.transpose("pair", "attribute")
    if isinstance(pairs, pd.DataFrame):
        names = [c[2:] for c in pairs.columns if isinstance(c, str) and c.startswith("a_")]
        missing = [f"b_{n}" for n in names if f"b_{n}" not in pairs.columns]
        if not names or missing:
            raise PluralstanError(
                "a pair table needs matching a_<attr> / b_<attr> columns (one row per pair); "
                f"missing: {missing or 'all a_* columns'}"
            )
        diff = pairs[[f"a_{n}" for n in names]].to_numpy(float) - pairs[
            [f"b_{n}" for n in names]
        ].to_numpy(float)
        return xr.DataArray(diff, dims=("pair", "attribute"),
                            coords={"pair": pairs.index.rename("pair"), "attribute": names})
    raise PluralstanError(
        "pairs must be a Comparisons, a PairTable, a (pair, attribute) DataArray or a "
        f"DataFrame with a_*/b_* columns; got {type(pairs).__name__}"
    )


def mixture_weights(
    samples: xr.Dataset, theta: xr.DataArray, weights: xr.DataArray | np.ndarray | None = None
) -> xr.DataArray:
    """Population weights of the groups of a mixture fit, dims ``(..., group)``.

    ``pi`` from the draws when present (dims beyond ``group`` other than chain and draw, such as
    per-annotator weights, are averaged to population shares); else ``weights`` when given; else
    equal weights.
    """
    groups = theta["group"]
    if weights is not None:
        w = xr.DataArray(np.asarray(weights, dtype=float), dims=("group",),
                         coords={"group": groups.values})
    elif "pi" in samples:
        w = samples["pi"]
        extra = [d for d in w.dims if d not in ("chain", "draw", "group")]
        w = w.mean(extra) if extra else w
    else:
        w = xr.full_like(groups, 1.0 / groups.size, dtype=float)
    if w.sizes.get("group") != groups.size:
        raise PluralstanError(
            f"mixture weights have {w.sizes.get('group')} groups but theta has {groups.size}"
        )
    return w / w.sum("group")


def preference_probability(
    idata: _arviz.Idata,
    pairs: Comparisons | PairTable | xr.DataArray | pd.DataFrame,
    *,
    group: str = "posterior",
    weights: xr.DataArray | np.ndarray | None = None,
) -> xr.Dataset:
    """P(a preferred to b) for every draw and pair.

    Parameters
    ----------
    idata
        A fit whose ``group`` holds ``theta`` with dims ``("attribute",)`` (aggregate) or
        ``("group", "attribute")`` (mixtures, with optional weights ``pi``).
    pairs
        The option pairs: a :class:`~pluralstan.data.Comparisons` (its distinct pairs), a
        :class:`PairTable`, a ``(pair, attribute)`` DataArray of differences a - b, or a
        DataFrame with one row per pair and ``a_<attr>`` / ``b_<attr>`` columns.
    group
        InferenceData group to read (``"posterior"`` or ``"prior"``).
    weights
        Group weights for mixture fits without a ``pi`` variable (e.g. observed group shares of
        a labeled model); default: ``pi`` when present, else equal weights.

    Returns
    -------
    xarray.Dataset
        ``p`` (population probability, dims ``(chain, draw, pair)``) and, for mixtures,
        ``p_group`` (dims ``(chain, draw, group, pair)``).
    """
    if group not in _arviz.groups(idata):
        raise PluralstanError(
            f"the InferenceData has no {group!r} group; groups: {_arviz.groups(idata)}"
        )
    samples = _arviz.group(idata, group)
    if "theta" not in samples:
        raise PluralstanError(
            f"the {group!r} group has no 'theta' variable; variables: {list(samples.data_vars)}"
        )
    theta = samples["theta"]
    X = _design(pairs)
    fitted = list(theta["attribute"].values)
    asked = list(X["attribute"].values)
    if [str(a) for a in fitted] != [str(a) for a in asked]:
        raise PluralstanError(
            f"the pairs describe attributes {asked} but theta has attributes {fitted}"
        )
    X = X.assign_coords(attribute=theta["attribute"].values)
    # optimize: NumPy's einsum then contracts through BLAS, several times faster on
    # (chain, draw, group) x pairs; the group weights are a contraction too, not a NaN-aware sum
    eta = xr.dot(theta, X, dim="attribute", optimize=True)
    if "group" not in theta.dims:
        return xr.Dataset({"p": expit(eta).transpose("chain", "draw", "pair")})
    p_group = expit(eta).transpose("chain", "draw", "group", "pair")
    w = mixture_weights(samples, theta, weights)
    p = xr.dot(w, p_group, dim="group").transpose("chain", "draw", "pair")
    return xr.Dataset({"p": p, "p_group": p_group})

"""The masking ratio (identification gap) of the position paper, with posterior uncertainty.

The paper's item three: a fitted reward model predicts each held-out pair's preference
probability; its *aggregate error* is the mean squared error against the pooled preference
frequency, its *within-subgroup error* the mean squared error against each subgroup's own
frequency, and

    masking ratio = within-subgroup error / aggregate error.

An aggregate model that fits pooled data well while averaging away conflicting subgroups has a
small aggregate error and a large within-subgroup error (the paper's Table 1: 0.008 vs
0.060-0.065, an 8x gap). Here the ratio is computed for every posterior draw, so it comes with
a posterior distribution (:func:`summarize_masking` gives intervals), for any BT-type fit: an
aggregate fit predicts the same probability for every subgroup; a mixture fit predicts each
subgroup with its own component (latent components are matched to the observed groups), which
is the comparison the paper asks for.

Targets:

``"observed"``
    Observed held-out frequencies (pooled, and per observed ``group``). Their binomial noise
    is part of the raw errors, and it is larger for the subgroups, which have fewer judgements
    per pair: even a perfect model has a ratio near ``sum_k w_k mean(v/n_k) / mean(v/n)`` (about
    K for K equal groups). That reference value is returned as ``attrs["noise_floor"]``
    (estimated from the held-out data) so a ratio can be read against it.
``"truth"``
    The generating probabilities of simulated data (``comps.truth``: ``theta`` with one row
    per group, in the order of ``comps.group_levels``, and ``pi``). No noise floor: a
    homogeneous population has ratio exactly 1.

:func:`point_estimate_theta` reproduces the paper's own pipeline (one theta fitted by gradient
descent on the squared error between predicted and observed aggregate frequencies), so the point
estimate and the posterior can be put side by side.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import minimize
from scipy.special import expit

from .. import _arviz, diagnostics
from ..data import Comparisons
from ..errors import PluralstanError
from ..models.base import BLOCK_VALUES
from ..relabel import match_components
from .intervals import central_interval
from .predict import observed_frequencies, pair_table, preference_probability

__all__ = ["masking_ratio", "point_estimate_theta", "split_pairs", "summarize_masking"]

Target = Literal["observed", "truth"]


def split_pairs(
    comps: Comparisons, test_fraction: float = 0.25, *, seed: int = 0
) -> tuple[Comparisons, Comparisons]:
    """Split judgements into training and held-out sets by option pair.

    Every judgement of a pair goes to the same side, so held-out pairs are new to the model.

    Parameters
    ----------
    comps
        The judgements (pairs from the ``pair`` column or, without one, the distinct pairs of
        options; see :func:`~pluralstan.checks.predict.pair_table`).
    test_fraction
        Share of pairs held out, in (0, 1); at least one pair goes to each side.
    seed
        Seed of the random split.

    Returns
    -------
    train, test : Comparisons
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise PluralstanError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    table = pair_table(comps)
    n_pairs = table.pairs.size
    if n_pairs < 2:
        raise PluralstanError(
            f"a split by pair needs at least 2 distinct pairs; the table has {n_pairs}"
        )
    n_test = int(np.clip(round(test_fraction * n_pairs), 1, n_pairs - 1))
    held_out = np.random.default_rng(seed).choice(n_pairs, size=n_test, replace=False)
    is_test = np.isin(table.pair_of_row, held_out)
    return comps.subset(np.flatnonzero(~is_test)), comps.subset(np.flatnonzero(is_test))


def point_estimate_theta(comps: Comparisons) -> xr.DataArray:
    """The paper's point estimate: one theta minimising the squared error between
    ``logistic(x' theta)`` and the observed pooled preference frequency of each pair.

    Minimised with L-BFGS-B from theta = 0 and the analytic gradient.

    Returns
    -------
    xarray.DataArray
        ``theta_agg`` with dims ``("attribute",)``; ``attrs["mse"]`` is the attained aggregate
        squared error on ``comps``.
    """
    freq = observed_frequencies(comps)["freq"]
    X = pair_table(comps).design.transpose("pair", "attribute").to_numpy()
    f = freq.to_numpy()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p = expit(X @ theta)
        r = p - f
        return float(np.mean(r**2)), X.T @ (2.0 * r * p * (1.0 - p)) / len(f)

    res = minimize(loss, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B")
    if not res.success:
        raise PluralstanError(f"the aggregate-MSE point estimate did not converge: {res.message}")
    return xr.DataArray(res.x, dims=("attribute",),
                        coords={"attribute": list(comps.attributes)},
                        name="theta_agg", attrs={"mse": float(res.fun)})


def _targets(test: Comparisons, target: Target) -> xr.Dataset:
    """Aggregate and per-group targets on the held-out pairs (and the noise floor)."""
    if not test.has_groups:
        raise PluralstanError(
            "the masking ratio needs subgroup labels: the held-out table has no 'group' column"
        )
    design = pair_table(test).design
    counts = observed_frequencies(test, by="group")["n"]
    out = xr.Dataset({"weight": counts.sum("pair") / counts.sum()})
    if target == "truth":
        truth = test.truth or {}
        theta = np.asarray(truth.get("theta", []), dtype=float)
        levels = list(test.group_levels)
        if theta.ndim != 2 or "pi" not in truth:
            raise PluralstanError(
                "target='truth' needs comps.truth with a (K, d) 'theta' and 'pi' (data from "
                "pluralstan.simulate.mixture); use target='observed' for real data"
            )
        if theta.shape[0] < len(levels):
            raise PluralstanError(
                f"comps.truth['theta'] has {theta.shape[0]} rows but the data have "
                f"{len(levels)} groups"
            )
        theta_da = xr.DataArray(theta, dims=("group", "attribute"),
                                coords={"group": np.arange(theta.shape[0]),
                                        "attribute": design["attribute"].values})
        p_true = expit(xr.dot(theta_da, design, dim="attribute"))
        pi = xr.DataArray(np.asarray(truth["pi"], float), dims=("group",),
                          coords={"group": theta_da["group"].values})
        out["agg_target"] = (pi * p_true).sum("group")
        group = p_true.isel(group=slice(0, len(levels))).assign_coords(group=levels)
        out["group_target"] = group.where(counts > 0)
        out.attrs["noise_floor"] = 1.0
        return out
    if target != "observed":
        raise PluralstanError(f"target must be 'observed' or 'truth', got {target!r}")
    pooled = observed_frequencies(test)
    by_group = observed_frequencies(test, by="group")
    out["agg_target"], out["group_target"] = pooled["freq"], by_group["freq"]
    out.attrs["noise_floor"] = _noise_floor(test, counts, out["weight"])
    return out


def _noise_floor(test: Comparisons, counts: xr.DataArray, weight: xr.DataArray) -> float:
    """Masking ratio of a perfect model against observed frequencies (their noise alone).

    The sampling variance of a group's frequency on a pair is estimated without bias by
    s^2 / n (sample variance of the judgements); the pooled frequency is a mixture of the
    groups' with the observed counts, so its variance given those counts is
    sum_k (n_k / n)^2 s_k^2 / n_k. Cells with a single judgement contribute nothing.
    """
    table = pair_table(test)
    y = test.frame["y"].to_numpy(float)
    frame = pd.DataFrame({"group": test.frame["group"].to_numpy(),
                          "pair": table.pairs[table.pair_of_row],
                          "y": np.where(table.sign_of_row > 0, y, 1.0 - y)})
    var = frame.groupby(["group", "pair"], sort=False)["y"].var()
    var_k = xr.DataArray.from_series(var).reindex(pair=table.pairs,
                                                  group=list(test.group_levels))
    group_noise = var_k / counts
    share = counts / counts.sum("group")
    pooled_noise = (share**2 * group_noise).sum("group", skipna=True)
    within = (weight * group_noise.mean("pair", skipna=True)).sum("group")
    return float(within / pooled_noise.mean("pair"))


def _draw_blocks(fit: _arviz.Idata, n_pairs: int) -> list[_arviz.Idata]:
    """The fit's posterior in consecutive blocks of draws of at most
    :data:`~pluralstan.models.base.BLOCK_VALUES` predicted probabilities (chains x draws x
    components x pairs) each (views, not copies): on data with many distinct pairs the whole
    array would not fit in memory."""
    post = _arviz.group(fit, "posterior")
    theta = post["theta"]
    per_draw = theta.sizes.get("chain", 1) * theta.sizes.get("group", 1) * max(n_pairs, 1)
    size = max(1, BLOCK_VALUES // per_draw)
    return [_arviz.make_idata({"posterior": post.isel(draw=slice(start, start + size))})
            for start in range(0, post.sizes["draw"], size)]


def _component_order(fit: _arviz.Idata, blocks: list[_arviz.Idata], design: xr.DataArray,
                     targets: xr.Dataset) -> list[int] | None:
    """Which fitted component stands for each observed group (``None``: a one-group fit).

    Components whose labels are the observed groups are used as they are, unless the fit marks
    them as latent (``posterior.attrs["group_labels"] == "latent"``: labels 0..K-1 that only
    look like the observed ones); latent components are matched one-to-one to observed groups
    by the assignment with the least mean squared error of their posterior-mean predictions
    over the pairs each group judged (:func:`pluralstan.relabel.match_components`), the most
    favourable labelling for the mixture. Relabel a label-switching posterior first
    (:func:`pluralstan.relabel.relabel`): one assignment for all draws assumes the draws agree
    on their labels.
    """
    post = _arviz.group(fit, "posterior")
    if "group" not in post["theta"].dims:
        return None
    observed = [str(g) for g in targets["group"].values]
    fitted = [str(g) for g in post["theta"]["group"].values]
    if post.attrs.get("group_labels") != "latent" and sorted(fitted) == sorted(observed):
        return [fitted.index(g) for g in observed]
    if len(fitted) != len(observed):
        raise PluralstanError(
            f"the mixture fit has {len(fitted)} components but the held-out data have "
            f"{len(observed)} observed groups {observed}; a masking comparison needs one "
            "component per group"
        )
    total = sum(preference_probability(block, design)["p_group"].sum(["chain", "draw"],
                                                                     skipna=False)
                for block in blocks)
    mean = total / (post.sizes["chain"] * post.sizes["draw"])
    order = match_components(mean.transpose("group", "pair").to_numpy(),
                             targets["group_target"].transpose("group", "pair").to_numpy())
    return [int(k) for k in order]


def _errors(pred: xr.Dataset, targets: xr.Dataset, order: list[int] | None) -> xr.Dataset:
    """Aggregate and per-group squared errors of one block of predictions.

    Fitted component ``order[g]`` stands for observed group ``g``: the (small) targets are put
    in the components' order rather than the block of predictions in the groups', and the
    errors are put back in the groups' order. Sums of squares are contractions (one pass over
    the block, no squared copy); a group's mean runs over the pairs it judged (its target is
    NaN elsewhere), through the indicator of those pairs rather than a NaN-aware mean.
    """
    agg_diff = pred["p"] - targets["agg_target"]
    agg_err = xr.dot(agg_diff, agg_diff, dim="pair") / agg_diff.sizes["pair"]
    observed = targets["group_target"]
    if order is None:
        p_group, target = pred["p"], observed
    else:
        p_group = pred["p_group"]
        target = observed.isel(group=np.argsort(order)).assign_coords(
            group=p_group["group"].values)
    judged = target.notnull()
    diff = p_group - target.fillna(0.0)
    group_err = xr.dot(diff, diff, judged.astype(float), dim="pair") / judged.sum("pair")
    if order is not None:
        group_err = group_err.isel(group=order).assign_coords(group=observed["group"].values)
    return xr.Dataset({"aggregate_error": agg_err, "group_error": group_err})


def masking_ratio(
    fit: _arviz.Idata | xr.DataArray,
    test: Comparisons,
    *,
    target: Target = "observed",
) -> xr.Dataset:
    """Masking ratio of a fitted model on held-out pairs, per posterior draw.

    Parameters
    ----------
    fit
        A BT-type fit (InferenceData with ``theta``; aggregate or mixture) or a point estimate
        of theta (DataArray with dims ``("attribute",)``, e.g. :func:`point_estimate_theta`).
    test
        Held-out judgements with observed ``group`` labels (see :func:`split_pairs`).
    target
        ``"observed"`` (held-out frequencies) or ``"truth"`` (simulated data's generating
        probabilities).

    Returns
    -------
    xarray.Dataset
        ``aggregate_error`` (dims ``(chain, draw)``), ``group_error`` and ``group_ratio``
        (``(chain, draw, group)``) and ``ratio`` = weighted mean of the group errors (weights =
        held-out judgement shares of the groups) / aggregate error (``(chain, draw)``); without
        chain and draw for a point estimate. ``attrs`` record the target, the model, the
        fit's diagnostic flag and the ``noise_floor`` (the ratio of a perfect model).
    """
    targets = _targets(test, target)
    design = pair_table(test).design
    if isinstance(fit, xr.DataArray):
        eta = xr.dot(fit.assign_coords(attribute=design["attribute"].values), design,
                     dim="attribute")
        errors = _errors(xr.Dataset({"p": expit(eta)}), targets, None)
        model, flag = "point estimate", ""
    else:
        blocks = _draw_blocks(fit, design.sizes["pair"])
        order = _component_order(fit, blocks, design, targets)
        errors = xr.concat([_errors(preference_probability(block, design), targets, order)
                            for block in blocks], dim="draw")
        model = _arviz.group(fit, "posterior").attrs.get("model", "fit")
        flag = diagnostics.flag(fit)
    within = (targets["weight"] * errors["group_error"]).sum("group")
    out = errors.assign(group_ratio=errors["group_error"] / errors["aggregate_error"],
                        ratio=within / errors["aggregate_error"])
    out.attrs.update({"target": target, "model": model, "flag": flag,
                      "noise_floor": targets.attrs["noise_floor"],
                      "n_test_pairs": int(design.sizes["pair"])})
    return out


def summarize_masking(masking: xr.Dataset, prob: float = 0.9) -> pd.DataFrame:
    """Tidy summary of :func:`masking_ratio`: posterior mean, median and equal-tailed interval.

    Parameters
    ----------
    masking
        Output of :func:`masking_ratio`.
    prob
        Probability mass of the equal-tailed interval (ratios are skewed, so quantiles rather
        than mean +- sd).

    Returns
    -------
    pandas.DataFrame
        One row per quantity (and group): ``quantity``, ``group``, ``mean``, ``median``,
        ``lower``, ``upper``, plus ``model``, ``target``, ``noise_floor`` and ``flag``.
    """
    if not 0.0 < prob < 1.0:
        raise PluralstanError(f"prob must lie in (0, 1), got {prob!r}")
    sample = [d for d in ("chain", "draw") if d in masking.dims]
    rows = []
    for name, da in masking.data_vars.items():
        stats = (central_interval(da, prob, sample, median=True) if sample
                 else xr.Dataset(dict.fromkeys(("mean", "lower", "median", "upper"), da)))
        frame = stats.to_dataframe().reset_index() if "group" in da.dims else pd.DataFrame(
            {k: [float(v)] for k, v in stats.items()})
        rows.append(frame.assign(quantity=name))
    table = pd.concat(rows, ignore_index=True)
    if "group" not in table.columns:
        table["group"] = None
    table = table[["quantity", "group", "mean", "median", "lower", "upper"]]
    return table.assign(model=masking.attrs.get("model"), target=masking.attrs.get("target"),
                        noise_floor=masking.attrs.get("noise_floor"),
                        flag=masking.attrs.get("flag", ""))

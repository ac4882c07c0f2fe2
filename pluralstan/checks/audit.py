"""Aggregation audit (seed 002, Shirali et al., "Direct alignment with heterogeneous preferences").

With user types k = 1..K of weights pi_k and rewards r_k(x) over a set of options, two rankings
of the options compete:

* the **user-weighted average reward** ``R(x) = sum_k pi_k r_k(x)``, the aggregation that gives a
  well-defined alignment target;
* the **normalised Borda count** ``NBC(x) = sum_y mu(y) sum_k pi_k P_k(x > y)`` with
  ``P_k(x > y) = logistic(r_k(x) - r_k(y))`` and ``mu`` the distribution alternatives are
  sampled from. An aggregate Bradley-Terry model (RLHF reward model, DPO) fitted to anonymous
  pairwise data ranks options as NBC does in the large-data limit (seed 002, Prop. 4.2).

They disagree when preferences are heterogeneous; e.g. *mediocrity promotion*: Borda ranks first
an option that no group strongly favours. This module computes both rankings per posterior draw
of a mixture fit (rewards ``r_k(x) = x' theta_k`` for options with attribute vectors ``x``), the
posterior probability that they disagree, and which group the aggregate ranking suppresses: the
group whose own reward at the Borda winner falls furthest below its reward at the average-reward
winner (``loss_k = r_k(x*_avg) - r_k(x*_Borda)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from .. import _arviz, diagnostics
from ..errors import PluralstanError
from .predict import mixture_weights

__all__ = ["AuditResult", "aggregation_audit", "audit_rewards", "mediocrity_example"]

SAMPLE_DIMS = ("chain", "draw")


def mediocrity_example() -> tuple[xr.DataArray, xr.DataArray]:
    """A mediocrity-promotion instance after seed 002, section 4.3.

    Three equally represented types judge short (S), medium (M) and long (L) summaries: type
    ``long`` strongly favours long ones, type ``short`` short ones, type ``medium`` slightly
    prefers medium ones. The seed's own reward values are not in its text, so these are chosen
    to reproduce the phenomenon: the average reward ranks L > S > M, while the Borda count
    (uniform alternatives) ranks M first, an option no group strongly favours.

    Returns
    -------
    rewards, pi
        ``rewards`` with dims ``("group", "option")``, ``pi`` with dims ``("group",)``.
    """
    rewards = xr.DataArray(
        [[0.0, 3.0, 11.0], [10.0, 3.0, 0.0], [0.0, 1.0, 0.0]],
        dims=("group", "option"),
        coords={"group": ["long", "short", "medium"], "option": ["S", "M", "L"]},
    )
    pi = xr.DataArray(np.full(3, 1.0 / 3.0), dims=("group",),
                      coords={"group": rewards["group"].values})
    return rewards, pi


def _rank(score: xr.DataArray) -> xr.DataArray:
    """Rank along ``option``, 1 = highest score (ties broken by option order)."""
    order = (-score).argsort(axis=score.get_axis_num("option"))
    ranks = order.argsort(axis=score.get_axis_num("option")) + 1
    return score.copy(data=np.asarray(ranks))


def audit_rewards(
    rewards: xr.DataArray, pi: xr.DataArray, mu: xr.DataArray | None = None
) -> xr.Dataset:
    """Average-reward and Borda rankings, and their disagreement, from group rewards.

    Parameters
    ----------
    rewards
        ``r_k(x)`` with dims ``(..., group, option)`` (leading dims such as chain and draw are
        kept).
    pi
        Group weights with dims ``(..., group)``.
    mu
        Distribution of alternatives over the options (dims ``("option",)``); default uniform.

    Returns
    -------
    xarray.Dataset
        ``average_reward``, ``borda``, ``rank_average``, ``rank_borda`` (dims ``(..., option)``),
        ``top_disagree`` and ``order_disagree`` (booleans), ``kendall`` (number of discordant
        option pairs between the two rankings), ``loss`` (``(..., group)``: reward group k loses
        when the Borda winner replaces the average-reward winner) and ``suppressed`` (the group
        with the largest loss, ``None``-like ``""`` where the winners agree).
    """
    if not {"group", "option"} <= set(rewards.dims):
        raise PluralstanError(f"rewards need dims 'group' and 'option', got {rewards.dims}")
    options = rewards["option"]
    if mu is None:
        mu = xr.full_like(options, 1.0 / options.size, dtype=float)
    if mu.sizes.get("option") != options.size or np.any(mu < 0) or not np.isclose(mu.sum(), 1):
        raise PluralstanError("mu must be a distribution over the options (non-negative, sum 1)")
    pi = pi / pi.sum("group")
    average = (pi * rewards).sum("group")
    alt = rewards.rename(option="alternative")
    p_win = expit(rewards - alt)  # (..., group, option, alternative)
    borda = (pi * (p_win * mu.rename(option="alternative")).sum("alternative")).sum("group")
    rank_avg, rank_borda = _rank(average), _rank(borda)
    top_avg = average.argmax("option")
    top_borda = borda.argmax("option")
    above_avg = rank_avg < rank_avg.rename(option="alternative")
    above_borda = rank_borda < rank_borda.rename(option="alternative")
    kendall = (above_avg & ~above_borda).sum(("option", "alternative"))
    loss = rewards.isel(option=top_avg) - rewards.isel(option=top_borda)
    disagree = top_avg != top_borda
    worst = loss.argmax("group")
    suppressed = xr.where(disagree, rewards["group"].astype(str).values[worst], "")
    return xr.Dataset({
        "average_reward": average,
        "borda": borda,
        "rank_average": rank_avg,
        "rank_borda": rank_borda,
        "top_disagree": disagree,
        "order_disagree": kendall > 0,
        "kendall": kendall,
        "loss": loss,
        "suppressed": suppressed,
    })


@dataclass
class AuditResult:
    """Tidy output of :func:`aggregation_audit`.

    Attributes
    ----------
    summary
        One row: ``p_top_disagree``, ``p_order_disagree``, ``mean_kendall``, the most likely
        ``suppressed`` group and its probability, ``flag``.
    options
        Per option: posterior mean average reward and Borda count, mean ranks, probability of
        being the average-reward winner and the Borda winner.
    groups
        Per group: mean ``loss`` and the probability of being the suppressed group.
    draws
        The per-draw :func:`audit_rewards` dataset.
    """

    summary: pd.DataFrame
    options: pd.DataFrame
    groups: pd.DataFrame
    draws: xr.Dataset


def _rewards_from_fit(
    idata: _arviz.Idata, options: pd.DataFrame, weights: np.ndarray | None
) -> tuple[xr.DataArray, xr.DataArray]:
    post = _arviz.group(idata, "posterior")
    if "theta" not in post or "group" not in post["theta"].dims:
        raise PluralstanError(
            "the aggregation audit needs a mixture fit: posterior 'theta' with dims "
            "('group', 'attribute')"
        )
    attributes = [str(a) for a in post["theta"]["attribute"].values]
    missing = [a for a in attributes if a not in options.columns]
    if missing:
        raise PluralstanError(
            f"the options table lacks attribute column(s) {missing}; it needs one row per "
            f"option and the columns {attributes}"
        )
    X = xr.DataArray(options[attributes].to_numpy(float), dims=("option", "attribute"),
                     coords={"option": options.index.astype(str),
                             "attribute": post["theta"]["attribute"].values})
    rewards = xr.dot(post["theta"], X, dim="attribute")
    return rewards, mixture_weights(post, post["theta"], weights)


def _summaries(draws: xr.Dataset, flag: str) -> AuditResult:
    sample = [d for d in SAMPLE_DIMS if d in draws.dims]
    options = draws["option"].values
    opts = pd.DataFrame({
        "option": options,
        "average_reward": draws["average_reward"].mean(sample).values,
        "borda": draws["borda"].mean(sample).values,
        "rank_average": draws["rank_average"].mean(sample).values,
        "rank_borda": draws["rank_borda"].mean(sample).values,
        "p_top_average": (draws["rank_average"] == 1).astype(float).mean(sample).values,
        "p_top_borda": (draws["rank_borda"] == 1).astype(float).mean(sample).values,
    })
    suppressed = pd.Series(np.asarray(draws["suppressed"]).ravel())
    groups = [str(g) for g in draws["group"].values]
    share = suppressed.value_counts(normalize=False).reindex(groups, fill_value=0) / len(
        suppressed)
    grp = pd.DataFrame({"group": groups, "mean_loss": draws["loss"].mean(sample).values,
                        "p_suppressed": share.to_numpy()})
    top = grp.sort_values("p_suppressed", ascending=False).iloc[0]
    summary = pd.DataFrame([{
        "p_top_disagree": float(draws["top_disagree"].mean()),
        "p_order_disagree": float(draws["order_disagree"].mean()),
        "mean_kendall": float(draws["kendall"].mean()),
        "suppressed": top["group"] if top["p_suppressed"] > 0 else "",
        "p_suppressed": float(top["p_suppressed"]),
        "flag": flag,
    }])
    return AuditResult(summary, opts, grp, draws)


def aggregation_audit(
    fit: _arviz.Idata | tuple[xr.DataArray, xr.DataArray],
    options: pd.DataFrame | None = None,
    *,
    mu: xr.DataArray | None = None,
    weights: np.ndarray | None = None,
) -> AuditResult:
    """Average reward vs Borda (aggregate BT) ranking of a set of options, per posterior draw.

    Parameters
    ----------
    fit
        A mixture fit (posterior ``theta`` with dims ``("group", "attribute")`` and weights
        ``pi``), or known ``(rewards, pi)`` DataArrays as returned by
        :func:`mediocrity_example`.
    options
        With a fit: one row per option (index = option name), one column per attribute.
    mu
        Distribution of alternatives for the Borda count (default uniform over the options).
    weights
        Group weights for fits without ``pi`` (see
        :func:`~pluralstan.checks.predict.preference_probability`).

    Returns
    -------
    AuditResult
        Tidy tables (summary, per option, per group) and the per-draw dataset.
    """
    if isinstance(fit, tuple):
        rewards, pi = fit
        flag = ""
    else:
        if options is None or not isinstance(options, pd.DataFrame):
            raise PluralstanError("with a fit, options must be a DataFrame of option attributes")
        rewards, pi = _rewards_from_fit(fit, options, weights)
        flag = diagnostics.flag(fit)
    if rewards.sizes["option"] < 2:
        raise PluralstanError("the audit needs at least two options")
    return _summaries(audit_rewards(rewards, pi, mu), flag)

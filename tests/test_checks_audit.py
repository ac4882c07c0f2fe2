"""Aggregation audit on seed 002's mediocrity-promotion example and on posterior draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import aggregation_audit, audit_rewards, mediocrity_example


def test_mediocrity_promotion_is_detected():
    rewards, pi = mediocrity_example()
    result = aggregation_audit((rewards, pi))
    opts = result.options.set_index("option")
    # average reward: L (11/3) > S (10/3) > M (7/3); Borda: M first, no group's strong favourite
    assert opts["rank_average"].to_dict() == {"S": 2, "M": 3, "L": 1}
    assert opts["rank_borda"].idxmin() == "M"
    assert opts["average_reward"].to_numpy() == pytest.approx([10 / 3, 7 / 3, 11 / 3])
    row = result.summary.iloc[0]
    assert row["p_top_disagree"] == 1.0 and row["p_order_disagree"] == 1.0
    # the long-summary group loses 11 - 3 = 8 when M replaces L; the others gain
    groups = result.groups.set_index("group")
    assert groups.loc["long", "mean_loss"] == pytest.approx(8.0)
    assert groups.loc["short", "mean_loss"] == pytest.approx(-3.0)
    assert row["suppressed"] == "long"


def test_borda_by_hand():
    """NBC(x) = sum_y mu(y) sum_k pi_k logistic(r_k(x) - r_k(y)), checked on two options."""
    rewards = xr.DataArray([[1.0, 0.0], [0.0, 2.0]], dims=("group", "option"),
                           coords={"group": ["a", "b"], "option": ["x", "y"]})
    pi = xr.DataArray([0.7, 0.3], dims="group", coords={"group": ["a", "b"]})
    out = audit_rewards(rewards, pi)
    s = 1 / (1 + np.exp(-np.array([1.0, -2.0])))
    expected_x = 0.5 * (0.5 + (0.7 * s[0] + 0.3 * s[1]))
    assert float(out["borda"].sel(option="x")) == pytest.approx(expected_x)
    assert float(out["borda"].sum()) == pytest.approx(1.0)  # NBC(x) + NBC(y) = 1 for two options
    # average reward: x 0.7, y 0.6; Borda: x 0.5 * (0.5 + 0.7 * 0.731 + 0.3 * 0.119) > 0.5
    assert not bool(out["top_disagree"])


def _posterior(rewards: np.ndarray, sd: float, seed: int) -> _arviz.Idata:
    """Hand-built mixture posterior whose attributes are option indicators (theta_k = r_k)."""
    rng = np.random.default_rng(seed)
    K, n = rewards.shape
    theta = rewards[None, None] + rng.normal(0.0, sd, size=(2, 250, K, n))
    return _arviz.from_dict(
        {"posterior": {"theta": theta, "pi": np.full((2, 250, K), 1.0 / K)}},
        coords={"group": [f"g{k}" for k in range(K)], "attribute": ["S", "M", "L"]},
        dims={"theta": ["group", "attribute"], "pi": ["group"]},
    )


OPTIONS = pd.DataFrame(np.eye(3), index=["S", "M", "L"], columns=["S", "M", "L"])


def test_posterior_probability_of_disagreement():
    rewards, _ = mediocrity_example()
    result = aggregation_audit(_posterior(rewards.values, 0.1, 0), OPTIONS)
    row = result.summary.iloc[0]
    # criterion: with posterior sd 0.1 on rewards whose rankings differ by margins >= 0.3 (the
    # average) the disagreement holds in essentially every draw
    assert row["p_top_disagree"] > 0.95 and row["suppressed"] == "g0"
    assert result.draws["top_disagree"].dims == ("chain", "draw")
    # a consensus population (every group ranks L > M > S): the rankings agree in every draw
    consensus = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 4.0], [0.0, 1.5, 2.0]])
    agree = aggregation_audit(_posterior(consensus, 0.1, 1), OPTIONS).summary.iloc[0]
    assert agree["p_top_disagree"] == 0.0 and agree["suppressed"] == ""


def test_bad_input():
    rewards, pi = mediocrity_example()
    with pytest.raises(ps.PluralstanError, match="attribute column"):
        aggregation_audit(_posterior(rewards.values, 0.1, 0), OPTIONS[["S", "M"]])
    with pytest.raises(ps.PluralstanError, match="mu"):
        audit_rewards(rewards, pi, mu=xr.DataArray([0.5, 0.6, 0.1], dims="option"))
    aggregate = _arviz.from_dict({"posterior": {"theta": np.zeros((1, 5, 3))}},
                                 coords={"attribute": ["S", "M", "L"]},
                                 dims={"theta": ["attribute"]})
    with pytest.raises(ps.PluralstanError, match="mixture fit"):
        aggregation_audit(aggregate, OPTIONS)

"""Per-component views of a posterior: the least-identified pairs lead with the built-in ridge
and the strongest correlations, and a known truth is checked and aligned before it is used."""

from __future__ import annotations

import numpy as np

from pluralstan.checks.components import flatten_components, nonidentified_pairs
from tests.hand_built import mixture_idata


def test_nonidentified_pairs_lead_with_the_ridge_and_pi():
    idata, _ = mixture_idata(K=2)
    pairs = nonidentified_pairs(idata, max_pairs=4)
    assert pairs[0] == ("theta[0, x1]", "theta[1, x1]")  # the built-in ridge
    assert pairs[1][0] == "pi[0]" and pairs[1][1].startswith("theta[")
    assert ("pi[0]", "pi[1]") not in pairs


def test_aggregate_pairs_are_the_strongest_correlations(small_bt_fit):
    pairs = nonidentified_pairs(small_bt_fit, max_pairs=6)
    assert len(pairs) == 6  # all pairs of 4 attributes
    flat = flatten_components(small_bt_fit)
    strength = [abs(np.corrcoef(flat[a].values.ravel(), flat[b].values.ravel())[0, 1])
                for a, b in pairs]
    assert strength == sorted(strength, reverse=True)

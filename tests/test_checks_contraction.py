"""Posterior contraction and z-scores on cases with a known answer."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import contraction

FAST = {"chains": 4, "draws": 400, "warmup": 400}


@pytest.fixture(scope="module")
def flat_and_informed():
    """Aggregate BT data in which x3 never differs between options (flat likelihood along it)
    while x1, x2 are judged 6,000 times: contraction ~0 for x3 and ~1 for x1, x2."""
    comps = ps.simulate.bt([1.0, -0.5, 0.7], n_pairs=120, judgements_per_pair=50, seed=5)
    frame = comps.to_frame()
    frame["b_x3"] = frame["a_x3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.IdentificationWarning)
        comps = ps.Comparisons.from_frame(frame, truth={"theta": np.array([1.0, -0.5, 0.7])})
        fit = ps.fit("aggregate", comps, seed=2, sample_prior=True, **FAST)
    return comps, fit


def test_contraction_is_near_one_with_data_and_near_zero_when_flat(flat_and_informed):
    comps, fit = flat_and_informed
    tidy = contraction(fit, ["theta"], truth=comps.truth)
    assert list(tidy.columns[:2]) == ["variable", "attribute"]
    table = tidy.set_index("attribute")
    # criterion: 6,000 judgements shrink the prior sd 2.5 to ~0.1 (contraction > 0.99); the
    # likelihood is exactly flat along x3, so its contraction is 0 up to Monte Carlo error of
    # two variance estimates from 1,600 draws each (sd ~0.05): |c| < 0.2.
    assert (table.loc[["x1", "x2"], "contraction"] > 0.99).all()
    assert abs(table.loc["x3", "contraction"]) < 0.2
    # the prior sd is read from the prior draws of the same program (theta_sd = 2.5)
    assert table["prior_sd"].to_numpy() == pytest.approx(2.5, rel=0.1)
    # z-scores of a correct model on its own simulated data: |z| < 3 for the identified ones
    assert (table.loc[["x1", "x2"], "z"].abs() < 3).all()


def test_truth_of_another_shape_is_not_used(flat_and_informed):
    _, fit = flat_and_informed
    table = contraction(fit, ["theta"], truth={"theta": np.zeros((2, 3))})
    assert table["truth"].isna().all() and table["z"].isna().all()


def test_per_group_rows_for_a_mixture_layout():
    """Hand-built mixture posterior: group 0 contracts (sd 0.1 vs prior 1), group 1 does not."""
    rng = np.random.default_rng(0)
    coords = {"group": [0, 1], "attribute": ["x1", "x2"]}
    dims = {"theta": ["group", "attribute"]}
    prior = rng.normal(size=(2, 4000, 2, 2))
    post = np.stack([rng.normal(0.5, 0.1, size=(2, 4000, 2)),
                     rng.normal(0.0, 1.0, size=(2, 4000, 2))], axis=2)
    idata = _arviz.from_dict({"posterior": {"theta": post}, "prior": {"theta": prior}},
                             coords=coords, dims=dims)
    truth = {"theta": np.array([[0.5, 0.5], [0.0, 0.0]])}
    table = contraction(idata, truth=truth).set_index(["group", "attribute"])
    assert table.loc[0, "contraction"].to_numpy() == pytest.approx(0.99, abs=0.01)
    assert table.loc[1, "contraction"].abs().max() < 0.1
    assert table.loc[0, "z"].abs().max() < 0.2
    assert isinstance(table, pd.DataFrame) and (table["flag"] == "").all()


def test_missing_prior_group_is_an_error():
    idata = _arviz.from_dict({"posterior": {"theta": np.zeros((1, 10, 2))}})
    with pytest.raises(ps.PluralstanError, match="sample_prior=True"):
        contraction(idata)
    idata = _arviz.from_dict({"posterior": {"theta": np.zeros((1, 10))},
                              "prior": {"mu": np.zeros((1, 10))}})
    with pytest.raises(ps.PluralstanError, match="not in both"):
        contraction(idata, ["theta"])

"""Central intervals: the equal-tailed quantiles of the draws, per remaining coordinate."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from pluralstan.checks.intervals import central_interval
from pluralstan.errors import PluralstanError


def test_central_interval_is_the_equal_tailed_quantiles_of_the_draws():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 500, 3))
    da = xr.DataArray(values, dims=("chain", "draw", "attribute"),
                      coords={"attribute": ["x1", "x2", "x3"]})
    out = central_interval(da, 0.8, median=True, sd=True)
    pooled = values.reshape(-1, 3)
    np.testing.assert_allclose(out["lower"].values, np.quantile(pooled, 0.1, axis=0))
    np.testing.assert_allclose(out["median"].values, np.median(pooled, axis=0))
    np.testing.assert_allclose(out["upper"].values, np.quantile(pooled, 0.9, axis=0))
    np.testing.assert_allclose(out["mean"].values, pooled.mean(axis=0))
    np.testing.assert_allclose(out["sd"].values, pooled.std(axis=0, ddof=1))
    assert list(out.data_vars) == ["mean", "sd", "lower", "median", "upper"]
    assert list(out["attribute"].values) == ["x1", "x2", "x3"]
    assert set(central_interval(da).data_vars) == {"mean", "lower", "upper"}


def test_central_interval_refuses_a_probability_outside_the_unit_interval():
    da = xr.DataArray(np.zeros((1, 10)), dims=("chain", "draw"))
    with pytest.raises(PluralstanError, match=r"prob must lie in \(0, 1\), got 1.5"):
        central_interval(da, 1.5)

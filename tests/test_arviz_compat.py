"""pluralstan._arviz on whichever ArviZ is installed (0.23 on Python 3.11, 1.x on 3.12+)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from pluralstan import _arviz

RNG = np.random.default_rng(20261203)
ITEMS = ["a", "b", "c"]


def _fit(shift: float = 0.0, seed: int = 0) -> object:
    """A hand-built fit: theta (2 chains x 200 draws x 3 items), log likelihood of 40 judgements."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(loc=[0.0, 1.0, -1.0], size=(2, 200, 3))
    y = rng.normal(size=40)
    mu = rng.normal(shift, 0.1, size=(2, 200, 1))
    return _arviz.from_dict(
        {"posterior": {"theta": theta, "mu": mu[..., 0]},
         "log_likelihood": {"y": stats.norm.logpdf(y, loc=mu)},
         "log_prior": {"lprior": stats.norm.logpdf(mu[..., 0])},
         "sample_stats": {"energy": rng.normal(size=(2, 200))},
         "observed_data": {"y": y}},
        coords={"item": ITEMS, "comparison": np.arange(40)},
        dims={"theta": ["item"], "y": ["comparison"]},
    )


def test_native_container_and_groups():
    idata = _fit()
    assert isinstance(idata, _arviz.Idata) and _arviz.is_idata(idata)
    assert not _arviz.is_idata(xr.Dataset())
    assert set(_arviz.groups(idata)) == {"posterior", "log_likelihood", "log_prior",
                                         "sample_stats", "observed_data"}
    post = _arviz.group(idata, "posterior")
    assert isinstance(post, xr.Dataset)
    assert post["theta"].dims == ("chain", "draw", "item")
    assert list(post["theta"]["item"].values) == ITEMS
    assert _arviz.group(idata, "prior") is None
    # a DataTree is accepted on both lines: native() gives what az.* takes
    tree = xr.DataTree.from_dict({g: _arviz.group(idata, g) for g in _arviz.groups(idata)})
    back = _arviz.native(tree)
    assert isinstance(back, _arviz.Idata)
    np.testing.assert_array_equal(_arviz.group(back, "posterior")["theta"], post["theta"])


def test_dataset_from_dict_sampled_and_fixed():
    sampled = _arviz.dataset_from_dict({"theta": np.zeros((2, 5, 3))}, coords={"item": ITEMS},
                                       dims={"theta": ["item"]}, attrs={"model": "m"})
    fixed = _arviz.dataset_from_dict({"y": np.arange(4)}, dims={"y": ["comparison"]},
                                     sampled=False)
    assert sampled["theta"].dims == ("chain", "draw", "item") and sampled.attrs["model"] == "m"
    assert fixed["y"].dims == ("comparison",)
    idata = _arviz.make_idata({"posterior": sampled, "observed_data": fixed})
    assert isinstance(idata, _arviz.Idata)
    assert _arviz.groups(idata) == ["posterior", "observed_data"]


def test_replace_groups_adds_replaces_and_drops():
    idata = _fit()
    post = _arviz.group(idata, "posterior")
    out = _arviz.replace_groups(idata, posterior=post * 2, prior=post, log_prior=None)
    assert "log_prior" not in _arviz.groups(out) and "prior" in _arviz.groups(out)
    np.testing.assert_allclose(_arviz.group(out, "posterior")["theta"], 2 * post["theta"])
    np.testing.assert_allclose(_arviz.group(idata, "posterior")["theta"], post["theta"])


def test_netcdf_round_trip(tmp_path):
    idata = _fit()
    path = tmp_path / "fit.nc"
    _arviz.to_netcdf(idata, path)
    back = _arviz.from_netcdf(path)
    assert isinstance(back, _arviz.Idata)
    assert set(_arviz.groups(back)) == set(_arviz.groups(idata))
    for g in _arviz.groups(idata):
        xr.testing.assert_equal(_arviz.group(back, g), _arviz.group(idata, g))


def test_netcdf_is_written_without_compression(tmp_path):
    """Draws are written uncompressed on both ArviZ lines (zlib gained a few per cent on real
    fits and cost most of the time of writing them)."""
    import h5py

    path = tmp_path / "fit.nc"
    _arviz.to_netcdf(_fit(), path)
    with h5py.File(path) as f:
        filters = {f"{g}/{v}": f[g][v].compression for g in ("posterior", "log_likelihood")
                   for v in ("theta", "mu", "y") if v in f[g]}
    assert set(filters) == {"posterior/theta", "posterior/mu", "log_likelihood/y"}
    assert set(filters.values()) == {None}, filters


def test_bfmi_matches_its_definition():
    idata = _fit()
    energy = _arviz.group(idata, "sample_stats")["energy"].values
    # Betancourt (2016): sum of squared successive differences over sum of squared deviations
    deviations = energy - energy.mean(axis=1, keepdims=True)
    expected = np.square(np.diff(energy, axis=1)).sum(axis=1) / np.square(deviations).sum(axis=1)
    np.testing.assert_allclose(_arviz.bfmi(idata), expected, rtol=1e-10)


def test_psislw_normalised_weights_and_k():
    """Criterion: k of ratios with a Pareto tail of index 0.8 is estimated within 0.15, light
    (normal, sd 0.3) log ratios give k below 0.3, and the weights sum to one."""
    heavy = np.log1p(RNG.pareto(1 / 0.8, size=4000))
    light = RNG.normal(scale=0.3, size=4000)
    ratios = xr.DataArray(np.stack([heavy, light]), dims=("obs", "sample"))
    log_w, khat = _arviz.psislw(ratios, reff=1.0, dim="sample")
    assert log_w.dims == ratios.dims and khat.dims == ("obs",)
    np.testing.assert_allclose(np.exp(log_w).sum("sample"), 1.0, rtol=1e-8)
    assert abs(float(khat[0]) - 0.8) < 0.15 and float(khat[1]) < 0.3


def test_loo_compare_and_columns():
    import arviz as az

    good, bad = _fit(0.0, seed=1), _fit(1.5, seed=1)
    result = az.loo(_arviz.native(good), pointwise=True, var_name="y")
    elpd, se, p = _arviz.elpd(result)
    pointwise = _arviz.elpd_pointwise(result)
    assert pointwise.sizes["comparison"] == 40
    assert elpd == pytest.approx(float(pointwise.sum()), rel=1e-8) and se > 0 and 0 < p < 5
    table = _arviz.compare({"good": good, "bad": bad}, var_name="y")
    assert tuple(table.columns) == _arviz.COMPARE_COLUMNS
    assert list(table.index) == ["good", "bad"] and list(table["rank"]) == [0, 1]
    assert table.loc["good", "elpd_diff"] == 0 and table.loc["bad", "elpd_diff"] > 0
    assert table.loc["good", "elpd_loo"] == pytest.approx(elpd, rel=1e-6)
    assert table["weight"].sum() == pytest.approx(1.0)
    assert table["warning"].dtype == bool


def test_stacking_weights_maximise_the_stacked_log_score():
    """Criterion: ArviZ's weights score at least as well as every point of a 0.01 grid on the
    simplex of two models (to 1e-6), and a column that never beats the other gets weight ~0."""
    rng = np.random.default_rng(5)
    a = rng.normal(-1.0, 0.5, size=60)
    lpd = np.column_stack([a, a + rng.normal(0.0, 1.0, size=60)])
    w = _arviz.stacking_weights(lpd)
    assert w.shape == (2,) and w.sum() == pytest.approx(1.0, abs=1e-6)

    def score(weights):
        return float(np.sum(np.log(np.exp(lpd) @ weights)))

    best_grid = max(score(np.array([g, 1 - g])) for g in np.linspace(0, 1, 101))
    assert score(np.clip(w, 0, None) / np.clip(w, 0, None).sum()) >= best_grid - 1e-6
    dominated = np.column_stack([a, a - 1.0])
    assert _arviz.stacking_weights(dominated)[1] < 0.01


def test_summary_hdi_columns():
    idata = _fit()
    table = _arviz.summary(idata, var_names=["theta"], ci_prob=0.9)
    assert {"mean", "sd", "hdi_5%", "hdi_95%", "ess_bulk", "r_hat"} <= set(table.columns)
    assert len(table) == 3 and all(t == np.float64 for t in table.dtypes)
    theta = _arviz.group(idata, "posterior")["theta"].values.reshape(-1, 3)
    np.testing.assert_allclose(table["mean"], theta.mean(axis=0), rtol=1e-10)
    # a 90% HDI of a normal sample: close to its 5% and 95% quantiles
    np.testing.assert_allclose(table["hdi_5%"], np.quantile(theta, 0.05, axis=0), atol=0.25)
    assert (table["hdi_95%"] - table["hdi_5%"]).between(2.5, 3.9).all()


def test_power_scale_sensitivity_flags_an_informative_prior():
    rng = np.random.default_rng(3)
    mu = rng.normal(0.5, 0.3, size=(2, 500))  # posterior close to a N(0.5, 0.3) prior
    y = rng.normal(size=5)
    idata = _arviz.from_dict({
        "posterior": {"mu": mu},
        "log_prior": {"lprior": stats.norm.logpdf(mu, 0.5, 0.3)},
        "log_likelihood": {"y": stats.norm.logpdf(y, loc=mu[..., None], scale=20.0)},
    })
    table = _arviz.power_scale_sensitivity(idata, ["mu"], threshold=0.05)
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["mu"]
    assert table.loc["mu", "prior"] > 0.05 > table.loc["mu", "likelihood"]


@pytest.mark.parametrize(("n", "n_points"), [(30, 31), (120, 101)])
def test_ecdf_band_simultaneous_coverage(n, n_points):
    """Criterion: the fraction of 20,000 simulated uniform ECDFs lying wholly inside the 95% band
    is within 0.01 (over 3 Monte Carlo standard errors) of 0.95 or above it by at most the
    discreteness of the band (0.015)."""
    z = np.linspace(0, 1, n_points)
    lower, upper = _arviz.ecdf_band(n, z, z, prob=0.95)
    assert np.all(lower <= z) and np.all(upper >= z) and np.all((upper - lower)[1:-1] > 0)
    rng = np.random.default_rng(n)
    samples = rng.uniform(size=(20_000, n))
    curves = np.stack([_arviz.ecdf(s, z) for s in samples])
    inside = np.all((curves >= lower - 1e-12) & (curves <= upper + 1e-12), axis=1).mean()
    assert 0.94 <= inside <= 0.965, inside
    # the pointwise band at the same level is narrower than the simultaneous one
    pointwise = stats.binom.ppf([[0.025], [0.975]], n, z) / n
    assert np.all(upper - lower >= pointwise[1] - pointwise[0])
    assert np.any(upper - lower > pointwise[1] - pointwise[0])


def test_ecdf_counts():
    sample = np.array([0.3, 0.1, 0.1, 0.9])
    np.testing.assert_allclose(_arviz.ecdf(sample, [0.0, 0.1, 0.5, 1.0]), [0, 0.5, 0.75, 1.0])

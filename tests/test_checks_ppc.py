"""Posterior predictive frequencies and calibration: an aggregate fit to two opposed groups
reproduces the pooled frequencies and misses every group's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import pluralstan as ps
from pluralstan.checks import calibration_table, ppc_frequencies, replicated_frequencies
from pluralstan.checks.ppc import _split_hypergeometric
from pluralstan.plots import plot_calibration

FAST = {"chains": 4, "draws": 300, "warmup": 300}


@pytest.fixture(scope="module")
def conflict_fit():
    comps = ps.simulate.high_conflict(n_pairs=60, n_annotators=100, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        fit = ps.fit("aggregate", comps, seed=4, **FAST)
    return comps, fit


def test_group_split_preserves_the_pooled_replications(conflict_fit):
    comps, fit = conflict_fit
    pooled = replicated_frequencies(fit, comps)
    split = replicated_frequencies(fit, comps, by_group=True)
    wins = (split["replicated"] * split["n"]).sum("group")
    np.testing.assert_allclose(wins, pooled["replicated"] * pooled["n"], atol=1e-9)
    np.testing.assert_array_equal(split["n"].sum("group"), pooled["n"])
    assert split["replicated"].dims == ("chain", "draw", "group", "pair")
    # the observed pooled frequency is the mean of y over each pair's judgements
    first = pooled["pair"].values[0]
    rows = comps.frame["pair"] == first
    assert float(pooled["observed"].sel(pair=first)) == pytest.approx(
        comps.frame.loc[rows, "y"].mean())


def test_aggregate_fit_passes_pooled_and_fails_group_checks(conflict_fit):
    comps, fit = conflict_fit
    pooled = ppc_frequencies(fit, comps)
    by_group = ppc_frequencies(fit, comps, by_group=True)
    assert len(pooled) == 60 and len(by_group) == 120
    assert {"pair", "n", "observed", "rep_mean", "rep_lower", "rep_upper", "p_value",
            "outside", "flag"} <= set(pooled.columns)
    # criterion: pooled frequencies are inside their 90% predictive intervals for most pairs
    # (nominal 90%, allow 75%); each group's opposed preferences fall outside for most pairs
    assert pooled["outside"].mean() < 0.25
    assert by_group["outside"].mean() > 0.5


@pytest.fixture(scope="module")
def calibrated_and_shrunk():
    """Homogeneous BT data with strong preferences, fitted with the default prior and with a
    prior that pins theta near 0 (theta_sd = 0.02): the second predicts ~0.5 everywhere."""
    comps = ps.simulate.bt([2.0, -2.0, 1.0], n_pairs=60, judgements_per_pair=30, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        good = ps.fit("aggregate", comps, seed=6, **FAST)
        shrunk = ps.fit("aggregate", comps, seed=6, priors={"theta_sd": 0.02}, **FAST)
    return comps, good, shrunk


def _gap(table):
    return np.average((table["observed"] - table["predicted"]).abs(), weights=table["judgements"])


def test_calibration_of_a_correct_and_a_shrunk_model(calibrated_and_shrunk, tmp_path):
    comps, good, shrunk = calibrated_and_shrunk
    table = calibration_table(good, comps, bins=5)
    bad = calibration_table(shrunk, comps, bins=5)
    assert table["judgements"].sum() == comps.n and table["pairs"].sum() == 60
    assert {"bin_lower", "bin_upper", "predicted", "observed", "lower", "upper"} <= set(table)
    # criterion: the correct model spreads the pairs over at least 4 of the 5 bins with a
    # judgement-weighted calibration gap < 0.03; the shrunk model predicts ~0.5 for every pair
    # (one bin: calibrated in the large, no resolution)
    assert len(table) >= 4 and _gap(table) < 0.03
    assert len(bad) == 1 and bad["pairs"].item() == 60
    assert bad["predicted"].between(0.45, 0.55).all()
    ax = plot_calibration(table)
    assert len(ax.get_legend().get_texts()) == 2  # diagonal + one series
    ax.figure.savefig(tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 0


def test_calibration_by_group_has_one_series_per_group(conflict_fit):
    comps, fit = conflict_fit
    by_group = calibration_table(fit, comps, bins=5, by_group=True)
    assert set(by_group["group"]) == {0, 1}
    assert by_group.groupby("group")["judgements"].sum().tolist() == [3000, 3000]
    assert len(plot_calibration(by_group).get_legend().get_texts()) == 3


def test_hypergeometric_split_is_exact():
    rng = np.random.default_rng(0)
    counts = np.array([[3, 5, 2]] * 4000)
    out = _split_hypergeometric(counts, np.array([4, 6]), rng)
    np.testing.assert_array_equal(out.sum(axis=1), counts)
    np.testing.assert_array_equal(out.sum(axis=2), np.tile([4, 6], (4000, 1)))
    # E[count of outcome o in group g] = n_g * counts_o / n
    np.testing.assert_allclose(out[:, 0].mean(axis=0), 0.4 * counts[0], atol=0.05)


def test_wrong_table_is_rejected(conflict_fit):
    comps, fit = conflict_fit
    with pytest.raises(ps.PluralstanError, match="judgements"):
        ppc_frequencies(fit, comps.subset(np.arange(10)))
    with pytest.raises(ps.PluralstanError, match="bins"):
        calibration_table(fit, comps, bins=0)


def test_labeled_mixture_passes_the_group_checks(conflict_fit):
    """A model with one theta per observed group reproduces each group's frequencies (its cells
    are split by group, so replications come straight from y_rep)."""
    comps, aggregate = conflict_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        labeled = ps.fit("labeled", comps, seed=4, pooling="none", **FAST)
    mixture = ppc_frequencies(labeled, comps, by_group=True)
    # criterion: nominal 10% outside the 90% interval; allow 25% (the aggregate fit: > 50%)
    assert mixture["outside"].mean() < 0.25
    assert ppc_frequencies(aggregate, comps, by_group=True)["outside"].mean() > 0.5

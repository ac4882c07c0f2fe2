"""Posterior predictive checks per Stan cell: the randomised PIT is uniform under a correct
model and leaves cells out when the log likelihood is per judgement."""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import expit

from pluralstan.checks.cells import cell_log_likelihood, cell_pit
from tests.hand_built import count_idata


def test_randomised_pit_is_uniform_when_the_predictive_is_right():
    """Criterion: with replicated counts drawn from the generating probabilities the PIT of
    400 cells passes a Kolmogorov-Smirnov test for uniformity (p > 0.01), and with the
    predictions shifted by +1 on the logit scale it fails it (p < 1e-6)."""
    rng = np.random.default_rng(1)
    n = rng.integers(1, 25, size=400)
    p = rng.uniform(0.05, 0.95, size=400)
    result = cell_pit(count_idata(p, p, n))
    pit, kind, khat = result["pit"].values, result.attrs["kind"], result.get("pareto_k")
    assert kind == "in-sample" and khat is None  # no log likelihood to leave cells out with
    assert stats.kstest(pit, "uniform").pvalue > 0.01
    shifted = expit(np.log(p / (1 - p)) + 1.0)
    pit_bad = cell_pit(count_idata(p, shifted, n))["pit"].values
    assert stats.kstest(pit_bad, "uniform").pvalue < 1e-6


def test_loo_pit_of_an_aggregate_fit_leaves_cells_out(small_bt_fit):
    """The cell log likelihood is the per-judgement one summed over each cell's judgements; the
    aggregate model is the generating model, so its LOO-PIT passes KS uniformity (p > 0.01)."""
    ll = cell_log_likelihood(small_bt_fit)
    per_row = small_bt_fit.log_likelihood["y"].isel(chain=0, draw=0).values
    cell_of_row = small_bt_fit.constant_data["cell_of_row"].values
    direct = np.bincount(cell_of_row, weights=per_row)
    np.testing.assert_allclose(ll.isel(chain=0, draw=0).values, direct)
    result = cell_pit(small_bt_fit)
    pit, kind, khat = result["pit"].values, result.attrs["kind"], result["pareto_k"].values
    n_cells = small_bt_fit.observed_data.sizes["cell"]
    assert kind == "leave-one-cell-out" and pit.shape == khat.shape == (n_cells,)
    assert stats.kstest(pit, "uniform").pvalue > 0.01

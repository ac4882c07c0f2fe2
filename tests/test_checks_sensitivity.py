"""Prior sensitivity: a grid of priors refitted without recompiling, the pi grid of the paper's
item four, and power-scaling diagnostics that flag a conflicting prior and a flat likelihood."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import grid_fits, grid_shifts, pi_grid_sensitivity, power_scaling

FAST = {"chains": 4, "draws": 400, "warmup": 400}


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        return ps.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def flat_x3():
    """1,200 judgements on x1, x2; x3 never differs between the options (flat likelihood)."""
    comps = ps.simulate.bt([1.0, -0.5, 0.3], n_pairs=60, judgements_per_pair=20, seed=3)
    frame = comps.to_frame()
    frame["b_x3"] = frame["a_x3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.IdentificationWarning)
        return ps.Comparisons.from_frame(frame)


def test_power_scaling_flags_prior_data_conflict(flat_x3):
    good = _quiet_fit("aggregate", flat_x3, seed=1, **FAST)
    # prior sd 0.3 around +3 for coefficients whose data say ~1 and ~-0.5
    bad = _quiet_fit("aggregate", flat_x3, seed=1, priors={"theta_mean": [3.0, 3.0, 0.0],
                                                           "theta_sd": [0.3, 0.3, 2.5]}, **FAST)
    ok, conflict = (power_scaling(f).set_index("variable") for f in (good, bad))
    # criterion (priorsense threshold 0.05): the default prior leaves x1, x2 prior-insensitive
    # and likelihood-driven; the conflicting prior makes both sensitive (conflict flagged)
    assert not ok.loc[["theta[x1]", "theta[x2]"], "prior_data_conflict"].any()
    assert (ok.loc[["theta[x1]", "theta[x2]"], "likelihood"] > 0.05).all()
    assert conflict.loc[["theta[x1]", "theta[x2]"], "prior_data_conflict"].all()
    assert (conflict.loc[["theta[x1]", "theta[x2]"], "prior"] > 0.05).all()
    # x3 has a flat likelihood in both fits: its posterior is its prior
    assert ok.loc["theta[x3]", "weak_likelihood"]
    assert ok.loc["theta[x3]", "likelihood"] < 0.05


def test_prior_grid_moves_only_the_unidentified_coordinate(flat_x3):
    fits = grid_fits("aggregate", flat_x3, [{"theta_mean": 0.0}, {"theta_mean": [0.0, 0.0, 2.0]}],
                     labels=["centred", "shifted"], seed=2, **FAST)
    table = grid_shifts(fits, reference="centred")
    shifted = table[table["grid"] == "shifted"].set_index("attribute")
    # criterion: x3's posterior is its prior (sd 2.5), so its mean follows the prior mean: +2
    # within 4 Monte Carlo standard errors of the difference of two means; x1, x2 are
    # identified by 1,200 judgements: |shift| < 0.1
    mcse = np.hypot(*(float(az.mcse(_arviz.group(f, "posterior")[["theta"]]
                                    .sel(attribute="x3"))["theta"])
                      for f in fits.values()))
    assert abs(shifted.loc["x3", "shift"] - 2.0) < 4 * mcse
    assert shifted.loc[["x1", "x2"], "shift"].abs().max() < 0.1
    assert (table.loc[table["grid"] == "centred", "shift"] == 0).all()
    assert list(table.columns[:2]) == ["grid", "attribute"]


def test_pi_grid_on_the_labeled_model():
    """With observed labels pi is learned from the annotators' labels and theta_k from their
    judgements, so the assumed pi moves pi's posterior but not theta_k's."""
    comps = ps.simulate.high_conflict(n_pairs=40, n_annotators=20, seed=8)
    table, fits = pi_grid_sensitivity("labeled", comps, [[0.5, 0.5], [0.2, 0.8]],
                                      concentration=100.0, seed=3, pooling="none", **FAST)
    assert set(table["grid"]) == {"pi=(0.50, 0.50)", "pi=(0.20, 0.80)"}
    assert {"group", "attribute", "pi_0", "pi_1", "shift_sd"} <= set(table.columns)
    moved = table[table["grid"] == "pi=(0.20, 0.80)"]
    # criterion: theta_k shifts stay within Monte Carlo noise (< 0.5 posterior sd) ...
    assert moved["shift_sd"].abs().max() < 0.5
    # ... while pi follows the assumed composition (100 prior vs 20 labelled annotators)
    pi = grid_shifts(fits, var_name="pi").set_index(["grid", "group"])["mean"]
    assert pi.loc[("pi=(0.20, 0.80)", "0")] < pi.loc[("pi=(0.50, 0.50)", "0")] - 0.15


def test_bad_grids_are_rejected_before_sampling(flat_x3):
    with pytest.raises(ps.PluralstanError, match="summing to 1"):
        pi_grid_sensitivity("labeled", flat_x3, [[0.5, 0.6]])
    with pytest.raises(ps.PluralstanError, match="empty"):
        grid_fits("aggregate", flat_x3, [])
    with pytest.raises(ps.PluralstanError, match="unknown prior"):
        grid_fits("aggregate", flat_x3, [{"pi_alpha": 1.0}])


def test_power_scaling_prints_nothing(capsys, caplog):
    # ArviZ logs reading advice when it flags a coordinate; pluralstan's output stays quiet (the
    # table carries the diagnosis). A posterior drawn from its prior has a weak likelihood.
    from pluralstan import _arviz
    from pluralstan.checks.sensitivity import power_scaling

    rng = np.random.default_rng(0)
    theta = rng.normal(size=(2, 300, 2))
    idata = _arviz.from_dict({
        "posterior": {"theta": theta},
        "log_prior": {"lprior": -0.5 * (theta**2).sum(-1)},
        "log_likelihood": {"y": 1e-3 * theta[..., :1] + np.zeros((2, 300, 5))},
    }, coords={"attribute": ["a", "b"], "comparison": np.arange(5)},
        dims={"theta": ["attribute"], "y": ["comparison"]})
    table = power_scaling(idata, ["theta"])
    assert table["weak_likelihood"].all()
    assert not [r for r in caplog.records if "potential issues" in r.getMessage()]
    assert capsys.readouterr() == ("", "")

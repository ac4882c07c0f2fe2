"""Masking ratio on the position paper's designs: large for high conflict, 1 for a homogeneous
population (against the truth) and the noise floor (against observed frequencies)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks import (
    masking_ratio,
    observed_frequencies,
    pair_table,
    point_estimate_theta,
    preference_probability,
    split_pairs,
    summarize_masking,
)

FAST = {"chains": 4, "draws": 300, "warmup": 300}
HOMOGENEOUS = np.array([[0.5, 0.5, 0.0, 0.5, 0.5]] * 2)


def _fit_split(thetas: np.ndarray, seed: int):
    comps = ps.simulate.mixture(thetas, [0.5, 0.5], n_pairs=200, n_annotators=100, seed=seed)
    train, test = split_pairs(comps, 0.25, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        fit = ps.fit("aggregate", train, seed=seed, **FAST)
    return train, test, fit


@pytest.fixture(scope="module")
def high_conflict():
    """The paper's Table 1 design: 200 pairs x 100 annotators (50 + 50), 50 pairs held out."""
    return _fit_split(ps.simulate.HIGH_CONFLICT_THETA, seed=1)


@pytest.fixture(scope="module")
def homogeneous():
    return _fit_split(HOMOGENEOUS, seed=2)


def test_split_is_by_pair(high_conflict):
    train, test, _ = high_conflict
    train_pairs = set(pair_table(train).pairs)
    test_pairs = set(pair_table(test).pairs)
    assert not train_pairs & test_pairs
    assert len(test_pairs) == 50 and len(train_pairs) == 150
    assert train.n + test.n == 200 * 100


def test_high_conflict_masking_is_large(high_conflict):
    _, test, fit = high_conflict
    truth = masking_ratio(fit, test, target="truth")
    observed = masking_ratio(fit, test, target="observed")
    assert set(truth["ratio"].dims) == {"chain", "draw"}
    assert truth["group_ratio"].dims == ("chain", "draw", "group")
    # criterion: the aggregate model averages two opposed groups, so its within-group error
    # (~0.05) is an order of magnitude above its aggregate error; the whole 90% interval of
    # the ratio lies above 10 against the truth and against observed frequencies, whose noise
    # floor (the ratio of a perfect model) is ~2.
    for result in (truth, observed):
        row = summarize_masking(result).set_index("quantity").loc["ratio"]
        assert row["lower"] > 10
    assert observed.attrs["noise_floor"] == pytest.approx(2.0, rel=0.15)
    assert float(truth["group_error"].mean()) > 0.03


def test_point_estimate_pipeline_matches_the_posterior(high_conflict):
    train, test, fit = high_conflict
    theta = point_estimate_theta(train)
    post = fit.posterior["theta"].mean(("chain", "draw"))
    # criterion: with 15,000 judgements the MSE fit and the posterior mean agree within 0.1
    np.testing.assert_allclose(theta.values, post.values, atol=0.1)
    point = masking_ratio(theta, test, target="truth")
    assert "chain" not in point.dims and float(point["ratio"]) > 10
    assert theta.attrs["mse"] < 0.01


def test_homogeneous_population_has_no_masking(homogeneous):
    _, test, fit = homogeneous
    truth = masking_ratio(fit, test, target="truth")
    # identical groups: each group's true probability is the aggregate one, in every draw
    np.testing.assert_allclose(truth["ratio"].values, 1.0, rtol=1e-12)
    observed = summarize_masking(masking_ratio(fit, test)).set_index("quantity").loc["ratio"]
    # against observed frequencies a well-specified model sits at the noise floor (~2 here)
    assert observed["median"] == pytest.approx(observed["noise_floor"], rel=0.25)


def _mixture_idata(thetas: np.ndarray, labels: list[int], rng: np.random.Generator):
    """Hand-built mixture posterior centred on the truth, components stored in ``labels`` order."""
    draws = thetas[labels][None, None] + rng.normal(0.0, 0.05, size=(2, 200, *thetas.shape))
    return _arviz.from_dict(
        {"posterior": {"theta": draws, "pi": np.full((2, 200, 2), 0.5)}},
        coords={"group": [0, 1], "attribute": [f"x{j + 1}" for j in range(thetas.shape[1])]},
        dims={"theta": ["group", "attribute"], "pi": ["group"]},
    )


@pytest.mark.parametrize("labels", [[0, 1], [1, 0]])
def test_mixture_fit_predicts_each_group(high_conflict, labels):
    _, test, fit = high_conflict
    mixture = _mixture_idata(ps.simulate.HIGH_CONFLICT_THETA, labels, np.random.default_rng(0))
    if labels == [1, 0]:  # latent components 0, 1 that look like, but are not, groups 0, 1
        mixture.posterior.attrs["group_labels"] = "latent"
    result = masking_ratio(mixture, test, target="truth")
    # criterion: components matched to the right groups predict them with error < 0.005,
    # where the aggregate fit's within-group error is > 0.03 (a swap would give ~0.1)
    assert float(result["group_error"].max()) < 0.005
    agg = masking_ratio(fit, test, target="truth")
    assert float(result["group_error"].mean()) < float(agg["group_error"].mean()) / 5


@pytest.mark.parametrize("latent", [False, True])
def test_blocks_of_draws_give_the_same_ratio(high_conflict, monkeypatch, latent):
    """The masking ratio is computed over blocks of draws (memory); the blocks, one draw each
    here, must give the same per-draw errors as one block of all draws, for an aggregate fit
    and for a latent mixture whose components are matched on the posterior mean."""
    from pluralstan.checks import masking

    _, test, fit = high_conflict
    mixture = _mixture_idata(ps.simulate.HIGH_CONFLICT_THETA, [1, 0], np.random.default_rng(0))
    if latent:
        mixture.posterior.attrs["group_labels"] = "latent"
    whole = {name: masking_ratio(f, test) for name, f in (("agg", fit), ("mix", mixture))}
    monkeypatch.setattr(masking, "BLOCK_VALUES", 1)
    assert len(masking._draw_blocks(fit, 50)) == fit.posterior.sizes["draw"]
    for name, f in (("agg", fit), ("mix", mixture)):
        xr.testing.assert_allclose(masking_ratio(f, test), whole[name], rtol=1e-12)


def test_bad_input_is_rejected(high_conflict):
    train, test, fit = high_conflict
    with pytest.raises(ps.PluralstanError, match="test_fraction"):
        split_pairs(train, 1.5)
    no_group = ps.Comparisons.from_frame(test.to_frame().drop(columns="group"))
    with pytest.raises(ps.PluralstanError, match="group"):
        masking_ratio(fit, no_group)
    bt = ps.simulate.bt([1.0, 0.0], n_pairs=10, judgements_per_pair=3, seed=0)
    frame = bt.to_frame().assign(group=0)
    with pytest.raises(ps.PluralstanError, match="truth"):
        masking_ratio(fit, ps.Comparisons.from_frame(frame), target="truth")
    with pytest.raises(ps.PluralstanError, match="target"):
        masking_ratio(fit, test, target="oracle")


def test_pair_table_orients_reversed_judgements():
    frame = pd.DataFrame({
        "pair": ["p", "p", "q", "q"],
        "a_x1": [1.0, 0.0, 0.5, 0.5], "b_x1": [0.0, 1.0, 0.0, 0.0],
        "a_x2": [0.0, 1.0, 0.0, 0.0], "b_x2": [1.0, 0.0, 1.0, 1.0],
        "y": [1.0, 1.0, 0.0, 1.0],
    })
    comps = ps.Comparisons.from_frame(frame)
    table = pair_table(comps)
    assert table.sign_of_row.tolist() == [1.0, -1.0, 1.0, 1.0]
    assert table.design.sel(pair="p").values.tolist() == [1.0, -1.0]
    # row 1 shows pair p reversed and prefers its a (= p's b): p's a won once in two
    freq = observed_frequencies(comps)["freq"]
    assert freq.sel(pair="p").item() == 0.5 and freq.sel(pair="q").item() == 0.5
    bad = frame.assign(a_x1=[1.0, 0.3, 0.5, 0.5])
    with pytest.raises(ps.PluralstanError, match="pair id 'p' at row 1"):
        pair_table(ps.Comparisons.from_frame(bad))


def test_population_probability_is_the_pi_weighted_mixture():
    rng = np.random.default_rng(3)
    theta = rng.normal(size=(1, 4, 2, 3))
    pi = np.array([0.2, 0.8])
    idata = _arviz.from_dict(
        {"posterior": {"theta": theta, "pi": np.broadcast_to(pi, (1, 4, 2))}},
        coords={"group": ["a", "b"], "attribute": ["x1", "x2", "x3"]},
        dims={"theta": ["group", "attribute"], "pi": ["group"]},
    )
    X = xr.DataArray(rng.normal(size=(5, 3)), dims=("pair", "attribute"),
                     coords={"attribute": ["x1", "x2", "x3"]})
    out = preference_probability(idata, X)
    by_hand = expit(np.einsum("cdka,pa->cdkp", theta, X.values))
    np.testing.assert_allclose(out["p_group"].values, by_hand)
    np.testing.assert_allclose(out["p"].values, np.einsum("k,cdkp->cdp", pi, by_hand))
    with pytest.raises(ps.PluralstanError, match="attributes"):
        preference_probability(idata, X.assign_coords(attribute=["x1", "x2", "z"]))


# ---------------------------------------------------------------------- a hand-computed example
def _hand_example() -> ps.Comparisons:
    """Two held-out pairs on one attribute x, two groups, known truth.

    Pair P1 has x = a - b = 1, pair P2 has x = 2. Truth: theta_a = ln 3, theta_b = -ln 3, so
    P(a preferred) is expit(ln 3) = 3/4 and expit(2 ln 3) = 9/10 for group a, and 1/4 and 1/10
    for group b; population shares pi = (0.6, 0.4). Held-out judgements: group a judges P1
    twice (once shown reversed, preferring the pair's b) and P2 once, preferring a; group b judges
    P1 once, preferring a. So group a holds 3 of the 4 judgements, group b 1 (and no P2).
    """
    frame = pd.DataFrame({
        "pair": ["P1", "P1", "P2", "P1"],
        "group": ["a", "a", "a", "b"],
        "a_x1": [1.0, 0.0, 2.0, 1.0],
        "b_x1": [0.0, 1.0, 0.0, 0.0],
        "y": [1.0, 1.0, 1.0, 1.0],  # row 1 shows P1 reversed: it prefers P1's b
    })
    truth = {"theta": np.array([[np.log(3.0)], [-np.log(3.0)]]), "pi": np.array([0.6, 0.4])}
    return ps.Comparisons.from_frame(frame, truth=truth)


def _draws(theta: np.ndarray, dims: list[str], pi: np.ndarray | None = None,
           groups: list[str] | None = None) -> _arviz.Idata:
    """A deterministic 'posterior': one chain, the given theta draws (and pi) by hand."""
    posterior = {"theta": theta[None]}
    if pi is not None:
        posterior["pi"] = pi[None]
    coords = {"attribute": ["x1"]} | ({"group": groups} if groups else {})
    return _arviz.from_dict({"posterior": posterior}, coords=coords,
                            dims={"theta": dims, "pi": ["group"]})


def test_masking_ratio_by_hand_against_the_truth():
    """Aggregate draws theta = 0 and theta = ln 2, and a mixture draw, against the truth.

    Truth targets. Aggregate: P1 0.6 * 3/4 + 0.4 * 1/4 = 0.55, P2 0.6 * 9/10 + 0.4 * 1/10 =
    0.58. Group a: 3/4, 9/10. Group b: 1/4 on P1 only (it has no P2 judgement, so P2 is left
    out of its error). Weights = held-out judgement shares: a 3/4, b 1/4 (not pi).

    Draw theta = 0 predicts 1/2 on both pairs:
      aggregate error = ((1/2 - 0.55)^2 + (1/2 - 0.58)^2) / 2 = (0.0025 + 0.0064) / 2 = 0.00445
      group a error   = ((1/2 - 3/4)^2 + (1/2 - 9/10)^2) / 2 = (0.0625 + 0.16) / 2 = 0.11125
      group b error   = (1/2 - 1/4)^2 = 0.0625
      ratio = (3/4 * 0.11125 + 1/4 * 0.0625) / 0.00445 = 0.0990625 / 0.00445 = 7925 / 356.
    Draw theta = ln 2 predicts expit(ln 2) = 2/3 and expit(2 ln 2) = 4/5:
      aggregate error = ((2/3 - 0.55)^2 + (4/5 - 0.58)^2) / 2
                      = (49/3600 + 121/2500) / 2 = 5581/180000
      group a error   = ((2/3 - 3/4)^2 + (4/5 - 9/10)^2) / 2 = (1/144 + 1/100) / 2 = 61/7200
      group b error   = (2/3 - 1/4)^2 = 25/144
      ratio = (3/4 * 61/7200 + 1/4 * 25/144) / (5581/180000) = (1433/28800) / (5581/180000)
            = 35825 / 22324.
    Mixture draw theta_a = ln 3, theta_b = 0, pi = (1/2, 1/2): group predictions (3/4, 9/10)
    and (1/2, 1/2), population prediction 1/2 * group a + 1/2 * group b = (0.625, 0.7):
      aggregate error = ((0.625 - 0.55)^2 + (0.7 - 0.58)^2) / 2 = (0.005625 + 0.0144) / 2
                      = 0.0100125
      group a error = 0, group b error = (1/2 - 1/4)^2 = 1/16
      ratio = (1/4 * 1/16) / 0.0100125 = 1250 / 801.
    """
    test = _hand_example()
    agg = masking_ratio(_draws(np.array([[0.0], [np.log(2.0)]]), ["attribute"]), test,
                        target="truth")
    np.testing.assert_allclose(agg["aggregate_error"].values[0], [0.00445, 5581 / 180000],
                               rtol=1e-10)
    np.testing.assert_allclose(agg["group_error"].sel(group="a").values[0],
                               [0.11125, 61 / 7200], rtol=1e-10)
    np.testing.assert_allclose(agg["group_error"].sel(group="b").values[0], [0.0625, 25 / 144],
                               rtol=1e-10)
    np.testing.assert_allclose(agg["ratio"].values[0], [7925 / 356, 35825 / 22324], rtol=1e-10)

    mixture = _draws(np.array([[[np.log(3.0)], [0.0]]]), ["group", "attribute"],
                     pi=np.array([[0.5, 0.5]]), groups=["a", "b"])
    mix = masking_ratio(mixture, test, target="truth")
    np.testing.assert_allclose(mix["aggregate_error"].values[0], [0.0100125], rtol=1e-10)
    np.testing.assert_allclose(mix["group_error"].values[0, 0], [0.0, 1 / 16], atol=1e-15)
    np.testing.assert_allclose(mix["ratio"].values[0], [1250 / 801], rtol=1e-10)


def test_masking_ratio_by_hand_against_observed_frequencies():
    """The same held-out table and aggregate draws against observed frequencies.

    Oriented to each pair's first judgement, P1's judgements are 1, 0 (group a) and 1 (group
    b); P2's is 1 (group a). Pooled frequencies: P1 2/3, P2 1. Group a: P1 1/2, P2 1. Group b:
    P1 1 (no P2). Weights a 3/4, b 1/4.

    Draw theta = 0 (predicts 1/2, 1/2):
      aggregate error = ((1/2 - 2/3)^2 + (1/2 - 1)^2) / 2 = (1/36 + 9/36) / 2 = 5/36
      group a error = (0 + 1/4) / 2 = 1/8, group b error = (1/2 - 1)^2 = 1/4
      ratio = (3/4 * 1/8 + 1/4 * 1/4) / (5/36) = (5/32) / (5/36) = 9/8.
    Draw theta = ln 2 (predicts 2/3, 4/5):
      aggregate error = (0 + (4/5 - 1)^2) / 2 = 1/50
      group a error = ((2/3 - 1/2)^2 + (4/5 - 1)^2) / 2 = (1/36 + 1/25) / 2 = 61/1800
      group b error = (2/3 - 1)^2 = 1/9
      ratio = (3/4 * 61/1800 + 1/4 * 1/9) / (1/50) = (383/7200) * 50 = 383/144.
    Noise floor (module docstring of masking.py: a group's noise on a pair is its judgements'
    sample variance / n; cells with one judgement contribute nothing): only group a on P1 has
    two judgements, variance of (1, 0) = 1/2, noise 1/2 / 2 = 1/4. Pooled noise on P1 =
    (2/3)^2 * 1/4 = 1/9 (group a's share of P1's judgements is 2/3), on P2 nothing: mean over the
    two pairs 1/18. Within-group noise: 3/4 * 1/4 (group a; group b has none) = 3/16.
    Floor = (3/16) / (1/18) = 27/8.
    """
    test = _hand_example()
    result = masking_ratio(_draws(np.array([[0.0], [np.log(2.0)]]), ["attribute"]), test,
                           target="observed")
    np.testing.assert_allclose(result["aggregate_error"].values[0], [5 / 36, 1 / 50],
                               rtol=1e-10)
    np.testing.assert_allclose(result["ratio"].values[0], [9 / 8, 383 / 144], rtol=1e-10)
    assert result.attrs["noise_floor"] == pytest.approx(27 / 8, rel=1e-10)

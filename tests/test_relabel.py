"""Relabelling and label-switching diagnostics on synthetic draws with known permutations.

No Stan here: the draws are built in NumPy so that the true permutation of every draw is known.
"""

from __future__ import annotations

import json
import re
from itertools import permutations

import numpy as np
import pytest

from pluralstan import _arviz, diagnostics
from pluralstan.errors import PluralstanError
from pluralstan.relabel import (
    label_switching_report,
    match_components,
    permute,
    pivot,
    relabel,
    stephens,
)

CENTRES = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, -1.0]])  # K = 3 well-separated components
PI = np.array([0.2, 0.3, 0.5])


def _random_perms(rng: np.random.Generator, shape: tuple[int, ...], K: int) -> np.ndarray:
    return np.argsort(rng.uniform(size=(*shape, K)), axis=-1)


def _allocations(rng: np.random.Generator, S: int, n: int) -> np.ndarray:
    """``(S, n, K)`` allocation probabilities of a 3-component mixture, jittered per draw."""
    member = rng.integers(0, 3, size=n)
    logits = 3.0 * np.eye(3)[member] + rng.normal(scale=0.5, size=(S, n, 3))
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)


def _agrees_up_to_global_permutation(found: np.ndarray, truth: np.ndarray) -> bool:
    """Whether ``found`` undoes ``truth`` in every draw, up to one permutation for all draws.

    ``truth[s]`` scrambles draw ``s`` (scrambled component k = clean component truth[s, k]); a
    correct relabelling ``found[s]`` then satisfies truth[s, found[s]] = sigma for one fixed sigma.
    """
    composed = np.take_along_axis(truth, found, axis=-1)
    return bool(np.all(composed == composed[0]))


def _idata(rng: np.random.Generator, scramble: np.ndarray, chains: int = 2, draws: int = 300,
           jitter: float = 0.1) -> _arviz.Idata:
    """A fake mixture fit: theta, pi, alloc and a label-invariant quantity, scrambled per draw."""
    K, d = CENTRES.shape
    theta = CENTRES + rng.normal(scale=jitter, size=(chains, draws, K, d))
    pi = np.broadcast_to(PI, (chains, draws, K)) + rng.normal(scale=0.01, size=(chains, draws, K))
    n_cells = 20
    member = rng.integers(0, K, size=n_cells)
    alloc = 0.05 + 0.85 * np.eye(K)[member] + rng.uniform(0, 0.05, size=(chains, draws, n_cells, K))
    alloc = alloc / alloc.sum(axis=-1, keepdims=True)
    theta_bar = np.einsum("cdk,cdkj->cdj", pi, theta)  # label-invariant
    take = scramble[:, :, :, None]
    posterior = {
        "theta": np.take_along_axis(theta, take, axis=2),
        "pi": np.take_along_axis(pi, scramble, axis=2),
        "alloc": np.take_along_axis(alloc[:, :, :, None, :],
                                    scramble[:, :, None, None, :], axis=-1),
        "theta_bar": theta_bar,
    }
    lp = rng.normal(size=(chains, draws))
    return _arviz.from_dict(
        {"posterior": posterior, "sample_stats": {"lp": lp},
         "observed_data": {"y": np.ones((n_cells, 1), dtype=int) * 5}},
        coords={"group": np.arange(K), "attribute": ["x1", "x2"], "cell": np.arange(n_cells),
                "outcome": ["a"]},
        dims={"theta": ["group", "attribute"], "pi": ["group"],
              "alloc": ["cell", "outcome", "group"], "theta_bar": ["attribute"],
              "y": ["cell", "outcome"]},
    ), theta


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stephens_undoes_known_permutations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    clean = _allocations(rng, S=200, n=60)
    truth = _random_perms(rng, (200,), 3)
    scrambled = np.take_along_axis(clean, truth[:, None, :], axis=-1)
    found, iterations = stephens(scrambled)
    assert iterations < 100
    assert _agrees_up_to_global_permutation(found, truth)


def test_stephens_weights_count_observations() -> None:
    # four draws agree on both observations; the fifth agrees on observation 1 only as it is,
    # and on observation 0 only after swapping its labels: the weights decide which wins
    agree = [[0.9, 0.1], [0.9, 0.1]]
    torn = [[0.1, 0.9], [0.9, 0.1]]
    p = np.array([agree] * 4 + [torn])
    heavy_first, _ = stephens(p, weights=np.array([10.0, 1.0]))
    np.testing.assert_array_equal(heavy_first[:4], np.tile([0, 1], (4, 1)))
    np.testing.assert_array_equal(heavy_first[4], [1, 0])
    heavy_second, _ = stephens(p, weights=np.array([1.0, 10.0]))
    np.testing.assert_array_equal(heavy_second, np.tile([0, 1], (5, 1)))
    # a zero weight removes an observation altogether
    only_first, _ = stephens(p, weights=np.array([1.0, 0.0]))
    np.testing.assert_array_equal(only_first[4], [1, 0])


@pytest.mark.parametrize("seed", [3, 4])
def test_pivot_undoes_known_permutations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = CENTRES[None] + rng.normal(scale=0.3, size=(150, 3, 2))
    truth = _random_perms(rng, (150,), 3)
    scrambled = np.take_along_axis(values, truth[:, :, None], axis=1)
    found = pivot(scrambled, pivot_index=7)
    assert _agrees_up_to_global_permutation(found, truth)
    # the pivot draw keeps its labels
    np.testing.assert_array_equal(found[7], np.arange(3))


@pytest.mark.parametrize("method", ["stephens", "pivot"])
def test_relabel_restores_every_group_variable(method: str) -> None:
    rng = np.random.default_rng(11)
    scramble = _random_perms(rng, (2, 300), 3)
    idata, theta = _idata(rng, scramble)
    out, perms = relabel(idata, method=method)
    assert perms.dims == ("chain", "draw", "group")
    # every draw now agrees with the clean draws up to one global permutation
    sigma = np.take_along_axis(scramble, perms.values, axis=-1)
    assert np.all(sigma == sigma[0, 0])
    np.testing.assert_allclose(out.posterior["theta"].values,
                               theta[:, :, sigma[0, 0], :])
    # pi and alloc moved with theta; the label-invariant variable did not move
    assert np.allclose(out.posterior["pi"].mean(("chain", "draw")).values,
                       PI[sigma[0, 0]], atol=0.01)
    np.testing.assert_array_equal(out.posterior["theta_bar"].values,
                                  idata.posterior["theta_bar"].values)
    assert out.posterior["alloc"].dims == idata.posterior["alloc"].dims
    # the input is untouched and the method is recorded
    assert not np.allclose(idata.posterior["theta"].values, out.posterior["theta"].values)
    assert json.loads(out.posterior.attrs["relabelling"])["method"] == method


def test_auto_method_prefers_stephens_when_allocations_exist() -> None:
    rng = np.random.default_rng(5)
    idata, _ = _idata(rng, _random_perms(rng, (2, 50), 3), draws=50)
    out, _ = relabel(idata)
    assert json.loads(out.posterior.attrs["relabelling"])["method"] == "stephens"
    # the annotator-level models call their allocation probabilities "membership"
    post = _arviz.group(idata, "posterior")
    renamed = _arviz.make_idata({"posterior": post.rename_vars(alloc="membership"),
                                 "observed_data": _arviz.group(idata, "observed_data")})
    detail = json.loads(relabel(renamed)[0].posterior.attrs["relabelling"])
    assert (detail["method"], detail["allocation"]) == ("stephens", "membership")
    without = _arviz.make_idata({"posterior": post.drop_vars("alloc"),
                                 "sample_stats": _arviz.group(idata, "sample_stats")})
    out, _ = relabel(without)
    assert json.loads(out.posterior.attrs["relabelling"])["method"] == "pivot"
    with pytest.raises(PluralstanError, match="allocation probabilities"):
        relabel(without, method="stephens")


def test_report_detects_chains_in_different_permutations() -> None:
    rng = np.random.default_rng(21)
    swap = np.array([2, 0, 1])
    scramble = np.stack([np.tile(np.arange(3), (300, 1)), np.tile(swap, (300, 1))])
    idata, _ = _idata(rng, scramble)
    report = label_switching_report(idata)
    doms = [tuple(v["dominant_permutation"]) for v in report["chains"].values()]
    assert report["chains_disagree"] and doms[0] != doms[1]
    assert all(v["fraction"] == 1.0 and v["switches"] == 0 for v in report["chains"].values())
    # raw R-hat is huge, relabelled and label-invariant R-hat are fine
    assert report["rhat"]["raw"]["theta"] > 1.5
    assert report["rhat"]["relabelled"]["theta"] < 1.01
    assert report["rhat"]["label_invariant"]["theta_bar"] < 1.01
    # pure label switching: relabelling resolves it, so it is a note and never a failure
    assert any("different label permutations" in n for n in report["notes"])
    assert not report["problems"]
    # recorded where diagnostics.notes finds it, and diagnostics.failed stays empty
    assert any("different label permutations" in n for n in diagnostics.notes(idata))
    assert diagnostics.failed(idata) == []


def test_report_separates_genuine_multimodality() -> None:
    rng = np.random.default_rng(8)
    idata, _ = _idata(rng, np.tile(np.arange(3), (2, 300, 1)))
    # chain 1 sits in another mode: its component 0 is elsewhere, not a relabelling of chain 0
    idata.posterior["theta"].values[1, :, 0, :] += 3.0
    report = label_switching_report(idata, method="pivot")
    assert report["rhat"]["relabelled"]["theta"] > 1.1
    assert any("after relabelling" in p for p in report["problems"])
    # a chain that flips labels within itself is reported as a note, not a problem
    rng = np.random.default_rng(9)
    flips = np.tile(np.arange(3), (2, 300, 1))
    flips[0, 150:] = [1, 2, 0]
    idata, _ = _idata(rng, flips)
    report = label_switching_report(idata, record=False)
    assert report["chains"]["0"]["switches"] == 1
    assert any("switched labels" in n for n in report["notes"])
    assert "label_switching" not in idata.posterior.attrs


def test_permute_validates_and_round_trips() -> None:
    rng = np.random.default_rng(2)
    idata, _ = _idata(rng, np.tile(np.arange(3), (2, 20, 1)), draws=20)
    perms = _random_perms(rng, (2, 20), 3)
    inverse = np.argsort(perms, axis=-1)
    back = permute(permute(idata, perms), inverse)
    np.testing.assert_array_equal(back.posterior["theta"].values, idata.posterior["theta"].values)
    with pytest.raises(PluralstanError, match="permutations"):
        permute(idata, np.zeros((2, 20, 3), dtype=int))


def test_refuses_observed_labels_and_fits_without_groups() -> None:
    rng = np.random.default_rng(1)
    idata, _ = _idata(rng, np.tile(np.arange(3), (2, 20, 1)), draws=20)
    idata.posterior.attrs["group_labels"] = "observed"
    idata.posterior.attrs["model"] = "labeled"
    with pytest.raises(PluralstanError, match="observed subgroup labels"):
        relabel(idata)
    plain = _arviz.from_dict({"posterior": {"theta": rng.normal(size=(2, 20, 3))}},
                             dims={"theta": ["attribute"]})
    with pytest.raises(PluralstanError, match="no 'group' dim"):
        label_switching_report(plain)


def test_all_permutations_of_three_are_reachable() -> None:
    # guard against an assignment that only ever returns identity or one swap
    rng = np.random.default_rng(4)
    clean = _allocations(rng, S=6, n=40)
    truth = np.array(list(permutations(range(3))))
    found, _ = stephens(np.take_along_axis(clean, truth[:, None, :], axis=-1))
    assert len({tuple(r) for r in found}) == 6
    assert _agrees_up_to_global_permutation(found, truth)


def test_per_observation_quantities_are_reported_but_not_judged() -> None:
    rng = np.random.default_rng(6)
    idata, _ = _idata(rng, np.tile(np.arange(3), (2, 300, 1)))
    shifted = rng.normal(size=(2, 300, 20)) + np.array([0.0, 2.0])[:, None, None]
    post = _arviz.group(idata, "posterior").assign(p_agg=(("chain", "draw", "cell"), shifted))
    idata = _arviz.replace_groups(idata, posterior=post)
    report = label_switching_report(idata, record=False)
    assert report["rhat"]["label_invariant"]["p_agg"] > 1.5
    assert not any("label-invariant" in p for p in report["problems"])
    # the same disagreement in a label-invariant parameter is a problem
    idata.posterior["theta_bar"].values[1] += 2.0
    report = label_switching_report(idata, record=False)
    assert any("label-invariant theta_bar" in p for p in report["problems"])


# ---------------------------------------------------------------------- stored permutations
def test_permutations_are_stored_composed_and_undone_after_a_round_trip(tmp_path) -> None:
    """Criterion: relabelling twice (Stephens, then pivot) stores in sample_stats the
    composition that maps relabelled labels to the labels as sampled; ``unrelabel`` of the
    saved and reloaded fit gives back every posterior variable exactly as sampled."""
    import pluralstan as ps
    from pluralstan.relabel import unrelabel

    rng = np.random.default_rng(31)
    scramble = _random_perms(rng, (2, 300), 3)
    idata, _ = _idata(rng, scramble)
    once, first = relabel(idata, method="stephens")
    twice, second = relabel(once, method="pivot")
    stored = twice.sample_stats["label_permutation"]
    assert stored.dims == ("chain", "draw", "group")
    np.testing.assert_array_equal(
        stored.values, np.take_along_axis(first.values, second.values, axis=-1))
    # the stored permutation maps the relabelled theta back onto the raw theta
    raw_theta = idata.posterior["theta"].values
    np.testing.assert_array_equal(
        twice.posterior["theta"].values,
        np.take_along_axis(raw_theta, stored.values[..., None], axis=2))
    # the input kept its sample_stats untouched
    assert "label_permutation" not in idata.sample_stats
    back = unrelabel(ps.load(ps.save(twice, tmp_path / "fit.nc")))
    for name in ("theta", "pi", "alloc", "theta_bar"):
        np.testing.assert_array_equal(back.posterior[name].values, idata.posterior[name].values)
    assert "label_permutation" not in back.sample_stats
    assert "relabelling" not in back.posterior.attrs
    assert unrelabel(idata) is idata  # nothing to undo


def _latent(idata: _arviz.Idata) -> _arviz.Idata:
    idata.posterior.attrs.update({"group_labels": "latent", "model": "fake"})
    return idata


def test_relabel_recomputes_the_stored_diagnostics() -> None:
    """Chains in different permutations fail the check on the raw draws (R-hat of theta);
    relabelling recomputes the stored record: no problem left, a note says the switching was
    resolved and by which method; undoing the relabelling brings the failure back."""
    from pluralstan.relabel import unrelabel

    rng = np.random.default_rng(22)
    swap = np.array([1, 2, 0])
    scramble = np.stack([np.tile(np.arange(3), (400, 1)), np.tile(swap, (400, 1))])
    idata = _latent(_idata(rng, scramble, draws=400)[0])
    diagnostics.check(idata, var_names=["theta", "pi", "theta_bar"], warn=False)
    assert any(re.match(r"R-hat .* for (theta|pi)\[", p) for p in diagnostics.failed(idata))
    out, _ = relabel(idata)
    assert diagnostics.failed(out) == []
    stored = json.loads(out.posterior.attrs["diagnostics"])
    assert stored["var_names"] == ["theta", "pi", "theta_bar"] and not stored["multimodal"]
    assert any("label switching across chains resolved by stephens relabelling" in n
               for n in stored["notes"])
    assert set(stored["label_invariant"]) == {"lp", "pi_sorted"}
    # the input's record is untouched, and undoing the relabelling restores the failure
    assert diagnostics.failed(idata)
    assert diagnostics.failed(unrelabel(out)) == diagnostics.failed(idata)


def _four_chains(rng: np.random.Generator, lp: np.ndarray) -> _arviz.Idata:
    """A latent fit of 4 chains x 400 draws in one labelling, with the given lp draws."""
    idata = _idata(rng, np.tile(np.arange(3), (4, 400, 1)), chains=4, draws=400)[0]
    idata.sample_stats["lp"].values[:] = lp
    return _latent(idata)


def test_check_tells_genuine_multimodality_from_non_convergence() -> None:
    """Chains 1 and 3 sit, stationary, in another mode (theta[0] elsewhere, lp lower): the
    check records genuine multimodality with the modes (best first) and per-chain lp. Chains
    whose lp drifts within the chain are not converged, which is not multimodality."""
    rng = np.random.default_rng(40)
    lp = rng.normal(size=(4, 400)) - np.array([0.0, 6.0, 0.0, 6.0])[:, None]
    idata = _four_chains(rng, lp)
    idata.posterior["theta"].values[[1, 3], :, 0, :] += 2.0
    result = diagnostics.check(idata, var_names=["theta", "pi"], warn=False)
    assert result.multimodal
    assert result.modes == [[0, 2], [1, 3]]
    np.testing.assert_allclose(result.chain_lp, lp.mean(axis=1))
    assert any(p.startswith("genuine multimodality") for p in result.problems)
    assert json.loads(idata.posterior.attrs["diagnostics"])["modes"] == [[0, 2], [1, 3]]
    # drifting chains: every chain's lp trends, the chains end in different places
    trend = np.linspace(0.0, 8.0, 400)[None, :] * np.array([1.0, -1.0, 0.5, -0.5])[:, None]
    idata = _four_chains(rng, rng.normal(size=(4, 400)) + trend)
    result = diagnostics.check(idata, var_names=["theta", "pi"], warn=False)
    assert not result.multimodal
    assert any("not converged" in p for p in result.problems)
    # and chains that agree record one mode and no problem
    idata = _four_chains(rng, rng.normal(size=(4, 400)))
    result = diagnostics.check(idata, var_names=["theta", "pi"], warn=False)
    assert result.ok and result.modes == [[0, 1, 2, 3]]


def test_a_prior_that_labels_the_types_keeps_the_draws_as_sampled() -> None:
    """Unequal Dirichlet concentrations make the posterior label-asymmetric: the default
    pipeline must not relabel (which would override the prior's labels) and must say why in the
    diagnostics; equal concentrations are relabelled; an explicit method relabels anyway."""
    from pluralstan.pipeline import finalize

    rng = np.random.default_rng(23)
    scramble = np.stack([np.tile(np.arange(3), (300, 1)), np.tile([1, 2, 0], (300, 1))])

    def fake(pi_alpha: list[float]) -> _arviz.Idata:
        idata = _latent(_idata(rng, scramble)[0])
        idata.posterior.attrs["priors"] = json.dumps({"prior_pi_alpha": pi_alpha})
        return idata

    kept = finalize(fake([5.0, 1.0, 1.0]), label_dim="group", warn=False)
    assert "relabelling" not in kept.posterior.attrs
    assert "label_permutation" not in kept.sample_stats
    assert any("not exchangeable across types (pi_alpha = [5.0, 1.0, 1.0])" in n
               for n in diagnostics.notes(kept))
    assert not any("relabel with" in n for n in diagnostics.notes(kept))
    symmetric = finalize(fake([2.0, 2.0, 2.0]), label_dim="group", warn=False)
    assert json.loads(symmetric.posterior.attrs["relabelling"])["method"] == "stephens"
    assert not any("not exchangeable" in n for n in diagnostics.notes(symmetric))
    forced = finalize(fake([5.0, 1.0, 1.0]), label_dim="group", relabel="stephens", warn=False)
    assert "relabelling" in forced.posterior.attrs


def test_match_components_skips_unknown_reference_entries() -> None:
    # reference group 0 knows only entry 0, group 1 only entries 1 and 2; fitted component 1
    # matches group 0 on entry 0 and component 0 matches group 1 on entries 1-2, while the
    # entries each group did not judge (NaN) would, if compared, favour the other assignment
    reference = np.array([[0.9, np.nan, np.nan], [np.nan, 0.2, 0.3]])
    fitted = np.array([[0.1, 0.2, 0.3], [0.9, 9.0, 9.0]])
    np.testing.assert_array_equal(match_components(fitted, reference), [1, 0])
    # without missing entries the assignment is that of the total squared distance
    np.testing.assert_array_equal(match_components(fitted[::-1], fitted), [1, 0])

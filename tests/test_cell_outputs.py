"""The optional outputs of the cell-level programs (aggregate and labeled;
:func:`pluralstan.models.base.cell_outputs`): a log likelihood per annotator that is exactly the
sum of that annotator's judgements', and outputs that are skipped when asked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.checks.sensitivity import power_scaling
from pluralstan.engine import SamplerConfig, get_engine
from pluralstan.errors import PluralstanError
from pluralstan.models import get_model
from pluralstan.models.base import CELL_PYTHON_OUTPUTS

from .test_reference_likelihoods import CASE_IDS, CASES, comps_of

# short chains: these tests compare outputs draw by draw, not what the draws infer
pytestmark = pytest.mark.filterwarnings("ignore::pluralstan.errors.DiagnosticWarning")


@pytest.fixture(scope="module")
def comps() -> ps.Comparisons:
    """Two groups of 12 annotators, 10 judgements each over 30 pairs: most cells hold
    judgements of several annotators, so per-annotator sums must split cells correctly."""
    thetas = np.array([[1.0, -0.5, 0.3], [-0.8, 0.6, 0.2]])
    return ps.simulate.mixture(thetas, [0.5, 0.5], n_pairs=30, n_annotators=24,
                               pairs_per_annotator=10, seed=11)


def test_unit_matrix_counts_every_judgement_once(comps) -> None:
    """The sparse annotator x (cell, outcome) matrix holds each judgement once, in its
    annotator's row and its cell and outcome's column (outcome-major, as Stan's to_vector)."""
    enc = get_model("aggregate").encode(comps, log_lik="annotator")
    d = enc.data
    assert d["U"] == len(comps.annotator_levels) and d["save_log_p_cell"] == 0
    assert d["unit_w"].sum() == comps.n
    rows = np.repeat(np.arange(d["U"]), np.diff(d["unit_u"]))
    cells = comps.cells()
    for i, col, w in zip(rows, d["unit_v"] - 1, d["unit_w"], strict=True):
        outcome, cell = divmod(col, d["C"])
        mine = comps.codes("annotator") == i
        assert w == np.sum(mine & (cells.cell_of_row == cell) & (cells.outcome_of_row == outcome))


def test_unknown_log_lik_unit_is_refused_before_stan(comps) -> None:
    with pytest.raises(PluralstanError, match=r"unknown log_lik 'pair'.*comparison"):
        ps.fit("aggregate", comps, log_lik="pair")


@pytest.mark.parametrize("model, options", [("aggregate", {}),
                                            ("labeled", {"pooling": "none"})])
def test_annotator_log_lik_is_the_sum_of_their_judgements(comps, model, options) -> None:
    """Criterion: with the same seed and no replicates (so the outputs draw no random numbers)
    the two fits have the same draws, and each annotator's log likelihood equals the sum of
    their judgements' to 1e-9, so power-scaling sensitivity (which the audit runs on the
    per-annotator form) is the same; without replicates there is no posterior predictive ``y``,
    and ``log_lik=None`` leaves no log likelihood group."""
    sampler = {"chains": 2, "draws": 100, "warmup": 150, "seed": 4, "replicate": False,
               **options}
    by_judgement = ps.fit(model, comps, log_lik="comparison", **sampler)
    by_annotator = ps.fit(model, comps, log_lik="annotator", **sampler)
    np.testing.assert_array_equal(by_annotator.posterior["theta"].values,
                                  by_judgement.posterior["theta"].values)
    per_judgement = _arviz.group(by_judgement, "log_likelihood")["y"]
    summed = per_judgement.groupby(
        per_judgement["comparison"].copy(data=comps.codes("annotator"))).sum()
    ll = _arviz.group(by_annotator, "log_likelihood")["y"]
    assert ll.dims == ("chain", "draw", "annotator")
    assert list(ll["annotator"].values) == list(comps.annotator_levels)
    np.testing.assert_allclose(ll.values, summed.values, rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(power_scaling(by_annotator, ["theta"]),
                                  power_scaling(by_judgement, ["theta"]), atol=1e-6)
    predictive = _arviz.group(by_annotator, "posterior_predictive")
    assert predictive is None or "y" not in predictive
    none = ps.fit(model, comps, log_lik=None, **sampler)
    assert "log_likelihood" not in _arviz.groups(none)


@pytest.mark.parametrize("unit", ["comparison", "annotator"])
@pytest.mark.parametrize("model, options", [("aggregate", {}),
                                            ("labeled", {"pooling": "partial"}),
                                            ("labeled", {"pooling": "none"})],
                         ids=["aggregate", "labeled-partial", "labeled-none"])
@pytest.mark.parametrize(("kind", "ties", "order"), CASES, ids=CASE_IDS)
def test_python_log_lik_equals_the_programs_own(model, options, unit, kind, ties, order):
    """The log-likelihood outputs of the cell-level programs (``log_p_cell``, the per-unit
    ``log_lik``) are computed in NumPy from the draws (``Encoded.derive``), not written by the
    program. With the program's output flags set, its generated quantities must give the same
    numbers at the sampled draws, for both design forms, with and without ties and order."""
    comps = comps_of(kind, ties, order)
    spec = get_model(model)
    enc = spec.encode(comps, log_lik=unit, replicate=False, **options)
    assert all(enc.data[flag] == 0 for flag in CELL_PYTHON_OUTPUTS)
    own_flags = {flag: 1 for flag in CELL_PYTHON_OUTPUTS}
    draws = get_engine("pystan").sample(spec.program, {**enc.data, **own_flags},
                                        SamplerConfig(chains=1, draws=4, warmup=20, seed=5))
    own = draws.variables
    name = "log_p_cell" if unit == "comparison" else "log_lik"
    derived = enc.complete({k: v for k, v in own.items() if k not in ("log_p_cell", "log_lik")})
    assert own[name].size and derived[name].shape == own[name].shape
    np.testing.assert_allclose(derived[name], own[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model, options", [
    ("annotator", {"K": 2}),
    ("labeled", {"pooling": "none", "log_lik": "annotator", "replicate": False}),
])
def test_outputs_over_many_blocks_side_by_side_equal_one_block(comps, model, options,
                                                               monkeypatch) -> None:
    """The outputs computed in Python from the draws run over blocks of draws, side by side in
    threads (:func:`pluralstan.models.base.over_blocks`). With one draw per block they must
    equal the one-block result, draw by draw: a block written into another's rows, or left
    out, would change them."""
    from pluralstan.models import base

    enc = get_model(model).encode(comps, **options)
    K, P = int(enc.data["K"]), int(enc.data["P"])
    rng = np.random.default_rng(3)
    values = {"theta": rng.normal(0.0, 1.0, size=(2, 7, K, P))}
    if model == "annotator":
        values["pi"] = rng.dirichlet(np.ones(K), size=(2, 7))
    whole = enc.complete(values)
    monkeypatch.setattr(base, "BLOCK_VALUES", 1)
    blocks = enc.complete(values)
    derived = set(whole) - set(values)
    assert derived and derived == set(blocks) - set(values)
    for name in derived:
        assert np.unique(whole[name].reshape(14, -1), axis=0).shape[0] == 14, name
        np.testing.assert_allclose(blocks[name], whole[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)

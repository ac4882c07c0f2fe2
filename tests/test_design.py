"""The design's two forms: dense, or compressed row storage for mostly-zero (item) designs.

Every program reads the design either way (``stan/functions/design.stanfunctions``); these
tests check that Python picks the form by the share of non-zeros, that the sparse arrays are the
design, and that each program computes exactly the same outputs from either form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import csr_matrix

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.engine import get_engine
from pluralstan.errors import PluralstanError
from pluralstan.models import base, get_model
from pluralstan.models.base import design_data, stan_design, theta_coordinates, whitening_data


@pytest.fixture(scope="module")
def items() -> ps.Comparisons:
    """Ties, presentation order, labels and a covariate, on 9 items (8 design columns)."""
    rng = np.random.default_rng(11)
    n = 120
    a = rng.integers(0, 9, n)
    b = (a + rng.integers(1, 9, n)) % 9
    annotator = np.repeat(np.arange(12), n // 12)
    frame = pd.DataFrame({
        "item_a": [f"i{k}" for k in a], "item_b": [f"i{k}" for k in b],
        "y": rng.choice([0.0, 0.5, 1.0], n, p=[0.4, 0.2, 0.4]),
        "order": rng.integers(0, 2, n), "annotator": [f"r{k}" for k in annotator],
        "group": np.where(annotator < 5, "g1", "g2"),
    })
    table = pd.DataFrame({"age": rng.normal(40, 10, 12)}, index=[f"r{k}" for k in range(12)])
    return ps.Comparisons.from_frame(frame, annotators=table)


def test_item_design_goes_sparse_and_is_the_design(items):
    X = items.cells(("annotator",)).X
    data = design_data(X)
    assert data["X_sparse"] == 1 and data["X"].shape == (0, X.shape[1])
    assert data["X_nnz"] == np.count_nonzero(X) <= 2 * len(X)
    rebuilt = csr_matrix((data["X_w"], data["X_v"] - 1, data["X_u"] - 1), shape=X.shape)
    assert np.array_equal(rebuilt.toarray(), X) and np.array_equal(stan_design(data), X)


def test_dense_attribute_design_stays_dense():
    comps = ps.simulate.high_conflict(seed=1, n_annotators=5, n_pairs=10, pairs_per_annotator=4)
    enc = get_model("annotator").encode(comps, K=2)
    data = enc.data
    assert data["X_sparse"] == 0 and data["X_nnz"] == 0 and len(data["X_u"]) == 0
    # the annotator-level programs read the distinct rows; each cell's row is its design
    assert data["X"].shape == (data["R"], data["P"]) and data["R"] < data["C"]
    assert np.array_equal(data["X"][data["row"] - 1], enc.constant["X"])


def test_annotator_type_programs_take_the_dense_form_down_to_their_own_threshold(items):
    """The annotator-type programs multiply the design by K columns at once, so their dense
    form pays down to a lower share of non-zeros than the other programs'."""
    from pluralstan.models.annotator import SPARSE_TYPES_DESIGN_DENSITY

    nine = items.cells(("annotator",)).X  # 9 items: 2 non-zeros in 8 columns per row
    share = np.count_nonzero(nine) / nine.size
    assert SPARSE_TYPES_DESIGN_DENSITY < share <= base.SPARSE_DESIGN_DENSITY
    assert get_model("aggregate").encode(items).data["X_sparse"] == 1
    for model in ("annotator", "covariate"):
        assert get_model(model).encode(items, K=2).data["X_sparse"] == 0, model
    # 30 items: 2 non-zeros in 29 columns, below the annotator-type threshold too
    rng = np.random.default_rng(3)
    a = rng.integers(0, 30, 300)
    frame = pd.DataFrame({"item_a": [f"i{k}" for k in a],
                          "item_b": [f"i{k}" for k in (a + rng.integers(1, 30, 300)) % 30],
                          "y": rng.integers(0, 2, 300).astype(float),
                          "annotator": [f"r{k}" for k in np.repeat(np.arange(30), 10)]})
    enc = get_model("annotator").encode(ps.Comparisons.from_frame(frame), K=2)
    assert enc.data["X_sparse"] == 1
    assert enc.data["X_nnz"] / (enc.data["R"] * enc.data["P"]) <= SPARSE_TYPES_DESIGN_DENSITY


@pytest.mark.parametrize("model, options", [
    ("aggregate", {}),
    ("labeled", {}),
    ("unlabeled", {"K": 2}),
    ("annotator", {"K": 2}),
    ("covariate", {"K": 2}),
])
def test_both_forms_give_the_same_outputs(items, model, options):
    """Every output (likelihood terms, membership, replicated data) at the same random
    parameter values and seed, from the sparse and the dense form of the same design."""
    spec = get_model(model)
    enc = spec.encode(items, **options)
    X = stan_design(enc.data)
    sparse, dense = ({**enc.data, **design_data(X, sparse=form)} for form in (True, False))
    assert sparse["X_sparse"] == 1 and dense["X_sparse"] == 0
    engine = get_engine("pystan")
    sparse_out = engine.generate(spec.program, sparse, {}, seed=5)
    dense_out = engine.generate(spec.program, dense, {}, seed=5)
    assert sparse_out.keys() == dense_out.keys()
    for name, value in sparse_out.items():
        np.testing.assert_allclose(value, dense_out[name], rtol=1e-10, atol=1e-12,
                                   err_msg=f"{model}: {name}")


def test_a_sparse_item_design_is_kept_sparse_in_the_fit_and_saves(items, monkeypatch, tmp_path):
    """An item design above DENSE_LIMIT entries stays sparse from the table to the fit: its
    constant_data holds the compressed rows (an object array holding the SciPy matrix before,
    which NetCDF cannot store), the saved fit loads, and the rows rebuild the design."""
    from pluralstan import data as data_module

    monkeypatch.setattr(data_module, "DENSE_LIMIT", 10)  # so this small design is "large"
    comps = ps.Comparisons.from_frame(items.to_frame())
    design = comps.design()
    assert not isinstance(design, np.ndarray)  # SciPy sparse
    idata = ps.fit("aggregate", comps, chains=1, draws=20, warmup=50, seed=1, check=False,
                   backend="pystan")
    path = ps.save(idata, tmp_path / "fit.nc")
    const = _arviz.group(ps.load(path), "constant_data")
    assert "X" not in const and const["X_csr_data"].dtype == float
    X = csr_matrix((const["X_csr_data"].values, const["X_csr_indices"].values,
                    const["X_csr_indptr"].values), shape=tuple(const["X_csr_shape"].values))
    cells = get_model("aggregate").encode(comps).constant["X"]
    assert (X != cells).nnz == 0 and X.shape == cells.shape


# ---------------------------------------------------------------------------- QR basis
def _factor_design(seed: int = 3, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Differences of dummy-coded levels of one 4-level factor and one 2-level factor: the
    factor's dummies are correlated, as in a conjoint design; and judgements per row."""
    rng = np.random.default_rng(seed)
    levels = np.eye(4)[:, 1:]
    a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
    second = rng.integers(0, 2, (n, 2))
    X = np.column_stack([levels[a] - levels[b], second[:, 0] - second[:, 1]])
    return X, rng.integers(1, 5, n).astype(float)


def test_whitened_basis_orthonormalises_the_weighted_design():
    X, n = _factor_design()
    gram = (X * n[:, None]).T @ X / n.sum()
    cosine = gram[0, 1] / np.sqrt(gram[0, 0] * gram[1, 1])
    assert abs(cosine) > 0.2  # 1/3 in expectation: far from orthogonal to begin with
    data = whitening_data(X, n, None)
    B = data["theta_basis"]
    assert data["whiten"] == 1 and np.allclose(B, np.triu(B))
    np.testing.assert_allclose(B.T @ gram @ B, np.eye(X.shape[1]), atol=1e-12)
    # the same basis from the compressed-row form of the design
    np.testing.assert_allclose(whitening_data(csr_matrix(X), n, None)["theta_basis"], B,
                               atol=1e-12)
    theta = np.random.default_rng(4).normal(size=(3, X.shape[1]))
    np.testing.assert_allclose(theta_coordinates(theta, data) @ B.T, theta, atol=1e-12)
    np.testing.assert_allclose(B @ theta_coordinates(theta[0], data), theta[0], atol=1e-12)


def test_when_the_design_is_not_whitened(monkeypatch):
    X, n = _factor_design()
    assert whitening_data(X, n, False)["whiten"] == 0
    assert whitening_data(X, n, None, ordered=True)["whiten"] == 0
    with pytest.raises(PluralstanError, match="identify='ordered'"):
        whitening_data(X, n, True, ordered=True)
    singular = np.column_stack([X, np.zeros(len(X))])  # an attribute no judgement informs
    assert whitening_data(singular, n, None)["whiten"] == 0
    with pytest.raises(PluralstanError, match=r"singular.*attribute is not identified"):
        whitening_data(singular, n, True)
    monkeypatch.setattr(base, "WHITEN_MAX_ATTRIBUTES", X.shape[1] - 1)
    assert whitening_data(X, n, None)["whiten"] == 0
    with pytest.raises(PluralstanError, match="4 attributes"):
        whitening_data(X, n, True)
    with pytest.raises(PluralstanError, match="whiten must be"):
        whitening_data(X, n, "yes")
    # without a basis, the coordinates are theta
    theta = np.arange(4.0)
    assert np.array_equal(theta_coordinates(theta, whitening_data(X, n, False)), theta)


def test_models_record_whether_they_whitened(items):
    """The encoders pass the judgements per row as weights (the annotator programs read
    distinct rows shared by cells) and record the choice in the fit's attributes."""
    enc = get_model("annotator").encode(items, K=2)
    data = enc.data
    rows = stan_design(data)
    n = np.bincount(data["row"] - 1, weights=np.asarray(data["y"]).sum(axis=1))
    gram = (rows * n[:, None]).T @ rows / n.sum()
    B = data["theta_basis"]
    np.testing.assert_allclose(B.T @ gram @ B, np.eye(data["P"]), atol=1e-10)
    assert enc.extra_attrs["whitened"] == 1
    off = get_model("aggregate").encode(items, whiten=False)
    assert off.data["whiten"] == 0 and off.extra_attrs["whitened"] == 0

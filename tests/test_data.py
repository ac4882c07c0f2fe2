"""Validation and encoding of comparison tables (no Stan code runs here)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan.data import Comparisons
from pluralstan.errors import IdentificationWarning, PluralstanError


def attr_frame(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "annotator": np.arange(n) % 3,
            "y": rng.integers(0, 2, n).astype(float),
            "a_x1": rng.uniform(size=n),
            "b_x1": rng.uniform(size=n),
            "a_x2": rng.uniform(size=n),
            "b_x2": rng.uniform(size=n),
        }
    )


def item_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "annotator": [1, 1, 2, 2, 3],
            "item_a": ["London", "Paris", "Milano", "London", "Paris"],
            "item_b": ["Paris", "Milano", "London", "Milano", "London"],
            "y": [1, 0, 0.5, 1, 0],
        }
    )


# ------------------------------------------------------------------ bad input
BAD_INPUTS = [
    ("missing outcome column", lambda f: f.drop(columns="y"), r"missing outcome column 'y'"),
    ("outcome outside {0, 0.5, 1}", lambda f: f.assign(y=[1, 2, 0, 1, 0, 1]),
     r"'y' has value 2\.0 at row 1"),
    ("non-numeric outcome", lambda f: f.assign(y=["1", "a", "0", "1", "0", "1"]),
     r"non-numeric value 'a' at row 1"),
    ("NaN feature", lambda f: f.assign(a_x2=[0.1, np.nan, 0.2, 0.3, 0.4, 0.5]),
     r"'a_x2' has a missing or infinite value at row 1"),
    ("infinite feature", lambda f: f.assign(b_x1=[0.1, 0.2, np.inf, 0.3, 0.4, 0.5]),
     r"'b_x1' has a missing or infinite value at row 2"),
    ("non-numeric feature", lambda f: f.assign(a_x1=["low"] * 6), r"'a_x1' has a non-numeric"),
    ("mismatched feature sets", lambda f: f.drop(columns="b_x2"),
     r"different feature sets: a_x2 has no matching b_x2"),
    ("empty table", lambda f: f.iloc[:0], r"comparison table is empty"),
    ("no option columns", lambda f: f[["annotator", "y"]], r"no option columns"),
    ("missing annotator id", lambda f: f.assign(annotator=[1, None, 2, 3, 4, 5]),
     r"column 'annotator' has a missing id at row 1"),
    ("both items and attributes", lambda f: f.assign(item_a="u", item_b="v"),
     r"both item columns"),
    ("bad order value", lambda f: f.assign(order=[1, 0, 3, 1, 0, 1]),
     r"column 'order' has value 3\.0 at row 2"),
]


@pytest.mark.parametrize(("label", "mutate", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_attribute_tables_raise_named_errors(label, mutate, message):
    with pytest.raises(PluralstanError, match=message):
        Comparisons.from_frame(mutate(attr_frame()))


def test_item_errors_name_the_item_and_row():
    frame = item_frame()
    frame.loc[3, "item_b"] = "London"
    with pytest.raises(PluralstanError, match=r"item 'London' is compared with itself at row 3"):
        Comparisons.from_frame(frame)
    items = pd.DataFrame({"item": ["London", "Paris"], "english": [1.0, 0.0]})
    with pytest.raises(PluralstanError, match=r"item 'Milano' appears in the comparisons but not"):
        Comparisons.from_frame(item_frame(), items=items)
    dup = pd.DataFrame({"item": ["London", "London", "Paris", "Milano"], "f": [1.0, 1, 0, 0]})
    with pytest.raises(PluralstanError, match=r"lists item 'London' more than once"):
        Comparisons.from_frame(item_frame(), items=dup)
    with pytest.raises(PluralstanError, match=r"reference item 'Wien' does not appear"):
        Comparisons.from_frame(item_frame(), reference="Wien")


def test_annotator_table_errors():
    good = pd.DataFrame({"annotator": [1, 2, 3], "work": ["yes", "no", "yes"]})
    comps = Comparisons.from_frame(item_frame(), annotators=good)
    assert list(comps.annotators.index) == [1, 2, 3]
    with pytest.raises(PluralstanError, match=r"annotator 3 has judgements but no row"):
        Comparisons.from_frame(item_frame(), annotators=good.iloc[:2])
    extra = pd.concat([good, pd.DataFrame({"annotator": [9], "work": ["no"]})])
    with pytest.raises(PluralstanError, match=r"annotator 9 is in the annotator table but has no"):
        Comparisons.from_frame(item_frame(), annotators=extra)
    missing = good.assign(work=["yes", None, "no"])
    with pytest.raises(PluralstanError, match=r"covariate 'work' is missing for annotator 2"):
        Comparisons.from_frame(item_frame(), annotators=missing)


def test_read_csv_errors(tmp_path):
    with pytest.raises(PluralstanError, match=r"does not exist"):
        ps.read_csv(tmp_path / "nope.csv")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(PluralstanError, match=r"not a readable CSV|parsed to"):
        ps.read_csv(binary)
    good = tmp_path / "good.csv"
    attr_frame().to_csv(good, index=False)
    assert ps.read_csv(good).n == 6


# ------------------------------------------------------------------ encoding
def test_design_is_a_minus_b_and_cells_are_sufficient():
    frame = pd.concat([attr_frame()] * 3, ignore_index=True)  # every pair judged three times
    frame["y"] = np.tile([1, 0, 1], 6)[: len(frame)]
    comps = Comparisons.from_frame(frame)
    X = comps.design()
    np.testing.assert_allclose(X[:, 0], frame["a_x1"] - frame["b_x1"])
    cells = comps.cells()
    assert cells.n_cells == 6
    assert cells.counts.sum() == len(frame)
    # rebuilding the per-row outcomes from the cells reproduces the table
    np.testing.assert_array_equal(cells.X[cells.cell_of_row], X)
    for c in range(cells.n_cells):
        rows = cells.cell_of_row == c
        assert cells.counts[c, 1] == int((frame["y"][rows] == 1).sum())
        assert cells.counts[c, 0] == int((frame["y"][rows] == 0).sum())


def test_cells_split_by_group_and_annotator():
    frame = attr_frame()
    frame = pd.concat([frame, frame], ignore_index=True)
    frame["group"] = ["g1"] * 6 + ["g2"] * 6
    comps = Comparisons.from_frame(frame)
    assert comps.cells().n_cells == 6
    by_group = comps.cells(by=["group"])
    assert by_group.n_cells == 12
    assert set(by_group.group) == {0, 1}
    assert comps.group_levels == ("g1", "g2")


def test_items_mode_reference_coding_and_ties():
    comps = Comparisons.from_frame(item_frame(), reference="London")
    assert comps.mode == "items"
    assert comps.attributes == ("Milano", "Paris")
    X = comps.design()
    # London vs Paris: London is the reference (no column), so the row is -1 on Paris
    np.testing.assert_array_equal(X[0], [0.0, -1.0])
    np.testing.assert_array_equal(X[1], [-1.0, 1.0])
    # the options themselves: one-hot indicators, the reference item at the origin
    A, B = comps.options()
    np.testing.assert_array_equal(A[0], [0.0, 0.0])
    np.testing.assert_array_equal(B[0], [0.0, 1.0])
    np.testing.assert_array_equal(A - B, X)
    assert comps.has_ties
    np.testing.assert_array_equal(comps.outcome_codes(), [1, 0, 2, 1, 0])
    # reports count the items, the reference included, not the design's columns
    assert comps.scope.endswith("annotators over 3 items") and comps.scope.startswith("5 ")


def test_item_features_give_linear_utilities():
    items = pd.DataFrame({"item": ["London", "Paris", "Milano"], "english": [1.0, 0.0, 0.0],
                          "capital": [1.0, 1.0, 0.0]})
    comps = Comparisons.from_frame(item_frame(), items=items)
    assert comps.attributes == ("english", "capital")
    assert comps.scope.endswith("over 3 items")
    np.testing.assert_array_equal(comps.design()[0], [1.0, 0.0])
    A, B = comps.options()  # London (english, capital) vs Paris (capital)
    np.testing.assert_array_equal(np.vstack([A[0], B[0]]), [[1.0, 1.0], [0.0, 1.0]])


def test_unidentified_coordinates_are_warned_by_name():
    frame = attr_frame()
    frame["b_x2"] = frame["a_x2"]  # x2 never differs between the options
    with pytest.warns(IdentificationWarning, match=re.escape("['x2']")):
        Comparisons.from_frame(frame)
    disconnected = pd.DataFrame({"item_a": ["A", "C"], "item_b": ["B", "D"], "y": [1, 0]})
    with pytest.warns(IdentificationWarning, match=r"\['C', 'D'\]"):
        Comparisons.from_frame(disconnected)


def test_simulators_carry_truth_and_valid_tables():
    comps = ps.simulate.high_conflict(n_pairs=10, n_annotators=6, pairs_per_annotator=4, seed=2)
    assert comps.n == 24
    assert comps.truth["theta"].shape == (2, 5)
    assert sorted(np.bincount(comps.truth["z"])) == [3, 3]
    assert comps.frame.groupby("annotator")["pair"].nunique().eq(4).all()
    with pytest.raises(PluralstanError, match="pi must be 2 non-negative weights"):
        ps.simulate.mixture(np.zeros((2, 3)), [0.7, 0.7])


# ------------------------------------------------------------------ large item designs
def _item_table(n: int, n_items: int, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_items, n)
    b = (a + rng.integers(1, n_items, n)) % n_items
    return pd.DataFrame({"annotator": rng.integers(0, max(n // 4, 1), n), "item_a": a,
                         "item_b": b, "y": rng.choice([0.0, 0.5, 1.0], n),
                         "order": rng.integers(0, 2, n), "group": rng.choice(["u", "v"], n)})


def test_large_item_designs_are_sparse_and_equal_the_dense_form(monkeypatch):
    """Above DENSE_LIMIT entries the indicator design, options and cells come in compressed
    sparse rows; they hold the same numbers, cells and cell order as the dense form."""
    from scipy.sparse import issparse

    from pluralstan import data
    from pluralstan.models.base import design_data

    comps = Comparisons.from_frame(_item_table(300, 12))
    dense = {"design": comps.design(), "options": comps.options(),
             "cells": [comps.cells(by, options=opt) for by in ((), ("annotator", "group"))
                       for opt in (False, True)]}
    monkeypatch.setattr(data, "DENSE_LIMIT", 0)
    assert issparse(comps.design())
    np.testing.assert_array_equal(comps.design().toarray(), dense["design"])
    for got, want in zip(comps.options(), dense["options"], strict=True):
        np.testing.assert_array_equal(got.toarray(), want)
    sparse_cells = [comps.cells(by, options=opt) for by in ((), ("annotator", "group"))
                    for opt in (False, True)]
    for got, want in zip(sparse_cells, dense["cells"], strict=True):
        assert issparse(got.X)
        np.testing.assert_array_equal(got.X.toarray(), want.X)
        for name in ("order", "counts", "group", "annotator", "cell_of_row", "outcome_of_row"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        if want.A is not None:
            np.testing.assert_array_equal(got.A.toarray(), want.A)
            np.testing.assert_array_equal(got.B.toarray(), want.B)
    # Stan receives the same compressed rows from either form
    from_sparse = design_data(sparse_cells[0].X)
    from_dense = design_data(dense["cells"][0].X)
    for key in ("X_sparse", "X_nnz", "X_w", "X_v", "X_u"):
        np.testing.assert_array_equal(from_sparse[key], from_dense[key])


def test_item_validation_and_encoding_never_build_the_dense_design():
    """20,000 judgements over 5,000 items: the dense design alone would take 800 MB."""
    import tracemalloc

    from pluralstan.models import get_model

    frame = _item_table(20_000, 5_000).drop(columns="group")
    tracemalloc.start()
    try:
        comps = Comparisons.from_frame(frame)
        enc = get_model("aggregate").encode(comps)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert enc.data["X_sparse"] == 1 and enc.data["X_nnz"] <= 2 * enc.data["C"]
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MB"

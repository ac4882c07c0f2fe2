"""Property-based tests: generated tables either load (and fit) or raise PluralstanError.

Zero unhandled exceptions: no KeyError, TypeError or Stan/C++ traceback may reach the user.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix

import pluralstan as ps
from pluralstan.errors import PluralstanError
from pluralstan.models import get_model

CELL = st.one_of(
    st.integers(-2, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 0.5, 1.0, True, False]),
    st.text(max_size=3),
    st.none(),
)
COLUMNS = ["annotator", "group", "y", "item_a", "item_b", "order", "pair",
           "a_x", "b_x", "a_z", "b_z", "extra"]


@st.composite
def tables(draw) -> pd.DataFrame:
    n = draw(st.integers(0, 8))
    cols = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=7, unique=True))
    if draw(st.booleans()):  # bias towards plausible tables so deeper code paths run
        cols = list(dict.fromkeys(["y", "a_x", "b_x", *cols]))
    data = {}
    for col in cols:
        if draw(st.booleans()) and col in ("y", "order"):
            data[col] = draw(st.lists(st.sampled_from([0, 1, 0.5]), min_size=n, max_size=n))
        elif draw(st.booleans()) and col.startswith(("a_", "b_")):
            data[col] = draw(st.lists(st.floats(-3, 3), min_size=n, max_size=n))
        elif draw(st.booleans()) and col in ("item_a", "item_b"):
            data[col] = draw(st.lists(st.sampled_from("ABCD"), min_size=n, max_size=n))
        else:
            data[col] = draw(st.lists(CELL, min_size=n, max_size=n))
    return pd.DataFrame(data)


def _load(frame: pd.DataFrame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ps.Comparisons.from_frame(frame)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(tables())
def test_loader_and_encoder_never_raise_foreign_exceptions(frame):
    try:
        comps = _load(frame)
    except PluralstanError:
        return
    for name in ("aggregate",):
        try:
            enc = get_model(name).encode(comps)
        except PluralstanError:
            continue
        assert enc.data["C"] >= 1
        # the design Stan reads, in whichever form, is the cells' design
        if enc.data["X_sparse"]:
            X = csr_matrix((enc.data["X_w"], enc.data["X_v"] - 1, enc.data["X_u"] - 1),
                           shape=(enc.data["C"], enc.data["P"])).toarray()
        else:
            X = enc.data["X"]
        assert np.isfinite(X).all() and np.array_equal(X, enc.constant["X"])


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(tables())
def test_fit_either_fits_or_raises_pluralstan_error(frame):
    try:
        comps = _load(frame)
    except PluralstanError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            idata = ps.fit("aggregate", comps, chains=1, draws=20, warmup=20, seed=1)
        except PluralstanError:
            return
    assert idata.log_likelihood.sizes["comparison"] == comps.n

"""Property-based tests: generated tables either load (and fit) or raise PluralstanError.

Zero unhandled exceptions: no KeyError, TypeError or Stan/C++ traceback may reach the user.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pluralstan as ps
from pluralstan.errors import PluralstanError
from pluralstan.models import get_model
from pluralstan.models.base import stan_design

CELL = st.one_of(
    st.integers(-2, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=-1e308, max_value=1e308),  # huge values: a - b may overflow
    st.sampled_from([0.0, 0.5, 1.0, True, False, "0", "1"]),
    st.text(max_size=3),
    st.none(),
)
COLUMNS = ["annotator", "group", "y", "item_a", "item_b", "order", "pair",
           "a_x", "b_x", "a_z", "b_z", "extra"]
#: Prior overrides: valid and invalid values (types, signs, non-finite, shapes).
PRIOR_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 3),
    st.lists(st.floats(-5, 5), max_size=4),
    st.sampled_from([None, True, "wide", [[1.0]], [1.0, "a"], ()]),
)
PRIORS = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["theta_mean", "theta_sd", "order_sd", "log_nu_mean",
                                     "log_nu_sd", "pi_alpha"]), PRIOR_VALUES, max_size=3),
    st.sampled_from(["theta_sd=1", [("theta_sd", 1.0)], 1.0]),
)


@st.composite
def well_formed(draw) -> pd.DataFrame:
    """A valid table: attributes or items, optional annotator / group / order / ties."""
    n = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ties = draw(st.booleans())
    data: dict[str, object] = {"y": rng.choice([0.0, 1.0, 0.5] if ties else [0.0, 1.0], n)}
    if draw(st.booleans()):
        k = draw(st.integers(2, 6))
        a = rng.integers(0, k, n)
        b = (a + rng.integers(1, k, n)) % k
        as_text = draw(st.booleans())
        data["item_a"] = [f"i{v}" for v in a] if as_text else a
        data["item_b"] = [f"i{v}" for v in b] if as_text else b
    else:
        for name in draw(st.lists(st.sampled_from(["x", "z", "w"]), min_size=1, max_size=3,
                                  unique=True)):
            scale = draw(st.sampled_from([1.0, 10.0]))
            data[f"a_{name}"] = rng.normal(0, scale, n)
            data[f"b_{name}"] = rng.normal(0, scale, n)
    if draw(st.booleans()):
        ids = rng.integers(0, max(n // 2, 1), n)
        data["annotator"] = [f"r{v}" for v in ids] if draw(st.booleans()) else ids
    if draw(st.booleans()):
        data["group"] = rng.choice(["g1", "g2"], n)
    if draw(st.booleans()):
        data["order"] = rng.integers(0, 2, n)
    return pd.DataFrame(data)


@st.composite
def malformed(draw) -> pd.DataFrame:
    """Random columns with random cells, biased towards plausible tables."""
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


def tables() -> st.SearchStrategy[pd.DataFrame]:
    """Malformed and well-formed comparison tables, about half each."""
    return st.one_of(malformed(), well_formed())


def _load(frame: pd.DataFrame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ps.Comparisons.from_frame(frame)


def _check_design(enc) -> None:
    """The design Stan reads, in whichever form, is finite and is the cells' design."""
    assert enc.data["C"] >= 1 and enc.data["R"] >= 1
    X = stan_design(enc.data)
    if "row" in enc.data:  # annotator-level: cells share the design's distinct rows
        X = X[enc.data["row"] - 1]
    assert np.isfinite(X).all() and np.array_equal(X, enc.constant["X"])


#: What the exploration reached, counted over one run of :func:`_explore`.
REACHED: Counter[str] = Counter()
#: Examples per run (the issue's floor is 1,000) and the share of them that must be valid
#: tables reaching the encoder (about half the strategy draws well-formed tables).
EXAMPLES = 1000
MIN_ENCODED_SHARE = 0.3


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(frame=tables(), priors=PRIORS, K=st.sampled_from([None, None, 1, 2]))
def _explore(frame, priors, K):
    REACHED["examples"] += 1
    try:
        comps = _load(frame)
    except PluralstanError:
        return
    REACHED["validated"] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for options in ({}, {"priors": priors, "K": K}):
            try:
                enc = get_model("aggregate").encode(comps, **options)
            except PluralstanError:
                continue
            _check_design(enc)
            REACHED["encoded"] += 1
            event("encoded")
        try:
            enc = get_model("annotator").encode(comps, K=K or 2, priors=priors)
        except PluralstanError:
            return
    _check_design(enc)
    assert comps.annotator_given  # a table without annotators never reaches this encoder
    REACHED["annotator model"] += 1


def test_loader_and_encoders_never_raise_foreign_exceptions():
    """Random tables and priors: validation and encoding (aggregate and annotator models)
    either succeed with a finite design or raise PluralstanError; a fair share of the examples
    are valid tables that reach the encoders."""
    REACHED.clear()
    _explore()
    assert REACHED["examples"] >= EXAMPLES
    assert REACHED["encoded"] >= MIN_ENCODED_SHARE * REACHED["examples"], dict(REACHED)
    assert REACHED["annotator model"] > 0, dict(REACHED)


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

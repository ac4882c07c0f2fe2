"""Shared fixtures. Fits are small (the suite must stay well under 20 minutes on 2 cores) and
compiled programs are cached per machine, so only the first run pays for compilation."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from hypothesis import settings

import pluralstan as ps
from pluralstan.engine import BACKEND_ENV

# CI explores a fixed set of Hypothesis examples, so a red run reproduces; locally they vary
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Every test runs on PyStan unless it names its engine: the seed-tuned criteria were set on
# PyStan's chains, and backend="auto" would switch to cmdstanpy wherever CmdStan is installed.
# The cmdstan-marked tests pass backend="cmdstanpy" (or clear this variable) themselves.
os.environ[BACKEND_ENV] = "pystan"

#: Small but honest sampler settings for tests.
FAST = {"chains": 4, "draws": 400, "warmup": 400}


@pytest.fixture(scope="session")
def small_bt():
    """Aggregate BT data with a known theta (4 attributes, 60 pairs x 20 judgements)."""
    return ps.simulate.bt([1.0, -0.5, 0.0, 2.0], n_pairs=60, judgements_per_pair=20, seed=3)


@pytest.fixture(scope="session")
def small_bt_fit(small_bt):
    """One aggregate fit shared by the layout tests (with prior draws); it must pass its
    diagnostics, so no test reads a failed fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ps.DiagnosticWarning)
        fit = ps.fit("aggregate", small_bt, seed=11, sample_prior=True, **FAST)
    assert ps.diagnostics.failed(fit) == []
    return fit


@pytest.fixture()
def rng():
    return np.random.default_rng(12345)

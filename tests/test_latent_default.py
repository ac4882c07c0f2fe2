"""Acceptance of issue 17: a latent-type fit a user can trust with the defaults.

Simulated annotator-type data: three types with mixing weights 0.6 / 0.3 / 0.1, d = 5
attributes, 300 annotators x 10 judgements each. ``ps.fit("annotator", ..., K=3)`` with the
default settings (4 chains; only the draws are set, and the engine is pinned) must come back
relabelled, without a DiagnosticWarning, with its diagnostics recorded as passing and a note that
the label switching in the raw draws was resolved; the chains of the draws as sampled must
really sit in different label permutations (otherwise the test would not exercise relabelling).

Recovery criterion: the fitted types are matched to the true ones by posterior-mean theta
(:func:`pluralstan.relabel.match_components`, least squares, one assignment for the whole fit);
then every true theta coordinate of every type and every true mixing weight lies inside its
central 90% posterior interval.
"""

from __future__ import annotations

import json
from collections import Counter

import arviz as az
import numpy as np
import pytest

import pluralstan as ps
from pluralstan import _arviz, diagnostics
from pluralstan.relabel import match_components, unrelabel

from .strict import converged

THETA = np.array([
    [2.0, 1.5, 0.0, -1.0, -1.5],
    [-1.5, -1.0, 0.0, 1.5, 2.0],
    [0.0, 2.0, -2.0, 1.0, 0.0],
])
PI = [0.6, 0.3, 0.1]
SEED = 17
SETTINGS = {"draws": 1000, "backend": "pystan"}


@pytest.fixture(scope="module")
def fitted() -> tuple[ps.Comparisons, _arviz.Idata]:
    """The defaults fit; a DiagnosticWarning is an error here, so every test fails with it."""
    comps = ps.simulate.mixture(THETA, PI, n_pairs=200, n_annotators=300,
                                pairs_per_annotator=10, seed=SEED)
    idata = converged(ps.fit, "annotator", comps, K=3, seed=SEED, **SETTINGS)
    return comps, idata


def test_diagnostics_recorded_as_passing(fitted) -> None:
    _, idata = fitted
    assert idata.posterior.sizes["chain"] == 4
    record = diagnostics.recorded(idata)
    assert record["problems"] == [] and diagnostics.failed(idata) == []
    assert diagnostics.flag(idata) == ""
    assert record["max_rhat"] <= diagnostics.RHAT_MAX
    assert record["min_ess_bulk"] >= diagnostics.ESS_MIN
    # judged on what is identified too: log density, log likelihood, sorted weights agree
    assert set(record["label_invariant"]) == {"lp", "log_lik", "pi_sorted"}
    assert all(v["rhat"] <= diagnostics.RHAT_MAX for v in record["label_invariant"].values())
    assert not record["multimodal"] and record["modes"] == [[0, 1, 2, 3]]


def test_label_switching_happened_and_was_resolved(fitted) -> None:
    """The raw draws switch labels across chains (raw R-hat of theta far above 1.01); the fit
    was relabelled by Stephens' algorithm (membership probabilities exist) and says so."""
    _, idata = fitted
    method = json.loads(idata.posterior.attrs["relabelling"])["method"]
    assert method == "stephens"
    perms = idata.sample_stats["label_permutation"].values  # relabelled k <- raw perms[..., k]
    dominant = {Counter(map(tuple, chain)).most_common(1)[0][0] for chain in perms}
    assert len(dominant) > 1, dominant
    raw = unrelabel(idata)
    assert float(az.rhat(_arviz.group(raw, "posterior"), var_names=["theta"])["theta"].max()) \
        > 1.5
    assert float(az.rhat(_arviz.group(idata, "posterior"), var_names=["theta"])["theta"].max()) \
        <= \
        diagnostics.RHAT_MAX
    notes = diagnostics.notes(idata)
    assert any("label switching across chains resolved by stephens relabelling" in n
               for n in notes), notes


def test_every_type_recovered(fitted) -> None:
    comps, idata = fitted
    post = idata.posterior
    theta = post["theta"].transpose("chain", "draw", "group", "attribute").values
    theta = theta.reshape(-1, *theta.shape[2:])
    pi = post["pi"].transpose("chain", "draw", "group").values.reshape(-1, 3)
    order = match_components(theta.mean(axis=0), comps.truth["theta"])
    for name, draws in (("theta", theta[:, order]), ("pi", pi[:, order])):
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        truth = comps.truth[name]
        inside = (lo <= truth) & (truth <= hi)
        assert inside.all(), (name, lo.round(2), truth, hi.round(2))

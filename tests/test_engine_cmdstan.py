"""The cmdstanpy engine against a real CmdStan, and the same fits under PyStan.

Runs that need CmdStan skip when none is configured (``CMDSTAN`` or cmdstanpy's default
folder) and say so. With one, the two engines must give InferenceData identical in groups,
variables, dims, coords and attributes on every model, and draws that agree in distribution:
each posterior mean of the two engines within 4 combined Monte-Carlo standard errors,
``|m_a - m_b| <= 4 sqrt(mcse_a^2 + mcse_b^2)`` (a false alarm about once in 16,000 components
when both are right). Each defect of issue 22 has a test here that failed before its fix.

Fits are short (2 chains) so that the added time stays small; every program is compiled once
per machine and cache.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.engine import (
    CmdStanEngine,
    PyStanEngine,
    SamplerConfig,
    StanProgram,
    cmdstan_available,
    get_engine,
)
from pluralstan.engine.cmdstan import (
    SIG_FIGS,
    SamplingLine,
    cmdstan_version_string,
    zero_size_shapes,
)
from pluralstan.models import covariate, pal
from pluralstan.models.base import get_model

_NO_CMDSTAN = pytest.mark.skipif(
    not cmdstan_available(),
    reason="CmdStan not installed: set CMDSTAN to a CmdStan folder "
    "(python -m cmdstanpy.install_cmdstan)",
)


def needs_cmdstan(test):
    """Mark ``test`` as a CmdStan run (``pytest -m cmdstan`` selects them) that skips, saying
    why, when no CmdStan is configured."""
    return pytest.mark.cmdstan(_NO_CMDSTAN(test))


SHORT = {"chains": 2, "draws": 150, "warmup": 150}

#: Provenance attributes that name the engine or time it, and so differ between engines.
ENGINE_ATTRS = {"engine", "engine_version", "build_seconds", "sample_seconds", "compiled"}
#: Attributes that report on the draws of this run (when, diagnostics, relabelling): present
#: in both fits, their values are results, not layout.
RESULT_ATTRS = {"created_at", "diagnostics", "relabelling", "label_switching", "not_relabelled"}

TINY = """
// test program: normal mean
data { int<lower=0> N; vector[N] y; }
parameters { real mu; }
model { mu ~ normal(0, 1); y ~ normal(mu, 1); }
"""


def _quiet_fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        return ps.fit(*args, **kwargs)


def _mixture(seed: int = 1) -> ps.Comparisons:
    frame = ps.simulate.mixture(ps.simulate.HIGH_CONFLICT_THETA[:, :2], [0.5, 0.5], n_pairs=10,
                                n_annotators=20, pairs_per_annotator=6, seed=seed).frame
    return ps.Comparisons.from_frame(frame.drop(columns=["group"]))


def _case(name: str) -> tuple[str, ps.Comparisons, dict]:
    """A small data set and fit options for each model."""
    if name == "aggregate":
        return "aggregate", ps.simulate.bt([1.0, -0.5, 0.0], n_pairs=30,
                                           judgements_per_pair=10, seed=3), {}
    if name == "labeled":
        comps = ps.simulate.high_conflict(seed=2, n_pairs=30, n_annotators=20,
                                          pairs_per_annotator=10)
        return "labeled", comps, {}
    if name == "unlabeled":
        return "unlabeled", _mixture(), {"K": 2}
    if name == "annotator":
        return "annotator", _mixture(), {"K": 2, "membership": False}
    if name == "covariate":
        comps = covariate.simulate(ps.simulate.HIGH_CONFLICT_THETA[:, :2],
                                   np.array([[0.0, 0.0], [0.0, 1.0]]), n_annotators=20,
                                   n_pairs=10, pairs_per_annotator=5, seed=1)
        return "covariate", comps, {"K": 2}
    comps = pal.simulate(n_annotators=15, judgements=20, seed=1, K=2, n_attributes=3,
                         theta=np.array([[1.0, 0.0, -1.0], [-1.0, 0.5, 0.5]]), w_alpha=0.5,
                         M=np.eye(3))
    return "pal", comps, {"K": 2}


MODELS = ["aggregate", "labeled", "unlabeled", "annotator", "covariate", "pal"]


def _assert_same_layout(a, b) -> None:
    """Groups, variables, dims, coords and attributes of two fits are the same."""
    assert set(_arviz.groups(a)) == set(_arviz.groups(b))
    for group in _arviz.groups(a):
        da, db = a[group], b[group]
        assert set(da.data_vars) == set(db.data_vars), group
        assert dict(da.sizes) == dict(db.sizes), group
        for var in da.data_vars:
            assert da[var].dims == db[var].dims, (group, var)
        assert set(da.coords) == set(db.coords), group
        for coord in da.coords:
            np.testing.assert_array_equal(da[coord].values, db[coord].values)
        assert set(da.attrs) == set(db.attrs), group
        for key in set(da.attrs) - ENGINE_ATTRS - RESULT_ATTRS:
            assert da.attrs[key] == db.attrs[key], (group, key)
    assert a.posterior.attrs["engine"] == "pystan"
    assert b.posterior.attrs["engine"] == "cmdstanpy"


def _assert_same_distribution(a, b, var: str) -> None:
    """Posterior means within 4 combined Monte-Carlo standard errors, component by component."""
    import arviz as az

    ma, mb = a.posterior[var].mean(("chain", "draw")), b.posterior[var].mean(("chain", "draw"))
    sa = az.mcse(a.posterior[[var]], method="mean")[var]
    sb = az.mcse(b.posterior[[var]], method="mean")[var]
    z = np.abs((ma - mb).values) / np.sqrt(sa.values ** 2 + sb.values ** 2)
    assert (z <= 4).all(), (var, z)


# --------------------------------------------------------------- without CmdStan (always run)
def test_zero_size_shapes_follow_the_declaration_and_the_data():
    code = get_model("annotator").program.code
    data = {"save_membership": 0, "I": 7, "K": 3, "replicate": 0, "C": 11, "has_ties": 1,
            "has_order": 0, "identify": 1}
    shapes = zero_size_shapes(code, data, {"membership": 2, "y_rep": 2, "gamma": 1,
                                           "theta_lead_free": 1})
    assert shapes == {"membership": (0, 3), "y_rep": (0, 3), "gamma": (0,),
                      "theta_lead_free": (0,)}
    # a size it cannot evaluate (a function call, an unknown name) is taken as 0
    odd = "parameters { vector[size(x) * 0] a; matrix[0, n_unknown] b; }"
    assert zero_size_shapes(odd, {}, {"a": 1, "b": 2}) == {"a": (0,), "b": (0, 0)}


def test_cmdstan_version_is_a_version_string(tmp_path):
    (tmp_path / "makefile").write_text("STAN ?= stan/\nCMDSTAN_VERSION := 2.35.0\n")
    assert cmdstan_version_string(tmp_path) == "2.35.0"
    assert cmdstan_version_string(tmp_path / "nowhere") is None


def test_cmdstan_found_after_a_first_negative_answer(monkeypatch, tmp_path):
    """``cmdstan_available`` is asked anew: a CmdStan pointed to after a first "no" is seen,
    and ``backend="auto"`` then picks cmdstanpy."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH (CmdStan needs it)")
    monkeypatch.delenv("PLURALSTAN_BACKEND", raising=False)
    monkeypatch.setenv("CMDSTAN", str(tmp_path / "missing"))
    assert not cmdstan_available()
    assert isinstance(get_engine("auto"), PyStanEngine)
    (tmp_path / "makefile").write_text("CMDSTAN_VERSION := 2.35.0\n")
    monkeypatch.setenv("CMDSTAN", str(tmp_path))
    assert cmdstan_available()
    assert isinstance(get_engine("auto"), CmdStanEngine)


# ------------------------------------------------------------------------- with CmdStan
@pytest.fixture(scope="module")
def fits():
    """Each model fitted by both engines (same data, seed and settings), made on demand."""
    made: dict[str, tuple] = {}

    def get(name: str):
        if name not in made:
            model, comps, opts = _case(name)
            made[name] = tuple(
                # stack=False: a chain-stacked fit (genuine multimodality, a chance event in
                # short runs) has other groups by design
                _quiet_fit(model, comps, seed=5, backend=backend, stack=False, **opts, **SHORT)
                for backend in ("pystan", "cmdstanpy"))
        return made[name]

    return get


@needs_cmdstan
@pytest.mark.parametrize("name", MODELS)
def test_engines_give_the_same_inference_data(fits, name):
    a, b = fits(name)
    _assert_same_layout(a, b)


@needs_cmdstan
@pytest.mark.parametrize(("name", "var"), [("aggregate", "theta"), ("labeled", "theta"),
                                           ("labeled", "pi")])
def test_engines_agree_in_distribution(fits, name, var):
    a, b = fits(name)
    _assert_same_distribution(a, b, var)


@needs_cmdstan
def test_prior_draws_have_the_same_layout():
    model, comps, _ = _case("aggregate")
    a, b = (_quiet_fit(model, comps, seed=2, backend=backend, sample_prior=True, **SHORT)
            for backend in ("pystan", "cmdstanpy"))
    _assert_same_layout(a, b)


@needs_cmdstan
def test_zero_size_outputs_have_pystans_shapes():
    """Defect: zero-size outputs were missing from CmdStan's draws (SBC's KeyError)."""
    spec = get_model("annotator")
    enc = spec.encode(_mixture(), K=2, membership=False, replicate=False)
    config = SamplerConfig(chains=1, draws=5, warmup=5, seed=1)
    a = PyStanEngine().sample(spec.program, enc.data, config).variables
    b = CmdStanEngine().sample(spec.program, enc.data, config).variables
    assert list(a) == list(b)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert b["membership"].shape == (1, 5, 0, 2) and b["gamma"].shape == (1, 5, 0)
    params = {"pi_coord": [0.0], "theta_lead_free": [-1.0, 1.0], "theta_rest": [[0.0], [0.0]]}
    ga = PyStanEngine().generate(spec.program, enc.data, params, seed=1)
    gb = CmdStanEngine().generate(spec.program, enc.data, params, seed=1)
    assert {k: v.shape for k, v in ga.items()} == {k: v.shape for k, v in gb.items()}


@needs_cmdstan
def test_draws_are_read_at_full_precision():
    """Defect: draws were read at CmdStan's default 6 significant figures. At fixed
    parameters the deterministic outputs of both engines agree to 1e-12 (relative)."""
    spec = get_model("aggregate")
    _, comps, _ = _case("aggregate")
    data = {**spec.encode(comps).data, "save_log_p_cell": 1}  # the program's own output
    params = {"theta_coord": [0.123456789123, -0.987654321987, 0.5]}
    ga = PyStanEngine().generate(spec.program, data, params, seed=1)
    gb = CmdStanEngine().generate(spec.program, data, params, seed=1)
    for name in ("theta", "lprior", "log_p_cell"):
        np.testing.assert_allclose(gb[name], ga[name], rtol=1e-12, atol=0)
    theta = CmdStanEngine().sample(spec.program, data,
                                   SamplerConfig(chains=1, draws=20, warmup=20)).variables["theta"]
    six = np.array([float(f"{x:.6g}") for x in theta.ravel()])
    assert (six != theta.ravel()).mean() > 0.9
    assert SIG_FIGS == 18


@needs_cmdstan
def test_engine_version_and_provenance_name_the_engine(fits, monkeypatch):
    """Defect: ``engine_version`` read ``cmdstan (2, 35)``. ``backend="auto"`` with a CmdStan
    configured picks cmdstanpy and the fit says so."""
    _, b = fits("aggregate")
    assert re.fullmatch(r"cmdstanpy \d+\.\d+\.\d+ / CmdStan \d+\.\d+\.\d+\S*",
                        b.posterior.attrs["engine_version"]), b.posterior.attrs["engine_version"]
    monkeypatch.delenv("PLURALSTAN_BACKEND", raising=False)
    model, comps, _ = _case("aggregate")
    auto = _quiet_fit(model, comps, seed=5, backend="auto", chains=1, draws=20, warmup=20)
    assert auto.posterior.attrs["engine"] == "cmdstanpy"


@needs_cmdstan
def test_no_csv_files_left_and_no_info_lines(tmp_path, monkeypatch, caplog):
    """Defects: CmdStan's CSV files piled up in the temporary folder, and cmdstanpy's INFO
    lines flooded stderr (shown when ``verbose``)."""
    import tempfile

    import cmdstanpy

    spec = get_model("aggregate")
    _, comps, _ = _case("aggregate")
    enc = spec.encode(comps)
    cmdstanpy_tmp = Path(cmdstanpy._TMPDIR)
    before = set(cmdstanpy_tmp.rglob("*.csv"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    caplog.set_level(logging.INFO, logger="cmdstanpy")
    config = SamplerConfig(chains=2, draws=10, warmup=10)
    CmdStanEngine().sample(spec.program, enc.data, config)
    CmdStanEngine().generate(spec.program, enc.data, {"theta": [0.0, 0.0, 0.0]}, seed=1)
    assert set(cmdstanpy_tmp.rglob("*.csv")) == before
    assert list(tmp_path.iterdir()) == []
    assert [r for r in caplog.records if r.name == "cmdstanpy" and r.levelno < logging.WARNING
            ] == []
    CmdStanEngine(verbose=True).sample(spec.program, enc.data, config)
    assert any("Chain" in r.getMessage() for r in caplog.records if r.name == "cmdstanpy")
    assert logging.getLogger("cmdstanpy").level < logging.WARNING  # restored afterwards


def test_sampling_line_sums_the_chains_into_one_progress_line():
    """CmdStan's console (one iteration line per chain, with or without the chain prefix,
    among other chatter) becomes one ``Sampling: NN% (done/total)`` line, rewritten in place
    only when the whole percentage changes, and ended once."""
    out = io.StringIO()
    line = SamplingLine(chains=2, out=out)
    line.write("method = sample (Default)\n")
    assert out.getvalue() == ""  # chatter alone shows nothing
    line.write("Chain [1] Iteration:    1 / 200 [  0%]  (Warmup)\n")
    line.write("Chain [2] Iteration:    1 / 200 [  0%]  (Warmup)\n")  # still 0%: not rewritten
    line.write("Chain [1] Iteration:  100 / 200 [ 50%]  (Sampling)\n")
    line.write("Chain [1] Gradient evaluation took 2e-05 seconds\n")
    line.write("Chain [2] Iteration:  200 / 200 [100%]  (Sampling)\n")
    line.write("Iteration:  200 / 200 [100%]  (Sampling)\n")  # one chain per process: chain 1
    line.finish()
    assert out.getvalue().split("\r")[1:] == [
        "Sampling:   0% (1/400)", "Sampling:  25% (101/400)", "Sampling:  75% (300/400)",
        "Sampling: 100% (400/400), done.\n"]


@needs_cmdstan
def test_a_fit_shows_one_progress_line_and_no_cmdstan_chatter(capfd):
    """Under cmdstanpy a fit shows PyStan's progress line on stderr (what the audit's bar
    reads) and nothing of CmdStan's console: no configuration dump, no per-chain lines."""
    spec = get_model("aggregate")
    _, comps, _ = _case("aggregate")
    CmdStanEngine().sample(spec.program, spec.encode(comps).data,
                           SamplerConfig(chains=2, draws=100, warmup=100))
    out, err = capfd.readouterr()
    assert out == ""
    assert err.endswith("Sampling: 100% (400/400), done.\n"), err[-300:]
    assert "method = sample" not in err and "Gradient evaluation" not in err
    assert "Chain [" not in err


@needs_cmdstan
@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="TBB relocation is Linux only")
def test_a_moved_cache_keeps_working(tmp_path, monkeypatch):
    """Defect: a cached executable linked TBB by the absolute path of CmdStan's folder. It
    now loads the copy beside it, so a moved (or shared) cache runs without a rebuild."""
    program = StanProgram("tiny", TINY + f"// {uuid.uuid4()}\n")
    data = {"N": 3, "y": [0.1, 0.5, 0.9]}
    config = SamplerConfig(chains=1, draws=20, warmup=20)
    monkeypatch.setenv("PLURALSTAN_CACHE", str(tmp_path / "a"))
    assert CmdStanEngine().sample(program, data, config).compiled
    shutil.move(tmp_path / "a", tmp_path / "b")
    monkeypatch.setenv("PLURALSTAN_CACHE", str(tmp_path / "b"))
    engine = CmdStanEngine()
    assert engine.is_cached(program)
    exe = next((tmp_path / "b" / "cmdstan").glob("*/tiny"))
    linked = subprocess.run(["ldd", str(exe)], capture_output=True, text=True).stdout
    tbb = [line for line in linked.splitlines() if "libtbb" in line]
    assert tbb and str(exe.parent / "libtbb.so.2") in tbb[0], linked
    draws = engine.sample(program, data, config)
    assert not draws.compiled and draws.variables["mu"].shape == (1, 20)


# --------------------------------------------- SBC, PPC, LOO and workflow fitting paths
@needs_cmdstan
def test_sbc_runs_under_cmdstanpy():
    from pluralstan.checks.sbc import sbc

    design = ps.simulate.bt([1.0, -0.5], n_pairs=10, judgements_per_pair=5, seed=1)
    result = sbc("aggregate", design, n_sims=10, seed=3, scheduler="serial", progress=False,
                 backend="cmdstanpy", chains=1, draws=39, warmup=100)
    assert result.n_failed == 0
    assert result.quantities == ["theta[x1]", "theta[x2]", "log_lik"]
    mixture = sbc("annotator", _mixture(), K=2, n_sims=10, seed=3, scheduler="serial",
                  progress=False, backend="cmdstanpy", chains=1, draws=19, warmup=60)
    assert mixture.n_failed == 0


@needs_cmdstan
def test_ppc_and_loo_run_under_cmdstanpy(fits):
    from pluralstan.checks.compare import loo
    from pluralstan.checks.ppc import ppc_frequencies

    a, b = fits("labeled")
    _, comps, _ = _case("labeled")
    pa, pb = ppc_frequencies(a, comps, by_group=True), ppc_frequencies(b, comps, by_group=True)
    assert list(pa.columns) == list(pb.columns) and len(pa) == len(pb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        la, _ = loo(a, comps=comps)
        lb, _ = loo(b, comps=comps)
    assert list(la.columns) == list(lb.columns)
    assert np.isfinite(lb["elpd"]).all()


@needs_cmdstan
def test_mode_search_and_new_users_under_cmdstanpy():
    """The workflows' other fitting paths: ``modes="search"`` (its log density comes from
    PyStan) and PAL's new-user fits."""
    from pluralstan.checks import pal_users

    _, comps, _ = _case("unlabeled")
    fit = _quiet_fit("unlabeled", comps, K=2, seed=4, backend="cmdstanpy", modes="search",
                     n_starts=3, **SHORT)
    assert fit.posterior.attrs["engine"] == "cmdstanpy"
    assert "mode_search" in fit.posterior.attrs
    _, pal_comps, _ = _case("pal")
    train, _, unseen = pal.train_test_split(pal_comps, test_per_user=5, n_unseen=3)
    seen = _quiet_fit("pal", train, K=2, seed=3, backend="cmdstanpy", **SHORT)
    new = pal_users.fit_new_users(seen, unseen, n_draws=10, chains=1, draws=50, warmup=50,
                                  backend="cmdstanpy", check=False)
    assert new.posterior.attrs["engine"] == "cmdstanpy"


@needs_cmdstan
def test_the_audit_runs_under_cmdstanpy(tmp_path, capfd):
    """The audit's fitting path under ``--backend cmdstanpy``: every fit it saves ran on CmdStan,
    the report is written, and each fit's own progress bar moves (CmdStan's console turned into
    the progress line the audit reads)."""
    from pluralstan import cli

    data = Path(__file__).resolve().parent.parent / "data" / "rlhf_example"
    out = tmp_path / "report"
    assert cli.main(["audit", str(data / "judgements.csv"), "--items",
                     str(data / "responses.csv"), "--K", "1", "2", "--chains", "2", "--draws",
                     "100", "--warmup", "100", "--kfold", "0", "--backend", "cmdstanpy",
                     "--out", str(out)]) == 0
    fits = sorted((out / "fits").glob("*.nc"))
    assert fits and {ps.load(f).posterior.attrs["engine"] for f in fits} == {"cmdstanpy"}
    assert (out / "report.html").exists()
    err = capfd.readouterr().err
    assert re.search(r"  annotator_K2: +\d+%\|", err), err[-2000:]  # that fit's own bar


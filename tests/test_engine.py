"""The engine seam: backend selection, the shared compile cache under concurrency, and the
cmdstanpy adapter (run only where CmdStan is installed)."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import pluralstan as ps
from pluralstan import _arviz
from pluralstan.engine import (
    BUILD_RECORD,
    CmdStanEngine,
    PyStanEngine,
    SamplerConfig,
    StanProgram,
    cmdstan_available,
    engine_output,
    get_engine,
    pystan_compile_args,
)
from pluralstan.engine.pystan import STANC_OPTIONS, pystan_output
from pluralstan.models.base import get_model

TINY = """
// test program: normal mean with a data-passed prior
data { int<lower=0> N; vector[N] y; real<lower=0> prior_sd; }
parameters { real mu; }
model { mu ~ normal(0, prior_sd); y ~ normal(mu, 1); }
"""


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("PLURALSTAN_BACKEND", raising=False)
    assert isinstance(get_engine("pystan"), PyStanEngine)
    expected = CmdStanEngine if cmdstan_available() else PyStanEngine
    assert isinstance(get_engine("auto"), expected)
    monkeypatch.setenv("PLURALSTAN_BACKEND", "pystan")
    assert isinstance(get_engine("auto"), PyStanEngine)
    monkeypatch.setenv("PLURALSTAN_BACKEND", "stan-on-mars")
    with pytest.raises(ps.PluralstanError,
                       match=r"unknown backend 'stan-on-mars' \(from \$PLURALSTAN_BACKEND\)"):
        get_engine("auto")
    with pytest.raises(ps.PluralstanError, match="unknown backend 'julia'"):
        get_engine("julia")


def test_cmdstanpy_backend_without_cmdstan_says_how_to_get_it(monkeypatch, tmp_path):
    """Runs with or without a CmdStan: ``CMDSTAN`` pointing at a folder that does not exist
    is what cmdstanpy answers "none installed" to."""
    monkeypatch.setenv("CMDSTAN", str(tmp_path / "no-cmdstan-here"))
    assert not cmdstan_available()
    with pytest.raises(ps.PluralstanError, match="needs a CmdStan installation"):
        get_engine("cmdstanpy")


def test_sampler_settings_are_validated_before_stan_runs(small_bt):
    with pytest.raises(ps.PluralstanError, match="adapt_delta must lie in"):
        ps.fit("aggregate", small_bt, adapt_delta=1.5)
    with pytest.raises(ps.PluralstanError, match="chains must be a positive integer"):
        ps.fit("aggregate", small_bt, chains=0)
    with pytest.raises(ps.PluralstanError, match="unknown model 'agregate'"):
        ps.fit("agregate", small_bt)
    with pytest.raises(ps.PluralstanError, match="unknown prior hyperparameter 'theta_scale'"):
        ps.fit("aggregate", small_bt, priors={"theta_scale": 1.0})


def _build_and_sample(code: str, queue) -> None:
    from pluralstan.engine import install_worker_cleanup

    install_worker_cleanup()  # let this child exit although httpstan started chain processes
    program = StanProgram("tiny", code)
    draws = PyStanEngine().sample(
        program, {"N": 3, "y": [0.1, 0.5, 0.9], "prior_sd": 1.0},
        SamplerConfig(chains=1, draws=50, warmup=50, seed=1),
    )
    queue.put((draws.compiled, float(draws.variables["mu"].mean())))


def test_four_processes_share_the_compile_cache_without_duplicate_builds():
    """Four processes fit a never-seen program at once: exactly one compiles, the other three
    wait on the build lock and load the cached module; all four give the same draws. The cache
    starts with a half-written entry (a module file but no compiler log, as an interrupted build
    leaves it), which must be discarded and rebuilt rather than loaded."""
    code = TINY + f"// {uuid.uuid4()}\n"  # a fresh program text, so the cache starts cold
    program = StanProgram("tiny", code)
    partial = PyStanEngine.model_dir(program)
    partial.mkdir(parents=True)
    (partial / "stan_services_model_x.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert not PyStanEngine().is_cached(program)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_and_sample, args=(code, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    compiled = [c for c, _ in results]
    assert sorted(compiled) == [False, False, False, True]
    means = [m for _, m in results]
    assert np.allclose(means, means[0])
    # the module was built with httpstan's flags plus pluralstan's, and says so
    import httpstan

    record = json.loads((partial / BUILD_RECORD).read_text())
    assert record == {"added": list(pystan_compile_args()), "stanc": list(STANC_OPTIONS),
                      "httpstan": httpstan.__version__}
    # the C++ compiled is stanc's output with pluralstan's options (stanc records its flags)
    flags = re.search(r'"stancflags = ([^"]*)"', next(partial.glob("*.cpp")).read_text())
    assert flags and set(STANC_OPTIONS) <= set(flags.group(1).split())
    if "-mtls-dialect=gnu2" in pystan_compile_args():
        # TLS descriptors: the module reaches Stan's thread_local autodiff stack through them
        module = next(partial.glob("*.so"))
        relocations = subprocess.run(["readelf", "-rW", str(module)], capture_output=True,
                                     text=True, check=True).stdout
        assert "R_X86_64_TLSDESC" in relocations


def _fake_builds(monkeypatch, log: Path) -> Callable[[], list[str]]:
    """Replace httpstan's C++ build by one that writes an empty module (stanc still runs).

    The build runs in a child process (``build_apart``), so each call is logged to the file
    ``log``. Returns a function giving the program texts it was called for.
    """
    import httpstan.cache
    import httpstan.models

    async def build(program_code: str) -> str:
        with open(log, "a") as handle:
            handle.write(json.dumps(program_code) + "\n")
        folder = httpstan.cache.model_directory(httpstan.models.calculate_model_name(program_code))
        (folder / "stan_services_model_fake.so").write_bytes(b"")
        return "compiler output"

    monkeypatch.setattr(httpstan.models, "build_services_extension_module", build)
    return lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_compile_records_the_flags_it_added_and_is_cached_for_them(monkeypatch, tmp_path):
    import httpstan

    program = StanProgram("tiny", TINY + f"// {uuid.uuid4()}\n")
    engine = PyStanEngine()
    calls = _fake_builds(monkeypatch, tmp_path / "builds.log")
    try:
        assert engine.compile(program) is True
        record = json.loads((engine.model_dir(program) / BUILD_RECORD).read_text())
        assert record == {"added": list(pystan_compile_args()), "stanc": list(STANC_OPTIONS),
                          "httpstan": httpstan.__version__}
        # cached for the flags asked for: later calls load, they do not build again ...
        assert engine.is_cached(program) and engine.compile(program) is False
        assert engine.compile(program, pystan_compile_args()) is False
        assert len(calls()) == 1
        # ... but not for other flags, nor without pluralstan's record (PyStan's own build)
        assert not engine.is_cached(program, ("-O0",))
        if pystan_compile_args():
            assert not engine.is_cached(program, ())  # () is httpstan's flags alone
        # ... nor for other stanc options: asking for them builds again, and records them
        assert not engine.is_cached(program, stanc_options=())
        assert engine.compile(program, stanc_options=()) is True and len(calls()) == 2
        record_file = engine.model_dir(program) / BUILD_RECORD
        assert json.loads(record_file.read_text())["stanc"] == []
        assert engine.is_cached(program, stanc_options=()) and not engine.is_cached(program)
        record_file.unlink()
        assert not engine.is_cached(program)
    finally:
        shutil.rmtree(engine.model_dir(program), ignore_errors=True)


def _stanc(model: str, *flags: str) -> str:
    """What httpstan's stanc, run with the engines' options and ``flags``, prints for the
    registered model's program."""
    import importlib.resources

    with importlib.resources.as_file(importlib.resources.files("httpstan") / "stanc") as stanc:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{model}.stan"
            path.write_text(get_model(model).program.code)
            return subprocess.run([str(stanc), *STANC_OPTIONS, *flags, str(path)],
                                  capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("model", ["annotator", "covariate"])
def test_annotator_type_programs_keep_every_matrix_as_one_autodiff_node(model):
    """Under the engines' stanc optimisation the annotator-type programs keep every matrix of
    parameters as one autodiff node (struct of arrays), which vectorises their log normaliser.
    One overloaded function, conditional expression or array of vectors on the way from the
    parameters to the likelihood turns them all back into a node per element
    (``stan/functions/design.stanfunctions``); stanc reports each variable's layout."""
    report = _stanc(model, "--debug-mem-patterns")
    layouts = re.findall(r":\s*(SoA|AoS)\s*$", report, flags=re.MULTILINE)
    assert len(layouts) > 10, report  # theta, the linear predictors, the normaliser ...
    assert set(layouts) == {"SoA"}, report


@pytest.mark.parametrize("model", ["annotator", "covariate"])
def test_annotator_type_programs_compile_no_scalar_log1p(model):
    """The log normaliser over the cells x types matrix reaches C++ as whole-matrix ``exp`` and
    ``log`` (Eigen's vectorised kernels), not as ``log1p_exp`` or ``log1p``, which call glibc
    once per element: stanc's optimiser rewrites the pattern ``log(1 + exp(x))`` into
    ``log1p_exp(x)`` (``stan/functions/annotator_types.stanfunctions``)."""
    cpp = _stanc(model, "--print-cpp")
    assert "stan::math::exp(" in cpp and "stan::math::log(" in cpp
    assert not re.findall(r"stan::math::log1p\w*\(", cpp)


def test_a_failed_cpp_build_raises_with_the_compilers_error_text():
    """A program that passes stanc but whose C++ build fails (a flag the compiler does not know):
    PluralstanError names the program and carries the compiler's own message."""
    program = StanProgram("tiny_bad_flag", TINY + f"// {uuid.uuid4()}\n")
    engine = PyStanEngine()
    try:
        with pytest.raises(ps.PluralstanError) as caught:
            engine.compile(program, ("-fno-such-flag-pluralstan",))
        message = str(caught.value)
        assert "C++ compiler failed on Stan program 'tiny_bad_flag'" in message
        assert "error" in message and "-fno-such-flag-pluralstan" in message.split("\n", 1)[1]
        assert not engine.is_cached(program, ("-fno-such-flag-pluralstan",))
    finally:
        shutil.rmtree(engine.model_dir(program), ignore_errors=True)


@pytest.mark.skipif(not cmdstan_available(),
                    reason="CmdStan is not installed on this machine (cmdstanpy's installer needs "
                    "GitHub); the PyStan engine covers every model here")
def test_cmdstanpy_and_pystan_give_the_same_inference_data_layout(small_bt):
    a = ps.fit("aggregate", small_bt, backend="pystan", chains=2, draws=300, warmup=300)
    b = ps.fit("aggregate", small_bt, backend="cmdstanpy", chains=2, draws=300, warmup=300)
    assert set(_arviz.groups(a)) == set(_arviz.groups(b))
    for group in _arviz.groups(a):
        assert dict(a[group].sizes) == dict(b[group].sizes), group
        assert set(a[group].data_vars) == set(b[group].data_vars), group
    diff = abs(a.posterior["theta"].mean() - b.posterior["theta"].mean())
    assert float(diff) < 0.1


def test_shared_stan_functions_are_included_once_per_program():
    # PyStan compiles a program from its text alone, so #include lines are expanded on load
    from pluralstan.models import REGISTRY, stan_dir

    shared = {
        "davidson.stanfunctions": ("aggregate", "labeled", "unlabeled"),
        "annotator_types.stanfunctions": ("annotator", "covariate"),
    }
    for file_name, models in shared.items():
        text = (stan_dir() / "functions" / file_name).read_text().rstrip("\n")
        for name in models:
            source = (stan_dir() / REGISTRY[name].program_file).read_text()
            assert f"#include functions/{file_name}" in source
            code = REGISTRY[name].program.code
            assert "#include" not in code
            assert code.count(text) == 1, (name, file_name)


@pytest.fixture
def own_fit_files(monkeypatch):
    """The files httpstan stores for the fits this test requests, named as they are requested.

    Other pytest-xdist workers fit the same model at the same moment, so a listing of the
    model's fits directory before and after would count their in-flight fits as this test's.
    """
    import httpstan.cache
    import httpstan.fits

    from pluralstan.engine.httpstan_fixes import record_fit_names

    record_fit_names()
    names: list[str] = []
    named = httpstan.fits.calculate_fit_name

    def note(function: str, model_name: str, kwargs: dict) -> str:
        names.append(named(function, model_name, kwargs))
        return names[-1]

    note.pluralstan_records = True
    monkeypatch.setattr(httpstan.fits, "calculate_fit_name", note)
    return lambda: [httpstan.cache.fit_path(name) for name in names]


def test_pystan_fits_are_not_left_in_httpstan_cache(small_bt, own_fit_files):
    """httpstan stores every fit on disk; the PyStan adapter gives each request a fit of its
    own and deletes it once read, so the cache does not grow per fit and an identical re-run
    samples anew (same draws, from the seed)."""
    spec = get_model("aggregate")
    prog = spec.program
    first = ps.fit("aggregate", small_bt, seed=12, chains=2, draws=50, warmup=50,
                   backend="pystan", check=False)
    data = spec.encode(small_bt).data
    generated = PyStanEngine().generate(prog, data, {"theta": np.zeros(data["P"])}, seed=3)
    again = ps.fit("aggregate", small_bt, seed=12, chains=2, draws=50, warmup=50,
                   backend="pystan", check=False)
    files = own_fit_files()
    # one stored fit per chain, then the generate request, then the re-run's chains
    assert len(files) == 5 and len(set(files)) == 5, files
    assert not [f for f in files if f.exists()]
    assert "lprior" in generated
    np.testing.assert_array_equal(first.posterior["theta"].values, again.posterior["theta"].values)


def test_sampling_leaves_no_socket_file_behind(tmp_path):
    """httpstan binds a Unix socket to a fresh httpstan_*.sock per request and never unlinks
    it; a fit in a process whose temporary folder is ``tmp_path`` must leave none there (two
    chains, a generate request, and a second fit: every request's file is removed)."""
    import os
    import sys

    script = (
        "import pluralstan as ps\n"
        "c = ps.simulate.bt([1.0, -0.5], n_pairs=10, judgements_per_pair=5, seed=1)\n"
        "for seed in (1, 2):\n"
        "    ps.fit('aggregate', c, seed=seed, chains=2, draws=30, warmup=30,"
        " backend='pystan', check=False)\n"
        "import tempfile, pathlib\n"
        "print(tempfile.gettempdir())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(str(tmp_path))
    assert list(tmp_path.glob("httpstan_*.sock")) == []


def test_identical_fits_in_threads_get_stored_fits_of_their_own(small_bt, own_fit_files):
    """Two threads making the identical request (as Dask thread workers prebuilding a model do)
    get the same draws from fits stored under names of their own, both gone afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int):
        return ps.fit("aggregate", small_bt, seed=13, chains=1, draws=30, warmup=30,
                      backend="pystan", check=False)

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(one, range(2))
    np.testing.assert_array_equal(a.posterior["theta"].values, b.posterior["theta"].values)
    files = own_fit_files()
    assert len(files) == 2 and files[0] != files[1]
    assert not [f for f in files if f.exists()]


def test_identical_seeded_requests_are_named_apart_and_keep_their_seed():
    """httpstan names a seeded request by hashing it, so identical requests from two processes
    shared one stored fit and the first to finish deleted it under the other. Every request now
    gets a name of its own, as httpstan names unseeded ones, and the seed Stan receives is
    untouched. The names do not come from the ``random`` module, which a caller (Hypothesis,
    for one) may seed alike in several processes."""
    import random

    import httpstan.fits

    from pluralstan.engine.httpstan_fixes import record_fit_names

    record_fit_names()
    kwargs = {"random_seed": 1, "num_samples": 1}
    names = set()
    for _ in range(3):
        random.seed(0)
        names.add(httpstan.fits.calculate_fit_name("f", "models/m", kwargs))
    assert len(names) == 3, names
    assert all(re.fullmatch(r"models/m/fits/[a-z2-7]{8}", n) for n in names), names
    assert kwargs == {"random_seed": 1, "num_samples": 1}


def test_a_pystan_fit_shows_its_progress_line_and_no_sampler_messages(small_bt, capfd):
    """Besides its progress line, PyStan prints each chain's gradient timing (and warm-up's
    rejected proposals) under "Messages received during sampling", and on loading a cached
    model "found in cache" and stanc's warnings about priors given as data. Only the progress
    line shows; inside ``engine_output()`` (the command line's ``--verbose``) the rest does too."""
    spec = get_model("aggregate")
    data = spec.encode(small_bt).data
    config = SamplerConfig(chains=2, draws=100, warmup=100)
    PyStanEngine().sample(spec.program, data, config)
    out, err = capfd.readouterr()
    assert out == ""
    assert "Sampling: 100% (400/400)" in err, err[-300:]
    for chatter in ("Messages received", "Gradient evaluation", "found in cache", "no priors"):
        assert chatter not in err, err[-500:]
    with engine_output():
        PyStanEngine().sample(spec.program, data, config)
    err = capfd.readouterr().err
    assert "Sampling: 100% (400/400)" in err and "Gradient evaluation took" in err, err[-500:]


def test_held_pystan_output_is_shown_when_the_block_fails(capsys):
    """What :func:`pystan_output` holds back is printed if the block raises, after the progress
    that passed, so a failed fit shows everything PyStan said."""
    progress = "Sampling:  50% (1/2)\r"
    messages = "Messages received during sampling:\n  Rejecting initial value\n"
    with pystan_output(progress=True):
        sys.stderr.write(progress)
        sys.stderr.write(messages)
    assert capsys.readouterr().err == progress
    with pytest.raises(RuntimeError, match="Initialization failed"), \
            pystan_output(progress=True):
        sys.stderr.write(progress)
        sys.stderr.write(messages)
        raise RuntimeError("Initialization failed.")
    assert capsys.readouterr().err == progress + messages


def test_held_pystan_output_outliving_its_target_closes_quietly(tmp_path):
    """The stream :func:`pystan_output` installs is closed when it is collected, which flushes
    it; when its target was closed first (a test runner's captured stderr), that is no error."""
    from pluralstan.engine.pystan import _HeldOutput

    with open(tmp_path / "stderr.txt", "w") as target:  # a file's flush raises once closed
        stream = _HeldOutput(target, progress=True)
        stream.write("Sampling: 100% (2/2)\n")
    stream.close()
    assert stream.closed
    assert (tmp_path / "stderr.txt").read_text() == "Sampling: 100% (2/2)\n"


def test_engine_output_lets_cmdstanpy_log_and_is_scoped():
    """``--verbose`` reaches the cmdstanpy engine through :func:`engine_output`: inside it the
    INFO lines that are otherwise hidden keep their level; outside it they are hidden again."""
    import logging

    from pluralstan.audit import _quiet
    from pluralstan.engine.base import engine_output_shown
    from pluralstan.engine.cmdstan import quiet_cmdstanpy

    logger = logging.getLogger("cmdstanpy")
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with quiet_cmdstanpy():
            assert logger.level >= logging.WARNING
        with engine_output(), quiet_cmdstanpy():
            assert logger.level == logging.DEBUG
        with _quiet(verbose=True):  # the audit's --verbose
            assert engine_output_shown()
        with _quiet(verbose=False):
            assert not engine_output_shown()
        assert not engine_output_shown() and logger.level == logging.DEBUG
    finally:
        logger.setLevel(saved)


def test_the_suite_pins_pystan_unless_a_test_names_its_engine():
    """conftest pins the engine, so a machine with CmdStan runs the seed-tuned tests on the
    engine their criteria were set on (``backend="auto"`` would pick cmdstanpy there)."""
    assert isinstance(get_engine(), PyStanEngine)
    assert isinstance(get_engine("auto"), PyStanEngine)

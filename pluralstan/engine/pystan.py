"""The PyStan 3 / httpstan engine (the embedded default: installs from PyPI alone; the wheel
carries stanc, the Stan headers, Sundials and TBB and compiles with the system C++ compiler)."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Interrupted, PluralstanError
from ..files import write_atomic
from .base import (
    SAMPLE_STATS,
    STANC_OPTIMISATION,
    Draws,
    LogDensity,
    SamplerConfig,
    StanProgram,
    build_lock,
    cast_stats,
    engine_output_shown,
    init_values,
)
from .httpstan_fixes import (
    build_apart,
    discard_stored_fits,
    httpstan_build,
    httpstan_stanc,
    interruptible,
)

#: File in a model's httpstan cache folder recording the flags pluralstan built it with.
BUILD_RECORD = "pluralstan-build.json"

#: Options pluralstan adds to httpstan's stanc call (:func:`httpstan_stanc`): the optimisation
#: level both engines compile with.
STANC_OPTIONS = (f"--{STANC_OPTIMISATION}",)


def pystan_compile_args() -> tuple[str, ...]:
    """Compiler flags pluralstan adds to httpstan's own for PyStan builds.

    httpstan chooses its flags (optimisation and a C++ standard that follows its Stan version);
    pluralstan appends to them only TLS descriptors on x86-64 Linux. httpstan defines
    ``STAN_THREADS``, which makes Stan's autodiff stack ``thread_local``. In a module loaded
    with ``dlopen`` (as every httpstan model is) each access to it then goes through
    ``__tls_get_addr``, and Stan touches the stack once per autodiff node. With TLS descriptors
    (``-mtls-dialect=gnu2``) glibc resolves the access to a fixed offset when it has static TLS
    room for the module, and takes the dynamic path otherwise, so the flag is safe either way.
    On the annotator model's gradient it was worth 1.2x (``benchmarks/run.py --targets
    flags``). Other platforms add nothing.
    """
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        return ("-mtls-dialect=gnu2",)
    return ()


def sample_pystan(model: Any, **kwargs: Any) -> Any:
    """``model.sample(**kwargs)``, deleting the stored fits afterwards (see
    :func:`discard_stored_fits`). Ctrl-C raises :class:`~pluralstan.errors.Interrupted` (see
    :func:`interruptible`).
    """
    def sample() -> Any:
        with discard_stored_fits():
            return model.sample(**kwargs)

    return interruptible(sample, "sampling")


class _HeldOutput(io.TextIOBase):
    """Where PyStan writes inside :func:`pystan_output`: its progress line passes, the rest is held.

    PyStan prints a progress line (``Sampling:  45% (3600/8000)``) and, once sampling is done,
    every message the sampler logged, under the header ``Messages received during sampling:``:
    each chain's gradient timing and, in warm-up, each rejected proposal. With ``progress``,
    the text before that header goes to ``target`` as written (so a terminal still redraws the
    line in place, and the audit's bar still reads it) and the rest is held; without, all of
    it is held.
    """

    HEADER = "Messages received during sampling"

    def __init__(self, target: Any, progress: bool) -> None:
        super().__init__()
        self.target, self.passing, self.held = target, progress, io.StringIO()

    def write(self, text: str) -> int:
        if self.passing:
            at = text.find(self.HEADER)
            if at < 0:
                return self.target.write(text)
            self.target.write(text[:at])
            self.passing, text = False, text[at:]
        return self.held.write(text)

    def flush(self) -> None:
        # also called when the stream is collected (IOBase closes itself), possibly after its
        # target, such as a test runner's captured stderr, was closed
        if not self.target.closed:
            self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()


@contextlib.contextmanager
def pystan_output(progress: bool = False) -> Iterator[None]:
    """Keep PyStan's own lines out of the user's output inside the block.

    Only the progress line passes (with ``progress``). What is held is written to stderr if the
    block raises, and nothing is held when the engines' output was asked for
    (:func:`~pluralstan.engine.engine_output`, the command line's ``--verbose``).
    """
    if engine_output_shown():
        yield
        return
    stream = _HeldOutput(sys.stderr, progress)
    try:
        with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(stream):
            yield
    except BaseException:
        stream.target.write(stream.held.getvalue())
        raise


def stack_chains(flat: np.ndarray, chains: int) -> np.ndarray:
    """Turn PyStan's ``(*shape, draw * chain)`` (draw-major) into ``(chain, draw, *shape)``."""
    shape = flat.shape[:-1]
    arr = flat.reshape(*shape, flat.shape[-1] // chains, chains)  # (*shape, draw, chain)
    return np.moveaxis(arr, (-1, -2), (0, 1))


class PyStanEngine:
    """PyStan 3 adapter (the embedded default)."""

    name = "pystan"

    @property
    def version(self) -> str:
        """``pystan/httpstan`` versions."""
        import httpstan
        import stan

        return f"pystan {stan.__version__} / httpstan {httpstan.__version__}"

    @staticmethod
    def model_dir(program: StanProgram) -> Path:
        import httpstan.cache
        import httpstan.models

        return httpstan.cache.model_directory(httpstan.models.calculate_model_name(program.code))

    def is_cached(self, program: StanProgram, compile_args: tuple[str, ...] | None = None,
                  stanc_options: tuple[str, ...] | None = None) -> bool:
        """Whether httpstan's cache holds a complete build of ``program`` with ``compile_args``
        and ``stanc_options``.

        A complete entry has the compiled extension module, the compiler log httpstan writes
        after it, and pluralstan's :data:`BUILD_RECORD` of the flags it added to httpstan's
        (default :func:`pystan_compile_args`) and of stanc's options (default
        :data:`STANC_OPTIONS`).
        A folder missing one of them is an interrupted build, or one made by PyStan alone or
        with other flags, and is built again.
        """
        model_dir = self.model_dir(program)
        if not (model_dir.is_dir() and (model_dir / "stderr.log").is_file()
                and any(p.suffix == ".so" for p in model_dir.iterdir())):
            return False
        try:
            record = json.loads((model_dir / BUILD_RECORD).read_text())
        except (OSError, ValueError):
            return False
        wanted = pystan_compile_args() if compile_args is None else compile_args
        options = STANC_OPTIONS if stanc_options is None else stanc_options
        return record.get("added") == list(wanted) and record.get("stanc") == list(options)

    def compile(self, program: StanProgram, compile_args: tuple[str, ...] | None = None,
                stanc_options: tuple[str, ...] | None = None) -> bool:
        """Compile ``program`` into httpstan's cache unless it is there; return whether it was.

        Takes the per-program build lock (:func:`build_lock`), so concurrent callers compile
        once. ``compile_args`` are added to httpstan's own flags; they default to
        :func:`pystan_compile_args` (``()``: httpstan's flags alone). ``stanc_options`` are
        added to httpstan's stanc call; they default to :data:`STANC_OPTIONS`.
        """
        wanted = pystan_compile_args() if compile_args is None else tuple(compile_args)
        options = STANC_OPTIONS if stanc_options is None else tuple(stanc_options)
        with build_lock(program, self.name):
            return self._compile_unless_cached(program, wanted, options)

    def _compile_unless_cached(self, program: StanProgram, compile_args: tuple[str, ...],
                               stanc_options: tuple[str, ...]) -> bool:
        """:meth:`compile`'s body, for callers that hold the build lock already (the flags and
        options resolved)."""
        if self.is_cached(program, compile_args, stanc_options):
            return False
        print(f"pluralstan: compiling Stan program {program.name!r} (once per machine; "
              "about a minute)", file=sys.stderr, flush=True)
        self._compile(program, compile_args, stanc_options)
        return True

    def _compile(self, program: StanProgram, compile_args: tuple[str, ...],
                 stanc_options: tuple[str, ...]) -> None:
        """Compile ``program`` straight into httpstan's cache, as httpstan's own handler does.

        ``stan.build`` compiles through an HTTP request whose client gives up after 300 s, which
        a loaded two-core machine can exceed, and with httpstan's flags and stanc options
        alone; compiling here has no time limit, runs stanc with ``stanc_options`` and
        appends ``compile_args`` to httpstan's flags (:func:`httpstan_build`), and
        ``stan.build`` then finds the module in the cache. A
        failed build raises :class:`PluralstanError` with the compiler's first error lines.
        """
        import asyncio

        import httpstan
        import httpstan.cache
        import httpstan.compile
        import httpstan.models

        name = httpstan.models.calculate_model_name(program.code)
        httpstan.cache.delete_model_directory(name)
        with httpstan_stanc(stanc_options):
            try:
                _, stanc_warnings = httpstan.compile.compile(
                    program.code, f"model_{name.split('/')[1]}"
                )
            except ValueError as err:
                raise PluralstanError(
                    f"Stan program {program.name!r} does not compile: {err}"
                ) from err
            httpstan.cache.dump_stanc_warnings(stanc_warnings, name)
            build = httpstan.models.build_services_extension_module
            with httpstan_build(compile_args, program.name):
                try:
                    output = build_apart(lambda: asyncio.run(build(program.code)),
                                         f"compiling Stan program {program.name!r}")
                except Interrupted:
                    httpstan.cache.delete_model_directory(name)  # nothing half-built is kept
                    raise
        httpstan.cache.dump_services_extension_module_compiler_output(output, name)
        record = {"added": list(compile_args), "stanc": list(stanc_options),
                  "httpstan": httpstan.__version__}
        write_atomic(self.model_dir(program) / BUILD_RECORD, json.dumps(record))

    def _build(self, program: StanProgram, data: dict[str, Any], seed: int) -> tuple[Any, bool]:
        """Compile ``program`` once per machine, then instantiate it with ``data``.

        Returns the PyStan model and whether this call compiled.
        """
        import stan

        with build_lock(program, self.name):
            compiled = self._compile_unless_cached(program, pystan_compile_args(),
                                                   STANC_OPTIONS)
            # the module is in the cache now: PyStan's build only loads it, and reports that
            # and stanc's warnings (which flag every prior given as data)
            with pystan_output():
                model = interruptible(
                    lambda: stan.build(program.code, data=data, random_seed=int(seed)),
                    f"building Stan program {program.name!r}")
        return model, compiled

    def sample(self, program: StanProgram, data: dict[str, Any], config: SamplerConfig) -> Draws:
        """Build (or load from cache) and sample with PyStan."""
        t0 = time.perf_counter()
        model, compiled = self._build(program, data, config.seed)
        t1 = time.perf_counter()
        with pystan_output(progress=True):
            fit = sample_pystan(
                model,
                num_chains=int(config.chains),
                num_samples=int(config.draws),
                num_warmup=int(config.warmup),
                num_thin=int(config.thin),
                delta=float(config.adapt_delta),
                max_depth=int(config.max_treedepth),
                **pystan_inits(config),
            )
        t2 = time.perf_counter()
        variables = self._variables(fit)
        stats = {
            arviz_name: stack_chains(np.asarray(fit[stan_name]).reshape(-1), fit.num_chains)
            for stan_name, arviz_name in SAMPLE_STATS.items()
            if stan_name in fit.sample_and_sampler_param_names
        }
        return Draws(variables, cast_stats(stats), self.name, self.version, t1 - t0, t2 - t1,
                     compiled)

    @staticmethod
    def _variables(fit: Any) -> dict[str, np.ndarray]:
        """Every Stan output of a PyStan fit as ``(chain, draw, *shape)``."""
        n_total = np.asarray(fit["lp__"]).size
        return {
            name: stack_chains(np.asarray(fit[name]).reshape(*dims, n_total), fit.num_chains)
            for name, dims in zip(fit.param_names, fit.dims, strict=True)
        }

    def generate(self, program: StanProgram, data: dict[str, Any], params: dict[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
        """Outputs at fixed ``params``: one draw of PyStan's ``fixed_param`` sampler."""
        model, _ = self._build(program, data, seed)
        init = init_values(params)
        with pystan_output(), discard_stored_fits():
            fit = interruptible(
                lambda: model.fixed_param(num_chains=1, num_samples=1, init=[init]),
                "generating quantities")
        return {name: arr[0] for name, arr in self._variables(fit).items()}

    def log_density(self, program: StanProgram, data: dict[str, Any]) -> LogDensity:
        """The log density of ``program`` given ``data`` (see :class:`LogDensity`)."""

        model, _ = self._build(program, data, seed=1)
        return LogDensity.from_pystan(model, set(program_info(program).get("parameters", {})))


def pystan_inits(config: SamplerConfig) -> dict[str, Any]:
    """PyStan's ``init`` and ``stepsize`` keywords for ``config.inits`` and
    ``config.stepsize`` (nothing for what Stan chooses itself)."""
    out: dict[str, Any] = {}
    if config.inits is not None:
        out["init"] = [init_values(values) for values in config.inits]
    if config.stepsize is not None:
        out["stepsize"] = float(config.stepsize)
    return out


@cache
def _stanc_info(code: str) -> dict[str, Any]:
    """``stanc --info`` of a program's text (the stanc binary shipped in the httpstan wheel)."""
    import httpstan

    stanc = Path(httpstan.__file__).resolve().parent / "stanc"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "program.stan"
        path.write_text(code)
        out = subprocess.run([str(stanc), "--info", str(path)], capture_output=True,
                             text=True, check=False)
    if out.returncode != 0:
        raise PluralstanError(f"stanc --info failed on the program: {out.stderr.strip()}")
    return json.loads(out.stdout)


def program_info(program: StanProgram) -> dict[str, Any]:
    """What ``stanc --info`` says of ``program``: the variables of its blocks
    (``"parameters"``, ``"transformed parameters"``, ``"generated quantities"``, ...) with their
    types and dimensions, its included files and the distributions it uses. Cached per program
    text."""
    return _stanc_info(program.code)

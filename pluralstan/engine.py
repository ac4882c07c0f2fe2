"""The engine seam: one small interface, two Stan back ends.

pluralstan talks to Stan through :class:`Engine`. Two adapters implement it:

* :class:`PyStanEngine` - PyStan 3 / httpstan, installed from PyPI alone (the wheel carries stanc,
  the Stan headers, Sundials and TBB and compiles with the system C++ compiler). The default.
* :class:`CmdStanEngine` - cmdstanpy, used when a CmdStan installation is found.

Both return a :class:`Draws` object (arrays shaped ``(chain, draw, *shape)`` for every Stan
variable plus sampler statistics under ArviZ names), so every InferenceData is built by one
function whichever engine ran. Choose with ``backend="auto" | "pystan" | "cmdstanpy"`` or the
``PLURALSTAN_BACKEND`` environment variable.

Compiled models are cached per machine and program text (PyStan: httpstan's cache, built with
:func:`pystan_compile_args`; cmdstanpy: executables under ``~/.cache/pluralstan/cmdstan``).
Builds take a per-program file lock so that several processes fitting the same model at once
compile it once and never see a half-written cache entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

import filelock
import numpy as np

from .errors import Interrupted, PluralstanError

#: Environment variable that forces a back end ("pystan" or "cmdstanpy").
BACKEND_ENV = "PLURALSTAN_BACKEND"

#: ArviZ's names for Stan's sampler diagnostics.
SAMPLE_STATS = {
    "lp__": "lp",
    "accept_stat__": "acceptance_rate",
    "stepsize__": "step_size",
    "treedepth__": "tree_depth",
    "n_leapfrog__": "n_steps",
    "divergent__": "diverging",
    "energy__": "energy",
}


def cache_root() -> Path:
    """Directory for pluralstan's own caches (locks, CmdStan executables)."""
    base = os.environ.get("PLURALSTAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pluralstan"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class StanProgram:
    """A Stan program: its name and its source text."""

    name: str
    code: str

    @property
    def sha(self) -> str:
        """SHA-256 of the program text (recorded in every output for provenance)."""
        return hashlib.sha256(self.code.encode()).hexdigest()


@dataclass
class SamplerConfig:
    """NUTS settings shared by both engines."""

    chains: int = 4
    draws: int = 1000
    warmup: int = 1000
    seed: int = 1
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    thin: int = 1
    #: Per-chain initial values (constrained ``parameters``-block values, one dict per chain,
    #: e.g. :meth:`pluralstan.modes.ModeSearch.inits`); ``None``: Stan's uniform(-2, 2) inits.
    inits: list[dict[str, Any]] | None = None

    def validate(self) -> None:
        """Raise :class:`PluralstanError` for settings no engine accepts."""
        if self.inits is not None and len(self.inits) != int(self.chains):
            raise PluralstanError(
                f"inits must hold one dict per chain ({self.chains}), got {len(self.inits)}"
            )
        for name in ("chains", "draws", "thin", "max_treedepth", "warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                kind = "a non-negative" if name in ("warmup", "seed") else "a positive"
                raise PluralstanError(f"{name} must be {kind} integer, got {value!r}")
        for name in ("chains", "draws", "thin", "max_treedepth"):
            if int(getattr(self, name)) < 1:
                raise PluralstanError(
                    f"{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        if int(self.warmup) < 0:
            raise PluralstanError(f"warmup must be >= 0, got {self.warmup!r}")
        if not 0.0 < float(self.adapt_delta) < 1.0:
            raise PluralstanError(f"adapt_delta must lie in (0, 1), got {self.adapt_delta!r}")
        if not 0 <= int(self.seed) < 2**31:
            raise PluralstanError(f"seed must be an integer in [0, 2**31), got {self.seed!r}")


@dataclass
class Draws:
    """Engine-neutral output of one sampling run.

    Attributes
    ----------
    variables
        Every Stan variable (parameters, transformed parameters, generated quantities) as an
        array shaped ``(chain, draw, *shape)``.
    sample_stats
        Sampler statistics under ArviZ names, each ``(chain, draw)``.
    engine, engine_version
        Which adapter produced the draws.
    build_seconds, sample_seconds
        Wall time spent building (compiling or loading from cache) and sampling.
    compiled
        Whether this call compiled the program (False: it came from the cache).
    """

    variables: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    engine: str
    engine_version: str
    build_seconds: float = 0.0
    sample_seconds: float = 0.0
    compiled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    """What pluralstan needs from a Stan back end."""

    name: str

    @property
    def version(self) -> str:  # pragma: no cover - protocol
        """Version string of the back end."""

    def is_cached(self, program: StanProgram) -> bool:  # pragma: no cover - protocol
        """Whether ``program`` is already compiled on this machine."""

    def sample(
        self, program: StanProgram, data: dict[str, Any], config: SamplerConfig
    ) -> Draws:  # pragma: no cover - protocol
        """Run NUTS and return the draws."""

    def generate(
        self, program: StanProgram, data: dict[str, Any], params: dict[str, Any], seed: int
    ) -> dict[str, np.ndarray]:  # pragma: no cover - protocol
        """Evaluate transformed parameters and generated quantities at fixed parameter values.

        One draw of Stan's ``fixed_param`` sampler started at ``params`` (constrained values of
        the ``parameters`` block): every output with a leading draw axis of length 1.
        """


@contextlib.contextmanager
def build_lock(program: StanProgram, engine: str) -> Iterator[None]:
    """Hold an exclusive per-program lock while a program is compiled or loaded.

    Processes that build the same program serialise here; the second one then finds the cached
    build instead of compiling again or reading a half-written one.
    """
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock_dir / f"{engine}-{program.sha[:16]}.lock"):
        yield


#: File in a model's httpstan cache folder recording the flags pluralstan built it with.
BUILD_RECORD = "pluralstan-build.json"


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


def _first_errors(log: str, lines: int = 12) -> str:
    """The compiler's first error lines (from the first ``error`` on), else the log's tail."""
    rows = log.splitlines()
    start = next((i for i, row in enumerate(rows) if "error" in row.lower()),
                 max(0, len(rows) - lines))
    return "\n".join(rows[start:start + lines])


@contextlib.contextmanager
def _httpstan_build(extra_args: tuple[str, ...], program_name: str) -> Iterator[None]:
    """Let httpstan build an extension module with ``extra_args`` after its own flags.

    httpstan's ``build_services_extension_module`` hands its extension, carrying httpstan's own
    flags, to ``httpstan.build_ext.run_build_ext``. While this context is active that function is
    replaced by a copy of it that appends ``extra_args`` and keeps the compiler's messages when
    the build fails: httpstan's own drops them and reports only the compiler's exit status. A
    failure raises :class:`PluralstanError` with the compiler's first error lines.
    """
    import tempfile

    import httpstan.build_ext
    import setuptools
    import setuptools.command.build_ext

    def run_build_ext(extensions: list[Any], build_lib: str) -> str:
        dist = setuptools.Distribution()
        dist.parse_config_files(dist.find_config_files())
        command = setuptools.command.build_ext.build_ext(dist)
        command.build_lib = build_lib
        command.finalize_options()
        for extension in extensions:
            extension._needs_stub = False  # as httpstan does
            extension.extra_compile_args = [*extension.extra_compile_args, *extra_args]
        command.extensions = extensions
        failure: Exception | None = None
        with tempfile.TemporaryFile(prefix="pluralstan_build_") as log:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                command.run()
            except Exception as err:  # setuptools' CompileError / LinkError: no compiler text
                failure = err
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            output = log.read().decode(errors="replace")
        if failure is not None:
            flags = " ".join(extensions[0].extra_compile_args)
            raise PluralstanError(
                f"the C++ compiler failed on Stan program {program_name!r} (flags: {flags}):\n"
                f"{_first_errors(output)}"
            ) from failure
        return output

    saved_run = httpstan.build_ext.run_build_ext
    httpstan.build_ext.run_build_ext = run_build_ext
    try:
        yield
    finally:
        httpstan.build_ext.run_build_ext = saved_run


@contextlib.contextmanager
def _patient_stanc(seconds: float = 600.0) -> Iterator[None]:
    """Give httpstan's stanc call a long timeout while a program is built.

    httpstan runs stanc through ``subprocess.run(..., timeout=1)``, which a loaded machine can
    exceed; its module-level ``subprocess`` reference is swapped for one whose ``run`` waits up
    to ``seconds`` (httpstan.compile uses nothing else from ``subprocess``).
    """
    import subprocess
    import types

    import httpstan.compile

    def run(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        return subprocess.run(*args, timeout=max(timeout or 0.0, seconds), **kwargs)

    saved = httpstan.compile.subprocess
    httpstan.compile.subprocess = types.SimpleNamespace(run=run)
    try:
        yield
    finally:
        httpstan.compile.subprocess = saved


#: Fits named by this process's requests, per thread (see :func:`_discard_stored_fits`).
_FIT_NAMES = threading.local()
#: How many requests of this process are using each stored fit; guarded by ``_FIT_LOCK``.
_FITS_IN_USE: Counter[str] = Counter()
_FIT_LOCK = threading.Lock()


def _record_fit_names() -> None:
    """Wrap httpstan's fit-name function (once per process) to note each request's fit.

    httpstan has no public call that names a request's fit. Its server runs in the calling
    thread's event loop, so a thread-local list collects the names of that thread's requests.
    """
    import httpstan.fits

    with _FIT_LOCK:
        original = httpstan.fits.calculate_fit_name
        if not getattr(original, "pluralstan_records", False):
            httpstan.fits.calculate_fit_name = _recording(original)


def _recording(original: Callable[[str, str, dict], str]) -> Callable[[str, str, dict], str]:
    """``original`` (httpstan's fit-name function), noting each name for this thread."""

    def record(function: str, model_name: str, kwargs: dict) -> str:
        name = original(function, model_name, kwargs)
        names = getattr(_FIT_NAMES, "names", None)
        if names is not None:
            with _FIT_LOCK:
                _FITS_IN_USE[name] += 1
            names.append(name)
        return name

    record.pluralstan_records = True  # type: ignore[attr-defined]
    return record


@contextlib.contextmanager
def _discard_stored_fits() -> Iterator[None]:
    """Delete the fits httpstan stores for the sampling requests made inside the block.

    httpstan writes every seeded fit (one file per chain) to its cache directory and keeps it
    for good, answering an identical later request from it. pluralstan returns the draws as
    InferenceData, so the stored copy is only disk use that grows with every fit (18 GB of
    them after two days of this project's tests, SBC runs and benchmarks) and makes a re-run
    report the seconds of reading a file as sampling time. It is deleted once PyStan has read
    it, unless another thread of this process made the same request and is still reading it.
    """
    import httpstan.cache

    _record_fit_names()
    _FIT_NAMES.names = names = []
    try:
        yield
    finally:
        _FIT_NAMES.names = None
        with _FIT_LOCK:
            for name in names:
                _FITS_IN_USE[name] -= 1
                if _FITS_IN_USE[name] <= 0:
                    del _FITS_IN_USE[name]
                    with contextlib.suppress(KeyError):  # already gone
                        httpstan.cache.delete_fit(name)


T = TypeVar("T")


def _terminate_workers(executor: Any) -> list[Any]:
    """Send SIGTERM to the worker processes of ``executor``; return them.

    ``ProcessPoolExecutor`` has no public call for this before Python 3.14
    (``terminate_workers``), so its process table is read.
    """
    try:
        processes = list((getattr(executor, "_processes", None) or {}).values())
    except RuntimeError:  # the table changed while it was read: the next call gets them
        return []
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.terminate()
    return processes


def _stop_sampler_workers() -> None:
    """Stop httpstan's sampler processes and give httpstan a fresh pool for later fits.

    httpstan runs every chain in a worker of one module-level ``ProcessPoolExecutor`` whose
    workers ignore SIGINT. When Ctrl-C cancels PyStan's request the workers go on sampling (or
    block writing draws nobody reads), and the interpreter's exit waits for them: the command
    line hangs and the processes outlive it.
    """
    import concurrent.futures
    import multiprocessing

    import httpstan.services_stub as stub

    executor = stub.executor
    stub.executor = concurrent.futures.ProcessPoolExecutor(
        mp_context=multiprocessing.get_context("fork"), initializer=stub.init_worker
    )  # as httpstan makes its own
    for process in _terminate_workers(executor):
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    executor.shutdown(wait=False, cancel_futures=True)


class _AfterInterrupt(logging.Filter):
    """Drop the records httpstan's server and asyncio log while an interrupted call unwinds.

    Cancelling PyStan's request makes httpstan log its unfinished sampling tasks, and asyncio
    the tracebacks of their callbacks; they are consequences of the Ctrl-C, which is reported
    once as :class:`~pluralstan.errors.Interrupted`.
    """

    def __init__(self, interrupted: threading.Event) -> None:
        super().__init__()
        self.interrupted = interrupted

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.interrupted.is_set()


#: Loggers silenced while an interrupted PyStan call unwinds (see :class:`_AfterInterrupt`).
_UNWIND_LOGGERS = ("asyncio", "httpstan", "aiohttp.server", "aiohttp.web")


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@dataclass
class _Interrupt:
    """Ctrl-C around one PyStan call: whether it came, whether the call is being stopped
    (further Ctrl-Cs then wait for the sampler processes to be stopped), and whether the
    call is over."""

    seen: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    over: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def _sigint_stops_sampling() -> Iterator[_Interrupt]:
    """Let Ctrl-C stop a PyStan call promptly while the block runs.

    ``asyncio.run`` (which PyStan calls) answers SIGINT by cancelling its main task, which
    takes effect only when the event loop runs again; httpstan's loop relaying draws from the
    sampler processes gives the event loop no turn while draws keep arriving, so the
    cancellation waited for the chains to finish. Raising ``KeyboardInterrupt`` from the
    handler is no cure: wherever Python swallows exceptions (at-fork and ``__del__`` callbacks,
    both met while httpstan starts its workers) the interrupt is lost. So the first Ctrl-C
    terminates the sampler processes, which ends the relay, and schedules the
    ``KeyboardInterrupt`` as an event-loop callback, where it always propagates (raised at once
    when no event loop runs); until the call is over a thread goes on terminating any worker
    that httpstan was still starting. A second Ctrl-C raises at once. The handler is installed
    only over Python's default one, in the main thread (asyncio then installs none).
    """
    import asyncio
    import signal

    import httpstan.services_stub as stub

    state = _Interrupt()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def keep_terminating() -> None:
        while not (state.stopping or state.over.wait(0.05)):
            _terminate_workers(stub.executor)

    reaper = threading.Thread(target=keep_terminating, name="pluralstan-stop-sampler",
                              daemon=True)

    def handler(signum: int, frame: Any) -> None:
        first = not state.seen.is_set()
        state.seen.set()
        if state.stopping:
            return
        _terminate_workers(stub.executor)
        if first:
            reaper.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if first and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_raise_keyboard_interrupt)
            return
        raise KeyboardInterrupt

    quiet = _AfterInterrupt(state.seen)
    loggers = [logging.getLogger(name) for name in _UNWIND_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        state.over.set()
        if reaper.is_alive():
            reaper.join()
        for logger in loggers:
            logger.removeFilter(quiet)


def _interruptible(call: Callable[[], T | None], what: str) -> T:
    """Run a PyStan call, turning Ctrl-C into :class:`~pluralstan.errors.Interrupted`.

    PyStan catches ``KeyboardInterrupt`` inside ``stan.build`` and ``Model.sample`` and returns
    ``None``. A ``None`` result, an interrupt that reaches here, or an error raised after
    Ctrl-C (httpstan reports the terminated processes as a failed fit) stops httpstan's sampler
    processes (:func:`_stop_sampler_workers`) and raises :class:`Interrupted`.
    """
    with _sigint_stops_sampling() as interrupt:
        try:
            result = call()
        except KeyboardInterrupt:
            result = None
        except Exception:
            if not interrupt.seen.is_set():
                raise
            result = None
        if result is None:
            interrupt.stopping = True
            _stop_sampler_workers()
    if result is None:
        raise Interrupted(f"{what} interrupted (Ctrl-C); no sampler process is left running")
    return result


def _sample_pystan(model: Any, **kwargs: Any) -> Any:
    """``model.sample(**kwargs)``, deleting the stored fits afterwards.

    Another process making the identical request (same program, data, seed and settings) at
    the same moment can delete the stored fit between httpstan's answer and PyStan's read of
    it; PyStan then reports the fit "not found", and the request is made once more. Ctrl-C
    raises :class:`~pluralstan.errors.Interrupted` (see :func:`_interruptible`).
    """
    def sample() -> Any:
        with _discard_stored_fits():
            return model.sample(**kwargs)

    try:
        return _interruptible(sample, "sampling")
    except RuntimeError as err:
        if not ("Fit `" in str(err) and "not found" in str(err)):
            raise
    return _interruptible(sample, "sampling")


def _stack_chains(flat: np.ndarray, chains: int) -> np.ndarray:
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
    def _model_dir(program: StanProgram) -> Path:
        import httpstan.cache
        import httpstan.models

        return httpstan.cache.model_directory(httpstan.models.calculate_model_name(program.code))

    def is_cached(self, program: StanProgram,
                  compile_args: tuple[str, ...] | None = None) -> bool:
        """Whether httpstan's cache holds a complete build of ``program`` with ``compile_args``.

        A complete entry has the compiled extension module, the compiler log httpstan writes
        after it, and pluralstan's :data:`BUILD_RECORD` of the flags it added to httpstan's
        (default :func:`pystan_compile_args`). A folder missing one of them is an interrupted
        build, or one made by PyStan alone or with other flags, and is built again.
        """
        model_dir = self._model_dir(program)
        if not (model_dir.is_dir() and (model_dir / "stderr.log").is_file()
                and any(p.suffix == ".so" for p in model_dir.iterdir())):
            return False
        try:
            record = json.loads((model_dir / BUILD_RECORD).read_text())
        except (OSError, ValueError):
            return False
        wanted = pystan_compile_args() if compile_args is None else compile_args
        return record.get("added") == list(wanted)

    def compile(self, program: StanProgram, compile_args: tuple[str, ...] | None = None) -> bool:
        """Compile ``program`` into httpstan's cache unless it is there; return whether it was.

        Takes the per-program build lock (:func:`build_lock`), so concurrent callers compile
        once. ``compile_args`` are added to httpstan's own flags; they default to
        :func:`pystan_compile_args` (``()``: httpstan's flags alone).
        """
        wanted = pystan_compile_args() if compile_args is None else tuple(compile_args)
        with build_lock(program, self.name):
            return self._compile_unless_cached(program, wanted)

    def _compile_unless_cached(self, program: StanProgram, compile_args: tuple[str, ...]) -> bool:
        """:meth:`compile`'s body, for callers that hold the build lock already."""
        if self.is_cached(program, compile_args):
            return False
        print(f"pluralstan: compiling Stan program {program.name!r} (once per machine; "
              "about a minute)", file=sys.stderr, flush=True)
        self._compile(program, compile_args)
        return True

    def _compile(self, program: StanProgram, compile_args: tuple[str, ...]) -> None:
        """Compile ``program`` straight into httpstan's cache, as httpstan's own handler does.

        ``stan.build`` compiles through an HTTP request whose client gives up after 300 s, which
        a loaded two-core machine can exceed, and with httpstan's flags alone; compiling here
        has no time limit and appends ``compile_args`` to httpstan's flags
        (:func:`_httpstan_build`), and ``stan.build`` then finds the module in the cache. A
        failed build raises :class:`PluralstanError` with the compiler's first error lines.
        """
        import asyncio

        import httpstan
        import httpstan.cache
        import httpstan.compile
        import httpstan.models

        name = httpstan.models.calculate_model_name(program.code)
        httpstan.cache.delete_model_directory(name)
        with _patient_stanc():
            try:
                _, stanc_warnings = httpstan.compile.compile(
                    program.code, f"model_{name.split('/')[1]}"
                )
            except ValueError as err:
                raise PluralstanError(
                    f"Stan program {program.name!r} does not compile: {err}"
                ) from err
            httpstan.cache.dump_stanc_warnings(stanc_warnings, name)
            with _httpstan_build(compile_args, program.name):
                build = httpstan.models.build_services_extension_module
                output = asyncio.run(build(program.code))
        httpstan.cache.dump_services_extension_module_compiler_output(output, name)
        record = {"added": list(compile_args), "httpstan": httpstan.__version__}
        (self._model_dir(program) / BUILD_RECORD).write_text(json.dumps(record))

    def _build(self, program: StanProgram, data: dict[str, Any], seed: int) -> tuple[Any, bool]:
        """Compile ``program`` once per machine, then instantiate it with ``data``.

        Returns the PyStan model and whether this call compiled.
        """
        import stan

        with build_lock(program, self.name):
            compiled = self._compile_unless_cached(program, pystan_compile_args())
            # PyStan reports build progress on stdout/stderr; keep it out of user output
            # unless a compile is actually happening.
            sink = io.StringIO()
            with contextlib.ExitStack() as stack:
                if not compiled:
                    stack.enter_context(contextlib.redirect_stdout(sink))
                    stack.enter_context(contextlib.redirect_stderr(sink))
                model = _interruptible(
                    lambda: stan.build(program.code, data=data, random_seed=int(seed)),
                    f"building Stan program {program.name!r}")
        return model, compiled

    def sample(self, program: StanProgram, data: dict[str, Any], config: SamplerConfig) -> Draws:
        """Build (or load from cache) and sample with PyStan."""
        t0 = time.perf_counter()
        model, compiled = self._build(program, data, config.seed)
        t1 = time.perf_counter()
        fit = _sample_pystan(
            model,
            num_chains=int(config.chains),
            num_samples=int(config.draws),
            num_warmup=int(config.warmup),
            num_thin=int(config.thin),
            delta=float(config.adapt_delta),
            max_depth=int(config.max_treedepth),
            **_pystan_inits(config),
        )
        t2 = time.perf_counter()
        variables = self._variables(fit)
        stats = {
            arviz_name: _stack_chains(np.asarray(fit[stan_name]).reshape(-1), fit.num_chains)
            for stan_name, arviz_name in SAMPLE_STATS.items()
            if stan_name in fit.sample_and_sampler_param_names
        }
        return Draws(variables, _cast_stats(stats), self.name, self.version, t1 - t0, t2 - t1,
                     compiled)

    @staticmethod
    def _variables(fit: Any) -> dict[str, np.ndarray]:
        """Every Stan output of a PyStan fit as ``(chain, draw, *shape)``."""
        n_total = np.asarray(fit["lp__"]).size
        return {
            name: _stack_chains(np.asarray(fit[name]).reshape(*dims, n_total), fit.num_chains)
            for name, dims in zip(fit.param_names, fit.dims, strict=True)
        }

    def generate(self, program: StanProgram, data: dict[str, Any], params: dict[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
        """Outputs at fixed ``params``: one draw of PyStan's ``fixed_param`` sampler."""
        model, _ = self._build(program, data, seed)
        init = _init_values(params)
        # PyStan's one-draw progress bar goes to stderr
        with contextlib.redirect_stderr(io.StringIO()), _discard_stored_fits():
            fit = _interruptible(
                lambda: model.fixed_param(num_chains=1, num_samples=1, init=[init]),
                "generating quantities")
        return {name: arr[0] for name, arr in self._variables(fit).items()}

    def log_density(self, program: StanProgram, data: dict[str, Any]) -> LogDensity:
        """The log density of ``program`` given ``data`` (see :class:`LogDensity`)."""
        from .workflow.sbc import stan_parameter_names  # stanc --info; imports this module

        model, _ = self._build(program, data, seed=1)
        return LogDensity.from_pystan(model, set(stan_parameter_names(program, transformed=False)))


class CmdStanEngine:
    """cmdstanpy adapter, used when a CmdStan installation is present.

    Written against cmdstanpy's documented API (``CmdStanModel``, ``CmdStanMCMC.stan_variables``,
    ``method_variables``); executables are cached under ``~/.cache/pluralstan/cmdstan/<sha>``.
    """

    name = "cmdstanpy"

    @property
    def version(self) -> str:
        """``cmdstanpy/CmdStan`` versions."""
        import cmdstanpy

        return f"cmdstanpy {cmdstanpy.__version__} / cmdstan {cmdstanpy.cmdstan_version()}"

    def _stan_file(self, program: StanProgram) -> Path:
        folder = cache_root() / "cmdstan" / program.sha[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{program.name}.stan"
        if not path.exists():
            tmp = path.with_suffix(".stan.tmp")
            tmp.write_text(program.code)
            tmp.replace(path)
        return path

    def is_cached(self, program: StanProgram) -> bool:
        """Whether the executable for ``program`` exists."""
        return self._stan_file(program).with_suffix("").exists()

    def sample(self, program: StanProgram, data: dict[str, Any], config: SamplerConfig) -> Draws:
        """Compile (once) and sample with CmdStan."""
        import cmdstanpy

        t0 = time.perf_counter()
        with build_lock(program, self.name):
            compiled = not self.is_cached(program)
            model = cmdstanpy.CmdStanModel(
                stan_file=str(self._stan_file(program)), stanc_options={"O1": True}
            )
        t1 = time.perf_counter()
        try:
            fit = model.sample(
                data=data,
                chains=int(config.chains),
                iter_sampling=int(config.draws),
                iter_warmup=int(config.warmup),
                thin=int(config.thin),
                seed=int(config.seed),
                adapt_delta=float(config.adapt_delta),
                max_treedepth=int(config.max_treedepth),
                inits=None if config.inits is None else [_init_values(i) for i in config.inits],
                show_progress=False,
            )
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reaches CmdStan's processes too (this process's group)
            raise Interrupted("sampling interrupted (Ctrl-C)") from None
        t2 = time.perf_counter()
        variables = self._variables(fit, int(config.chains))
        methods = fit.method_variables()
        stats = {
            arviz_name: np.asarray(methods[stan_name]).T
            for stan_name, arviz_name in SAMPLE_STATS.items()
            if stan_name in methods
        }
        return Draws(variables, _cast_stats(stats), self.name, self.version, t1 - t0, t2 - t1,
                     compiled)

    @staticmethod
    def _variables(fit: Any, chains: int) -> dict[str, np.ndarray]:
        """Every Stan output of a CmdStan fit as ``(chain, draw, *shape)``."""
        return {
            name: np.asarray(fit.stan_variable(name)).reshape(
                chains, -1, *np.shape(fit.stan_variable(name))[1:]
            )
            for name in fit.metadata.stan_vars
        }

    def generate(self, program: StanProgram, data: dict[str, Any], params: dict[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
        """Outputs at fixed ``params``: one draw of CmdStan's ``fixed_param`` sampler."""
        import cmdstanpy

        with build_lock(program, self.name):
            model = cmdstanpy.CmdStanModel(
                stan_file=str(self._stan_file(program)), stanc_options={"O1": True}
            )
        inits = _init_values(params)
        fit = model.sample(data=data, chains=1, iter_sampling=1, fixed_param=True,
                           inits=inits, seed=int(seed), show_progress=False)
        return {name: arr[0] for name, arr in self._variables(fit, 1).items()}

    def log_density(self, program: StanProgram, data: dict[str, Any]) -> LogDensity:
        """Not offered: CmdStan evaluates a log density by running its executable per call."""
        raise PluralstanError(
            f"the log density of {program.name!r} (mode search) needs backend='pystan': "
            "cmdstanpy evaluates log densities one executable run at a time, too slow for an "
            "optimiser"
        )


# ---------------------------------------------------------------------- log density (modes)
# The engine side of pluralstan.modes: a program's log density and gradient over its
# unconstrained parameters, and the per-chain inits that SamplerConfig.inits carries.
class LogDensity:
    """A Stan program's log density over the unconstrained space, for one data set.

    Made by :meth:`PyStanEngine.log_density`, which compiles (or loads) the program once; every
    call here goes straight to the compiled module (httpstan's ``stan_services`` functions, the
    ones its HTTP ``log_prob`` handlers call), with no server round trip and no rebuild.

    Attributes
    ----------
    dims
        Number of unconstrained parameters.
    param_names, param_shapes
        The ``parameters`` block's variables (zero-size ones left out) and their shapes.
    """

    def __init__(self, module: Any, data: dict[str, Any], layout: list[tuple[str, tuple]],
                 parameters: set[str]) -> None:
        self._module = module
        self._data = data
        self._layout = [(name, tuple(shape)) for name, shape in layout]
        block = [(n, s) for n, s in self._layout if n in parameters and int(np.prod(s))]
        self.param_names = tuple(n for n, _ in block)
        self.param_shapes = tuple(s for _, s in block)
        self.dims = self._unconstrained_size(sum(int(np.prod(s)) for _, s in block))

    @classmethod
    def from_pystan(cls, model: Any, parameters: set[str]) -> LogDensity:
        """Wrap a built ``stan.Model`` (its data already in httpstan's JSON form);
        ``parameters`` names the variables of the program's ``parameters`` block."""
        import httpstan.models

        module = httpstan.models.import_services_extension_module(model.model_name)
        data = {k: np.asarray(v) for k, v in model.data.items()}
        return cls(module, data, list(zip(model.param_names, model.dims, strict=True)),
                   parameters)

    def _unconstrained_size(self, upper: int) -> int:
        """``num_params_r`` of the model, which httpstan does not expose.

        No Stan transform has more unconstrained than constrained values, so the size is found
        by trying ``upper`` (the constrained size), ``upper - 1``, ... against the module's own
        size check.
        """
        for size in range(upper, -1, -1):
            try:
                self._module.write_array(self._data, [0.0] * size, False, False)
            except RuntimeError as err:
                if "number of parameters does not match" not in str(err):
                    raise
                continue
            return size
        raise PluralstanError("could not determine the number of unconstrained parameters")

    def log_prob(self, x: np.ndarray, jacobian: bool = True) -> float:
        """Log density at unconstrained ``x`` (with the Jacobian of the transforms by default,
        the density NUTS explores and ``lp__`` reports)."""
        return float(self._module.log_prob(self._data, np.asarray(x, float).tolist(), jacobian))

    def grad(self, x: np.ndarray, jacobian: bool = True) -> np.ndarray:
        """Gradient of :meth:`log_prob` at unconstrained ``x``."""
        return np.asarray(
            self._module.log_prob_grad(self._data, np.asarray(x, float).tolist(), jacobian)
        )

    def constrain(self, x: np.ndarray, transformed: bool = False) -> dict[str, np.ndarray]:
        """Constrained values at unconstrained ``x``: the ``parameters`` block, and with
        ``transformed`` the transformed parameters too (zero-size variables left out)."""
        flat = np.asarray(self._module.write_array(
            self._data, np.asarray(x, float).tolist(), bool(transformed), False))
        out: dict[str, np.ndarray] = {}
        start = 0
        for name, shape in self._layout:
            size = int(np.prod(shape))
            if start + size > flat.size:
                break
            if size:
                out[name] = flat[start:start + size].reshape(shape, order="F")  # column-major
            start += size
        return out

    def unconstrain(self, params: dict[str, Any]) -> np.ndarray:
        """Unconstrained vector of constrained ``parameters``-block values."""
        values = {k: np.asarray(v, dtype=float) for k, v in params.items()}
        return np.asarray(self._module.transform_inits(self._data, values))


def _pystan_inits(config: SamplerConfig) -> dict[str, Any]:
    """PyStan's ``init`` keyword for ``config.inits`` (nothing when Stan draws its own)."""
    if config.inits is None:
        return {}
    return {"init": [_init_values(values) for values in config.inits]}


def _init_values(params: dict[str, Any]) -> dict[str, Any]:
    """Parameter values as nested lists for Stan's ``init``; zero-size ones are left out (their
    shape does not survive the conversion, and they have nothing to initialise)."""
    return {name: np.asarray(value).tolist() for name, value in params.items()
            if np.asarray(value).size}


def _cast_stats(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give sampler statistics the dtypes ArviZ expects (bool divergences, int depths)."""
    out = dict(stats)
    if "diverging" in out:
        out["diverging"] = out["diverging"].astype(bool)
    for key in ("tree_depth", "n_steps"):
        if key in out:
            out[key] = out[key].astype(np.int64)
    return out


@cache
def cmdstan_available() -> bool:
    """Whether cmdstanpy finds a CmdStan installation (``CMDSTAN`` or its default folder)."""
    try:
        import cmdstanpy

        return bool(cmdstanpy.cmdstan_path()) and shutil.which("make") is not None
    except Exception:  # cmdstanpy raises ValueError / RuntimeError when none is installed
        return False


def get_engine(backend: str | None = "auto") -> Engine:
    """Return the engine for ``backend``.

    Parameters
    ----------
    backend
        ``"auto"`` (cmdstanpy when CmdStan is installed, PyStan otherwise), ``"pystan"`` or
        ``"cmdstanpy"``. ``None`` or ``"auto"`` defer to ``$PLURALSTAN_BACKEND`` when set.
    """
    choice = (backend or "auto").lower()
    if choice == "auto":
        choice = os.environ.get(BACKEND_ENV, "auto").lower() or "auto"
    if choice == "auto":
        choice = "cmdstanpy" if cmdstan_available() else "pystan"
    if choice == "pystan":
        return PyStanEngine()
    if choice == "cmdstanpy":
        if not cmdstan_available():
            raise PluralstanError(
                "backend='cmdstanpy' needs a CmdStan installation, and none was found "
                "(set CMDSTAN or run `python -m cmdstanpy.install_cmdstan` on a networked "
                "machine); use backend='pystan', which needs nothing beyond PyPI"
            )
        return CmdStanEngine()
    source = f"${BACKEND_ENV}" if (backend or "auto").lower() == "auto" else "the backend argument"
    raise PluralstanError(
        f"unknown backend {choice!r} (from {source}); accepted: 'auto', 'pystan', 'cmdstanpy'"
    )

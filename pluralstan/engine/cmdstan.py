"""The cmdstanpy engine, used when a CmdStan installation is found.

What it does beyond calling cmdstanpy, and why:

* **Full precision.** CmdStan writes draws to CSV at 6 significant figures unless told
  otherwise; the adapter asks for :data:`SIG_FIGS` (the most CmdStan accepts), so draws match
  what PyStan returns from memory.
* **Zero-size outputs.** CmdStan's CSV has no column for an output of size zero (``gamma`` when
  no presentation order is known, ``membership`` with ``save_membership = 0``); the adapter
  adds each as an empty array of the shape its declaration gives for this data, as PyStan
  reports it (:func:`zero_size_shapes`).
* **No files left behind.** Each run writes its CSV files to a temporary folder that is removed
  once the draws are read.
* **Quiet, with one progress line.** cmdstanpy logs every chain's start and end at INFO level;
  the adapter raises its logger to WARNING while it runs, unless ``verbose``. cmdstanpy's own
  progress display is one bar per chain; the adapter streams CmdStan's console instead and
  turns its iteration lines into one ``Sampling: NN% (done/total)`` line on stderr, PyStan's
  words, so the same progress shows (and ``pluralstan audit`` draws the same bar) under
  either engine (:class:`SamplingLine`). The rest of CmdStan's console is dropped; cmdstanpy
  keeps it in its console files and quotes it when a chain fails. ``verbose`` shows all of it.
* **Relocatable executables.** CmdStan links the TBB library by the absolute path of its own
  folder, so a cached executable breaks when that CmdStan is moved, removed or replaced by
  another version, or when the cache is shared. On Linux the adapter links TBB by
  ``$ORIGIN`` (the executable's own folder) and copies ``libtbb.so.2`` beside the executable,
  so the cache folder is self-contained: it can be moved or shared as a whole. (The
  alternative, ``LD_LIBRARY_PATH`` set at run time, would tie each run to whichever CmdStan is
  configured then, and cmdstanpy offers no per-run environment.) Elsewhere CmdStan's own
  linking is kept (on Windows cmdstanpy puts TBB on ``PATH`` itself).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Interrupted
from ..files import write_atomic
from .base import (
    SAMPLE_STATS,
    STANC_OPTIMISATION,
    Draws,
    LogDensity,
    SamplerConfig,
    StanProgram,
    build_lock,
    cache_root,
    cast_stats,
    engine_output_shown,
    init_values,
)

#: Significant figures CmdStan writes draws with (its maximum; the default is 6).
SIG_FIGS = 18

#: The TBB library CmdStan links on Linux, copied beside each cached executable.
TBB_LIBRARY = "libtbb.so.2"

#: Stan blocks whose variables CmdStan writes per draw, in output order.
OUTPUT_BLOCKS = ("parameters", "transformed parameters", "generated quantities")

_LOG_LOCK = threading.Lock()
_LOG_STATE: dict[str, Any] = {"depth": 0, "level": logging.NOTSET}


class SamplingLine(io.TextIOBase):
    """Where cmdstanpy streams CmdStan's console: iteration lines become one progress line.

    Every chain's ``Chain [2] Iteration:  300 / 2000 [ 15%]  (Warmup)`` line (without the chain
    prefix when a process runs one chain) updates that chain's count; the sum over chains is
    written to ``out`` as ``Sampling: NN% (done/total)``, rewritten in place, each time the
    whole percentage changes. Chains print from cmdstanpy's threads, hence the lock.
    """

    PATTERN = re.compile(r"(?:Chain \[(\d+)\] )?Iteration:\s*(\d+)\s*/\s*(\d+)")

    def __init__(self, chains: int, out: Any) -> None:
        super().__init__()
        self.chains, self.out = chains, out
        self.done: dict[str, int] = {}
        self.per_chain = 0
        self.shown = -1
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            for chain, iteration, total in self.PATTERN.findall(text):
                self.done[chain or "1"] = int(iteration)
                self.per_chain = int(total)
            if self.per_chain:
                done, total = sum(self.done.values()), self.chains * self.per_chain
                percent = 100 * done // total
                if percent != self.shown:
                    self.shown = percent
                    self.out.write(f"\rSampling: {percent:3d}% ({done}/{total})")
                    self.out.flush()
        return len(text)

    def finish(self, done: bool = True) -> None:
        """End the line (once anything was shown), with ``, done.`` when sampling finished."""
        if self.shown >= 0:
            self.out.write(", done.\n" if done else "\n")
            self.out.flush()


def cmdstan_version_string(path: str | os.PathLike[str] | None = None) -> str | None:
    """The full version of a CmdStan installation (``"2.35.0"``), read from its makefile.

    Parameters
    ----------
    path
        The CmdStan folder; ``None``: the one cmdstanpy finds (``CMDSTAN`` or its default
        folder).

    Returns
    -------
    str or None
        The version, or ``None`` when no installation is found or its makefile names none.
    """
    try:
        if path is None:
            import cmdstanpy

            path = cmdstanpy.cmdstan_path()
        text = (Path(path) / "makefile").read_text()
    except (ValueError, OSError):
        return None
    found = re.search(r"^CMDSTAN_VERSION\s*:?=\s*(\S+)", text, flags=re.MULTILINE)
    return found.group(1) if found else None


def cmdstan_available() -> bool:
    """Whether cmdstanpy finds a CmdStan installation (``CMDSTAN`` or its default folder).

    Asked anew on every call (it only looks at a few paths), so a CmdStan installed or pointed
    to after the first call is seen.
    """
    try:
        import cmdstanpy

        return bool(cmdstanpy.cmdstan_path()) and shutil.which("make") is not None
    except Exception:  # cmdstanpy raises ValueError / RuntimeError when none is installed
        return False


@contextlib.contextmanager
def quiet_cmdstanpy(verbose: bool = False) -> Iterator[None]:
    """Hide cmdstanpy's INFO lines (chain start / end, compile notices) while inside.

    Warnings and errors still show. Nested and concurrent uses share one saved level: the
    logger's own level is restored when the last of them leaves.

    Parameters
    ----------
    verbose
        Leave cmdstanpy's logging as it is; so does an enclosing
        :func:`~pluralstan.engine.base.engine_output`.
    """
    if verbose or engine_output_shown():
        yield
        return
    from cmdstanpy.utils import get_logger

    logger = get_logger()  # its first call sets the logger up (level DEBUG, handler at INFO)
    with _LOG_LOCK:
        if _LOG_STATE["depth"] == 0:
            _LOG_STATE["level"] = logger.level
            logger.setLevel(max(logger.level, logging.WARNING))
        _LOG_STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOG_LOCK:
            _LOG_STATE["depth"] -= 1
            if _LOG_STATE["depth"] == 0:
                logger.setLevel(_LOG_STATE["level"])


# --- shapes of zero-size outputs ------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(%/%|==|!=|<=|>=|&&|\|\||[-+*/%()?:<>!]))")


def _tokens(expr: str) -> list[str]:
    """Tokens of a Stan size expression; ``ValueError`` on anything else."""
    out, pos, expr = [], 0, expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot read {expr[pos:]!r}")
        out.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
    return out


class _SizeExpression:
    """Evaluator of the integer expressions Stan declarations use as sizes: integers, data
    names, ``+ - * / %/% %``, comparisons, ``! && ||``, parentheses and ``c ? a : b``.
    Anything else (a function call, an indexed or transformed-data name) raises
    ``ValueError``."""

    _BINARY = (("||",), ("&&",), ("==", "!="), ("<", "<=", ">", ">="), ("+", "-"),
               ("*", "/", "%/%", "%"))

    def __init__(self, expr: str, data: Mapping[str, Any]) -> None:
        self._tokens = _tokens(expr)
        self._pos = 0
        self._data = data

    def value(self) -> int:
        result = self._ternary()
        if self._pos != len(self._tokens):
            raise ValueError("trailing tokens")
        return result

    def _peek(self) -> str | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        if token is None or (expected is not None and token != expected):
            raise ValueError(f"expected {expected!r}, found {token!r}")
        self._pos += 1
        return token

    def _ternary(self) -> int:
        cond = self._binary(0)
        if self._peek() != "?":
            return cond
        self._take("?")
        yes = self._ternary()
        self._take(":")
        no = self._ternary()
        return yes if cond else no

    def _binary(self, level: int) -> int:
        if level == len(self._BINARY):
            return self._unary()
        left = self._binary(level + 1)
        while self._peek() in self._BINARY[level]:
            op = self._take()
            right = self._binary(level + 1)
            left = self._apply(op, left, right)
        return left

    @staticmethod
    def _apply(op: str, a: int, b: int) -> int:
        if op in ("/", "%/%"):
            return int(a / b)  # Stan's integer division truncates toward zero
        if op == "%":
            return int(np.fmod(a, b))
        table = {"||": lambda: bool(a or b), "&&": lambda: bool(a and b),
                 "==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
                 "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b,
                 "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b}
        return int(table[op]())

    def _unary(self) -> int:
        token = self._take()
        if token == "-":
            return -self._unary()
        if token == "!":
            return int(not self._unary())
        if token == "(":
            value = self._ternary()
            self._take(")")
            return value
        if token.isdigit():
            return int(token)
        if re.fullmatch(r"[A-Za-z_]\w*", token) and self._peek() != "(" and token in self._data:
            value = np.asarray(self._data[token])
            if value.ndim == 0 and float(value) == int(value):
                return int(value)
        raise ValueError(f"{token!r} is not a data integer")


def _split_top(text: str) -> list[str]:
    """Split ``text`` at the commas outside brackets and parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _declared_sizes(code: str, name: str) -> list[str] | None:
    """The size expressions of ``name``'s declaration (array sizes first, then vector or
    matrix sizes, Stan's output order), or ``None`` when the declaration is not found."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", code, flags=re.DOTALL)
    # outputs are declared from the parameters block on (a function's locals come before it
    # and may reuse the name; the blocks after it cannot)
    start = re.search(r"\bparameters\s*\{", code)
    code = code[start.start():] if start else code
    match = re.search(rf"(?:^|[;{{}}])\s*([^;{{}}=]*?)\b{re.escape(name)}\s*[;=]", code)
    if not match:
        return None
    declaration = re.sub(r"<[^<>]*(?:<[^<>]*>[^<>]*)*>", "", match.group(1))  # constraints
    sizes = []
    for group in re.findall(r"\[([^\[\]]*(?:\[[^\[\]]*\][^\[\]]*)*)\]", declaration):
        sizes.extend(part.strip() for part in _split_top(group))
    return sizes


def zero_size_shapes(code: str, data: Mapping[str, Any], ndims: Mapping[str, int]
                     ) -> dict[str, tuple[int, ...]]:
    """The shapes of outputs that CmdStan left out of its CSV (outputs of size zero).

    Each size of the declaration is evaluated with the Stan data, so ``matrix[flag ? I : 0, K]``
    with ``flag = 0`` and ``K = 3`` is ``(0, 3)``, as PyStan reports it. A size this cannot
    evaluate (a function call, a transformed-data name) is taken as 0; so is every size when
    the evaluated ones do not give a zero-size shape.

    Parameters
    ----------
    code
        The Stan program.
    data
        The Stan data it ran with.
    ndims
        The number of dimensions of each missing output (from ``stanc --info``).
    """
    shapes = {}
    for name, ndim in ndims.items():
        sizes = _declared_sizes(code, name)
        shape = [0] * ndim
        if sizes is not None and len(sizes) == ndim:
            for i, expr in enumerate(sizes):
                with contextlib.suppress(ValueError, ZeroDivisionError, TypeError):
                    shape[i] = max(_SizeExpression(expr, data).value(), 0)
        if int(np.prod(shape)) != 0:
            shape = [0] * ndim
        shapes[name] = tuple(shape)
    return shapes


# --- the engine -------------------------------------------------------------------------------


class CmdStanEngine:
    """cmdstanpy adapter, used when a CmdStan installation is present.

    Executables are cached under ``<cache>/cmdstan/<sha>`` (see
    :func:`~pluralstan.engine.base.cache_root`), linked so that the folder can move (see the
    module docstring).

    Parameters
    ----------
    verbose
        Show cmdstanpy's INFO log lines (hidden by default).
    """

    name = "cmdstanpy"

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = bool(verbose)

    @property
    def version(self) -> str:
        """``cmdstanpy <version> / CmdStan <version>``, e.g. ``cmdstanpy 1.3.2 / CmdStan
        2.35.0``."""
        import cmdstanpy

        return f"cmdstanpy {cmdstanpy.__version__} / CmdStan {cmdstan_version_string()}"

    def _stan_file(self, program: StanProgram) -> Path:
        folder = cache_root() / "cmdstan" / program.sha[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{program.name}.stan"
        if not path.exists():
            write_atomic(path, program.code)
        return path

    @staticmethod
    def _relocatable() -> bool:
        """Whether executables are linked to a TBB beside them (Linux)."""
        return sys.platform.startswith("linux")

    def is_cached(self, program: StanProgram) -> bool:
        """Whether the executable for ``program`` exists (on Linux, with its TBB beside it)."""
        exe = self._stan_file(program).with_suffix("")
        return exe.exists() and (not self._relocatable() or (exe.parent / TBB_LIBRARY).exists())

    def _model(self, program: StanProgram) -> tuple[Any, bool]:
        """The compiled model (built under the program's lock when not cached) and whether
        this call compiled it."""
        import cmdstanpy

        stan_file = self._stan_file(program)
        exe = stan_file.with_suffix("")
        with build_lock(program, self.name), quiet_cmdstanpy(self.verbose):
            compiled = not self.is_cached(program)
            cpp_options: dict[str, Any] = {}
            tbb = Path(cmdstanpy.cmdstan_path()) / "stan" / "lib" / "stan_math" / "lib" / "tbb"
            relocate = self._relocatable() and (tbb / TBB_LIBRARY).exists()
            if compiled:
                exe.unlink(missing_ok=True)  # built before the TBB copy: build again
                if relocate:
                    # make turns $$ into $; the quotes keep the shell from expanding $ORIGIN
                    cpp_options["LDFLAGS_TBB"] = f"-Wl,-L,{tbb} -Wl,-rpath,'$$ORIGIN'"
                    shutil.copy2(tbb / TBB_LIBRARY, exe.parent / TBB_LIBRARY)
            model = cmdstanpy.CmdStanModel(stan_file=str(stan_file),
                                           stanc_options={STANC_OPTIMISATION: True},
                                           cpp_options=cpp_options or None)
        return model, compiled

    def sample(self, program: StanProgram, data: dict[str, Any], config: SamplerConfig) -> Draws:
        """Compile (once) and sample with CmdStan."""
        t0 = time.perf_counter()
        model, compiled = self._model(program)
        t1 = time.perf_counter()
        chains = int(config.chains)
        shown = self.verbose or engine_output_shown()
        console = SamplingLine(chains, sys.stderr)
        with self._run() as output_dir, contextlib.redirect_stdout(
                sys.stdout if shown else console):
            try:
                fit = model.sample(
                    data=data,
                    chains=chains,
                    iter_sampling=int(config.draws),
                    iter_warmup=int(config.warmup),
                    thin=int(config.thin),
                    seed=int(config.seed),
                    adapt_delta=float(config.adapt_delta),
                    max_treedepth=int(config.max_treedepth),
                    inits=None if config.inits is None else [init_values(i) for i in config.inits],
                    step_size=None if config.stepsize is None else float(config.stepsize),
                    sig_figs=SIG_FIGS,
                    output_dir=output_dir,
                    show_progress=False,
                    show_console=True,  # all of it when asked, else the progress line
                )
            except KeyboardInterrupt:
                console.finish(done=False)
                # a terminal's Ctrl-C reaches CmdStan's processes too (this process's group)
                raise Interrupted("sampling interrupted (Ctrl-C)") from None
            except BaseException:
                console.finish(done=False)
                raise
            console.finish()
            t2 = time.perf_counter()
            variables = self._variables(model, program, data, fit, chains)
            methods = fit.method_variables()
            stats = {
                arviz_name: np.asarray(methods[stan_name]).T
                for stan_name, arviz_name in SAMPLE_STATS.items()
                if stan_name in methods
            }
        return Draws(variables, cast_stats(stats), self.name, self.version, t1 - t0, t2 - t1,
                     compiled)

    @contextlib.contextmanager
    def _run(self) -> Iterator[str]:
        """A temporary folder for one run's CSV files (removed afterwards), with cmdstanpy's
        INFO lines hidden unless ``verbose``."""
        with tempfile.TemporaryDirectory(prefix="pluralstan-cmdstan-") as folder, \
                quiet_cmdstanpy(self.verbose):
            yield folder

    @staticmethod
    def _variables(model: Any, program: StanProgram, data: Mapping[str, Any], fit: Any,
                   chains: int) -> dict[str, np.ndarray]:
        """Every Stan output of a CmdStan fit as ``(chain, draw, *shape)``, in declaration
        order, zero-size ones included (CmdStan's CSV has no column for them)."""
        info = model.src_info()
        ndims = {name: int(var.get("dimensions", 0))
                 for block in OUTPUT_BLOCKS for name, var in info.get(block, {}).items()}
        present = set(fit.metadata.stan_vars)
        missing = zero_size_shapes(program.code, data,
                                   {n: d for n, d in ndims.items() if n not in present})
        n_draws = np.shape(fit.method_variables()["lp__"])[0]
        out: dict[str, np.ndarray] = {}
        for name in [*ndims, *(n for n in fit.metadata.stan_vars if n not in ndims)]:
            if name in present:
                arr = np.asarray(fit.stan_variable(name))
                out[name] = arr.reshape(chains, -1, *arr.shape[1:])
            else:
                out[name] = np.empty((chains, n_draws, *missing[name]))
        return out

    def generate(self, program: StanProgram, data: dict[str, Any], params: dict[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
        """Outputs at fixed ``params``: one draw of CmdStan's ``fixed_param`` sampler."""
        model, _ = self._model(program)
        with self._run() as output_dir:
            fit = model.sample(data=data, chains=1, iter_sampling=1, fixed_param=True,
                               inits=init_values(params), seed=int(seed), sig_figs=SIG_FIGS,
                               output_dir=output_dir, show_progress=False)
            variables = self._variables(model, program, data, fit, 1)
        return {name: arr[0] for name, arr in variables.items()}

    def log_density(self, program: StanProgram, data: dict[str, Any]) -> LogDensity:
        """The log density of ``program`` (for the mode search), evaluated by PyStan.

        CmdStan evaluates a log density by running its executable once per call, too slow for
        an optimiser; PyStan, which pluralstan always installs, evaluates it in this process.
        The program is compiled for PyStan once (cached like any PyStan build).
        """
        from .pystan import PyStanEngine

        return PyStanEngine().log_density(program, data)

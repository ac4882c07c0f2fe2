"""The engine's vocabulary: programs, sampler settings, draws, the Engine protocol, the log
density over the unconstrained space, build locks and the cache folder. Nothing here imports a
Stan library."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import filelock
import numpy as np

from ..errors import PluralstanError

#: Environment variable that forces a back end ("pystan" or "cmdstanpy").
BACKEND_ENV = "PLURALSTAN_BACKEND"

#: stanc's optimisation level, the same on both engines. At ``O1`` stanc keeps a matrix of
#: parameters as one autodiff node with contiguous values and adjoints where every function it
#: reaches allows it; the annotator-type programs are written so that all of theirs qualify
#: (``stan/functions/design.stanfunctions``), which vectorises their log normaliser.
STANC_OPTIMISATION = "O1"

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


#: Whether the engines show their own log lines (set by :func:`engine_output`).
_SHOW_OUTPUT: ContextVar[bool] = ContextVar("pluralstan_engine_output", default=False)


@contextlib.contextmanager
def engine_output(show: bool = True) -> Iterator[None]:
    """Show (``show``) or hide the engines' own log lines inside the block.

    The command line's ``--verbose`` enters it, so an engine built deep inside a fit (e.g.
    :class:`~pluralstan.engine.CmdStanEngine`'s INFO lines) shows its output without every
    caller passing a flag down. The setting belongs to the current thread or task.
    """
    token = _SHOW_OUTPUT.set(bool(show))
    try:
        yield
    finally:
        _SHOW_OUTPUT.reset(token)


def engine_output_shown() -> bool:
    """Whether the block being run asked for the engines' own output (:func:`engine_output`)."""
    return _SHOW_OUTPUT.get()


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
    #: Step size NUTS starts its adaptation from (``None``: Stan's default, 1), e.g. an earlier
    #: fit's adapted one (:func:`pluralstan.models.annotator.warm_start`).
    stepsize: float | None = None

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
        if self.stepsize is not None and not (isinstance(self.stepsize, float | int | np.number)
                                              and 0.0 < float(self.stepsize) < np.inf):
            raise PluralstanError(f"stepsize must be a positive number, got {self.stepsize!r}")
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

        from .httpstan_fixes import split_data_once

        module = httpstan.models.import_services_extension_module(model.model_name)
        data = {k: np.asarray(v) for k, v in model.data.items()}
        split_data_once(data)
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


def cast_stats(stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Give sampler statistics the dtypes ArviZ expects (bool divergences, int depths)."""
    out = dict(stats)
    if "diverging" in out:
        out["diverging"] = out["diverging"].astype(bool)
    for key in ("tree_depth", "n_steps"):
        if key in out:
            out[key] = out[key].astype(np.int64)
    return out


def init_values(params: dict[str, Any]) -> dict[str, Any]:
    """Parameter values as nested lists for Stan's ``init``; zero-size ones are left out (their
    shape does not survive the conversion, and they have nothing to initialise)."""
    return {name: np.asarray(value).tolist() for name, value in params.items()
            if np.asarray(value).size}

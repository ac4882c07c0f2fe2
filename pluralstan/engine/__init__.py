"""The engine seam: one small interface, two Stan back ends.

pluralstan talks to Stan through :class:`Engine`. Two adapters implement it:

* :class:`PyStanEngine` - PyStan 3 / httpstan, installed from PyPI alone (the wheel carries stanc,
  the Stan headers, Sundials and TBB and compiles with the system C++ compiler). The default.
* :class:`CmdStanEngine` - cmdstanpy, used when a CmdStan installation is found (``$CMDSTAN``
  or cmdstanpy's default folder ``~/.cmdstan``, e.g. after ``python -m
  cmdstanpy.install_cmdstan``). Same outputs as PyStan: draws read at full precision, zero-size
  outputs included, CSV files in a temporary folder removed after each run, cmdstanpy's INFO
  lines hidden, executables linked to a TBB copy beside them (Linux), so the cache can move.

Both return a :class:`Draws` object (arrays shaped ``(chain, draw, *shape)`` for every Stan
variable plus sampler statistics under ArviZ names), so every InferenceData is built by one
function whichever engine ran. Choose with ``backend="auto" | "pystan" | "cmdstanpy"`` or the
``PLURALSTAN_BACKEND`` environment variable.

Compiled models are cached per machine and program text (PyStan: httpstan's cache, built with
:func:`pystan_compile_args`; cmdstanpy: executables under ``~/.cache/pluralstan/cmdstan``).
Builds take a per-program file lock so that several processes fitting the same model at once
compile it once and never see a half-written cache entry.

The package: :mod:`~pluralstan.engine.base` (the protocol and the engine-neutral types),
:mod:`~pluralstan.engine.pystan`, :mod:`~pluralstan.engine.cmdstan`, and
:mod:`~pluralstan.engine.httpstan_fixes` (every workaround of httpstan behaviour, each saying
which). Nothing outside this package imports a Stan library.
"""

from __future__ import annotations

import os

from ..errors import PluralstanError
from .base import (
    BACKEND_ENV,
    SAMPLE_STATS,
    Draws,
    Engine,
    LogDensity,
    SamplerConfig,
    StanProgram,
    build_lock,
    cache_root,
    engine_output,
)
from .cmdstan import CmdStanEngine, cmdstan_available
from .httpstan_fixes import discard_stored_fits, install_worker_cleanup
from .pystan import (
    BUILD_RECORD,
    STANC_OPTIONS,
    PyStanEngine,
    program_info,
    pystan_compile_args,
)

__all__ = [
    "BACKEND_ENV",
    "BUILD_RECORD",
    "SAMPLE_STATS",
    "STANC_OPTIONS",
    "CmdStanEngine",
    "Draws",
    "Engine",
    "LogDensity",
    "PyStanEngine",
    "SamplerConfig",
    "StanProgram",
    "build_lock",
    "cache_root",
    "cmdstan_available",
    "discard_stored_fits",
    "engine_output",
    "get_engine",
    "install_worker_cleanup",
    "program_info",
    "pystan_compile_args",
]

def get_engine(backend: str | None = "auto") -> Engine:
    """Return the engine for ``backend``.

    Parameters
    ----------
    backend
        ``"auto"`` (cmdstanpy when CmdStan is installed, PyStan otherwise), ``"pystan"`` or
        ``"cmdstanpy"``. ``None`` or ``"auto"`` defer to ``$PLURALSTAN_BACKEND`` when set.
        Whether CmdStan is installed is asked anew on each call; the engine that ran is named
        in every fit's provenance (``engine``, ``engine_version``).

    Raises
    ------
    PluralstanError
        For an unknown name, or ``"cmdstanpy"`` without a CmdStan installation.
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

"""pluralstan: Bayesian identifiability audits for pluralistic preference models.

>>> import pluralstan as ps
>>> comps = ps.simulate.bt([1.0, -0.5, 0.0], n_pairs=50, seed=1)   # doctest: +SKIP
>>> idata = ps.fit("aggregate", comps, seed=1)                      # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.2.0"

from . import checks, diagnostics, ml, relabel, simulate
from .data import Comparisons, read_csv
from .engine import get_engine
from .errors import (
    DiagnosticWarning,
    IdentificationWarning,
    Interrupted,
    PluralstanError,
    ScaleWarning,
)
from .fit import fit, load, save
from .models import REGISTRY as models

__all__ = [
    "Comparisons",
    "DiagnosticWarning",
    "IdentificationWarning",
    "Interrupted",
    "PluralstanError",
    "ScaleWarning",
    "__version__",
    "checks",
    "diagnostics",
    "fit",
    "get_engine",
    "load",
    "ml",
    "models",
    "read_csv",
    "relabel",
    "save",
    "simulate",
]


def __getattr__(name: str):
    """``ps.workflow``: the deprecated name of :mod:`pluralstan.checks` (imported on first use,
    with a DeprecationWarning)."""
    if name == "workflow":
        import importlib

        return importlib.import_module(".workflow", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

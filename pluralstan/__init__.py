"""pluralstan: Bayesian identifiability audits for pluralistic preference models.

>>> import pluralstan as ps
>>> comps = ps.simulate.bt([1.0, -0.5, 0.0], n_pairs=50, seed=1)   # doctest: +SKIP
>>> idata = ps.fit("aggregate", comps, seed=1)                      # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import diagnostics, relabel, simulate, workflow  # noqa: E402
from .data import Comparisons, read_csv  # noqa: E402
from .engine import get_engine  # noqa: E402
from .errors import DiagnosticWarning, IdentificationWarning, PluralstanError  # noqa: E402
from .fit import fit, load, save  # noqa: E402
from .models import REGISTRY as models  # noqa: E402

__all__ = [
    "Comparisons",
    "DiagnosticWarning",
    "IdentificationWarning",
    "PluralstanError",
    "__version__",
    "diagnostics",
    "fit",
    "get_engine",
    "load",
    "models",
    "read_csv",
    "relabel",
    "save",
    "simulate",
    "workflow",
]

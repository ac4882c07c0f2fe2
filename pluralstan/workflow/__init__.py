"""Deprecated name of :mod:`pluralstan.checks` (renamed in 0.2.0 so that the package's checks
are not confused with the ``workflows/`` scripts).

``import pluralstan.workflow`` and ``from pluralstan.workflow.masking import ...`` keep working
with a :class:`DeprecationWarning`; the submodules are the same module objects as those of
:mod:`pluralstan.checks`.
"""

import importlib
import sys
import warnings

from ..checks import *  # noqa: F403
from ..checks import __all__  # noqa: F401

warnings.warn("pluralstan.workflow is renamed pluralstan.checks; the old name will be removed "
              "in 0.3.0", DeprecationWarning, stacklevel=2)

for _name in ("audit", "compare", "contraction", "masking", "ppc", "predict", "report",
              "sensitivity", "sbc"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"pluralstan.checks.{_name}")

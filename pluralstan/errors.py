"""The project's own exception and warning types.

Every problem pluralstan detects in user input is raised as :class:`PluralstanError` (a
``ValueError``) *before* any Stan code runs, with a message that names the column, value or row
at fault and says what would be accepted.
"""

from __future__ import annotations


class PluralstanError(ValueError):
    """Invalid input or an unusable result, detected by pluralstan itself."""


class IdentificationWarning(UserWarning):
    """The design cannot identify some parameter: its posterior will be its prior."""


class DiagnosticWarning(UserWarning):
    """A fit failed a sampler diagnostic (divergences, R-hat, ESS, E-BFMI, label switching)."""


class ScaleWarning(UserWarning):
    """An input is on a scale the model's priors or floating-point arithmetic handle badly."""


class Interrupted(KeyboardInterrupt):
    """A fit was interrupted (Ctrl-C): its sampler processes were stopped and nothing was saved.

    A :class:`KeyboardInterrupt`, so code that handles Ctrl-C already handles it, and
    ``except Exception`` does not swallow it.
    """

"""The fits a test reads must pass the package's own diagnostics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from pluralstan.errors import DiagnosticWarning

T = TypeVar("T")


def converged(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with :class:`DiagnosticWarning` raised as an error, so a fit that
    fails its diagnostics fails the test instead of being read."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticWarning)
        return fn(*args, **kwargs)

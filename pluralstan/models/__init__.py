"""Registered models: importing this package registers every program in ``stan/``."""

from . import aggregate, annotator, covariate, labeled, pal, unlabeled  # noqa: F401 (registration)
from .base import (
    REGISTRY,
    Encoded,
    ModelSpec,
    Registry,
    get_model,
    load_program,
    register,
    stan_dir,
)

__all__ = [
    "REGISTRY",
    "Encoded",
    "ModelSpec",
    "Registry",
    "get_model",
    "load_program",
    "register",
    "stan_dir",
]

"""Bayesian-workflow layer: the quantities that turn fits into the audit of the position paper."""

from .contraction import contraction
from .predict import PairTable, observed_frequencies, pair_table, preference_probability

__all__ = [
    "PairTable",
    "contraction",
    "observed_frequencies",
    "pair_table",
    "preference_probability",
]

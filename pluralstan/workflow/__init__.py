"""Bayesian-workflow layer: the quantities that turn fits into the audit of the position paper."""

from .contraction import contraction
from .masking import masking_ratio, point_estimate_theta, split_pairs, summarize_masking
from .predict import PairTable, observed_frequencies, pair_table, preference_probability

__all__ = [
    "PairTable",
    "contraction",
    "masking_ratio",
    "observed_frequencies",
    "pair_table",
    "point_estimate_theta",
    "preference_probability",
    "split_pairs",
    "summarize_masking",
]

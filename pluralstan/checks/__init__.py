"""Bayesian-workflow layer: the quantities that turn fits into the audit of the position paper."""

from .audit import AuditResult, aggregation_audit, audit_rewards, mediocrity_example
from .cells import (
    cell_frequencies,
    cell_groups,
    cell_intervals,
    cell_log_likelihood,
    cell_pit,
    pit_ecdf,
)
from .compare import annotator_log_likelihood, compare_K, compare_models, loo, pareto_k_table
from .components import (
    aligned_truth,
    flatten_components,
    latent_groups,
    nonidentified_pairs,
    pair_correlations,
    rhat_order,
    truth_components,
)
from .contraction import contraction
from .ecdf import ecdf_difference
from .intervals import central_interval
from .masking import masking_ratio, point_estimate_theta, split_pairs, summarize_masking
from .ppc import calibration_table, ppc_frequencies, replicated_frequencies
from .predict import PairTable, observed_frequencies, pair_table, preference_probability
from .report import DisclosureReport, disclosure_report
from .sensitivity import grid_fits, grid_shifts, pi_grid_sensitivity, power_scaling

__all__ = [
    "AuditResult",
    "DisclosureReport",
    "PairTable",
    "aggregation_audit",
    "aligned_truth",
    "annotator_log_likelihood",
    "audit_rewards",
    "calibration_table",
    "cell_frequencies",
    "cell_groups",
    "cell_intervals",
    "cell_log_likelihood",
    "cell_pit",
    "central_interval",
    "compare_K",
    "compare_models",
    "contraction",
    "disclosure_report",
    "ecdf_difference",
    "flatten_components",
    "grid_fits",
    "grid_shifts",
    "latent_groups",
    "loo",
    "masking_ratio",
    "mediocrity_example",
    "nonidentified_pairs",
    "observed_frequencies",
    "pair_correlations",
    "pair_table",
    "pareto_k_table",
    "pi_grid_sensitivity",
    "pit_ecdf",
    "point_estimate_theta",
    "power_scaling",
    "ppc_frequencies",
    "preference_probability",
    "replicated_frequencies",
    "rhat_order",
    "split_pairs",
    "summarize_masking",
    "truth_components",
]

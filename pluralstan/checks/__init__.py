"""Bayesian-workflow layer: the quantities that turn fits into the audit of the position paper."""

from .audit import AuditResult, aggregation_audit, audit_rewards, mediocrity_example
from .compare import annotator_log_likelihood, compare_K, compare_models, loo, pareto_k_table
from .contraction import contraction
from .masking import masking_ratio, point_estimate_theta, split_pairs, summarize_masking
from .ppc import calibration_table, plot_calibration, ppc_frequencies, replicated_frequencies
from .predict import PairTable, observed_frequencies, pair_table, preference_probability
from .report import DisclosureReport, disclosure_report
from .sensitivity import grid_fits, grid_shifts, pi_grid_sensitivity, power_scaling

__all__ = [
    "AuditResult",
    "DisclosureReport",
    "PairTable",
    "aggregation_audit",
    "annotator_log_likelihood",
    "audit_rewards",
    "calibration_table",
    "compare_K",
    "compare_models",
    "contraction",
    "disclosure_report",
    "grid_fits",
    "grid_shifts",
    "loo",
    "masking_ratio",
    "mediocrity_example",
    "observed_frequencies",
    "pair_table",
    "pareto_k_table",
    "pi_grid_sensitivity",
    "plot_calibration",
    "point_estimate_theta",
    "power_scaling",
    "ppc_frequencies",
    "preference_probability",
    "replicated_frequencies",
    "split_pairs",
    "summarize_masking",
]

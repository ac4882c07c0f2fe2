"""Aggregate Bradley-Terry: one preference vector for everybody (``stan/aggregate_bt.stan``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data import OUTCOMES, Comparisons
from .base import (
    Encoded,
    ModelSpec,
    bt_prior_data,
    cell_outputs,
    design_data,
    design_from_data,
    merge_priors,
    no_components,
    register,
    resolve_ties_order,
    whitening_data,
)

DEFAULT_PRIORS: dict[str, Any] = {
    "theta_mean": 0.0,  # scalar or one value per attribute
    "theta_sd": 2.5,  # weakly informative on the logit scale
    "order_sd": 1.0,  # position effect gamma
    "log_nu_mean": -1.0,  # Davidson tie parameter, log scale
    "log_nu_sd": 1.5,
}


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    ties: bool | None = None,
    order: bool | None = None,
    compress: bool = True,
    whiten: bool | None = None,
    log_lik: str | None = "comparison",
    replicate: bool = True,
) -> Encoded:
    """Encode a comparison table for the aggregate model.

    Parameters
    ----------
    comps
        The judgements; group and annotator ids are ignored (pooled).
    K
        ``None`` (or 1): the aggregate model has one population; any other ``K`` is refused.
    priors
        Overrides of :data:`DEFAULT_PRIORS`.
    ties
        Model ties with Davidson's parameter; default: when the data contain ties.
    order
        Estimate a position effect; default: when the table records presentation order.
    compress
        Collapse identical judgements to counts (default). ``False`` keeps one cell per
        judgement (the per-row form, same posterior; for checks and benchmarks).
    whiten
        Sample theta in the design's whitened basis (the QR reparameterisation,
        :func:`~pluralstan.models.base.whitening_data`): ``None`` (default) when the design
        allows it, ``True`` or ``False`` to force the choice. The posterior is the same.
    log_lik
        Unit of the output log likelihood (:data:`~pluralstan.models.base.LOG_LIK_UNITS`):
        ``"comparison"`` (default; PSIS-LOO by judgement), ``"annotator"`` (one sum per
        annotator: leave-one-annotator-out LOO and power-scaling, with a fraction of the
        output when most cells hold one judgement) or ``None``.
    replicate
        Output replicated counts ``y_rep`` (posterior predictive checks, SBC); ``False`` skips
        them (cells x outcomes per draw).
    """
    no_components(K, "aggregate")
    p = merge_priors(DEFAULT_PRIORS, priors)
    has_ties, has_order = resolve_ties_order(comps, ties, order)
    cells = comps.cells()
    if not compress:
        cells = _one_cell_per_row(comps)
    n_out = 2 + int(has_ties)
    P = len(comps.attributes)
    outputs = cell_outputs(comps, cells, n_out, log_lik=log_lik, replicate=replicate,
                           eta=cell_eta, theta_ndim=1)
    data = {
        "C": cells.n_cells,
        "P": P,
        **design_data(cells.X),
        **whitening_data(cells.X, cells.counts[:, :n_out].sum(axis=1), whiten),
        "order": cells.order,
        "has_ties": int(has_ties),
        "has_order": int(has_order),
        "y": cells.counts[:, :n_out],
        **outputs.data,
        **bt_prior_data(p, P),
        "prior_only": 0,
    }
    outcome = list(OUTCOMES[:n_out])
    coords = {
        "attribute": list(comps.attributes),
        "cell": np.arange(cells.n_cells),
        "outcome": outcome,
        "comparison": np.arange(comps.n),
        **outputs.coords,
    }
    return Encoded(
        data=data,
        coords=coords,
        dims={"theta": ["attribute"], "y_rep": ["cell", "outcome"]},
        observed={"y": cells.counts[:, :n_out]},
        constant={"X": cells.X, "order": cells.order, "cell_of_row": cells.cell_of_row},
        predictive={"y_rep": "y"},
        log_lik=outputs.log_lik,
        log_lik_dims=outputs.log_lik_dims,
        drop=("log_p_cell", "log_lik", "theta_coord"),
        derive=outputs.derive,
        optional_scalars=("gamma", "log_nu"),
        extra_attrs={"ties": int(has_ties), "order_effect": int(has_order),
                     "compressed": int(compress), "whitened": data["whiten"]},
    )


def cell_eta(theta: np.ndarray, data: dict[str, Any]) -> np.ndarray:
    """The program's ``X * theta`` for ``(d, P)`` draws of ``theta``: ``(d, C)``."""
    return np.asarray(design_from_data(data) @ theta.T).T


def _one_cell_per_row(comps: Comparisons):
    """The uncompressed encoding: each judgement is its own cell."""
    from ..data import Cells

    outcome = comps.outcome_codes()
    counts = np.zeros((comps.n, 3), dtype=np.int64)
    counts[np.arange(comps.n), outcome] = 1
    return Cells(comps.design(), comps.order_sign(), counts, None, None,
                 np.arange(comps.n), outcome)


SPEC = register(
    ModelSpec(
        name="aggregate",
        program_file="aggregate_bt.stan",
        summary="Aggregate Bradley-Terry: one theta for the pooled population "
        "(binomial sufficient statistics; optional Davidson ties and position effect)",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
    )
)

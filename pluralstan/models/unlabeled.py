"""Unlabeled comparison-level K-mixture Bradley-Terry (``stan/unlabeled_bt.stan``).

Every judgement comes from an anonymous annotator of a latent subgroup, so the group is
marginalised judgement by judgement, ``P(a > b) = sum_k pi_k logistic((a - b)' theta_k)``, on the
pooled counts per cell. Any ``group`` or ``annotator`` column is ignored: this is the aggregate
data setting of the position paper.

The model is **not identified** from such data (Proposition 1): in the linear limit of the link
the likelihood depends on the components only through ``theta_bar = sum_k pi_k theta_k``; the
curvature of the logistic adds weak information that grows with the judgements per cell. On
the paper's high-conflict population (60 pairs x 20 judgements, aggregate only) the
label-invariant summaries ``p_agg`` (aggregate P(a preferred) per cell) and ``theta_bar``
contract by more than 0.95, the between-group difference ``|theta_0 - theta_1|`` by less than
0.3, and the relabelled within-group coordinates by 0.2-0.8 with chains in different modes
(``tests/test_models_labeled_unlabeled.py``). Every fit records this as a diagnostics
note (:data:`NOT_IDENTIFIED`, printed by :func:`pluralstan.diagnostics.summary`): it is the
finding, not a sampler failure. Use
:func:`pluralstan.relabel.label_switching_report` to separate label switching from genuine
multimodality, and the prior-sensitivity grid (``pi_alpha = concentration * pi_0``) to show how
much of the answer the assumed mixture supplies.

``identify="ordered"`` constrains ``theta[0, j] < ... < theta[K-1, j]`` for one attribute ``j``
(``ordered_attribute``, default the first). It removes the K! label permutations, nothing more:
it does not identify the mixture and it distorts the posterior where the components overlap in
attribute ``j``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..data import OUTCOMES, Comparisons
from ..errors import PluralstanError
from .base import (
    Encoded,
    ModelSpec,
    bt_prior_data,
    check_K,
    design_data,
    expand_cells,
    merge_priors,
    register,
    resolve_ties_order,
    whitening_data,
)
from .labeled import pi_alpha_vector

DEFAULT_PRIORS: dict[str, Any] = {
    "pi_alpha": 1.0,  # Dirichlet concentration: scalar or K values (concentration * pi_0)
    "theta_mean": 0.0,  # every theta_k, scalar or one value per attribute
    "theta_sd": 2.5,
    "order_sd": 1.0,  # position effect gamma
    "log_nu_mean": -1.0,  # Davidson tie parameter, log scale
    "log_nu_sd": 1.5,
}

IDENTIFY = ("none", "ordered")

#: What the fit's diagnostics record about identification (a finding, not a sampler failure).
NOT_IDENTIFIED = (
    "not identified by design: the comparison-level mixture is not identified from pooled "
    "judgements (Proposition 1 of the position paper; aggregate data identify only the "
    "population preference, e.g. theta_bar and p_agg): wide, prior-driven theta_k and pi are "
    "the expected result, not a sampler failure; labels, repeated judgements per annotator "
    "(model 'annotator') or annotator covariates ('covariate') identify the types"
)


def _ident_attribute(comps: Comparisons, identify: str, attribute: str | None) -> int:
    """1-based index of the attribute that orders the components."""
    if identify not in IDENTIFY:
        raise PluralstanError(f"unknown identify {identify!r}; accepted: {list(IDENTIFY)}")
    if attribute is None:
        return 1
    if identify == "none":
        raise PluralstanError(
            f"ordered_attribute={attribute!r} needs identify='ordered' (it names the attribute "
            "whose coordinates order the components)"
        )
    if attribute not in comps.attributes:
        raise PluralstanError(
            f"ordered_attribute {attribute!r} is not an attribute of the table; attributes: "
            f"{list(comps.attributes)[:10]}"
        )
    return comps.attributes.index(attribute) + 1


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    identify: Literal["none", "ordered"] = "none",
    ordered_attribute: str | None = None,
    ties: bool | None = None,
    order: bool | None = None,
    whiten: bool | None = None,
) -> Encoded:
    """Encode a comparison table for the unlabeled K-mixture model.

    Parameters
    ----------
    comps
        The judgements; group and annotator ids are ignored (pooled cells).
    K
        Number of latent subgroups (required).
    priors
        Overrides of :data:`DEFAULT_PRIORS`; ``pi_alpha`` is a scalar or a length-``K`` vector of
        positive numbers (large concentrations pin ``pi`` near ``pi_alpha / sum(pi_alpha)``;
        unequal values label the components, so the fit is then not relabelled).
    identify
        ``"none"`` (exchangeable labels) or ``"ordered"`` (order the components by one attribute).
    ordered_attribute
        With ``identify="ordered"``: the attribute whose coordinates are ordered (default: the
        first attribute).
    ties
        Model ties with Davidson's parameter; default: when the data contain ties.
    order
        Estimate a position effect; default: when the table records presentation order.
    whiten
        Sample theta in the design's whitened basis (the QR reparameterisation,
        :func:`~pluralstan.models.base.whitening_data`): ``None`` (default) when the design
        allows it and the components are not ordered, ``True`` or ``False`` to force the
        choice. The posterior is the same.

    Raises
    ------
    PluralstanError
        For a missing or invalid ``K``, an unknown ``identify`` or attribute, invalid priors.
    """
    if K is None:
        raise PluralstanError("the unlabeled model needs the number of latent subgroups K")
    K = check_K(K, "latent subgroups")
    ident_attr = _ident_attribute(comps, identify, ordered_attribute)
    p = merge_priors(DEFAULT_PRIORS, priors)
    has_ties, has_order = resolve_ties_order(comps, ties, order)
    cells = comps.cells()
    n_out = 2 + has_ties
    P = len(comps.attributes)
    data = {
        "C": cells.n_cells,
        "P": P,
        "K": K,
        **design_data(cells.X),
        **whitening_data(cells.X, cells.counts[:, :n_out].sum(axis=1), whiten,
                         ordered=identify == "ordered"),
        "order": cells.order,
        "has_ties": has_ties,
        "has_order": has_order,
        "y": cells.counts[:, :n_out],
        "identify": int(identify == "ordered"),
        "ident_attr": ident_attr,
        "prior_pi_alpha": pi_alpha_vector(p["pi_alpha"], K),
        **bt_prior_data(p, P),
        "prior_only": 0,
    }
    coords = {
        "group": np.arange(K),
        "attribute": list(comps.attributes),
        "cell": np.arange(cells.n_cells),
        "outcome": list(OUTCOMES[:n_out]),
        "comparison": np.arange(comps.n),
    }
    cell_of_row, outcome_of_row = cells.cell_of_row, cells.outcome_of_row
    return Encoded(
        data=data,
        coords=coords,
        dims={"theta": ["group", "attribute"], "pi": ["group"], "theta_bar": ["attribute"],
              "p_agg": ["cell"], "alloc": ["cell", "outcome", "group"],
              "y_rep": ["cell", "outcome"]},
        observed={"y": cells.counts[:, :n_out]},
        constant={"X": cells.X, "order": cells.order, "cell_of_row": cell_of_row},
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": expand_cells(v["log_p_cell"], cell_of_row, outcome_of_row)},
        log_lik_dims={"y": ["comparison"]},
        drop=("log_p_cell", "theta_lead_ordered", "theta_lead_free", "theta_rest"),
        optional_scalars=("gamma", "log_nu"),
        label_dim="group",
        extra_attrs={"K": K, "ties": has_ties, "order_effect": has_order, "identify": identify,
                     "ordered_attribute": comps.attributes[ident_attr - 1]
                     if identify == "ordered" else "",
                     "group_labels": "latent", "allocation": "alloc",
                     "whitened": data["whiten"],
                     "not_identified": NOT_IDENTIFIED},
    )


SPEC = register(
    ModelSpec(
        name="unlabeled",
        program_file="unlabeled_bt.stan",
        summary="Unlabeled comparison-level K-mixture Bradley-Terry on pooled counts (latent "
        "group marginalised per judgement; not identified from aggregate data)",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
        needs_K=True,
    )
)

"""Annotator-level latent types: the paired-annotator mixture (``stan/annotator_bt.stan``).

Each annotator belongs to one of ``K`` latent types and makes all of their judgements with that
type's preference vector; the likelihood of an annotator's whole set of judgements is mixed over
the types. Repeated judgements from one person are what identify the types (seed 002's paired
preferences): with one judgement per annotator the model is the unidentified judgement-level
mixture.

Outputs: ``theta`` ``("group", "attribute")``, ``pi`` ``("group",)``, ``membership``
``("annotator", "group")`` (per-draw allocation probabilities, for relabelling and for
classifying annotators), ``log_likelihood["y"]`` with dim ``annotator`` (the unit of
leave-one-annotator-out LOO), and ``posterior_predictive["y"]`` counts per cell and outcome.

The encoding helpers here (:func:`annotator_cells`, :func:`likelihood_data`)
are shared with the covariate-informed model (:mod:`pluralstan.models.covariate`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix, issparse
from scipy.special import logsumexp

from ..data import OUTCOMES, Comparisons
from ..errors import PluralstanError
from .base import (
    Encoded,
    ModelSpec,
    broadcast_prior,
    bt_prior_data,
    check_K,
    design_data,
    design_from_data,
    log_normaliser,
    merge_priors,
    optional_scalar,
    over_blocks,
    positive,
    register,
    require_annotators,
    resolve_ties_order,
    theta_coordinates,
    whitening_data,
)

Identify = Literal["none", "ordered"]

#: Largest share of non-zero entries at which the annotator-type programs get their design in
#: compressed row storage (:func:`~pluralstan.models.base.design_data`); below the other
#: programs' threshold because their linear predictors are the design times a matrix of K
#: types, which stanc's ``--O1`` makes one dense matrix product each way, where the sparse form
#: is K products (measured side by side: ``benchmarks/latest_results.md``, "Annotator types
#: under stanc --O1").
SPARSE_TYPES_DESIGN_DENSITY = 0.2

DEFAULT_PRIORS: dict[str, Any] = {
    "theta_mean": 0.0,  # scalar or one value per attribute (same for every type)
    "theta_sd": 2.5,  # weakly informative on the logit scale
    "pi_alpha": 1.0,  # Dirichlet concentration: scalar or one value per type
    "order_sd": 1.0,  # position effect gamma
    "log_nu_mean": -1.0,  # Davidson tie parameter, log scale
    "log_nu_sd": 1.5,
}


@dataclass(frozen=True)
class AnnotatorCells:
    """Judgements collapsed to cells within annotators, cells sorted by annotator.

    Attributes
    ----------
    X, order, counts
        ``(C, P)`` design, ``(C,)`` order sign and ``(C, n_outcomes)`` counts per cell.
    annotator
        ``(C,)`` 0-based annotator code of each cell (non-decreasing).
    cell_of_row, outcome_of_row
        ``(N,)`` cell (in the sorted numbering) and outcome code of every judgement.
    """

    X: np.ndarray
    order: np.ndarray
    counts: np.ndarray
    annotator: np.ndarray
    cell_of_row: np.ndarray
    outcome_of_row: np.ndarray

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.X.shape[0])


def check_identify(
    comps: Comparisons, identify: str, ordered_attribute: str | None
) -> tuple[int, int]:
    """The Stan flags ``identify`` and ``ident_attr`` (1-based) for the labelling option.

    Raises
    ------
    PluralstanError
        For an unknown ``identify``, or an ``ordered_attribute`` that is not an attribute or is
        given without ``identify="ordered"``.
    """
    if identify not in ("none", "ordered"):
        raise PluralstanError(
            f"identify={identify!r} is not an option; accepted: 'none' (exchangeable types, labels "
            "may switch; relabel afterwards) or 'ordered' (types ordered by one attribute)"
        )
    if ordered_attribute is None:
        return int(identify == "ordered"), 1
    if identify == "none":
        raise PluralstanError(
            f"ordered_attribute={ordered_attribute!r} needs identify='ordered' (it names the "
            "attribute whose coordinates order the types)"
        )
    if ordered_attribute not in comps.attributes:
        raise PluralstanError(
            f"ordered_attribute {ordered_attribute!r} is not an attribute of the table; "
            f"attributes: {list(comps.attributes)[:10]}"
        )
    return 1, comps.attributes.index(ordered_attribute) + 1


def annotator_cells(comps: Comparisons, n_outcomes: int) -> AnnotatorCells:
    """Cells of ``comps.cells(by=["annotator"])`` sorted by annotator (stable).

    Raises
    ------
    PluralstanError
        When an annotator of the annotator table has no judgement in the comparison table.
    """
    if comps.annotators is not None:
        idle = comps.annotators.index.difference(pd.Index(comps.annotator_levels))
        if len(idle):
            raise PluralstanError(
                f"annotator {idle[0]!r} is in the annotator table but has no judgements "
                f"({len(idle)} such annotator(s)); drop them or add their judgements"
            )
    cells = comps.cells(by=["annotator"])
    perm = np.argsort(cells.annotator, kind="stable")
    new_of_old = np.empty_like(perm)
    new_of_old[perm] = np.arange(perm.size)
    return AnnotatorCells(
        X=cells.X[perm],
        order=cells.order[perm],
        counts=cells.counts[perm][:, :n_outcomes],
        annotator=cells.annotator[perm],
        cell_of_row=new_of_old[cells.cell_of_row],
        outcome_of_row=cells.outcome_of_row,
    )


def distinct_rows(X: Any, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (design row, order) pairs of the cells: the first cell of each, and each
    cell's distinct row (0-based). Annotators who judge the same pairs share rows, and the
    programs evaluate each distinct linear predictor once per type.

    ``X`` is an array or a SciPy sparse matrix (compared exactly through its non-zero columns
    and values, padded to the longest row, so nothing is densified).
    """
    if issparse(X):
        csr = csr_matrix(X, dtype=float, copy=True)
        csr.eliminate_zeros()
        csr.sort_indices()
        nnz = np.diff(csr.indptr)
        width = int(nnz.max(initial=0))
        at = (np.repeat(np.arange(csr.shape[0]), nnz),
              np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], nnz))
        columns = np.full((csr.shape[0], width), -1.0)
        values = np.zeros((csr.shape[0], width))
        columns[at], values[at] = csr.indices, csr.data
        keys = np.column_stack([columns, values, order])
    else:
        keys = np.column_stack([np.asarray(X, dtype=float), order])
    _, first, row = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return first, row.reshape(-1)


def initial_values(posterior: Any, chain: int, pi: np.ndarray,
                   data: Mapping[str, Any]) -> dict[str, Any]:
    """Stan inits of the annotator program (exchangeable types, ``identify="none"``) at the
    last draw of ``chain`` of a fit's ``posterior`` (theta, position effect and tie parameter),
    with type shares ``pi``: chains started there keep that fit's type labels. ``data``: the
    Stan data of the fit to start, whose basis maps theta to the coordinates it samples
    (:func:`~pluralstan.models.base.theta_coordinates`)."""
    last = posterior.isel(chain=chain % posterior.sizes["chain"], draw=-1)
    theta = theta_coordinates(last["theta"].transpose("group", "attribute").to_numpy(), data)
    inits: dict[str, Any] = {"pi_coord": share_coordinates(pi).tolist(),
                             "theta_lead_free": theta[:, 0].tolist(),
                             "theta_rest": theta[:, 1:].tolist()}
    for name in ("gamma", "log_nu"):
        if name in posterior:
            inits[name] = [float(last[name])]
    return inits


#: Warm-up iterations of a fit started by :func:`warm_start`. Below 20, Stan adapts the step
#: size alone and keeps the metric it starts with; at 0 it would set the step size to 1.
WARM_START_WARMUP = 19


def warm_start(fit: Any, data: Mapping[str, Any], chains: int) -> dict[str, Any]:
    """Options of :func:`pluralstan.fit` that start an annotator fit where ``fit`` ended.

    For a fit of nearly the same posterior as ``fit`` (a K-fold refit, from the full fit), whose
    chains need neither to find the posterior's bulk nor to learn its scales. Stan's NUTS
    adapts a diagonal metric, the posterior variances of the unconstrained parameters, which
    PyStan cannot be given; scales of the program's free coordinates take its place
    (``scales`` of :func:`encode`), so that the unit metric is ``fit``'s adapted one:

    * ``scales``: the within-chain posterior sd in ``fit`` of each free coordinate (the
      shares' log ratios, theta's coordinates, the position and tie parameters);
    * ``stepsize``: ``fit``'s adapted step size (the median over chains);
    * ``inits``: chain ``c`` starts at the last draw of ``fit``'s chain ``c``
      (:func:`initial_values`, which keeps ``fit``'s type labels);
    * ``warmup``: :data:`WARM_START_WARMUP` iterations, which adapt the step size alone.

    Parameters
    ----------
    fit
        An annotator fit with exchangeable types (its ``posterior`` and its ``sample_stats``
        ``step_size``).
    data
        The Stan data of the fit to start (:func:`encode` with the same ``K``; its basis maps
        theta to the coordinates it samples).
    chains
        Chains of the fit to start.

    Returns
    -------
    dict
        ``inits``, ``stepsize``, ``scales`` and ``warmup``.
    """
    from .. import _arviz

    post = _arviz.group(fit, "posterior")
    K, P = int(data["K"]), int(data["P"])
    if bool(data["identify"]) or post.sizes.get("group") != K:
        raise PluralstanError(f"warm_start needs a fit of {K} exchangeable types "
                              "(identify='none') to start from")
    theta = post["theta"].transpose("chain", "draw", "group", "attribute").to_numpy()
    draws = {"theta": theta_coordinates(theta.reshape(-1, P), data).reshape(theta.shape),
             "pi_coord": share_coordinates(post["pi"].transpose("chain", "draw", "group"))}
    draws |= {name: post[name].transpose("chain", "draw").to_numpy()
              for name in ("gamma", "log_nu") if name in post}
    inits = [initial_values(post, c, post["pi"].isel(chain=c % post.sizes["chain"], draw=-1),
                            data) for c in range(chains)]
    step = float(np.median(_arviz.group(fit, "sample_stats")["step_size"].to_numpy()))
    return {"inits": inits, "stepsize": step,
            "scales": {name: within_chain_sd(v) for name, v in draws.items()},
            "warmup": WARM_START_WARMUP}


def within_chain_sd(draws: np.ndarray) -> np.ndarray:
    """Pooled within-chain posterior sd of ``draws`` (chain, draw, ...): the root of the mean
    over chains of each chain's variance, which chains in different modes do not inflate."""
    return np.sqrt(np.var(draws, axis=1, ddof=1).mean(axis=0))


def share_coordinates(pi: Any) -> np.ndarray:
    """The log-ratio coordinates of type shares (``..., K`` -> ``..., K - 1``) that the
    annotator program samples as ``pi_coord``: ``pi = softmax(V pi_coord / sqrt(2))`` with
    ``V`` the Helmert basis of ``stan/functions/sum_to_zero.stanfunctions`` (SciPy's
    :func:`scipy.linalg.helmert`, transposed); with K = 2, the log odds of the first type."""
    from scipy.linalg import helmert

    log_pi = np.log(np.asarray(pi, dtype=float))
    return np.sqrt(2) * log_pi @ helmert(log_pi.shape[-1]).T


def likelihood_data(
    comps: Comparisons,
    K: Any,
    priors: dict[str, Any],
    *,
    identify: str,
    ordered_attribute: str | None,
    ties: bool | None,
    order: bool | None,
    whiten: bool | None = None,
) -> tuple[dict[str, Any], dict[str, Any], AnnotatorCells, dict[str, Any]]:
    """Stan data, coords, cells and provenance common to the annotator-level programs.

    Returns
    -------
    data, coords, cells, attrs
        Stan data (likelihood, theta / order / tie priors, flags; ``prior_only`` = 0), coords
        for ``attribute``, ``group``, ``annotator``, ``cell``, ``outcome``, the sorted cells,
        and the model attributes recorded in the posterior.
    """
    require_annotators(comps)
    K = check_K(K, "latent types", n_annotators=len(comps.annotator_levels))
    flag, ident_attr = check_identify(comps, identify, ordered_attribute)
    has_ties, has_order = resolve_ties_order(comps, ties, order)
    n_out = 2 + int(has_ties)
    cells = annotator_cells(comps, n_out)
    first, row = distinct_rows(cells.X, cells.order)
    P = len(comps.attributes)
    data = {
        "I": len(comps.annotator_levels),
        "C": cells.n_cells,
        "P": P,
        "K": K,
        **design_data(cells.X[first], density=SPARSE_TYPES_DESIGN_DENSITY),
        **whitening_data(cells.X[first], np.bincount(row, cells.counts.sum(axis=1)), whiten,
                         ordered=bool(flag)),
        "order": cells.order[first],
        "row": row + 1,
        "ann": cells.annotator + 1,
        "has_ties": int(has_ties),
        "has_order": int(has_order),
        "identify": flag,
        "ident_attr": ident_attr,
        "y": cells.counts,
        **bt_prior_data(priors, P),
        "prior_only": 0,
    }
    coords = {
        "attribute": list(comps.attributes),
        "group": np.arange(K),
        "annotator": list(comps.annotator_levels),
        "cell": np.arange(cells.n_cells),
        "outcome": list(OUTCOMES[:n_out]),
        "comparison": np.arange(comps.n),
    }
    attrs = {"ties": int(has_ties), "order_effect": int(has_order), "identify": identify,
             "ordered_attribute": comps.attributes[ident_attr - 1] if flag else "",
             "whitened": data["whiten"]}
    return data, coords, cells, attrs


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    identify: Identify = "none",
    ordered_attribute: str | None = None,
    ties: bool | None = None,
    order: bool | None = None,
    replicate: bool = True,
    membership: bool = True,
    log_lik: bool = True,
    held_out: Sequence[Hashable] = (),
    whiten: bool | None = None,
    scales: Mapping[str, Any] | None = None,
    loo_mixture: Sequence[float] | np.ndarray | None = None,
) -> Encoded:
    """Encode a comparison table for the annotator-level latent-type model.

    Parameters
    ----------
    comps
        The judgements; the ``annotator`` column defines the units that share a type (a table
        without it makes every judgement its own annotator). Observed ``group`` labels are
        ignored.
    K
        Number of latent types, ``1 <= K <=`` number of annotators.
    priors
        Overrides of :data:`DEFAULT_PRIORS`. ``pi_alpha`` is a scalar or one Dirichlet
        concentration per type (e.g. ``concentration * pi_grid`` for prior sensitivity).
        Unequal concentrations label the types, so the fit is then not relabelled
        (:func:`pluralstan.relabel.asymmetric_prior`).
    identify
        ``"none"``: exchangeable types (labels may switch between and within chains; relabel
        with :mod:`pluralstan.relabel`). ``"ordered"``: theta's coordinate on
        ``ordered_attribute`` is increasing in the type index (removes the permutation symmetry
        only; it distorts the posterior where types overlap on that attribute).
    ordered_attribute
        With ``identify="ordered"``: the attribute that orders the types (default: the first).
    ties
        Model ties with Davidson's parameter; default: when the data contain ties.
    order
        Estimate a position effect; default: when the table records presentation order.
    replicate
        Generate replicated data ``y_rep`` (posterior predictive checks, SBC). On large data
        (one cell per annotator and pair) it is the bulk of the output: ``False`` skips it.
    membership
        Output ``membership`` (annotators x K per draw), which the Stephens relabelling and
        per-annotator type summaries use. ``False`` skips it on large data, and
        :func:`pluralstan.relabel.relabel` falls back to pivotal reordering.
    log_lik
        Output ``log_lik`` (one value per annotator and draw), which leave-one-annotator-out
        LOO, stacking of chains and power-scaling sensitivity use. ``False`` skips it on very
        large data (at 100,000 annotators it dominates memory); the fit then has no
        ``log_likelihood`` group, its convergence checks use ``lp`` and the parameters, and
        genuinely separate modes are reported, not stacked.

        Both are computed in Python from the parameter draws after sampling
        (:func:`mixture_outputs`), not written by the program for every draw.
    held_out
        Annotator ids whose judgements are left out of the likelihood (K-fold
        cross-validation, :func:`pluralstan.checks.compare.kfold_K`); their ``log_lik`` is
        still computed, from the posterior of the others.
    whiten
        Sample theta in the design's whitened basis (the QR reparameterisation,
        :func:`~pluralstan.models.base.whitening_data`): ``None`` (default) when the design
        allows it and the components are not ordered, ``True`` or ``False`` to force the
        choice. The posterior is the same.
    scales
        Scales of the free coordinates on the sampler's space, by parameter
        (:func:`scale_data`): the sampler moves in the coordinates divided by them (Stan's
        ``multiplier``), so with the posterior's scales a unit metric is already adapted.
        Default 1; :func:`warm_start` sets them from an earlier fit. The posterior is the same.
    loo_mixture
        Log weights ``log c_i``, one per annotator in ``comps.annotator_levels`` order: the
        fit then samples the mixture of leave-one-annotator-out posteriors
        ``q ∝ p(theta, pi | y) sum_i c_i / p(y_i | theta, pi)`` instead of the posterior
        (Silva & Zanella 2022), from which
        :func:`pluralstan.checks.compare.mixture_loo_K` estimates every annotator's
        leave-one-out predictive density; :func:`pluralstan.checks.compare.mixture_weights`
        gives weights that share ``q`` evenly among the annotators. Not with ``held_out``.

    Raises
    ------
    PluralstanError
        For a bad ``K``, ``identify``, prior, ``scales``, ``loo_mixture``, or an annotator
        without judgements.
    """
    p = merge_priors(DEFAULT_PRIORS, priors)
    data, coords, cells, attrs = likelihood_data(
        comps, K, p, identify=identify, ordered_attribute=ordered_attribute, ties=ties,
        order=order, whiten=whiten,
    )
    data |= scale_data(scales, data)
    data["replicate"] = int(replicate)
    data |= PYTHON_OUTPUTS
    data["fit_weight"] = fit_weights(comps, held_out)
    if len(held_out):
        attrs = {**attrs, "held_out_annotators": len(held_out)}
    data |= mixture_data(loo_mixture, comps.annotator_levels, held_out)
    if loo_mixture is not None:  # these draws are not the posterior's
        attrs = {**attrs, "loo_mixture": 1}
    data["prior_pi_alpha"] = positive(
        broadcast_prior(p["pi_alpha"], data["K"], "pi_alpha"), "pi_alpha"
    )
    return Encoded(
        data=data,
        coords=coords,
        dims={
            "theta": ["group", "attribute"],
            "pi": ["group"],
            "membership": ["annotator", "group"],
            "y_rep": ["cell", "outcome"],
            **CONSTANT_DIMS,
        },
        observed={"y": cells.counts},
        constant=constant_data(cells),
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": v["log_lik"]},
        log_lik_dims={"y": ["annotator"]},
        drop=INTERNAL,
        optional_scalars=("gamma", "log_nu"),
        label_dim="group",
        extra_attrs=attrs,
        derive=partial(derive_outputs, membership=membership, log_lik=log_lik),
        scale_names=SCALE_NAMES,
    )


#: The program's free coordinates -> the data holding their scales (:func:`scale_data`).
SCALE_NAMES = {"pi_coord": "pi_coord_scale", "theta_lead_free": "theta_lead_scale",
               "theta_rest": "theta_rest_scale", "gamma": "gamma_scale",
               "log_nu": "log_nu_scale"}


def scale_data(scales: Mapping[str, Any] | None,
               data: Mapping[str, Any]) -> dict[str, np.ndarray | float]:
    """Stan data ``*_scale``: the scales of the program's free coordinates.

    ``scales`` maps a parameter to the scales of its coordinates on the sampler's space, 1 for
    a parameter it leaves out: ``"pi_coord"`` (K - 1: the log-ratio coordinates of the shares,
    :func:`share_coordinates`), ``"theta"`` (K x P: theta in the basis the program samples,
    :func:`~pluralstan.models.base.theta_coordinates`; only with exchangeable types, since the
    ordered coordinate has none), ``"gamma"`` and ``"log_nu"`` (one each).
    """
    K, P, ordered = int(data["K"]), int(data["P"]), bool(data["identify"])
    shapes = {"pi_coord": (K - 1,), "theta": (K, P), "gamma": (), "log_nu": ()}
    given = dict(scales or {})
    unknown = sorted(set(given) - set(shapes))
    if unknown:
        raise PluralstanError(f"scales has no parameter {unknown[0]!r}; it takes "
                              f"{', '.join(map(repr, shapes))}")
    if ordered and "theta" in given:
        raise PluralstanError("scales of theta need exchangeable types (identify='none')")
    out = {name: np.asarray(given.get(name, np.ones(shape)), dtype=float)
           for name, shape in shapes.items()}
    for name, value in out.items():
        if value.shape != shapes[name] or not np.all(np.isfinite(value) & (value > 0)):
            raise PluralstanError(f"scales[{name!r}] must hold positive finite numbers of shape "
                                  f"{shapes[name]}, got shape {value.shape}")
    return {"pi_coord_scale": out["pi_coord"],
            "theta_lead_scale": np.ones(0) if ordered else out["theta"][:, 0],
            "theta_rest_scale": out["theta"][:, 1:],
            "gamma_scale": float(out["gamma"]), "log_nu_scale": float(out["log_nu"])}


def fit_weights(comps: Comparisons, held_out: Sequence[Hashable]) -> np.ndarray:
    """1 per annotator (in ``comps.annotator_levels`` order), 0 for the ``held_out`` ones."""
    levels = list(comps.annotator_levels)
    unknown = [a for a in held_out if a not in set(levels)]
    if unknown:
        raise PluralstanError(f"held-out annotator {unknown[0]!r} has no judgements in the "
                              "table")
    if len(set(held_out)) >= len(levels):
        raise PluralstanError("every annotator is held out: nothing is left to fit")
    return (~np.isin(np.asarray(levels, dtype=object), np.asarray(list(held_out),
                                                                   dtype=object))).astype(float)


def mixture_data(log_weight: Sequence[float] | np.ndarray | None, levels: Sequence[Hashable],
                 held_out: Sequence[Hashable]) -> dict[str, Any]:
    """Stan data ``loo_mixture`` and ``loo_log_weight`` (see :func:`encode`)."""
    if log_weight is None:
        return {"loo_mixture": 0, "loo_log_weight": np.zeros(0)}
    if len(held_out):
        raise PluralstanError("loo_mixture and held_out do not go together: the mixture "
                              "estimates every annotator's leave-one-out density from one fit")
    w = np.asarray(log_weight, dtype=float)
    if w.shape != (len(levels),):
        raise PluralstanError(f"loo_mixture must hold one log weight per annotator "
                              f"({len(levels)}), got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        who = pd.Index(levels).tolist()[bad[0]]  # as a Python value, printed plainly
        raise PluralstanError(f"loo_mixture must be finite; annotator {who!r} has {w[bad[0]]}")
    return {"loo_mixture": 1, "loo_log_weight": w}


# ------------------------------------------------------------- outputs computed in Python
@dataclass(frozen=True)
class TypeLikelihood:
    """``type_log_lik`` of ``stan/functions/annotator_types.stanfunctions`` in NumPy.

    Built from the program's own Stan data (design rows, cells, counts), so it scores exactly
    what the program scores: for draws of ``theta`` (K x P), the position effect and the tie
    parameter, the I x K log likelihood of each annotator's judgements under each type.
    """

    X: np.ndarray | csr_matrix  #: R x P distinct design rows
    order: np.ndarray  #: presentation order of each row
    totals: csr_matrix  #: I x R cell totals
    S: np.ndarray  #: I x P per-annotator sums of the linear part
    S_order: np.ndarray  #: per-annotator sums of the position term
    n_tie: np.ndarray  #: ties per annotator

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> TypeLikelihood:
        """The likelihood of an annotator-level program's Stan data."""
        order = np.asarray(data["order"], float)
        n_ann, R = int(data["I"]), order.size
        X = design_from_data(data)
        y = np.asarray(data["y"], float)
        ties = bool(data["has_ties"])
        n_tie = y[:, 2] if ties else np.zeros(len(y))
        w_lin = 0.5 * (y[:, 1] - y[:, 0]) if ties else y[:, 1]
        ann, row = np.asarray(data["ann"]) - 1, np.asarray(data["row"]) - 1
        linear = csr_matrix((w_lin, (ann, row)), shape=(n_ann, R))
        S = linear @ X
        totals = csr_matrix((y.sum(axis=1), (ann, row)), shape=(n_ann, R))
        return cls(X=X, order=order, totals=totals,
                   S=S.toarray() if issparse(S) else np.asarray(S), S_order=linear @ order,
                   n_tie=np.bincount(ann, weights=n_tie, minlength=n_ann))

    def __call__(self, theta: np.ndarray, gamma: np.ndarray | None,
                 log_nu: np.ndarray | None) -> np.ndarray:
        """``(D, I, K)`` for ``theta`` ``(D, K, P)`` and ``gamma``, ``log_nu`` ``(D,)`` or
        ``None`` (no position effect, binomial)."""
        D, K, P = theta.shape
        coefs = theta.reshape(D * K, P).T
        eta = np.asarray(self.X @ coefs)
        shift = np.zeros((D, self.S.shape[0]))
        if gamma is not None:
            eta += np.outer(self.order, np.repeat(gamma, K))
            shift += np.outer(gamma, self.S_order)
        log_d = log_normaliser(eta, None if log_nu is None else np.repeat(log_nu, K))
        if log_nu is not None:
            shift += np.outer(log_nu, self.n_tie)
        lp = self.S @ coefs - self.totals @ log_d
        return lp.reshape(-1, D, K).transpose(1, 0, 2) + shift[:, :, None]


def mixture_outputs(values: Mapping[str, np.ndarray], data: Mapping[str, Any],
                    log_shares: Callable[[slice], np.ndarray], *, membership: bool,
                    log_lik: bool) -> dict[str, np.ndarray]:
    """``membership`` and ``log_lik`` of an annotator-level program from its parameter draws.

    The twin of the programs' generated quantities: ``lp[i, k]`` is annotator i's log
    likelihood under type k (:class:`TypeLikelihood`) plus the log prior share
    ``log_shares(draws)`` (``(d, I or 1, K)`` for a slice of the flattened draws),
    ``log_lik[i] = log_sum_exp(lp[i])`` and ``membership[i] = exp(lp[i] - log_lik[i])``
    (the prior shares when ``data["prior_only"]``). Computed in blocks of draws, side by side
    (:func:`~pluralstan.models.base.over_blocks`). Outputs not asked for are left out.
    """
    if not (membership or log_lik):
        return {}
    theta = values["theta"]
    lead, (K, P) = theta.shape[:-2], theta.shape[-2:]
    flat = theta.reshape(-1, K, P)
    gamma, log_nu = (None if v is None else v.reshape(-1) for v in
                     (optional_scalar(values, "gamma"), optional_scalar(values, "log_nu")))
    lik = TypeLikelihood.from_data(data)
    n_ann, D = lik.S.shape[0], flat.shape[0]
    ll = np.empty((D, n_ann))
    post = np.empty((D, n_ann, K) if membership else (0,))

    def block(at: slice) -> None:
        shares = log_shares(at)
        lp = lik(flat[at], None if gamma is None else gamma[at],
                 None if log_nu is None else log_nu[at]) + shares
        ll[at] = logsumexp(lp, axis=-1)
        if membership:
            post[at] = (np.broadcast_to(np.exp(shares), lp.shape) if data["prior_only"]
                        else np.exp(lp - ll[at][..., None]))

    over_blocks(D, lik.order.size * K, block)
    out = {}
    if membership:
        out["membership"] = post.reshape(*lead, n_ann, K)
    if log_lik:
        out["log_lik"] = ll.reshape(*lead, n_ann)
    return out


def derive_outputs(values: Mapping[str, np.ndarray], data: Mapping[str, Any], *,
                   membership: bool, log_lik: bool) -> dict[str, np.ndarray]:
    """The annotator program's per-annotator outputs (:func:`mixture_outputs`), its type
    shares being ``pi``."""
    log_pi = np.log(values["pi"].reshape(-1, values["pi"].shape[-1]))
    return mixture_outputs(values, data, lambda at: log_pi[at][:, None, :],
                           membership=membership, log_lik=log_lik)


#: Stan data flags of the per-annotator outputs, which :func:`mixture_outputs` computes instead
#: (set them to 1 to have the program write them, as the tests do to compare the two).
PYTHON_OUTPUTS: dict[str, int] = {"save_membership": 0, "save_log_lik": 0}

#: Stan outputs used internally (the coordinates of ``pi`` and ``theta``, the per-annotator
#: log likelihood, which goes to the log_likelihood group): not kept in the posterior.
INTERNAL = ("log_lik", "pi_coord", "theta_lead_ordered", "theta_lead_free", "theta_rest")

#: Dims of the ``constant_data`` variables of the annotator-level models.
CONSTANT_DIMS: dict[str, list[str]] = {
    "X": ["cell", "attribute"],
    "order": ["cell"],
    "cell_annotator": ["cell"],
    "cell_of_row": ["comparison"],
}


def as_aggregate(one_type: Any) -> Any:
    """The aggregate model's fit read off a one-type (``K = 1``) fit of this model.

    With one type, ``pi = 1`` and every judgement follows one ``theta``: the likelihood is the
    aggregate Bradley-Terry likelihood of the pooled judgements, the priors on ``theta``,
    ``gamma`` and ``log_nu`` have the same defaults, and the Dirichlet prior of a one-element
    simplex is the constant 1 (``lprior`` is unchanged). So the two fits are draws from one
    posterior, and ``pluralstan audit`` fits it once.

    Returns the fit with ``theta`` ``("attribute",)``, without ``pi`` and ``membership``, and
    ``posterior.attrs`` ``model = "aggregate"`` and ``derived_from``; the log likelihood (by
    annotator), log prior, sampler statistics and provenance (the annotator program) are the
    one-type fit's.
    """
    from .. import _arviz

    post = _arviz.group(one_type, "posterior")
    K = post["theta"].sizes.get("group")
    if post.attrs.get("model") != "annotator" or K != 1:
        raise PluralstanError(f"as_aggregate needs a K = 1 annotator fit, got model "
                              f"{post.attrs.get('model')!r} with {K} type(s)")
    theta = post["theta"].isel(group=0, drop=True)
    aggregate = (post.drop_vars(["pi", "membership"], errors="ignore")
                 .drop_dims("group").assign(theta=theta))
    aggregate.attrs = {**post.attrs, "model": "aggregate",
                       "derived_from": "annotator model, K = 1 (the same posterior)"}
    return _arviz.replace_groups(one_type, posterior=aggregate)


def constant_data(cells: AnnotatorCells) -> dict[str, np.ndarray]:
    """The ``constant_data`` group: design, order and annotator of each cell, cell of each row."""
    return {
        "X": cells.X,
        "order": cells.order,
        "cell_annotator": cells.annotator,
        "cell_of_row": cells.cell_of_row,
    }


SPEC = register(
    ModelSpec(
        name="annotator",
        program_file="annotator_bt.stan",
        summary="Annotator-level latent types: each annotator's judgements share one of K "
        "preference vectors (paired-annotator mixture; per-annotator log likelihood)",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
        needs_K=True,
    )
)

"""Labeled K-mixture Bradley-Terry, subgroup label observed per judgement (``labeled_bt.stan``).

Identification route (i) of the position paper's Proposition 1: each judgement carries its
annotator's subgroup label (column ``group``), so subgroup ``k``'s preference vector ``theta_k``
is learned from that subgroup's judgements and the weights ``pi`` from the labels of the
distinct annotators (``n_annotators ~ multinomial(pi)``, ``pi ~ dirichlet(pi_alpha)``).

``pooling="partial"`` shrinks the ``theta_k`` towards a population vector ``mu`` with per-attribute
spread ``tau``; ``pooling="none"`` gives every group an independent prior. How the sampler sees
the hierarchy is a choice of parametrisation (``centring``), never of model. The default, for
up to :data:`CONDITIONAL_MAX_ATTRIBUTES` attributes, is the conditional form
(:func:`conditional_data`): ``mu`` and each ``theta_k`` are the mean of their conditional
posterior plus its Cholesky root times a standard coordinate, under a pilot's normal
approximation to each group's likelihood, which is non-centred where ``tau`` is small and
centred where a group's data dominate, so it serves both regimes even when ``tau``'s
posterior spans them (as with three tax parties). Beyond that many attributes the default is
the same form with each group's pilot information given as its diagonal plus a correction of
rank :data:`LOW_RANK` (``"conditional-low-rank"``, :func:`low_rank_information`), whose cost
per gradient grows as ``K P s^2`` instead of ``K P^3``. The alternatives are a partially
centred form with a weight per group and attribute (0 non-centred; 1 centred; ``"auto"``:
weights from a pilot, :func:`centring_weights`).
``benchmarks/run.py --targets geometry`` compares them side by side. With
two or three groups ``tau`` is barely informed and its posterior follows ``tau_sd``: a small
group is then pulled towards the large one by as much as that prior allows (on the CEMS data,
work = yes, 13 of 303 students: P(Paris > London) = 0.71 unpooled, 0.42 partially pooled), so
report both when K is small. Without pooling, each group's ``theta_k`` is sampled in the
whitened basis of its own design (the QR reparameterisation, :func:`group_whitening_data`). Ties
(Davidson) and the position effect are those of the aggregate model. The ``group`` dim holds the
observed label values as strings; labels are data, so these components cannot switch and
:mod:`pluralstan.relabel` refuses them.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse, stats

from ..data import OUTCOMES, Comparisons
from ..errors import PluralstanError
from ..ml import penalised_mode
from .base import (
    Encoded,
    ModelSpec,
    broadcast_prior,
    bt_prior_data,
    cell_outputs,
    design_data,
    design_from_data,
    merge_priors,
    positive,
    register,
    resolve_ties_order,
    whitening_data,
)

DEFAULT_PRIORS: dict[str, Any] = {
    "theta_mean": 0.0,  # mean of mu (partial pooling) or of each theta_k (no pooling)
    "theta_sd": 2.5,  # sd of mu (partial pooling) or of each theta_k (no pooling)
    "tau_sd": 1.0,  # half-normal scale of the between-group spread (partial pooling)
    "pi_alpha": 1.0,  # Dirichlet concentration of pi: scalar or one value per group
    "order_sd": 1.0,  # position effect gamma
    "log_nu_mean": -1.0,  # Davidson tie parameter, log scale
    "log_nu_sd": 1.5,
}

POOLING = ("partial", "none")

#: Confidence of the lower bound on ``tau`` that sets the centring weights.
TAU_LOWER = 0.9

#: Most attributes for which ``centring=None`` chooses the conditional parametrisation: its
#: gradient adds Cholesky factors and triangular solves of P x P matrices per group (cost
#: ~ K P^3), which beyond this outweigh the shorter trajectories it buys
#: (``benchmarks/latest_results.md``, labeled-model geometry).
CONDITIONAL_MAX_ATTRIBUTES = 50

#: Rank of the correction to each group's diagonal pilot information in the low-rank
#: conditional form (``centring="conditional-low-rank"``, :func:`low_rank_information`).
LOW_RANK = 8

#: Named parametrisations of the partially pooled hierarchy: weight of the centred form.
CENTRING = {"non-centred": 0.0, "centred": 1.0}


def pi_alpha_vector(value: Any, K: int) -> np.ndarray:
    """The Dirichlet concentration ``pi_alpha`` as a length-``K`` vector of positive numbers."""
    alpha = broadcast_prior(value, K, "pi_alpha")
    if not np.all(np.isfinite(alpha) & (alpha > 0)):
        raise PluralstanError(
            f"prior 'pi_alpha' must be finite and positive, got {alpha.tolist()}; use "
            "concentration * pi_0 with pi_0 a point of the simplex and concentration > 0"
        )
    return alpha


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value it holds (for readable error messages)."""
    return value.item() if isinstance(value, np.generic) else value


def check_labels(comps: Comparisons, K: int | None) -> tuple[Hashable, ...]:
    """Validate the subgroup labels and return their levels.

    Raises
    ------
    PluralstanError
        Without a ``group`` column; when an annotator carries two labels; when ``K`` does not
        match the number of label levels or integer labels fall outside ``0..K-1``.
    """
    if not comps.has_groups:
        raise PluralstanError(
            "the labeled model needs the subgroup label column 'group' (one label per "
            "judgement); for data without labels use the 'unlabeled' model"
        )
    levels = comps.group_levels
    if K is not None:
        if int(K) != len(levels):
            raise PluralstanError(
                f"K={K} but column 'group' has {len(levels)} label level(s) "
                f"{[_plain(v) for v in levels[:10]]}; "
                "the labeled model has one component per observed label (omit K or recode "
                "'group')"
            )
        integer = all(isinstance(v, int | np.integer) for v in levels)
        outside = [v for v in levels if integer and not 0 <= int(v) < int(K)]
        if outside:
            raise PluralstanError(
                f"column 'group' has integer label {_plain(outside[0])!r}, outside "
                f"0..{int(K) - 1} for K={K}; integer labels must be 0..K-1 (or omit K to use "
                "the labels as given)"
            )
    per_annotator = comps.frame.groupby("annotator", sort=False)["group"].nunique()
    mixed = per_annotator[per_annotator > 1]
    if len(mixed):
        who = _plain(mixed.index[0])
        labels = sorted((_plain(v) for v in pd.unique(
            comps.frame.loc[comps.frame["annotator"] == who, "group"])), key=str)
        raise PluralstanError(
            f"annotator {who!r} carries {len(labels)} different labels {labels[:5]} in column "
            f"'group' ({len(mixed)} such annotator(s)); a subgroup label belongs to the "
            "annotator, so each annotator needs exactly one"
        )
    return levels


def annotators_per_group(comps: Comparisons) -> np.ndarray:
    """Number of distinct annotators carrying each label level (sorted levels)."""
    first = comps.frame.drop_duplicates("annotator")
    codes = pd.Index(comps.group_levels).get_indexer(first["group"])
    return np.bincount(codes, minlength=len(comps.group_levels)).astype(np.int64)


def group_pilots(X: Any, counts: np.ndarray, group: np.ndarray, K: int,
                 prior_mean: np.ndarray, prior_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's ``theta`` estimated on its own: the ``(K, P)`` posterior modes under the
    unpooled prior ``normal(prior_mean, prior_sd)`` and the ``(K, P, P)`` Fisher information
    of the group's decided judgements there (:func:`pluralstan.ml.penalised_mode`)."""
    X = sparse.csr_array(X, dtype=float)
    modes, infos = zip(*(penalised_mode(X[np.flatnonzero(group == k)].toarray(),
                                        counts[group == k], prior_mean, prior_sd)
                         for k in range(K)), strict=True)
    return np.array(modes), np.array(infos)


def low_rank_information(info: np.ndarray, rank: int
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An information matrix as its diagonal plus a low-rank correction in that diagonal's
    scale: ``I ~ D^1/2 (1 + V E V') D^1/2 = D + B E B'`` with ``B = D^1/2 V``.

    ``V`` holds the ``rank`` eigenvectors of ``D^-1/2 I D^-1/2`` (over the attributes with
    positive information) whose eigenvalues are farthest from 1 in ratio, and ``E`` those
    eigenvalues minus 1; every other eigenvalue is taken as 1. The result stays positive
    semi-definite. For a comparison graph the far eigenvalues are its few poorly informed
    directions (every item against the reference, say), which the diagonal alone leaves
    elongated; with ``rank`` the number of such attributes it is exact. Where fewer attributes
    than ``rank`` have positive information, the remaining columns of ``B`` are unit vectors of
    attributes without, with ``E`` 0 (no correction), so that ``B`` keeps full column rank, as
    the program's Woodbury root needs.

    Returns
    -------
    tuple of numpy.ndarray
        The diagonal ``D`` ``(P,)``, the basis ``B`` ``(P, rank)`` and ``E`` ``(rank,)`` (at
        least -1).
    """
    P = len(info)
    if not 0 < rank <= P:
        raise PluralstanError(f"rank must lie in 1..{P} (the attributes), got {rank!r}")
    d = np.clip(np.diag(info), 0.0, None)
    seen, unseen = np.flatnonzero(d > 0), np.flatnonzero(d <= 0)
    root = np.sqrt(d[seen])
    lam, vectors = np.linalg.eigh(info[np.ix_(seen, seen)] / np.outer(root, root))
    pick = np.argsort(-np.abs(np.log(np.clip(lam, 1e-12, None))), kind="stable")[:rank]
    basis, eigen = np.zeros((P, rank)), np.zeros(rank)
    basis[seen, :len(pick)] = root[:, None] * vectors[:, pick]
    eigen[:len(pick)] = np.clip(lam[pick] - 1.0, -1.0, None)
    basis[unseen[:rank - len(pick)], np.arange(len(pick), rank)] = 1.0
    return d, basis, eigen


def conditional_data(X: Any, counts: np.ndarray, group: np.ndarray, K: int,
                     prior_mean: np.ndarray, prior_sd: np.ndarray,
                     rank: int | None = None) -> dict[str, Any]:
    """Stan data of the conditional parametrisation (``centring="conditional"``, or
    ``"conditional-low-rank"`` with ``rank``).

    The program approximates group ``k``'s log likelihood by a normal with information ``I_k``
    and linear term ``b_k`` (``-theta' I_k theta / 2 + b_k' theta``), and samples ``theta_k``
    as the mean of its conditional posterior given ``mu`` and ``tau`` under that approximation
    plus the Cholesky square root of its covariance times ``z_k`` (Christensen, Roberts & Skold
    2006; the program's header). From the pilot (:func:`group_pilots`), a mode ``m_k`` of the
    likelihood times the prior ``normal(prior_mean, prior_sd)`` (precision ``D``) solves
    ``I_k (t_k - m_k) = D (m_k - prior_mean)`` for the likelihood's own maximum ``t_k``, so
    ``b_k = I_k t_k = (I_k + D) m_k - D prior_mean``, which needs no inverse of ``I_k`` (singular
    when a group never sees an attribute). The approximation only sets the sampler's
    geometry: the program states the prior on ``theta_k`` with the map's Jacobian, so the
    posterior is exact whatever the pilot. With ``rank``, each ``I_k`` is passed as its diagonal
    plus a correction of that rank (:func:`low_rank_information`), which the program roots in
    ``O(P rank^2)``; ``b_k`` is the whole information's.
    """
    modes, infos = group_pilots(X, counts, group, K, prior_mean, prior_sd)
    precision = 1.0 / np.square(prior_sd)
    P = modes.shape[1]
    scores = np.einsum("kpq,kq->kp", infos, modes) + precision * (modes - prior_mean)
    if rank is None:
        return {"conditional": 1, "pilot_info": infos, **low_rank_off(P),
                "pilot_score": scores}
    d, basis, eigen = zip(*(low_rank_information(info, min(rank, P)) for info in infos),
                          strict=True)
    return {"conditional": 2, "pilot_info": np.zeros((0, P, P)), "pilot_rank": len(eigen[0]),
            "pilot_info_diagonal": np.array(d), "pilot_info_basis": np.array(basis),
            "pilot_info_eigen": np.array(eigen), "pilot_score": scores}


def low_rank_off(P: int) -> dict[str, Any]:
    """The low-rank pilot data, empty (any parametrisation but ``"conditional-low-rank"``)."""
    return {"pilot_rank": 0, "pilot_info_diagonal": np.zeros((0, P)),
            "pilot_info_basis": np.zeros((0, P, 0)), "pilot_info_eigen": np.zeros((0, 0))}


def centring_weights(X: Any, counts: np.ndarray, group: np.ndarray, K: int,
                     prior_mean: np.ndarray, prior_sd: np.ndarray,
                     tau_sd: np.ndarray) -> np.ndarray:
    """Weights ``w`` of the centred form, per group and attribute, from a pilot of the data.

    Under ``theta_k ~ normal(mu, tau)`` the centred form samples well when group ``k``'s
    judgements pin ``theta_k`` down more tightly than ``tau`` spreads the groups, the
    non-centred form when they do not (Betancourt & Girolami 2015). For a normal likelihood
    with standard error ``s`` the weight ``w = tau^2 / (tau^2 + s^2)`` makes ``z_k`` and ``mu``
    independent a posteriori (Papaspiliopoulos, Roberts & Skold 2007; Gorinova, Moore & Hoffman
    2020). Here, per attribute:

    1. each group's ``theta_k`` is estimated on its own (:func:`pluralstan.ml.penalised_mode`:
       posterior mode under the unpooled prior ``normal(prior_mean, prior_sd)``, with the
       Fisher information ``I_k`` of the group's decided judgements there);
    2. ``tau^2`` is estimated by moments: the variance of those estimates across groups, at
       the lower end of its one-sided ``TAU_LOWER`` (90%) chi-square interval on ``K - 1``
       degrees of freedom, minus their mean sampling variance (floored at 0); with one group,
       ``tau_sd`` stands in. The lower end, because the two errors cost differently: too
       little centring makes the sampler slower, too much lets ``tau`` reach values where
       a centred coefficient funnels and the sampler diverges;
    3. ``w`` is the share of ``tau^2`` that the group's data remove,
       ``1 - diag((I_k + diag(tau^-2))^-1) / tau^2`` (0 where ``tau`` is estimated as 0: the
       groups look alike, the hierarchy can shrink them together, and only the non-centred
       form samples that funnel).

    Parameters
    ----------
    X
        ``(C, P)`` design of the cells (dense or SciPy sparse).
    counts
        ``(C, >= 2)`` counts per cell: b preferred, a preferred[, tie].
    group
        ``(C,)`` 0-based group of each cell.
    K
        Number of groups.
    prior_mean, prior_sd
        ``(P,)`` the unpooled prior of a group's ``theta`` for the pilot (the model's prior of
        ``mu``).
    tau_sd
        ``(P,)`` the scale of ``tau`` used when ``K = 1``.

    Returns
    -------
    numpy.ndarray
        ``(K, P)`` weights in ``[0, 1]``.
    """
    precision = np.diag(1.0 / np.square(prior_sd))
    modes, infos = group_pilots(X, counts, group, K, prior_mean, prior_sd)
    if K > 1:
        sampling_var = [np.diag(np.linalg.inv(info + precision)) for info in infos]
        spread = np.var(modes, axis=0, ddof=1) * (K - 1) / stats.chi2.ppf(TAU_LOWER, K - 1)
        tau2 = np.maximum(spread - np.mean(sampling_var, axis=0), 0.0)
    else:
        tau2 = np.square(tau_sd)
    positive = tau2 > 0
    safe = np.where(positive, tau2, 1.0)
    w = [np.where(positive, 1.0 - np.diag(np.linalg.inv(info + np.diag(1.0 / safe))) / safe,
                  0.0)
         for info in infos]
    return np.clip(np.array(w), 0.0, 1.0)


def centring_data(centring: Any, cells: Any, K: int, priors: dict[str, np.ndarray],
                  partial: bool) -> dict[str, Any]:
    """The Stan data of ``encode``'s ``centring`` argument, checked: the ``(K, P)`` weights
    ``centring`` and the conditional parametrisation's ``conditional`` and ``pilot_*`` data
    (empty unless ``centring`` is ``"conditional"`` or ``"conditional-low-rank"``)."""
    P = len(priors["prior_tau_sd"])
    off = {"conditional": 0, "pilot_info": np.zeros((0, P, P)), **low_rank_off(P),
           "pilot_score": np.zeros((0, P))}
    pilot = (cells.X, cells.counts, cells.group, K, priors["prior_theta_mean"],
             priors["prior_theta_sd"])
    if not partial:
        return {"centring": np.zeros((K, P)), **off}
    if centring is None:
        centring = ("conditional" if P <= CONDITIONAL_MAX_ATTRIBUTES
                    else "conditional-low-rank")
    if isinstance(centring, str):
        if centring in ("conditional", "conditional-low-rank"):
            rank = LOW_RANK if centring == "conditional-low-rank" else None
            return {"centring": np.zeros((K, P)), **conditional_data(*pilot, rank=rank)}
        if centring == "auto":
            return {"centring": centring_weights(*pilot, priors["prior_tau_sd"]), **off}
        if centring not in CENTRING:
            raise PluralstanError(f"unknown centring {centring!r}; accepted: 'conditional', "
                                  "'conditional-low-rank', 'auto', "
                                  f"{list(CENTRING)} or weights in [0, 1]")
        return {"centring": np.full((K, P), CENTRING[centring]), **off}
    return {"centring": centring_weight_matrix(centring, K, P), **off}


def centring_weight_matrix(centring: Any, K: int, P: int) -> np.ndarray:
    """Centring weights given as a number or an array, checked and broadcast to ``(K, P)``."""
    w = np.asarray(centring, dtype=float)
    try:
        w = np.broadcast_to(w, (K, P)).copy()
    except ValueError:
        raise PluralstanError(f"centring weights of shape {w.shape} do not broadcast to "
                              f"(groups, attributes) = ({K}, {P})") from None
    if not np.all((w >= 0) & (w <= 1)):
        raise PluralstanError(f"centring weights must lie in [0, 1], got values from "
                              f"{np.nanmin(w):g} to {np.nanmax(w):g}")
    return w


def group_whitening_data(cells: Any, n_out: int, levels: tuple[Hashable, ...],
                         whiten: bool | None, partial: bool) -> dict[str, Any]:
    """Stan data of the QR reparameterisation for the labeled model: one basis per group.

    Without pooling, group ``k``'s ``theta_k`` meets only its own judgements, so it is sampled
    in the whitened basis of its own cells' design (:func:`~pluralstan.models.base.whitening_data`
    on them); ``theta_basis`` is then ``K x P x P``. Under partial pooling the hierarchy's scale
    ``tau``, not the design, shapes the geometry (``centring`` handles it), so nothing is
    whitened. ``whiten=None`` whitens when every group's design allows it.

    Raises
    ------
    PluralstanError
        For ``whiten=True`` with partial pooling, or when a group's design cannot be whitened
        (the message names the group).
    """
    P = cells.X.shape[1]
    off = {"whiten": 0, "theta_basis": np.zeros((0, P, P))}
    if whiten is False:
        return off
    if partial:
        if whiten:
            raise PluralstanError("whiten=True needs pooling='none': under partial pooling the "
                                  "between-group scale tau, not the design, shapes the "
                                  "posterior (see centring)")
        return off
    n = cells.counts[:, :n_out].sum(axis=1)
    bases = []
    for k, level in enumerate(levels):
        rows = np.flatnonzero(cells.group == k)
        try:
            one = whitening_data(cells.X[rows], n[rows], whiten)
        except PluralstanError as err:
            raise PluralstanError(f"group {_plain(level)!r}: {err}") from None
        if not one["whiten"]:
            return off
        bases.append(one["theta_basis"])
    return {"whiten": 1, "theta_basis": np.stack(bases)}


def cell_eta(theta: np.ndarray, data: dict[str, Any]) -> np.ndarray:
    """The program's ``group_eta`` without the position effect, for ``(d, K, P)`` draws of
    ``theta``: row ``c`` of the design times its group's ``theta``, ``(d, C)``."""
    d, K, P = theta.shape
    by_type = np.asarray(design_from_data(data) @ theta.reshape(d * K, P).T).reshape(-1, d, K)
    group = np.asarray(data["group"]) - 1
    return np.take_along_axis(by_type, group[:, None, None], axis=2)[:, :, 0].T


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    pooling: Literal["partial", "none"] = "partial",
    centring: Literal["non-centred", "centred", "auto", "conditional", "conditional-low-rank"]
    | float | np.ndarray | None = None,
    ties: bool | None = None,
    order: bool | None = None,
    whiten: bool | None = None,
    log_lik: str | None = "comparison",
    replicate: bool = True,
) -> Encoded:
    """Encode a labeled comparison table for the labeled K-mixture model.

    Parameters
    ----------
    comps
        The judgements, with a ``group`` column (one label per annotator).
    K
        Number of subgroups; optional (default: the number of label levels). When given it must
        equal that number, and integer labels must be ``0..K-1``.
    priors
        Overrides of :data:`DEFAULT_PRIORS`.
    pooling
        ``"partial"``: ``theta_k ~ normal(mu, tau)``; ``"none"``: independent
        ``theta_k ~ normal(theta_mean, theta_sd)``.
    centring
        Parametrisation of the partially pooled hierarchy: ``"non-centred"``, ``"centred"``,
        ``"auto"`` (weights from the data, :func:`centring_weights`), weights in ``[0, 1]``
        (a number or a ``(K, P)`` array), or ``"conditional"`` (each ``theta_k`` standardised
        by a normal approximation to its conditional posterior given ``mu`` and ``tau``,
        :func:`conditional_data`; non-centred where ``tau`` is small, centred and whitened
        where the data dominate), or ``"conditional-low-rank"`` (the same with each group's
        pilot information as its diagonal plus a rank-:data:`LOW_RANK` correction,
        :func:`low_rank_information`: cost per gradient ~ ``K P LOW_RANK^2``, not ``K P^3``).
        ``None`` (default): ``"conditional"`` up to :data:`CONDITIONAL_MAX_ATTRIBUTES`
        attributes, else ``"conditional-low-rank"``. Every choice is
        the same model; it changes only how well the sampler moves. Ignored under
        ``pooling="none"``.
    ties
        Model ties with Davidson's parameter; default: when the data contain ties.
    order
        Estimate a position effect; default: when the table records presentation order.
    whiten
        Under ``pooling="none"``, sample each group's theta in the whitened basis of its own
        design (the QR reparameterisation, :func:`group_whitening_data`): ``None`` (default)
        when every group's design allows it, ``True`` or ``False`` to force the choice. The
        posterior is the same. Partial pooling is never whitened.
    log_lik, replicate
        The outputs, as in :func:`pluralstan.models.aggregate.encode`
        (:func:`~pluralstan.models.base.cell_outputs`).

    Raises
    ------
    PluralstanError
        For a missing or inconsistent ``group`` column, a ``K`` that does not match the labels,
        an unknown ``pooling`` or ``centring``, invalid priors, or a ``whiten=True`` that
        cannot be honoured.
    """
    if pooling not in POOLING:
        raise PluralstanError(f"unknown pooling {pooling!r}; accepted: {list(POOLING)}")
    levels = check_labels(comps, K)
    p = merge_priors(DEFAULT_PRIORS, priors)
    has_ties, has_order = resolve_ties_order(comps, ties, order)
    cells = comps.cells(by=["group"])
    n_out = 2 + has_ties
    P, G = len(comps.attributes), len(levels)
    outputs = cell_outputs(comps, cells, n_out, log_lik=log_lik, replicate=replicate,
                           eta=cell_eta, theta_ndim=2)
    n_annotators = annotators_per_group(comps)
    partial = int(pooling == "partial")
    prior_data = {**bt_prior_data(p, P),
              "prior_tau_sd": positive(broadcast_prior(p["tau_sd"], P, "tau_sd"), "tau_sd"),
              "prior_pi_alpha": pi_alpha_vector(p["pi_alpha"], G)}
    centring_part = centring_data(centring, cells, G, prior_data, bool(partial))
    data = {
        "C": cells.n_cells,
        "P": P,
        "K": G,
        **design_data(cells.X),
        "order": cells.order,
        "group": cells.group + 1,
        "has_ties": has_ties,
        "has_order": has_order,
        "y": cells.counts[:, :n_out],
        **outputs.data,
        "n_annotators": n_annotators,
        "partial": partial,
        **centring_part,
        **group_whitening_data(cells, n_out, levels, whiten, bool(partial)),
        **prior_data,
        "prior_only": 0,
    }
    coords = {
        "group": [str(v) for v in levels],
        "attribute": list(comps.attributes),
        "cell": np.arange(cells.n_cells),
        "outcome": list(OUTCOMES[:n_out]),
        "comparison": np.arange(comps.n),
        **outputs.coords,
    }
    # mu and tau are zero-length under pooling="none" and then left out of the posterior
    dims = {"theta": ["group", "attribute"], "pi": ["group"], "theta_bar": ["attribute"],
            "y_rep": ["cell", "outcome"], "cell_group": ["cell"], "n_annotators": ["group"],
            "n_annotators_rep": ["group"], "mu": ["attribute"], "tau": ["attribute"],
            "centring": ["group", "attribute"]}
    return Encoded(
        data=data,
        coords=coords,
        dims=dims,
        # the label counts are modelled (n_annotators ~ multinomial(pi)), so they are observed
        # data with a replicate, like the judgement counts
        observed={"y": cells.counts[:, :n_out], "n_annotators": n_annotators},
        constant={"X": cells.X, "order": cells.order, "cell_group": cells.group,
                  "cell_of_row": cells.cell_of_row, "centring": centring_part["centring"]},
        predictive={"y_rep": "y", "n_annotators_rep": "n_annotators"},
        log_lik=outputs.log_lik,
        log_lik_dims=outputs.log_lik_dims,
        drop=("log_p_cell", "log_lik", "z", "mu_coord"),
        derive=outputs.derive,
        optional_scalars=("gamma", "log_nu"),
        # observed labels cannot switch: no latent label dim
        label_dim=None,
        extra_attrs={"K": G, "ties": has_ties, "order_effect": has_order, "pooling": pooling,
                     "group_labels": "observed", "whitened": data["whiten"]},
    )


SPEC = register(
    ModelSpec(
        name="labeled",
        program_file="labeled_bt.stan",
        summary="Labeled K-mixture Bradley-Terry: one theta per observed subgroup label "
        "(partial or no pooling; pi from annotator labels; optional ties and position effect)",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
    )
)

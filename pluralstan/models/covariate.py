"""Covariate-informed mixing: annotator types predicted by annotator features.

``stan/covariate_bt.stan`` is the annotator-level latent-type mixture
(:mod:`pluralstan.models.annotator`) with type shares that depend on the annotator:
``pi_i = softmax(beta w_i)``, a multinomial-logit regression on the annotator covariates
``w_i``. This is the position paper's identification route (ii): covariates tie the latent types
to observable characteristics.

The softmax sees only differences between types, so every column of ``beta`` sums to zero across
the types (no reference type): ``beta[k, q]`` is type ``k``'s deviation from the average type,
and the effects to read are contrasts, ``beta[k, q] - beta[j, q]`` being the change in the log
odds of type ``k`` over type ``j`` per unit of covariate ``q``. This coding is invariant to
relabelling: permuting the types permutes the rows of ``beta`` and nothing else, so
:func:`pluralstan.relabel.relabel` returns draws of the same parameters. The prior is
exchangeable across types, with marginal sd ``intercept_sd`` / ``beta_sd`` for each type's
coefficient (each contrast between two types then has sd ``sqrt(2 K / (K - 1))`` times that;
the derivation is in the header of the Stan program).

Covariates come from ``comps.annotators`` (a table indexed by annotator id) and are encoded by
:func:`encode_covariates`: an intercept, numeric columns standardised (mean 0, sample standard
deviation 1), categorical columns (strings, categoricals, booleans) dummy-coded against a stated
reference level. The encoding is recorded in the ``covariate`` coordinates and in the posterior
attribute ``covariate_encoding``.

Outputs as in the annotator model plus ``beta`` ``("group", "covariate")`` (columns sum to 0),
``pi_annotator`` ``("annotator", "group")`` and ``pi`` ``("group",)``, the average of the
annotators' type shares. :func:`simulate` draws data from exactly this generative model.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, log_softmax, softmax

from ..data import Comparisons
from ..errors import PluralstanError
from ..simulate import attribute_names, option_pairs
from .annotator import (
    CONSTANT_DIMS,
    INTERNAL,
    PYTHON_OUTPUTS,
    Identify,
    constant_data,
    likelihood_data,
    mixture_outputs,
    scale_data,
)
from .annotator import DEFAULT_PRIORS as ANNOTATOR_PRIORS
from .annotator import SCALE_NAMES as ANNOTATOR_SCALE_NAMES
from .base import (
    Encoded,
    ModelSpec,
    broadcast_prior,
    merge_priors,
    positive,
    register,
    scalar_prior,
)

DEFAULT_PRIORS: dict[str, Any] = {
    **{k: v for k, v in ANNOTATOR_PRIORS.items() if k != "pi_alpha"},
    # marginal prior sd of each type's coefficient (columns of beta sum to zero across types)
    "intercept_sd": 1.0,  # softmax intercepts
    "beta_sd": 1.0,  # slopes per standardised / dummy covariate: scalar or one per column
}

#: Name of the intercept in the ``covariate`` coordinates.
INTERCEPT = "intercept"


def encode_covariates(
    table: pd.DataFrame,
    annotators: list[Hashable] | tuple[Hashable, ...],
    reference_levels: Mapping[str, Hashable] | None = None,
) -> tuple[np.ndarray, list[str], dict[str, dict[str, Any]]]:
    """Design matrix of the softmax mixing regression.

    Parameters
    ----------
    table
        Annotator covariates, index = annotator id (as validated by
        :meth:`~pluralstan.data.Comparisons.from_frame`).
    annotators
        Annotator ids in the model's order (rows of the result).
    reference_levels
        Reference level per categorical column; default: the first category of a pandas
        ``Categorical``, else the first level in sorted order (``False`` for booleans).

    Returns
    -------
    W, names, encoding
        ``(I, Q)`` design with an intercept column first; its column names (the ``covariate``
        coordinates: ``"intercept"``, numeric column names, ``"<column>[<level>]"`` dummies);
        and per source column how it was encoded (``kind``, ``mean`` / ``sd`` or ``reference``
        / ``levels``).

    Raises
    ------
    PluralstanError
        For a missing annotator row, a missing value, a constant column, or an unknown
        reference level.
    """
    reference_levels = dict(reference_levels or {})
    unknown = sorted(set(map(str, reference_levels)) - set(map(str, table.columns)))
    if unknown:
        raise PluralstanError(
            f"reference_levels names column {unknown[0]!r}, which is not in the annotator "
            f"table; covariate columns: {list(table.columns)}"
        )
    missing = pd.Index(annotators).difference(table.index)
    if len(missing):
        raise PluralstanError(
            f"annotator {missing[0]!r} has judgements but no row in the annotator table "
            f"({len(missing)} missing)"
        )
    table = table.loc[list(annotators)]
    columns, names = [np.ones(len(table))], [INTERCEPT]
    encoding: dict[str, dict[str, Any]] = {}
    for col in table.columns:
        series = table[col]
        if series.isna().any():
            who = series.index[series.isna().to_numpy()][0]
            raise PluralstanError(
                f"annotator covariate {col!r} is missing for annotator {who!r}; impute or drop "
                "it before fitting"
            )
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values, record = _standardise(series, str(col))
            columns.append(values)
            names.append(str(col))
        else:
            dummies, levels, record = _dummies(series, str(col), reference_levels.get(col))
            columns += dummies
            names += levels
        encoding[str(col)] = record
    return np.column_stack(columns), names, encoding


def _standardise(series: pd.Series, col: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A numeric covariate centred and scaled by its sample standard deviation."""
    values = series.to_numpy(float)
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    if not np.isfinite(values).all() or sd == 0.0:
        raise PluralstanError(
            f"annotator covariate {col!r} is constant or not finite across the annotators; it "
            "cannot inform the mixing weights (drop it)"
        )
    mean = float(values.mean())
    return (values - mean) / sd, {"kind": "numeric", "mean": mean, "sd": sd}


def _dummies(
    series: pd.Series, col: str, reference: Hashable | None
) -> tuple[list[np.ndarray], list[str], dict[str, Any]]:
    """Treatment (dummy) coding of a categorical covariate against a reference level."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        levels = [lev for lev in series.cat.categories if (series == lev).any()]
    else:
        levels = sorted(pd.unique(series), key=lambda v: (str(type(v)), v))
    if len(levels) < 2:
        raise PluralstanError(
            f"annotator covariate {col!r} has a single level {levels[0]!r}; it cannot inform "
            "the mixing weights (drop it)"
        )
    ref = levels[0] if reference is None else reference
    if ref not in levels:
        raise PluralstanError(
            f"reference level {reference!r} for covariate {col!r} does not occur; levels "
            f"present: {[str(v) for v in levels]}"
        )
    others = [lev for lev in levels if lev != ref]
    dummies = [(series == lev).to_numpy(float) for lev in others]
    record = {"kind": "categorical", "reference": str(ref), "levels": [str(v) for v in levels]}
    return dummies, [f"{col}[{lev}]" for lev in others], record


def encode(
    comps: Comparisons,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    *,
    identify: Identify = "none",
    ordered_attribute: str | None = None,
    reference_levels: Mapping[str, Hashable] | None = None,
    ties: bool | None = None,
    order: bool | None = None,
    replicate: bool = True,
    membership: bool = True,
    log_lik: bool = True,
    pi_annotator: bool = True,
    whiten: bool | None = None,
) -> Encoded:
    """Encode a comparison table and its annotator table for covariate-informed mixing.

    Parameters
    ----------
    comps
        The judgements with an annotator covariate table (``Comparisons.from_frame(...,
        annotators=table)``).
    K
        Number of latent types, ``1 <= K <=`` number of annotators.
    priors
        Overrides of :data:`DEFAULT_PRIORS`: ``intercept_sd`` and ``beta_sd`` are the marginal
        prior sd of each type's (sum-to-zero) intercept and slopes; ``beta_sd`` is a scalar or
        one value per encoded covariate column (the ``covariate`` coordinates without the
        intercept).
    identify, ordered_attribute
        ``"none"`` or ``"ordered"`` (theta's coordinate on ``ordered_attribute``, default the
        first attribute, increasing in the type), as in
        :func:`pluralstan.models.annotator.encode`.
    reference_levels
        Reference level per categorical covariate (see :func:`encode_covariates`).
    ties, order, replicate, membership, log_lik, whiten
        As in the annotator model.
    pi_annotator
        Output each annotator's prior type shares ``pi_annotator`` (annotators x K per draw;
        a function of ``beta`` and the covariates). ``pi``, their mean, is always output.

    Raises
    ------
    PluralstanError
        Without an annotator table, for bad covariates, ``K``, ``identify`` or priors.
    """
    if comps.annotators is None:
        raise PluralstanError(
            "the covariate model needs an annotator covariate table: build the comparisons with "
            "Comparisons.from_frame(frame, annotators=table) (index or 'annotator' column = "
            "annotator id); without covariates use model='annotator'"
        )
    p = merge_priors(DEFAULT_PRIORS, priors)
    data, coords, cells, attrs = likelihood_data(
        comps, K, p, identify=identify, ordered_attribute=ordered_attribute, ties=ties,
        order=order, whiten=whiten,
    )
    data["replicate"] = int(replicate)
    data |= PYTHON_OUTPUTS | {"save_pi_annotator": 0}
    W, names, encoding = encode_covariates(comps.annotators, comps.annotator_levels,
                                           reference_levels)
    Q = W.shape[1]
    slopes = positive(broadcast_prior(p["beta_sd"], Q - 1, "beta_sd"), "beta_sd")
    intercept_sd = positive(scalar_prior(p["intercept_sd"], "intercept_sd"), "intercept_sd")
    data |= {
        "Q": Q,
        "W": W,
        "prior_beta_sd": np.concatenate([[intercept_sd], slopes]),
        **unit_scales(data, Q),
    }
    coords["covariate"] = names
    attrs["covariate_encoding"] = json.dumps(encoding)
    constant = constant_data(cells) | {"W": W}
    return Encoded(
        data=data,
        coords=coords,
        dims={
            "theta": ["group", "attribute"],
            "beta": ["group", "covariate"],
            "pi": ["group"],
            "pi_annotator": ["annotator", "group"],
            "membership": ["annotator", "group"],
            "y_rep": ["cell", "outcome"],
            "W": ["annotator", "covariate"],
            **CONSTANT_DIMS,
        },
        observed={"y": cells.counts},
        constant=constant,
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": v["log_lik"]},
        log_lik_dims={"y": ["annotator"]},
        drop=(*INTERNAL, "beta_raw"),
        optional_scalars=("gamma", "log_nu"),
        label_dim="group",
        extra_attrs=attrs,
        derive=partial(derive_outputs, membership=membership, log_lik=log_lik,
                       pi_annotator=pi_annotator),
        scale_names=SCALE_NAMES,
    )


#: The program's free coordinates -> the data holding their scales: the annotator program's,
#: with ``beta_raw`` in place of the shares' ``pi_coord``.
SCALE_NAMES = {"beta_raw": "beta_raw_scale",
               **{k: v for k, v in ANNOTATOR_SCALE_NAMES.items() if k != "pi_coord"}}


def unit_scales(data: Mapping[str, Any], Q: int) -> dict[str, Any]:
    """Stan data of unit scales for every free coordinate (:data:`SCALE_NAMES`)."""
    scales = {k: v for k, v in scale_data(None, data).items() if k != "pi_coord_scale"}
    return {**scales, "beta_raw_scale": np.ones((int(data["K"]) - 1, Q))}


def derive_outputs(values: Mapping[str, np.ndarray], data: Mapping[str, Any], *,
                   membership: bool, log_lik: bool, pi_annotator: bool) -> dict[str, np.ndarray]:
    """The covariate program's per-annotator outputs in Python: ``membership`` and ``log_lik``
    (:func:`~pluralstan.models.annotator.mixture_outputs`) with each annotator's prior shares
    ``softmax(beta w_i)``, and those shares as ``pi_annotator``."""
    beta = values["beta"]
    lead, K = beta.shape[:-2], beta.shape[-2]
    log_shares = log_softmax(np.einsum("dkq,iq->dik", beta.reshape(-1, K, beta.shape[-1]),
                                       np.asarray(data["W"], float)), axis=-1)
    out = mixture_outputs(values, data, lambda at: log_shares[at], membership=membership,
                          log_lik=log_lik)
    if pi_annotator:
        out["pi_annotator"] = np.exp(log_shares).reshape(*lead, *log_shares.shape[1:])
    return out


def simulate(
    thetas: np.ndarray,
    beta: np.ndarray,
    *,
    covariates: pd.DataFrame | None = None,
    n_annotators: int = 100,
    n_pairs: int = 200,
    pairs_per_annotator: int = 20,
    reference_levels: Mapping[str, Hashable] | None = None,
    seed: int | None = None,
) -> Comparisons:
    """Simulate from the generative model of ``stan/covariate_bt.stan``.

    Covariates are encoded with :func:`encode_covariates` (as the fit will encode them), each
    annotator's type is drawn as ``z_i ~ Categorical(softmax(beta w_i))``, and the annotator
    judges ``pairs_per_annotator`` distinct pairs out of ``n_pairs`` (attributes Uniform(0, 1)^d,
    as in :func:`pluralstan.simulate.mixture`) with P(a > b) = logistic((a - b)' theta_{z_i}).
    No ties and no order effect.

    Parameters
    ----------
    thetas
        ``(K, d)`` preference vector of each type.
    beta
        ``(K, Q)`` softmax coefficients on the encoded covariates (intercept first). Only
        differences between types matter (adding a vector to every row leaves the softmax
        unchanged), so any coding will do, e.g. a reference type with a zero row; the truth
        records the equivalent sum-to-zero coefficients the Stan program estimates.
    covariates
        Annotator table, one row per annotator (index = annotator id). Default: one standard
        normal column ``"score"`` for ``n_annotators`` annotators ``0 .. n - 1``.
    n_annotators
        Number of annotators when ``covariates`` is not given.
    n_pairs, pairs_per_annotator
        Size of the pool of option pairs and the number judged by each annotator.
    reference_levels
        Reference levels of categorical covariates (see :func:`encode_covariates`).
    seed
        Seed of the NumPy generator.

    Returns
    -------
    Comparisons
        With the annotator table, the true ``group`` labels in the frame, and ``truth`` holding
        ``theta``, ``beta`` (centred: every column sums to zero across types), ``z``,
        ``pi_annotator`` and ``pi`` (their mean).
    """
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    beta = np.atleast_2d(np.asarray(beta, dtype=float))
    K, d = thetas.shape
    rng = np.random.default_rng(seed)
    if covariates is None:
        covariates = pd.DataFrame({"score": rng.normal(size=n_annotators)},
                                  index=pd.RangeIndex(n_annotators, name="annotator"))
    ids = list(covariates.index)
    W, names, _ = encode_covariates(covariates, ids, reference_levels)
    if beta.shape != (K, W.shape[1]) or not np.isfinite(beta).all():
        raise PluralstanError(
            f"beta must be a finite array of shape (K, Q) = ({K}, {W.shape[1]}) for the "
            f"covariates {names}; got shape {beta.shape}"
        )
    beta = beta - beta.mean(axis=0)
    m = int(pairs_per_annotator)
    if not 1 <= m <= n_pairs:
        raise PluralstanError(f"pairs_per_annotator must lie in 1..{n_pairs}, got {m}")
    pi_ann = softmax(W @ beta.T, axis=1)
    z = np.array([rng.choice(K, p=row) for row in pi_ann])
    A, B = option_pairs(n_pairs, d, rng)
    pair = np.concatenate([rng.permutation(n_pairs)[:m] for _ in ids])
    who = np.repeat(np.arange(len(ids)), m)
    eta = np.einsum("nd,nd->n", A[pair] - B[pair], thetas[z[who]])
    y = rng.uniform(size=pair.size) < expit(eta)
    names_x = attribute_names(d)
    frame = pd.DataFrame({
        "annotator": np.asarray(ids, dtype=object)[who],
        "group": z[who],
        "pair": pair,
        "y": y.astype(float),
        **{f"a_{n}": A[pair, j] for j, n in enumerate(names_x)},
        **{f"b_{n}": B[pair, j] for j, n in enumerate(names_x)},
    })
    truth = {"theta": thetas, "beta": beta, "z": z, "pi_annotator": pi_ann,
             "pi": pi_ann.mean(axis=0)}
    return Comparisons.from_frame(frame, annotators=covariates, truth=truth)


SPEC = register(
    ModelSpec(
        name="covariate",
        program_file="covariate_bt.stan",
        summary="Covariate-informed mixing: annotator-level latent types with type shares "
        "softmax-regressed on annotator covariates",
        encode=encode,
        default_priors=DEFAULT_PRIORS,
        needs_K=True,
    )
)

"""Label switching in latent mixtures: post-hoc relabelling and a switching report.

A mixture with exchangeable latent components has a posterior invariant under the ``K!``
permutations of the component labels. Chains then settle in (or move between) different
labelings, and every label-dependent summary of the raw draws (means of ``theta[k]``, R-hat, ESS)
mixes components (Stan User's Guide, "Problematic posteriors"). Relabelling finds, for each draw,
the permutation that makes the labels agree across draws, then permutes every posterior variable
with a ``group`` dim.

Two published algorithms, each solving the per-draw assignment problem exactly with
:func:`scipy.optimize.linear_sum_assignment`:

``"stephens"``
    Stephens (2000), "Dealing with label switching in mixture models", JRSS B 62(4):795-809,
    Algorithm 2 (the KL algorithm, as in the R package label.switching, Papastamoulis 2016).
    It needs per-draw allocation probabilities ``p[s, i, k] = P(z_i = k | y_i, parameters_s)``,
    which the marginalised Stan programs emit in generated quantities (``alloc`` with dims
    ``(cell, outcome, group)``; each cell-outcome stands for ``y[cell, outcome]`` identical
    judgements, its weight). It alternates between ``Q = mean_s p[s, :, perm_s]`` and, per draw,
    the permutation minimising ``KL(p[s, :, perm_s] || Q)``.
``"pivot"``
    Pivotal reordering of Marin, Mengersen & Robert (2005), "Bayesian modelling and inference
    on mixtures of distributions", Handbook of Statistics 25, section 4.2 (PRA in
    label.switching): take the draw of highest log density as the pivot and give every draw
    the permutation closest to it in the standardised squared distance over all variables with
    a ``group`` dim. It needs no allocation probabilities, so it applies to any model.

No maintained Python package implements either (label.switching is R only), hence this module.
Only the ``posterior`` group is permuted; label-invariant variables and all other groups are
left as they are. The permutations applied are stored in ``sample_stats["label_permutation"]``
(composed over repeated relabellings, so it always maps the relabelled labels to the labels as
sampled); :func:`unrelabel` restores the draws as sampled, also after a NetCDF round trip. A fit's
stored diagnostics are recomputed on the relabelled draws (:func:`pluralstan.diagnostics.check`),
so no table carries a flag that relabelling resolved.

:func:`pluralstan.fit.fit` relabels every latent-type fit by default (``relabel=False`` opts
out), with ``method="auto"``, unless the prior is not exchangeable across components
(:func:`asymmetric_prior`: unequal Dirichlet concentrations label the components, so the
posterior is not label-symmetric and relabelling would override what the prior says).
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from typing import Any, Literal

import arviz as az
import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

from . import _arviz, diagnostics
from .diagnostics import PER_OBSERVATION_DIMS, PERMUTATION, RHAT_MAX
from .errors import PluralstanError
from .models.base import BLOCK_VALUES

Method = Literal["auto", "stephens", "pivot"]

#: Names under which pluralstan's programs emit allocation probabilities: ``alloc``
#: (comparison-level mixtures, per cell and outcome) and ``membership`` (annotator-level).
ALLOCATION_NAMES = ("alloc", "membership")

#: Prior hyperparameters with one value per latent component (keys of a fit's ``priors``
#: attribute, :func:`pluralstan.pipeline.fit_attrs`).
LABEL_PRIORS = ("prior_pi_alpha", "prior_w_alpha")

#: Smallest probability used inside logarithms of the Stephens algorithm.
_TINY = 1e-300


# ---------------------------------------------------------------------- checks and plumbing
def _check_latent(idata: _arviz.Idata, dim: str) -> xr.Dataset:
    """Return the posterior after checking it has a latent label dim."""
    if "posterior" not in _arviz.groups(idata):
        raise PluralstanError("relabelling needs an InferenceData with a 'posterior' group")
    post = _arviz.group(idata, "posterior")
    if dim not in post.dims:
        raise PluralstanError(
            f"the posterior has no {dim!r} dim (dims: {sorted(map(str, post.dims))}); only "
            "mixture models have component labels to switch"
        )
    if post.attrs.get("group_labels") == "observed":
        raise PluralstanError(
            f"the {dim!r} dim of model {post.attrs.get('model', '?')!r} holds observed subgroup "
            "labels, which cannot switch; relabelling applies to latent components"
        )
    return post


def allocation_name(post: xr.Dataset, allocation: str | None = None) -> str | None:
    """The allocation-probability variable: ``allocation``, the fit's ``allocation``
    attribute, or the first of :data:`ALLOCATION_NAMES` in the posterior."""
    if allocation:
        return allocation
    if post.attrs.get("allocation"):
        return str(post.attrs["allocation"])
    return next((name for name in ALLOCATION_NAMES if name in post), None)


def asymmetric_prior(idata: _arviz.Idata) -> str | None:
    """Which per-component prior of a fit is not exchangeable across components, or ``None``.

    A prior with unequal values across components (e.g. ``pi_alpha = [5, 1]``) tells the
    components apart, so the posterior is not invariant under permuting the labels; relabelling
    such a fit would override the labels the prior gives. Reads the fit's ``priors`` attribute
    (:data:`LABEL_PRIORS`) and returns e.g. ``"pi_alpha = [5.0, 1.0]"``.
    """
    priors = json.loads(idata.posterior.attrs.get("priors", "{}") or "{}")
    for name in LABEL_PRIORS:
        values = np.atleast_1d(np.asarray(priors.get(name, []), dtype=float))
        if values.size > 1 and not np.allclose(values, values[0]):
            return f"{name.removeprefix('prior_')} = {values.tolist()}"
    return None


def label_vars(post: xr.Dataset, dim: str = "group") -> list[str]:
    """Posterior variables that carry the label ``dim``."""
    return [str(v) for v, da in post.data_vars.items() if dim in da.dims]


def _flat(da: xr.DataArray, dim: str) -> np.ndarray:
    """``(chain * draw, K, rest)`` array of a labelled variable."""
    other = [d for d in da.dims if d not in ("chain", "draw", dim)]
    arr = da.transpose("chain", "draw", dim, *other).values
    return arr.reshape(arr.shape[0] * arr.shape[1], arr.shape[2], -1)


def permute(idata: _arviz.Idata, perms: np.ndarray, dim: str = "group") -> _arviz.Idata:
    """Apply per-draw permutations to every posterior variable with the label ``dim``.

    Parameters
    ----------
    idata
        The fit.
    perms
        ``(chain, draw, K)`` integer array: after relabelling, component ``k`` of draw ``s`` is the
        raw component ``perms[s, k]``.
    dim
        The label dim.

    Returns
    -------
    arviz.InferenceData
        A new object; the input is not modified.
    """
    post = _arviz.group(idata, "posterior")
    perms = np.asarray(perms)
    K = post.sizes[dim]
    want = (post.sizes["chain"], post.sizes["draw"], K)
    if perms.shape != want or not np.all(np.sort(perms, axis=-1) == np.arange(K)):
        raise PluralstanError(
            f"perms must be a ({want[0]}, {want[1]}, {K}) array of permutations of 0..{K - 1}, "
            f"got shape {perms.shape}"
        )
    new = post.copy()
    for name in label_vars(post, dim):
        da = post[name]
        other = [d for d in da.dims if d not in ("chain", "draw", dim)]
        arr = da.transpose("chain", "draw", dim, *other).values
        index = perms.reshape(*perms.shape, *([1] * len(other)))
        moved = np.take_along_axis(arr, index, axis=2)
        new[name] = da.copy(data=np.moveaxis(
            moved, range(arr.ndim), [da.dims.index(d) for d in ("chain", "draw", dim, *other)]
        ))
    return _arviz.replace_groups(idata, posterior=new)


# ---------------------------------------------------------------------- algorithms
def match_components(fitted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Match fitted components one-to-one to reference components (e.g. the truth).

    Parameters
    ----------
    fitted, reference
        ``(K, ...)`` arrays, one row per component (e.g. posterior-mean ``theta`` and the true
        ``theta``).

    Returns
    -------
    numpy.ndarray
        ``(K,)`` integer array: ``fitted[order]`` lines up with ``reference`` (reference
        component ``k`` is fitted component ``order[k]``), the assignment of least total squared
        distance (:func:`scipy.optimize.linear_sum_assignment`). Entries where ``reference`` is
        NaN (nothing to compare with) are left out: the distance to reference component ``k``
        is then the mean squared difference over ``k``'s known entries.
    """
    fitted = np.asarray(fitted, dtype=float).reshape(len(fitted), -1)
    reference = np.asarray(reference, dtype=float).reshape(len(reference), -1)
    if fitted.shape != reference.shape:
        raise PluralstanError(
            f"cannot match {fitted.shape[0]} fitted components to {reference.shape[0]} reference "
            f"components of shapes {fitted.shape} and {reference.shape}"
        )
    known = ~np.isnan(reference)
    sq = np.where(known[:, None, :], (reference[:, None, :] - fitted[None, :, :]) ** 2, 0.0)
    cost = sq.sum(axis=-1) / np.maximum(known.sum(axis=-1), 1)[:, None]
    _, order = linear_sum_assignment(cost)
    return order


def stephens(p: np.ndarray, weights: np.ndarray | None = None, max_iter: int = 100
             ) -> tuple[np.ndarray, int]:
    """Stephens' (2000) KL relabelling algorithm.

    Parameters
    ----------
    p
        ``(S, n, K)`` allocation probabilities of ``n`` observations in ``S`` draws.
    weights
        ``(n,)`` multiplicity of each observation (default 1).
    max_iter
        Iteration limit; the objective decreases monotonically and stops when no permutation
        changes.

    Returns
    -------
    perms, iterations
        ``(S, K)`` permutations (``p[s, :, perms[s]]`` is the relabelled draw) and the number of
        iterations run.
    """
    S, n, K = p.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if not np.all(w > 0):
        keep = w > 0
        p, w = p[:, keep, :], w[keep]
        n = int(keep.sum())
    perms = np.tile(np.arange(K), (S, 1))
    # p is the largest array of a fit (draws x annotators x types): the relabelled mean is
    # summed over blocks of draws and the weights fold into log q, so no copy of p is made
    step = max(1, BLOCK_VALUES // max(n * K, 1))
    for iteration in range(1, max_iter + 1):
        total = np.zeros((n, K))
        for start in range(0, S, step):
            rows = np.arange(start, min(start + step, S))[:, None]
            total += p[rows, :, perms[rows[:, 0]]].sum(axis=0).T  # sum of p[s, :, perms[s]]
        log_q = np.log(np.maximum(total / S, _TINY))  # (n, K)
        # cost[s, j, k] = -sum_i w_i p[s, i, j] log q[i, k]: raw component j gets label k
        # (the p log p term of the KL divergence does not depend on the permutation)
        cost = -np.einsum("sij,ik->sjk", p, w[:, None] * log_q)
        new = np.empty_like(perms)
        for s in range(S):
            raw, label = linear_sum_assignment(cost[s])
            new[s, label] = raw
        if np.array_equal(new, perms):
            return perms, iteration
        perms = new
    return perms, max_iter


def pivot(values: np.ndarray, pivot_index: int) -> np.ndarray:
    """Pivotal reordering (Marin, Mengersen & Robert 2005).

    Parameters
    ----------
    values
        ``(S, K, m)`` label-dependent quantities of every draw, already standardised.
    pivot_index
        The draw every other is matched to (e.g. the one of highest log density).

    Returns
    -------
    numpy.ndarray
        ``(S, K)`` permutations.
    """
    ref = values[pivot_index]  # (K, m)
    # cost[s, j, k] = ||values[s, j] - ref[k]||^2
    cost = ((values[:, :, None, :] - ref[None, None, :, :]) ** 2).sum(axis=-1)
    perms = np.empty(values.shape[:2], dtype=np.int64)
    for s in range(values.shape[0]):
        raw, label = linear_sum_assignment(cost[s])
        perms[s, label] = raw
    return perms


def _weights(idata: _arviz.Idata, alloc: xr.DataArray, dim: str) -> np.ndarray:
    """Multiplicity of each allocation row: the observed counts with the same dims, else 1."""
    obs_dims = [d for d in alloc.dims if d not in ("chain", "draw", dim)]
    if "observed_data" in _arviz.groups(idata):
        for da in idata.observed_data.data_vars.values():
            if list(da.dims) == obs_dims:
                return da.values.reshape(-1).astype(float)
    return np.ones(int(np.prod([alloc.sizes[d] for d in obs_dims])))


def _pivot_values(post: xr.Dataset, names: list[str], dim: str) -> np.ndarray:
    """Standardised label-dependent values, ``(S, K, m)``, for pivotal reordering."""
    blocks = []
    for name in names:
        arr = _flat(post[name], dim)
        scale = arr.std(axis=(0, 1), keepdims=True)  # over draws and components: label-free
        blocks.append((arr - arr.mean(axis=(0, 1), keepdims=True)) / np.where(scale > 0, scale, 1))
    return np.concatenate(blocks, axis=-1)


def relabel(
    idata: _arviz.Idata,
    *,
    method: Method = "auto",
    allocation: str | None = None,
    var_names: list[str] | None = None,
    dim: str = "group",
    max_iter: int = 100,
) -> tuple[_arviz.Idata, xr.DataArray]:
    """Relabel the latent components of a mixture fit draw by draw.

    Parameters
    ----------
    idata
        A fit whose posterior has a latent label dim (``group``).
    method
        ``"stephens"`` (needs allocation probabilities), ``"pivot"``, or ``"auto"``: Stephens
        when the posterior holds allocation probabilities, else pivot.
    allocation
        Name of the allocation-probability variable (default: :func:`allocation_name`); its
        last dim is ``dim``.
    var_names
        Pivot method: the variables to match on (default: every variable with ``dim`` except the
        allocation probabilities).
    dim
        The label dim.
    max_iter
        Iteration limit of the Stephens algorithm.

    Returns
    -------
    relabelled, permutations
        A new InferenceData whose posterior variables with ``dim`` are permuted (the input is
        unchanged; ``posterior.attrs["relabelling"]`` records the method), and the
        ``(chain, draw, dim)`` permutations of this call: relabelled component ``k`` of a draw
        is the input's component ``permutations[chain, draw, k]``. The permutations from the
        draws as sampled (composed with earlier relabellings) are stored in
        ``sample_stats["label_permutation"]`` (see :func:`unrelabel`); a stored diagnostics
        record is recomputed on the relabelled draws.

    Raises
    ------
    PluralstanError
        When the fit has no latent label dim, its labels are observed, or the chosen method
        lacks what it needs.
    """
    post = _check_latent(idata, dim)
    alloc_name = allocation_name(post, allocation)
    if method == "auto":
        method = "stephens" if alloc_name in post else "pivot"
    n_chain, n_draw, K = post.sizes["chain"], post.sizes["draw"], post.sizes[dim]
    if method == "stephens":
        if alloc_name not in post or post[alloc_name].dims[-1] != dim:
            raise PluralstanError(
                f"method='stephens' needs allocation probabilities: a posterior variable "
                f"({alloc_name or ' or '.join(ALLOCATION_NAMES)}) whose last dim is {dim!r}; "
                "this fit has none (use method='pivot')"
            )
        alloc = post[alloc_name]
        other = [d for d in alloc.dims if d not in ("chain", "draw", dim)]
        # (S, n, K): a view of the variable in its own layout (chain, draw, ..., dim)
        p = alloc.transpose("chain", "draw", *other, dim).values.reshape(n_chain * n_draw, -1, K)
        flat, iterations = stephens(p, _weights(idata, alloc, dim), max_iter)
        detail: dict[str, Any] = {"iterations": iterations, "allocation": alloc_name}
    elif method == "pivot":
        names = var_names or [v for v in label_vars(post, dim) if v != alloc_name]
        unknown = [v for v in names if v not in post or dim not in post[v].dims]
        if unknown or not names:
            raise PluralstanError(
                f"pivot relabelling needs posterior variables with a {dim!r} dim; "
                f"{unknown or 'none'} given, available: {label_vars(post, dim)}"
            )
        lp = _log_density(idata)
        at = int(np.argmax(lp)) if lp is not None else 0
        flat = pivot(_pivot_values(post, names, dim), at)
        detail = {"pivot_draw": at, "var_names": names}
    else:
        raise PluralstanError(f"unknown method {method!r}; accepted: 'auto', 'stephens', 'pivot'")
    perms = flat.reshape(n_chain, n_draw, K)
    out = permute(idata, perms, dim)
    moved = float(np.mean(np.any(perms != np.arange(K), axis=-1)))
    out.posterior.attrs["relabelling"] = json.dumps(
        {"method": method, "dim": dim, "fraction_permuted": moved, **detail}
    )
    perm_da = xr.DataArray(
        perms, dims=("chain", "draw", dim),
        coords={"chain": post["chain"], "draw": post["draw"], dim: post[dim]},
        name="permutation",
    )
    out = _store_permutation(out, _composed(idata, perms, dim), perm_da)
    _recheck(out, dim)
    return out, perm_da


def _composed(idata: _arviz.Idata, perms: np.ndarray, dim: str) -> np.ndarray:
    """Permutations from the draws as sampled: earlier relabellings followed by ``perms``."""
    if "sample_stats" in _arviz.groups(idata) and PERMUTATION in idata.sample_stats:
        before = idata.sample_stats[PERMUTATION].transpose("chain", "draw", dim).values
        return np.take_along_axis(before, perms, axis=-1)
    return perms


def _store_permutation(out: _arviz.Idata, perms: np.ndarray | None,
                       like: xr.DataArray) -> _arviz.Idata:
    """``out`` with ``perms`` in ``sample_stats`` (or, for ``None``, without the record)."""
    stats = _arviz.group(out, "sample_stats")
    if perms is None:
        if stats is None:
            return out
        return _arviz.replace_groups(
            out, sample_stats=stats.drop_vars([PERMUTATION, like.dims[-1]], errors="ignore"))
    da = like.copy(data=perms.astype(np.int64))
    stats = xr.Dataset({PERMUTATION: da}) if stats is None else stats.assign({PERMUTATION: da})
    return _arviz.replace_groups(out, sample_stats=stats)


def _recheck(out: _arviz.Idata, dim: str) -> None:
    """Recompute a stored diagnostics record on ``out``'s draws and drop a stale
    label-switching report (so no table carries a flag for draws that changed).

    A stacked fit's record (:func:`pluralstan.pipeline.stack_modes`) is kept: it judges each
    mode on its own chains, kept as sampled in the ``unstacked_`` groups, whereas a check of
    the one stacked chain would replace it with a record that cannot see the modes.
    """
    out.posterior.attrs.pop("label_switching", None)
    previous = diagnostics.recorded(out)
    if any(str(n).startswith(diagnostics.STACKED) for n in previous.get("notes", [])):
        return  # judged mode by mode on the chains as sampled, which relabelling leaves alone
    if previous:
        names = previous.get("var_names") or diagnostics.parameter_names(out)
        diagnostics.check(out, var_names=names, warn=False, dim=dim)


def unrelabel(idata: _arviz.Idata, dim: str = "group") -> _arviz.Idata:
    """The draws as sampled, from a fit relabelled by :func:`relabel` (or :func:`pluralstan.fit`).

    Undoes the permutations stored in ``sample_stats["label_permutation"]`` (which survives
    :func:`pluralstan.fit.save` / :func:`pluralstan.fit.load`), removes them and the
    ``relabelling`` attribute, and recomputes a stored diagnostics record. A fit that was never
    relabelled is returned unchanged.
    """
    if "sample_stats" not in _arviz.groups(idata) or PERMUTATION not in idata.sample_stats:
        return idata
    perms = idata.sample_stats[PERMUTATION]
    out = permute(idata, np.argsort(perms.transpose("chain", "draw", dim).values, axis=-1), dim)
    out = _store_permutation(out, None, perms)
    out.posterior.attrs.pop("relabelling", None)
    _recheck(out, dim)
    return out


def _log_density(idata: _arviz.Idata) -> np.ndarray | None:
    """Flattened ``lp`` of every draw, when the sampler recorded it."""
    if "sample_stats" in _arviz.groups(idata) and "lp" in idata.sample_stats:
        return idata.sample_stats["lp"].transpose("chain", "draw").values.reshape(-1)
    return None


# ---------------------------------------------------------------------- report
def _max_rhat(ds: xr.Dataset, names: list[str]) -> dict[str, float | None]:
    """Largest R-hat of each variable (``None`` when undefined, e.g. constant)."""
    out: dict[str, float | None] = {}
    if not names or ds.sizes.get("chain", 0) < 2:
        return out
    rhat = az.rhat(ds[names])
    for name in names:
        vals = np.asarray(rhat[name].values, dtype=float)
        out[name] = float(np.nanmax(vals)) if np.isfinite(vals).any() else None
    return out


def _is_parameter(da: xr.DataArray) -> bool:
    """Whether a variable is parameter-like (no per-observation dim such as ``cell``)."""
    return not set(map(str, da.dims)) & set(PER_OBSERVATION_DIMS)


def _worst(rhats: dict[str, float | None]) -> tuple[float, str]:
    finite = {k: v for k, v in rhats.items() if v is not None}
    if not finite:
        return np.nan, ""
    name = max(finite, key=finite.__getitem__)
    return finite[name], name


def label_switching_report(
    idata: _arviz.Idata,
    *,
    method: Method = "auto",
    dim: str = "group",
    record: bool = True,
    rhat_max: float = RHAT_MAX,
    **kwargs: Any,
) -> dict[str, Any]:
    """Diagnose label switching and the multimodality it can hide.

    Relabels the draws as sampled (those of :func:`unrelabel`: a fit that
    :func:`pluralstan.fit.fit` already relabelled is reported on from its raw draws), then
    reports per chain the dominant permutation and
    how often draws left it, whether chains settled in different permutations, and the largest
    R-hat of (a) the raw label-dependent variables, (b) the same after relabelling and (c) the
    label-invariant posterior variables (no ``dim``, e.g. ``p_agg`` and ``theta_bar``) and the
    log density. Problems are judged on parameter-like variables, as
    :func:`pluralstan.diagnostics.check` does; per-observation allocation probabilities are left
    out and label-invariant predictions such as ``p_agg`` are reported only. Raw R-hat failures
    that vanish after relabelling are label switching, reported as notes (relabelling resolves
    them); failures that survive relabelling, or that affect label-invariant quantities, are
    genuine disagreement between chains (a multimodal, poorly identified posterior), reported
    as problems.

    Parameters
    ----------
    idata
        A fit with a latent label dim.
    method, dim, **kwargs
        Passed to :func:`relabel`.
    record
        Store the report as JSON in ``idata.posterior.attrs["label_switching"]``, where
        :func:`pluralstan.diagnostics.failed` reads its ``problems``.
    rhat_max
        R-hat threshold (default :data:`pluralstan.diagnostics.RHAT_MAX`).

    Returns
    -------
    dict
        Keys ``method``, ``chains`` (per chain: ``dominant_permutation``, ``fraction``,
        ``switches``), ``chains_disagree``, ``rhat`` (``raw``, ``relabelled``,
        ``label_invariant``: variable -> max R-hat), ``problems`` and ``notes``.
    """
    _check_latent(idata, dim)
    sampled = unrelabel(idata, dim)
    post = _arviz.group(sampled, "posterior")
    relabelled, perms = relabel(sampled, method=method, dim=dim, **kwargs)
    chains: dict[str, dict[str, Any]] = {}
    dominant = []
    for c, chain in enumerate(post["chain"].values):
        seq = [tuple(int(v) for v in row) for row in perms.values[c]]
        best, count = Counter(seq).most_common(1)[0]
        dominant.append(best)
        switches = int(sum(a != b for a, b in pairwise(seq)))
        chains[str(chain)] = {"dominant_permutation": list(best),
                              "fraction": count / len(seq), "switches": switches}
    disagree = len(set(dominant)) > 1
    # Problems are judged on parameters, as diagnostics.check does: per-observation quantities
    # (allocation probabilities, per-cell predictions) are functions of them, and the maximum
    # R-hat over thousands of coordinates exceeds any threshold by chance alone. Label-invariant
    # predictions (e.g. p_agg) are still reported, for information.
    labelled = [v for v in label_vars(post, dim) if _is_parameter(post[v])]
    invariant = [str(v) for v, da in post.data_vars.items()
                 if dim not in da.dims and float(da.std()) > 0]
    inv_ds = post[invariant]
    if "sample_stats" in _arviz.groups(sampled) and "lp" in sampled.sample_stats:
        inv_ds = inv_ds.assign(lp=sampled.sample_stats["lp"])
        invariant = [*invariant, "lp"]
    rhat = {
        "raw": _max_rhat(post, labelled),
        "relabelled": _max_rhat(_arviz.group(relabelled, "posterior"), labelled),
        "label_invariant": _max_rhat(inv_ds, invariant),
    }
    judged = {k: v for k, v in rhat["label_invariant"].items() if _is_parameter(inv_ds[k])}
    problems, notes = [], []
    if disagree:
        listing = ", ".join(f"chain {c}: {tuple(v['dominant_permutation'])}"
                            for c, v in chains.items())
        notes.append(
            f"chains settled in different label permutations ({listing}): label-dependent "
            "summaries of the raw draws mix components; relabelling resolves it"
        )
    for c, v in chains.items():
        if v["switches"]:
            notes.append(f"chain {c} switched labels {v['switches']} times "
                         f"({1 - v['fraction']:.0%} of draws away from its dominant permutation)")
    worst, at = _worst(rhat["relabelled"])
    if worst > rhat_max:
        problems.append(
            f"after relabelling, R-hat {worst:.3f} > {rhat_max} for {at}: chains disagree beyond "
            "a label permutation (several modes or a poorly identified component; compare the "
            "chains' relabelled means before summarising)"
        )
    worst, at = _worst(judged)
    if worst > rhat_max:
        problems.append(
            f"R-hat {worst:.3f} > {rhat_max} for the label-invariant {at}: the chains disagree "
            "about the fit itself, not only about labels"
        )
    raw, _ = _worst(rhat["raw"])
    rel, _ = _worst(rhat["relabelled"])
    if raw > rhat_max >= rel:
        notes.append(f"raw R-hat {raw:.3f} falls to {rel:.3f} after relabelling: pure label "
                     "switching")
    report = {
        "method": json.loads(relabelled.posterior.attrs["relabelling"])["method"],
        "chains": chains,
        "chains_disagree": disagree,
        "rhat": rhat,
        "problems": problems,
        "notes": notes,
    }
    if record:
        idata.posterior.attrs["label_switching"] = json.dumps(report)
    return report

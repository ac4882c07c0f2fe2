"""Model comparison by PSIS-LOO: per judgement and leave-one-annotator-out.

Two units of prediction:

``"comparison"``
    Leave one judgement out: ArviZ's PSIS-LOO on the per-judgement log likelihood that
    comparison-level models store (dim ``comparison``).
``"annotator"``
    Leave one annotator out (LOAO): predict all of a held-out person's judgements, the relevant
    question for mixtures whose components are people. Annotator-level models store one log
    likelihood value per annotator; for comparison-level models the judgements are conditionally
    independent given the parameters, so an annotator's log likelihood is the *exact* sum of
    their judgements' values (:func:`annotator_log_likelihood`).

Importance sampling is unreliable for observations with Pareto k above ArviZ's threshold
(``min(1 - 1/log10(S), 0.7)``); every function here counts them, names them and warns
(:class:`~pluralstan.errors.DiagnosticWarning`), because an ELPD difference resting on them is
not trustworthy (refit without them or use K-fold cross-validation).

:func:`kfold_K` is that K-fold cross-validation for the annotator latent-type model: each fold's
annotators are left out of the likelihood of one refit (``held_out``) and scored by it, so every
annotator's predictive density comes from a posterior that never saw them, with no importance
sampling (Vehtari, Gelman & Gabry 2017, section 4). A refit's predictive density is a mean over
its draws; :func:`held_out_lpd` states its Monte Carlo standard error, which the table sums.

:func:`mixture_loo_K` estimates the same leave-one-annotator-out densities from one fit per K,
without refits: the fit samples the mixture of the leave-one-out posteriors (Silva & Zanella
2022, arXiv:2209.09190; the annotator program's ``loo_mixture``), from which the importance
weights to each leave-one-out posterior are bounded, so the estimates have finite variance
where PSIS-LOO's Pareto k says they may not. The mixture's components are weighted to share it
evenly among the annotators (:func:`mixture_weights`): unweighted, it is dominated by the
annotators whose judgements are least predictable, since the mass of annotator i's
component is proportional to ``1 / p(y_i | y_-i)``, which spans many orders of magnitude when
annotators make different numbers of judgements. :func:`mixture_lpd` is the estimator with its
Monte Carlo standard error. ArviZ and loo implement PSIS-LOO and its moment matching, not this
estimator, hence the few lines here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.sparse import csr_matrix
from scipy.special import logsumexp

from .. import _arviz, diagnostics
from ..data import Comparisons
from ..errors import DiagnosticWarning, PluralstanError

__all__ = [
    "annotator_log_likelihood",
    "compare_K",
    "compare_models",
    "held_out_lpd",
    "kfold_K",
    "loo",
    "mixture_loo_K",
    "mixture_lpd",
    "mixture_weights",
    "pareto_k_table",
]

Level = Literal["comparison", "annotator"]


def annotator_log_likelihood(
    idata: _arviz.Idata, comps: Comparisons | None = None, var_name: str = "y"
) -> _arviz.Idata:
    """The fit with its log likelihood summed per annotator (dim ``annotator``).

    Parameters
    ----------
    idata
        A fit; a log likelihood already per annotator is returned unchanged.
    comps
        The table the model was fitted to (needed to map judgements to annotators).
    var_name
        The log-likelihood variable.

    Returns
    -------
    InferenceData or DataTree
        The installed ArviZ's container (:data:`pluralstan._arviz.Idata`), a shallow copy
        whose ``log_likelihood[var_name]`` has dims ``(chain, draw, annotator)``,
        annotators in order of first appearance in ``comps``.
    """
    ll = _log_lik(idata, var_name)
    if "annotator" in ll.dims:
        return idata
    if comps is None:
        raise PluralstanError(
            "leave-one-annotator-out for a comparison-level fit needs the comparison table "
            "(comps=) to know who made each judgement"
        )
    if ll.sizes.get("comparison") != comps.n:
        raise PluralstanError(
            f"the fit's log likelihood has {ll.sizes.get('comparison')} judgements but the "
            f"table has {comps.n}; pass the table the model was fitted to"
        )
    codes = comps.codes("annotator")
    levels = list(comps.annotator_levels)
    member = csr_matrix((np.ones(comps.n), (np.arange(comps.n), codes)),
                        shape=(comps.n, len(levels)))
    flat = ll.transpose("chain", "draw", "comparison").to_numpy().reshape(-1, comps.n)
    summed = np.asarray((member.T @ flat.T).T).reshape(ll.sizes["chain"], ll.sizes["draw"], -1)
    da = xr.DataArray(summed, dims=("chain", "draw", "annotator"),
                      coords={"chain": ll["chain"].values, "draw": ll["draw"].values,
                              "annotator": levels}, attrs=ll.attrs)
    attrs = _arviz.group(idata, "log_likelihood").attrs
    return _arviz.replace_groups(idata, log_likelihood=xr.Dataset({var_name: da}, attrs=attrs))


def _log_lik(idata: _arviz.Idata, var_name: str) -> xr.DataArray:
    log_lik = _arviz.group(idata, "log_likelihood")
    if log_lik is None or var_name not in log_lik:
        raise PluralstanError(
            f"the fit has no log_likelihood variable {var_name!r}; PSIS-LOO needs the "
            "pointwise log likelihood that pluralstan.fit stores (refit without log_lik=False)"
        )
    return log_lik[var_name]


def _at_level(idata: _arviz.Idata, level: Level, comps: Comparisons | None,
              var_name: str) -> _arviz.Idata:
    if level not in ("comparison", "annotator"):
        raise PluralstanError(f"level must be 'comparison' or 'annotator', got {level!r}")
    ll = _log_lik(idata, var_name)
    if level == "annotator":
        return _arviz.native(annotator_log_likelihood(idata, comps, var_name))
    if "comparison" not in ll.dims:
        raise PluralstanError(
            f"this fit's log likelihood has dims {ll.dims}, not per judgement: compare it at "
            "level='annotator' (comparison-level fits are summed per annotator exactly)"
        )
    return _arviz.native(idata)


def pareto_k_table(elpd: Any, comps: Comparisons | None = None) -> pd.DataFrame:
    """Observations whose Pareto k exceeds the reliability threshold (or is undefined), worst
    first.

    ``elpd`` is an ``az.loo(..., pointwise=True)`` result of either ArviZ line.

    Returns
    -------
    pandas.DataFrame
        ``observation`` (the coordinate: judgement index or annotator id), ``pareto_k`` and,
        for judgements when ``comps`` is given, their ``annotator`` and ``pair``.
    """
    k = elpd.pareto_k
    # a NaN k (ArviZ 1 gives one when the tail fit fails) is as unreliable as a large one
    bad = k.where((k > elpd.good_k) | k.isnull(), drop=True)
    dim = k.dims[0]
    table = pd.DataFrame({"observation": bad[dim].values, "pareto_k": bad.values})
    if comps is not None and dim == "comparison":
        rows = table["observation"].to_numpy(dtype=int)
        table["annotator"] = comps.frame["annotator"].to_numpy()[rows]
        if "pair" in comps.frame:
            table["pair"] = comps.frame["pair"].to_numpy()[rows]
    return table.sort_values("pareto_k", ascending=False, ignore_index=True)


def _warn_k(name: str, elpd: Any, table: pd.DataFrame, level: Level) -> None:
    if len(table):
        shown = ", ".join(str(o) for o in table["observation"].head(10))
        more = " ..." if len(table) > 10 else ""
        warnings.warn(
            f"{name}: {len(table)} of {elpd.n_data_points} {level} observations have Pareto k "
            f"> {elpd.good_k:.2f} ({level} {shown}{more}); PSIS-LOO is unreliable for them: "
            "refit leaving them out or use K-fold cross-validation",
            DiagnosticWarning,
            stacklevel=3,
        )


def loo(
    idata: _arviz.Idata,
    *,
    level: Level = "comparison",
    comps: Comparisons | None = None,
    var_name: str = "y",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PSIS-LOO of one fit, per judgement or per annotator.

    Returns
    -------
    summary, high_k
        ``summary``: one row with ``elpd``, ``se``, ``p_loo``, ``n_observations``, ``level``,
        ``n_high_k``, ``good_k`` and the fit's diagnostic ``flag``; ``high_k``: the
        :func:`pareto_k_table` of the observations above the threshold (also raised as a
        :class:`~pluralstan.errors.DiagnosticWarning`).
    """
    data = _at_level(idata, level, comps, var_name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pareto.*", category=UserWarning)
        elpd = az.loo(data, pointwise=True, var_name=var_name)
    high = pareto_k_table(elpd, comps)
    _warn_k(idata["posterior"].attrs.get("model", "fit"), elpd, high, level)
    value, se, p_loo = _arviz.elpd(elpd)
    summary = pd.DataFrame([{
        "elpd": value, "se": se, "p_loo": p_loo,
        "n_observations": int(elpd.n_data_points), "level": level, "n_high_k": len(high),
        "good_k": float(elpd.good_k), "flag": diagnostics.flag(idata),
    }])
    return summary, high


def compare_models(
    fits: Mapping[str, _arviz.Idata],
    *,
    level: Level = "comparison",
    comps: Comparisons | None = None,
    var_name: str = "y",
) -> pd.DataFrame:
    """``az.compare`` table of several fits of the same judgements, with Pareto-k columns.

    Parameters
    ----------
    fits
        Name -> fit (e.g. ``{"aggregate": ..., "labeled": ...}``), all of the same data.
    level
        ``"comparison"`` (leave one judgement out) or ``"annotator"`` (leave one annotator out;
        needed whenever one of the fits has an annotator-level likelihood).
    comps
        The comparison table (needed for ``level="annotator"`` and to name flagged judgements).

    Returns
    -------
    pandas.DataFrame
        The comparison table of :func:`pluralstan._arviz.compare` (rank, elpd_loo, p_loo,
        elpd_diff >= 0, stacking weight, se, dse, warning; the same columns on either ArviZ) plus
        ``n_high_k``, ``good_k`` (the Pareto k threshold ``n_high_k`` counts above, which
        depends on the number of draws), ``high_k`` (the first flagged observations) and
        ``flag``.
    """
    if len(fits) < 2:
        raise PluralstanError(f"compare at least two fits, got {len(fits)}")
    data = {name: _at_level(f, level, comps, var_name) for name, f in fits.items()}
    sizes = {name: int(np.prod([s for d, s in _log_lik(d, var_name).sizes.items()
                                if d not in ("chain", "draw")]))
             for name, d in data.items()}
    if len(set(sizes.values())) > 1:
        raise PluralstanError(
            f"the fits have different numbers of {level} observations {sizes}; PSIS-LOO "
            "comparisons need the same observations"
        )
    extra = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pareto.*", category=UserWarning)
        for name, d in data.items():
            elpd = az.loo(d, pointwise=True, var_name=var_name)
            high = pareto_k_table(elpd, comps)
            extra[name] = (len(high), ", ".join(str(o) for o in high["observation"].head(10)),
                           elpd, high)
        table = _arviz.compare(data, var_name=var_name)
    for name, (_, _, elpd, high) in extra.items():
        _warn_k(name, elpd, high, level)
    table["n_high_k"] = [extra[n][0] for n in table.index]
    table["good_k"] = [float(extra[n][2].good_k) for n in table.index]
    table["high_k"] = [extra[n][1] for n in table.index]
    table["flag"] = [diagnostics.flag(fits[n]) for n in table.index]
    table.attrs["level"] = level
    return table


#: The columns of a comparison that reports show beside their own (see :func:`compare_K`).
SUMMARY_COLUMNS = ["elpd_loo", "se", "elpd_diff", "dse", "n_high_k"]


def compare_K(
    fits: Mapping[int, _arviz.Idata],
    *,
    level: Level = "annotator",
    comps: Comparisons | None = None,
    var_name: str = "y",
) -> pd.DataFrame:
    """Choose the number of components: :func:`compare_models` of fits keyed by K.

    Leave-one-annotator-out is the default level: the question K answers is how many kinds of
    people there are, so the unit to predict is a new person. The table is indexed by ``K``
    (integers), best first.
    """
    table = compare_models({str(int(k)): fit for k, fit in sorted(fits.items())}, level=level,
                           comps=comps, var_name=var_name)
    table.index = pd.Index(table.index.astype(int), name="K")
    return table


def annotator_folds(comps: Comparisons, folds: int, seed: int) -> list[list[Any]]:
    """The annotators of ``comps`` shuffled (``seed``) into ``folds`` groups of near-equal size."""
    levels = np.asarray(comps.annotator_levels, dtype=object)
    if not 2 <= folds <= len(levels):
        raise PluralstanError(f"folds must lie in 2..{len(levels)} (the annotators), got {folds}")
    order = np.random.default_rng(seed).permutation(len(levels))
    return [list(levels[part]) for part in np.array_split(order, folds)]


def kfold_K(
    comps: Comparisons,
    Ks: Sequence[int],
    *,
    folds: int = 5,
    seed: int = 1,
    fit: Callable[..., _arviz.Idata] | None = None,
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Choose K by K-fold cross-validation by annotator (no importance sampling).

    Parameters
    ----------
    comps
        The judgements (with annotators).
    Ks
        Numbers of latent types to compare.
    folds
        Number of folds; every annotator is held out once.
    seed
        Seed of the fold assignment (the same folds for every K, so the differences are
        paired) and of every fit.
    fit
        The fitting function (default :func:`pluralstan.fit`), called as
        ``fit("annotator", comps, K=k, held_out=[...], seed=seed, **fit_kwargs)``; the audit
        passes one
        that shows progress.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``K``, best first: ``elpd_kfold`` (sum over annotators of the log predictive
        density of their judgements), ``se``, ``elpd_diff`` (to the best, >= 0), ``dse``
        (standard error of the paired difference), ``mcse`` (Monte Carlo standard error of
        ``elpd_kfold``, :func:`held_out_lpd`), ``mcse_diff`` (of ``elpd_diff``: the refits
        are independent) and ``flag`` (the folds' diagnostics).
    """
    if fit is None:
        from ..fit import fit
    parts = annotator_folds(comps, folds, seed)
    levels = list(comps.annotator_levels)
    pointwise: dict[int, np.ndarray] = {}
    mc_var: dict[int, float] = {}
    flags: dict[int, str] = {}
    for k in Ks:
        lpd = np.full(len(levels), np.nan)
        var = 0.0
        problems = []
        for part in parts:
            idata = fit("annotator", comps, K=int(k), held_out=part, seed=seed, **fit_kwargs)
            ll = _arviz.group(idata, "log_likelihood")["y"].sel(annotator=part)
            value, mcse = held_out_lpd(ll)
            lpd[[levels.index(a) for a in part]] = value
            var += float(np.sum(np.square(mcse)))
            if flag := diagnostics.flag(idata):
                problems.append(flag)
        pointwise[int(k)] = lpd
        mc_var[int(k)] = var
        flags[int(k)] = "; ".join(dict.fromkeys(problems))
    return elpd_table(pointwise, mc_var, flags, "elpd_kfold")


def elpd_table(pointwise: Mapping[int, np.ndarray], mc_var: Mapping[int, float],
               flags: Mapping[int, str], column: str) -> pd.DataFrame:
    """A comparison of K from pointwise (per annotator) elpd estimates of independent fits.

    ``mc_var`` is each K's Monte Carlo variance of the summed elpd. Indexed by ``K``, best
    first: ``column`` (the sum), ``se``, ``elpd_diff`` (to the best, >= 0), ``dse`` (standard
    error of the paired difference), ``mcse``, ``mcse_diff`` (the fits are independent) and
    ``flag``.
    """
    best = max(pointwise, key=lambda k: pointwise[k].sum())
    rows = [{"K": k, column: v.sum(), "se": float(np.sqrt(v.size * v.var())),
             "elpd_diff": float(pointwise[best].sum() - v.sum()),
             "dse": float(np.sqrt(v.size * (pointwise[best] - v).var())),
             "mcse": float(np.sqrt(mc_var[k])),
             "mcse_diff": float(np.sqrt(mc_var[k] + mc_var[best])) if k != best else 0.0,
             "flag": flags[k]}
            for k, v in pointwise.items()]
    return pd.DataFrame(rows).set_index("K").sort_values("elpd_diff")


#: Importance-sampling ESS below which a mixture estimate of an annotator's leave-one-out
#: density is named in the table's flag: it then rests on a handful of draws.
MIXTURE_MIN_ESS = 10


def mixture_loo_K(
    comps: Comparisons,
    fits: Mapping[int, _arviz.Idata],
    *,
    seed: int = 1,
    fit: Callable[..., _arviz.Idata] | None = None,
    **fit_kwargs: Any,
) -> pd.DataFrame:
    """Choose K by leave-one-annotator-out estimated by mixture importance sampling.

    For each K, one fit samples the mixture of the leave-one-out posteriors
    (``loo_mixture`` of :func:`pluralstan.models.annotator.encode`, weighted by
    :func:`mixture_weights` of the full fit ``fits[K]``), and :func:`mixture_lpd` estimates
    every annotator's leave-one-out predictive density from its draws.

    Parameters
    ----------
    comps
        The judgements (with annotators).
    fits
        Full annotator fits keyed by K, with their per-annotator log likelihood.
    seed
        Seed of every mixture fit.
    fit
        The fitting function (default :func:`pluralstan.fit`), called as
        ``fit("annotator", comps, K=k, loo_mixture=..., seed=seed, stack=False,
        **fit_kwargs)``; the audit passes one that starts where ``fits[K]`` ended.

    Returns
    -------
    pandas.DataFrame
        As :func:`kfold_K`'s, with ``elpd_loo`` for ``elpd_kfold``; ``mcse`` from
        :func:`mixture_lpd`, and ``flag`` also names the annotators whose estimate rests on
        fewer than :data:`MIXTURE_MIN_ESS` effective draws.
    """
    if fit is None:
        from ..fit import fit
    pointwise: dict[int, np.ndarray] = {}
    mc_var: dict[int, float] = {}
    flags: dict[int, str] = {}
    for k, full in sorted(fits.items()):
        log_weight = mixture_weights(_log_lik(full, "y"))
        idata = fit("annotator", comps, K=int(k), loo_mixture=log_weight, seed=seed,
                    stack=False, **fit_kwargs)
        lpd, mcse, ess = mixture_lpd(_log_lik(idata, "y"), log_weight)
        pointwise[int(k)], mc_var[int(k)] = lpd, mcse**2
        problems = [flag] if (flag := diagnostics.flag(idata)) else []
        few = int((ess < MIXTURE_MIN_ESS).sum())
        if few:
            problems.append(f"{few} annotator(s) with importance ESS < {MIXTURE_MIN_ESS} "
                            f"(smallest {ess.min():.1f})")
        flags[int(k)] = "; ".join(problems)
    return elpd_table(pointwise, mc_var, flags, "elpd_loo")


def mixture_weights(log_lik: xr.DataArray) -> np.ndarray:
    """Log weights of a mixture of leave-one-out posteriors that shares it evenly.

    ``log_lik``: ``log p(y_i | theta_s)`` of posterior draws, dims ``(chain, draw, unit)``.
    The component of unit ``i`` in ``q ∝ p(theta | y) sum_i c_i / p(y_i | theta)`` has mass
    ``c_i E[1 / p(y_i | theta) | y]``; ``log c_i = -log mean_s exp(-log_lik_si)`` makes these
    masses equal on the given draws. Any positive weights give consistent estimates
    (:func:`mixture_lpd`); even masses spend the mixture's draws on every unit alike.
    """
    ll = _unit_last(log_lik)
    draws = ll.shape[0] * ll.shape[1]
    return -(logsumexp(-ll, axis=(0, 1)) - np.log(draws))


def mixture_lpd(log_lik: xr.DataArray, log_weight: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray]:
    """Leave-one-out log predictive densities from draws of a mixture of leave-one-out
    posteriors, with the Monte Carlo standard error of their sum.

    With draws ``theta_s`` of ``q ∝ p(theta | y) sum_j c_j / p(y_j | theta)`` (``log c_j =
    log_weight``) and ``a_s = -log sum_j c_j / p(y_j | theta_s)``, the self-normalised
    importance-sampling estimate of ``p(y_i | y_-i)`` is
    ``sum_s exp(a_s) / sum_s exp(a_s) / p(y_i | theta_s)`` (Silva & Zanella 2022, eq. 9, with
    weights; ``c_i`` cancels). Its Monte Carlo standard error is by the delta method: the
    sum over units is a function of means over draws, whose per-draw influence ``F_s`` has
    mean 0, so the error is ``sd(F) / sqrt(ESS(F))`` (ArviZ's ``ess``, method ``"mean"``:
    autocorrelation counts).

    Parameters
    ----------
    log_lik
        ``log p(y_i | theta_s)``, dims ``(chain, draw, unit)``, of the mixture's draws.
    log_weight
        The ``log c_i`` the mixture was sampled with, in ``log_lik``'s unit order.

    Returns
    -------
    lpd, mcse, ess
        The estimates (one per unit), the Monte Carlo standard error of their sum, and each
        unit's importance-sampling effective sample size ``1 / sum_s w_si^2`` (normalised
        weights ``w_si ∝ exp(a_s) / p(y_i | theta_s)``).
    """
    ll = _unit_last(log_lik)
    a = -logsumexp(np.asarray(log_weight)[None, None, :] - ll, axis=-1)  # (chain, draw)
    log_w = a[..., None] - ll                                            # (chain, draw, unit)
    log_num, log_den = logsumexp(a), logsumexp(log_w, axis=(0, 1))
    lpd = log_num - log_den
    w = np.exp(log_w - log_den)  # normalised: sums to 1 over draws, per unit
    ess = 1.0 / np.sum(np.square(w), axis=(0, 1))
    draws = ll.shape[0] * ll.shape[1]
    # lpd_i = log mean(u) - log mean(v_i), u = exp(a), v_i = exp(a) / p_i: per-draw influence
    # on sum_i lpd_i, each term scaled to mean 1
    influence = ll.shape[-1] * np.exp(a - log_num) * draws - np.sum(w, axis=-1) * draws
    ess_f = az.ess(xr.Dataset({"f": xr.DataArray(influence, dims=("chain", "draw"))}),
                   method="mean")["f"].item()
    mcse = float(np.std(influence) / np.sqrt(ess_f))
    return lpd, mcse, ess


def _unit_last(log_lik: xr.DataArray) -> np.ndarray:
    """``log_lik`` as an array ``(chain, draw, unit)``."""
    unit = next(d for d in log_lik.dims if d not in ("chain", "draw"))
    return log_lik.transpose("chain", "draw", unit).to_numpy()


def held_out_lpd(log_lik: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """Log predictive density of each held-out unit and its Monte Carlo standard error.

    ``log_lik``: ``log p(y_i | theta_s)`` with dims ``(chain, draw, unit)``, from draws of a
    posterior that never saw the units. The density is ``log mean_s p(y_i | theta_s)``; its
    Monte Carlo standard error, by the delta method, is the MCSE of the mean of
    ``p(y_i | theta_s)`` (ArviZ's ``ess``, method ``"mean"``, so autocorrelation counts)
    over that mean.

    Returns
    -------
    lpd, mcse
        One value per unit each, in the order of ``log_lik``'s unit dim.
    """
    ll = _unit_last(log_lik)
    lpd = logsumexp(ll, axis=(0, 1)) - np.log(ll.shape[0] * ll.shape[1])
    # p(y_i | theta_s) / mean_s p(y_i | theta_s): mean 1, so its MCSE is the relative one
    relative = np.exp(ll - lpd)
    ess = az.ess(xr.Dataset({"p": (("chain", "draw", "unit"), relative)}),
                 method="mean")["p"].to_numpy()
    mcse = relative.std(axis=(0, 1)) / np.sqrt(ess)
    return lpd, mcse

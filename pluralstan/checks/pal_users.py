"""PAL's predictions: preference probabilities and agreement for seen users, new users localised
from a few judgements, and seen / zero-shot / few-shot held-out accuracy.

Unseen users (PAL section 3.3.1). :func:`fit_new_users` localises new users from a few
judgements with the shared parameters held at their posterior: it passes ``n_draws`` evenly
thinned posterior draws of (M, theta, gamma) to ``pal_new_users.stan``, where each new user's
posterior is the mixture over those draws reweighted by that user's own judgements,
p(w_j | y_j, y_seen), marginalised exactly (``log_sum_exp``); no plug-in posterior mean is used.
:func:`accuracy` then reports seen, zero-shot and few-shot held-out accuracy as PAL does.

The model, its encoding and its simulator are in :mod:`pluralstan.models.pal`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import expit

from .. import _arviz, diagnostics
from ..data import Comparisons
from ..engine import SamplerConfig
from ..errors import PluralstanError
from ..models.base import Encoded, broadcast_prior, load_program
from ..models.pal import (
    DEFAULT_PRIORS,
    PAL_OUTCOMES,
    check_no_ties,
    distance_log_odds,
    encode,
    log_odds,
    pal_cells,
    simulate,
    train_test_split,
    true_probability,
)
from ..pipeline import run


# ---------------------------------------------------------------------- prediction
def _check_attributes(idata: _arviz.Idata, comps: Comparisons) -> None:
    fitted = [str(v) for v in _arviz.group(idata, "posterior")["attribute"].values]
    if fitted != [str(v) for v in comps.attributes]:
        raise PluralstanError(
            f"the table's attributes {list(comps.attributes)} differ from the fitted model's "
            f"{fitted}; give options with the same attributes in the same order"
        )


def _design(comps: Comparisons) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    A, B = comps.options()
    dims = ("comparison", "attribute")
    coords = {"attribute": list(comps.attributes)}
    return (xr.DataArray(A - B, dims=dims, coords=coords),
            xr.DataArray(A + B, dims=dims, coords=coords),
            xr.DataArray(comps.order_sign(), dims=("comparison",)))


def _seen_codes(idata: _arviz.Idata, comps: Comparisons) -> np.ndarray:
    index = pd.Index(_arviz.group(idata, "posterior")["annotator"].values)
    code = index.get_indexer(comps.frame["annotator"])
    if np.any(code < 0):
        who = comps.frame["annotator"][code < 0].iloc[0]
        raise PluralstanError(
            f"annotator {who!r} was not in the fit ({int(np.sum(code < 0))} judgement(s) of "
            "unknown annotators); localise new users with pal.fit_new_users first"
        )
    return code


#: Most values one block of draws may hold while predictions are evaluated a block of draws at a
#: time (float64: 128 MB), so their memory does not grow with chains x draws x annotators.
_BLOCK_VALUES = 2**24


def _by_draw_blocks(fn: Callable[[slice], xr.DataArray], n_draws: int,
                    values_per_draw: int) -> xr.DataArray:
    """``fn`` over consecutive blocks of draws, concatenated along ``draw``.

    ``values_per_draw`` is the size of ``fn``'s largest intermediate per draw; blocks are as long
    as :data:`_BLOCK_VALUES` allows.
    """
    size = max(1, _BLOCK_VALUES // max(1, values_per_draw))
    return xr.concat([fn(slice(i, i + size)) for i in range(0, n_draws, size)], dim="draw")


def _quad(M: xr.DataArray, design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]
          ) -> xr.DataArray:
    """The shared quadratic term (a - b)' M (a + b) per comparison."""
    X_diff, X_sum, _ = design
    return xr.dot(X_diff, xr.dot(M, X_sum.rename(attribute="attribute_other"),
                                 dim="attribute_other"), dim="attribute")


def _eta(beta: xr.DataArray, M: xr.DataArray, gamma: xr.DataArray | float,
         design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]) -> xr.DataArray:
    """Log-odds beta'(a - b) - (a - b)' M (a + b) + gamma order, broadcast by xarray."""
    X_diff, _, order = design
    return xr.dot(X_diff, beta, dim="attribute") - _quad(M, design) + gamma * order


def _seen_probability(post: xr.Dataset, code: xr.DataArray,
                      design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]) -> xr.DataArray:
    """P(a > b) per draw for judgements of seen users (``code``: their index in the fit)."""
    def block(draws: slice) -> xr.DataArray:
        part = post.isel(draw=draws)
        gamma = part["gamma"] if "gamma" in part else 0.0
        return xr.apply_ufunc(expit, _eta(part["beta"].isel(annotator=code), part["M"],
                                          gamma, design))

    width = post.sizes["chain"] * code.size * post.sizes["attribute"]
    return _by_draw_blocks(block, post.sizes["draw"], width)


def _new_user_probability(post: xr.Dataset, idata_new: _arviz.Idata, code: xr.DataArray,
                          design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]
                          ) -> xr.DataArray:
    """P(a > b) per draw of a :func:`fit_new_users` result for judgements of its users.

    Each new-user draw goes with one carried-over draw s of the shared parameters, so the log-odds
    are sum_k w_k u_sk(a, b) + base_s(a, b), with prototype utilities u_sk = theta_sk'(a - b) and
    base_s = -(a - b)' M_s (a + b) + gamma_s order computed once per carried draw; only those
    are gathered per new-user draw, never a copy of (M, theta) per draw and judgement.
    """
    new = _arviz.group(idata_new, "posterior")
    carried = _arviz.group(idata_new, "constant_data")["seen_sample"].values
    names = ["M", "theta"] + (["gamma"] if "gamma" in post else [])
    flat = post[names].stack(sample=("chain", "draw")).drop_vars(["sample", "chain", "draw"])
    shared = flat.isel(sample=carried)
    gamma = shared["gamma"] if "gamma" in shared else 0.0
    X_diff, _, order = design
    util = xr.dot(X_diff, shared["theta"], dim="attribute")  # (sample, group, comparison)
    base = -_quad(shared["M"], design) + gamma * order  # (sample, comparison)
    # Stan's integer outputs arrive as floats from some engines
    pick = (new["seen_draw"].astype(np.int64) - 1).isel(annotator=code)
    comparison = xr.DataArray(np.arange(code.size), dims="comparison")
    eta = (xr.dot(new["w"].isel(annotator=code),
                  util.isel(sample=pick, comparison=comparison), dim="group")
           + base.isel(sample=pick, comparison=comparison))
    return xr.apply_ufunc(expit, eta)


def preference_probability(
    idata_seen: _arviz.Idata,
    comps: Comparisons,
    idata_new: _arviz.Idata | None = None,
) -> xr.DataArray:
    """Posterior draws of P(a > b) for every judgement of ``comps``.

    Parameters
    ----------
    idata_seen
        A ``"pal"`` fit.
    comps
        Judgements of annotators in ``idata_seen`` (or, with ``idata_new``, in ``idata_new``);
        their outcomes are not used.
    idata_new
        A :func:`fit_new_users` result; each of its draws is paired with the seen-fit draw of the
        shared parameters it was localised under.

    Returns
    -------
    xarray.DataArray
        Dims ``(chain, draw, comparison)``.
    """
    _check_attributes(idata_seen, comps)
    post = _arviz.group(idata_seen, "posterior")
    design = _design(comps)
    if idata_new is None:
        code = xr.DataArray(_seen_codes(idata_seen, comps), dims="comparison")
        p = _seen_probability(post, code, design)
    else:
        code = xr.DataArray(_seen_codes(idata_new, comps), dims="comparison")
        p = _new_user_probability(post, idata_new, code, design)
    return p.transpose("chain", "draw", "comparison")


def _population_probability(
    post: xr.Dataset, design: tuple[xr.DataArray, xr.DataArray, xr.DataArray]
) -> xr.DataArray:
    """P(a > b) per posterior draw, seen annotator and judgement of ``design`` (:func:`_design`)."""
    gamma = post["gamma"] if "gamma" in post else 0.0
    return xr.apply_ufunc(expit, _eta(post["beta"], post["M"], gamma, design))


def agreement(idata: _arviz.Idata, comps: Comparisons, *, n_draws: int = 100) -> xr.DataArray:
    """Posterior mean probability that two seen users pick the same option, over the table's pairs.

    For users i, j and an option pair, the chance of agreeing is p_i p_j + (1 - p_i)(1 - p_j)
    with p = P(a > b); it is averaged over the distinct option pairs of ``comps`` and
    ``n_draws`` thinned posterior draws. Rotation-invariant, hence identified.

    Returns
    -------
    xarray.DataArray
        Dims ``("annotator", "annotator_other")``.
    """
    _check_attributes(idata, comps)
    A, B = comps.options()
    _, keep = np.unique(np.hstack([A, B]), axis=0, return_index=True)
    pairs = dataclasses.replace(comps, frame=comps.frame.iloc[np.sort(keep)].reset_index(drop=True))
    post = _arviz.group(idata, "posterior").stack(sample=("chain", "draw"))
    take = np.linspace(0, post.sizes["sample"] - 1, min(n_draws, post.sizes["sample"])).astype(int)
    p = _population_probability(post.isel(sample=take), _design(pairs))
    p = p.transpose("sample", "annotator", "comparison").values
    same = (np.einsum("sic,sjc->ij", p, p) + np.einsum("sic,sjc->ij", 1 - p, 1 - p)) / (
        p.shape[0] * p.shape[2])
    ann = _arviz.group(idata, "posterior")["annotator"].values
    return xr.DataArray(same, dims=("annotator", "annotator_other"),
                        coords={"annotator": ann, "annotator_other": ann})


# ---------------------------------------------------------------------- unseen users
def _fit_priors(idata: _arviz.Idata) -> dict[str, Any]:
    raw = _arviz.group(idata, "posterior").attrs.get("priors")
    return json.loads(raw) if isinstance(raw, str) else dict(raw or {})


def fit_new_users(
    idata_seen: _arviz.Idata,
    comps_new: Comparisons,
    *,
    n_draws: int = 100,
    w_alpha: float | Sequence[float] | None = None,
    chains: int = 2,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 1,
    adapt_delta: float = 0.8,
    backend: str = "auto",
    check: bool = True,
) -> _arviz.Idata:
    """Localise unseen users from a few judgements, the shared parameters held at their posterior.

    ``n_draws`` evenly thinned posterior draws of (M, theta, gamma) from ``idata_seen``
    enter ``pal_new_users.stan`` as data; each new user's weights get the posterior
    p(w_j | y_j, y_seen), the mixture over those draws reweighted by the user's own judgements
    (not a plug-in of the posterior mean).

    Parameters
    ----------
    idata_seen
        A ``"pal"`` fit.
    comps_new
        Judgements of users not in ``idata_seen``, on options with the same attributes.
    n_draws
        Number of posterior draws of the shared parameters to carry over.
    w_alpha
        Dirichlet concentration of the new users' weights (default: the seen fit's).
    chains, draws, warmup, seed, adapt_delta, backend, check
        As for :func:`pluralstan.fit`.

    Returns
    -------
    arviz.InferenceData
        Posterior ``w`` (annotator, group) and ``seen_draw`` (the 1-based index, into
        ``constant_data.seen_sample``, of the carried-over draw paired with each draw),
        annotator-level ``log_likelihood``, ``posterior_predictive`` ``y`` per cell.
    """
    seen_post = _arviz.group(idata_seen, "posterior")
    if "M" not in seen_post or "theta" not in seen_post:
        raise PluralstanError("idata_seen is not a 'pal' fit (it has no M / theta posterior)")
    _check_attributes(idata_seen, comps_new)
    check_no_ties(comps_new, "fit_new_users")
    seen = pd.Index(_arviz.group(idata_seen, "posterior")["annotator"].values)
    overlap = pd.Index(comps_new.annotator_levels).intersection(seen)
    if len(overlap):
        raise PluralstanError(
            f"annotator {overlap[0]!r} of comps_new was seen in the fit ({len(overlap)} such); "
            "new users must be unseen (use preference_probability for seen users)"
        )
    flat = _arviz.group(idata_seen, "posterior").stack(sample=("chain", "draw"))
    total = flat.sizes["sample"]
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or not 1 <= n_draws <= total:
        raise PluralstanError(f"n_draws must be an integer in 1..{total}, got {n_draws!r}")
    sample = np.linspace(0, total - 1, n_draws).round().astype(np.int64)
    flat = flat.isel(sample=sample)
    K = flat.sizes["group"]
    alpha = w_alpha if w_alpha is not None else _fit_priors(idata_seen).get("prior_w_alpha", 1.0)
    cells = pal_cells(comps_new)
    gamma = (flat["gamma"].values if "gamma" in flat else np.zeros(n_draws))
    data = {
        "J": len(comps_new.annotator_levels), "K": K, "D": len(comps_new.attributes),
        "S": n_draws,
        "L_M": np.linalg.cholesky(flat["M"].transpose("sample", ...).values),
        "theta": flat["theta"].transpose("sample", "group", "attribute").values,
        "gamma": gamma, "C": len(cells.counts), "X_a": cells.A, "X_b": cells.B,
        "user": cells.annotator + 1, "order": cells.order, "y": cells.counts,
        "prior_w_alpha": broadcast_prior(alpha, K, "w_alpha"), "prior_only": 0,
    }
    enc = Encoded(
        data=data,
        coords={"annotator": list(comps_new.annotator_levels), "group": np.arange(K),
                "cell": np.arange(len(cells.counts)), "outcome": list(PAL_OUTCOMES)},
        dims={"w": ["annotator", "group"], "seen_draw": ["annotator"],
              "y_rep": ["cell", "outcome"]},
        observed={"y": cells.counts},
        constant={"seen_sample": sample, "X_a": cells.A, "X_b": cells.B,
                  "user_code": cells.annotator},
        predictive={"y_rep": "y"},
        log_lik=lambda v: {"y": v["log_lik"]},
        log_lik_dims={"y": ["annotator"]},
        drop=("log_lik",),
    )

    config = SamplerConfig(chains, draws, warmup, seed, adapt_delta)
    config.validate()
    return run(load_program("pal_new_users.stan"), enc, config, comps_new,
               model="pal_new_users", backend=backend, check=check, var_names=["w"],
               extra={"K": K, "n_draws": n_draws,
                      "priors": {"prior_w_alpha": data["prior_w_alpha"].tolist()}})


# ---------------------------------------------------------------------- accuracy
def _scores(p: xr.DataArray, comps: Comparisons) -> dict[str, float]:
    """Accuracy (posterior-mean probability thresholded at 1/2) and mean log predictive density."""
    p_bar = p.mean(("chain", "draw")).values
    y = comps.frame["y"].to_numpy()
    hit = np.where(p_bar == 0.5, 0.5, (p_bar > 0.5) == (y == 1))
    acc = float(np.mean(hit))
    return {
        "judgements": len(y),
        "accuracy": acc,
        "accuracy_se": float(np.sqrt(acc * (1 - acc) / len(y))),
        "log_score": float(np.mean(np.where(y == 1, np.log(p_bar), np.log1p(-p_bar)))),
    }


def _oracle(comps: Comparisons) -> float:
    """Accuracy of the true probabilities on the same judgements (NaN without truth)."""
    try:
        p = true_probability(comps)
    except PluralstanError:
        return np.nan
    y = comps.frame["y"].to_numpy()
    return float(np.mean((p > 0.5) == (y == 1)))


def _zero_shot(idata_seen: _arviz.Idata, comps: Comparisons) -> xr.DataArray:
    """P(a > b) for a user drawn from the seen population: averaged over the seen users."""
    post = _arviz.group(idata_seen, "posterior")
    design = _design(comps)

    def block(draws: slice) -> xr.DataArray:
        return _population_probability(post.isel(draw=draws), design).mean("annotator")

    width = post.sizes["chain"] * post.sizes["annotator"] * comps.n
    p = _by_draw_blocks(block, post.sizes["draw"], width)
    return p.transpose("chain", "draw", "comparison")


def _relabel(comps: Comparisons, rows: np.ndarray, suffix: str) -> Comparisons:
    """Rows of ``comps`` with annotator ids ``"<id>@<suffix>"`` (no re-validation needed)."""
    frame = comps.frame.iloc[rows].reset_index(drop=True)
    frame["annotator"] = [f"{a}@{suffix}" for a in frame["annotator"]]
    return dataclasses.replace(comps, frame=frame, annotators=None)


def accuracy(
    idata_seen: _arviz.Idata,
    test_seen: Comparisons | None = None,
    comps_new: Comparisons | None = None,
    *,
    shots: Sequence[int] = (0, 1, 2, 5, 10, 20),
    n_draws: int = 100,
    chains: int = 2,
    draws: int = 500,
    warmup: int = 500,
    seed: int = 1,
    backend: str = "auto",
) -> pd.DataFrame:
    """Seen, zero-shot and few-shot held-out accuracy, as PAL reports them (its Fig. 2d, 4d).

    * ``seen``: held-out judgements ``test_seen`` of users in the fit (unseen pairs, seen users).
    * ``unseen``, ``shots = n``: each user of ``comps_new`` is localised from their first ``n``
      judgements (table order) with :func:`fit_new_users` and scored on their judgements after
      the first ``max(shots)``, so every point of the curve uses the same test judgements. All
      shot counts are localised in one Stan run (each (user, n) is its own pseudo-user).
      ``n = 0`` is PAL's zero-shot prediction: P(a > b) averaged over the seen users.

    A prediction is the posterior mean of P(a > b) thresholded at 1/2.

    Returns
    -------
    pandas.DataFrame
        One row per setting: ``setting``, ``shots`` (<NA> for seen), ``users``, ``judgements``,
        ``accuracy``, ``accuracy_se`` (binomial), ``log_score`` (mean log predictive
        probability), ``oracle_accuracy`` (the true probabilities' accuracy on the same
        judgements, for simulated data; else NaN) and ``diagnostics``
        (:func:`pluralstan.diagnostics.flag` of the fits involved).
    """
    rows: list[dict[str, Any]] = []
    seen_flag = diagnostics.flag(idata_seen)
    if test_seen is not None:
        p = preference_probability(idata_seen, test_seen)
        rows.append({"setting": "seen", "shots": pd.NA,
                     "users": len(test_seen.annotator_levels), **_scores(p, test_seen),
                     "oracle_accuracy": _oracle(test_seen), "diagnostics": seen_flag})
    if comps_new is not None:
        rows += _unseen_rows(idata_seen, comps_new, shots, seen_flag,
                             {"n_draws": n_draws, "chains": chains, "draws": draws,
                              "warmup": warmup, "seed": seed, "backend": backend})
    table = pd.DataFrame(rows)
    if len(table):
        table["shots"] = table["shots"].astype("Int64")
    return table


def _unseen_rows(idata_seen: _arviz.Idata, comps_new: Comparisons, shots: Sequence[int],
                 seen_flag: str, fit_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    shots = sorted({int(n) for n in shots})
    if not shots or shots[0] < 0:
        raise PluralstanError(f"shots must be non-negative integers, got {shots}")
    position = comps_new.frame.groupby("annotator", sort=False).cumcount().to_numpy()
    counts = comps_new.frame["annotator"].value_counts()
    short = counts[counts <= shots[-1]]
    if len(short):
        raise PluralstanError(
            f"new user {short.index[0]!r} has {short.iloc[0]} judgement(s); every new user needs "
            f"more than max(shots) = {shots[-1]} (the rest are the test judgements)"
        )
    test_rows = np.flatnonzero(position >= shots[-1])
    test = comps_new.subset(test_rows)
    oracle = _oracle(test)
    n_users = len(comps_new.annotator_levels)
    out = []
    if shots[0] == 0:
        out.append({"setting": "unseen", "shots": 0, "users": n_users,
                    **_scores(_zero_shot(idata_seen, test), test),
                    "oracle_accuracy": oracle, "diagnostics": seen_flag})
    positive = [n for n in shots if n > 0]
    if positive:
        train = [_relabel(comps_new, np.flatnonzero(position < n), str(n)) for n in positive]
        frame = pd.concat([c.frame for c in train], ignore_index=True)
        idata_new = fit_new_users(idata_seen, dataclasses.replace(train[0], frame=frame),
                                  **fit_kwargs)
        flag = " ".join(f for f in (seen_flag, diagnostics.flag(idata_new)) if f)
        for n in positive:
            tested = _relabel(comps_new, test_rows, str(n))
            p = preference_probability(idata_seen, tested, idata_new)
            out.append({"setting": "unseen", "shots": n, "users": n_users,
                        **_scores(p, tested), "oracle_accuracy": oracle, "diagnostics": flag})
    return out


__all__ = [
    "DEFAULT_PRIORS", "accuracy", "agreement", "distance_log_odds", "encode", "fit_new_users",
    "log_odds", "preference_probability", "simulate", "train_test_split", "true_probability",
]

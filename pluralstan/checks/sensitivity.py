"""Prior sensitivity: the position paper's pi grid, and power-scaling diagnostics.

(a) **Grid sensitivity** (the paper's item four). Refit a model under each point of a grid of
prior hyperparameters and report how the posterior of every ``theta`` coordinate (per group for
mixtures) shifts. Priors are Stan data, so the program is compiled once and the refits reuse it;
they run serially or through :func:`pluralstan.parallel.run_jobs`. :func:`pi_grid_sensitivity`
is the paper's case: for a mixture model, ``pi ~ Dirichlet(concentration * pi_grid[j])`` for
each assumed composition ``pi_grid[j]``.

(b) **Power-scaling sensitivity** (Kallioinen et al. 2023, the R package priorsense): scale the
prior or the likelihood by ``alpha`` near 1, importance-reweight the draws with PSIS and measure
the cumulative Jensen-Shannon distance per parameter; above 0.05 for the prior means the prior
is informative. Prior *and* likelihood sensitive: potential prior-data conflict; prior sensitive
but likelihood insensitive: strong prior / weak likelihood. Computed by
``psense_summary`` (ArviZ 1.x; the ``arviz_stats`` 0.8 preview on ArviZ 0.23, whose ``az.psens``
ignores its ``coords`` arguments) on the fit's ``log_prior`` (``lprior`` from the Stan program) and
``log_likelihood`` groups, through :func:`pluralstan._arviz.power_scale_sensitivity`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .. import _arviz, diagnostics
from ..data import Comparisons
from ..errors import PluralstanError
from ..models import get_model
from ..parallel import Job, run_jobs
from .intervals import central_interval

__all__ = [
    "PRIOR_SENSITIVITY_THRESHOLD",
    "grid_fits",
    "grid_label",
    "grid_shifts",
    "pi_grid_sensitivity",
    "power_scaling",
]

#: Cumulative Jensen-Shannon distance above which a parameter counts as sensitive.
PRIOR_SENSITIVITY_THRESHOLD = 0.05


def _fit_job(model: str, comps: Comparisons, priors: dict[str, Any], K: int | None,
             fit_kwargs: dict[str, Any]) -> _arviz.Idata:
    """One refit of a grid (module level so that worker processes can import it)."""
    from ..fit import fit

    return fit(model, comps, K=K, priors=priors, **fit_kwargs)


def grid_fits(
    model: str,
    comps: Comparisons,
    grid: Sequence[Mapping[str, Any]],
    *,
    K: int | None = None,
    base_priors: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    scheduler: Any = "serial",
    n_workers: int | None = None,
    **fit_kwargs: Any,
) -> dict[str, _arviz.Idata]:
    """Fit ``model`` once per point of a grid of prior hyperparameters.

    Parameters
    ----------
    model, comps, K
        As for :func:`pluralstan.fit`.
    grid
        One mapping of prior overrides per grid point (laid over ``base_priors``).
    labels
        Names of the grid points (default ``"g0"``, ``"g1"``, ...).
    scheduler, n_workers
        ``"serial"`` (default; this process) or anything :func:`pluralstan.parallel.run_jobs`
        accepts (``None`` for a local process pool, a Dask address). The program is built once
        before the fits fan out.
    **fit_kwargs
        Sampler settings and model options passed to :func:`pluralstan.fit`.

    Returns
    -------
    dict
        Grid label -> InferenceData, in grid order. Every prior is validated (by the model's
        encoder) before any sampling.
    """
    spec = get_model(model)
    if not grid:
        raise PluralstanError("the prior grid is empty: give at least one point")
    labels = list(labels) if labels is not None else [f"g{i}" for i in range(len(grid))]
    if len(labels) != len(grid) or len(set(labels)) != len(labels):
        raise PluralstanError(
            f"labels must be {len(grid)} distinct names, one per grid point; got {labels}"
        )
    from ..fit import fit  # imported here: pluralstan.fit imports the checks

    # fit's own settings (sampler, inits, relabelling); the other keywords are model options
    settings = set(inspect.signature(fit).parameters) - {"model", "comps", "K", "priors"}
    options = {k: v for k, v in fit_kwargs.items() if k not in settings}
    priors = [{**(base_priors or {}), **point} for point in grid]
    encoded = [spec.encode(comps, K=K, priors=p, **options) for p in priors]  # validate first
    jobs = [Job(f"g{i}", _fit_job, {"model": spec.name, "comps": comps, "priors": p, "K": K,
                                  "fit_kwargs": dict(fit_kwargs)},
                seed=fit_kwargs.get("seed"))
            for i, p in enumerate(priors)]
    report = run_jobs(jobs, scheduler=scheduler, n_workers=n_workers,
                      warm=[(spec.program, encoded[0].data)],
                      backend=fit_kwargs.get("backend", "auto"), progress=False,
                      desc="prior grid")
    report.raise_failures()
    return {label: report.results[f"g{i}"].value for i, label in enumerate(labels)}


def grid_shifts(
    fits: Mapping[str, _arviz.Idata],
    *,
    var_name: str = "theta",
    reference: str | None = None,
    prob: float = 0.9,
) -> pd.DataFrame:
    """How the posterior of ``var_name`` moves across the fits of a prior grid.

    Parameters
    ----------
    fits
        Grid label -> fit (:func:`grid_fits`).
    var_name
        The posterior variable to follow (``theta``: per group and attribute for mixtures).
    reference
        The grid point shifts are measured from (default: the first).
    prob
        Mass of the equal-tailed interval.

    Returns
    -------
    pandas.DataFrame
        One row per grid point and coordinate: ``grid``, the variable's dims (e.g. ``group``,
        ``attribute``), ``mean``, ``sd``, ``lower``, ``upper``, ``shift`` (mean minus the
        reference mean), ``shift_sd`` (shift in units of the reference posterior sd) and
        ``flag`` (the diagnostics of the fit behind the row).
    """
    if not fits:
        raise PluralstanError("no fits to compare")
    labels = list(fits)
    reference = labels[0] if reference is None else reference
    if reference not in fits:
        raise PluralstanError(f"reference {reference!r} is not a grid label; labels: {labels}")
    for label, idata in fits.items():
        if var_name not in _arviz.group(idata, "posterior"):
            raise PluralstanError(f"fit {label!r} has no posterior variable {var_name!r}")
    ref = central_interval(_arviz.group(fits[reference], "posterior")[var_name], prob,
                           sd=True)
    frames = []
    for label, idata in fits.items():
        stats = central_interval(_arviz.group(idata, "posterior")[var_name], prob, sd=True)
        stats["shift"] = stats["mean"] - ref["mean"]
        stats["shift_sd"] = stats["shift"] / ref["sd"]
        frame = stats.to_dataframe().reset_index() if stats["mean"].ndim else pd.DataFrame(
            {k: [float(v)] for k, v in stats.items()})
        frames.append(frame.assign(grid=label, flag=diagnostics.flag(idata)))
    table = pd.concat(frames, ignore_index=True)
    return table[["grid", *ref["mean"].dims, "mean", "sd", "lower", "upper", "shift",
                  "shift_sd", "flag"]]


def grid_label(pi: Sequence[float]) -> str:
    """The label of a pi-grid row: ``pi=(0.50, 0.30, 0.20)``."""
    return "pi=(" + ", ".join(f"{w:.2f}" for w in pi) + ")"


def pi_grid_sensitivity(
    model: str,
    comps: Comparisons,
    pi_grid: Sequence[Sequence[float]] | np.ndarray,
    *,
    K: int | None = None,
    concentration: float = 100.0,
    prior_name: str = "pi_alpha",
    base_priors: Mapping[str, Any] | None = None,
    reference: int = 0,
    scheduler: Any = "serial",
    n_workers: int | None = None,
    **fit_kwargs: Any,
) -> tuple[pd.DataFrame, dict[str, _arviz.Idata]]:
    """The paper's item four: refit a mixture under a grid of assumed compositions pi.

    Parameters
    ----------
    model
        A mixture model with a Dirichlet prior on ``pi`` (``"labeled"``, ``"unlabeled"``, ...).
    comps
        The judgements.
    pi_grid
        ``(J, K)`` assumed compositions, each a point of the simplex.
    K
        Number of components (default: the grid's width).
    concentration
        Dirichlet concentration: ``pi ~ Dirichlet(concentration * pi_grid[j])``; large values
        hold pi near the assumed composition.
    prior_name
        The model's Dirichlet hyperparameter.
    reference
        Row of the grid the shifts are measured from.
    scheduler, n_workers, **fit_kwargs
        As for :func:`grid_fits`.

    Returns
    -------
    table, fits
        :func:`grid_shifts` of ``theta`` with the assumed composition in columns
        ``pi_assumed`` (as text) and ``pi_<group>``, and the fits keyed by grid label.
        A latent-component fit under a non-uniform assumed composition is kept as sampled,
        because that prior labels the components (:func:`pluralstan.relabel.asymmetric_prior`;
        its diagnostics say so); under a uniform one it is relabelled like any fit.
    """
    grid = np.atleast_2d(np.asarray(pi_grid, dtype=float))
    K = grid.shape[1] if K is None else int(K)
    if grid.shape[1] != K or np.any(grid <= 0) or not np.allclose(grid.sum(axis=1), 1.0):
        raise PluralstanError(
            f"pi_grid must be rows of {K} positive weights summing to 1, got {grid.tolist()}"
        )
    if not float(concentration) > 0:
        raise PluralstanError(f"concentration must be positive, got {concentration!r}")
    if not 0 <= int(reference) < len(grid):
        raise PluralstanError(f"reference must index a grid row (0..{len(grid) - 1})")
    labels = [grid_label(row) for row in grid]
    if len(set(labels)) != len(labels):
        raise PluralstanError("pi_grid has repeated rows")
    points = [{prior_name: float(concentration) * row} for row in grid]
    fits = grid_fits(model, comps, points, K=K, base_priors=base_priors, labels=labels,
                     scheduler=scheduler, n_workers=n_workers, **fit_kwargs)
    table = grid_shifts(fits, reference=labels[int(reference)])
    assumed = pd.DataFrame(grid, index=labels,
                           columns=[f"pi_{k}" for k in range(K)]).rename_axis("grid")
    table = table.merge(assumed.reset_index(), on="grid", how="left")
    table.insert(1, "pi_assumed", table["grid"])
    return table, fits


def power_scaling(
    idata: _arviz.Idata,
    var_names: Sequence[str] | None = None,
    *,
    threshold: float = PRIOR_SENSITIVITY_THRESHOLD,
) -> pd.DataFrame:
    """Power-scaling prior and likelihood sensitivity per parameter.

    Parameters
    ----------
    idata
        A fit with ``posterior``, ``log_prior`` and ``log_likelihood`` groups.
    var_names
        Posterior variables to check (default: all that vary across draws).
    threshold
        Sensitivity threshold (0.05, as in priorsense).

    Returns
    -------
    pandas.DataFrame
        One row per scalar parameter: ``variable`` (ArviZ label, e.g. ``theta[x1]``),
        ``prior``, ``likelihood`` (cumulative JS distances), ``diagnosis``
        (ArviZ's wording), ``prior_data_conflict`` and ``weak_likelihood`` (booleans)
        and ``flag``.
    """
    present = _arviz.groups(idata)
    missing = [g for g in ("posterior", "log_prior", "log_likelihood") if g not in present]
    if missing:
        raise PluralstanError(
            f"power-scaling sensitivity needs the groups {missing}; fits made by pluralstan.fit "
            "carry log_prior (lprior) and log_likelihood (unless fitted with log_lik=False)"
        )
    post = _arviz.group(idata, "posterior")
    names = list(var_names) if var_names is not None else [
        v for v in post.data_vars if float(post[v].std()) > 0
    ]
    unknown = [v for v in names if v not in post]
    if unknown:
        raise PluralstanError(f"unknown posterior variable(s) {unknown}; have {list(post)}")
    table = _arviz.power_scale_sensitivity(idata, names, threshold=threshold)
    table = table.rename_axis("variable").reset_index()
    prior_hit = table["prior"] > threshold
    like_hit = table["likelihood"] > threshold
    table["prior_data_conflict"] = prior_hit & like_hit
    table["weak_likelihood"] = prior_hit & ~like_hit
    table["flag"] = diagnostics.flag(idata)
    return table

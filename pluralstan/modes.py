"""Genuine multimodality in latent-type fits: find the modes before sampling, stack them after.

Relabelling (:mod:`pluralstan.relabel`) resolves label switching, chains that sit in one mode
under permuted labels. A posterior can also have modes that no permutation maps onto each other
(a K = 2 model of three kinds of people can pair them up in different ways), and NUTS chains
started in different ones do not mix. This module handles that in two steps.

Before sampling, :func:`search` runs L-BFGS (:func:`scipy.optimize.minimize`, ``"L-BFGS-B"``)
on the program's log density over the unconstrained space, Jacobian included (the density NUTS
explores, so a mode's value is comparable with ``lp__``), from many random starts drawn like
Stan's default inits (uniform(-2, 2)), side by side in one forked process per core. Optima that
agree up to a permutation of the component labels (aligned with :func:`pluralstan.relabel.pivot`)
are one mode. :meth:`ModeSearch.inits` gives per-chain inits from the best modes for
:attr:`pluralstan.engine.SamplerConfig.inits`.

After sampling, :func:`group_chains` groups the (relabelled) chains into modes: a chain joins a
group when the R-hat of the group with it stays below a threshold on the log density, the
label-invariant scalars and the relabelled parameters. :func:`stack_chains` combines the groups
by Bayesian stacking of chains (Yao, Vehtari & Gelman 2022, "Stacking for non-mixing Bayesian
computations: the curse and blessing of multimodal posteriors", JMLR 23(79)): weights ``w`` on
the simplex maximising ``sum_i log sum_k w_k p_k(y_i | y_-i)``, where ``p_k(y_i | y_-i)`` is
group ``k``'s PSIS-LOO predictive density of observation ``i`` (one annotator for annotator-level
models: leave one annotator out). The optimiser is ArviZ's (``az.compare(method="stacking")``).
The stacked posterior resamples every group's draws in proportion to its weight, and a
:class:`ModeReport` states the modes, their weights and log densities and how they differ.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.linalg import solve_triangular
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from . import _arviz, diagnostics
from .data import as_comparisons
from .engine import StanProgram, get_engine
from .errors import PluralstanError
from .parallel import default_workers
from .relabel import pivot, relabel

__all__ = [
    "Mode",
    "ModeReport",
    "ModeSearch",
    "deduplicate",
    "find_modes",
    "group_chains",
    "keep_unstacked",
    "laplace_sd",
    "search",
    "stack_chains",
    "stacking_weights",
    "unstack",
]

#: Prefix of the groups that keep a stacked fit's chains as sampled (:func:`keep_unstacked`).
UNSTACKED = "unstacked_"

#: Default R-hat below which chains are taken to share a mode (:func:`group_chains`). Looser
#: than the convergence threshold :data:`pluralstan.diagnostics.RHAT_MAX`: it separates chains
#: in different modes, whose R-hat is far above it, and keeps a few short chains in one mode
#: together.
GROUP_RHAT = 1.05


# ---------------------------------------------------------------------- mode search
@dataclass
class Mode:
    """One mode of the posterior found by :func:`search`.

    Attributes
    ----------
    log_density
        Log density at the mode, on the unconstrained space with the Jacobian (as ``lp__``).
    starts
        How many starts reached it.
    values
        Constrained parameters and transformed parameters at the mode, components in a
        canonical order (decreasing mixing weight).
    init
        The ``parameters``-block values at the mode (as Stan's ``init`` takes them).
    sd
        The Laplace approximation's marginal posterior sd of each unconstrained coordinate,
        by ``parameters``-block variable (:func:`laplace_sd`); ``None`` when not computed (or
        the log density is not concave there).
    """

    log_density: float
    starts: int
    values: dict[str, np.ndarray]
    init: dict[str, np.ndarray]
    sd: dict[str, np.ndarray] | None = None


@dataclass
class ModeSearch:
    """Outcome of :func:`search`: the distinct modes, best (highest log density) first."""

    modes: list[Mode]
    n_starts: int
    failed: int
    label_dim: str | None = None
    #: Wall-clock seconds the search took, loading the program included.
    seconds: float = 0.0

    def inits(self, chains: int, max_modes: int = 2) -> list[dict[str, list]]:
        """Per-chain inits from the best ``max_modes`` modes, assigned in turn.

        Chain ``c`` starts at mode ``c % m`` with ``m = min(max_modes, number of modes)``, so
        with 4 chains and two modes each mode gets two chains (enough for its own R-hat).
        """
        if not self.modes:
            raise PluralstanError(
                f"the mode search found no mode ({self.failed} of {self.n_starts} starts "
                "failed); sample with Stan's own inits"
            )
        if max_modes < 1 or chains < 1:
            raise PluralstanError(f"chains and max_modes must be >= 1, got {chains}, {max_modes}")
        use = self.modes[:max_modes]
        return [{k: np.asarray(v).tolist() for k, v in use[c % len(use)].init.items()}
                for c in range(chains)]

    def table(self) -> pd.DataFrame:
        """One row per mode: its log density, how many starts reached it, and its values."""
        rows = []
        for i, mode in enumerate(self.modes):
            row: dict[str, Any] = {"mode": i, "log_density": mode.log_density,
                                   "starts": mode.starts}
            for name, value in mode.values.items():
                arr = np.asarray(value)
                for idx in np.ndindex(arr.shape):
                    row[f"{name}[{','.join(map(str, idx))}]" if idx else name] = float(arr[idx])
            rows.append(row)
        return pd.DataFrame(rows).set_index("mode") if rows else pd.DataFrame()

    def to_json(self) -> str:
        """JSON form (modes with log densities, start counts, values and Laplace sds where
        computed) for fit attributes."""
        return json.dumps({
            "n_starts": self.n_starts, "failed": self.failed, "seconds": round(self.seconds, 3),
            "modes": [{"log_density": m.log_density, "starts": m.starts,
                       "values": {k: np.asarray(v).tolist() for k, v in m.values.items()},
                       **({} if m.sd is None else
                          {"laplace_sd": {k: np.asarray(v).tolist() for k, v in m.sd.items()}})}
                      for m in self.modes],
        })

    def __str__(self) -> str:
        head = (f"{len(self.modes)} distinct mode(s) up to label permutation from "
                f"{self.n_starts} L-BFGS starts ({self.failed} did not converge)")
        if not self.modes:
            return head
        with pd.option_context("display.width", 120, "display.max_columns", 12):
            return f"{head}\n{self.table().round(3)}"


def search(
    program: StanProgram,
    data: dict[str, Any],
    *,
    dims: Mapping[str, Sequence[str]] | None = None,
    label_dim: str | None = "group",
    n_starts: int = 20,
    seed: int = 1,
    radius: float = 2.0,
    atol: float = 0.05,
    max_iter: int = 1000,
    backend: str = "pystan",
    workers: int | None = None,
    laplace: bool = False,
) -> ModeSearch:
    """Find the distinct modes of a program's posterior by L-BFGS from random starts.

    Parameters
    ----------
    program, data
        The Stan program and its data (e.g. a model's ``spec.program`` and ``enc.data``).
    dims
        Dims of the program's outputs by variable (``Encoded.dims``): the variables compared
        between optima, and which of them carry ``label_dim``. ``None``: every parameter and
        transformed parameter, compared without permuting labels.
    label_dim
        The dim of exchangeable latent components (optima that differ by a permutation of it
        are one mode); ``None`` for models without.
    n_starts
        Number of random starts.
    seed
        Seed of the starting points.
    radius
        Starts are uniform(-radius, radius) on the unconstrained space (Stan's default: 2).
    atol
        Two optima are one mode when, after the best permutation of their components, no
        compared constrained value differs by more than ``atol``.
    max_iter
        Iteration limit of each L-BFGS run (a run that reaches it counts as failed).
    backend
        Engine with a log density (:meth:`pluralstan.engine.PyStanEngine.log_density`).
    workers
        Processes that run the starts (default: the cores this process may use); the starts
        are drawn here, in order, so the modes found do not depend on it.
    laplace
        Also give the best mode its Laplace approximation's marginal sds (``Mode.sd``,
        :func:`laplace_sd`).

    Returns
    -------
    ModeSearch
        The modes, highest log density first.
    """
    if int(n_starts) < 1:
        raise PluralstanError(f"n_starts must be a positive integer, got {n_starts!r}")
    t0 = time.perf_counter()
    density = get_engine(backend).log_density(program, data)
    rng = np.random.default_rng(seed)
    starts = [rng.uniform(-radius, radius, density.dims) for _ in range(int(n_starts))]
    optima, failed = [], 0
    for found in _optimise_all(density, starts, max_iter, workers):
        if found is None:
            failed += 1
            continue
        lp, x = found
        values = density.constrain(x, transformed=True)
        if dims is not None:
            values = {k: v for k, v in values.items() if k in dims}
        optima.append(Mode(lp, 1, values, density.constrain(x)))
    label = label_dim if dims is not None else None
    modes = deduplicate(optima, dict(dims or {}), label, atol)
    if laplace and modes:
        modes[0].sd = laplace_sd(density, density.unconstrain(modes[0].init), workers)
    return ModeSearch(modes, int(n_starts), failed, label, time.perf_counter() - t0)


def _hessian_column(density: Any, x: np.ndarray, j: int) -> np.ndarray:
    """Column ``j`` of the log density's Hessian at ``x``, by central differences of the
    gradient."""
    step = np.zeros(np.size(x))
    step[j] = HESSIAN_STEP
    return (density.grad(x + step) - density.grad(x - step)) / (2 * HESSIAN_STEP)


#: Step of the central differences of the gradient that :func:`laplace_sd` takes, on the
#: unconstrained space: small against the posterior's scales, large against the gradient's
#: rounding.
HESSIAN_STEP = 1e-4


def laplace_sd(density: Any, x: np.ndarray,
               workers: int | None = None) -> dict[str, np.ndarray] | None:
    """Marginal posterior sd of each unconstrained coordinate under the Laplace approximation
    at the mode ``x``: the root of the diagonal of the inverse of the negative Hessian of the
    log density, the Hessian by central differences of the gradient (two gradients per
    coordinate).

    A chain started at the mode can take these as the scales of its coordinates, where Stan's
    NUTS starts from a unit metric: PyStan cannot be given a metric, and the first window of
    its adaptation, on the unit metric, takes most of a warm-up's gradients
    (``benchmarks/latest_results.md``). Returns the sds by ``parameters``-block variable
    (column-major, as :meth:`~pluralstan.engine.base.LogDensity.constrain` splits values), or
    ``None`` when the negative Hessian is not positive definite (not a proper mode) or the
    program has a transform that changes the number of values (a simplex), whose coordinates
    do not split by variable. The columns of the Hessian are computed in ``workers``
    processes as the search's starts are (:func:`search`).
    """
    sizes = [int(np.prod(shape)) for shape in density.param_shapes]
    if sum(sizes) != density.dims:
        return None
    columns = _run_all(density, _hessian_column, _hessian_column_held,
                       [(x, j) for j in range(density.dims)], workers)
    hessian = np.column_stack(columns)
    precision = -0.5 * (hessian + hessian.T)
    try:
        chol = np.linalg.cholesky(precision)
    except np.linalg.LinAlgError:
        return None
    # diag(P^-1) = column sums of squares of L^-1, for P = L L'
    chol_inv = solve_triangular(chol, np.eye(len(chol)), lower=True)
    sd = np.sqrt(np.sum(chol_inv**2, axis=0))
    if not np.all(np.isfinite(sd)):
        return None
    parts = np.split(sd, np.cumsum(sizes)[:-1])
    return {name: part.reshape(shape, order="F")
            for name, part, shape in zip(density.param_names, parts, density.param_shapes,
                                         strict=True)}


def find_modes(model: str, comps: Any, *, K: int | None = None,
               priors: dict[str, Any] | None = None, n_starts: int = 20, seed: int = 1,
               backend: str = "pystan", workers: int | None = None,
               **options: Any) -> ModeSearch:
    """:func:`search` for a registered model and a comparison table (encoded as ``ps.fit``
    would encode them; ``options`` are the model's options)."""
    from .models import get_model

    spec = get_model(model)
    enc = spec.encode(as_comparisons(comps), K=K, priors=priors, **options)
    return search(spec.program, enc.data, dims=enc.dims, label_dim=enc.label_dim,
                  n_starts=n_starts, seed=seed, backend=backend, workers=workers)


#: The log density a forked worker of :func:`_optimise_all` maximises (inherited, not pickled:
#: it holds the compiled module).
_WORKER_DENSITY: Any = None


def _hold(density: Any) -> None:
    """Initialise a worker of :func:`_optimise_all`: keep ``density``; run BLAS on one thread
    (OpenBLAS's threads spin between SciPy's many small calls, on the cores the other workers
    need); leave Ctrl-C to the calling process, which stops the workers."""
    global _WORKER_DENSITY
    _WORKER_DENSITY = density
    threadpool_limits(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _optimise_held(x0: np.ndarray, max_iter: int) -> tuple[float, np.ndarray] | None:
    return _optimise(_WORKER_DENSITY, x0, max_iter)


def _hessian_column_held(x: np.ndarray, j: int) -> np.ndarray:
    return _hessian_column(_WORKER_DENSITY, x, j)


def _run_all(density: Any, local: Callable[..., Any], held: Callable[..., Any],
             args: Sequence[tuple], workers: int | None) -> list[Any]:
    """``local(density, *a)`` for every ``a`` in ``args``, in order, spread over ``workers``
    processes, where each runs ``held(*a)`` on the ``density`` it inherited.

    Each evaluation goes through httpstan's module, which holds the GIL, so threads would not
    run side by side. The workers are forked, so they inherit ``density`` (its compiled module
    and converted data) instead of rebuilding it; leaving the pool terminates them, also on
    Ctrl-C. Where fork is not available, or in a daemonic process (which may not start
    children), the calls run here one after another.
    """
    n = min(len(args), int(workers or default_workers()))
    if n < 2 or mp.current_process().daemon or "fork" not in mp.get_all_start_methods():
        return [local(density, *a) for a in args]
    with mp.get_context("fork").Pool(n, initializer=_hold, initargs=(density,)) as pool:
        return pool.starmap(held, args, chunksize=max(1, len(args) // (4 * n)))


def _optimise_all(density: Any, starts: Sequence[np.ndarray], max_iter: int,
                  workers: int | None) -> list[tuple[float, np.ndarray] | None]:
    """:func:`_optimise` from every start, in order, spread over ``workers`` processes
    (:func:`_run_all`)."""
    return _run_all(density, _optimise, _optimise_held, [(x0, max_iter) for x0 in starts],
                    workers)


def _optimise(density: Any, x0: np.ndarray, max_iter: int) -> tuple[float, np.ndarray] | None:
    """Maximise the log density from ``x0``; ``(log density, optimum)``, or ``None`` when the
    run did not converge."""

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            return -density.log_prob(x), -density.grad(x)
        except (RuntimeError, ValueError):  # Stan rejected the point (e.g. an overflow)
            return np.inf, np.zeros_like(x)

    res = minimize(objective, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": int(max_iter), "gtol": 1e-6})
    # a line search that stalls next to the optimum ends "abnormally" with a tiny gradient
    if not np.isfinite(res.fun) or not (res.success or np.max(np.abs(res.jac)) < 1e-3):
        return None
    return -float(res.fun), np.asarray(res.x)


def _label_names(values: Mapping[str, np.ndarray], dims: Mapping[str, Sequence[str]],
                 label_dim: str | None) -> list[str]:
    """Variables of ``values`` that carry ``label_dim``."""
    if label_dim is None:
        return []
    return [n for n in values if label_dim in dims.get(n, ())]


def _components(values: Mapping[str, np.ndarray], names: list[str],
                dims: Mapping[str, Sequence[str]], label_dim: str) -> np.ndarray:
    """``(K, m)``: every labelled value of one optimum, by component."""
    return np.concatenate([
        np.moveaxis(np.asarray(values[n]), list(dims[n]).index(label_dim), 0)
        .reshape(np.shape(values[n])[list(dims[n]).index(label_dim)], -1)
        for n in names], axis=1)


def _permuted(values: Mapping[str, np.ndarray], perm: np.ndarray,
              dims: Mapping[str, Sequence[str]], label_dim: str | None) -> dict[str, np.ndarray]:
    """``values`` with component ``k`` taken from component ``perm[k]``."""
    names = set(_label_names(values, dims, label_dim))
    return {n: np.take(v, perm, axis=list(dims[n]).index(label_dim)) if n in names else v
            for n, v in values.items()}


def _canonical(values: dict[str, np.ndarray], dims: Mapping[str, Sequence[str]],
               label_dim: str | None) -> dict[str, np.ndarray]:
    """Components in decreasing order of the mixing weights (the first variable whose only dim
    is ``label_dim``), else of the first labelled value."""
    names = _label_names(values, dims, label_dim)
    if not names:
        return values
    weights = next((n for n in names if list(dims[n]) == [label_dim]), None)
    key = (np.asarray(values[weights]) if weights
           else _components(values, names, dims, label_dim)[:, 0])
    return _permuted(values, np.argsort(-key, kind="stable"), dims, label_dim)


def _distance(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
              dims: Mapping[str, Sequence[str]], label_dim: str | None) -> float:
    """Largest absolute difference between two optima after the best permutation of ``b``'s
    components (Hungarian alignment of :func:`pluralstan.relabel.pivot`)."""
    names = _label_names(a, dims, label_dim)
    if names:
        stacked = np.stack([_components(a, names, dims, label_dim),
                            _components(b, names, dims, label_dim)])
        b = _permuted(b, pivot(stacked, 0)[1], dims, label_dim)
    return max((float(np.max(np.abs(np.asarray(a[n]) - np.asarray(b[n])), initial=0.0))
                for n in a), default=0.0)


def deduplicate(optima: Sequence[Mode], dims: Mapping[str, Sequence[str]],
                label_dim: str | None = "group", atol: float = 0.05) -> list[Mode]:
    """Merge optima that are one mode up to a permutation of their components.

    Parameters
    ----------
    optima
        Optima (e.g. one per L-BFGS start), each a :class:`Mode` with ``starts`` = 1.
    dims
        Dims of the variables in each optimum's ``values`` (``Encoded.dims``).
    label_dim
        The dim of exchangeable components; ``None``: compare without permuting.
    atol
        Optima are one mode when, after the best permutation of the components
        (:func:`pluralstan.relabel.pivot`), no value differs by more than ``atol``.

    Returns
    -------
    list of Mode
        The distinct modes, highest log density first; each keeps the values of its best
        optimum (components by decreasing mixing weight) and counts the optima that reached it.
    """
    modes: list[Mode] = []
    for opt in sorted(optima, key=lambda m: -m.log_density):
        same = next((m for m in modes
                     if _distance(m.values, opt.values, dims, label_dim) <= atol), None)
        if same is None:
            modes.append(Mode(opt.log_density, 1, _canonical(opt.values, dims, label_dim),
                              opt.init))
        else:
            same.starts += 1
    return modes


# ---------------------------------------------------------------------- stacking
def stacking_weights(pointwise: pd.DataFrame) -> pd.Series:
    """Stacking weights of components from their pointwise leave-one-out log densities.

    Parameters
    ----------
    pointwise
        Rows: observations; columns: components (chain groups, models); values:
        ``log p_k(y_i | y_-i)``.

    Returns
    -------
    pandas.Series
        Weights on the simplex maximising ``sum_i log sum_k w_k p_k(y_i | y_-i)``, indexed by
        the columns. ArviZ's stacking optimiser (``az.compare``) is applied to the values
        shifted by their per-observation maximum, which changes no weight and keeps every
        exponential in floating-point range.
    """
    lpd = np.asarray(pointwise, dtype=float)
    if lpd.ndim != 2 or lpd.shape[1] < 1 or lpd.shape[0] < 1 or not np.isfinite(lpd).all():
        raise PluralstanError(
            "stacking needs a finite (observation x component) table of log densities, got "
            f"shape {lpd.shape}"
        )
    names = [str(c) for c in pointwise.columns]
    if lpd.shape[1] == 1:
        return pd.Series([1.0], index=names, name="weight")
    shifted = lpd - lpd.max(axis=1, keepdims=True)
    weights = np.clip(_arviz.stacking_weights(shifted), 0.0, None)
    return pd.Series(weights / weights.sum(), index=names, name="weight")


# ---------------------------------------------------------------------- chains into modes
def _relabelled(idata: _arviz.Idata, dim: str) -> _arviz.Idata:
    """The fit relabelled (:func:`pluralstan.relabel.relabel`) unless it already is, its labels
    are not latent, or a constraint orders them."""
    post = _arviz.group(idata, "posterior")
    if (not diagnostics.is_latent(idata, dim) or "relabelling" in post.attrs
            or post.attrs.get("identify") == "ordered"):
        return idata
    return relabel(idata, dim=dim)[0]


def _judged(idata: _arviz.Idata, dim: str, var_names: list[str] | None) -> xr.Dataset:
    """What chains of one mode agree on: the parameters and the label-invariant scalars."""
    names = var_names or diagnostics.parameter_names(idata)
    ds = _arviz.group(idata, "posterior")[names].reset_coords(drop=True)
    for name, da in diagnostics.label_invariant(idata, dim).data_vars.items():
        ds[f"invariant_{name}"] = da
    return ds


def _max_rhat(ds: xr.Dataset) -> float:
    """Largest finite R-hat over every variable of ``ds`` (NaN when none is defined)."""
    vals = [np.asarray(v, dtype=float).ravel() for v in az.rhat(ds).data_vars.values()]
    flat = np.concatenate(vals) if vals else np.array([])
    flat = flat[np.isfinite(flat)]
    return float(flat.max()) if flat.size else np.nan


def _chain_lp(idata: _arviz.Idata) -> np.ndarray:
    """Mean log density of every chain."""
    if "sample_stats" not in _arviz.groups(idata) or "lp" not in idata.sample_stats:
        raise PluralstanError("grouping chains into modes needs sample_stats['lp'] (lp__)")
    return idata.sample_stats["lp"].mean("draw").to_numpy()


def group_chains(
    idata: _arviz.Idata,
    *,
    rhat_max: float = GROUP_RHAT,
    dim: str = "group",
    var_names: list[str] | None = None,
) -> list[list[int]]:
    """Group chains that explore the same mode.

    Chains are taken in decreasing order of mean log density; each joins the first group whose
    R-hat with it, over ``lp``, the label-invariant scalars
    (:func:`pluralstan.diagnostics.label_invariant`) and the relabelled parameters, stays at or
    below ``rhat_max``, else starts a group. Relabel the fit first (:func:`stack_chains` does).

    Parameters
    ----------
    idata
        A fit with ``posterior`` and ``sample_stats`` groups.
    rhat_max
        R-hat up to which chains share a mode.
    dim
        The latent label dim.
    var_names
        Parameters compared (default :func:`pluralstan.diagnostics.parameter_names`).

    Returns
    -------
    list of list of int
        Chain positions of every group, the group of the highest-density chain first.
    """
    judged = _judged(idata, dim, var_names)
    groups: list[list[int]] = []
    for chain in np.argsort(-_chain_lp(idata), kind="stable"):
        home = next((g for g in groups
                     if _max_rhat(judged.isel(chain=[*g, int(chain)])) <= rhat_max), None)
        if home is None:
            groups.append([int(chain)])
        else:
            home.append(int(chain))
    return groups


@dataclass
class ModeReport:
    """The modes a fit's chains found and how they were combined (:func:`stack_chains`).

    Attributes
    ----------
    modes
        Per mode: ``chains`` (labels), ``weight`` (stacking), ``lp_mean`` (mean log density of
        its draws), ``elpd_loo`` and ``se`` (its PSIS-LOO estimate), ``max_pareto_k``,
        ``rhat`` (largest R-hat within the mode; NaN for a single chain).
    differences
        Per mode after the first: the parameters whose posterior means differ most from the
        first mode's (components aligned by :func:`pluralstan.relabel.pivot`), as ``variable``,
        ``best`` (first mode's mean), ``this`` and ``difference``.
    unit
        What one pointwise log density predicts (``annotator`` or ``comparison``).
    """

    modes: list[dict[str, Any]]
    differences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unit: str = ""

    @property
    def weights(self) -> np.ndarray:
        """Stacking weights, one per mode."""
        return np.array([m["weight"] for m in self.modes])

    def table(self) -> pd.DataFrame:
        """One row per mode."""
        frame = pd.DataFrame(self.modes).set_index("mode")
        frame["chains"] = frame["chains"].map(lambda c: ",".join(map(str, c)))
        return frame

    def to_json(self) -> str:
        """JSON form, stored in ``posterior.attrs["modes"]``."""
        return json.dumps(asdict(self), default=float)

    def __str__(self) -> str:
        n = len(self.modes)
        if n == 1:
            head = "one mode: every chain explores the same posterior (no stacking needed)"
        else:
            head = (f"{n} modes that do not mix; combined by stacking of chains (Yao, Vehtari "
                    f"& Gelman 2022) on leave-one-{self.unit or 'observation'}-out predictions")
        lines = [head, self.table().round(3).to_string()]
        for mode, rows in self.differences.items():
            if rows:
                lines.append(f"mode {mode} vs mode 0, largest differences in posterior means:")
                lines += [f"  {r['variable']}: {r['best']:.3f} vs {r['this']:.3f} "
                          f"({r['difference']:+.3f})" for r in rows]
        return "\n".join(lines)


def _log_lik_name(idata: _arviz.Idata, var_name: str | None) -> str:
    """The log-likelihood variable to stack on."""
    if "log_likelihood" not in _arviz.groups(idata) or not idata.log_likelihood.data_vars:
        raise PluralstanError("stacking chains needs the fit's log_likelihood group")
    names = list(map(str, idata.log_likelihood.data_vars))
    if var_name is None:
        if len(names) > 1:
            raise PluralstanError(f"the fit has several log-likelihood variables {names}; "
                                  "name one with var_name=")
        return names[0]
    if var_name not in names:
        raise PluralstanError(f"no log-likelihood variable {var_name!r}; available: {names}")
    return var_name


def _mode_means(idata: _arviz.Idata, groups: list[list[int]], names: list[str],
                dim: str) -> list[dict[str, xr.DataArray]]:
    """Posterior means of ``names`` per mode, components of every mode aligned to the first's."""
    post = _arviz.group(idata, "posterior")
    means = [{n: post[n].isel(chain=g).mean(("chain", "draw")) for n in names} for g in groups]
    labelled = [n for n in names if dim in post[n].dims]
    if not labelled or len(groups) < 2:
        return means
    dims = {n: list(means[0][n].dims) for n in names}

    def comps(m: dict[str, xr.DataArray]) -> np.ndarray:
        return _components({n: m[n].values for n in labelled}, labelled, dims, dim)

    aligned = [means[0]]
    for m in means[1:]:
        perm = pivot(np.stack([comps(means[0]), comps(m)]), 0)[1]
        aligned.append({n: (m[n].copy(data=np.take(m[n].values, perm, axis=dims[n].index(dim)))
                            if n in labelled else m[n]) for n in names})
    return aligned


def _differences(means: list[dict[str, xr.DataArray]], top: int) -> dict[str, list[dict]]:
    """The ``top`` largest absolute differences of every mode's means from the first mode's."""
    out: dict[str, list[dict]] = {}
    for k, m in enumerate(means[1:], start=1):
        rows = []
        for name, da in m.items():
            best = means[0][name]
            for idx in np.ndindex(da.shape):
                coords = ", ".join(str(da.coords[d].values[i]) for d, i in zip(da.dims, idx,
                                                                              strict=True))
                rows.append({"variable": f"{name}[{coords}]" if coords else name,
                             "best": float(best.values[idx]), "this": float(da.values[idx]),
                             "difference": float(da.values[idx] - best.values[idx])})
        rows.sort(key=lambda r: -abs(r["difference"]))
        out[str(k)] = rows[:top]
    return out


def _resample(idata: _arviz.Idata, groups: list[list[int]], weights: np.ndarray,
              seed: int) -> _arviz.Idata:
    """One chain of draws taken from every group in proportion to its weight.

    As many draws as the fit has; a group's share (largest-remainder rounding) is drawn
    without replacement from its draws when it has enough, with replacement otherwise.
    ``sample_stats["mode"]`` records each draw's mode.
    """
    rng = np.random.default_rng(seed)
    n_draw = idata.posterior.sizes["draw"]
    total = idata.posterior.sizes["chain"] * n_draw
    raw = weights * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    chain_idx, draw_idx, mode_of = [], [], []
    for m, (g, n) in enumerate(zip(groups, counts, strict=True)):
        pool = len(g) * n_draw
        pick = rng.choice(pool, size=n, replace=n > pool)
        chain_idx.append(np.asarray(g)[pick // n_draw])
        draw_idx.append(pick % n_draw)
        mode_of.append(np.full(n, m))
    chains = xr.DataArray(np.concatenate(chain_idx)[None], dims=("chain", "draw"))
    draws = xr.DataArray(np.concatenate(draw_idx)[None], dims=("chain", "draw"))
    out = {}
    for group in _arviz.groups(idata):
        ds = _arviz.group(idata, group)
        if "chain" in ds.dims and "draw" in ds.dims:
            ds = ds.isel(chain=chains, draw=draws).assign_coords(
                chain=[0], draw=np.arange(total))
        out[group] = ds
    out["sample_stats"] = out["sample_stats"].assign(
        mode=(("chain", "draw"), np.concatenate(mode_of)[None]))
    return _arviz.make_idata(out)


def stack_chains(
    idata: _arviz.Idata,
    *,
    groups: list[list[int]] | None = None,
    var_name: str | None = None,
    dim: str = "group",
    rhat_max: float = GROUP_RHAT,
    seed: int = 1,
    top: int = 5,
) -> tuple[_arviz.Idata, ModeReport]:
    """Group a fit's chains into modes and combine the modes by stacking of chains.

    Parameters
    ----------
    idata
        A fit (relabelled here first when its latent labels are not yet).
    groups
        Chain positions per mode (default :func:`group_chains`).
    var_name
        Log-likelihood variable whose pointwise PSIS-LOO densities are stacked (default: the
        only one). For annotator-level models it is per annotator: leave one annotator out.
    dim
        The latent label dim.
    rhat_max
        Passed to :func:`group_chains`.
    seed
        Seed of the resampling.
    top
        How many largest parameter differences the report lists per mode.

    Returns
    -------
    stacked, report
        With one mode, the (relabelled) fit itself; else a one-chain InferenceData whose draws
        are resampled from the modes in proportion to their stacking weights
        (``sample_stats["mode"]`` says from which). Either way the report is stored as JSON in
        ``posterior.attrs["modes"]``.
    """
    idata = _relabelled(idata, dim)
    groups = groups or group_chains(idata, rhat_max=rhat_max, dim=dim)
    name = _log_lik_name(idata, var_name)
    loos = [az.loo(_arviz.native(idata).isel(chain=g), pointwise=True, var_name=name)
            for g in groups]
    pointwise = pd.DataFrame({str(m): np.ravel(_arviz.elpd_pointwise(loo).values)
                              for m, loo in enumerate(loos)})
    weights = stacking_weights(pointwise).to_numpy()
    chain_labels = idata.posterior["chain"].values
    lp = idata.sample_stats["lp"]
    judged = _judged(idata, dim, None)
    modes = [{
        "mode": m, "chains": [int(c) for c in chain_labels[g]], "weight": float(weights[m]),
        "lp_mean": float(lp.isel(chain=g).mean()), "elpd_loo": _arviz.elpd(loos[m])[0],
        "se": float(loos[m].se), "max_pareto_k": float(np.max(loos[m].pareto_k.values)),
        "rhat": _max_rhat(judged.isel(chain=g)) if len(g) > 1 else np.nan,
    } for m, g in enumerate(groups)]
    names = diagnostics.parameter_names(idata)
    ll_dims = [d for d in idata.log_likelihood[name].dims if d not in ("chain", "draw")]
    report = ModeReport(modes, _differences(_mode_means(idata, groups, names, dim), top),
                        ll_dims[0] if len(ll_dims) == 1 else "observation")
    if len(groups) == 1:  # a shallow copy, so that the caller's attributes stay as they were
        stacked = _arviz.replace_groups(idata)
    else:
        stacked = _resample(idata, groups, weights, seed)
    stacked.posterior.attrs["modes"] = report.to_json()
    return stacked, report


def _per_draw_groups(idata: _arviz.Idata) -> list[str]:
    """Groups of ``idata`` with ``chain`` and ``draw`` dims (those stacking resamples)."""
    return [g for g in _arviz.groups(idata) if not g.startswith(UNSTACKED)
            and {"chain", "draw"} <= set(_arviz.group(idata, g).dims)]


def keep_unstacked(stacked: _arviz.Idata, chains: _arviz.Idata) -> _arviz.Idata:
    """``stacked`` with the per-draw groups of ``chains`` (the fit before stacking) added as
    ``unstacked_<group>`` (saved and loaded with the fit; :func:`unstack` reads them back)."""
    return _arviz.replace_groups(stacked, **{f"{UNSTACKED}{g}": _arviz.group(chains, g)
                                             for g in _per_draw_groups(chains)})


def unstack(idata: _arviz.Idata) -> _arviz.Idata:
    """The chains of a stacked fit as they were sampled (relabelled, not resampled).

    A fit that :func:`pluralstan.pipeline.finalize` stacked keeps its chains in
    ``unstacked_<group>`` groups; this returns a fit made of them (with the groups that do not
    depend on the draws, e.g. ``observed_data``). A fit that was never stacked is returned as it
    is. :func:`pluralstan.relabel.unrelabel` of the result gives the draws as sampled.
    """
    kept = [g for g in _arviz.groups(idata) if g.startswith(UNSTACKED)]
    if not kept:
        return idata
    groups = {g: _arviz.group(idata, g) for g in _arviz.groups(idata)
              if not g.startswith(UNSTACKED) and g not in _per_draw_groups(idata)}
    groups.update({g[len(UNSTACKED):]: _arviz.group(idata, g) for g in kept})
    posterior = groups["posterior"].copy()
    posterior.attrs.pop("modes", None)
    groups["posterior"] = posterior
    return _arviz.make_idata(groups)

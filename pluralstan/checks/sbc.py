"""Simulation-based calibration (SBC) for every registered model.

SBC (Talts et al. 2018; Modrak et al. 2023) checks a model *and* its sampler together: draw
parameters from the prior, simulate data from them, fit, and record the rank of each true value
among the (thinned) posterior draws. If the simulator, the Stan program and the sampler agree, the
ranks are uniform; a U shape means over-confident posteriors, a hump under-confident ones, a slope
a bias.

The simulator is the Stan program itself, so it cannot drift from the model: every program has a
``prior_only`` switch and generates a replicate of every data item it models (``y_rep`` of the
judgement counts ``y``; the labeled model also ``n_annotators_rep`` of its label counts), listed
in ``Encoded.predictive``. One prior-only run therefore yields draws ``(theta, y_rep, ...)`` from
exactly the model's joint distribution (conditional on the design: covariates and trials per
cell); each replicate then refits the program with every modelled data item replaced by its
simulated value. The prior draws come from NUTS, thinned by
``prior_thin``; problems of that run (divergences, e.g. in a funnel-shaped hierarchical prior) are
reported in :attr:`SBCResult.prior_problems`, because then the truths are not exact prior draws.
What is ranked:

* every parameter and transformed parameter (names read from ``stanc --info``; generated
  quantities are left out, since they may depend on the observed data, and so are the internal
  pieces an encoder lists in ``Encoded.drop``),
* data-dependent test quantities, by default the log likelihood of the simulated data
  (:func:`data_log_lik`: the sum of ``y * log_p_cell`` over cells and outcomes for programs that
  emit cell-level outcome log probabilities, else the sum of the program's ``log_lik``, e.g. one
  value per annotator for the annotator-level models). Its value at the truth is computed by the
  Stan program too: one draw of Stan's ``fixed_param`` sampler at the true parameters, with the
  simulated data (:meth:`pluralstan.engine.Engine.generate`), so no likelihood is written twice.

**Mixture models switch labels**, so the rank of "component 1" is meaningless. For models whose
encoder sets ``Encoded.label_dim``, every variable that carries that dim is sorted along it,
separately for each other coordinate, in the truth and in every draw: ranks are of the order
statistics ``theta[(1), x1] <= theta[(2), x1]`` and so on, which any relabelling leaves unchanged
(and SBC holds for any function of the parameters). Quantities labelled ``(k)`` are these.

The pass / fail decision per quantity is the ECDF simultaneous-band test of Säilynoja, Bürkner &
Vehtari (2022), the test behind the ECDF-difference plots: the ECDF of the fractional ranks
``(r + 0.5) / (L + 1)`` must stay inside the simultaneous ``prob`` band of the discrete uniform at
every evaluation point. :attr:`SBCResult.passed` applies it at family-wise level ``prob`` over all
quantities (Bonferroni) and requires every replicate to have finished, because dropping failed
fits biases the ranks. A chi-square test of the rank histogram is reported beside it.

Examples
--------
>>> import pluralstan as ps                                             # doctest: +SKIP
>>> from pluralstan.checks.sbc import sbc                            # doctest: +SKIP
>>> design = ps.simulate.bt([0.5, -0.5], n_pairs=20, judgements_per_pair=3)  # doctest: +SKIP
>>> result = sbc("aggregate", design, n_sims=200, seed=1)               # doctest: +SKIP
>>> result.summary()                                                    # doctest: +SKIP
>>> from pluralstan.plots import save_sbc_plots                          # doctest: +SKIP
>>> save_sbc_plots(result, "figures/sbc")                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .. import _arviz, diagnostics
from ..data import Comparisons, as_comparisons
from ..engine import Draws, SamplerConfig, StanProgram, get_engine, program_info
from ..errors import DiagnosticWarning, PluralstanError
from ..models import get_model
from ..models.base import Encoded, ModelSpec, prior_parametrisation
from ..parallel import Job, RunReport, run_jobs
from ..pipeline import assemble, complete, finalize, fit_attrs, provenance
from .ecdf import ecdf_difference, simultaneous_band

#: Signature of a data-dependent test quantity: (Stan outputs, computed with the simulated data,
#: with a leading draw axis; simulated ``y``) -> name -> one value per draw.
QuantityFn = Callable[[Mapping[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]

__all__ = [
    "SBCResult",
    "data_log_lik",
    "discrete_uniform_cdf",
    "ecdf_band_test",
    "fractional_ranks",
    "rank_chisquare",
    "sbc",
    "sbc_replicate",
    "stan_parameter_names",
]


# --------------------------------------------------------------------------- model introspection
def stan_parameter_names(program: StanProgram, transformed: bool = True,
                         generated: bool = False) -> list[str]:
    """Names declared in the ``parameters`` block, then (as asked) the ``transformed
    parameters`` and ``generated quantities`` blocks, in order."""
    info = program_info(program)
    blocks = ["parameters", *(["transformed parameters"] if transformed else []),
              *(["generated quantities"] if generated else [])]
    return [name for block in blocks for name in info.get(block, {})]


# --------------------------------------------------------------------------- rank statistics
def fractional_ranks(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """Map ranks ``0..L`` to ``(r + 0.5) / (L + 1)``, the midpoints of ``L + 1`` equal bins."""
    return (np.asarray(ranks, dtype=float) + 0.5) / (max_rank + 1)


def discrete_uniform_cdf(x: np.ndarray, max_rank: int) -> np.ndarray:
    """CDF of the fractional rank of a uniform rank on ``0..L``, evaluated at ``x``.

    ``P((r + 0.5) / (L + 1) <= x) = floor(x (L + 1) + 0.5) / (L + 1)``, clipped to [0, 1]; exact at
    every point, so the simultaneous bands built on it are calibrated for discrete ranks.
    """
    n = max_rank + 1
    return np.clip(np.floor(np.asarray(x, dtype=float) * n + 0.5) / n, 0.0, 1.0)


def _eval_points(n_sims: int, max_rank: int) -> np.ndarray:
    """Interior evaluation points ``j / K``, ``K = min(L + 1, N)`` (as the R package SBC)."""
    k = max(2, min(max_rank + 1, n_sims))
    return np.arange(1, k) / k


def _band(n_sims: int, max_rank: int, prob: float) -> tuple[np.ndarray, ...]:
    """Evaluation points, uniform CDF and simultaneous band; they depend on the sizes only."""
    z = _eval_points(n_sims, max_rank)
    cdf = discrete_uniform_cdf(z, max_rank)
    lower, upper = simultaneous_band(n_sims, cdf, prob)
    return z, cdf, lower, upper


def ecdf_band_test(ranks: np.ndarray, max_rank: int, prob: float = 0.95) -> tuple[bool, float]:
    """Simultaneous ECDF-band test of rank uniformity (Säilynoja, Bürkner & Vehtari 2022).

    Parameters
    ----------
    ranks
        One rank in ``0..max_rank`` per simulation.
    max_rank
        ``L``, the number of thinned posterior draws.
    prob
        Simultaneous coverage of the band under uniformity (the test's level is ``1 - prob``).

    Returns
    -------
    inside : bool
        Whether the ECDF of the fractional ranks stays inside the band at every point.
    worst : float
        The largest ``|ECDF - CDF|`` over the evaluation points (for reporting).
    """
    u = np.sort(fractional_ranks(ranks, max_rank))
    z, cdf, lower, upper = _band(u.size, int(max_rank), float(prob))
    ecdf = _arviz.ecdf(u, z)
    inside = bool(np.all((ecdf >= lower - 1e-12) & (ecdf <= upper + 1e-12)))
    return inside, float(np.max(np.abs(ecdf - cdf)))


def _rank_bins(max_rank: int, n_bins: int) -> np.ndarray:
    """Integer bin edges over ranks ``0..L`` (``n_bins`` bins of near-equal width)."""
    return np.unique(np.round(np.linspace(0, max_rank + 1, n_bins + 1)).astype(int))


def default_bins(n_sims: int, max_rank: int) -> int:
    """Histogram bins: the largest divisor of ``L + 1`` that leaves at least 5 expected ranks per
    bin, at most 20 (equal-width bins); at least 2."""
    target = max(2, min(20, n_sims // 5, max_rank + 1))
    divisors = [b for b in range(2, target + 1) if (max_rank + 1) % b == 0]
    return divisors[-1] if divisors else target


def rank_chisquare(ranks: np.ndarray, max_rank: int, n_bins: int | None = None
                   ) -> tuple[float, int, float]:
    """Chi-square test of the binned rank histogram against the discrete uniform.

    Returns the statistic, its degrees of freedom and the p-value. Expected counts use the exact
    bin probabilities (bins need not divide ``L + 1`` evenly).
    """
    ranks = np.asarray(ranks)
    edges = _rank_bins(max_rank, n_bins or default_bins(ranks.size, max_rank))
    observed = np.histogram(ranks, bins=edges)[0]
    expected = ranks.size * np.diff(edges) / (max_rank + 1)
    result = stats.chisquare(observed, expected)
    return float(result.statistic), int(edges.size - 2), float(result.pvalue)


def _ranks_of(truth: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each truth among ``draws`` (leading axis); ties broken uniformly at random."""
    below = (draws < truth).sum(axis=0)
    ties = (draws == truth).sum(axis=0)
    return below + rng.integers(0, ties + 1)


# --------------------------------------------------------------------------- test quantities
def data_log_lik(variables: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, np.ndarray]:
    """Log likelihood of the simulated counts, per draw.

    ``sum(y * log_p_cell)`` over cells and outcomes when the program emits cell-level outcome log
    probabilities ``log_p_cell`` of the shape of ``y`` (comparison-level models); otherwise the sum
    of its ``log_lik`` output (annotator-level models: one value per annotator, computed in Stan
    from the data the program was run with). Multinomial coefficients are constant in the
    parameters and so irrelevant to ranks. Returns ``{}`` when the program has neither (pass your
    own ``quantities`` function then).
    """
    y = np.asarray(y, dtype=float)
    log_p = variables.get("log_p_cell")
    if log_p is not None and log_p.shape[1:] == y.shape:
        return {"log_lik": log_p.reshape(log_p.shape[0], -1) @ y.reshape(-1)}
    log_lik = variables.get("log_lik")
    if log_lik is not None:
        return {"log_lik": log_lik.reshape(log_lik.shape[0], -1).sum(axis=1)}
    return {}


# --------------------------------------------------------------------------- one replicate
def _pool_chains(arr: np.ndarray, thin: int) -> np.ndarray:
    """``(chain, draw, *shape)`` -> ``(kept draws, *shape)``: every ``thin``-th draw of each chain,
    chains interleaved."""
    kept = np.moveaxis(arr[:, ::thin], 0, 1)
    return kept.reshape(kept.shape[0] * kept.shape[1], *arr.shape[2:])


def _usable_rank(n_draws: int) -> int:
    """Draws to rank among: the largest ``L <= n_draws`` with ``L + 1`` a multiple of 20 (when
    ``n_draws >= 19``), so that rank histograms have bins of equal width."""
    return n_draws if n_draws < 19 else 20 * ((n_draws + 1) // 20) - 1


def _invariant(arr: np.ndarray, label_axis: int | None) -> np.ndarray:
    """Sort along the mixture label axis (order statistics are invariant to relabelling)."""
    return arr if label_axis is None else np.sort(arr, axis=label_axis)


def _encoded(model: str, comps: Comparisons, K: int | None, priors: dict[str, Any] | None,
             options: Mapping[str, Any], simulated: Mapping[str, np.ndarray]) -> Encoded:
    """The model's encoding of the design with every modelled data item replaced by its
    simulated value, in the Stan data and in the observed data (relabelling weighs allocation
    probabilities by the observed counts)."""
    enc = get_model(model).encode(comps, K=K, priors=priors, **options)
    data = {**enc.data, **{k: np.asarray(v) for k, v in simulated.items()}}
    observed = {k: (np.reshape(data[k], np.shape(v)) if k in simulated else v)
                for k, v in enc.observed.items()}
    return dataclasses.replace(enc, data=data, observed=observed)


def _chains(idata: _arviz.Idata, draws: Draws, name: str, shape: tuple[int, ...]
            ) -> np.ndarray:
    """``(chain, draw, *shape)`` draws of a ranked variable: from the finished (relabelled)
    posterior, else (a variable the InferenceData leaves out) as sampled. Optional scalars,
    squeezed to 0-d in the posterior, get back the shape of their truth."""
    if name not in idata.posterior:
        return np.asarray(draws.variables[name])
    arr = idata.posterior[name].transpose("chain", "draw", ...).values
    return arr.reshape(arr.shape[:2] + tuple(shape))


def sbc_replicate(
    model: str,
    comps: Comparisons,
    K: int | None,
    priors: dict[str, Any] | None,
    options: Mapping[str, Any],
    simulated: Mapping[str, np.ndarray],
    config: SamplerConfig,
    truth: Mapping[str, np.ndarray],
    names: Sequence[str],
    param_names: Sequence[str],
    label_axes: Mapping[str, int],
    thin: int,
    quantities: QuantityFn | None,
    rank_seed: int,
    backend: str = "auto",
) -> dict[str, Any]:
    """Fit one simulated data set through the fit pipeline and rank the truth (in a worker).

    The replicate is fitted as :func:`pluralstan.fit` fits: encoded, sampled, turned into
    InferenceData, relabelled when its components are latent and checked
    (:func:`pluralstan.pipeline.run`, without stacking: SBC calibrates the chains as sampled,
    and a replicate whose chains fall in different modes is recorded as a problem).

    Parameters
    ----------
    model, comps, K, priors, options
        The model and its design, encoded in the worker (an ``Encoded`` holds functions that do
        not pickle); ``priors`` are the fitted model's.
    simulated
        Stan data name -> simulated value of every modelled data item (``y``, ...).
    config
        NUTS settings.
    truth
        The generating draw: every Stan output of the prior-only run at that draw.
    names
        Variables to rank.
    param_names
        The program's ``parameters`` (to evaluate test quantities at the truth with the
        simulated data).
    label_axes
        Variable -> axis of its mixture label (within the variable's own shape).
    thin
        Keep every ``thin``-th draw of each chain (ranks need near-independent draws).
    quantities
        Data-dependent test quantities (see :func:`data_log_lik`), or ``None``.
    rank_seed
        Seed for breaking ties between the truth and draws.
    backend
        Engine name.

    Returns
    -------
    dict
        ``ranks`` (name -> integer array of the variable's shape, or scalar), ``at_truth``
        (test quantities at the truth), ``max_rank`` and the fit's recorded diagnostics
        (``divergences``, ``max_rhat``, ``min_ess_bulk``, ``problems``).
    """
    spec = get_model(model)
    enc = _encoded(model, comps, K, priors, options, simulated)
    engine = get_engine(backend)
    draws = complete(engine.sample(spec.program, enc.data, config), enc, enc.data)
    attrs = provenance(spec.name, spec.program, draws, comps, config.seed,
                       {"max_treedepth": config.max_treedepth, **fit_attrs(enc, K)})
    idata = finalize(assemble(draws, enc, attrs), label_dim=enc.label_dim,
                     max_treedepth=config.max_treedepth, warn=False, stack=False)
    rng = np.random.default_rng(rank_seed)
    flat = {name: _pool_chains(arr, thin) for name, arr in draws.variables.items()}
    max_rank = _usable_rank(next(iter(flat.values())).shape[0])
    ranks: dict[str, np.ndarray] = {}
    at_truth: dict[str, float] = {}
    for name in names:
        axis = label_axes.get(name)
        chains = _chains(idata, draws, name, np.shape(truth[name]))
        post = _invariant(_pool_chains(chains, thin)[:max_rank], None if axis is None
                          else axis + 1)
        ranks[name] = _ranks_of(_invariant(np.asarray(truth[name]), axis), post, rng)
    if quantities is not None:
        y = np.asarray(enc.data["y"])
        at_draws = quantities({k: v[:max_rank] for k, v in flat.items()}, y)
        # outputs at the truth recomputed with the simulated data (the prior run used the
        # design's); the truth's parameter values come from a prior-only run, which samples
        # theta itself, so they are evaluated without the design's basis
        truth_data = prior_parametrisation(enc.data)
        at_true = enc.complete(engine.generate(spec.program, truth_data,
                                               {n: truth[n] for n in param_names}, rank_seed),
                               truth_data)
        for name, value in quantities(at_true, y).items():
            at_truth[name] = float(np.asarray(value)[0])
            ranks[name] = _ranks_of(at_truth[name], np.asarray(at_draws[name]), rng)
    record = diagnostics.recorded(idata)
    return {"ranks": ranks, "at_truth": at_truth, "max_rank": int(max_rank),
            "divergences": int(record["divergences"]), "max_rhat": float(record["max_rhat"]),
            "min_ess_bulk": float(record["min_ess_bulk"]), "problems": record["problems"]}


# --------------------------------------------------------------------------- result
@dataclass
class SBCResult:
    """Ranks and verdicts of an SBC run.

    Attributes
    ----------
    model
        Registry name of the model.
    ranks
        Tidy table, one row per simulation and quantity: ``sim``, ``seed``, ``quantity`` (e.g.
        ``theta[x1]``, ``theta[(1), x1]`` for an order statistic, ``log_lik``), ``variable``,
        ``rank``, ``max_rank``, ``truth``.
    sims
        One row per simulation: ``sim``, ``seed``, ``ok``, ``divergences``, ``max_rhat`` and
        ``min_ess_bulk`` (over the ranked variables, sorted like them for mixtures), ``seconds``,
        ``error``.
    prob
        Simultaneous band coverage used by the tests and plots.
    label_invariant
        Whether mixture variables were sorted along their label dim.
    settings
        Everything needed to reproduce the run (sampler settings, priors, seeds).
    prior_problems
        Problems of the prior-only run that generated the truths (e.g. divergences).
    """

    model: str
    ranks: pd.DataFrame
    sims: pd.DataFrame
    prob: float
    label_invariant: bool
    settings: dict[str, Any] = field(default_factory=dict)
    prior_problems: list[str] = field(default_factory=list)

    @property
    def quantities(self) -> list[str]:
        """The ranked quantities, in table order."""
        return list(dict.fromkeys(self.ranks["quantity"]))

    @property
    def n_failed(self) -> int:
        """Simulations whose fit raised."""
        return int((~self.sims["ok"]).sum())

    def summary(self) -> pd.DataFrame:
        """Per quantity: the ECDF band test, the chi-square test and the family-wise verdict.

        Columns: ``quantity``, ``n_sims``, ``max_rank``, ``ecdf_max_diff``, ``in_band`` (ECDF
        inside the simultaneous ``prob`` band), ``chi2``, ``chi2_df``, ``chi2_p``, ``pass``
        (inside the Bonferroni-widened band, level ``prob`` over all quantities together) and
        ``n_sims_divergent`` (replicates whose fit had divergent transitions).
        """
        names = self.quantities
        family_prob = 1.0 - (1.0 - self.prob) / max(1, len(names))
        divergent = int((self.sims["divergences"] > 0).sum())
        rows = []
        for name, sub in self.ranks.groupby("quantity", sort=False):
            max_rank = int(sub["max_rank"].iloc[0])
            in_band, worst = ecdf_band_test(sub["rank"].to_numpy(), max_rank, self.prob)
            family_ok, _ = ecdf_band_test(sub["rank"].to_numpy(), max_rank, family_prob)
            chi2, df, p = rank_chisquare(sub["rank"].to_numpy(), max_rank)
            rows.append({"quantity": name, "n_sims": len(sub), "max_rank": max_rank,
                         "ecdf_max_diff": worst, "in_band": in_band, "chi2": chi2,
                         "chi2_df": df, "chi2_p": p, "pass": family_ok,
                         "n_sims_divergent": divergent})
        return pd.DataFrame(rows)

    @property
    def passed(self) -> bool:
        """All quantities pass (family-wise level ``prob``) and no replicate failed."""
        return self.n_failed == 0 and bool(self.summary()["pass"].all())

    def report(self) -> str:
        """A short plain-text verdict naming the failing quantities and any fit problems."""
        table = self.summary()
        lines = [f"SBC of model {self.model!r}: {len(self.sims)} simulations, "
                 f"{self.n_failed} failed; ECDF simultaneous-band test at {self.prob:.0%} "
                 f"(family-wise over {len(table)} quantities): "
                 f"{'PASS' if self.passed else 'FAIL'}"]
        bad = table.loc[~table["pass"], "quantity"].tolist()
        if bad:
            lines.append(f"  outside the band: {', '.join(bad)}")
        if self.label_invariant:
            lines.append("  mixture quantities ranked as order statistics over the label dim "
                         "((k) = k-th smallest), which relabelling leaves unchanged")
        n_div = int((self.sims["divergences"] > 0).sum())
        if n_div:
            lines.append(f"  [diagnostics: {n_div} replicate fits had divergent transitions]")
        lines += [f"  [prior run: {p}]" for p in self.prior_problems]
        return "\n".join(lines)

    # ------------------------------------------------------------------ plots
    def _select(self, quantities: Sequence[str] | None) -> list[str]:
        names = list(quantities) if quantities is not None else self.quantities
        unknown = sorted(set(names) - set(self.quantities))
        if unknown:
            raise PluralstanError(f"unknown SBC quantities {unknown}; ranked: {self.quantities}")
        return names

    def rank_histogram(self, quantities: Sequence[str] | None = None, bins: int | None = None,
                       band_prob: float = 0.99) -> pd.DataFrame:
        """Binned ranks per quantity beside the pointwise binomial band of a uniform histogram.

        Parameters
        ----------
        quantities
            Quantities to bin (default: all ranked ones).
        bins
            Number of bins (default: :func:`default_bins`).
        band_prob
            Pointwise coverage of the band of each bin's count under uniform ranks.

        Returns
        -------
        pandas.DataFrame
            One row per quantity and bin: ``quantity``, ``n_sims``, ``bin_lower``,
            ``bin_upper`` (rank edges), ``count``, ``expected`` (under uniform ranks),
            ``band_lower``, ``band_upper``.
        """
        parts = []
        for name in self._select(quantities):
            sub = self.ranks[self.ranks["quantity"] == name]
            max_rank = int(sub["max_rank"].iloc[0])
            edges = _rank_bins(max_rank, bins or default_bins(len(sub), max_rank))
            p_bin = np.diff(edges) / (max_rank + 1)
            lower, upper = stats.binom.interval(band_prob, len(sub), p_bin)
            parts.append(pd.DataFrame({
                "quantity": name, "n_sims": len(sub), "bin_lower": edges[:-1],
                "bin_upper": edges[1:], "count": np.histogram(sub["rank"], bins=edges)[0],
                "expected": len(sub) * p_bin, "band_lower": lower, "band_upper": upper}))
        return pd.concat(parts, ignore_index=True)

    def ecdf_difference(self, quantities: Sequence[str] | None = None) -> pd.DataFrame:
        """ECDF of the fractional ranks minus the exact CDF of discrete uniform ranks.

        Evaluated at the points of :func:`ecdf_band_test`, with the optimised simultaneous
        ``prob`` band the test uses (:func:`pluralstan.checks.ecdf.ecdf_difference`).

        Returns
        -------
        pandas.DataFrame
            One row per quantity and evaluation point: ``quantity``, ``x`` (fractional rank),
            ``ecdf_diff``, ``lower``, ``upper``.
        """
        parts = []
        for name in self._select(quantities):
            sub = self.ranks[self.ranks["quantity"] == name]
            max_rank = int(sub["max_rank"].iloc[0])
            z, cdf, _, _ = _band(len(sub), max_rank, float(self.prob))
            diff = ecdf_difference(fractional_ranks(sub["rank"], max_rank), z, cdf, self.prob)
            parts.append(diff.to_dataframe().reset_index().assign(quantity=name))
        table = pd.concat(parts, ignore_index=True)
        return table[["quantity", "x", "ecdf_diff", "lower", "upper"]]


# --------------------------------------------------------------------------- driver
def _labels(name: str, shape: tuple[int, ...], enc: Encoded) -> list[str]:
    """Quantity labels of a variable's elements: ``theta[x1]``, ``theta[(1), x1]``, ``gamma``."""
    if shape in ((), (1,)) and name not in enc.dims:
        return [name]
    dims = enc.dims.get(name, [f"{name}_dim_{i}" for i in range(len(shape))])
    axes = []
    for dim, size in zip(dims, shape, strict=True):
        if dim == enc.label_dim:
            axes.append([f"({k + 1})" for k in range(size)])
        elif dim in enc.coords and len(enc.coords[dim]) == size:
            axes.append([str(c) for c in enc.coords[dim]])
        else:
            axes.append([str(i) for i in range(size)])
    return [f"{name}[{', '.join(parts)}]" for parts in itertools.product(*axes)]


def _prior_draws(spec: ModelSpec, enc: Encoded, n_sims: int, prior_thin: int, seed: int,
                 backend: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """``n_sims`` thinned joint draws (every Stan output, and what the model computes from them
    in Python) from one prior-only run."""
    chains = 2
    config = SamplerConfig(chains=chains, draws=math.ceil(n_sims * prior_thin / chains),
                           warmup=500, seed=seed)
    prior_data = {**enc.data, "prior_only": 1}
    draws = complete(get_engine(backend).sample(spec.program, prior_data, config), enc,
                     prior_data)
    problems = []
    n_div = int(draws.sample_stats["diverging"].sum()) if "diverging" in draws.sample_stats \
        else 0
    if n_div:
        problems.append(f"{n_div} divergent transitions in the prior-only run: the truths may "
                        "not be exact prior draws")
    joint = {name: _pool_chains(arr, prior_thin)[:n_sims] for name, arr in draws.variables.items()}
    return joint, problems


def _check_settings(n_sims: int, thin: int, prior_thin: int, prob: float) -> None:
    if int(n_sims) < 10:
        raise PluralstanError(f"n_sims must be at least 10 for a rank test to mean anything, "
                              f"got {n_sims!r}")
    for name, value in (("thin", thin), ("prior_thin", prior_thin)):
        if int(value) < 1:
            raise PluralstanError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 < float(prob) < 1.0:
        raise PluralstanError(f"prob must lie in (0, 1), got {prob!r}")


def sbc(
    model: str | ModelSpec,
    comps: Comparisons | pd.DataFrame,
    *,
    n_sims: int = 200,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    fit_priors: dict[str, Any] | None = None,
    chains: int = 2,
    draws: int = 200,
    warmup: int = 200,
    thin: int = 2,
    prior_thin: int = 5,
    seed: int = 1,
    adapt_delta: float = 0.8,
    max_treedepth: int = 10,
    var_names: Sequence[str] | None = None,
    quantities: QuantityFn | None = data_log_lik,
    label_invariant: bool = True,
    prob: float = 0.95,
    backend: str = "auto",
    n_workers: int | None = None,
    scheduler: Any = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> SBCResult:
    """Simulation-based calibration of a registered model on a given design.

    Parameters
    ----------
    model
        Registry name (or spec) of the model.
    comps
        The design: its options, pairs, annotators and trials per cell are kept; its outcomes are
        replaced by simulated ones.
    n_sims
        Number of simulated data sets (prior draws). 100-200 give the tests useful power.
    K
        Number of mixture components, for models that need it.
    priors
        Prior hyperparameters of the simulating model (and of the fitted one).
    fit_priors
        Overrides for the *fitted* model only (deliberate mis-specification, to check that SBC
        detects it); ``None``: the fitted prior is the simulating prior.
    chains, draws, warmup, adapt_delta, max_treedepth
        NUTS settings of every refit.
    thin
        Keep every ``thin``-th draw per chain; of those, ``L`` draws are ranked, the largest
        number with ``L + 1`` a multiple of 20 (e.g. 99 of 100), so histogram bins are equal.
    prior_thin
        Thinning of the prior-only run that supplies the truths.
    seed
        Seeds everything (prior run, refits, tie-breaking); the same seed gives the same ranks.
    var_names
        Variables to rank (default: every parameter and transformed parameter, except those
        the encoder marks as internal in ``Encoded.drop``).
    quantities
        Data-dependent test quantities, ``f(outputs, y) -> {name: per-draw values}``; a
        module-level function (workers import it). ``None`` ranks parameters only.
    label_invariant
        Sort mixture variables along their label dim (see the module docstring).
    prob
        Simultaneous band coverage for the tests and plots.
    backend, n_workers, scheduler, out_dir, progress
        Passed to :func:`pluralstan.parallel.run_jobs` (``out_dir`` makes the run resumable).
    **options
        Model options for the encoder (e.g. ``ties=``, ``order=`` for the aggregate model).

    Returns
    -------
    SBCResult
    """

    spec = get_model(model)
    comps = as_comparisons(comps)
    _check_settings(n_sims, thin, prior_thin, prob)
    if spec.needs_K and K is None:
        raise PluralstanError(f"model {spec.name!r} needs the number of components K")
    config = SamplerConfig(chains, draws, warmup, seed, adapt_delta, max_treedepth)
    config.validate()
    enc = spec.encode(comps, K=K, priors=priors, **options)
    enc_fit = enc if fit_priors is None else spec.encode(
        comps, K=K, priors={**(priors or {}), **fit_priors}, **options)
    names = _ranked_names(spec, var_names, enc)
    label_axes = {n: enc.dims[n].index(enc.label_dim) for n in names
                  if label_invariant and enc.label_dim and enc.label_dim in enc.dims.get(n, [])}

    joint, prior_problems = _prior_draws(spec, enc, n_sims, prior_thin, seed, backend)
    for problem in prior_problems:
        warnings.warn(f"SBC of {spec.name}: {problem}", DiagnosticWarning, stacklevel=2)
    for rep, obs in enc.predictive.items():  # modelled data item -> its replicate
        if joint[rep].shape[1:] != np.shape(enc.data[obs]):
            raise PluralstanError(
                f"model {spec.name!r}: the program's {rep} has shape {joint[rep].shape[1:]} but "
                f"the Stan data {obs!r} has shape {np.shape(enc.data[obs])}; SBC needs "
                "replicated data of the shape of the observed data"
            )
    names = [n for n in names if joint[n][0].size]  # drop switched-off optional parameters
    seeds = _seeds(seed, n_sims)
    jobs = [
        Job(f"sim{i:04d}", sbc_replicate, {
            "model": spec.name, "comps": comps, "K": K,
            "priors": {**(priors or {}), **(fit_priors or {})}, "options": options,
            "simulated": {obs: joint[rep][i].astype(np.int64)
                          for rep, obs in enc.predictive.items()},
            "config": SamplerConfig(chains, draws, warmup, seeds[i], adapt_delta, max_treedepth),
            "truth": {k: v[i] for k, v in joint.items() if k not in enc.predictive},
            "names": names, "label_axes": label_axes, "thin": int(thin),
            "param_names": stan_parameter_names(spec.program, transformed=False),
            "quantities": quantities, "rank_seed": seeds[i], "backend": backend,
        }, seed=seeds[i])
        for i in range(n_sims)
    ]
    report = run_jobs(jobs, out_dir=out_dir, n_workers=n_workers, scheduler=scheduler,
                      warm=[(spec.program, enc_fit.data)], backend=backend, progress=progress,
                      desc=f"SBC {spec.name}")
    settings = {"n_sims": n_sims, "chains": chains, "draws": draws, "warmup": warmup,
                "thin": thin, "prior_thin": prior_thin, "seed": seed,
                "adapt_delta": adapt_delta, "max_treedepth": max_treedepth,
                "priors": priors or {}, "fit_priors": fit_priors or {}, "K": K,
                "stan_program_sha256": spec.program.sha}
    ranks, sims = _tables(report, joint, names, label_axes, enc)
    return SBCResult(spec.name, ranks, sims, float(prob), bool(label_axes), settings,
                     prior_problems)


def _ranked_names(spec: ModelSpec, var_names: Sequence[str] | None, enc: Encoded) -> list[str]:
    """The variables to rank: ``var_names``, or every parameter the encoder does not mark as
    internal (``Encoded.drop``, e.g. the raw pieces a mixture program assembles ``theta`` from).

    ``var_names`` may also name what the model computes in Python from the draws
    (:attr:`Encoded.derive`, e.g. PAL's user utilities ``beta``): the variables of the fit's
    layout that no block of the program declares.
    """
    available = stan_parameter_names(spec.program)
    if var_names is None:
        return [n for n in available if n not in enc.drop]
    declared = set(stan_parameter_names(spec.program, generated=True))
    derived = [n for n in enc.dims if n not in declared] if enc.derive is not None else []
    unknown = [n for n in var_names if n not in available + derived]
    if unknown:
        raise PluralstanError(f"var_names {unknown} are not parameters of model {spec.name!r}; "
                              f"its parameters: {available + derived}")
    return list(var_names)


def _seeds(seed: int, n: int) -> list[int]:
    """Independent per-simulation seeds in [0, 2**31) from one seed."""
    children = np.random.SeedSequence(int(seed)).spawn(n)
    return [int(c.generate_state(1)[0] % (2**31 - 1)) for c in children]


def _tables(report: RunReport, joint: Mapping[str, np.ndarray], names: Sequence[str],
            label_axes: Mapping[str, int], enc: Encoded) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy rank table and per-simulation table from the runner's results."""
    rank_rows, sim_rows = [], []
    for i, res in enumerate(report.results.values()):
        value = res.value if res.ok else {}
        sim_rows.append({"sim": i, "seed": res.seed, "ok": res.ok,
                         "divergences": value.get("divergences", 0),
                         "max_rhat": value.get("max_rhat", math.nan),
                         "min_ess_bulk": value.get("min_ess_bulk", math.nan),
                         "problems": "; ".join(value.get("problems", [])),
                         "seconds": res.seconds, "error": None if res.ok else res.message})
        if not res.ok:
            continue
        for name, ranks in value["ranks"].items():
            ranks = np.asarray(ranks)
            if name in value["at_truth"]:  # data-dependent, evaluated at the truth in the worker
                truth, labels = np.array([value["at_truth"][name]]), [name]
            else:
                truth = _invariant(joint[name][i], label_axes.get(name)).reshape(-1)
                labels = _labels(name, joint[name][i].shape, enc)
            for label, r, t in zip(labels, ranks.reshape(-1), truth, strict=True):
                rank_rows.append({"sim": i, "seed": res.seed, "quantity": label,
                                  "variable": name, "rank": int(r),
                                  "max_rank": int(value["max_rank"]), "truth": float(t)})
    ranks = pd.DataFrame(rank_rows)
    if len(ranks):
        # structural constants (e.g. the zero upper triangle of a Cholesky factor): the truth is
        # the same in every simulation and every rank a tie, so they test nothing
        varies = ranks.groupby("quantity", sort=False)["truth"].transform("nunique") > 1
        ranks = ranks[varies | (ranks["sim"].nunique() < 2)].reset_index(drop=True)
    return ranks, pd.DataFrame(sim_rows)

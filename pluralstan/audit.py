"""``pluralstan audit``: the position paper's four-item disclosure for anyone's judgements.

:func:`audit` takes a table of pairwise judgements (pluralstan's format or the RLHF layout of
:func:`rlhf_frame`), fits

1. the aggregate model (one preference vector for everybody: what RLHF fits), which is the
   K = 1 fit of item 2 (:func:`pluralstan.models.annotator.as_aggregate`);
2. the annotator latent-type model for each K asked for (default 1..4; K = 1 always), when
   annotators give repeated judgements, relabelled and diagnosed by :func:`pluralstan.fit`
   (latent types need no labels), and chooses K by leave-one-annotator-out PSIS-LOO
   (:data:`K_RULE`);
3. the covariate-informed model at the chosen K, when an annotator table is given;
4. the labeled model, when the judgements carry observed groups (``--group``), whose
   observed-group disclosure (:func:`pluralstan.checks.report.disclosure_report`) is written
   beside the latent one,

and writes one report whose groups are the **posterior types**: the four items (composition,
within-type posteriors, identification gap, sensitivity) with a verdict card on top, item ranks
(items data) or effects per type (attribute data), and who is in each type (membership by
annotator covariate). Files in ``out``: ``report.html`` (self-contained), ``report.md``,
``audit.json`` (every number in the report), ``figures/`` and ``fits/`` (NetCDF of every fit).
They are written to a temporary folder that replaces ``out`` only when everything succeeded.

Types are soft: each annotator has a posterior probability of belonging to each type. The
masking ratio needs a group per judgement, so item three assigns each annotator to the type of
highest posterior mean membership and says how many annotators are uncertain (top probability
below :data:`CERTAIN`); its errors are in-sample (the types were found on the same judgements).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from . import _arviz, diagnostics, plots
from .checks.compare import SUMMARY_COLUMNS, compare_K, kfold_K, mixture_loo_K
from .checks.intervals import central_interval
from .checks.masking import masking_ratio, summarize_masking
from .checks.predict import observed_frequencies
from .checks.report import (
    PAPER_MASKING_BOUND,
    Document,
    composition_table,
    disclosure_report,
    within_table,
)
from .checks.sensitivity import grid_label, grid_shifts, pi_grid_sensitivity, power_scaling
from .data import Comparisons, read_table
from .engine import engine_output
from .errors import DiagnosticWarning, PluralstanError
from .files import check_writable, write_atomic
from .fit import fit as fit_model
from .fit import load, save
from .models import get_model
from .models.annotator import WARM_START_WARMUP, as_aggregate, initial_values, warm_start
from .outputs import png_bytes
from .relabel import match_components, permute

__all__ = ["AuditResult", "audit", "read_judgements", "rlhf_frame"]

#: How K is chosen from the leave-one-annotator-out comparison.
K_RULE = ("the smallest K whose elpd_loo is within two standard errors of the difference "
          "(2 dse) of the best K")
#: Posterior membership above which an annotator's type counts as certain (item three).
CERTAIN = 0.8
#: Masking ratio over its noise floor above which item three fails (caution from the paper's
#: bound :data:`pluralstan.checks.report.PAPER_MASKING_BOUND`).
MASKING_FAIL = 3.0
#: Share of annotators with a high Pareto k (above ``min(1 - 1/log10(draws), 0.7)``) above
#: which PSIS-LOO's choice of K is not trusted.
HIGH_K_SHARE = 0.05
#: Mean judgements per (type, pair) from which the masking ratio uses observed frequencies.
REPEATS_MIN = 5
#: Most draws, in all, of a fit that cross-validates K: a K-fold refit, or a fit of the
#: mixture of leave-one-out posteriors when PSIS-LOO is not reliable. Either only estimates
#: annotators' predictive densities, whose Monte Carlo error the report states (column
#: ``mcse``); at 1,000 draws it stays far below the paired standard errors that choose K.
KFOLD_DRAWS = 1000
#: Most chains of such a fit, which share :data:`KFOLD_DRAWS`: two chains keep both cores
#: of a two-core machine busy and still let R-hat compare chains. Each starts where the full
#: fit of its K ended (:func:`~pluralstan.models.annotator.warm_start`): at its draws, with its
#: posterior scales and step size, and a warm-up that adapts the step size alone.
KFOLD_CHAINS = 2
#: Mass of every interval in the report.
PROB = 0.9
#: Dirichlet concentration of the pi-grid (item four): pi ~ Dirichlet(c x assumed).
PI_CONCENTRATION = 100.0
#: Largest Pareto k at which a pi-grid row is taken from the chosen fit by importance sampling
#: rather than refitted (the threshold of Vehtari et al. 2024 for a few thousand draws).
PSIS_MAX_K = 0.7
#: Fewest effective draws a reweighted pi-grid row may keep: the Monte Carlo error of its
#: posterior means is then at most 0.1 posterior sd, a tenth of the shift (1 sd) that makes
#: item four a caution.
IS_MIN_ESS = 100
#: Shift of a type's coefficient (in posterior sd) across the pi-grid that makes item four a
#: caution.
PI_SHIFT_SD = 1.0


@dataclass
class AuditResult:
    """What :func:`audit` wrote and found.

    Attributes
    ----------
    summary
        Every number of the report (what ``audit.json`` holds).
    fits
        The fits by name (``aggregate``, ``annotator_K2``, ``covariate``, ``labeled``); the
        latent-type fits without their per-annotator draws (the chosen fit keeps them only
        when there is no covariate fit), which their files in ``fits/`` hold.
    paths
        Every file written, by its path relative to the report folder (``report.html``,
        ``fits/annotator_K2.nc``, ...).
    """

    summary: dict[str, Any]
    fits: dict[str, _arviz.Idata] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------- input
def rlhf_frame(frame: pd.DataFrame, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """Map the RLHF layout to pluralstan's comparison table.

    Parameters
    ----------
    frame
        One row per judgement with ``chosen`` and ``rejected`` (response ids or texts) and
        ``annotator``; optional ``prompt`` (kept as ``pair`` context) and ``group``.
    items
        Optional response-feature table (index or ``item`` column = response id); without it
        each response is its own item.

    Returns
    -------
    pandas.DataFrame
        ``annotator``, ``item_a`` = chosen, ``item_b`` = rejected, ``y = 1`` (and ``group``).

    Raises
    ------
    PluralstanError
        A missing column, a missing value, or (without features) responses that appear in one
        judgement only: no model can place a response seen once against the others.
    """
    missing = [c for c in ("chosen", "rejected", "annotator") if c not in frame.columns]
    if missing:
        raise PluralstanError(
            f"RLHF-shaped judgements need the columns 'chosen', 'rejected' and 'annotator'; "
            f"missing {missing}; columns present: {list(frame.columns)}")
    for col in ("chosen", "rejected", "annotator"):
        empty = frame[col].isna().to_numpy()
        if empty.any():
            raise PluralstanError(f"column {col!r} is empty at row {int(np.argmax(empty))}")
    out = pd.DataFrame({"annotator": frame["annotator"].to_numpy(),
                        "item_a": frame["chosen"].to_numpy(),
                        "item_b": frame["rejected"].to_numpy(), "y": 1.0})
    if "group" in frame.columns:
        out["group"] = frame["group"].to_numpy()
    if items is None:
        seen = pd.concat([out["item_a"], out["item_b"]]).value_counts()
        once = seen.index[seen == 1]
        if len(once):
            raise PluralstanError(
                f"{len(once)} of {len(seen)} responses appear in one judgement only and have no "
                f"features (e.g. {list(once[:3])}): no model can place them. Give a response "
                "feature table (--items: one row per response, numeric feature columns such "
                "as rated attributes or embedding coordinates) or drop those judgements")
    return out


def read_judgements(
    path: str | Path,
    *,
    items: str | Path | None = None,
    annotators: str | Path | None = None,
    group: str | None = None,
) -> Comparisons:
    """Read judgements from CSV in pluralstan's format or the RLHF layout (:func:`rlhf_frame`).

    ``group`` names the column of observed groups (renamed to ``group``); every error names the
    file, column, value or row at fault.
    """
    frame = read_table(path, "judgement table")
    item_table = read_table(items, "item table") if items is not None else None
    ann_table = read_table(annotators, "annotator table") if annotators is not None else None
    if group is not None:
        if group not in frame.columns:
            raise PluralstanError(f"--group column {group!r} is not in {path}; columns "
                                  f"present: {list(frame.columns)}")
        frame = frame.drop(columns=[c for c in ("group",) if c != group and c in frame.columns])
        frame = frame.rename(columns={group: "group"})
    if {"chosen", "rejected"} & set(frame.columns):
        frame = rlhf_frame(frame, item_table)
    if ann_table is not None and "annotator" in ann_table.columns:
        ann_table = ann_table.set_index("annotator")
    return Comparisons.from_frame(frame, items=item_table, annotators=ann_table)


def _plan(comps: Comparisons, Ks: Sequence[int]) -> tuple[list[int], str]:
    """The K values to fit (sorted, validated) and why latent types are not fitted, if not."""
    n_ann = len(comps.annotator_levels)
    bad = [k for k in Ks if not (isinstance(k, int | np.integer) and 1 <= k)]
    if bad:
        raise PluralstanError(f"K must be positive integers, got {bad[0]!r}")
    large = [int(k) for k in Ks if k > n_ann]
    if large:
        raise PluralstanError(f"K = {large[0]} is larger than the number of annotators "
                              f"({n_ann}); each type needs annotators")
    if not comps.annotator_given:
        return [], "the judgements have no 'annotator' column"
    per = comps.frame.groupby("annotator").size()
    if per.median() < 2:
        return [], (f"the median annotator gives {per.median():.0f} judgement(s); latent "
                    "types need repeated judgements per annotator")
    return sorted({int(k) for k in Ks} | {1}), ""


# ---------------------------------------------------------------------- fitting
class SamplingProgress(io.StringIO):
    """Captured engine output that drives a per-fit progress bar.

    PyStan reports sampling as ``Sampling: 45% (3600/8000)`` lines on stderr, which the audit
    captures; each such line moves a tqdm bar (created on the first one, on ``file``) to its
    percentage. Everything written is kept, to be shown if the fit fails.
    """

    PATTERN = re.compile(r"Sampling:\s+(\d+)%")

    def __init__(self, name: str, file: Any, enabled: bool = True) -> None:
        super().__init__()
        self.name, self.file, self.enabled, self.bar = name, file, enabled, None

    def write(self, text: str) -> int:
        found = self.PATTERN.findall(text)
        if found and self.enabled:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=100, desc=f"  {self.name}", unit="%", leave=False,
                                position=1, file=self.file)
            self.bar.update(int(found[-1]) - self.bar.n)
        return super().write(text)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _quiet(verbose: bool, name: str = "fit", progress: bool = False) -> Iterator[None]:
    """Hide engine output and warnings (unless ``verbose``), turning PyStan's sampling lines
    into a progress bar when ``progress``; print the output if the block fails. What matters
    of a fit is reported by :func:`problem_line` afterwards."""
    if verbose:
        with engine_output():
            yield
        return
    sink = SamplingProgress(name, sys.stderr, enabled=progress)
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sink.close_bar()
        sys.stderr.write(sink.getvalue())
        raise
    sink.close_bar()


def problem_line(name: str, idata: _arviz.Idata) -> str | None:
    """One line for a fit that failed its diagnostics or had its modes stacked, else ``None``."""
    problems = diagnostics.failed(idata)
    if problems:
        more = f" (+{len(problems) - 1} more in the report)" if len(problems) > 1 else ""
        return f"warning: {name}: {problems[0]}{more}"
    if any(n.startswith(diagnostics.STACKED) for n in diagnostics.notes(idata)):
        return f"note: {name}: chains in different modes were stacked (see the report)"
    return None


#: Options of every latent-type fit of the audit: no replicated data. The audit makes no
#: posterior predictive check, and a y_rep per cell and draw would be most of the engine's
#: output to transfer and read.
LATENT_OPTIONS: dict[str, Any] = {"replicate": False}

#: Random starts of the mode search before every fit of the audit but a partially pooled
#: labeled fit (the K-fold and covariate fits included): every chain starts in the best mode
#: it finds (:func:`pluralstan.modes.search`, ``modes="search", max_modes=1`` of
#: :func:`pluralstan.fit`; the starts are drawn as Stan's inits are, so one mode found is where
#: dispersed chains would go as well). From Stan's random inits, a chain of the tax conjoint's
#: K = 4 fit settled in a worse region whose step size was a tenth of the others', and took
#: most of the audit's time to fail. Chains started in the second-best mode as well
#: (``max_modes=2``) left it in two of three real-data fits tried, one (CEMS, covariate)
#: without settling. Chains that still part are stacked or flagged as in any fit. The one-type
#: fit and a labeled fit without pooling have log-concave posteriors (Bradley-Terry and
#: Davidson likelihoods, normal priors), so one mode, which the search finds for the chains to
#: start in. A partially pooled labeled fit keeps Stan's inits and the full warm-up: its
#: posterior is not log-concave (the group spreads), and the tax conjoint's, started in its
#: mode with the shorter warm-up, had a divergent transition that the full warm-up from Stan's
#: inits avoided (``benchmarks/latest_results.md``).
SEARCH_STARTS = 6

#: Warm-up iterations (at most: never more than the audit's ``warmup``) of chains that start in
#: a searched mode. They start in the posterior's bulk and need only Stan's adaptation, whose
#: windows (75-iteration initial buffer, 25, 50 and 100-iteration metric windows, 50-iteration
#: final buffer) fit in this many. Fits started from Stan's random inits (a partially pooled
#: labeled fit, ``starts`` 0, or a search whose every start failed) keep the full warm-up.
MODE_WARMUP = 300


def search_options(starts: int = SEARCH_STARTS) -> dict[str, Any]:
    """Options of :func:`pluralstan.fit` for the mode search from ``starts`` random starts,
    every chain starting in the best mode found with :data:`MODE_WARMUP` warm-up iterations
    (none when ``starts`` is 0)."""
    if not starts:
        return {}
    return {"modes": "search", "n_starts": int(starts), "max_modes": 1,
            "mode_warmup": MODE_WARMUP}


def latent_options(starts: int = SEARCH_STARTS) -> dict[str, Any]:
    """Options of an audit fit of a latent-type model: :data:`LATENT_OPTIONS` and the mode
    search (:func:`search_options`)."""
    return {**LATENT_OPTIONS, **search_options(starts)}


#: Options of the audit's labeled fit: no replicated data either, and the log likelihood per
#: annotator, comparable with the latent-type fits'. Per judgement, on data with about one
#: judgement per cell, the two per-cell outputs made up most of its time and memory.
CELL_OPTIONS: dict[str, Any] = {"replicate": False, "log_lik": "annotator"}


def _fit_one(name: str, model: str, comps: Comparisons, *, verbose: bool,
             echo: Callable[[str], None], progress: bool = False,
             **kwargs: Any) -> _arviz.Idata:
    with _quiet(verbose, name, progress):
        idata = fit_model(model, comps, **kwargs)
    line = problem_line(name, idata)
    if line:
        echo(line)
    return idata


def _fits(comps: Comparisons, Ks: list[int], sampler: dict[str, Any], tmp: Path, *,
          labeled: dict[str, Any] | None, starts: int, verbose: bool, progress: bool,
          echo: Callable[[str], None]) -> dict[str, _arviz.Idata]:
    """Annotator (each K; ``Ks`` holds 1) and, with ``labeled`` options, labeled fits; a
    progress bar over them and one per fit (:class:`SamplingProgress`). The aggregate fit is
    the K = 1 fit (:func:`pluralstan.models.annotator.as_aggregate`: the same posterior). Each
    annotator fit is written to ``tmp`` when it is done and kept without its membership draws
    (:func:`_store`); choosing K needs only the log likelihood."""
    from tqdm.auto import tqdm

    jobs: list[tuple[str, str, dict[str, Any]]] = [
        (f"annotator_K{k}", "annotator", {"K": k, **latent_options(starts)}) for k in Ks]
    if labeled:
        jobs.append(("labeled", "labeled", {"K": len(comps.group_levels), **labeled,
                                            **CELL_OPTIONS, **labeled_search(labeled, starts)}))
    fits = {}
    bar = tqdm(jobs, desc="pluralstan audit", unit="fit", disable=not progress, file=sys.stderr)
    for name, model, extra in bar:
        bar.set_postfix_str(name)
        fits[name] = _fit_one(name, model, comps, verbose=verbose, progress=progress,
                              echo=bar.write if progress else echo, **extra, **sampler)
        if model == "annotator":
            _store(tmp, fits, name, log_lik=True)
    return {"aggregate": as_aggregate(fits["annotator_K1"]), **fits}


def labeled_search(labeled: dict[str, Any], starts: int) -> dict[str, Any]:
    """The mode search of a labeled fit with options ``labeled``: only without pooling (see
    :data:`SEARCH_STARTS`)."""
    return search_options(starts) if labeled["pooling"] == "none" else {}


def labeled_options(comps: Comparisons, pooling: str | None) -> dict[str, Any] | None:
    """Options of the labeled fit (``None`` without observed groups): partial pooling from three
    groups on (two group means say little about their spread). The conditional parametrisation,
    the labeled model's default (with each group's information whole, or beyond
    :data:`~pluralstan.models.labeled.CONDITIONAL_MAX_ATTRIBUTES` attributes as its diagonal
    plus a low-rank correction), samples both regimes of that spread at the default
    ``adapt_delta``."""
    if not comps.has_groups:
        return None
    pooling = pooling or ("partial" if len(comps.group_levels) >= 3 else "none")
    if pooling not in ("partial", "none"):
        raise PluralstanError(f"pooling must be 'partial' or 'none', got {pooling!r}")
    return {"pooling": pooling}


def _choose_K(comps: Comparisons, fits: dict[int, _arviz.Idata], *, kfold: int | None,
              sampler: dict[str, Any], verbose: bool, progress: bool,
              echo: Callable[[str], None]) -> dict[str, Any]:
    """K by :data:`K_RULE` on PSIS-LOO; when more than :data:`HIGH_K_SHARE` of the annotators
    have a high Pareto k at some K, on leave-one-annotator-out by mixture importance sampling
    (:func:`~pluralstan.checks.compare.mixture_loo_K`, one fit per K); on K-fold
    cross-validation by annotator when ``kfold`` asks for it (a number of folds; ``0``: PSIS-LOO
    however unreliable). Each such fit runs at most :data:`KFOLD_CHAINS` chains and
    :data:`KFOLD_DRAWS` draws in all, started where the full fit of its K ended
    (:func:`~pluralstan.models.annotator.warm_start`; no mode search: the full fit's chains are
    in the modes its search found)."""
    Ks = sorted(fits)
    if len(Ks) == 1:
        return {"K": Ks[0], "note": "", "method": "the only K fitted"}
    with warnings.catch_warnings():
        # the Pareto k counts are reported here (n_high_k, the note and the K-fold choice)
        warnings.simplefilter("ignore", DiagnosticWarning)
        compared = compare_K(fits, comps=comps)
    loo, high = compared[SUMMARY_COLUMNS], int(compared["n_high_k"].max())
    good_k = f"Pareto k > {compared['good_k'].min():.2f}"
    unreliable = high / len(comps.annotator_levels) > HIGH_K_SHARE
    if kfold == 0 or (kfold is None and not unreliable):
        note = (f"; {high} annotators have {good_k}, so PSIS-LOO is not reliable here "
                "(cross-validation was turned off)" if unreliable else "")
        return {"K": choose_K(loo), "note": note, "loo": loo,
                "method": "leave-one-annotator-out PSIS-LOO"}
    from tqdm.auto import tqdm

    folds = kfold or 0
    bar = tqdm(total=max(folds, 1) * len(Ks), desc="K-fold" if folds else "LOO mixture",
               unit="fit", disable=not progress, file=sys.stderr)

    refits = kfold_sampler(sampler)
    warm: dict[int, dict[str, Any]] = {}

    def fit_quietly(model: str, comps: Comparisons, *, K: int, **kwargs: Any) -> _arviz.Idata:
        if K not in warm:  # the data without held-out annotators: the same basis
            data = get_model(model).encode(comps, K=K, **LATENT_OPTIONS).data
            warm[K] = warm_start(fits[K], data, refits["chains"])
        with _quiet(verbose):  # the folds' problems are in the table's flag column
            idata = fit_model(model, comps, K=K, **LATENT_OPTIONS, **{**kwargs, **warm[K]})
        bar.update()
        return idata

    if folds:
        table = kfold_K(comps, Ks, folds=folds, fit=fit_quietly, **refits)
        method, name = f"{folds}-fold cross-validation by annotator", "kfold"
    else:
        table = mixture_loo_K(comps, fits, fit=fit_quietly, **refits)
        method, name = "leave-one-annotator-out by mixture importance sampling", "mixture"
    bar.close()
    why = (f"; PSIS-LOO is not reliable here ({high} annotators have {good_k})"
           if unreliable else "")
    echo(f"K chosen by {method}{why}")
    return {"K": choose_K(table), "note": why, "loo": loo, name: table, "folds": folds,
            "cv_chains": refits["chains"], "cv_draws": refits["draws"], "method": method}


def kfold_sampler(sampler: dict[str, Any]) -> dict[str, Any]:
    """The audit's sampler options for a fit that cross-validates K (a K-fold refit or a
    mixture fit): at most :data:`KFOLD_CHAINS` chains sharing at most :data:`KFOLD_DRAWS`
    draws, never more draws per chain than the audit's."""
    chains = min(sampler["chains"], KFOLD_CHAINS)
    return {**sampler, "chains": chains, "draws": min(sampler["draws"], KFOLD_DRAWS // chains)}


def choose_K(table: pd.DataFrame) -> int:
    """The K of :data:`K_RULE` from a :func:`~pluralstan.checks.compare.compare_K` table."""
    close = table.index[table["elpd_diff"] <= 2 * table["dse"].fillna(0)]
    return int(min(close))


def largest_K_note(K: int, Ks: Sequence[int]) -> str:
    """A note for the report when the chosen ``K`` is the largest of several fitted: the
    comparison then says only that no fewer types will do, not that no more would fit better
    (empty otherwise)."""
    if len(Ks) < 2 or K < max(Ks):
        return ""
    return (f"; K = {K} is the largest K fitted, so more types may predict better still "
            f"(fit K = {K + 1} too to see)")


# ---------------------------------------------------------------------- tables
def _membership(idata: _arviz.Idata) -> pd.DataFrame:
    """Posterior mean membership, annotators x types."""
    m = _arviz.group(idata, "posterior")["membership"].mean(("chain", "draw"))
    frame = m.transpose("annotator", "group").to_pandas()
    frame.columns = [f"type {g}" for g in frame.columns]
    return frame


def _with_types(comps: Comparisons, membership: pd.DataFrame, chosen: _arviz.Idata
                ) -> Comparisons:
    """``comps`` with each annotator's most probable type as its ``group``, and the chosen fit's
    posterior mean ``theta`` and ``pi`` of those types as ``truth`` (the model-based masking
    target)."""
    best = pd.Series(membership.to_numpy().argmax(axis=1), index=membership.index)
    frame = comps.to_frame().assign(group=comps.frame["annotator"].map(best).to_numpy())
    post = _arviz.group(chosen, "posterior")
    present = sorted(set(best))
    theta = post["theta"].mean(("chain", "draw")).transpose("group", "attribute").to_numpy()
    pi = post["pi"].mean(("chain", "draw")).to_numpy()[present]
    return Comparisons.from_frame(frame, items=comps.items, reference=comps.reference,
                                  warn_unidentified=False,
                                  truth={"theta": theta[present], "pi": pi / pi.sum()})


def masking_target(typed: Comparisons) -> str:
    """``"observed"`` when the types judge each pair often enough for observed frequencies
    (mean judgements per judged type-pair cell >= :data:`REPEATS_MIN`), else ``"truth"``: the
    latent-type fit's own per-type probabilities stand in for the frequencies."""
    counts = observed_frequencies(typed, by="group")["n"]
    return "observed" if float(counts.where(counts > 0).mean()) >= REPEATS_MIN else "truth"


def item_ranks(comps: Comparisons, fits: dict[str, _arviz.Idata]) -> pd.DataFrame:
    """Posterior mean rank and P(rank 1) of every item (the reference item included, at 0),
    in aggregate and per type; items mode without features only."""
    rows = []
    for name, idata in fits.items():
        theta = _arviz.group(idata, "posterior")["theta"]
        ref = xr.zeros_like(theta.isel(attribute=0)).expand_dims(attribute=[str(comps.reference)])
        full = xr.concat([ref, theta], dim="attribute")
        rank = xr.apply_ufunc(  # 1 = best; ties of continuous draws have probability 0
            lambda a: np.argsort(np.argsort(-a, axis=-1), axis=-1) + 1, full,
            input_core_dims=[["attribute"]], output_core_dims=[["attribute"]])
        groups = [None] if "group" not in full.dims else list(full["group"].values)
        for g in groups:
            r = rank if g is None else rank.sel(group=g)
            t = full if g is None else full.sel(group=g)
            for item in full["attribute"].values:
                rows.append({"fit": name, "type": "all" if g is None else str(g),
                             "item": str(item),
                             "ability": float(t.sel(attribute=item).mean()),
                             "mean_rank": float(r.sel(attribute=item).mean()),
                             "p_rank_1": float((r.sel(attribute=item) == 1).mean())})
    return pd.DataFrame(rows)


def who_is_in_each_type(comps: Comparisons, membership: pd.DataFrame) -> pd.DataFrame:
    """Each annotator covariate summarised per type, weighted by posterior membership: the mean
    of a numeric covariate, the share of each level of a categorical one."""
    table = comps.annotators.reindex(membership.index)
    rows = []
    for col in table.columns:
        values = table[col]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(
            values)
        levels = [None] if numeric else list(pd.unique(values.astype(str)))
        for level in levels:
            x = values.to_numpy(float) if numeric else (values.astype(str) == level).to_numpy(
                float)
            row = {"covariate": col if numeric else f"{col} = {level}",
                   "statistic": "mean" if numeric else "share", "all": float(x.mean())}
            for t in membership.columns:
                w = membership[t].to_numpy()
                row[t] = float(np.sum(w * x) / np.sum(w))
            rows.append(row)
    return pd.DataFrame(rows)


def covariate_effects(idata: _arviz.Idata) -> pd.DataFrame:
    """``beta`` of the covariate model (types x covariates, sum-to-zero across types) with
    intervals and the probability that each effect is positive."""
    beta = _arviz.group(idata, "posterior")["beta"]
    stats = central_interval(beta, PROB).to_dataframe().reset_index()
    stats["p_positive"] = (beta > 0).mean(("chain", "draw")).to_dataframe(
        name="p").reset_index()["p"].to_numpy()
    stats["group"] = stats["group"].astype(str)
    return stats.rename(columns={"group": "type"})


def type_order(idata: _arviz.Idata, reference: _arviz.Idata) -> np.ndarray:
    """Which of ``idata``'s latent types is each of ``reference``'s (matched on posterior mean
    ``theta``): ``idata``'s type ``order[k]`` is ``reference``'s type ``k``."""
    def mean_theta(fit: _arviz.Idata) -> np.ndarray:
        theta = _arviz.group(fit, "posterior")["theta"]
        return theta.mean(("chain", "draw")).transpose("group", "attribute").to_numpy()

    return match_components(mean_theta(idata), mean_theta(reference))


def align_types(idata: _arviz.Idata, reference: _arviz.Idata) -> _arviz.Idata:
    """``idata`` with its latent types in the order of ``reference``'s (:func:`type_order`),
    so that the report's type k is one type in every table. Exact for the covariate model,
    whose type coefficients sum to zero across types."""
    return _permute_types(idata, type_order(idata, reference))


def _permute_types(idata: _arviz.Idata, order: np.ndarray) -> _arviz.Idata:
    """``idata`` with type ``order[k]`` as type ``k`` in every draw."""
    post = _arviz.group(idata, "posterior")
    perms = np.broadcast_to(order, (post.sizes["chain"], post.sizes["draw"], len(order)))
    return permute(idata, np.ascontiguousarray(perms))


def _masking(aggregate: _arviz.Idata, chosen: _arviz.Idata, typed: Comparisons
             ) -> tuple[pd.DataFrame, dict[str, xr.Dataset]]:
    target = masking_target(typed)
    results = {"aggregate": masking_ratio(aggregate, typed, target=target),
               "types": masking_ratio(chosen, typed, target=target)}
    table = pd.concat([summarize_masking(r, PROB) for r in results.values()], ignore_index=True)
    table = table[table["quantity"].isin(["ratio", "group_ratio"])]
    table = table.assign(model=table["model"].replace({"annotator": "latent types"}))
    return table[["model", "quantity", "group", "median", "lower", "upper", "flag"]].rename(
        columns={"group": "type"}).reset_index(drop=True), results


def pi_grid(pi: np.ndarray) -> np.ndarray:
    """Assumed compositions of the latent types' pi-grid: the posterior mean ``pi`` (the
    reference row), then, for each type, ``pi`` with that type's share halved and the others
    scaled up to fill the simplex."""
    rows = [pi]
    for k in range(len(pi)):
        row = pi.copy()
        row[k] /= 2
        row[np.arange(len(pi)) != k] *= (1 - row[k]) / (1 - pi[k])
        rows.append(row)
    return np.array(rows)


def pi_sensitivity(comps: Comparisons, chosen: _arviz.Idata, K: int,
                   sampler: dict[str, Any], *, verbose: bool, progress: bool = False
                   ) -> pd.DataFrame:
    """Item four for latent types: the chosen K under each assumed composition of
    :func:`pi_grid` (Dirichlet prior of concentration :data:`PI_CONCENTRATION` centred on it),
    following every type's ``theta``.

    The prior on ``pi`` is all that changes, so each row's posterior is first taken from the
    chosen fit's draws by Pareto-smoothed importance sampling (:func:`reweighted`; the method
    of priorsense and adjustr). A row whose Pareto k exceeds :data:`PSIS_MAX_K` is refitted
    instead, as is one whose weights leave fewer than :data:`IS_MIN_ESS` effective draws. An
    assumed composition labels the types (type k is the one assumed to have share
    k): a refit's chains start at draws of ``chosen``
    (:func:`~pluralstan.models.annotator.initial_values`), so its type k is ``chosen``'s type k,
    which :func:`type_order` checks (a refit whose types it finds permuted is aligned, and its
    row's assumed shares are permuted with them). Column ``method`` says how each row was
    obtained, ``pareto_k`` and ``is_ess`` hold the importance weights' Pareto k and effective
    sample size that decided it. ``progress`` shows a bar over the rows."""
    from tqdm.auto import tqdm

    post = _arviz.group(chosen, "posterior")
    grid = pi_grid(post["pi"].mean(("chain", "draw")).to_numpy())
    chains = sampler.get("chains", 4)
    data = get_model("annotator").encode(comps, K=K, **LATENT_OPTIONS).data
    # the rows follow theta: per-annotator outputs (membership, annotators x types per draw)
    # would only be copied by every row's resampling and alignment
    slim = _arviz.replace_groups(chosen, posterior=post.drop_vars(
        [name for name, da in post.data_vars.items() if "annotator" in da.dims]))
    fits, methods, weights = {}, {}, {}
    for row in tqdm(grid, desc="pi-grid", unit="row", disable=not progress, file=sys.stderr):
        label = grid_label(row)
        idata, khat, ess = reweighted(slim, PI_CONCENTRATION * row, data["prior_pi_alpha"])
        weights[label] = (khat, ess)
        if idata is not None:
            fits[label] = idata
            methods[label] = f"importance sampling (k = {khat:.2f}, ESS {ess:.0f})"
            continue
        inits = [initial_values(post, c, row, data) for c in range(chains)]
        with _quiet(verbose):  # the refits' problems are in the table's flag column
            _, fit = pi_grid_sensitivity("annotator", comps, [row], K=K,
                                         concentration=PI_CONCENTRATION, inits=inits,
                                         **LATENT_OPTIONS, **sampler)
        (refit,) = fit.values()
        fits[label] = refit
        methods[label] = f"refit (importance sampling: k = {khat:.2f}, ESS {ess:.0f})"
    aligned, assumed = {}, {}
    for (label, idata), row in zip(fits.items(), grid, strict=True):
        order = type_order(idata, chosen)
        aligned[label] = _permute_types(idata, order)
        assumed[label] = row[order]
    table = grid_shifts(aligned, reference=next(iter(fits)), prob=PROB)
    shares = pd.DataFrame(assumed.values(), index=list(assumed),
                          columns=[f"pi_{k}" for k in range(K)]).rename_axis("grid")
    return (table.merge(shares.reset_index(), on="grid", how="left")
            .assign(method=lambda t: t["grid"].map(methods),
                    pareto_k=lambda t: t["grid"].map(lambda g: weights[g][0]),
                    is_ess=lambda t: t["grid"].map(lambda g: weights[g][1])))


def reweighted(idata: _arviz.Idata, alpha: np.ndarray, alpha_fitted: np.ndarray,
               seed: int = 0) -> tuple[_arviz.Idata | None, float, float]:
    """The posterior of ``idata`` under the prior ``pi ~ Dirichlet(alpha)`` instead of
    ``Dirichlet(alpha_fitted)``, by Pareto-smoothed importance sampling of its draws.

    The log ratio of the two priors at each draw's ``pi`` is smoothed by PSIS (Vehtari et al.
    2024); the draws are then resampled systematically with those weights into one chain of as
    many draws, which every summary can read as an ordinary posterior (its Monte Carlo error
    is that of the weights' effective sample size, ``1 / sum(w^2)``, not of the draws' count).
    Returns ``(fit, k, ess)``, with ``fit = None`` when Pareto ``k > PSIS_MAX_K`` or cannot be
    estimated (the weights are then unreliable) or when ``ess`` is below :data:`IS_MIN_ESS`:
    only a refit will do then.
    """
    from scipy import stats

    post = _arviz.group(idata, "posterior")
    draws = post.stack(__sample__=("chain", "draw"))
    pi = draws["pi"].transpose("group", "__sample__").to_numpy()
    log_ratio = draws["pi"].isel(group=0, drop=True).copy(
        data=stats.dirichlet.logpdf(pi, alpha) - stats.dirichlet.logpdf(pi, alpha_fitted))
    log_w, khat = _arviz.psislw(log_ratio, reff=1.0, dim="__sample__")
    k = float(khat)
    weights = np.exp(log_w.to_numpy() - np.max(log_w.to_numpy()))
    weights /= weights.sum()
    ess = float(1 / np.sum(weights**2))
    if not k <= PSIS_MAX_K or ess < IS_MIN_ESS:  # an undefined k (NaN) is unreliable too
        return None, k, ess
    cumulative = np.cumsum(weights)
    n = cumulative.size
    u = (np.random.default_rng(seed).random() + np.arange(n)) / n
    index = np.minimum(np.searchsorted(cumulative, u), n - 1)
    resampled = (draws.isel(__sample__=index).drop_vars(["chain", "draw", "__sample__"])
                 .rename({"__sample__": "draw"}).expand_dims(chain=[0])
                 .assign_coords(draw=np.arange(n)).transpose("chain", "draw", ...))
    resampled.attrs = {**post.attrs, "importance_sampling_khat": k, "importance_sampling_ess": ess}
    return _arviz.replace_groups(idata, posterior=resampled), k, ess


# ---------------------------------------------------------------------- verdicts
def _verdict(item: str, mark: str, finding: str, threshold: str) -> dict[str, str]:
    return {"item": item, "mark": mark, "finding": finding, "threshold": threshold}


def _composition_verdict(K: int, comp: pd.DataFrame, problems: list[str], loo_note: str
                         ) -> dict[str, str]:
    threshold = f"K: {K_RULE}; fail when the chosen fit fails its diagnostics"
    if problems:
        return _verdict("1. composition", "fail", f"the chosen K = {K} fit failed its "
                        f"diagnostics: {'; '.join(problems)}", threshold)
    if K == 1:
        return _verdict("1. composition", "pass", "one preference type is enough for these "
                        "judgements" + loo_note, threshold)
    shares = ", ".join(f"{v:.2f}" for v in comp["posterior_pi"])
    return _verdict("1. composition", "caution",
                    f"the judgements come from {K} preference types (shares {shares}); a pooled "
                    "reward model averages them" + loo_note, threshold)


def _within_verdict(within: pd.DataFrame, K: int) -> dict[str, str]:
    threshold = (f"fail: a type's {PROB:.0%} interval excludes 0 on the other side of a "
                 f"coordinate the aggregate also signs; caution: a type's interval excludes the "
                 "aggregate mean")
    if K == 1:
        return _verdict("2. within-type posteriors", "pass", "one type: the aggregate is its "
                        "posterior", threshold)
    agg = within[within["group"] == "all"].set_index("attribute")
    types = within[within["group"] != "all"]
    reversed_, apart = [], []
    for r in types.itertuples():
        a = agg.loc[r.attribute]
        signed = a["lower"] > 0 or a["upper"] < 0
        if signed and ((r.lower > 0 and a["upper"] < 0) or (r.upper < 0 and a["lower"] > 0)):
            reversed_.append(f"type {r.group} on {r.attribute}")
        elif r.lower > a["mean"] or r.upper < a["mean"]:
            apart.append(f"type {r.group} on {r.attribute}")
    if reversed_:
        return _verdict("2. within-type posteriors", "fail",
                        f"{len(reversed_)} type preference(s) reverse the aggregate's: "
                        + ", ".join(reversed_[:4]), threshold)
    if apart:
        return _verdict("2. within-type posteriors", "caution",
                        f"{len(apart)} type coefficient(s) differ from the aggregate's: "
                        + ", ".join(apart[:4]), threshold)
    return _verdict("2. within-type posteriors", "pass",
                    "every type's coefficients agree with the aggregate's", threshold)


def _masking_verdict(masking: pd.DataFrame | None, floor: float, K: int) -> dict[str, str]:
    threshold = (f"aggregate masking ratio over its noise floor: pass < {PAPER_MASKING_BOUND} "
                 f"(the paper's bound), fail >= {MASKING_FAIL}")
    if masking is None:
        return _verdict("3. identification gap", "pass", f"K = {K}: no subgroup to mask",
                        threshold)
    ratio = masking.query("quantity == 'ratio' and model == 'aggregate'").iloc[0]
    excess = ratio["median"] / floor
    mark = ("pass" if excess < PAPER_MASKING_BOUND else
            "caution" if excess < MASKING_FAIL else "fail")
    return _verdict("3. identification gap", mark,
                    f"the aggregate model's error within types is {ratio['median']:.3g} times "
                    f"its error on the pooled data ({PROB:.0%} interval {ratio['lower']:.3g} to "
                    f"{ratio['upper']:.3g}; a perfect model's ratio is {floor:.3g})", threshold)


def _sensitivity_verdict(power: pd.DataFrame, grid: pd.DataFrame | None) -> dict[str, str]:
    threshold = ("power-scaling (priorsense): no coordinate has prior-data conflict or a weak "
                 "likelihood; pi-grid: no type's coefficient moves by more than "
                 f"{PI_SHIFT_SD:g} posterior sd when a type's assumed share is halved")
    findings, notes = [], []
    flagged = power.query("prior_data_conflict or weak_likelihood")
    if len(flagged):
        names = "; ".join(f"{r.fit} {r.variable}: {r.diagnosis}" for r in
                          flagged.head(4).itertuples())
        findings.append(f"{len(flagged)} coordinate(s) depend on the prior: {names}")
    else:
        notes.append("no coordinate of theta or pi is sensitive to the prior or has a weak "
                     "likelihood")
    if grid is not None:
        worst = grid.loc[grid["shift_sd"].abs().idxmax()]
        shift = (f"largest pi-grid shift {abs(worst['shift_sd']):.2g} sd (type "
                 f"{worst['group']} on {worst['attribute']} under {worst['grid']})")
        if abs(worst["shift_sd"]) > PI_SHIFT_SD:
            findings.append(f"the assumed composition moves the types: {shift}")
        else:
            notes.append(f"the assumed composition does not move the types: {shift}")
    return _verdict("4. sensitivity", "caution" if findings else "pass",
                    "; ".join(findings + notes), threshold)


# ---------------------------------------------------------------------- entry point
@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Record the wall-clock seconds of the block as ``seconds[step]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = round(time.perf_counter() - start, 1)


def _prepare_out(out: Path) -> None:
    """Refuse an ``out`` that cannot be written or holds something other than an audit."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "audit.json").exists())):
        raise PluralstanError(f"--out {out} exists and is not an earlier audit report; "
                              "choose a new folder")
    check_writable(out.with_name(f".{out.name}.tmp"))  # the report is built beside ``out``


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def audit(
    comps: Comparisons,
    out: str | Path,
    *,
    K: Sequence[int] = (1, 2, 3, 4),
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 1,
    backend: str = "auto",
    pooling: str | None = None,
    kfold: int | None = None,
    starts: int = SEARCH_STARTS,
    verbose: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> AuditResult:
    """Fit, choose K, and write the disclosure report of ``comps`` into ``out``.

    Parameters
    ----------
    comps
        The judgements (:func:`read_judgements`); an annotator table adds the covariate fit and
        "who is in each type", a ``group`` column the labeled fit and observed-group report.
    out
        Report folder (replaced whole at the end; refused if it holds something else).
    K
        Numbers of latent types to fit (K = 1 is always added: the comparison needs it).
    chains, draws, warmup, seed, backend
        Sampler settings and engine of every fit (:func:`pluralstan.fit`).
    pooling
        Labeled fit: ``"partial"`` or ``"none"`` (default: :func:`labeled_options`).
    kfold
        Folds of K-fold cross-validation by annotator for choosing K, run always; ``None``
        (default): leave-one-annotator-out by PSIS-LOO, or by mixture importance sampling
        when PSIS-LOO is not reliable; ``0``: PSIS-LOO however unreliable.
    starts
        Random starts of the mode search before each fit (but a partially pooled labeled
        fit), whose chains then start in the best mode found (:data:`SEARCH_STARTS`,
        :func:`search_options`); 0 leaves the chains to Stan's random inits.
    verbose
        Show the engine's output and every warning.
    progress
        Show a progress bar over the fits.
    echo
        Called with each message that matters (default: print to stderr).

    Returns
    -------
    AuditResult
    """
    echo = echo or (lambda m: print(m, file=sys.stderr))
    out = Path(out)
    if isinstance(starts, bool) or not isinstance(starts, int | np.integer) or starts < 0:
        raise PluralstanError(f"starts must be a whole number >= 0, got {starts!r}")
    Ks, skipped = _plan(comps, K)
    if not Ks:
        raise PluralstanError(f"no latent types can be fitted: {skipped}")
    labeled = labeled_options(comps, pooling)
    _prepare_out(out)
    sampler = {"chains": chains, "draws": draws, "warmup": warmup, "seed": seed,
               "backend": backend}
    mode_warmup = min(warmup, MODE_WARMUP)  # what ps.fit gives chains started in a mode
    with _building(out) as tmp:
        seconds: dict[str, float] = {}
        with _timed(seconds, "fits"):
            fits = _fits(comps, Ks, sampler, tmp, labeled=labeled, starts=starts,
                         verbose=verbose, progress=progress, echo=echo)
        summary: dict[str, Any] = {
            "data": {"judgements": comps.n, "annotators": len(comps.annotator_levels),
                     "mode": comps.mode, "coordinates": list(comps.attributes),
                     "reference_item": None if comps.reference is None else str(comps.reference),
                     "annotator_covariates": [] if comps.annotators is None
                     else list(comps.annotators.columns)},
            "settings": {**sampler, "K": Ks, "prob": PROB, "labeled": labeled,
                         "mode_search_starts": starts,
                         "mode_warmup": mode_warmup if starts else None},
        }
        aggregate = fits["aggregate"]
        doc = Document()
        doc.heading("Pluralism identifiability audit", 1)
        shorter = (f", with {mode_warmup} warm-up iterations instead of {warmup} (each fit's "
                   "posterior attributes record its warm-up)" if mode_warmup < warmup else "")
        but = "" if not labeled or labeled_search(labeled, starts) else " but the labeled one"
        search = (f" Before each fit{but}, L-BFGS "
                  f"from {starts} random starts looked for the posterior's modes, and the "
                  f"chains started in the best mode found{shorter}." if starts else "")
        doc.text(f"{comps.scope}; {chains} chains x {draws} draws per fit.{search} The aggregate "
                 "model (one preference vector for everybody) is the K = 1 fit. Intervals are "
                 f"{PROB:.0%} equal-tailed posterior intervals. The groups of this report are "
                 "latent preference types found from the judgements: each annotator belongs to "
                 "each type with a posterior probability (soft membership).")
        # K
        annotator_fits = {k: fits[f"annotator_K{k}"] for k in Ks}
        with _timed(seconds, "choose_K"):
            choice = _choose_K(comps, annotator_fits, kfold=kfold, sampler=sampler,
                               verbose=verbose, progress=progress, echo=echo)
        chosen_K, at_top = choice["K"], largest_K_note(choice["K"], Ks)
        loo_note = choice["note"] + at_top
        del annotator_fits
        for k in Ks:  # the chosen fit whole again, the others without their log likelihood
            if k != chosen_K:
                _store(tmp, fits, f"annotator_K{k}", log_lik=False)
        chosen = fits[f"annotator_K{chosen_K}"] = load(tmp / "fits" / f"annotator_K{chosen_K}.nc")
        for name in ("loo", "kfold", "mixture"):
            if choice.get(name) is not None:
                summary[f"K_{name}"] = _records(choice[name].reset_index())
        summary["K"] = {"chosen": chosen_K, "rule": K_RULE, "fitted": Ks,
                        "method": choice["method"],
                        "largest_fitted": bool(at_top)}
        # items 1-2
        comp = composition_table(comps, chosen, PROB)
        within = within_table(aggregate, chosen, PROB, comps.reference)
        membership = _membership(chosen)
        typed = _with_types(comps, membership, chosen) if chosen_K > 1 else None
        masking, results = (_masking(aggregate, chosen, typed) if typed is not None
                            else (None, {}))
        floor = next(iter(results.values())).attrs["noise_floor"] if results else 1.0
        power = pd.concat([power_scaling(aggregate, ["theta"]).assign(fit="aggregate"),
                           power_scaling(chosen, ["theta", "pi"]).assign(fit=f"K = {chosen_K}")],
                          ignore_index=True)
        with _timed(seconds, "pi_grid"):
            grid = (pi_sensitivity(comps, chosen, chosen_K, sampler, verbose=verbose,
                                   progress=progress) if chosen_K > 1 else None)
        verdicts = pd.DataFrame([
            _composition_verdict(chosen_K, comp, diagnostics.failed(chosen), loo_note),
            _within_verdict(within, chosen_K),
            _masking_verdict(masking, floor, chosen_K),
            _sensitivity_verdict(power, grid),
        ])
        summary["verdicts"] = _records(verdicts)
        doc.heading("Verdict")
        doc.card(verdicts)
        doc.heading("Number of types")
        if choice.get("loo") is not None:
            doc.text(f"Annotator latent-type model for K = {Ks}; K = {chosen_K} chosen by "
                     f"{choice['method']}: {K_RULE}{loo_note}. Leave-one-annotator-out PSIS-LOO:")
            doc.table(choice["loo"].reset_index())
        started = (f"{choice.get('cv_chains')} chains x {choice.get('cv_draws')} draws "
                   "started where the full fit of the same K ended, with its posterior scales "
                   f"and step size and {WARM_START_WARMUP} warm-up iterations")
        if choice.get("kfold") is not None:
            doc.text(f"{choice['folds']}-fold cross-validation by annotator (each annotator's "
                     f"judgements predicted by a fit that never saw them, of {started}; "
                     "mcse and mcse_diff: the "
                     "Monte Carlo standard errors of elpd_kfold and elpd_diff):")
            doc.table(choice["kfold"].reset_index())
        if choice.get("mixture") is not None:
            doc.text("Leave-one-annotator-out by mixture importance sampling (Silva & Zanella "
                     "2022): for each K, one fit of the mixture of the leave-one-out "
                     "posteriors, weighted to share it evenly among the annotators, from "
                     "which the importance weights to each leave-one-out posterior are "
                     f"bounded ({started}); mcse and mcse_diff: the Monte Carlo standard "
                     "errors of elpd_loo and elpd_diff:")
            doc.table(choice["mixture"].reset_index())
        doc.heading("1. Composition")
        doc.table(comp.rename(columns={"group": "type"}))
        summary["composition"] = _records(comp)
        doc.heading("2. Within-type posteriors")
        doc.text("Each type's coefficients beside the aggregate model's"
                 + (f" (items: ability against the reference item {comps.reference}, fixed at 0)."
                    if comps.mode == "items" else "."))
        doc.table(within.rename(columns={"group": "type"}))
        doc.figure("theta_forest", png_bytes(plots.plot_theta_intervals(within)),
                   "coefficients: aggregate fit and each latent type")
        summary["within"] = _records(within)
        if comps.mode == "items" and comps.items is None:
            ranks = item_ranks(comps, {"aggregate": aggregate, f"K = {chosen_K}": chosen})
            doc.text("Item ranks (1 = best) and the probability of ranking first, the reference "
                     "item included:")
            doc.table(ranks)
            summary["ranks"] = _records(ranks)
        doc.heading("3. Identification gap")
        if masking is None:
            doc.text(f"K = {chosen_K}: one type, no subgroup for the aggregate model to mask.")
        else:
            uncertain = int((membership.max(axis=1) < CERTAIN).sum())
            target = results["aggregate"].attrs["target"]
            against = ("observed frequencies" if target == "observed" else
                       f"the latent-type fit's own probabilities of each type (the types judge "
                       f"each pair fewer than {REPEATS_MIN} times on average, too few for "
                       "observed frequencies)")
            doc.text(f"Masking ratio (within-type error / pooled error of the predicted "
                     f"preference probabilities, against {against}) with each annotator "
                     f"in their most probable type; {uncertain} of {len(membership)} annotators "
                     f"have no type with posterior probability >= {CERTAIN}. In-sample: the types "
                     f"come from the same judgements. Noise floor (a perfect model): {floor:.3g}.")
            doc.table(masking)
            doc.figure("masking", png_bytes(plots.plot_masking_ratios(results)),
                       "posterior draws of the masking ratio")
            summary["masking"] = {"table": _records(masking), "noise_floor": floor,
                                  "target": target,
                                  "uncertain_annotators": uncertain}
        doc.heading("4. Sensitivity")
        doc.text("Power-scaling sensitivity (priorsense's method, threshold 0.05) of the aggregate "
                 "fit and the chosen latent-type fit.")
        doc.table(power[["fit", "variable", "prior", "likelihood", "diagnosis"]])
        summary["sensitivity"] = _records(power[["fit", "variable", "prior", "likelihood",
                                                 "diagnosis"]])
        if grid is not None:
            methods = grid.drop_duplicates("grid")[["grid", "method"]]
            doc.text(f"Sensitivity to the assumed composition: the K = {chosen_K} fit under "
                     f"pi ~ Dirichlet({PI_CONCENTRATION:g} x assumed shares), for the posterior "
                     "mean shares and for each type's share halved (types matched to the chosen "
                     "fit's); shift = change of each type's posterior mean from the first row, in "
                     "its posterior sd. Each row's posterior is the chosen fit's draws reweighted "
                     "by Pareto-smoothed importance sampling, or a refit where the Pareto k of "
                     f"the weights exceeds {PSIS_MAX_K:g} or they leave fewer than "
                     f"{IS_MIN_ESS} effective draws:")
            doc.table(methods)
            doc.table(grid[["grid", "group", "attribute", "mean", "shift", "shift_sd", "flag"]]
                      .rename(columns={"group": "type"}))
            summary["pi_grid"] = _records(grid)
        if comps.annotators is not None and chosen_K > 1:
            who = who_is_in_each_type(comps, membership)
            doc.heading("Who is in each type")
            doc.text("Annotator covariates per type, weighted by posterior membership.")
            doc.table(who)
            summary["who"] = _records(who)
            # the chosen fit's per-annotator draws are in its file and in the tables above
            _store(tmp, fits, f"annotator_K{chosen_K}", log_lik=False)
            chosen = fits[f"annotator_K{chosen_K}"]
            with _timed(seconds, "covariate"):
                fits["covariate"] = align_types(_fit_one(
                    "covariate", "covariate", comps, K=chosen_K, verbose=verbose, echo=echo,
                    progress=progress, pi_annotator=False,  # beta and W give it; not used here
                    **latent_options(starts), **sampler), chosen)
            effects = covariate_effects(fits["covariate"])
            doc.text(f"Covariate-informed model at K = {chosen_K}: effect of each covariate on the "
                     "log odds of each type (sum to zero across types), its interval and "
                     "P(effect > 0).")
            doc.table(effects.assign(flag=diagnostics.flag(fits["covariate"])))
            summary["covariate_effects"] = _records(effects)
            _store(tmp, fits, "covariate", log_lik=False)
        summary["diagnostics"] = {name: diagnostics.flag(f) or "passed" for name, f in fits.items()}
        summary["sample_seconds"] = {name: float(_arviz.group(f, "posterior").attrs.get(
            "sample_seconds", np.nan)) for name, f in fits.items()}
        # wall-clock seconds of the audit's steps (the fits include reading the engine's output)
        summary["seconds"] = seconds
        doc.heading("Diagnostics")
        doc.text("; ".join(f"{name}: {flag}" for name, flag in summary["diagnostics"].items()))
        return _write(out, tmp, doc, summary, fits, comps)


@contextlib.contextmanager
def _building(out: Path) -> Iterator[Path]:
    """A temporary sibling folder of ``out`` that the audit fills (fits as they become final,
    the rest at the end, :func:`_write`) and that replaces ``out`` only when everything
    succeeded; removed on any failure or interruption."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _store(tmp: Path, fits: dict[str, _arviz.Idata], name: str, *, log_lik: bool) -> None:
    """Write fit ``name`` to ``tmp/fits`` (unless it is there) and keep in ``fits`` only what
    the report still needs of it: its posterior without the per-annotator ``membership``
    draws, its log likelihood only with ``log_lik``, and its attributes (diagnostics,
    timings). On the tax conjoint these draws were most of the audit's memory."""
    path = tmp / "fits" / f"{name}.nc"
    if not path.exists():
        save(fits[name], path)
    post = _arviz.group(fits[name], "posterior")
    slim = {"posterior": post.drop_vars("membership", errors="ignore")}
    if not log_lik:
        slim["log_likelihood"] = None
    fits[name] = _arviz.replace_groups(fits[name], **slim)


def _write(out: Path, tmp: Path, doc: Document, summary: dict[str, Any],
           fits: dict[str, _arviz.Idata], comps: Comparisons) -> AuditResult:
    """Write what is not written yet to ``tmp``, then put it in place of ``out``."""
    for name, idata in fits.items():
        if not (tmp / "fits" / f"{name}.nc").exists():
            save(idata, tmp / "fits" / f"{name}.nc")
    if "labeled" in fits:
        disclosure_report(comps, fits["aggregate"], fits["labeled"], tmp / "observed_groups",
                          save_fits=False)
        doc.text("The observed groups' own disclosure: observed_groups/report.html.")
    for kind, value in doc.blocks:
        if kind == "figure":
            name, png, _ = value
            write_atomic(tmp / "figures" / f"{name}.png", png)
    write_atomic(tmp / "audit.json", json.dumps(summary, indent=1, default=str))
    write_atomic(tmp / "report.md", doc.markdown())
    write_atomic(tmp / "report.html", doc.html("Pluralism identifiability audit"))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    paths = {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}
    return AuditResult(summary, fits, paths)

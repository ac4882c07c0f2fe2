"""Figures: drawing only. Every function takes a fit or computed results and returns a
:class:`matplotlib.figure.Figure` (or draws on an Axes it is given); the numbers come from
:mod:`pluralstan.checks` (cells, components, ppc, sbc) and :mod:`pluralstan.diagnostics`.

:func:`dashboard` draws, for any pluralstan fit (aggregate or mixture),

``rank``
    per-chain marginal densities and rank histograms (Vehtari et al. 2021) of the parameters
    with the highest R-hat (:func:`pluralstan.checks.components.rhat_order`): chains that
    disagree show up as non-uniform ranks;
``forest``
    theta by group (:func:`plot_forest_by_group`), with the generating values when known;
``pair``
    the directions the data leave least identified
    (:func:`pluralstan.checks.components.nonidentified_pairs`): theta of two groups on one
    attribute, the weight pi against theta, and the strongest posterior correlations;
    divergent transitions in red;
``ppc``
    observed versus replicated frequency with which option a was preferred, per cell
    (:func:`pluralstan.checks.cells.cell_intervals`, :func:`plot_ppc_cells`);
``pit``
    randomised leave-one-cell-out PIT of the cell counts as an ECDF difference with a
    simultaneous band (:func:`pluralstan.checks.cells.pit_ecdf`, :func:`plot_cell_pit`);
``energy``
    marginal and transition energy with E-BFMI (:func:`arviz.plot_energy`).

Beside the dashboard: calibration tables (:func:`plot_calibration`), SBC results
(:func:`plot_sbc_ranks`, :func:`plot_sbc_ecdf_diff`, :func:`save_sbc_plots`) and the figures of
the disclosure report (:func:`plot_theta_intervals`, :func:`plot_masking_ratios`,
:func:`plot_pi_sensitivity`).

Every dashboard figure's title carries :func:`pluralstan.diagnostics.flag` when the fit failed a
sampler diagnostic, so a figure cut out of a report still says so. Figures are built on
:class:`matplotlib.figure.Figure` objects (no pyplot state), saved as PNG whole or not at all
(:func:`pluralstan.outputs.save_figure`) and, with ``show=True``, displayed inline in notebooks.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from . import _arviz
from .checks.cells import cell_intervals, pit_ecdf
from .checks.components import (
    aligned_truth,
    flatten_components,
    latent_groups,
    nonidentified_pairs,
    pair_correlations,
    rhat_order,
    truth_components,
)
from .checks.intervals import central_interval
from .diagnostics import flag
from .errors import PluralstanError
from .outputs import save_figure

if TYPE_CHECKING:
    from .checks.sbc import SBCResult

#: Names of the figures :func:`dashboard` draws, in order.
FIGURES = ("rank", "forest", "pair", "ppc", "pit", "energy")
SAMPLE_DIMS = ("chain", "draw")
#: Truth markers and flagged titles.
TRUTH_STYLE = {"marker": "D", "color": "black", "markerfacecolor": "white", "markersize": 6,
               "linestyle": "none", "zorder": 5}
FLAG_COLOR = "#b2182b"


# ---------------------------------------------------------------------------------- helpers
def _group_label(value: Hashable) -> str:
    """``group 0`` for integer codes (latent classes, numeric labels), else the label itself."""
    numeric = isinstance(value, int | np.integer) or (isinstance(value, str) and value.isdigit())
    return f"group {value}" if numeric else str(value)


def _match_default(idata: _arviz.Idata, match_truth: bool | None) -> bool:
    return latent_groups(idata) if match_truth is None else bool(match_truth)


def _title(fig: Figure, text: str, idata: _arviz.Idata) -> None:
    """Figure title naming the model, with the diagnostics flag (wrapped, in red) when failed."""
    model = idata.posterior.attrs.get("model")
    title = f"{model}: {text}" if model else text
    marker = flag(idata)
    width = max(40, int(fig.get_figwidth() * 12))  # characters that fit at this font size
    lines = textwrap.wrap(title, width) + textwrap.wrap(marker, width)
    fig.suptitle("\n".join(lines), color=FLAG_COLOR if marker else "black", fontsize=11)


def _tidy(fig: Figure) -> None:
    """Uniform, modest font sizes on every axes (ArviZ scales text with the figure size)."""
    for ax in fig.axes:
        ax.xaxis.label.set_fontsize(9)
        ax.yaxis.label.set_fontsize(9)
        ax.tick_params(labelsize=8)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained", dpi=100)


def _display(fig: Figure) -> None:
    """Show a figure inline in IPython / Jupyter (no-op elsewhere: the PNG is the output)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(fig)


# ---------------------------------------------------------------------------------- rank
def plot_rank(
    idata: _arviz.Idata, *, max_components: int = 12, var_names: Sequence[str] | None = None
) -> Figure:
    """Per-chain densities and rank histograms of the components with the highest R-hat.

    Parameters
    ----------
    idata
        A fit with at least two chains.
    max_components
        Show at most this many components (those with the highest rank-normalised R-hat, the
        ones most worth looking at); the title says how many were left out.
    var_names
        Posterior variables to consider (default:
        :func:`pluralstan.diagnostics.parameter_names`).
    """
    flat = flatten_components(idata, var_names)
    if not flat.data_vars:
        raise PluralstanError("the posterior has no varying parameter to plot")
    names, rhat = rhat_order(flat)
    shown = names[:max_components]
    # two (density, ranks) column pairs side by side keep the figure from growing too tall
    pairs = 2 if len(shown) > 4 else 1
    rows = int(np.ceil(len(shown) / pairs))
    fig = _figure(6.0 * pairs, 1.7 * rows + 0.9)
    grid = np.atleast_2d(fig.subplots(rows, 2 * pairs, squeeze=False))
    axes = np.array([[grid[r, 2 * p], grid[r, 2 * p + 1]]
                     for p in range(pairs) for r in range(rows)])
    for ax in axes[len(shown):].ravel():
        ax.set_visible(False)
    if _arviz.ARVIZ_1:
        _draw_rank(flat[shown], axes[: len(shown)])
    else:
        stats = {"sample_stats": _arviz.group(idata, "sample_stats")}
        source = _arviz.make_idata({"posterior": flat[shown]} | (
            stats if stats["sample_stats"] is not None else {}))
        az.plot_trace(source, kind="rank_bars", axes=axes[: len(shown)], compact=False)
    for ax, name in zip(axes[: len(shown), 0], shown, strict=True):
        if rhat is not None:
            ax.set_title(f"{name}   R-hat {float(rhat[name]):.3f}", fontsize="small")
    for ax in axes[: len(shown), 1]:
        ax.set_title("ranks by chain", fontsize="small")
    _tidy(fig)
    left_out = len(names) - len(shown)
    text = "chain densities and rank histograms (uniform ranks = chains agree)"
    if left_out:
        text += f"; {len(shown)} components with the highest R-hat, {left_out} more not shown"
    _title(fig, text, idata)
    return fig


# ---------------------------------------------------------------------------------- forest
def plot_forest_by_group(
    idata: _arviz.Idata,
    var_name: str = "theta",
    *,
    truth: Mapping[str, Any] | None = None,
    reference: _arviz.Idata | None = None,
    reference_label: str = "aggregate",
    prob: tuple[float, float] = (0.5, 0.9),
    match_truth: bool | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Forest plot of a preference matrix: one row per (attribute, group).

    Rows are grouped by attribute (one band per attribute, one coloured row per group in it),
    so the subgroups' posteriors for the same attribute sit next to each other; each row shows
    the posterior median, the inner (thick) and outer (thin) central intervals. Known values are
    drawn as open diamonds. Drawn by hand because :func:`arviz.plot_forest` does not expose
    row positions to overlay the truth on.

    Parameters
    ----------
    idata
        A fit whose ``var_name`` has dims ``("group", "attribute")`` (mixture models) or
        ``("attribute",)`` (the aggregate model: one row per attribute).
    var_name
        The posterior variable (default ``theta``).
    truth
        Known generating values, e.g. ``comps.truth``; ``truth[var_name]`` must have the
        posterior's shape.
    reference
        Optional second fit with ``var_name`` over ``("attribute",)`` (e.g. the aggregate
        model on the same data), drawn as an extra grey row in every band.
    reference_label
        Legend label of the reference rows.
    prob
        Inner and outer central interval probabilities.
    match_truth
        Relabel the truth's groups to the closest fitted components (default: for latent-class
        models, see :func:`pluralstan.checks.components.latent_groups`).
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
        Interval lines carry gids ``"interval|<group>|<attribute>"`` (the group is
        ``reference_label`` for reference rows) and truth markers the gid ``"truth"``.
    """
    if var_name not in idata.posterior:
        raise PluralstanError(
            f"the posterior has no variable {var_name!r}; variables: "
            f"{list(idata.posterior.data_vars)}"
        )
    da = idata.posterior[var_name]
    if "attribute" not in da.dims or not set(da.dims) <= {*SAMPLE_DIMS, "group", "attribute"}:
        raise PluralstanError(
            f"{var_name!r} has dims {da.dims}; plot_forest_by_group needs ('group', 'attribute') "
            "or ('attribute',)"
        )
    inner, outer = sorted(prob)
    if not 0 < inner < outer < 1:
        raise PluralstanError(f"prob must be two probabilities in (0, 1), got {prob}")
    if "group" not in da.dims:
        da = da.expand_dims(group=[idata.posterior.attrs.get("model", "posterior")], axis=-1)
    da = da.transpose(*SAMPLE_DIMS, "attribute", "group")
    rows = [(_group_label(g), da.sel(group=g)) for g in da["group"].values]
    if reference is not None:
        ref = reference.posterior[var_name]
        if ref.dims != (*SAMPLE_DIMS, "attribute") or list(ref["attribute"].values) != list(
            da["attribute"].values
        ):
            raise PluralstanError(
                f"the reference fit's {var_name!r} must have dims ('attribute',) with the same "
                f"attributes {list(da['attribute'].values)}; got dims {ref.dims}"
            )
        rows.append((reference_label, ref))
    known = aligned_truth(idata, truth, _match_default(idata, match_truth)).get(var_name)
    if known is not None:  # as (attribute, group), like the rows; the aggregate has one group
        dims = [d for d in idata.posterior[var_name].dims if d not in SAMPLE_DIMS]
        known = xr.DataArray(known, dims=dims)
        known = (known if "group" in dims else known.expand_dims("group", axis=-1))
        known = known.transpose("attribute", "group").values

    attributes = list(da["attribute"].values)
    n_rows = len(rows)
    if ax is None:
        # about a third of an inch per row, capped so that designs with many items stay viewable
        height = min(0.9 + 0.32 * len(attributes) * (n_rows + 0.6), 24.0)
        ax = _figure(7.0, height).subplots()
    step = 1.0 / (n_rows + 1)
    colors = [f"C{i}" for i in range(len(rows) - (reference is not None))] + (
        ["0.45"] if reference is not None else []
    )
    handles = []
    for r, ((label, draws), color) in enumerate(zip(rows, colors, strict=True)):
        wide = central_interval(draws, outer, median=True).transpose("attribute")
        narrow = central_interval(draws, inner).transpose("attribute")
        for j, attr in enumerate(attributes):
            y = -j - (r + 1) * step + 0.5
            gid = f"interval|{label}|{attr}"
            ax.plot([wide["lower"].values[j], wide["upper"].values[j]], [y, y], color=color,
                    lw=1.2, solid_capstyle="butt", gid=gid)
            ax.plot([narrow["lower"].values[j], narrow["upper"].values[j]], [y, y], color=color,
                    lw=3.5, solid_capstyle="butt")
            ax.plot(wide["median"].values[j], y, "o", color=color, markersize=4)
            if known is not None and r < known.shape[1]:
                ax.plot(known[j, r], y, gid="truth", **TRUTH_STYLE)
        handles.append(Line2D([], [], color=color, lw=3.5, label=label))
    if known is not None:
        handles.append(Line2D([], [], label="truth", **TRUTH_STYLE))
    ax.axvline(0.0, color="0.6", lw=0.8, ls="--", zorder=0)
    for j in range(1, len(attributes)):
        ax.axhline(-j + 0.5, color="0.88", lw=0.8, zorder=0)
    ax.set_yticks([-j for j in range(len(attributes))], [str(a) for a in attributes])
    ax.set_ylim(-len(attributes) + 0.5, 0.5)
    ax.set_ylabel("attribute")
    ax.set_xlabel(f"{var_name} (log-odds scale)")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              fontsize="small", title=f"median, {inner:.0%} / {outer:.0%}\ncentral intervals",
              title_fontsize="small")
    return ax


def plot_forest(idata: _arviz.Idata, truth: Mapping[str, Any] | None = None,
                **kwargs: Any) -> Figure:
    """:func:`plot_forest_by_group` of ``theta`` as a titled figure (``kwargs`` passed on)."""
    ax = plot_forest_by_group(idata, truth=truth, **kwargs)
    fig = ax.figure
    groups = idata.posterior["theta"].sizes.get("group")
    text = f"theta by group ({groups} groups)" if groups else "theta (pooled population)"
    if groups and latent_groups(idata):
        method = json.loads(idata.posterior.attrs.get("relabelling", "{}")).get("method")
        text += (f"; latent labels relabelled ({method})" if method else
                 "; latent labels as sampled (may switch: see pluralstan.relabel)")
    _title(fig, text, idata)
    return fig


# ---------------------------------------------------------------------------------- pairs
def plot_nonidentified_pairs(
    idata: _arviz.Idata,
    truth: Mapping[str, Any] | None = None,
    *,
    max_pairs: int = 4,
    match_truth: bool | None = None,
) -> Figure:
    """Scatter plots of the pairs from :func:`nonidentified_pairs`, divergences in red.

    Each panel is :func:`arviz.plot_pair` of two components, one colour per chain, titled with
    their posterior correlation; the truth, when known, is a white diamond.
    """
    pairs = nonidentified_pairs(idata, max_pairs)
    if not pairs:
        raise PluralstanError("a pair plot needs at least two varying parameter components")
    flat = flatten_components(idata)
    known = truth_components(idata, truth, _match_default(idata, match_truth))
    stats = _arviz.group(idata, "sample_stats")
    has_div = stats is not None and "diverging" in stats
    source = _arviz.make_idata({"posterior": flat} | ({"sample_stats": stats} if has_div else {}))
    ncols = min(len(pairs), 2)
    nrows = int(np.ceil(len(pairs) / ncols))
    fig = _figure(4.6 * ncols, 4.0 * nrows + 0.6)
    axes = np.ravel(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    chains = flat["chain"].values
    correlation = pair_correlations(flat, pairs)
    for ax, (a, b) in zip(axes, pairs, strict=False):
        ref = {n: known[n] for n in (a, b) if n in known}
        # one call per chain, coloured as in the rank plot: chains stuck in different modes
        # (label switching, multimodality) show up as differently coloured clouds
        for i, chain in enumerate(chains):
            last = i == len(chains) - 1
            if _arviz.ARVIZ_1:
                _draw_pair(ax, flat.sel(chain=chain), stats.sel(chain=chain) if has_div else None,
                           (a, b), f"C{i}", f"chain|{chain}", ref if last and len(ref) == 2
                           else None)
                continue
            az.plot_pair(
                source.sel(chain=[chain]), var_names=[a, b], divergences=has_div, ax=ax,
                scatter_kwargs={"marker": "o", "s": 5, "alpha": 0.4, "color": f"C{i}",
                                "gid": f"chain|{chain}"},
                divergences_kwargs={"color": FLAG_COLOR, "markersize": 5, "alpha": 0.9},
                reference_values=ref if last and len(ref) == 2 else None,
                reference_values_kwargs={"marker": "D", "markerfacecolor": "white",
                                         "color": "black", "markersize": 8},
            )
        r = correlation[(a, b)]
        ax.set_title(f"posterior correlation {r:+.2f}", fontsize="medium")
        ax.set_xlabel(a)
        ax.set_ylabel(b)
    _tidy(fig)
    notes = ["colour: chain"]
    if has_div:
        n_div = int(stats["diverging"].sum())
        notes.append(f"red: {n_div} divergent transitions" if n_div else "no divergences")
    if known:
        notes.append("white diamond: truth")
    text = f"least identified directions ({'; '.join(notes)})"
    _title(fig, text, idata)
    return fig


# ---------------------------------------------------------------------------------- PPC
def plot_ppc_cells(idata: _arviz.Idata, prob: float = 0.9) -> Figure:
    """Posterior predictive check of the per-cell frequency with which a was preferred.

    Left: cells sorted by their predicted frequency; the replicated central interval as a bar,
    the observed frequency as a dot (ringed in red when outside the interval). Right: observed
    against the posterior predictive mean with the identity line, point area proportional to
    the number of judgements in the cell (a calibration view). Cells split by an observed group
    (:func:`pluralstan.checks.cells.cell_groups`) are coloured by group. The numbers are
    :func:`pluralstan.checks.cells.cell_intervals`.
    """
    cells = cell_intervals(idata, prob)
    order = np.argsort(cells["rep_mean"].values, kind="stable")
    o, lo, mid, hi, mean, n, outside = (
        cells[v].values[order]
        for v in ("observed", "rep_lower", "rep_median", "rep_upper", "rep_mean", "n", "outside"))
    grouped = "group" in cells.coords
    labels = (cells["group"].values[order] if grouped
              else np.full(o.size, "observed", dtype=object))
    fig = _figure(12.0, 4.6)
    left, right = fig.subplots(1, 2, width_ratios=(1.7, 1))
    x = np.arange(o.size)
    bar = "0.7" if grouped else "C0"
    left.vlines(x, lo, hi, color=bar, alpha=0.6, lw=2.5, label=f"replicated {prob:.0%} interval")
    left.plot(x, mid, "_", color=bar, markersize=5)
    size = 8 + 40 * n / n.max()
    # colours follow the posterior's group order, as in the forest plot
    levels = _arviz.group(idata, "posterior")["group"].values if grouped else ["observed"]
    for i, g in enumerate(levels):
        at = labels == g
        if not at.any():
            continue
        color = f"C{i}" if grouped else "black"
        name = _group_label(g) if grouped else "observed"
        left.plot(x[at], o[at], "o", color=color, markersize=3, label=name, gid="observed")
        right.scatter(mean[at], o[at], s=size[at], alpha=0.5, color=color if grouped else "C0",
                      edgecolor="none", label=name, gid="observed")
    left.plot(x[outside], o[outside], "o", markerfacecolor="none", markeredgecolor=FLAG_COLOR,
              markersize=7, label="outside the interval", gid="outside")
    left.set_xlabel("cell (sorted by predicted frequency)")
    left.set_ylabel("share of judgements preferring a")
    left.set_ylim(-0.03, 1.03)
    left.legend(loc="upper left", fontsize="small", frameon=False)
    left.set_title(f"{o.size} cells; {1 - outside.mean():.0%} of observed frequencies inside "
                   f"the {prob:.0%} intervals", fontsize="medium")
    right.plot([0, 1], [0, 1], color="0.4", lw=1, ls="--")
    right.set_xlim(-0.03, 1.03)
    right.set_ylim(-0.03, 1.03)
    right.set_aspect("equal")
    right.set_xlabel("posterior predictive mean")
    right.set_ylabel("observed")
    right.set_title("calibration (area = judgements in the cell)", fontsize="medium")
    _title(fig, "posterior predictive check: per-cell preference for option a", idata)
    return fig


# ---------------------------------------------------------------------------------- ECDF / PIT
def draw_ecdf_difference(ax: Axes, diff: xr.Dataset, color: str = "C0") -> Axes:
    """Draw an ECDF difference and its simultaneous band
    (:func:`pluralstan.checks.ecdf.ecdf_difference`) on ``ax``."""
    x = diff["x"].values
    ax.fill_between(x, diff["lower"].values, diff["upper"].values, color=color, alpha=0.2,
                    linewidth=0)
    ax.plot(x, diff["ecdf_diff"].values, color=color, linewidth=1.5)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_ylabel("ECDF - uniform CDF")
    return ax


def plot_cell_pit(idata: _arviz.Idata, *, seed: int = 0, ci_prob: float = 0.95) -> Figure:
    """ECDF difference of the randomised (LOO-)PIT of the cell counts, simultaneous band.

    The ECDF minus the uniform CDF at 101 points inside the optimised simultaneous band
    (:func:`pluralstan.checks.cells.pit_ecdf`; drawn here because ArviZ's ECDF plot API
    differs between ArviZ 0.23 and 1.x); a curve leaving the band means the predictive
    distributions of the cells are miscalibrated (a frown: over-dispersed predictions; a smile:
    under-dispersed, e.g. unmodelled heterogeneity between annotators).
    """
    diff = pit_ecdf(idata, seed=seed, prob=ci_prob)
    fig = _figure(7.0, 4.6)
    ax = draw_ecdf_difference(fig.subplots(), diff)
    ax.set_xlabel("PIT of the count preferring a, per cell")
    sub = f"{diff.attrs['n']} cells, {ci_prob:.0%} simultaneous band"
    if "pareto_k" in diff:
        bad = int((diff["pareto_k"] > 0.7).sum())
        sub += f"; Pareto k > 0.7 for {bad} cell{'s' if bad != 1 else ''}"
    else:
        sub += ("; the log likelihood is not per judgement, so cells cannot be left out: "
                "in-sample PIT (conservative)")
    ax.set_title("\n".join(textwrap.wrap(sub, 80)), fontsize="medium")
    _title(fig, f"randomised {diff.attrs['kind']} PIT", idata)
    return fig


# ------------------------------------------------------------- drawn by hand on ArviZ 1.x
# ArviZ 1.x draws through arviz-plots' PlotCollection, which makes its own figures; these panels
# sit in pluralstan's own grids, so on ArviZ 1.x they are drawn here with matplotlib, the same
# content ArviZ 0.23's plot_trace(kind="rank_bars"), plot_pair and plot_energy give.
def _draw_rank(flat: xr.Dataset, axes: np.ndarray) -> None:
    """Per-chain densities (left) and per-chain rank histograms (right), one row per variable."""
    n_chain = flat.sizes["chain"]
    for (dens, ranks), name in zip(axes, flat.data_vars, strict=True):
        values = flat[name].transpose("chain", "draw").values
        order = stats.rankdata(values.ravel()).reshape(values.shape)
        edges = np.linspace(0, values.size, 21)
        height = values.shape[1] / (len(edges) - 1)
        for c in range(n_chain):
            dens.hist(values[c], bins=30, density=True, histtype="step", color=f"C{c}")
            counts, _ = np.histogram(order[c], bins=edges)
            ranks.bar(edges[:-1], counts / height * 0.9, width=np.diff(edges), bottom=c,
                      align="edge", color=f"C{c}", alpha=0.8)
            ranks.axhline(c + 0.9, color="0.3", linestyle="--", linewidth=0.6)
        ranks.set_yticks(np.arange(n_chain) + 0.45, [str(c) for c in flat["chain"].values])
        dens.set_yticks([])


def _draw_pair(ax: Axes, flat: xr.Dataset, stats: xr.Dataset | None, names: tuple[str, str],
               color: str, gid: str, ref: Mapping[str, float] | None) -> None:
    """One chain's draws of two components, its divergences in red, the truth as a diamond."""
    x, y = (flat[n].values.ravel() for n in names)
    ax.scatter(x, y, marker="o", s=5, alpha=0.4, color=color, gid=gid)
    if stats is not None:
        div = stats["diverging"].values.ravel().astype(bool)
        ax.plot(x[div], y[div], "o", color=FLAG_COLOR, markersize=5, alpha=0.9)
    if ref is not None:
        ax.plot(ref[names[0]], ref[names[1]], "D", markerfacecolor="white", color="black",
                markersize=8)


def _draw_energy(ax: Axes, energy: xr.DataArray, bfmi: np.ndarray) -> None:
    """Marginal energy and energy transitions, centred, with E-BFMI per chain in the legend."""
    values = energy.transpose("chain", "draw").values
    marginal = (values - values.mean()).ravel()
    transition = np.diff(values, axis=1).ravel()
    bins = np.histogram_bin_edges(np.concatenate([marginal, transition]), bins=40)
    ax.hist(marginal, bins=bins, density=True, alpha=0.5, label="marginal energy")
    ax.hist(transition, bins=bins, density=True, alpha=0.5, label="energy transition")
    for c, value in enumerate(bfmi):
        ax.plot([], [], " ", label=f"chain {c}: E-BFMI {value:.2f}")
    ax.set_yticks([])


# ---------------------------------------------------------------------------------- energy
def plot_energy(idata: _arviz.Idata) -> Figure:
    """Marginal vs transition energy, E-BFMI per chain (:func:`arviz.plot_energy` on ArviZ
    0.23, the same drawn by hand on 1.x)."""
    if "energy" not in idata.sample_stats:
        raise PluralstanError("sample_stats has no 'energy': the fit was not run with NUTS")
    fig = _figure(6.5, 4.4)
    ax = fig.subplots()
    if _arviz.ARVIZ_1:
        _draw_energy(ax, _arviz.group(idata, "sample_stats")["energy"], _arviz.bfmi(idata))
    else:
        az.plot_energy(_arviz.native(idata), ax=ax)
    ax.set_xlabel("energy (centred)")
    ax.legend(fontsize=8)
    _tidy(fig)
    _title(fig, "HMC energy (similar widths = good exploration; E-BFMI < 0.3 is a problem)",
           idata)
    return fig


# ---------------------------------------------------------------------------------- calibration
def plot_calibration(table: pd.DataFrame, ax: Axes | None = None, title: str | None = None
                     ) -> Axes:
    """Draw a calibration table (:func:`pluralstan.checks.ppc.calibration_table`): observed
    frequency with its interval against predicted probability, one series per group, and the
    diagonal."""
    if ax is None:
        ax = _figure(4.5, 4.5).subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    series = table.groupby("group") if "group" in table.columns else [("all pairs", table)]
    for name, part in series:
        ax.errorbar(part["predicted"], part["observed"],
                    yerr=[part["observed"] - part["lower"], part["upper"] - part["observed"]],
                    marker="o", ms=4, lw=1, capsize=2, label=str(name))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(a preferred)",
           ylabel="observed frequency", aspect="equal")
    failed = table["flag"].iloc[0] if len(table) and "flag" in table else ""
    ax.set_title((title or "calibration") + (" [diagnostics failed]" if failed else ""))
    ax.legend(fontsize=8, loc="upper left")
    return ax


# ---------------------------------------------------------------------------------- SBC
def _panels(n: int, title: str) -> tuple[Figure, list[Axes]]:
    """A grid of ``n`` small panels, at most four per row, under one title."""
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.2 * cols, 2.6 * rows)
    axes = list(np.ravel(fig.subplots(rows, cols, squeeze=False)))
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def plot_sbc_ranks(result: SBCResult, quantities: Sequence[str] | None = None,
                   bins: int | None = None) -> Figure:
    """SBC rank histograms with the pointwise 99% binomial band of a uniform histogram (grey).

    Draws :meth:`pluralstan.checks.sbc.SBCResult.rank_histogram`, one panel per quantity.
    """
    table = result.rank_histogram(quantities, bins)
    names = list(dict.fromkeys(table["quantity"]))
    fig, axes = _panels(len(names), f"SBC rank histograms: {result.model} "
                                    f"({int(table['n_sims'].min())} simulations)")
    for ax, name in zip(axes, names, strict=True):
        part = table[table["quantity"] == name]
        edges = np.append(part["bin_lower"].to_numpy(), part["bin_upper"].iloc[-1])
        ax.stairs(part["band_upper"], edges, baseline=part["band_lower"], fill=True,
                  color="0.85", label="99% band")
        ax.stairs(part["expected"], edges, color="0.5", linestyle="--")
        ax.stairs(part["count"], edges, color="C0", linewidth=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("rank")
        ax.set_ylabel("simulations")
    return fig


def plot_sbc_ecdf_diff(result: SBCResult, quantities: Sequence[str] | None = None) -> Figure:
    """SBC ECDF-difference plots of the fractional ranks inside simultaneous bands.

    Draws :meth:`pluralstan.checks.sbc.SBCResult.ecdf_difference`, one panel per quantity:
    the bands are those of the test behind :attr:`~pluralstan.checks.sbc.SBCResult.passed`.
    """
    table = result.ecdf_difference(quantities)
    names = list(dict.fromkeys(table["quantity"]))
    fig, axes = _panels(len(names), f"SBC ECDF difference: {result.model} "
                                    f"({result.prob:.0%} simultaneous bands)")
    for ax, name in zip(axes, names, strict=True):
        part = table[table["quantity"] == name].set_index("x")
        draw_ecdf_difference(ax, xr.Dataset.from_dataframe(part[["ecdf_diff", "lower",
                                                                 "upper"]]))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fractional rank")
    return fig


def save_sbc_plots(result: SBCResult, folder: str | Path, prefix: str | None = None,
                   dpi: int = 110) -> dict[str, Path]:
    """Write ``<prefix>_ranks.png`` and ``<prefix>_ecdf_diff.png`` (whole or not at all).

    ``prefix`` defaults to ``sbc_<model>``. Returns ``"ranks"`` and ``"ecdf_diff"`` -> path.
    """
    prefix = prefix or f"sbc_{result.model}"
    return {kind: save_figure(make(result), Path(folder) / f"{prefix}_{kind}.png", dpi=dpi,
                              close=False)
            for kind, make in (("ranks", plot_sbc_ranks), ("ecdf_diff", plot_sbc_ecdf_diff))}


# ---------------------------------------------------------------------------------- report
def plot_theta_intervals(table: pd.DataFrame) -> Figure:
    """theta per attribute with its interval, one series per (model, group).

    ``table`` has columns ``model``, ``group`` (``"all"`` for the aggregate fit),
    ``attribute``, ``mean``, ``lower``, ``upper`` (item two of
    :func:`pluralstan.checks.report.disclosure_report`).
    """
    attrs = list(dict.fromkeys(table["attribute"]))
    series = list(dict.fromkeys(zip(table["model"], table["group"], strict=True)))
    ax = _figure(6.0, 0.5 + 0.45 * len(attrs) * len(series) / 2).subplots()
    offsets = np.linspace(-0.3, 0.3, len(series))
    for off, (model, group) in zip(offsets, series, strict=True):
        part = table[(table["model"] == model) & (table["group"] == group)]
        y = np.array([attrs.index(a) for a in part["attribute"]]) + off
        ax.errorbar(part["mean"], y, xerr=[part["mean"] - part["lower"],
                                           part["upper"] - part["mean"]],
                    fmt="o", ms=4, capsize=2,
                    label=f"{model}" + ("" if group == "all" else f" group {group}"))
    ax.axvline(0, color="0.7", lw=1)
    ax.set_yticks(range(len(attrs)), attrs)
    ax.invert_yaxis()
    ax.set_xlabel("theta (posterior mean and interval)")
    ax.legend(fontsize=8, loc="best")
    return ax.figure


def plot_masking_ratios(results: Mapping[str, xr.Dataset], bound: float | None = None) -> Figure:
    """Histograms of the posterior draws of masking ratios, on a log10 axis.

    ``results`` maps a label to :func:`pluralstan.checks.masking.masking_ratio` output; its
    noise floor and an optional reference ``bound`` are drawn as vertical lines.
    """
    ax = _figure(6.0, 3.0).subplots()
    for name, ds in results.items():
        ax.hist(np.log10(np.asarray(ds["ratio"]).ravel()), bins=40, alpha=0.6,
                label=f"{name} ({ds.attrs.get('model', '')})")
    if bound is not None:
        ax.axvline(np.log10(bound), color="k", ls="--", lw=1, label=f"paper's bound {bound}")
    floor = next(iter(results.values())).attrs.get("noise_floor", 1.0)
    ax.axvline(np.log10(floor), color="0.5", ls=":", lw=1, label=f"noise floor {floor:.2f}")
    ax.set_xlabel("log10 masking ratio (posterior draws)")
    ax.legend(fontsize=8)
    return ax.figure


def plot_pi_sensitivity(table: pd.DataFrame) -> Figure:
    """One panel per group: theta_k per attribute, one series per assumed pi.

    ``table`` is :func:`pluralstan.checks.sensitivity.pi_grid_sensitivity` output (columns
    ``group``, ``grid``, ``attribute``, ``mean``, ``lower``, ``upper``).
    """
    groups = list(dict.fromkeys(table["group"]))
    grid = list(dict.fromkeys(table["grid"]))
    attrs = list(dict.fromkeys(table["attribute"]))
    fig = _figure(3.2 * len(groups), 3.0)
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)
    offsets = np.linspace(-0.25, 0.25, len(grid))
    for ax, group in zip(axes[0], groups, strict=True):
        for off, point in zip(offsets, grid, strict=True):
            part = table[(table["group"] == group) & (table["grid"] == point)]
            x = np.array([attrs.index(a) for a in part["attribute"]]) + off
            ax.errorbar(x, part["mean"], yerr=[part["mean"] - part["lower"],
                                               part["upper"] - part["mean"]],
                        fmt="o", ms=3, capsize=2, label=point)
        ax.axhline(0, color="0.7", lw=1)
        ax.set_xticks(range(len(attrs)), attrs)
        ax.set_title(f"group {group}", fontsize=9)
    axes[0, 0].set_ylabel("theta_k")
    axes[0, -1].legend(fontsize=7, title="assumed pi", title_fontsize=7)
    return fig


# ---------------------------------------------------------------------------------- dashboard
def dashboard(
    idata: _arviz.Idata,
    out_dir: str | Path | None = None,
    truth: Mapping[str, Any] | None = None,
    show: bool = False,
    *,
    reference: _arviz.Idata | None = None,
    match_truth: bool | None = None,
    prefix: str = "",
    dpi: int = 110,
) -> dict[str, Path | Figure]:
    """Draw the figure set of one fit (see the module docstring for what each shows).

    Parameters
    ----------
    idata
        A pluralstan fit (:func:`pluralstan.fit`).
    out_dir
        Folder to write ``<prefix><name>.png`` into (created if needed). ``None``: keep the
        figures in memory and return them.
    truth
        Known generating values, e.g. ``comps.truth`` from a simulator: drawn on the forest and
        pair plots. Keys that are not posterior variables are ignored.
    show
        Display each figure inline (IPython / Jupyter).
    reference
        Optional aggregate fit on the same data, drawn beside the groups in the forest plot.
    match_truth
        Relabel the truth to the fitted components (default: for latent-class models).
    prefix
        File name prefix, e.g. the model name, when several fits share ``out_dir``.
    dpi
        Resolution of the PNG files.

    Returns
    -------
    dict
        Figure name (:data:`FIGURES`, those that apply) to the PNG path when ``out_dir`` is
        given, else to the :class:`~matplotlib.figure.Figure`.
        ``forest`` is left out without a ``theta`` over ``(group,) attribute``, ``pair`` when
        the posterior has fewer than two varying components, ``ppc``
        and ``pit`` without posterior predictive counts, ``energy`` without NUTS energies.
    """
    if not _arviz.is_idata(idata) or "posterior" not in _arviz.groups(idata):
        raise PluralstanError(
            f"dashboard needs an InferenceData with a posterior group, got {type(idata).__name__}"
        )
    aligned_truth(idata, truth, match=False)  # a malformed truth fails before any drawing
    has_counts = all(g in _arviz.groups(idata) and "y" in _arviz.group(idata, g)
                     for g in ("observed_data", "posterior_predictive"))
    builders = {
        "rank": lambda: plot_rank(idata),
        "forest": lambda: plot_forest(idata, truth, reference=reference, match_truth=match_truth),
        "pair": lambda: plot_nonidentified_pairs(idata, truth, match_truth=match_truth),
        "ppc": lambda: plot_ppc_cells(idata),
        "pit": lambda: plot_cell_pit(idata),
        "energy": lambda: plot_energy(idata),
    }
    applies = {
        "rank": idata.posterior.sizes.get("chain", 0) >= 1,
        "forest": "theta" in idata.posterior and "attribute" in idata.posterior["theta"].dims
        and set(idata.posterior["theta"].dims) <= {*SAMPLE_DIMS, "group", "attribute"},
        "pair": bool(nonidentified_pairs(idata, max_pairs=1)),
        "ppc": has_counts,
        "pit": has_counts,
        "energy": "sample_stats" in _arviz.groups(idata) and "energy" in idata.sample_stats,
    }
    out: dict[str, Path | Figure] = {}
    for name in FIGURES:
        if not applies[name]:
            continue
        fig = builders[name]()
        if show:
            _display(fig)
        out[name] = fig if out_dir is None else save_figure(
            fig, Path(out_dir) / f"{prefix}{name}.png", dpi=dpi, close=False)
    return out

"""Dashboards: one call turns a fit into the figures a person would rather look at than read.

:func:`dashboard` draws, for any pluralstan fit (aggregate or mixture),

``rank``
    per-chain marginal densities and rank histograms (Vehtari et al. 2021) of the parameters
    with the highest R-hat: chains that disagree show up as non-uniform ranks;
``forest``
    theta by group (:func:`plot_forest_by_group`), with the generating values when known;
``pair``
    the directions the data leave least identified (:func:`plot_nonidentified_pairs`):
    theta of two groups on one attribute, the weight pi against theta, and the strongest
    posterior correlations; divergent transitions in red;
``ppc``
    observed versus replicated frequency with which option a was preferred, per cell
    (:func:`plot_ppc_cells`);
``pit``
    randomised leave-one-cell-out PIT of the cell counts as an ECDF difference with a
    simultaneous band (:func:`cell_pit`, :func:`plot_cell_pit`);
``energy``
    marginal and transition energy with E-BFMI (:func:`arviz.plot_energy`).

Every figure's title carries :func:`pluralstan.diagnostics.flag` when the fit failed a sampler
diagnostic, so a figure cut out of a report still says so. Figures are built on
:class:`matplotlib.figure.Figure` objects (no pyplot state), saved as PNG whole or not at all
(temporary file, then rename) and, with ``show=True``, displayed inline in notebooks.
"""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from . import _arviz
from .diagnostics import flag
from .errors import PluralstanError
from .relabel import match_components

#: Names of the figures :func:`dashboard` draws, in order.
FIGURES = ("rank", "forest", "pair", "ppc", "pit", "energy")
#: Models whose groups are latent classes: their labels are arbitrary, so a known truth is
#: matched to the fitted components before it is drawn.
LATENT_GROUP_MODELS = frozenset({"unlabeled", "annotator", "covariate", "pal"})
#: Deterministic summaries of other parameters (theta_bar = sum_k pi_k theta_k): their
#: correlation with what they summarise is structural, so pair plots leave them out.
DERIVED = frozenset({"theta_bar"})
#: Dims of per-observation quantities: variables carrying them are not plotted as parameters.
OBSERVATION_DIMS = frozenset({"annotator", "comparison", "cell", "outcome"})
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


def _component_name(var: str, coords: Sequence[Hashable]) -> str:
    """``theta[0, x1]``: the variable with its coordinate values, as ArviZ labels components."""
    return var if not coords else f"{var}[{', '.join(map(str, coords))}]"


def parameter_names(idata: _arviz.Idata) -> list[str]:
    """Posterior variables that are model parameters worth plotting.

    Excludes per-observation quantities (any dim in :data:`OBSERVATION_DIMS`) and variables
    that do not vary across draws (fixed or empty outputs).
    """
    post = _arviz.group(idata, "posterior")
    return [
        name for name, da in post.data_vars.items()
        if da.size and not OBSERVATION_DIMS & set(da.dims) and float(da.std()) > 0
    ]


def flatten_components(
    idata: _arviz.Idata, var_names: Sequence[str] | None = None
) -> xr.Dataset:
    """One scalar (chain, draw) variable per parameter component, named ``theta[0, x1]``.

    ArviZ plots each variable of such a dataset as one panel, so the selection of components
    to show (worst R-hat, strongest correlation) can be made here, outside the plotting calls.
    """
    post = _arviz.group(idata, "posterior")
    names = list(var_names) if var_names is not None else parameter_names(idata)
    out: dict[str, xr.DataArray] = {}
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        if not extra:
            out[name] = da.reset_coords(drop=True)
            continue
        for idx in np.ndindex(*(da.sizes[d] for d in extra)):
            sel = {d: i for d, i in zip(extra, idx, strict=True)}
            labels = [da[d].values[i] for d, i in sel.items()]
            out[_component_name(name, labels)] = da.isel(sel).reset_coords(drop=True)
    return xr.Dataset(out)


def _truth_components(
    idata: _arviz.Idata, truth: Mapping[str, Any] | None, match: bool
) -> dict[str, float]:
    """Known values by component name (keys of :func:`flatten_components`)."""
    truth = _aligned_truth(idata, truth, match)
    out: dict[str, float] = {}
    for name, value in truth.items():
        da = idata.posterior[name]
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        for idx in np.ndindex(*value.shape):
            labels = [da[d].values[i] for d, i in zip(extra, idx, strict=True)]
            out[_component_name(name, labels)] = float(value[idx])
    return out


def _aligned_truth(
    idata: _arviz.Idata, truth: Mapping[str, Any] | None, match: bool
) -> dict[str, np.ndarray]:
    """Validate ``truth`` against the posterior and, for latent groups, relabel it.

    Keys that are not posterior variables (e.g. the simulators' per-annotator ``z``) are
    ignored; a posterior variable given with the wrong shape is an error. With ``match``, the
    truth's groups are permuted to the fitted components whose posterior mean theta is closest
    (squared distance; an assignment problem solved by SciPy), because a latent-class model's
    labels are arbitrary.
    """
    if not truth:
        return {}
    if not isinstance(truth, Mapping):
        raise PluralstanError(
            f"truth must be a mapping of parameter name to values (e.g. comps.truth), got "
            f"{type(truth).__name__}"
        )
    post = _arviz.group(idata, "posterior")
    out: dict[str, np.ndarray] = {}
    for name, value in truth.items():
        if name not in post:
            continue
        arr = np.asarray(value, dtype=float)
        shape = tuple(s for d, s in post[name].sizes.items() if d not in SAMPLE_DIMS)
        if arr.shape != shape:
            dims = [d for d in post[name].dims if d not in SAMPLE_DIMS]
            raise PluralstanError(
                f"truth[{name!r}] has shape {arr.shape} but the posterior's {name!r} has shape "
                f"{shape} (dims {dims}); give one value per component"
            )
        out[name] = arr
    if match and "theta" in out and "group" in post["theta"].dims and out["theta"].ndim == 2:
        mean = post["theta"].mean(SAMPLE_DIMS).transpose("group", ...).values
        perm = match_components(out["theta"], mean)  # fitted component k <- true group perm[k]
        for name, arr in out.items():
            dims = [d for d in post[name].dims if d not in SAMPLE_DIMS]
            if dims and dims[0] == "group":
                out[name] = arr[perm]
    return out


def latent_groups(idata: _arviz.Idata) -> bool:
    """Whether the fit's groups are latent classes (arbitrary labels) rather than observed."""
    attrs = idata.posterior.attrs
    if "group_labels" in attrs:
        return attrs["group_labels"] == "latent"
    return attrs.get("model") in LATENT_GROUP_MODELS


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


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` as PNG whole or not at all (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
        Posterior variables to consider (default: :func:`parameter_names`).
    """
    flat = flatten_components(idata, var_names)
    if not flat.data_vars:
        raise PluralstanError("the posterior has no varying parameter to plot")
    rhat = az.rhat(flat) if flat.sizes["chain"] > 1 else None
    names = list(flat.data_vars)
    if rhat is not None:
        names.sort(key=lambda n: -float(rhat[n]))
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
        models, see :data:`LATENT_GROUP_MODELS`).
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
    known = _aligned_truth(idata, truth, _match_default(idata, match_truth)).get(var_name)
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
    qs = [(1 - outer) / 2, (1 - inner) / 2, 0.5, (1 + inner) / 2, (1 + outer) / 2]
    step = 1.0 / (n_rows + 1)
    colors = [f"C{i}" for i in range(len(rows) - (reference is not None))] + (
        ["0.45"] if reference is not None else []
    )
    handles = []
    for r, ((label, draws), color) in enumerate(zip(rows, colors, strict=True)):
        q = draws.quantile(qs, dim=SAMPLE_DIMS).transpose("quantile", "attribute").values
        for j, attr in enumerate(attributes):
            y = -j - (r + 1) * step + 0.5
            gid = f"interval|{label}|{attr}"
            ax.plot(q[[0, 4], j], [y, y], color=color, lw=1.2, solid_capstyle="butt", gid=gid)
            ax.plot(q[[1, 3], j], [y, y], color=color, lw=3.5, solid_capstyle="butt")
            ax.plot(q[2, j], y, "o", color=color, markersize=4)
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
def nonidentified_pairs(idata: _arviz.Idata, max_pairs: int = 4) -> list[tuple[str, str]]:
    """Pairs of components along which the posterior is least identified.

    Mixture models first: theta of groups 0 and 1 on the attribute where they are most
    correlated (a trade-off between subgroups the data cannot separate), then each pi against
    the theta component it is most correlated with. The rest, and everything for the aggregate
    model, are the strongest absolute posterior correlations among all components (pairs within
    the simplex pi are skipped: their correlation is fixed by the sum-to-one constraint, and so
    are the deterministic summaries in :data:`DERIVED`).
    """
    flat = flatten_components(idata, [v for v in parameter_names(idata) if v not in DERIVED])
    names = list(flat.data_vars)
    if len(names) < 2:
        return []
    draws = np.stack([flat[n].values.ravel() for n in names])
    corr = np.corrcoef(draws)
    index = {n: i for i, n in enumerate(names)}

    def strength(a: str, b: str) -> float:
        return abs(float(np.nan_to_num(corr[index[a], index[b]])))

    chosen: list[tuple[str, str]] = []
    theta = idata.posterior.get("theta")
    if theta is not None and "group" in theta.dims and theta.sizes["group"] >= 2:
        g0, g1 = theta["group"].values[:2]
        pairs = [(_component_name("theta", [g0, a]), _component_name("theta", [g1, a]))
                 for a in theta["attribute"].values]
        chosen.append(max(pairs, key=lambda p: strength(*p)))
        if "pi" in idata.posterior and "pi" in parameter_names(idata):
            thetas = [n for n in names if n.startswith("theta[")]
            for g in idata.posterior["pi"]["group"].values[:1]:
                pi_name = _component_name("pi", [g])
                chosen.append((pi_name, max(thetas, key=lambda t: strength(pi_name, t))))
    rest = sorted(
        (p for p in combinations(names, 2)
         if not (p[0].startswith("pi[") and p[1].startswith("pi["))
         and p not in chosen and p[::-1] not in chosen),
        key=lambda p: -strength(*p),
    )
    return (chosen + rest)[:max_pairs]


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
    known = _truth_components(idata, truth, _match_default(idata, match_truth))
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
        r = float(np.corrcoef(flat[a].values.ravel(), flat[b].values.ravel())[0, 1])
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
def cell_frequencies(idata: _arviz.Idata, outcome: str = "a") -> tuple[xr.DataArray,
                                                                          xr.DataArray]:
    """Observed and replicated share of judgements with ``outcome`` in each cell.

    Returns ``(observed, replicated)``: dims ``("cell",)`` and ``("chain", "draw", "cell")``.
    Needs ``observed_data["y"]`` and ``posterior_predictive["y"]``, counts with dims
    ``(..., "cell", "outcome")``.
    """
    for group in ("observed_data", "posterior_predictive"):
        if group not in _arviz.groups(idata) or "y" not in _arviz.group(idata, group):
            raise PluralstanError(
                f"the fit has no {group}['y'] (counts per cell and outcome); groups present: "
                f"{list(_arviz.groups(idata))}"
            )
    obs, rep = idata.observed_data["y"], idata.posterior_predictive["y"]
    if "outcome" not in obs.dims or outcome not in obs["outcome"].values:
        raise PluralstanError(
            f"observed_data['y'] has dims {obs.dims}; needs an 'outcome' dim with coordinate "
            f"{outcome!r}"
        )
    totals = obs.sum("outcome")
    return obs.sel(outcome=outcome) / totals, rep.sel(outcome=outcome) / totals


def cell_groups(idata: _arviz.Idata) -> np.ndarray | None:
    """Group label of every cell when cells are split by an observed group, else ``None``.

    Read from ``constant_data["cell_group"]`` (0-based codes into the posterior's ``group``
    coordinate), which labeled models record.
    """
    const = _arviz.group(idata, "constant_data")
    if const is None or "cell_group" not in const or "group" not in idata.posterior.coords:
        return None
    codes = np.asarray(const["cell_group"].values)
    if codes.shape != (idata.observed_data.sizes.get("cell", -1),):
        return None
    return np.asarray(idata.posterior["group"].values)[codes.astype(int)]


def plot_ppc_cells(idata: _arviz.Idata, prob: float = 0.9) -> Figure:
    """Posterior predictive check of the per-cell frequency with which a was preferred.

    Left: cells sorted by their predicted frequency; the replicated central interval as a bar,
    the observed frequency as a dot (ringed in red when outside the interval). Right: observed
    against the posterior predictive mean with the identity line, point area proportional to
    the number of judgements in the cell (a calibration view). Cells split by an observed group
    (:func:`cell_groups`) are coloured by group.
    """
    obs, rep = cell_frequencies(idata)
    n = idata.observed_data["y"].sum("outcome").values
    lo, mid, hi = rep.quantile([(1 - prob) / 2, 0.5, (1 + prob) / 2], dim=SAMPLE_DIMS).values
    mean = rep.mean(SAMPLE_DIMS).values
    order = np.argsort(mean, kind="stable")
    o, lo, mid, hi, mean, n = (v[order] for v in (obs.values, lo, mid, hi, mean, n))
    outside = (o < lo) | (o > hi)
    groups = cell_groups(idata)
    labels = groups[order] if groups is not None else np.full(o.size, "observed", dtype=object)
    fig = _figure(12.0, 4.6)
    left, right = fig.subplots(1, 2, width_ratios=(1.7, 1))
    x = np.arange(o.size)
    bar = "0.7" if groups is not None else "C0"
    left.vlines(x, lo, hi, color=bar, alpha=0.6, lw=2.5, label=f"replicated {prob:.0%} interval")
    left.plot(x, mid, "_", color=bar, markersize=5)
    size = 8 + 40 * n / n.max()
    # colours follow the posterior's group order, as in the forest plot
    levels = idata.posterior["group"].values if groups is not None else ["observed"]
    for i, g in enumerate(levels):
        at = labels == g
        if not at.any():
            continue
        color = "black" if groups is None else f"C{i}"
        name = _group_label(g) if groups is not None else "observed"
        left.plot(x[at], o[at], "o", color=color, markersize=3, label=name, gid="observed")
        right.scatter(mean[at], o[at], s=size[at], alpha=0.5, color="C0" if groups is None
                      else color, edgecolor="none", label=name, gid="observed")
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


# ---------------------------------------------------------------------------------- PIT
def cell_log_likelihood(idata: _arviz.Idata) -> xr.DataArray | None:
    """Log likelihood of each cell's counts, ``(chain, draw, cell)``, or ``None``.

    Summed from the per-judgement log likelihood (dim ``comparison``) over the judgements of
    each cell (``constant_data["cell_of_row"]``); this is the cell's multinomial log likelihood
    up to its multinomial coefficient, a constant that cancels from importance weights. Models
    whose log likelihood is per annotator cannot be cut into cells: ``None``.
    """
    if "log_likelihood" not in _arviz.groups(idata):
        return None
    ll = _arviz.group(idata, "log_likelihood")
    da = ll["y"] if "y" in ll else next(iter(ll.data_vars.values()), None)
    if da is None:
        return None
    if "cell" in da.dims:
        return da
    const = _arviz.group(idata, "constant_data")
    if "comparison" in da.dims and const is not None and "cell_of_row" in const:
        cell_of_row = np.asarray(const["cell_of_row"].values)
        if cell_of_row.shape == (da.sizes["comparison"],):
            key = xr.DataArray(cell_of_row, dims="comparison", name="cell")
            return da.groupby(key).sum()
    return None


def cell_pit(
    idata: _arviz.Idata, outcome: str = "a", *, loo: bool = True, seed: int = 0
) -> tuple[np.ndarray, str, np.ndarray | None]:
    """Randomised PIT of the count of ``outcome`` in each cell.

    For a discrete count the ordinary PIT ``P(y_rep <= y)`` is not uniform even under the true
    model, so the randomised PIT (Czado, Gneiting & Held 2009) is used,
    ``P(y_rep < y) + U * P(y_rep = y)`` with ``U ~ Uniform(0, 1)``, which is exactly uniform
    when the predictive distribution is right. (ArviZ's ``loo_pit`` instead smooths discrete
    values with a spline over the observation index, which has no meaning for cells, and the
    per-judgement log likelihood does not match the per-cell counts, so this is written here.)

    With ``loo`` and a log likelihood that can be summed per cell (:func:`cell_log_likelihood`)
    the predictive probabilities are leave-one-cell-out, by Pareto-smoothed importance weights
    (:func:`pluralstan._arviz.psislw`); otherwise they are in-sample posterior predictive
    probabilities, which are conservative (too central) for an over-fitting model.

    Returns
    -------
    pit : numpy.ndarray
        ``(cell,)`` PIT values.
    kind : str
        ``"leave-one-cell-out"`` or ``"in-sample"``.
    pareto_k : numpy.ndarray or None
        ``(cell,)`` Pareto shape estimates of the importance weights (LOO only).
    """
    obs = idata.observed_data["y"].sel(outcome=outcome)
    rep = idata.posterior_predictive["y"].sel(outcome=outcome)
    rep = rep.stack(__sample__=SAMPLE_DIMS).transpose("cell", "__sample__").values
    n_samples = rep.shape[1]
    ll = cell_log_likelihood(idata) if loo else None
    if ll is not None:
        stacked = ll.stack(__sample__=SAMPLE_DIMS).transpose("cell", "__sample__")
        ess = az.ess(_arviz.group(idata, "posterior")[parameter_names(idata)], method="mean")
        reff = float(np.mean([ess[v].mean() for v in ess.data_vars])) / n_samples
        log_w, khat = _arviz.psislw(-stacked, reff=min(reff, 1.0), dim="__sample__")
        weights = np.exp(log_w.values)
        kind, pareto_k = "leave-one-cell-out", np.asarray(khat.values)
    else:
        weights = np.full(rep.shape, 1.0 / n_samples)
        kind, pareto_k = "in-sample", None
    y = obs.values[:, None]
    u = np.random.default_rng(seed).uniform(size=y.shape[0])
    below = (weights * (rep < y)).sum(axis=1)
    equal = (weights * (rep == y)).sum(axis=1)
    return np.clip(below + u * equal, 0.0, 1.0), kind, pareto_k


def plot_cell_pit(idata: _arviz.Idata, *, seed: int = 0, ci_prob: float = 0.95) -> Figure:
    """ECDF difference of the randomised (LOO-)PIT of the cell counts, simultaneous band.

    The ECDF minus the uniform CDF at 101 points inside the optimised simultaneous band
    (:func:`pluralstan._arviz.ecdf_band`; drawn here because ArviZ's ECDF plot API differs
    between ArviZ 0.23 and 1.x); a curve
    leaving the band means the predictive distributions of the cells are miscalibrated
    (a frown: over-dispersed predictions; a smile: under-dispersed, e.g. unmodelled
    heterogeneity between annotators).
    """
    pit, kind, khat = cell_pit(idata, seed=seed)
    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    z = np.linspace(0, 1, 101)
    lower, upper = _arviz.ecdf_band(pit.size, z, z, prob=ci_prob)
    ax.fill_between(z, lower - z, upper - z, color="C0", alpha=0.2, linewidth=0)
    ax.plot(z, _arviz.ecdf(pit, z) - z, color="C0", linewidth=1.5)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel("PIT of the count preferring a, per cell")
    ax.set_ylabel("ECDF - uniform CDF")
    sub = f"{pit.size} cells, {ci_prob:.0%} simultaneous band"
    if khat is not None:
        bad = int((khat > 0.7).sum())
        sub += f"; Pareto k > 0.7 for {bad} cell{'s' if bad != 1 else ''}"
    else:
        sub += ("; the log likelihood is not per judgement, so cells cannot be left out: "
                "in-sample PIT (conservative)")
    ax.set_title("\n".join(textwrap.wrap(sub, 80)), fontsize="medium")
    _title(fig, f"randomised {kind} PIT", idata)
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
    _aligned_truth(idata, truth, match=False)  # a malformed truth fails before any drawing
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
        out[name] = fig if out_dir is None else save_png(
            fig, Path(out_dir) / f"{prefix}{name}.png", dpi=dpi)
    return out

"""Sampler diagnostics that refuse to hide problems.

Every fit is checked for divergent transitions, maximum-tree-depth hits, R-hat above 1.01,
bulk / tail ESS below 400 and E-BFMI below 0.3 (the thresholds of Vehtari et al. 2021 and the
Stan documentation). Failures are attached to the InferenceData (``posterior.attrs
["diagnostics"]``, JSON), raised as :class:`~pluralstan.errors.DiagnosticWarning` naming the
parameter, and read back by every table and report that uses the fit (:func:`failed`).

Latent-type fits (a ``group`` dim whose labels are latent) are judged on what the data
identify: the label-dependent parameters as they are stored (relabelled by
:func:`pluralstan.fit.fit` unless it was told not to) and label-invariant scalars
(:func:`label_invariant`: the log density, the total log likelihood and the sorted mixing
weights). Label switching that relabelling resolved is recorded as a note, not a problem.
Chains that disagree on the label-invariant scalars are grouped into modes (:func:`chain_modes`);
when every chain is stationary on its own but the chains fall into several modes, the problem
is recorded as genuine multimodality, distinct from chains that have not converged.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from . import _arviz
from .errors import DiagnosticWarning

RHAT_MAX = 1.01
ESS_MIN = 400
EBFMI_MIN = 0.3

#: Chains whose label-invariant scalars have R-hat below this, taken together, are in one mode;
#: a chain whose own split R-hat is below it is stationary. Looser than :data:`RHAT_MAX`
#: because it compares two chains (or two halves of one), whose R-hat is noisier than that of
#: the whole fit.
MODE_RHAT = 1.05

#: Name of the ``sample_stats`` variable holding the per-draw label permutations applied by
#: :func:`pluralstan.relabel.relabel` (relabelled component ``k`` is raw component
#: ``label_permutation[chain, draw, k]``).
PERMUTATION = "label_permutation"

#: How the problem of chains stationary in different modes begins.
MULTIMODAL = "genuine multimodality"

#: How the note on a fit whose modes were stacked begins (:func:`pluralstan.pipeline.finalize`).
STACKED = "modes stacked"
#: Posterior attribute that says why a latent-type fit was left as sampled (a diagnostics note).
NOT_RELABELLED = "not_relabelled"


@dataclass
class Diagnostics:
    """Outcome of :func:`check`; ``problems`` is empty when the fit passed.

    Attributes
    ----------
    divergences, treedepth_hits, max_rhat, min_ess_bulk, min_ess_tail, min_ebfmi
        The sampler checks (R-hat and ESS over ``var_names``).
    problems
        Failed checks, one sentence each (what :func:`failed` returns).
    notes
        What a reader should know that is not a failure (e.g. label switching resolved by
        relabelling).
    var_names
        The variables the R-hat / ESS checks covered.
    label_invariant
        Latent-type fits: label-invariant scalar -> ``{"rhat": ..., "ess_bulk": ...}``.
    chain_lp
        Latent-type fits: mean log density of each chain.
    modes
        Latent-type fits: chains grouped by agreement on the label-invariant scalars, the group
        of highest mean log density first (one group when the chains agree).
    multimodal
        Whether the chains are stationary but sit in different modes (genuine multimodality).
    """

    divergences: int
    treedepth_hits: int
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    min_ebfmi: float
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    var_names: list[str] = field(default_factory=list)
    label_invariant: dict[str, dict[str, float]] = field(default_factory=dict)
    chain_lp: list[float] = field(default_factory=list)
    modes: list[list[int]] = field(default_factory=list)
    multimodal: bool = False

    @property
    def ok(self) -> bool:
        """Whether the fit passed every check."""
        return not self.problems

    def to_json(self) -> str:
        """JSON form stored in the InferenceData attributes."""
        return json.dumps(asdict(self))


def _worst(ds, reduce: str) -> tuple[float, str]:
    """Worst value over all variables and coordinates of a diagnostic dataset, and its name."""
    best_val, best_name = (np.nan, "")
    for name, da in ds.data_vars.items():
        vals = np.asarray(da.values, dtype=float)
        if not np.isfinite(vals).any():
            continue
        flat = vals.reshape(-1)
        i = int(np.nanargmax(flat) if reduce == "max" else np.nanargmin(flat))
        v = float(flat[i])
        if np.isnan(best_val) or (v > best_val if reduce == "max" else v < best_val):
            label = name
            if da.ndim:
                idx = np.unravel_index(i, da.shape)
                label += "[" + ", ".join(
                    str(da.coords[d].values[j]) for d, j in zip(da.dims, idx, strict=True)
                ) + "]"
            best_val, best_name = v, label
    return best_val, best_name


#: Dims of per-observation generated quantities (allocation probabilities, predictions): they
#: are not parameters, and R-hat / ESS of thousands of them would drown the parameters' checks.
PER_OBSERVATION_DIMS = ("annotator", "cell", "comparison", "pair")


def parameter_names(idata: _arviz.Idata) -> list[str]:
    """Posterior variables to diagnose: those that vary and are not per-observation quantities."""
    post = _arviz.group(idata, "posterior")
    return [
        name for name, da in post.data_vars.items()
        if not set(da.dims) & set(PER_OBSERVATION_DIMS) and da.size and float(da.std()) > 0
    ]


# ---------------------------------------------------------------------- latent labels
def is_latent(idata: _arviz.Idata, dim: str = "group") -> bool:
    """Whether the posterior has a latent label dim with more than one component."""
    post = _arviz.group(idata, "posterior")
    return post.attrs.get("group_labels") == "latent" and post.sizes.get(dim, 0) > 1


def label_invariant(idata: _arviz.Idata, dim: str = "group") -> xr.Dataset:
    """Label-invariant scalars of a latent-type fit, ``(chain, draw)`` each.

    ``lp`` (the log density, from ``sample_stats``), ``log_lik`` (the log likelihood summed
    over the observations of every ``log_likelihood`` variable) and ``<name>_sorted[k]`` for
    every posterior variable with the label dim alone (the mixing weights ``pi``), sorted along
    it. None depends on how the components are labelled.
    """
    out: dict[str, xr.DataArray] = {}
    if "sample_stats" in _arviz.groups(idata) and "lp" in idata.sample_stats:
        out["lp"] = idata.sample_stats["lp"]
    if "log_likelihood" in _arviz.groups(idata) and idata.log_likelihood.data_vars:
        out["log_lik"] = sum(
            da.sum([d for d in da.dims if d not in ("chain", "draw")])
            for da in idata.log_likelihood.data_vars.values()
        )
    post = _arviz.group(idata, "posterior")
    for name, da in post.data_vars.items():
        if set(da.dims) == {"chain", "draw", dim}:
            arr = np.sort(da.transpose("chain", "draw", dim).values, axis=-1)
            out[f"{name}_sorted"] = xr.DataArray(
                arr, dims=("chain", "draw", f"{dim}_rank"),
                coords={"chain": da["chain"], "draw": da["draw"]},
            )
    return xr.Dataset({k: v.reset_coords(drop=True) for k, v in out.items()})


def _max_rhat(ds: xr.Dataset) -> float:
    """Largest R-hat over every variable of ``ds`` (NaN when undefined)."""
    if not ds.data_vars:
        return np.nan
    value, _ = _worst(az.rhat(ds), "max")
    return value


def chain_modes(invariant: xr.Dataset, chain_lp: np.ndarray,
                rhat_max: float = MODE_RHAT) -> list[list[int]]:
    """Group chains that agree on the label-invariant scalars.

    Chains are taken in decreasing order of mean log density; each joins the first group whose
    first chain it agrees with (R-hat of every scalar over the two chains at most
    ``rhat_max``), else starts a group.

    Returns
    -------
    list of list of int
        Chain positions per group, the group of highest mean log density first.
    """
    groups: list[list[int]] = []
    for c in np.argsort(-np.asarray(chain_lp), kind="stable"):
        for g in groups:
            if _max_rhat(invariant.isel(chain=[g[0], int(c)])) <= rhat_max:
                g.append(int(c))
                break
        else:
            groups.append([int(c)])
    return [sorted(g) for g in groups]


def _stationary(invariant: xr.Dataset, chain: int) -> bool:
    """Whether one chain is stationary: the R-hat of its label-invariant scalars, its first and
    second halves taken as two chains, is at most :data:`MODE_RHAT`."""
    one = invariant.isel(chain=chain, drop=True)
    half = one.sizes["draw"] // 2
    if half < 4:
        return True
    halves = xr.concat([one.isel(draw=slice(0, half)),
                        one.isel(draw=slice(half, 2 * half)).assign_coords(
                            draw=one["draw"].values[:half])], dim="chain")
    value = _max_rhat(halves.transpose("chain", "draw", ...))
    return bool(np.isnan(value) or value <= MODE_RHAT)


def switching_notes(idata: _arviz.Idata, dim: str = "group") -> list[str]:
    """Notes on the label switching that relabelling resolved (empty when nothing was permuted).

    Reads the permutations :func:`pluralstan.relabel.relabel` stored in ``sample_stats``.
    """
    if "sample_stats" not in _arviz.groups(idata) or PERMUTATION not in idata.sample_stats:
        return []
    perms = idata.sample_stats[PERMUTATION].transpose("chain", "draw", ...).values
    method = json.loads(idata.posterior.attrs.get("relabelling", "{}")).get("method", "?")
    dominant, switches = [], []
    for chain in perms:
        seq = [tuple(int(v) for v in row) for row in chain]
        dominant.append(Counter(seq).most_common(1)[0][0])
        switches.append(int(sum(a != b for a, b in pairwise(seq))))
    notes = []
    if len(set(dominant)) > 1:
        listing = ", ".join(f"chain {c}: {d}" for c, d in enumerate(dominant))
        notes.append(f"label switching across chains resolved by {method} relabelling "
                     f"(raw component of each relabelled component, per chain: {listing})")
    moved = [f"chain {c}: {n}" for c, n in enumerate(switches) if n]
    if moved:
        notes.append(f"label switching within chains resolved by {method} relabelling "
                     f"(switches {', '.join(moved)})")
    return notes


def _latent_checks(idata: _arviz.Idata, label_rhat: float, result: Diagnostics,
                   dim: str) -> None:
    """Judge a latent-type fit on its label-invariant scalars; classify chain disagreement."""
    invariant = label_invariant(idata, dim)
    n_chains = idata.posterior.sizes["chain"]
    if not invariant.data_vars:
        return
    rhat = az.rhat(invariant) if n_chains > 1 else None
    ess = az.ess(invariant, method="bulk")
    for name in invariant.data_vars:
        result.label_invariant[str(name)] = {
            "rhat": float(rhat[name].max()) if rhat is not None else np.nan,
            "ess_bulk": float(ess[name].min()),
        }
    inv_rhat, inv_at = _worst(rhat, "max") if rhat is not None else (np.nan, "")
    ess_b, ess_at = _worst(ess, "min")
    if "lp" in invariant:
        result.chain_lp = [float(v) for v in invariant["lp"].mean("draw").values]
    if n_chains > 1 and result.chain_lp:
        result.modes = chain_modes(invariant, np.array(result.chain_lp))
    labels_settled = idata.posterior.attrs.get("relabelling") or idata.posterior.attrs.get(
        NOT_RELABELLED)  # relabelled, or left as sampled on purpose
    if not labels_settled and label_rhat > RHAT_MAX >= inv_rhat:
        result.notes.append(
            "latent labels are as sampled (not relabelled): the R-hat of label-dependent "
            "variables includes label switching; relabel with pluralstan.relabel.relabel"
        )
    if ess_b < ESS_MIN:
        result.problems.append(f"bulk ESS {ess_b:.0f} < {ESS_MIN} for the label-invariant "
                               f"{ess_at}")
    if not inv_rhat > RHAT_MAX:
        return
    lp = ", ".join(f"{v:.1f}" for v in result.chain_lp)
    stationary = all(_stationary(invariant, c) for c in range(n_chains))
    if len(result.modes) > 1 and stationary:
        result.multimodal = True
        groups = "; ".join(f"chains {g}" for g in result.modes)
        result.problems.append(
            f"{MULTIMODAL}: chains are stationary but disagree beyond a label "
            f"permutation (label-invariant R-hat {inv_rhat:.3f} for {inv_at}); modes: {groups}; "
            f"per-chain mean lp {lp}"
        )
    else:
        result.problems.append(
            f"R-hat {inv_rhat:.3f} > {RHAT_MAX} for the label-invariant {inv_at}: chains have "
            f"not converged (per-chain mean lp {lp})"
        )


def check(
    idata: _arviz.Idata,
    *,
    max_treedepth: int | None = None,
    var_names: list[str] | None = None,
    warn: bool = True,
    dim: str = "group",
) -> Diagnostics:
    """Check a fit and record the result on it.

    Parameters
    ----------
    idata
        A fit with ``posterior`` and ``sample_stats`` groups.
    max_treedepth
        The tree-depth limit the sampler ran with (default: the fit's ``max_treedepth``
        attribute, else 10).
    var_names
        Variables to check (default: the variables a previous check on this fit covered, else
        every posterior variable that varies across draws).
    warn
        Emit a :class:`~pluralstan.errors.DiagnosticWarning` per failed check.
    dim
        The latent label dim, for latent-type fits (see the module docstring).
    """
    post = _arviz.group(idata, "posterior")
    if max_treedepth is None:
        max_treedepth = int(post.attrs.get("max_treedepth", 10))
    if var_names is None and post.attrs.get("diagnostics"):
        var_names = json.loads(post.attrs["diagnostics"]).get("var_names") or None
    names = var_names or [
        v for v in post.data_vars if float(post[v].std()) > 0 or post[v].size == 0
    ]
    sub = post[names] if names else post
    stats = _arviz.group(idata, "sample_stats")
    div = int(stats["diverging"].sum()) if "diverging" in stats else 0
    depth = int((stats["tree_depth"] >= max_treedepth).sum()) if "tree_depth" in stats else 0
    n_chains = post.sizes["chain"]
    rhat, rhat_at = _worst(az.rhat(sub), "max") if n_chains > 1 else (np.nan, "")
    ess_b, ess_b_at = _worst(az.ess(sub, method="bulk"), "min")
    ess_t, ess_t_at = _worst(az.ess(sub, method="tail"), "min")
    bfmi = float(np.min(_arviz.bfmi(idata))) if "energy" in stats else np.nan
    problems = []
    total = stats.sizes["chain"] * stats.sizes["draw"]
    if div:
        problems.append(f"{div} of {total} transitions diverged (raise adapt_delta or "
                        "reparameterise)")
    if depth:
        problems.append(f"{depth} of {total} transitions hit the maximum tree depth "
                        f"{max_treedepth}")
    if rhat > RHAT_MAX:
        problems.append(f"R-hat {rhat:.3f} > {RHAT_MAX} for {rhat_at} (chains disagree)")
    if ess_b < ESS_MIN:
        problems.append(f"bulk ESS {ess_b:.0f} < {ESS_MIN} for {ess_b_at}")
    if ess_t < ESS_MIN:
        problems.append(f"tail ESS {ess_t:.0f} < {ESS_MIN} for {ess_t_at}")
    if bfmi < EBFMI_MIN:
        problems.append(f"E-BFMI {bfmi:.2f} < {EBFMI_MIN} (poor energy exploration)")
    result = Diagnostics(div, depth, rhat, ess_b, ess_t, bfmi, problems,
                         var_names=[str(n) for n in names])
    if post.attrs.get("not_identified"):  # the model says what the data cannot identify
        result.notes.append(str(post.attrs["not_identified"]))
    if post.attrs.get(NOT_RELABELLED):
        result.notes.append(str(post.attrs[NOT_RELABELLED]))
    if is_latent(idata, dim):
        result.notes += switching_notes(idata, dim)
        labelled = [n for n in names if dim in post[n].dims]
        label_rhat = _max_rhat(post[labelled]) if labelled and n_chains > 1 else np.nan
        _latent_checks(idata, label_rhat, result, dim)
    record(idata, result)
    if warn:
        model = post.attrs.get("model", "fit")
        for problem in result.problems:
            warnings.warn(f"{model}: {problem}", DiagnosticWarning, stacklevel=2)
    return result


def record(idata: _arviz.Idata, result: Diagnostics, key: str = "diagnostics") -> None:
    """Store ``result`` as JSON in the posterior attributes."""
    idata.posterior.attrs[key] = result.to_json()


def recorded(idata: _arviz.Idata) -> dict[str, Any]:
    """The stored diagnostics record of a fit (empty when it was never checked)."""
    raw = idata.posterior.attrs.get("diagnostics")
    return json.loads(raw) if raw else {}


def failed(idata: _arviz.Idata) -> list[str]:
    """The recorded diagnostic problems of a fit (empty when it passed or was never checked)."""
    problems: list[str] = []
    for key in ("diagnostics", "label_switching"):
        raw = idata.posterior.attrs.get(key)
        if raw:
            problems += json.loads(raw).get("problems", [])
    return problems


def notes(idata: _arviz.Idata) -> list[str]:
    """The recorded diagnostic notes of a fit: what a reader should know that is no failure."""
    found: list[str] = []
    for key in ("diagnostics", "label_switching"):
        raw = idata.posterior.attrs.get(key)
        if raw:
            found += json.loads(raw).get("notes", [])
    return found


def flag(idata: _arviz.Idata) -> str:
    """A short marker for tables, captions and reports: "" when clean, else a warning sign."""
    problems = failed(idata)
    return "" if not problems else f"[diagnostics failed: {'; '.join(problems)}]"


# ---------------------------------------------------------------------- printed summary
def _modes_lines(post: xr.Dataset) -> list[str]:
    """The mode search and stacking reports stored on a fit, as lines."""
    lines = []
    if post.attrs.get("mode_search"):
        found = json.loads(post.attrs["mode_search"])
        lds = ", ".join(f"{m['log_density']:.1f} ({m['starts']} starts)" for m in found["modes"])
        scaled = ("; the chains took the best mode's Laplace sds as the scales of their "
                  "coordinates" if found["modes"] and "laplace_sd" in found["modes"][0] else "")
        lines.append(f"mode search: {len(found['modes'])} distinct mode(s) up to label "
                     f"permutation from {found['n_starts']} L-BFGS starts; log densities "
                     f"{lds}{scaled}")
    if post.attrs.get("modes"):
        report = json.loads(post.attrs["modes"])
        lines.append(f"modes ({len(report['modes'])}, stacked on leave-one-"
                     f"{report.get('unit') or 'observation'}-out predictive densities):")
        lines += [f"  mode {m['mode']}: chains {m['chains']}, weight {m['weight']:.3f}, mean lp "
                  f"{m['lp_mean']:.1f}, elpd_loo {m['elpd_loo']:.1f} (se {m['se']:.1f})"
                  for m in report["modes"]]
        for mode, rows in report.get("differences", {}).items():
            if rows:
                diffs = ", ".join(f"{r['variable']} {r['best']:.2f} vs {r['this']:.2f}"
                                  for r in rows)
                lines.append(f"  mode {mode} vs mode 0, largest differences: {diffs}")
    return lines


def _raw_lines(idata: _arviz.Idata) -> list[str]:
    """How to get back the draws as sampled."""
    lines = []
    if any(g.startswith("unstacked_") for g in _arviz.groups(idata)):
        lines.append("chains before stacking: pluralstan.modes.unstack(idata)")
    if "sample_stats" in _arviz.groups(idata) and PERMUTATION in idata.sample_stats:
        lines.append("draws as sampled (labels not relabelled): "
                     "pluralstan.relabel.unrelabel(idata)"
                     + (" of the unstacked fit" if lines else ""))
    return lines


def summary(idata: _arviz.Idata) -> str:
    """A fit's diagnostics for a reader: verdict, checks, notes, modes, and the raw draws.

    Reads only what the fit records (``posterior.attrs``: ``diagnostics``, ``relabelling``,
    ``mode_search``, ``modes``), so it works on a loaded fit too.
    """
    post = _arviz.group(idata, "posterior")
    record = recorded(idata)
    head = f"{post.attrs.get('model', 'fit')}: "
    if not record:
        return head + "not checked (run pluralstan.diagnostics.check)"
    problems = failed(idata)
    head += "diagnostics passed" if not problems else \
        f"diagnostics failed ({len(problems)} problem(s))"
    lines = [head, (
        f"  divergences {record['divergences']}, tree-depth hits {record['treedepth_hits']}, "
        f"max R-hat {record['max_rhat']:.3f}, min bulk ESS {record['min_ess_bulk']:.0f}, "
        f"min tail ESS {record['min_ess_tail']:.0f}, min E-BFMI {record['min_ebfmi']:.2f}")]
    if record.get("label_invariant"):
        worst = max((v["rhat"] for v in record["label_invariant"].values()
                     if np.isfinite(v["rhat"])), default=np.nan)
        lines.append(f"  label-invariant scalars ({', '.join(record['label_invariant'])}): "
                     f"max R-hat {worst:.3f}")
    if post.attrs.get("relabelling"):
        info = json.loads(post.attrs["relabelling"])
        lines.append(f"  relabelled by {info['method']} "
                     f"({info['fraction_permuted']:.0%} of draws permuted)")
    lines += [f"problem: {p}" for p in problems]
    lines += [f"note: {n}" for n in notes(idata)]
    lines += _modes_lines(post)
    lines += _raw_lines(idata)
    return "\n".join(lines)

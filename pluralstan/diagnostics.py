"""Sampler diagnostics that refuse to hide problems.

Every fit is checked for divergent transitions, maximum-tree-depth hits, R-hat above 1.01,
bulk / tail ESS below 400 and E-BFMI below 0.3 (the thresholds of Vehtari et al. 2021 and the
Stan documentation). Failures are attached to the InferenceData (``posterior.attrs
["diagnostics"]``, JSON), raised as :class:`~pluralstan.errors.DiagnosticWarning` naming the
parameter, and read back by every table and report that uses the fit (:func:`failed`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

import arviz as az
import numpy as np

from .errors import DiagnosticWarning

RHAT_MAX = 1.01
ESS_MIN = 400
EBFMI_MIN = 0.3


@dataclass
class Diagnostics:
    """Outcome of :func:`check`; ``problems`` is empty when the fit passed."""

    divergences: int
    treedepth_hits: int
    max_rhat: float
    min_ess_bulk: float
    min_ess_tail: float
    min_ebfmi: float
    problems: list[str] = field(default_factory=list)

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


def parameter_names(idata: az.InferenceData) -> list[str]:
    """Posterior variables to diagnose: those that vary and are not per-observation quantities."""
    post = idata.posterior
    return [
        name for name, da in post.data_vars.items()
        if not set(da.dims) & set(PER_OBSERVATION_DIMS) and da.size and float(da.std()) > 0
    ]


def check(
    idata: az.InferenceData,
    *,
    max_treedepth: int = 10,
    var_names: list[str] | None = None,
    warn: bool = True,
) -> Diagnostics:
    """Check a fit and record the result on it.

    Parameters
    ----------
    idata
        A fit with ``posterior`` and ``sample_stats`` groups.
    max_treedepth
        The tree-depth limit the sampler ran with.
    var_names
        Variables to check (default: every posterior variable that varies across draws).
    warn
        Emit a :class:`~pluralstan.errors.DiagnosticWarning` per failed check.
    """
    post = idata.posterior
    names = var_names or [
        v for v in post.data_vars if float(post[v].std()) > 0 or post[v].size == 0
    ]
    sub = post[names] if names else post
    stats = idata.sample_stats
    div = int(stats["diverging"].sum()) if "diverging" in stats else 0
    depth = int((stats["tree_depth"] >= max_treedepth).sum()) if "tree_depth" in stats else 0
    n_chains = post.sizes["chain"]
    rhat, rhat_at = _worst(az.rhat(sub), "max") if n_chains > 1 else (np.nan, "")
    ess_b, ess_b_at = _worst(az.ess(sub, method="bulk"), "min")
    ess_t, ess_t_at = _worst(az.ess(sub, method="tail"), "min")
    bfmi = float(np.min(az.bfmi(idata))) if "energy" in stats else np.nan
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
    result = Diagnostics(div, depth, rhat, ess_b, ess_t, bfmi, problems)
    record(idata, result)
    if warn:
        model = post.attrs.get("model", "fit")
        for problem in problems:
            warnings.warn(f"{model}: {problem}", DiagnosticWarning, stacklevel=2)
    return result


def record(idata: az.InferenceData, result: Diagnostics, key: str = "diagnostics") -> None:
    """Store ``result`` as JSON in the posterior attributes."""
    idata.posterior.attrs[key] = result.to_json()


def failed(idata: az.InferenceData) -> list[str]:
    """The recorded diagnostic problems of a fit (empty when it passed or was never checked)."""
    problems: list[str] = []
    for key in ("diagnostics", "label_switching"):
        raw = idata.posterior.attrs.get(key)
        if raw:
            problems += json.loads(raw).get("problems", [])
    return problems


def flag(idata: az.InferenceData) -> str:
    """A short marker for tables, captions and reports: "" when clean, else a warning sign."""
    problems = failed(idata)
    return "" if not problems else f"[diagnostics failed: {'; '.join(problems)}]"

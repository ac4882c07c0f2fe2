"""The steps every fit goes through after encoding: sampling, InferenceData, relabelling,
diagnostics.

A fit is encode -> :func:`run` (sample -> :func:`assemble` -> :func:`finalize`).
:func:`pluralstan.fit.fit` encodes a registered model and calls :func:`run`; any other caller
that samples a program with an :class:`~pluralstan.models.base.Encoded` (new-user fits,
simulation-based calibration, workflows) calls :func:`run` too, or :func:`assemble` and
:func:`finalize` on draws it already has, so a latent-type fit is relabelled and judged the same
way wherever it was made.

:func:`finalize`, for a fit whose components are latent (``Encoded.label_dim`` set), relabels
the draws (:func:`pluralstan.relabel.relabel`, Stephens' algorithm when the posterior holds
allocation probabilities, else pivotal reordering; the permutations are kept, see
:func:`pluralstan.relabel.unrelabel`), then checks the fit
(:func:`pluralstan.diagnostics.check`: relabelled parameters and label-invariant scalars; label
switching that relabelling resolved is a note) and warns about every problem.

**Genuine multimodality.** Chains that are each stationary but sit in modes no label permutation
maps onto each other are handled in two optional steps (:mod:`pluralstan.modes`):

* before sampling, ``modes="search"`` runs the multi-start L-BFGS mode search
  (:func:`pluralstan.modes.search`) on the program's log density, and the chains start from the
  best ``max_modes`` of the distinct modes it finds, in turn. Its starts are drawn as Stan draws
  its inits (uniform(-2, 2), unconstrained), so it has already asked whether chains from
  dispersed inits reach different places; when they all reach one mode, the chains start in it
  too (R-hat still compares the chains after that). With one mode to start in, a program that
  takes scales of its coordinates takes the mode's Laplace sds (:func:`search_inits`). The
  mode table is stored in ``posterior.attrs["mode_search"]``. It is opt-in: on the three-type
  annotator design of ``tests/test_latent_default.py`` (300 annotators x 10 judgements,
  K = 3) 20 starts took 17 s against 110 s for the default 4 x 2000 iterations, and it found
  the one mode that relabelling already handles; it pays off where a K is too small for the
  kinds of people in the data.
* after sampling, when :func:`pluralstan.diagnostics.check` records genuine multimodality,
  :func:`finalize` stacks the chains' modes (``stack=True``, the default;
  :func:`pluralstan.modes.stack_chains`, weights from leave-one-out predictive densities, per
  annotator for annotator-level models). The posterior is then the stacked one (one chain of
  draws resampled from the modes in proportion to their weights; every summary uses it), the
  chains as sampled stay in groups ``unstacked_<group>`` (:func:`pluralstan.modes.unstack`
  returns them as a fit), the :class:`~pluralstan.modes.ModeReport` is stored in
  ``posterior.attrs["modes"]`` and the diagnostics record says so in a note; the problems it
  keeps are those of the modes themselves (each mode's chains checked on their own) and of the
  sampler. ``stack=False`` keeps the chains and the "genuine multimodality" problem.

:func:`pluralstan.diagnostics.summary` prints all of it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from . import _arviz, diagnostics
from .data import Comparisons, data_hash
from .engine import Draws, SamplerConfig, StanProgram, get_engine
from .errors import DiagnosticWarning, PluralstanError
from .models.base import Encoded
from .modes import ModeSearch, keep_unstacked, search, stack_chains
from .relabel import Method, asymmetric_prior
from .relabel import relabel as relabel_draws


def complete(draws: Draws, enc: Encoded, data: dict[str, Any]) -> Draws:
    """``draws`` with the outputs the model computes in Python (:meth:`Encoded.complete`;
    ``data``: the Stan data they were sampled with)."""
    if enc.derive is None:
        return draws
    return dataclasses.replace(draws, variables=enc.complete(draws.variables, data))


def _split(draws: Draws, enc: Encoded) -> tuple[dict, dict, dict]:
    """Sort Stan outputs into posterior, predictive and internal variables.

    Zero-size outputs are outputs a fit was asked to skip (``replicate=False``,
    ``membership=False``, no position effect): they are left out.
    """
    posterior, predictive, internal = {}, {}, {}
    for name, arr in draws.variables.items():
        if name in enc.drop:
            internal[name] = arr
        elif not arr.size:
            continue
        elif name in enc.predictive:
            predictive[enc.predictive[name]] = arr
        elif name in enc.optional_scalars:
            posterior[name] = arr[..., 0]
        elif name == "lprior":
            internal[name] = arr
        else:
            posterior[name] = arr
    return posterior, predictive, internal


def _dims(enc: Encoded) -> dict[str, list[str]]:
    dims = dict(enc.dims)
    for stan_name, new_name in enc.predictive.items():
        if stan_name in dims:
            dims[new_name] = dims.pop(stan_name)
    return dims


def provenance(
    model: str, program: StanProgram, draws: Draws, comps: Comparisons, seed: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Attributes that let a result be traced back to its inputs."""
    from . import __version__

    attrs = {
        "pluralstan_version": __version__,
        "model": model,
        "engine": draws.engine,
        "engine_version": draws.engine_version,
        "stan_program": program.name,
        "stan_program_sha256": program.sha,
        "seed": int(seed),
        "data_sha256": data_hash(comps),
        "build_seconds": round(draws.build_seconds, 3),
        "sample_seconds": round(draws.sample_seconds, 3),
        "compiled": int(draws.compiled),
    }
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, int | float | str) else json.dumps(value)
    return attrs


def fit_attrs(enc: Encoded, K: int | None) -> dict[str, Any]:
    """Provenance of a registered model's fit: ``K`` (0 without), its prior hyperparameters
    (the Stan data starting with ``prior_``) and the encoder's ``extra_attrs``."""
    priors = {key: value.tolist() if hasattr(value, "tolist") else value
              for key, value in enc.data.items()
              if key.startswith("prior_") and key != "prior_only"}
    return {"K": K if K is not None else 0, "priors": priors, **enc.extra_attrs}


def assemble(
    draws: Draws,
    enc: Encoded,
    attrs: dict[str, Any],
    prior_draws: Draws | None = None,
) -> _arviz.Idata:
    """The fit's container (InferenceData on ArviZ 0.23, DataTree on ArviZ 1.x) from the draws
    (an engine's draws with the model's Python-computed outputs added: :func:`complete`).

    Groups: ``posterior``, ``posterior_predictive``, ``log_likelihood``, ``log_prior``,
    ``sample_stats``, ``observed_data``, ``constant_data`` and, when ``prior_draws`` is given,
    ``prior`` and ``prior_predictive``; dims and coords from ``enc``, ``attrs`` on every group.
    A model with latent components (``enc.label_dim``) gets ``group_labels = "latent"`` in its
    attributes unless ``attrs`` says otherwise; :func:`finalize` and
    :mod:`pluralstan.relabel` read it.
    """
    if enc.label_dim:
        attrs = {"group_labels": "latent", **attrs}
    posterior, predictive, internal = _split(draws, enc)
    dims = _dims(enc)
    coords = enc.coords

    def sampled(values: dict[str, np.ndarray], group_dims: dict[str, list[str]]) -> xr.Dataset:
        return _arviz.dataset_from_dict(values, coords=coords, dims=group_dims, attrs=attrs)

    def fixed(values: dict[str, Any]) -> xr.Dataset:
        arrays, csr_dims = _dense_or_csr(values)
        return _arviz.dataset_from_dict(arrays, coords=coords, dims={**dims, **csr_dims},
                                        attrs=attrs, sampled=False)

    groups: dict[str, xr.Dataset] = {
        "posterior": sampled(posterior, dims),
        "posterior_predictive": sampled(predictive, dims),
        "log_likelihood": sampled({name: arr for name, arr in enc.log_lik(draws.variables).items()
                                   if arr.size}, enc.log_lik_dims),
        "log_prior": sampled({"lprior": internal["lprior"]}, {}),
        "sample_stats": sampled(draws.sample_stats, {}),
        "observed_data": fixed(enc.observed),
        "constant_data": fixed(enc.constant),
    }
    if prior_draws is not None:
        prior, prior_pred, _ = _split(prior_draws, enc)
        groups["prior"] = sampled(prior, dims)
        groups["prior_predictive"] = sampled(prior_pred, dims)
    for dataset in groups.values():
        dataset.attrs.update(attrs)
    return _arviz.make_idata(groups)


def _dense_or_csr(values: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Arrays for a data group: a SciPy sparse matrix ``X`` (a large item design) is stored as
    its compressed sparse rows, ``X_csr_data``, ``X_csr_indices``, ``X_csr_indptr`` and
    ``X_csr_shape`` (``scipy.sparse.csr_matrix((data, indices, indptr), shape)`` rebuilds it),
    so that it is never densified and the fit saves to NetCDF; other values are kept."""
    from scipy.sparse import issparse

    arrays: dict[str, np.ndarray] = {}
    csr_dims: dict[str, list[str]] = {}
    for name, value in values.items():
        if not issparse(value):
            arrays[name] = value
            continue
        csr = value.tocsr()
        arrays |= {f"{name}_csr_data": csr.data, f"{name}_csr_indices": csr.indices,
                   f"{name}_csr_indptr": csr.indptr, f"{name}_csr_shape": np.array(csr.shape)}
        csr_dims |= {f"{name}_csr_data": [f"{name}_nonzero"],
                     f"{name}_csr_indices": [f"{name}_nonzero"],
                     f"{name}_csr_indptr": [f"{name}_row_start"],
                     f"{name}_csr_shape": [f"{name}_axis"]}
    return arrays, csr_dims


ModeOption = Literal["none", "search"]


def finalize(
    idata: _arviz.Idata,
    *,
    label_dim: str | None = None,
    relabel: bool | Method = True,
    check: bool = True,
    max_treedepth: int | None = None,
    var_names: list[str] | None = None,
    warn: bool = True,
    stack: bool = True,
) -> _arviz.Idata:
    """Relabel a latent-type fit, check it, stack genuine modes, record the diagnostics and
    warn about problems.

    Parameters
    ----------
    idata
        The fit, as :func:`assemble` builds it.
    label_dim
        The dim of latent components (``Encoded.label_dim``); ``None`` for models without.
    relabel
        ``True`` relabels latent components with ``method="auto"``, except in a fit whose
        components are ordered by a constraint (attribute ``identify="ordered"``: the
        constraint labels them) or whose prior is not exchangeable across components
        (:func:`pluralstan.relabel.asymmetric_prior`; the fit's diagnostics record a note
        saying so); a method name (``"stephens"``, ``"pivot"``) chooses the method
        and always relabels; ``False`` keeps the draws as sampled.
    check
        Run :func:`pluralstan.diagnostics.check` (recorded in
        ``idata.posterior.attrs["diagnostics"]``).
    max_treedepth
        The sampler's tree-depth limit (default: the fit's ``max_treedepth`` attribute, else 10).
    var_names
        Variables whose R-hat and ESS are checked (default:
        :func:`pluralstan.diagnostics.parameter_names`).
    warn
        Emit a :class:`~pluralstan.errors.DiagnosticWarning` per recorded problem and one saying
        that the modes were stacked (:func:`messages`).
    stack
        When the check records genuine multimodality, stack the modes (see the module
        docstring); ``False`` keeps the chains as they are.

    Returns
    -------
    arviz.InferenceData
        The relabelled (and, for genuine multimodality, stacked) fit: a new object when changed,
        else ``idata`` itself.
    """
    ordered = idata.posterior.attrs.get("identify") == "ordered"
    asymmetric = asymmetric_prior(idata) if relabel is True and label_dim else None
    if asymmetric:
        idata.posterior.attrs[diagnostics.NOT_RELABELLED] = (
            f"not relabelled: the prior is not exchangeable across types ({asymmetric}), so it "
            "labels them and the draws are kept as sampled (relabel='stephens' relabels anyway)")
    if relabel and label_dim and diagnostics.is_latent(idata, label_dim) and not (
            (ordered or asymmetric) and relabel is True):
        method = "auto" if relabel is True else relabel
        idata, _ = relabel_draws(idata, method=method, dim=label_dim)
    if check:
        names = var_names or diagnostics.parameter_names(idata)
        result = diagnostics.check(idata, max_treedepth=max_treedepth, var_names=names,
                                   warn=False, dim=label_dim or "group")
        # stacking weighs the modes by their leave-one-out predictive density: without the
        # pointwise log likelihood (log_lik=False) the multimodality stays a recorded problem
        if stack and result.multimodal and label_dim and "log_likelihood" in _arviz.groups(idata):
            idata = stack_modes(idata, result, label_dim=label_dim, max_treedepth=max_treedepth)
        if warn:
            model = idata.posterior.attrs.get("model", "fit")
            for message in messages(idata):
                warnings.warn(f"{model}: {message}", DiagnosticWarning, stacklevel=2)
    return idata


def stack_modes(
    idata: _arviz.Idata,
    result: diagnostics.Diagnostics,
    *,
    label_dim: str = "group",
    max_treedepth: int | None = None,
) -> _arviz.Idata:
    """Stack the modes of a fit whose check recorded genuine multimodality.

    The chains are grouped as the check grouped them (``result.modes``) and combined by
    :func:`pluralstan.modes.stack_chains`; the chains as sampled are kept in
    ``unstacked_<group>`` groups (:func:`pluralstan.modes.unstack`). The diagnostics record of
    the stacked fit keeps the sampler's counts and checks every mode's chains on their own
    (their problems prefixed ``mode m:``); the multimodality becomes a note naming the modes and
    their weights. Returns the stacked fit.
    """
    stacked, report = stack_chains(
        idata, groups=result.modes, dim=label_dim,
        seed=int(idata.posterior.attrs.get("seed", 1)))
    if len(report.modes) < 2:
        return idata
    kept = keep_unstacked(stacked, idata)
    per_mode = [diagnostics.check(idata.isel(chain=g), max_treedepth=max_treedepth,
                                  var_names=result.var_names, warn=False, dim=label_dim)
                for g in result.modes]
    diagnostics.record(idata, result)  # the subsets share the chains' attributes
    # the whole fit's R-hat and ESS only restate the multimodality: the modes are judged alone
    problems = [p for p in result.problems if _sampler_problem(p)]
    problems += [f"mode {m}: {p}" for m, d in enumerate(per_mode) for p in d.problems
                 if not _sampler_problem(p)]
    invariant = {name: {"rhat": _finite_max(d.label_invariant[name]["rhat"] for d in per_mode),
                        "ess_bulk": min(d.label_invariant[name]["ess_bulk"] for d in per_mode)}
                 for name in result.label_invariant}
    weights = ", ".join(f"mode {m['mode']} (chains {m['chains']}): weight {m['weight']:.2f}, "
                        f"mean lp {m['lp_mean']:.1f}" for m in report.modes)
    note = (f"{diagnostics.STACKED}: the chains fell into {len(report.modes)} modes that no "
            f"label permutation maps onto each other; they were combined by stacking of chains "
            f"(Yao, Vehtari & Gelman 2022) on leave-one-{report.unit or 'observation'}-out "
            f"predictive densities: {weights}. Summaries use the stacked draws; "
            "pluralstan.modes.unstack(idata) returns the chains as sampled")
    record = dataclasses.replace(
        result, problems=problems, notes=[*result.notes, note], label_invariant=invariant,
        max_rhat=_finite_max(d.max_rhat for d in per_mode),
        min_ess_bulk=min(d.min_ess_bulk for d in per_mode),
        min_ess_tail=min(d.min_ess_tail for d in per_mode))
    diagnostics.record(kept, record)
    return kept


def _finite_max(values: Iterable[float]) -> float:
    """Largest finite value (NaN when none: e.g. the R-hat of single-chain modes)."""
    return max((v for v in values if np.isfinite(v)), default=float("nan"))


def _sampler_problem(problem: str) -> bool:
    """Whether a problem is a sampler count the whole fit's record already holds."""
    return any(word in problem for word in ("diverged", "tree depth", "E-BFMI"))


def messages(idata: _arviz.Idata) -> list[str]:
    """What a fit warns about: its recorded problems, and a note that its modes were stacked."""
    stacked = [n for n in diagnostics.notes(idata) if n.startswith(diagnostics.STACKED)]
    return [*diagnostics.failed(idata), *stacked]


def search_inits(
    program: StanProgram,
    enc: Encoded,
    config: SamplerConfig,
    *,
    backend: str = "auto",
    n_starts: int = 20,
    max_modes: int = 2,
    mode_warmup: int | None = None,
) -> tuple[SamplerConfig, Encoded, ModeSearch]:
    """Run the multi-start mode search and start the chains from the best distinct modes.

    Returns ``config`` with per-chain inits from the best ``max_modes`` modes (one mode found:
    every chain starts in it; its starts were Stan's dispersed inits, and they all went there),
    or unchanged when every start failed; ``enc``, with scales from the mode (below); and the
    search itself. Chains started at a mode take at most ``mode_warmup`` warm-up iterations
    (``None``: ``config.warmup``): they need not travel from a random point to the
    posterior's bulk, only adapt.

    When every chain starts in the best mode (``max_modes=1``) and the
    program takes scales of its coordinates (``enc.scale_names``), the scales are multiplied
    by the mode's Laplace sds (:func:`pluralstan.modes.laplace_sd`), so that Stan's first
    metric, the unit one, is already near the posterior's: the same posterior, fewer
    gradients in the warm-up (``benchmarks/latest_results.md``).
    """
    if config.inits is not None:
        raise PluralstanError("give either inits or modes='search', not both")
    found = search(program, enc.data, dims=enc.dims, label_dim=enc.label_dim,
                   n_starts=n_starts, seed=config.seed, backend=backend,
                   laplace=bool(enc.scale_names) and max_modes == 1)
    if found.modes:
        warmup = config.warmup if mode_warmup is None else min(config.warmup, mode_warmup)
        config = dataclasses.replace(config, inits=found.inits(config.chains, max_modes),
                                     warmup=warmup)
        if found.modes[0].sd is not None:
            enc = dataclasses.replace(enc, data=laplace_scaled(enc, found.modes[0].sd))
    return config, enc, found


def laplace_scaled(enc: Encoded, sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """``enc.data`` with the scale of each coordinate in ``enc.scale_names`` multiplied by its
    Laplace sd ``sd`` (on the sampler's space, where it was sampled at the old scale)."""
    data = dict(enc.data)
    for param, name in enc.scale_names.items():
        if param in sd:
            old = np.asarray(data[name], dtype=float)
            data[name] = old * np.asarray(sd[param]).reshape(old.shape)
    return data


def run(
    program: StanProgram,
    enc: Encoded,
    config: SamplerConfig,
    comps: Comparisons,
    *,
    model: str,
    backend: str = "auto",
    extra: dict[str, Any] | None = None,
    sample_prior: bool = False,
    relabel: bool | Method = True,
    check: bool = True,
    var_names: list[str] | None = None,
    warn: bool = True,
    modes: ModeOption = "none",
    n_starts: int = 20,
    max_modes: int = 2,
    mode_warmup: int | None = None,
    stack: bool = True,
) -> _arviz.Idata:
    """Sample an encoded program and return the finished fit.

    Parameters
    ----------
    program, enc, config
        The Stan program, its encoded data and layout, and the NUTS settings.
    comps
        The judgements ``enc`` was encoded from (hashed into the provenance).
    model
        Name recorded as the fit's ``model`` attribute.
    backend
        Engine name (:func:`pluralstan.engine.get_engine`).
    extra
        Further provenance attributes (e.g. ``K``, ``priors``).
    sample_prior
        Also run the program with ``prior_only = 1`` (``prior`` / ``prior_predictive`` groups).
    relabel, check, var_names, warn, stack
        As for :func:`finalize`.
    modes
        ``"search"``: before sampling, find the distinct modes (:func:`search_inits`, with
        ``n_starts`` starts) and start the chains from the best ``max_modes`` of them; the mode
        table goes into ``posterior.attrs["mode_search"]``. ``"none"``: Stan's inits.
    n_starts, max_modes, mode_warmup
        Mode search settings (:func:`search_inits`).
    """
    if modes not in ("none", "search"):
        raise PluralstanError(f"modes must be 'none' or 'search', got {modes!r}")
    found = None
    prior_data = {**enc.data, "prior_only": 1}  # the prior's own scales, not the mode's
    if modes == "search":
        config, enc, found = search_inits(program, enc, config, backend=backend,
                                          n_starts=n_starts, max_modes=max_modes,
                                          mode_warmup=mode_warmup)
    engine = get_engine(backend)
    draws = complete(engine.sample(program, enc.data, config), enc, enc.data)
    prior_draws = (complete(engine.sample(program, prior_data, config), enc, prior_data)
                   if sample_prior else None)
    attrs = provenance(model, program, draws, comps, config.seed,
                       {"max_treedepth": config.max_treedepth, "warmup": config.warmup,
                        **(extra or {})})
    if found is not None:
        attrs["mode_search"] = found.to_json()
    idata = assemble(draws, enc, attrs, prior_draws)
    return finalize(idata, label_dim=enc.label_dim, relabel=relabel, check=check,
                    max_treedepth=config.max_treedepth, var_names=var_names, warn=warn,
                    stack=stack)

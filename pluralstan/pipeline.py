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
"""

from __future__ import annotations

import warnings
from typing import Any

import arviz as az

from . import diagnostics
from .data import Comparisons
from .engine import Draws, SamplerConfig, StanProgram, get_engine
from .errors import DiagnosticWarning
from .inference import provenance, to_inference_data
from .models.base import Encoded
from .relabel import Method
from .relabel import relabel as relabel_draws


def assemble(
    draws: Draws,
    enc: Encoded,
    attrs: dict[str, Any],
    prior_draws: Draws | None = None,
) -> az.InferenceData:
    """The InferenceData of a fit (:func:`pluralstan.inference.to_inference_data`).

    A model with latent components (``enc.label_dim``) gets ``group_labels = "latent"`` in its
    attributes unless ``attrs`` says otherwise; :func:`finalize` and
    :mod:`pluralstan.relabel` read it.
    """
    if enc.label_dim:
        attrs = {"group_labels": "latent", **attrs}
    return to_inference_data(draws, enc, attrs, prior_draws)


def finalize(
    idata: az.InferenceData,
    *,
    label_dim: str | None = None,
    relabel: bool | Method = True,
    check: bool = True,
    max_treedepth: int | None = None,
    var_names: list[str] | None = None,
    warn: bool = True,
) -> az.InferenceData:
    """Relabel a latent-type fit, check it, record the diagnostics and warn about problems.

    Parameters
    ----------
    idata
        The fit, as :func:`assemble` builds it.
    label_dim
        The dim of latent components (``Encoded.label_dim``); ``None`` for models without.
    relabel
        ``True`` relabels latent components with ``method="auto"``, except in a fit whose
        components are ordered by a constraint (attribute ``identify="ordered"``: the
        constraint labels them); a method name (``"stephens"``, ``"pivot"``) chooses the method
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
        Emit a :class:`~pluralstan.errors.DiagnosticWarning` per recorded problem.

    Returns
    -------
    arviz.InferenceData
        The relabelled fit (a new object when relabelled, else ``idata`` itself).
    """
    ordered = idata.posterior.attrs.get("identify") == "ordered"
    if relabel and label_dim and diagnostics.is_latent(idata, label_dim) and not (
            ordered and relabel is True):
        method = "auto" if relabel is True else relabel
        idata, _ = relabel_draws(idata, method=method, dim=label_dim)
    if check:
        names = var_names or diagnostics.parameter_names(idata)
        result = diagnostics.check(idata, max_treedepth=max_treedepth, var_names=names,
                                   warn=False, dim=label_dim or "group")
        if warn:
            model = idata.posterior.attrs.get("model", "fit")
            for problem in result.problems:
                warnings.warn(f"{model}: {problem}", DiagnosticWarning, stacklevel=2)
    return idata


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
) -> az.InferenceData:
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
    relabel, check, var_names, warn
        As for :func:`finalize`.
    """
    engine = get_engine(backend)
    draws = engine.sample(program, enc.data, config)
    prior_draws = (engine.sample(program, {**enc.data, "prior_only": 1}, config)
                   if sample_prior else None)
    attrs = provenance(model, program, draws, comps, config.seed,
                       {"max_treedepth": config.max_treedepth, **(extra or {})})
    idata = assemble(draws, enc, attrs, prior_draws)
    return finalize(idata, label_dim=enc.label_dim, relabel=relabel, check=check,
                    max_treedepth=config.max_treedepth, var_names=var_names, warn=warn)

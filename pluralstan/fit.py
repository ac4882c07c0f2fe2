"""``pluralstan.fit``: encode, sample with the chosen engine, then the shared post-sampling steps
(:mod:`pluralstan.pipeline`: InferenceData, relabelling of latent types, diagnostics)."""

from __future__ import annotations

import difflib
import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import _arviz
from .data import Comparisons, as_comparisons
from .engine import SamplerConfig
from .errors import DiagnosticWarning, PluralstanError
from .files import atomic_path
from .models import get_model
from .pipeline import ModeOption, fit_attrs, messages, run
from .relabel import Method


def fit(
    model: str,
    comps: Comparisons | pd.DataFrame,
    *,
    K: int | None = None,
    priors: dict[str, Any] | None = None,
    chains: int = 4,
    draws: int = 1000,
    warmup: int = 1000,
    seed: int = 1,
    adapt_delta: float = 0.8,
    max_treedepth: int = 10,
    stepsize: float | None = None,
    backend: str = "auto",
    sample_prior: bool = False,
    check: bool = True,
    relabel: bool | Method = True,
    inits: list[dict[str, Any]] | None = None,
    modes: ModeOption = "none",
    n_starts: int = 20,
    max_modes: int = 2,
    mode_warmup: int | None = None,
    stack: bool = True,
    **options: Any,
) -> _arviz.Idata:
    """Fit a registered model and return an :class:`arviz.InferenceData`.

    Parameters
    ----------
    model
        Registry name (``pluralstan models`` lists them), e.g. ``"aggregate"``.
    comps
        The judgements (:class:`~pluralstan.data.Comparisons` or a long DataFrame).
    K
        Number of mixture components, for the models that have them.
    priors
        Prior hyperparameters overriding the model's defaults (passed to Stan as data, so no
        recompile).
    chains, draws, warmup, seed, adapt_delta, max_treedepth
        NUTS settings; the same seed, data and engine give identical draws.
    stepsize
        The step size NUTS starts from (default: Stan's). With fewer than 20 warm-up
        iterations Stan adapts the step size alone and keeps its metric:
        :func:`pluralstan.models.annotator.warm_start` uses both to start a fit where an
        earlier one ended.
    backend
        ``"auto"``, ``"pystan"`` or ``"cmdstanpy"`` (see :mod:`pluralstan.engine`).
    sample_prior
        Also run the program with the likelihood switched off and add ``prior`` and
        ``prior_predictive`` groups.
    check
        Run :func:`pluralstan.diagnostics.check`, record the result in
        ``posterior.attrs["diagnostics"]`` and warn about failures. Latent-type fits are judged
        on their relabelled parameters and on label-invariant scalars (log density, total log
        likelihood, sorted mixing weights); label switching that relabelling resolved is
        recorded as a note, chains stuck in different modes as "genuine multimodality".
    relabel
        Models with latent components (unlabeled mixture, annotator types, covariate mixing,
        PAL): relabel the draws (:func:`pluralstan.relabel.relabel`; ``True`` picks Stephens'
        algorithm when the posterior holds allocation probabilities, else pivotal reordering;
        or name the method). The draws as sampled stay available through
        :func:`pluralstan.relabel.unrelabel` (the permutations are stored in
        ``sample_stats["label_permutation"]``). ``False`` keeps the draws as sampled, and so
        does ``True`` for ``identify="ordered"`` fits, whose constraint labels the components.
    inits
        Initial values per chain (one dict of constrained parameter values per chain, e.g.
        :meth:`pluralstan.modes.ModeSearch.inits`); default: Stan's random inits. A program
        that samples theta in the design's whitened basis (``whiten``) takes theta's
        coordinates there (:func:`pluralstan.models.base.theta_coordinates`).
    modes, n_starts, max_modes, mode_warmup
        ``modes="search"``: before sampling, look for the distinct modes of the posterior by
        L-BFGS from ``n_starts`` random starts (:func:`pluralstan.modes.search`; PyStan engine)
        and start the chains from the best ``max_modes`` of them in turn (one mode: every
        chain starts in it); the mode table is stored in ``posterior.attrs["mode_search"]``.
        Opt-in, because it costs a fraction of a fit and most latent-type posteriors have one
        mode up to labels (see :mod:`pluralstan.pipeline`). Chains started at modes take at
        most ``mode_warmup`` warm-up iterations (default ``warmup``);
        ``posterior.attrs["warmup"]`` records the number used. With ``max_modes=1`` the
        annotator and covariate programs also take the mode's Laplace sds as the scales of
        their coordinates, so that the warm-up starts from a metric near the posterior's
        (:func:`pluralstan.pipeline.search_inits`).
    stack
        When the chains, relabelled, are stationary but sit in different modes (genuine
        multimodality), combine the modes by stacking of chains
        (:func:`pluralstan.modes.stack_chains`): the posterior becomes the stacked draws, the
        report goes into ``posterior.attrs["modes"]``, and
        :func:`pluralstan.modes.unstack` returns the chains. ``False`` keeps the chains and
        records the multimodality as a problem, as does a fit without a pointwise log likelihood
        (``log_lik=False``), whose modes cannot be weighed.
    **options
        Model-specific options (e.g. ``ties=``, ``order=``, ``compress=`` for the aggregate model).

    Returns
    -------
    arviz.InferenceData
        Groups ``posterior``, ``posterior_predictive``, ``log_likelihood``, ``log_prior``,
        ``sample_stats``, ``observed_data``, ``constant_data`` (and ``prior`` /
        ``prior_predictive``), with named dims; provenance in every group's attributes.
        :func:`pluralstan.diagnostics.summary` prints its diagnostics, notes and modes.
    """
    spec = get_model(model)
    comps = as_comparisons(comps)
    if spec.needs_K and K is None:
        raise PluralstanError(f"model {spec.name!r} needs the number of components K")
    config = SamplerConfig(chains, draws, warmup, seed, adapt_delta, max_treedepth,
                           inits=inits, stepsize=stepsize)
    config.validate()
    if mode_warmup is not None and (isinstance(mode_warmup, bool)
                                    or not isinstance(mode_warmup, int | np.integer)
                                    or mode_warmup < 1):
        raise PluralstanError(f"mode_warmup must be a whole number >= 1, got {mode_warmup!r}")
    _check_options(spec.name, spec.encode, options)
    enc = spec.encode(comps, K=K, priors=priors, **options)  # validates before any Stan code
    extra = fit_attrs(enc, K)
    idata = run(spec.program, enc, config, comps, model=spec.name, backend=backend,
                extra=extra, sample_prior=sample_prior, relabel=relabel, check=check,
                warn=False, modes=modes, n_starts=n_starts, max_modes=max_modes,
                mode_warmup=mode_warmup, stack=stack)
    for message in messages(idata):  # warned here: names the caller's line
        warnings.warn(f"{spec.name}: {message}", DiagnosticWarning, stacklevel=2)
    return idata


def _check_options(model: str, encode: Any, options: dict[str, Any]) -> None:
    """Refuse keyword options the model's encoder does not take, naming the accepted ones."""
    params = inspect.signature(encode).parameters
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY]
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PluralstanError(
                f"unknown option {name!r} for model {model!r}{hint} accepted options: {accepted}"
            )


def save(idata: _arviz.Idata, path: str | Path) -> Path:
    """Write ``idata`` to NetCDF whole or not at all (:func:`pluralstan.files.atomic_path`:
    a temporary file, given the permissions a new file gets under the umask, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        _arviz.to_netcdf(idata, tmp)
    return path


def load(path: str | Path) -> _arviz.Idata:
    """Read a fit written by :func:`save` into the installed ArviZ's container, with a clear
    error for other files."""
    path = Path(path)
    if not path.is_file():
        raise PluralstanError(f"file {str(path)!r} does not exist")
    try:
        idata = _arviz.from_netcdf(path)
    except Exception as err:  # h5py / xarray raise many types for a non-NetCDF file
        raise PluralstanError(
            f"{str(path)!r} is not an InferenceData NetCDF file ({type(err).__name__}: {err})"
        ) from err
    if "posterior" not in _arviz.groups(idata):
        raise PluralstanError(
            f"{str(path)!r} is a NetCDF file but holds no 'posterior' group; groups present: "
            f"{list(_arviz.groups(idata))}"
        )
    return idata

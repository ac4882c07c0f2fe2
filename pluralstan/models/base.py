"""The model registry: one entry per Stan program.

A :class:`ModelSpec` names a program in ``stan/`` and an ``encode`` function that turns a
:class:`~pluralstan.data.Comparisons` into an :class:`Encoded` bundle: the Stan data, the dims and
coords of every output, the observed data, and how to build the log-likelihood group. The
container builder (:func:`pluralstan.pipeline.assemble`) is generic over these bundles, so each
model states its layout once, here, and both engines produce the same InferenceData.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Comparisons
from ..engine import StanProgram
from ..errors import PluralstanError

LogLikFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
DeriveFn = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], dict[str, np.ndarray]]


@dataclass
class Encoded:
    """Everything a fit needs besides the draws.

    Attributes
    ----------
    data
        The Stan data dictionary (priors included, ``prior_only`` = 0).
    coords
        Coordinate values for every named dim.
    dims
        Dims (beyond chain and draw) of Stan outputs, keyed by Stan variable name.
    observed
        The ``observed_data`` group; keys match the posterior-predictive names.
    constant
        The ``constant_data`` group (design, counts, indices).
    predictive
        Stan variable -> name in ``posterior_predictive`` (same as its observed counterpart).
    log_lik
        Function from the Stan outputs (``(chain, draw, ...)`` arrays) to the
        ``log_likelihood`` group.
    log_lik_dims
        Dims of each ``log_likelihood`` variable.
    drop
        Stan outputs used internally (e.g. cell-level log probabilities), not kept.
    optional_scalars
        Stan outputs declared as ``array[flag] real``: kept as scalars when present.
    label_dim
        The dim indexing mixture components ("group"), when the model has one.
    extra_attrs
        Model-specific provenance written into the posterior attributes.
    derive
        Outputs computed in Python from the draws and the Stan data (see :meth:`complete`),
        keyed by Stan name, instead of being written by the program for every draw.
    scale_names
        ``parameters``-block variable -> the Stan data that holds its ``multiplier`` (its scale
        on the sampler's space), for the programs that take scales: a fit started in a
        searched mode sets them from the mode's Laplace approximation
        (:func:`pluralstan.pipeline.search_inits`).
    """

    data: dict[str, Any]
    coords: dict[str, Any]
    dims: dict[str, list[str]]
    observed: dict[str, np.ndarray]
    constant: dict[str, np.ndarray]
    predictive: dict[str, str]
    log_lik: LogLikFn
    log_lik_dims: dict[str, list[str]]
    drop: tuple[str, ...] = ()
    optional_scalars: tuple[str, ...] = ()
    label_dim: str | None = None
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    derive: DeriveFn | None = None
    scale_names: dict[str, str] = field(default_factory=dict)

    def complete(self, variables: Mapping[str, np.ndarray],
                 data: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """An engine's outputs (arrays with any leading draw axes) with :attr:`derive`'s added.

        Per-annotator outputs (annotators x types per draw) cost an engine far more to write
        and parse than they cost NumPy to compute from the parameters: PyStan sends every value
        of every draw as JSON text. ``data`` is the Stan data the draws were made with
        (default :attr:`data`; a prior-only run passes its own).
        """
        if self.derive is None:
            return dict(variables)
        return {**variables, **self.derive(variables, self.data if data is None else data)}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: a Stan program plus its encoder.

    Attributes
    ----------
    name
        Registry key used by :func:`pluralstan.fit`.
    program_file
        File name of the program in ``stan/``.
    summary
        One-line description for ``pluralstan models`` and the docs.
    encode
        ``encode(comps, K=None, priors=None, **options) -> Encoded``.
    default_priors
        Names and default values of the prior hyperparameters (all passed to Stan as data).
    needs_K
        Whether the model takes a number of mixture components ``K``.
    """

    name: str
    program_file: str
    summary: str
    encode: Callable[..., Encoded]
    default_priors: Mapping[str, Any]
    needs_K: bool = False

    @property
    def program(self) -> StanProgram:
        """The Stan program, read from the package's ``stan/`` folder."""
        return load_program(self.program_file)


def check_K(K: Any, what: str, *, n_annotators: int | None = None) -> int:
    """Validate a number of mixture components: a positive integer (an integer-valued float is
    accepted), at most ``n_annotators`` when the components are annotator types.

    Parameters
    ----------
    K
        The number given by the user.
    what
        What the components are, for the message ("latent types", "prototypes", ...).
    n_annotators
        The number of annotators in the table, when each component needs annotators of its own.

    Raises
    ------
    PluralstanError
        Naming ``K``, its value and the accepted range.
    """
    whole = isinstance(K, int | np.integer) or (isinstance(K, float) and K.is_integer())
    if isinstance(K, bool) or not whole:
        raise PluralstanError(f"K (the number of {what}) must be a positive integer, got {K!r}")
    K = int(K)
    if K < 1:
        raise PluralstanError(f"K (the number of {what}) must be at least 1, got {K}")
    if n_annotators is not None and K > n_annotators:
        raise PluralstanError(
            f"K = {K} {what} but only {n_annotators} annotator(s) in the table: each needs "
            f"annotators to describe it; accepted: 1 <= K <= {n_annotators}"
        )
    return K


class Registry(Mapping[str, ModelSpec]):
    """The registered models, by name: ``ps.models``.

    ``ps.models.list()`` names them, ``ps.models.get(name)`` returns one (unlike ``dict.get``,
    an unknown name raises a :class:`~pluralstan.errors.PluralstanError` listing the known
    ones), and ``ps.models[name]``, ``name in ps.models`` and iteration work as on a mapping.
    Each model module registers its :class:`ModelSpec` on import with :meth:`register`.
    """

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}

    def __getitem__(self, name: str) -> ModelSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"<pluralstan models: {', '.join(self.list())}>"

    def list(self) -> list[str]:
        """The registered model names, sorted."""
        return sorted(self._specs)

    def get(self, name: str | ModelSpec) -> ModelSpec:  # type: ignore[override]
        """The model called ``name`` (a :class:`ModelSpec` is returned as it is)."""
        if isinstance(name, ModelSpec):
            return name
        try:
            return self._specs[name]
        except KeyError:
            raise PluralstanError(
                f"unknown model {name!r}; known models: {self.list()}"
            ) from None

    def register(self, spec: ModelSpec) -> ModelSpec:
        """Add ``spec`` (one entry per model name)."""
        if spec.name in self._specs:
            raise RuntimeError(f"model {spec.name!r} registered twice")
        self._specs[spec.name] = spec
        return spec


#: The one registry (``ps.models``); :func:`register` and :func:`get_model` are its methods.
REGISTRY = Registry()
register = REGISTRY.register
get_model = REGISTRY.get


def stan_dir() -> Path:
    """Folder holding the Stan programs (installed package data, or the source checkout)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "stan", here.parent / "stan"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"cannot find the Stan programs next to {here}")


#: A Stan ``#include`` line: the file's path relative to :func:`stan_dir`.
_INCLUDE = re.compile(r"^[ \t]*#include[ \t]+[\"<]?([\w./-]+?)[\">]?[ \t]*$", re.MULTILINE)


@cache
def load_program(file_name: str) -> StanProgram:
    """Read a program from :func:`stan_dir` (cached per process).

    ``#include path`` lines (functions shared by several programs, in ``stan/functions/``) are
    replaced by the file's text, as ``stanc --include-paths=stan`` would do: PyStan compiles a
    program from its text alone, and the expanded text is what the compile cache is keyed on.
    """
    path = stan_dir() / file_name
    return StanProgram(name=path.stem, code=_expand_includes(path.read_text()))


def _expand_includes(code: str, depth: int = 0) -> str:
    if depth > 8:
        raise RuntimeError("Stan #include nested more than 8 deep (a cycle?)")
    return _INCLUDE.sub(
        lambda m: _expand_includes((stan_dir() / m.group(1)).read_text(), depth + 1).rstrip("\n"),
        code,
    )


#: Prior hyperparameters whose names end so are scales or concentrations: they must be > 0.
#: Every other hyperparameter (a mean, a location) may be any finite number.
POSITIVE_ENDINGS = ("_sd", "_alpha")


def merge_priors(spec_defaults: Mapping[str, Any], priors: Mapping[str, Any] | None) -> dict:
    """Overlay user priors on the defaults and validate every value: the one checking path.

    Every model's encoder calls this first, so no prior reaches Stan unchecked: ``priors`` must
    be a mapping of known names; each value a finite number or a non-empty list of finite
    numbers (:func:`check_prior`), positive for scales and concentrations
    (:data:`POSITIVE_ENDINGS`). Shapes are checked where the model knows them
    (:func:`broadcast_prior`, :func:`scalar_prior`).

    Returns
    -------
    dict
        Name -> float (a scalar) or float vector (a list).

    Raises
    ------
    PluralstanError
        For a non-mapping ``priors``, an unknown name or a bad value, naming it.
    """
    if priors is not None and not isinstance(priors, Mapping):
        raise PluralstanError(
            f"priors must be a dict of hyperparameter name -> value (e.g. {{'theta_sd': 1.0}}), "
            f"got {type(priors).__name__} {priors!r}"
        )
    merged = dict(spec_defaults)
    for key, value in (priors or {}).items():
        if key not in merged:
            raise PluralstanError(
                f"unknown prior hyperparameter {key!r}; this model accepts {sorted(merged)}"
            )
        merged[key] = value
    return {key: check_prior(value, key) for key, value in merged.items()}


def check_prior(value: Any, name: str) -> float | np.ndarray:
    """One prior hyperparameter checked for type, finiteness and sign, as float(s).

    Raises
    ------
    PluralstanError
        When ``value`` is not a number or a non-empty flat list of numbers (booleans, strings,
        ``None`` and nested lists are refused), is not finite, or is not positive although
        ``name`` ends in one of :data:`POSITIVE_ENDINGS`.
    """
    def is_number(v: Any) -> bool:
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
            v, bool | np.bool_)

    if isinstance(value, list | tuple | np.ndarray):
        flat = not isinstance(value, np.ndarray) or value.ndim == 1
        entries = list(value) if flat else []
        if not entries or not all(is_number(v) for v in entries):
            raise PluralstanError(
                f"prior {name!r} must be a number or a non-empty flat list of numbers, got "
                f"{_plain(value)!r}"
            )
        arr: float | np.ndarray = np.asarray(entries, dtype=float)
    elif is_number(value):
        arr = float(value)
    else:
        raise PluralstanError(
            f"prior {name!r} must be a number or a list of numbers, got {type(value).__name__} "
            f"{value!r}"
        )
    if not np.all(np.isfinite(arr)):
        raise PluralstanError(f"prior {name!r} must be finite, got {_plain(value)!r}")
    if name.endswith(POSITIVE_ENDINGS):
        positive(arr, name)
    return arr


def _plain(value: Any) -> Any:
    """A prior value as plain Python (lists, floats) for messages."""
    return np.asarray(value).tolist() if isinstance(value, np.ndarray | np.generic) else value


def broadcast_prior(value: Any, size: int, name: str) -> np.ndarray:
    """A scalar or length-``size`` prior hyperparameter as a float vector."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise PluralstanError(
            f"prior {name!r} must be a number or a list of {size} numbers, got {value!r}"
        ) from None
    if arr.ndim == 0:
        return np.full(size, float(arr))
    if arr.shape != (size,):
        raise PluralstanError(
            f"prior {name!r} must be a scalar or have length {size}, got shape {arr.shape}"
        )
    return arr


def scalar_prior(value: Any, name: str) -> float:
    """A prior hyperparameter that must be one number, checked (:func:`check_prior`)."""
    arr = check_prior(value, name)
    if isinstance(arr, np.ndarray):
        raise PluralstanError(
            f"prior {name!r} must be a single number, got a list of {arr.size} "
            f"({arr.tolist()!r})"
        )
    return arr


def positive(value: Any, name: str) -> Any:
    """Return ``value`` if every entry is a finite positive number, else raise naming it."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = np.array(np.nan)
    if arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise PluralstanError(
            f"prior {name!r} must be finite and positive, got {_plain(value)!r}"
        )
    return value


def no_components(K: Any, model: str) -> None:
    """Refuse a number of components ``K`` given to a model that has none to choose.

    ``None`` and 1 (the model's one population) are accepted.
    """
    if K is None or (not isinstance(K, bool) and isinstance(K, int | np.integer) and K == 1):
        return
    raise PluralstanError(
        f"model {model!r} has a single population and takes no number of components, but "
        f"K={K!r} was given; drop K, or use a mixture model ('unlabeled', 'annotator', "
        "'covariate', 'pal') to fit K components"
    )


def require_annotators(comps: Comparisons) -> None:
    """Refuse a table without an ``annotator`` column for a model of annotator types.

    Such models give all of an annotator's judgements one latent type; the repeated judgements
    of each annotator are what identify the types. Without the column every judgement would be
    its own annotator, and the types would not be identified.
    """
    if not comps.annotator_given:
        raise PluralstanError(
            "models of annotator types ('annotator', 'covariate', 'pal') need an 'annotator' "
            "column: they give each annotator one latent type, and it is the repeated judgements "
            "of the same annotator that identify the types; this table has no 'annotator' "
            "column, so every judgement would be its own annotator. Add the column (who made "
            "each judgement), or use model='unlabeled' for anonymous judgements"
        )


def bt_prior_data(p: Mapping[str, Any], P: int) -> dict[str, Any]:
    """Stan data of the priors every Bradley-Terry program shares, checked.

    ``theta ~ normal(theta_mean, theta_sd)`` per attribute, the position effect
    ``gamma ~ normal(0, order_sd)`` and Davidson's ``log(nu) ~ normal(log_nu_mean, log_nu_sd)``.
    """
    return {
        "prior_theta_mean": broadcast_prior(p["theta_mean"], P, "theta_mean"),
        "prior_theta_sd": positive(broadcast_prior(p["theta_sd"], P, "theta_sd"), "theta_sd"),
        "prior_order_sd": scalar_prior(p["order_sd"], "order_sd"),
        "prior_log_nu_mean": scalar_prior(p["log_nu_mean"], "log_nu_mean"),
        "prior_log_nu_sd": scalar_prior(p["log_nu_sd"], "log_nu_sd"),
    }


#: Largest share of non-zero entries at which a design goes to Stan in compressed row storage.
#: Item designs (at most two non-zeros per row) fall below it from 5 items up; dense attribute
#: designs, whose dense product is the faster one (1.04-1.15x on a 5-attribute design, side by
#: side), do not.
SPARSE_DESIGN_DENSITY = 0.5


def design_data(X: Any, sparse: bool | None = None,
                density: float = SPARSE_DESIGN_DENSITY) -> dict[str, Any]:
    """Stan data of the design ``X`` (rows x attributes), dense or in compressed row storage.

    Every program reads the number of rows ``R`` and ``X_sparse``; when it is 1, the design is
    ``X_nnz`` non-zero values ``X_w``, their 1-based columns ``X_v`` and the 1-based position
    in ``X_w`` where each row starts, ``X_u`` (Stan's ``csr_extract`` layout, SciPy's CSR
    1-based), and the dense ``X`` has no rows; when it is 0, ``X`` is the dense design and the
    sparse arrays are empty (see ``stan/functions/design.stanfunctions``).

    Parameters
    ----------
    X
        The design, one row per cell or distinct row: an array, or a SciPy sparse matrix
        (large item designs, :data:`pluralstan.data.DENSE_LIMIT`), which stays sparse unless
        ``sparse=False``.
    sparse
        Force one form; default: sparse when at most ``density`` of the entries are non-zero
        (an item design has two non-zeros per row however many items there are, so its
        programs then cost O(cells), not O(cells x items)).
    density
        The program's threshold: :data:`SPARSE_DESIGN_DENSITY` unless its dense product is
        cheaper (:data:`pluralstan.models.annotator.SPARSE_TYPES_DESIGN_DENSITY`).
    """
    from scipy.sparse import csr_matrix, issparse

    if issparse(X):  # a large item design (pluralstan.data.DENSE_LIMIT): kept sparse
        csr = csr_matrix(X, dtype=float, copy=True)
        csr.eliminate_zeros()
        sparse = True if sparse is None else sparse
        X = csr if sparse else csr.toarray()
    else:
        X = np.asarray(X, dtype=float)
        if sparse is None:
            sparse = np.count_nonzero(X) <= density * X.size
        if sparse:
            csr = csr_matrix(X)  # stores the non-zero entries only
    if not sparse:
        return {"R": X.shape[0], "X_sparse": 0, "X": X, "X_nnz": 0, "X_w": np.zeros(0),
                "X_v": np.zeros(0, dtype=np.int64), "X_u": np.zeros(0, dtype=np.int64)}
    return {"R": X.shape[0], "X_sparse": 1, "X": np.zeros((0, X.shape[1])),
            "X_nnz": int(csr.nnz),
            "X_w": csr.data, "X_v": csr.indices.astype(np.int64) + 1,
            "X_u": csr.indptr.astype(np.int64) + 1}


def stan_design(data: dict[str, Any]) -> np.ndarray:
    """The design a program reads (``R`` x ``P``), dense, from Stan data in either form of
    :func:`design_data` (to time or check one form against the other)."""
    if not data["X_sparse"]:
        return np.asarray(data["X"], dtype=float)
    from scipy.sparse import csr_matrix

    return csr_matrix((data["X_w"], np.asarray(data["X_v"]) - 1, np.asarray(data["X_u"]) - 1),
                      shape=(data["R"], np.shape(data["X"])[1])).toarray()


#: Designs with more attributes are not whitened by default (``whiten=None``): the basis is
#: P x P, and mapping the coordinates to theta costs K P^2 operations per gradient.
WHITEN_MAX_ATTRIBUTES = 200

#: Largest condition number of the weighted design Gram matrix that is whitened: beyond it the
#: basis would amplify rounding (the design is then all but rank deficient).
WHITEN_MAX_CONDITION = 1e10


def whitening_data(X: Any, weights: np.ndarray, whiten: bool | None,
                   ordered: bool = False) -> dict[str, Any]:
    """Stan data of the QR reparameterisation: ``whiten`` and the basis ``theta_basis``.

    The programs that accept it (aggregate, unlabeled, annotator, covariate) sample theta's
    coordinates c in a basis B and set theta = B c (``stan/functions/design.stanfunctions``).
    B = L'^{-1}, with L the Cholesky factor of the design's Gram matrix weighted by the
    judgements on each row, G = X' diag(n) X / sum(n): the whitened design X B then has
    orthonormal columns under those weights, which is the QR reparameterisation of the Stan
    User's Guide (``Q* = X B``, ``R* = B^{-1}``) applied to the per-judgement design, computed
    from the distinct rows. The likelihood's curvature in c is then free of the correlations
    that the design puts between attributes (levels of one factor, items compared with the same
    items), which a diagonal mass matrix (PyStan's only one) cannot absorb. The priors stay on
    theta and the map is linear (a constant Jacobian), so the posterior is unchanged; only the
    sampler's geometry is.

    Parameters
    ----------
    X
        The design rows the program reads (array or SciPy sparse), rows x P.
    weights
        Judgements on each row.
    whiten
        ``None``: whiten when P <= :data:`WHITEN_MAX_ATTRIBUTES`, the types are not ordered, and
        G is positive definite with condition number below :data:`WHITEN_MAX_CONDITION`;
        ``True``: whiten, or raise why not; ``False``: sample theta itself.
    ordered
        The program orders the components by one of theta's own coordinates
        (``identify="ordered"``), which a change of basis would not preserve.
    """
    from scipy.sparse import issparse

    P = X.shape[1]
    off = {"whiten": 0, "theta_basis": np.zeros((0, 0))}
    if whiten is False:
        return off
    if whiten not in (None, True):
        raise PluralstanError(f"whiten must be True, False or None (automatic), got {whiten!r}")
    why = ("identify='ordered' orders the components by theta's own coordinate" if ordered
           else f"the design has {P} attributes (at most {WHITEN_MAX_ATTRIBUTES} are whitened)"
           if P > WHITEN_MAX_ATTRIBUTES else "")
    if not why:
        w = np.asarray(weights, dtype=float)
        if issparse(X):
            gram = (X.T @ X.multiply(w[:, None]).tocsr()).toarray() / w.sum()
        else:
            dense = np.asarray(X, float)
            gram = (dense * w[:, None]).T @ dense / w.sum()
        eig = np.linalg.eigvalsh(gram)
        if eig[0] <= eig[-1] / WHITEN_MAX_CONDITION:
            why = "the design's Gram matrix is (all but) singular: some attribute is not identified"
    if why:
        if whiten:
            raise PluralstanError(f"whiten=True: cannot whiten the design, because {why}")
        return off
    from scipy.linalg import solve_triangular

    L = np.linalg.cholesky(gram)
    return {"whiten": 1, "theta_basis": solve_triangular(L.T, np.eye(P), lower=False)}


def prior_parametrisation(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` for the same program in the parametrisation its prior-only runs sample: theta
    itself (no basis, :func:`whitening_data`) and, in the labeled program, the centring
    weights' form rather than the conditional one (``labeled.conditional_data``), and in the
    annotator program unit scales of its free coordinates (``annotator.scale_data``). Parameter
    values from a prior-only run mean the same there (``theta_coord`` is theta, ``mu_coord``
    is mu)."""
    out = dict(data)
    if "whiten" in data:
        out |= {"whiten": 0, "theta_basis": np.zeros((0, 0))}
    if "conditional" in data:
        out |= {"conditional": 0, **{name: np.zeros((0, 0)) for name in (
            "pilot_info", "pilot_info_diagonal", "pilot_info_basis", "pilot_info_eigen",
            "pilot_score")}}
    out |= {name: np.ones_like(np.asarray(value, float)) for name, value in data.items()
            if name.endswith("_scale")}
    return out


def theta_coordinates(theta: np.ndarray, data: Mapping[str, Any]) -> np.ndarray:
    """theta (P, or K x P with a row per component) in the coordinates a program samples
    (:func:`whitening_data`): ``theta B'^{-1}``, or theta itself when not whitened. With one
    basis per component (``theta_basis`` K x P x P, the unpooled labeled model), row k uses
    basis k."""
    if not data.get("whiten", 0):
        return np.asarray(theta, float)
    from scipy.linalg import solve_triangular

    basis = np.asarray(data["theta_basis"])
    if basis.ndim == 3:
        return np.stack([solve_triangular(B, row, lower=False)
                         for B, row in zip(basis, np.asarray(theta, float), strict=True)])
    # theta = c B' (rows)  <=>  B c_k' = theta_k'
    return solve_triangular(data["theta_basis"], np.atleast_2d(theta).T, lower=False).T.reshape(
        np.shape(theta))


def resolve_ties_order(
    comps: Comparisons, ties: bool | None, order: bool | None
) -> tuple[int, int]:
    """Whether to model ties (Davidson) and a position effect.

    Default: ties when the outcomes contain any, a position effect when the table records
    presentation order.

    Raises
    ------
    PluralstanError
        When the data contain ties but ``ties=False``.
    """
    has_ties = comps.has_ties if ties is None else bool(ties)
    if comps.has_ties and not has_ties:
        raise PluralstanError(
            "the outcome column 'y' contains ties (0.5) but ties=False; fit with ties=True "
            "or drop the tied rows"
        )
    has_order = comps.has_order if order is None else bool(order) and comps.has_order
    return int(has_ties), int(has_order)


#: Units of the log likelihood a cell-level program outputs (``log_lik=`` of the aggregate and
#: labeled encoders): ``"comparison"``, one value per judgement (PSIS-LOO by judgement);
#: ``"annotator"``, the sum over each annotator's judgements (leave-one-annotator-out LOO, and
#: power-scaling, which needs only the sum); ``None``, no log likelihood.
LOG_LIK_UNITS = ("comparison", "annotator", None)


#: Values held at once (draws x cells x outcomes or types) by the computations that run over
#: blocks of posterior draws (:func:`derive_cell_outputs`,
#: :func:`pluralstan.models.annotator.mixture_outputs`, the masking ratio): a memory bound,
#: about 80 MB of doubles per temporary.
BLOCK_VALUES = 10_000_000


def over_blocks(n: int, width: int, work: Callable[[slice], None]) -> None:
    """Call ``work`` on consecutive slices of ``range(n)`` (blocks of draws of ``width``
    values each), side by side in one thread per core this process may use.

    ``work`` writes its results into the caller's arrays, each slice into its own rows. NumPy's
    ufuncs and matrix products release the GIL, so the threads run at once, on cores that
    otherwise idle while a fit's per-draw outputs are computed. The products of one block are
    too small for BLAS's own threads to pay (``benchmarks/latest_results.md``), so BLAS runs
    one thread per block. A block holds at most :data:`BLOCK_VALUES` values over the number
    of threads, so the temporaries of all the threads together keep the memory bound of one.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from ..parallel import default_workers

    workers = default_workers()
    step = max(1, BLOCK_VALUES // (max(width, 1) * workers))
    blocks = [slice(start, min(start + step, n)) for start in range(0, n, step)]
    with threadpool_limits(1), ThreadPoolExecutor(min(workers, len(blocks) or 1)) as pool:
        for _ in pool.map(work, blocks):  # re-raises a block's exception here
            pass


#: Stan data flags of the cell-level programs' log-likelihood outputs, which
#: :func:`derive_cell_outputs` computes instead (set them to 1 to have the program write them,
#: as the tests do to compare the two).
CELL_PYTHON_OUTPUTS: dict[str, int] = {"save_log_p_cell": 0, "save_log_lik": 0}


def optional_scalar(values: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """An ``array[flag] real`` output (position effect, tie parameter) without its last axis,
    ``None`` when the program has none."""
    arr = values.get(name)
    return None if arr is None or arr.shape[-1] == 0 else arr[..., 0]


def design_from_data(data: Mapping[str, Any], columns: str = "X_v",
                     n_columns: int | None = None) -> Any:
    """The design a program reads (:func:`design_data`): the dense ``X``, or a SciPy CSR
    matrix of ``X_w``, ``columns`` and ``X_u`` with ``n_columns`` columns (default ``P``)."""
    from scipy.sparse import csr_matrix

    P = int(data["P"])
    X = np.asarray(data["X"], float).reshape(-1, P)
    if X.shape[0]:
        return X
    return csr_matrix((np.asarray(data["X_w"], float), np.asarray(data[columns]) - 1,
                       np.asarray(data["X_u"]) - 1),
                      shape=(int(data["R"]), P if n_columns is None else n_columns))


def log_normaliser(eta: np.ndarray, log_nu: np.ndarray | None) -> np.ndarray:
    """``log_normaliser`` of ``stan/functions/annotator_types.stanfunctions`` in NumPy: log D(eta)
    elementwise, D(eta) = exp(eta / 2) + exp(-eta / 2) + nu, without overflow.

    ``log_nu`` broadcasts against ``eta``; ``None`` gives the binomial log(1 + exp(eta)). The
    result is a new array, computed in place in it and one temporary: NumPy's ``logaddexp``
    is a scalar loop, several times slower on the annotator model's rows x draws arrays.
    """
    out = np.abs(eta)
    if log_nu is None:  # max(eta, 0) + log(1 + exp(-|eta|))
        tail = np.negative(out)
        np.exp(tail, out=tail)
        np.log1p(tail, out=tail)
        np.maximum(eta, 0.0, out=out)
    else:  # |eta| / 2 + log(1 + exp(-|eta|) + exp(log nu - |eta| / 2))
        out *= 0.5
        tail = np.exp(-2.0 * out)
        tail += np.exp(log_nu - out)
        np.log1p(tail, out=tail)
    out += tail
    return out


def outcome_log_probs(eta: np.ndarray, log_nu: np.ndarray | None) -> np.ndarray:
    """``outcome_log_probs`` of ``stan/functions/davidson.stanfunctions`` in NumPy.

    ``eta`` ``(d, C)`` and ``log_nu`` ``(d,)`` (``None``: binomial) give ``(d, C, outcomes)``,
    the log probabilities of b preferred, a preferred (and a tie).
    """
    from scipy.special import log_expit

    if log_nu is None:
        return np.stack([log_expit(-eta), log_expit(eta)], axis=-1)
    lnu = log_nu[:, None]
    log_d = log_normaliser(eta, lnu)
    return np.stack([-0.5 * eta - log_d, 0.5 * eta - log_d, lnu - log_d], axis=-1)


#: ``eta(theta, data)``: the linear predictors ``(d, C)`` of a cell-level program's cells for
#: ``d`` draws of its ``theta`` (``(d, *core)``), before the position effect.
EtaFn = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]


def derive_cell_outputs(values: Mapping[str, np.ndarray], data: Mapping[str, Any], *,
                        eta: EtaFn, theta_ndim: int, unit: str | None) -> dict[str, np.ndarray]:
    """A cell-level program's log-likelihood output from its parameter draws.

    The twin of its generated quantities (``stan/functions/cell_outputs.stanfunctions``): for
    ``unit="comparison"`` the outcome log probabilities of every cell (``log_p_cell``), for
    ``"annotator"`` their sums per unit through the program's sparse unit matrix
    (``log_lik``), from the Stan data the draws were made with. ``theta`` has ``theta_ndim``
    trailing dims. Computed in blocks of draws (:data:`BLOCK_VALUES`).
    """
    if unit is None:
        return {}
    from scipy.sparse import csr_matrix

    theta = values["theta"]
    lead = theta.shape[:theta.ndim - theta_ndim]
    flat = theta.reshape(-1, *theta.shape[len(lead):])
    gamma, log_nu = (None if v is None else v.reshape(-1) for v in
                     (optional_scalar(values, "gamma"), optional_scalar(values, "log_nu")))
    order = np.asarray(data["order"], float)
    C, n_out, D = order.size, 3 if log_nu is not None else 2, flat.shape[0]
    units = None
    if unit == "annotator":
        units = csr_matrix((np.asarray(data["unit_w"], float), np.asarray(data["unit_v"]) - 1,
                            np.asarray(data["unit_u"]) - 1), shape=(int(data["U"]), n_out * C))
    out = np.empty((D, C, n_out) if units is None else (D, units.shape[0]))

    def block(at: slice) -> None:
        lin = eta(flat[at], data)
        if gamma is not None:
            lin = lin + np.outer(gamma[at], order)
        log_p = outcome_log_probs(lin, None if log_nu is None else log_nu[at])
        # columns (outcome - 1) * C + cell, as the program's to_vector(log_p)
        out[at] = log_p if units is None else (
            units @ log_p.transpose(0, 2, 1).reshape(log_p.shape[0], -1).T).T

    over_blocks(D, C * max(n_out, int(np.prod(flat.shape[1:-1], dtype=int))), block)
    name = "log_p_cell" if units is None else "log_lik"
    return {name: out.reshape(*lead, *out.shape[1:])}


@dataclass(frozen=True)
class CellOutputs:
    """The optional outputs of a cell-level program (``stan/functions/cell_outputs_data.stan``).

    Attributes
    ----------
    data
        Their Stan data: ``replicate``, the output flags (:data:`CELL_PYTHON_OUTPUTS`) and the
        sparse unit matrix.
    log_lik, log_lik_dims
        The ``log_likelihood`` group built from the outputs, and its dims.
    coords
        Coordinates the log likelihood adds (``annotator``).
    derive
        The log-likelihood output computed from the draws (:func:`derive_cell_outputs`), for
        :attr:`Encoded.derive`.
    """

    data: dict[str, Any]
    log_lik: LogLikFn
    log_lik_dims: dict[str, list[str]]
    coords: dict[str, Any]
    derive: DeriveFn


def cell_outputs(comps: Comparisons, cells: Any, n_out: int, *, log_lik: str | None,
                 replicate: bool, eta: EtaFn, theta_ndim: int) -> CellOutputs:
    """Which outputs a cell-level program gives per draw, and how they become the fit's groups.

    The log likelihood (per judgement, or one sum per annotator through a sparse annotators x
    (cells x outcomes) count matrix) is computed in NumPy from the parameter draws
    (:func:`derive_cell_outputs`): PyStan sends every value of every draw as JSON text, and
    on data with about one judgement per cell the per-cell outputs were most of a fit's time
    and memory. Replicated counts (random) stay in the program.

    Parameters
    ----------
    comps
        The judgements.
    cells
        Their cells (:meth:`pluralstan.data.Comparisons.cells`).
    n_out
        Outcomes per cell (2, or 3 with ties).
    log_lik
        One of :data:`LOG_LIK_UNITS`.
    replicate
        Output replicated counts ``y_rep`` per cell (posterior predictive checks, SBC).
    eta, theta_ndim
        The program's cell linear predictors from draws of ``theta`` and the number of
        ``theta``'s dims (:func:`derive_cell_outputs`).

    Raises
    ------
    PluralstanError
        For a ``log_lik`` not in :data:`LOG_LIK_UNITS`.
    """
    from functools import partial

    from scipy.sparse import csr_matrix

    if log_lik not in LOG_LIK_UNITS:
        raise PluralstanError(f"unknown log_lik {log_lik!r}; accepted: {list(LOG_LIK_UNITS)}")
    n_units = len(comps.annotator_levels) if log_lik == "annotator" else 0
    units = csr_matrix((n_units, n_out * cells.n_cells))
    if n_units:
        column = cells.outcome_of_row * cells.n_cells + cells.cell_of_row  # to_vector's order
        units = csr_matrix((np.ones(comps.n), (comps.codes("annotator"), column)),
                           shape=units.shape)
    data = {
        "replicate": int(replicate),
        **CELL_PYTHON_OUTPUTS,
        "U": n_units,
        "unit_nnz": units.nnz,
        "unit_w": units.data.astype(float),
        "unit_v": units.indices.astype(np.int64) + 1,
        "unit_u": units.indptr.astype(np.int64)[: n_units + 1 if n_units else 0] + 1,
    }
    derive = partial(derive_cell_outputs, eta=eta, theta_ndim=theta_ndim, unit=log_lik)
    if log_lik == "annotator":
        return CellOutputs(data, lambda v: {"y": v["log_lik"]}, {"y": ["annotator"]},
                           {"annotator": list(comps.annotator_levels)}, derive)
    if log_lik == "comparison":
        cell_of_row, outcome_of_row = cells.cell_of_row, cells.outcome_of_row
        return CellOutputs(
            data, lambda v: {"y": expand_cells(v["log_p_cell"], cell_of_row, outcome_of_row)},
            {"y": ["comparison"]}, {}, derive)
    return CellOutputs(data, lambda v: {}, {}, {}, derive)


def expand_cells(log_p_cell: np.ndarray, cell_of_row: np.ndarray, outcome_of_row: np.ndarray):
    """Per-judgement log likelihood from cell-level outcome log probabilities.

    ``log_p_cell`` is ``(chain, draw, C, n_outcomes)``; the result is ``(chain, draw, N)``.
    Every judgement in a cell with the same outcome has the same log likelihood, so this is an
    exact expansion of the sufficient-statistic form.
    """
    return log_p_cell[:, :, cell_of_row, outcome_of_row]

"""Comparison tables: the one documented input format, its validation and its encoding.

A comparison table is long format, one row per judgement:

``annotator``
    Who made the judgement (any hashable id). Optional: without it every row is its own
    anonymous annotator (the aggregate-data setting of the position paper).
``group``
    Optional observed subgroup label (strings or integers).
``y``
    The outcome: ``1`` option a preferred, ``0`` option b preferred, ``0.5`` a tie
    (booleans are read as 1 / 0).
options, in one of two forms
    * **attributes**: columns ``a_<name>`` and ``b_<name>`` for the same set of names, giving each
      option's attribute vector; P(a > b | theta) = logistic((a - b)' theta).
    * **items**: columns ``item_a`` and ``item_b`` naming items. Without an item table each item
      gets an ability, identified by fixing a reference item's ability at 0 (the first item in
      sorted order unless ``reference=`` names one; BradleyTerry2's ``refcat`` convention). With an
      item-feature table (index = item id, numeric columns) the utility is linear in the features.
``order``
    Optional presentation order: ``1`` option a was shown first, ``0`` option b was.
``pair``
    Optional id of the option pair (kept for per-pair checks and held-out splits).

Every problem is raised as :class:`~pluralstan.errors.PluralstanError` naming the column, value
or row, before any Stan code runs. Encoding to Stan's data lives here, in :meth:`Comparisons.cells`
and :meth:`Comparisons.design`: identical judgements collapse to counts per distinct cell
(attribute difference, order, and optionally group or annotator) before they reach Stan.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .errors import IdentificationWarning, PluralstanError, ScaleWarning

#: Column names with a fixed meaning.
RESERVED = ("annotator", "group", "y", "item_a", "item_b", "order", "pair")
#: Outcome codes used in cells: column index of each outcome in the count matrix.
OUTCOMES = ("b", "a", "tie")

Mode = Literal["attributes", "items"]
#: A design or option matrix: dense, or compressed sparse rows for large item designs.
Matrix = np.ndarray | sparse.csr_matrix

#: Largest number of entries (rows x columns) of an item design built as a dense array. Item
#: designs without a feature table have one column per item but at most two non-zeros per row;
#: above this size :meth:`Comparisons.options`, :meth:`Comparisons.design` and
#: :meth:`Comparisons.cells` return them in compressed sparse rows (``scipy.sparse.csr_matrix``)
#: instead, so memory grows with the judgements, not judgements x items.
DENSE_LIMIT = 2**24
#: Largest |a - b| of an attribute (or item-feature) column accepted without a warning: with
#: theta on the logit scale (default prior sd 2.5), a coefficient of 1 turns a difference of
#: this size into log-odds of the same size, where logistic probabilities are 0 or 1 in floating
#: point.
LARGE_DIFFERENCE = 100.0
#: Largest |a - b| accepted at all: beyond it the products with theta overflow Stan's arithmetic.
MAX_DIFFERENCE = 1e100


def _rows(mask: np.ndarray | pd.Series, index: pd.Index, limit: int = 5) -> str:
    """Describe the first few offending rows of a boolean mask."""
    bad = list(index[np.asarray(mask, dtype=bool)][:limit])
    total = int(np.asarray(mask, dtype=bool).sum())
    more = f" (and {total - len(bad)} more)" if total > len(bad) else ""
    return f"row{'s' if total > 1 else ''} {', '.join(map(str, bad))}{more}"


def _show(value: object) -> str:
    """repr of a value, with NumPy scalars shown as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _numeric_column(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    """Return a finite float column or raise naming the column and the first bad rows."""
    series = frame[column]
    if series.dtype == bool:
        series = series.astype(float)
    values = pd.to_numeric(series, errors="coerce")
    non_numeric = values.isna() & series.notna()
    if non_numeric.any():
        first = series[non_numeric].iloc[0]
        raise PluralstanError(
            f"{what} column {column!r} has a non-numeric value {_show(first)} at "
            f"{_rows(non_numeric, frame.index)}; {what} values must be numbers"
        )
    arr = values.to_numpy(dtype=float)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise PluralstanError(
            f"{what} column {column!r} has a missing or infinite value at "
            f"{_rows(bad, frame.index)}; every {what} value must be a finite number"
        )
    return arr


@dataclass(frozen=True)
class Cells:
    """Judgements collapsed to counts per distinct cell.

    Attributes
    ----------
    X
        ``(C, P)`` attribute difference a - b of each cell.
    order
        ``(C,)`` +1 (a shown first), -1 (b shown first) or 0 (unknown).
    counts
        ``(C, 3)`` judgements per cell preferring b, preferring a, tied (see :data:`OUTCOMES`).
    group
        ``(C,)`` 0-based group code per cell, or ``None`` when cells pool the groups.
    annotator
        ``(C,)`` 0-based annotator code per cell, or ``None``.
    cell_of_row, outcome_of_row
        ``(N,)`` the cell and outcome code (0 b, 1 a, 2 tie) of every judgement, to expand
        cell-level quantities back to judgements.
    A, B
        ``(C, P)`` attributes of options a and b, when the cells keep options apart
        (``cells(options=True)``, for models not linear in a - b); else ``None``.
    """

    X: np.ndarray
    order: np.ndarray
    counts: np.ndarray
    group: np.ndarray | None
    annotator: np.ndarray | None
    cell_of_row: np.ndarray
    outcome_of_row: np.ndarray
    A: np.ndarray | None = None
    B: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        """Number of distinct cells."""
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Comparisons:
    """A validated comparison table (see the module docstring for the format).

    Build it with :meth:`from_frame` or :func:`read_csv`; the constructor does not validate.

    Attributes
    ----------
    frame
        The judgements with canonical columns: ``annotator``, ``y``, optional ``group`` /
        ``order`` and either ``a_*`` / ``b_*`` or ``item_a`` / ``item_b``.
    mode
        ``"attributes"`` or ``"items"``.
    attributes
        Names of the design columns (the coordinates of theta).
    items
        Item-feature table (items mode with features), else ``None``.
    item_levels
        Sorted item ids (items mode), else ``()``.
    reference
        The reference item whose ability is fixed at 0 (items mode without features).
    annotators
        Optional annotator covariate table, indexed by annotator id.
    truth
        Known generating parameters (simulated data), else ``None``.
    annotator_given
        Whether the table had an ``annotator`` column; without one every judgement is its own
        anonymous annotator, and models of annotator types refuse the table.
    """

    frame: pd.DataFrame
    mode: Mode
    attributes: tuple[str, ...]
    items: pd.DataFrame | None = None
    item_levels: tuple[Hashable, ...] = ()
    reference: Hashable | None = None
    annotators: pd.DataFrame | None = None
    truth: dict[str, np.ndarray] | None = None
    annotator_given: bool = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        items: pd.DataFrame | None = None,
        annotators: pd.DataFrame | None = None,
        reference: Hashable | None = None,
        warn_unidentified: bool = True,
        truth: dict[str, np.ndarray] | None = None,
    ) -> Comparisons:
        """Validate a long-format table and return a :class:`Comparisons`.

        Parameters
        ----------
        frame
            One row per judgement (see the module docstring).
        items
            Optional item-feature table for items mode: index (or an ``item`` column) = item id,
            numeric feature columns.
        annotators
            Optional annotator covariate table: index (or an ``annotator`` column) = annotator
            id; used by covariate-informed mixing.
        reference
            Items mode without features: the item whose ability is fixed at 0.
        warn_unidentified
            Warn (:class:`~pluralstan.errors.IdentificationWarning`) about coordinates the
            design cannot identify.
        truth
            Known generating parameters (set by the simulators), carried along for checks.

        Raises
        ------
        PluralstanError
            Naming the column, value or row at fault.
        """
        if not isinstance(frame, pd.DataFrame):
            raise PluralstanError(
                f"comparisons must be a pandas DataFrame, got {type(frame).__name__}"
            )
        if len(frame) == 0:
            raise PluralstanError("the comparison table is empty: it needs at least one judgement")
        frame = frame.reset_index(drop=True)
        frame.index = pd.RangeIndex(len(frame))
        _check_columns(frame)
        for table, what in ((items, "item table"), (annotators, "annotator table")):
            if table is not None and not isinstance(table, pd.DataFrame):
                raise PluralstanError(
                    f"the {what} must be a pandas DataFrame, got {type(table).__name__}"
                )
        out = pd.DataFrame(index=frame.index)

        # outcome
        if "y" not in frame.columns:
            raise PluralstanError(
                f"missing outcome column 'y' (1 = a preferred, 0 = b preferred, 0.5 = tie); "
                f"columns present: {list(frame.columns)}"
            )
        y = _numeric_column(frame, "y", "outcome")
        bad = ~np.isin(y, (0.0, 0.5, 1.0))
        if bad.any():
            raise PluralstanError(
                f"outcome column 'y' has value {_show(y[bad][0])} at {_rows(bad, frame.index)}; "
                "accepted: 1 (a preferred), 0 (b preferred), 0.5 (tie)"
            )
        out["y"] = y

        # annotator and group ids
        if "annotator" in frame.columns:
            _check_ids(frame, "annotator")
            _check_one_type(frame["annotator"], "annotator")
            out["annotator"] = frame["annotator"].to_numpy()
        else:
            out["annotator"] = np.arange(len(frame))
        if "group" in frame.columns:
            _check_ids(frame, "group")
            _check_one_type(frame["group"], "group")
            out["group"] = frame["group"].to_numpy()
        if "order" in frame.columns:
            order = _numeric_column(frame, "order", "order")
            bad = ~np.isin(order, (0.0, 1.0))
            if bad.any():
                raise PluralstanError(
                    f"column 'order' has value {_show(order[bad][0])} at "
                    f"{_rows(bad, frame.index)}; "
                    "accepted: 1 (option a shown first), 0 (option b shown first)"
                )
            out["order"] = order
        if "pair" in frame.columns:
            _check_ids(frame, "pair")
            out["pair"] = frame["pair"].to_numpy()

        # options
        a_cols = [c for c in frame.columns if isinstance(c, str) and c.startswith("a_")]
        b_cols = [c for c in frame.columns if isinstance(c, str) and c.startswith("b_")]
        has_items = "item_a" in frame.columns or "item_b" in frame.columns
        if has_items and (a_cols or b_cols):
            raise PluralstanError(
                "the table has both item columns ('item_a'/'item_b') and attribute columns "
                f"({(a_cols + b_cols)[:4]}...); describe options one way only"
            )
        if has_items:
            mode: Mode = "items"
            attrs, item_table, levels, ref = _validate_items(frame, out, items, reference)
        elif a_cols or b_cols:
            mode = "attributes"
            attrs = _validate_attributes(frame, out, a_cols, b_cols)
            item_table, levels, ref = None, (), None
            if items is not None:
                raise PluralstanError(
                    "an item table was given but the comparisons describe options by attribute "
                    "columns a_*/b_*; give 'item_a'/'item_b' columns to use an item table"
                )
        else:
            raise PluralstanError(
                "no option columns: give either 'item_a' and 'item_b' (item ids) or matching "
                "attribute columns 'a_<name>' and 'b_<name>'; columns present: "
                f"{list(frame.columns)}"
            )
        ann_table = None
        if annotators is not None:
            ann_table = _validate_annotators(annotators, out["annotator"])
        comps = cls(out, mode, attrs, item_table, levels, ref, ann_table, truth,
                    annotator_given="annotator" in frame.columns)
        if warn_unidentified:
            comps.check_identification()
        return comps

    # ------------------------------------------------------------------ properties
    @property
    def n(self) -> int:
        """Number of judgements."""
        return len(self.frame)

    @property
    def scope(self) -> str:
        """What the judgements cover, for reports: "N judgements by A annotators over M items"
        (every item, the reference included) or "... over P attributes"."""
        what = (f"{len(self.item_levels)} items" if self.mode == "items"
                else f"{len(self.attributes)} attributes")
        return f"{self.n} judgements by {len(self.annotator_levels)} annotators over {what}"

    @property
    def has_ties(self) -> bool:
        """Whether any judgement is a tie."""
        return bool((self.frame["y"] == 0.5).any())

    @property
    def has_order(self) -> bool:
        """Whether presentation order is recorded."""
        return "order" in self.frame.columns

    @property
    def has_groups(self) -> bool:
        """Whether subgroup labels are present."""
        return "group" in self.frame.columns

    @property
    def group_levels(self) -> tuple[Hashable, ...]:
        """Sorted distinct group labels (empty when unlabeled)."""
        if not self.has_groups:
            return ()
        return tuple(sorted(pd.unique(self.frame["group"]), key=lambda v: (str(type(v)), v)))

    @property
    def annotator_levels(self) -> tuple[Hashable, ...]:
        """Distinct annotator ids in order of first appearance."""
        return tuple(pd.unique(self.frame["annotator"]))

    def codes(self, column: Literal["group", "annotator"]) -> np.ndarray:
        """0-based integer codes of ``group`` (sorted levels) or ``annotator`` (first seen)."""
        if column == "group":
            if not self.has_groups:
                raise PluralstanError("this table has no 'group' column (subgroup labels)")
            levels = self.group_levels
        else:
            levels = self.annotator_levels
        return pd.Index(levels).get_indexer(self.frame[column]).astype(np.int64)

    # ------------------------------------------------------------------ encoding
    @property
    def indicator_design(self) -> bool:
        """Whether the design is one indicator column per item (items mode, no item table)."""
        return self.mode == "items" and self.items is None

    def item_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` column of :attr:`attributes` of items a and b; -1 for the reference item.

        Items mode without an item table only: the index form of its indicator design.
        """
        if not self.indicator_design:
            raise PluralstanError("item codes exist in items mode without an item table only")
        levels = pd.Index(self.item_levels)
        ref = levels.get_loc(self.reference)
        out = []
        for col in ("item_a", "item_b"):
            code = levels.get_indexer(self.frame[col])
            # the attributes are the levels without the reference, in the same order
            out.append(np.where(code == ref, -1, code - (code > ref)).astype(np.int64))
        return out[0], out[1]

    def options(self) -> tuple[Matrix, Matrix]:
        """``(N, P)`` attribute vectors of options a and b (columns = :attr:`attributes`).

        Attribute mode reads ``a_*`` / ``b_*``; item mode with an item table reads its features;
        item mode without one uses one-hot item indicators with the reference item at the origin,
        as dense arrays up to :data:`DENSE_LIMIT` entries and in compressed sparse rows above.
        """
        if self.mode == "attributes":
            return (self.frame[[f"a_{n}" for n in self.attributes]].to_numpy(float),
                    self.frame[[f"b_{n}" for n in self.attributes]].to_numpy(float))
        if self.items is not None:
            feats = self.items.loc[:, list(self.attributes)]
            return (feats.loc[self.frame["item_a"]].to_numpy(float),
                    feats.loc[self.frame["item_b"]].to_numpy(float))
        a, b = self.item_codes()
        P = len(self.attributes)
        return _indicators(a, None, P), _indicators(b, None, P)

    def design(self) -> Matrix:
        """``(N, P)`` attribute difference a - b per judgement (columns = :attr:`attributes`).

        Dense, except for item indicator designs above :data:`DENSE_LIMIT` entries, which are
        compressed sparse rows (two non-zeros per row).
        """
        if self.indicator_design:
            a, b = self.item_codes()
            return _indicators(a, b, len(self.attributes))
        a, b = self.options()
        return a - b

    def order_sign(self) -> np.ndarray:
        """``(N,)`` +1 when a was shown first, -1 when b was, 0 when not recorded."""
        if not self.has_order:
            return np.zeros(self.n)
        return 2.0 * self.frame["order"].to_numpy(float) - 1.0

    def outcome_codes(self) -> np.ndarray:
        """``(N,)`` outcome code per judgement: 0 b preferred, 1 a preferred, 2 tie."""
        y = self.frame["y"].to_numpy(float)
        return np.where(y == 0.5, 2, y.astype(np.int64)).astype(np.int64)

    def cells(self, by: Sequence[Literal["group", "annotator"]] = (), *,
              options: bool = False) -> Cells:
        """Collapse judgements to counts per distinct cell.

        A cell is a distinct (attribute difference, order[, group][, annotator]) combination;
        the likelihood of every judgement in a cell depends only on the cell, so the counts
        are sufficient statistics.

        Parameters
        ----------
        by
            Extra keys that split cells: ``"group"`` (labeled models), ``"annotator"``.
        options
            Key cells on the two options' attributes (a, b) instead of their difference a - b,
            for models whose likelihood is not a function of a - b alone (PAL's ideal points);
            the cells then carry ``A`` and ``B``.
        """
        order = self.order_sign()
        codes = {col: self.codes(col) for col in by}
        if self.indicator_design:
            # index form: the pair of item codes identifies the design row (and both options),
            # so the cells are the distinct (item a, item b, order, ...) combinations
            item_a, item_b = self.item_codes()
            cell_of_row, first = _first_seen_groups([item_a, item_b, order,
                                                     *(codes[col] for col in by)])
            P = len(self.attributes)
            X = _indicators(item_a[first], item_b[first], P)
            A = _indicators(item_a[first], None, P) if options else None
            B = _indicators(item_b[first], None, P) if options else None
        else:
            A, B = self.options()
            X = A - B
            keys = [np.hstack([A, B]) if options else X, order[:, None]]
            keys += [codes[col][:, None].astype(float) for col in by]
            key = np.hstack(keys)
            _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            # number cells in order of first appearance, so the encoding is stable under sorting
            rank = np.empty_like(first)
            rank[np.argsort(first, kind="stable")] = np.arange(len(first))
            cell_of_row = rank[inverse]
            first = np.sort(first)
            X = X[first]
            A, B = (A[first], B[first]) if options else (None, None)
        outcome = self.outcome_codes()
        counts = np.zeros((len(first), 3), dtype=np.int64)
        np.add.at(counts, (cell_of_row, outcome), 1)
        return Cells(
            X=X,
            order=order[first],
            counts=counts,
            group=codes["group"][first] if "group" in codes else None,
            annotator=codes["annotator"][first] if "annotator" in codes else None,
            cell_of_row=cell_of_row.astype(np.int64),
            outcome_of_row=outcome,
            A=A,
            B=B,
        )

    # ------------------------------------------------------------------ checks
    def check_identification(self) -> list[str]:
        """Warn about coordinates the design cannot identify; return their names.

        A coordinate of theta is unidentified when its column of the design (a - b) is zero in
        every judgement: the likelihood is flat along it and its posterior is its prior. In
        items mode without features, items that are never compared, directly or through other
        items, with the reference item are unidentified too.
        """
        if self.indicator_design:
            # every item column is +-1 wherever the item is judged (item_a != item_b), so only
            # the connection to the reference can fail; the check runs on the item graph
            flat = sorted(_disconnected_items(self), key=str)
            collinear: list[list[str]] = []
        else:
            X = self.design()
            moves = np.any(X != 0, axis=0)
            flat = [name for name, m in zip(self.attributes, moves, strict=True) if not m]
            collinear = _collinear_columns(X[:, moves], np.asarray(self.attributes)[moves])
        if flat:
            warnings.warn(
                f"the design cannot identify {len(flat)} coordinate(s) of theta: {flat[:10]}"
                f"{' ...' if len(flat) > 10 else ''}; no judgement separates the options along "
                "them (their a - b difference is always 0 or they are not connected to the "
                "reference), so their posterior will simply be their prior",
                IdentificationWarning,
                stacklevel=3,
            )
        for names in collinear:
            warnings.warn(
                f"the attribute columns {names} are perfectly collinear in the design (a - b): "
                "one is a linear combination of the others in every judgement, so the data "
                "cannot separate their coefficients and the posterior along that direction is "
                "driven by the prior; drop or combine one of them",
                IdentificationWarning,
                stacklevel=3,
            )
        return flat + [name for names in collinear for name in names if name not in flat]

    def subset(self, rows: np.ndarray | Sequence[int]) -> Comparisons:
        """The same table restricted to ``rows`` (positions), keeping levels and item tables."""
        frame = self.frame.iloc[np.asarray(rows)].reset_index(drop=True)
        if len(frame) == 0:
            raise PluralstanError("the selected subset of the comparison table is empty")
        ann = self.annotators
        if ann is not None:
            ann = ann.loc[ann.index.isin(frame["annotator"])]
        return Comparisons(frame, self.mode, self.attributes, self.items, self.item_levels,
                           self.reference, ann, self.truth, self.annotator_given)

    def to_frame(self) -> pd.DataFrame:
        """The canonical long table (a copy), e.g. to write as CSV."""
        return self.frame.copy()


# ---------------------------------------------------------------------- helpers
def _check_columns(frame: pd.DataFrame) -> None:
    """Refuse duplicate column names and unknown columns that look like a misspelled one."""
    dup = frame.columns[frame.columns.duplicated()]
    if len(dup):
        raise PluralstanError(
            f"column {_show(dup[0])} appears more than once in the comparison table; "
            "column names must be unique"
        )
    for col in frame.columns:
        if not isinstance(col, str) or col in RESERVED or col.startswith(("a_", "b_")):
            continue
        close = difflib.get_close_matches(col.lower(), RESERVED, n=1, cutoff=0.75)
        if close and close[0] not in frame.columns:
            raise PluralstanError(
                f"column {col!r} is not a column pluralstan reads; did you mean {close[0]!r}? "
                f"known columns: {list(RESERVED)} and a_<name> / b_<name>"
            )


def _kinds(values: pd.Series) -> pd.Series:
    """The kind of every id: ``"number"`` (any int, float or bool) or its type's name."""
    if values.dtype != object:
        return pd.Series("number" if pd.api.types.is_numeric_dtype(values)
                         or pd.api.types.is_bool_dtype(values) else str(values.dtype),
                         index=values.index)
    return values.map(lambda v: "number" if isinstance(v, int | float | np.number)
                      else type(v).__name__)


def _check_one_type(values: pd.Series, column: str) -> None:
    """Refuse an id column that mixes value types (e.g. ``0`` and ``"0"``): they would be
    different ids that print the same, and become one once written to a file."""
    kinds = _kinds(values)
    if kinds.nunique() > 1:
        first = kinds.iloc[0]
        raise PluralstanError(
            f"column {column!r} mixes label types ({sorted(kinds.unique())}): row "
            f"{int(np.flatnonzero(kinds.to_numpy() != first)[0])} is not a {first} like row 0 "
            f"(e.g. 0 and '0' would be two different {column} ids that print the same); "
            f"use one type for every {column} label"
        )


def _indicators(a: np.ndarray, b: np.ndarray | None, P: int) -> Matrix:
    """Rows ``e_a`` (``b`` None) or ``e_a - e_b`` of a ``P``-column indicator design.

    Codes are columns, -1 the reference item (a zero row). Dense up to :data:`DENSE_LIMIT`
    entries, else compressed sparse rows built from the codes alone.
    """
    n = len(a)
    if n * P <= DENSE_LIMIT:
        out = np.zeros((n, P))
        rows = np.arange(n)
        keep = a >= 0
        out[rows[keep], a[keep]] = 1.0
        if b is not None:
            keep = b >= 0
            out[rows[keep], b[keep]] -= 1.0
        return out
    cols = [a] if b is None else [a, b]
    vals = [np.ones(n)] if b is None else [np.ones(n), -np.ones(n)]
    row = np.concatenate([np.arange(n)] * len(cols))
    col, val = np.concatenate(cols), np.concatenate(vals)
    keep = col >= 0
    out = sparse.csr_matrix((val[keep], (row[keep], col[keep])), shape=(n, P))
    out.sort_indices()
    return out


def _first_seen_groups(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Group rows by the combination of ``keys``; number groups by first appearance.

    Returns the group of every row and the first row of every group (increasing). Each key is
    folded in with :func:`pandas.factorize`, which numbers values in order of appearance, so the
    combined code stays below the number of rows and never overflows.
    """
    code = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        part, levels = pd.factorize(key)
        code, _ = pd.factorize(code * max(len(levels), 1) + part)
    n_groups = int(code.max()) + 1 if len(code) else 0
    first = np.full(n_groups, len(code), dtype=np.int64)
    np.minimum.at(first, code, np.arange(len(code)))
    return code.astype(np.int64), first


def _collinear_columns(X: np.ndarray, names: np.ndarray, tol: float = 1e-10) -> list[list[str]]:
    """Sets of design columns that are exactly linearly dependent (none of them all-zero).

    Each set is the support of one null direction of the column-scaled Gram matrix: the
    eigenvectors whose eigenvalue is below ``tol`` times the largest.
    """
    if X.shape[1] < 2:
        return []
    scaled = X / np.sqrt(np.einsum("ij,ij->j", X, X))
    gram = scaled.T @ scaled
    values, vectors = np.linalg.eigh(gram)
    out: list[list[str]] = []
    for k in np.flatnonzero(values <= tol * values[-1]):
        v = vectors[:, k]
        members = [str(n) for n in names[np.abs(v) > 1e-6 * np.abs(v).max()]]
        if len(members) > 1 and members not in out:
            out.append(members)
    return out


def _check_scale(column: str, difference: np.ndarray, index: pd.Index) -> None:
    """Refuse differences that overflow, warn about ones too large for the logit scale."""
    size = np.abs(difference)
    huge = ~(size <= MAX_DIFFERENCE)  # also catches a - b overflowing to inf
    if huge.any():
        raise PluralstanError(
            f"attribute {column!r}: the difference a - b is {_show(difference[huge][0])} at "
            f"{_rows(huge, index)}, beyond {MAX_DIFFERENCE:g}; multiplied by theta it "
            "overflows floating point; rescale the column (e.g. standardise it)"
        )
    largest = float(size.max()) if len(size) else 0.0
    if largest > LARGE_DIFFERENCE:
        warnings.warn(
            f"attribute {column!r}: differences a - b reach {largest:.4g}; theta is on the "
            f"logit scale (default prior sd 2.5), so a coefficient of 1 already gives log-odds "
            f"of {largest:.4g}, where logistic probabilities are exactly 0 or 1 in floating "
            "point; rescale the column (e.g. standardise it) or set the theta prior to its scale",
            ScaleWarning,
            stacklevel=4,
        )


def _check_ids(frame: pd.DataFrame, column: str) -> None:
    missing = frame[column].isna()
    if missing.any():
        raise PluralstanError(
            f"column {column!r} has a missing id at {_rows(missing, frame.index)}; every row "
            f"needs a {column} id"
        )


def _validate_attributes(
    frame: pd.DataFrame, out: pd.DataFrame, a_cols: list[str], b_cols: list[str]
) -> tuple[str, ...]:
    a_names = [c[2:] for c in a_cols]
    b_names = [c[2:] for c in b_cols]
    only_a = sorted(set(a_names) - set(b_names))
    only_b = sorted(set(b_names) - set(a_names))
    if only_a or only_b:
        raise PluralstanError(
            "options a and b have different feature sets: "
            + "; ".join(
                s
                for s in (
                    f"a_{only_a[0]!s} has no matching b_{only_a[0]!s}" if only_a else "",
                    f"b_{only_b[0]!s} has no matching a_{only_b[0]!s}" if only_b else "",
                )
                if s
            )
            + "; every attribute needs both an a_<name> and a b_<name> column"
        )
    for name in a_names:
        out[f"a_{name}"] = _numeric_column(frame, f"a_{name}", "attribute")
        out[f"b_{name}"] = _numeric_column(frame, f"b_{name}", "attribute")
        with np.errstate(over="ignore", invalid="ignore"):
            difference = out[f"a_{name}"].to_numpy() - out[f"b_{name}"].to_numpy()
        _check_scale(str(name), difference, frame.index)
    return tuple(a_names)


def _validate_items(
    frame: pd.DataFrame,
    out: pd.DataFrame,
    items: pd.DataFrame | None,
    reference: Hashable | None,
) -> tuple[tuple[str, ...], pd.DataFrame | None, tuple[Hashable, ...], Hashable | None]:
    for col in ("item_a", "item_b"):
        if col not in frame.columns:
            raise PluralstanError(
                f"items mode needs both 'item_a' and 'item_b'; {col!r} is missing"
            )
        _check_ids(frame, col)
        _check_one_type(frame[col], col)
        out[col] = frame[col].to_numpy()
    kind_a, kind_b = (_kinds(frame[col].iloc[:1]).iloc[0] for col in ("item_a", "item_b"))
    if kind_a != kind_b:
        raise PluralstanError(
            f"item ids are {kind_a} in column 'item_a' but {kind_b} in column 'item_b' "
            "(e.g. 0 and '0' would be two different items that print the same); use one type "
            "for every item id"
        )
    same = (frame["item_a"] == frame["item_b"]).to_numpy()
    if same.any():
        raise PluralstanError(
            f"item {_show(frame['item_a'][same].iloc[0])} is compared with itself at "
            f"{_rows(same, frame.index)}; item_a and item_b must differ"
        )
    used = pd.unique(pd.concat([frame["item_a"], frame["item_b"]], ignore_index=True))
    levels = tuple(sorted(used, key=lambda v: (str(type(v)), v)))
    if items is None:
        ref = levels[0] if reference is None else reference
        if ref not in levels:
            raise PluralstanError(
                f"reference item {reference!r} does not appear in item_a or item_b; "
                f"items present: {list(levels)[:10]}"
            )
        return tuple(str(v) for v in levels if v != ref), None, levels, ref
    table = items.set_index("item") if "item" in items.columns else items
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise PluralstanError(
            f"item table lists item {_show(dup)} more than once; item ids must be unique"
        )
    unknown = [v for v in levels if v not in table.index]
    if unknown:
        raise PluralstanError(
            f"item {_show(unknown[0])} appears in the comparisons but not in the item table "
            f"({len(unknown)} unknown item(s)); add a row for it"
        )
    if table.shape[1] == 0:
        raise PluralstanError("the item table has no feature columns")
    checked = pd.DataFrame(
        {
            c: _numeric_column(table.reset_index(drop=True), c, "item feature")
            for c in table.columns
        },
        index=table.index,
    )
    checked.columns = [str(c) for c in checked.columns]
    rows_a = checked.index.get_indexer(frame["item_a"])
    rows_b = checked.index.get_indexer(frame["item_b"])
    for c in checked.columns:
        values = checked[c].to_numpy()
        with np.errstate(over="ignore", invalid="ignore"):
            _check_scale(c, values[rows_a] - values[rows_b], frame.index)
    return tuple(checked.columns), checked, levels, None


def _validate_annotators(table: pd.DataFrame, annotator: pd.Series) -> pd.DataFrame:
    table = table.set_index("annotator") if "annotator" in table.columns else table
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][0]
        raise PluralstanError(
            f"annotator table lists annotator {_show(dup)} more than once; ids must be unique"
        )
    seen = pd.Index(pd.unique(annotator))
    missing = seen.difference(table.index)
    if len(missing):
        raise PluralstanError(
            f"annotator {_show(missing[0])} has judgements but no row in the annotator table "
            f"({len(missing)} missing)"
        )
    idle = table.index.difference(seen)
    if len(idle):
        raise PluralstanError(
            f"annotator {_show(idle[0])} is in the annotator table but has no judgements "
            f"({len(idle)} such annotator(s)); drop them or add their judgements"
        )
    for col in table.columns:
        na = table[col].isna().to_numpy()
        if na.any():
            who = table.index[na][0]
            raise PluralstanError(
                f"annotator covariate {col!r} is missing for annotator {_show(who)} "
                f"({int(na.sum())} missing value(s)); impute or drop them before fitting"
            )
    return table.loc[list(seen)]


def _disconnected_items(comps: Comparisons) -> list[str]:
    """Items not connected to the reference item through the comparison graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    idx = pd.Index(comps.item_levels)
    a = idx.get_indexer(comps.frame["item_a"])
    b = idx.get_indexer(comps.frame["item_b"])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(idx), len(idx)))
    _, label = connected_components(graph, directed=False)
    ref = label[idx.get_loc(comps.reference)]
    return [str(v) for v, lab in zip(idx, label, strict=True) if lab != ref]


def as_comparisons(comps: Comparisons | pd.DataFrame) -> Comparisons:
    """Accept a validated table or a raw DataFrame (validated here)."""
    if isinstance(comps, Comparisons):
        return comps
    if isinstance(comps, pd.DataFrame):
        return Comparisons.from_frame(comps)
    raise PluralstanError(
        f"comparisons must be a pluralstan Comparisons or a pandas DataFrame, got "
        f"{type(comps).__name__}"
    )


def data_hash(comps: Comparisons) -> str:
    """SHA-256 of the canonical comparison table (recorded for provenance)."""
    h = hashlib.sha256(comps.frame.to_csv(index=False).encode())
    if comps.items is not None:
        h.update(comps.items.to_csv().encode())
    if comps.annotators is not None:
        h.update(comps.annotators.to_csv().encode())
    return h.hexdigest()


def read_csv(
    path: str | Path,
    *,
    items: str | Path | pd.DataFrame | None = None,
    annotators: str | Path | pd.DataFrame | None = None,
    reference: Hashable | None = None,
) -> Comparisons:
    """Read and validate a comparison table (and optional item / annotator tables) from CSV.

    Raises
    ------
    PluralstanError
        When a file does not exist, is not CSV, or fails validation.
    """
    frame = read_table(path, "comparison table")
    item_frame = read_table(items, "item table") if isinstance(items, str | Path) else items
    ann_frame = (
        read_table(annotators, "annotator table")
        if isinstance(annotators, str | Path)
        else annotators
    )
    return Comparisons.from_frame(
        frame, items=item_frame, annotators=ann_frame, reference=reference
    )


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """Read one CSV file (``what`` names it in errors: missing, unreadable, one column,
    a column named twice)."""
    path = Path(path)
    if not path.is_file():
        raise PluralstanError(f"{what} file {str(path)!r} does not exist")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise PluralstanError(
            f"{what} file {str(path)!r} is not a readable CSV file: {err}"
        ) from err
    if frame.shape[1] < 2:
        raise PluralstanError(
            f"{what} file {str(path)!r} parsed to {frame.shape[1]} column(s); is it a "
            "comma-separated file with a header row?"
        )
    _check_header(path, what)
    return frame


def _check_header(path: Path, what: str) -> None:
    """Refuse a header row that names a column twice.

    pandas renames the second ``a_x`` to ``a_x.1``, which would then be read as another
    attribute; the header is read here as written.
    """
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise PluralstanError(
                f"{what} file {str(path)!r} names column {name!r} more than once in its header "
                "row; column names must be unique"
            )
        seen.add(name)

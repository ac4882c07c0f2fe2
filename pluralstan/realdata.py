"""Loaders for the real preference data sets kept beside the project (``../shared/data``).

The files are never copied into the repository. Every loader takes the data folder as an
argument; without one it uses the environment variable ``PLURALSTAN_DATA``, else
``../shared/data`` relative to the current working directory or to the repository checkout.
Each loader returns a validated :class:`~pluralstan.data.Comparisons`, with the outcome recoded
from the files' convention (``1`` item_a preferred, ``-1`` item_b preferred, ``0`` tie) to
pluralstan's (``1`` / ``0`` / ``0.5``).

Data sets (origin, licence and columns in the data folder's ``README.md``):

* :func:`load_cems` - CEMS business-school choice (Dittrich, Hatzinger & Katzenbeisser 1998),
  items mode with ties; the student table becomes the annotator covariates.
* :func:`load_german_parties` - German parties 2009, items mode.
* :func:`load_taxes` - Ballard-Rosa, Martin & Scheve (2017) tax-plan conjoint; attributes mode
  with one dummy per non-reference attribute level.
* :func:`load_polis` - Polis agree / disagree votes turned into within-participant comparisons.
* :func:`load_personas` - semi-synthetic users built from Anthropic persona statements, with
  TF-IDF + truncated-SVD statement features computed offline with NumPy / SciPy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import Comparisons
from .errors import PluralstanError

#: Environment variable naming the data folder.
ENV_VAR = "PLURALSTAN_DATA"
#: Outcome recoding from the data folder's convention to pluralstan's.
_Y_MAP = {1: 1.0, -1: 0.0, 0: 0.5}

#: Attributes of the tax conjoint and their reference level (the lowest rate in each bracket;
#: for revenue, "95-105%" of current revenue, i.e. revenue-neutral plans).
TAX_ATTRIBUTES = ("taxrate1", "taxrate2", "taxrate3", "taxrate4", "taxrate5", "taxrate6",
                  "taxrev")
TAX_REFERENCE = {
    "taxrate1": "0%", "taxrate2": "5%", "taxrate3": "5%", "taxrate4": "5%",
    "taxrate5": "5%", "taxrate6": "5%", "taxrev": "95-105%",
}
_TAXREV_ORDER = ("<75%", "75-95%", "95-105%", "105-125%", ">125%")

#: The Polis conversations shipped in the data folder.
POLIS_CONVERSATIONS = ("brexit-consensus", "vtaiwan.uberx")


# ---------------------------------------------------------------------- locating files
def data_dir(folder: str | Path | None = None) -> Path:
    """The folder holding the real data files.

    Parameters
    ----------
    folder
        An explicit folder; else ``$PLURALSTAN_DATA``; else ``../shared/data`` relative to the
        current working directory, then to the repository checkout.

    Raises
    ------
    PluralstanError
        When the chosen folder does not exist (naming it and the variable to set).
    """
    if folder is not None:
        path = Path(folder)
        if not path.is_dir():
            raise PluralstanError(
                f"data folder {str(path)!r} does not exist; pass an existing folder or set "
                f"{ENV_VAR}"
            )
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise PluralstanError(
                f"{ENV_VAR}={env!r} does not name an existing folder; point it at the folder "
                "holding the real data files (e.g. cems_choice_comparisons.csv)"
            )
        return path
    repo = Path(__file__).resolve().parent.parent
    candidates = [Path.cwd() / ".." / "shared" / "data", repo.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    raise PluralstanError(
        "cannot find the real data folder: looked in "
        + ", ".join(repr(str(p)) for p in candidates)
        + f"; pass folder= or set the environment variable {ENV_VAR}"
    )


def _read(folder: Path, name: str, required: Sequence[str] = (), **kwargs) -> pd.DataFrame:
    """Read one CSV file of the data folder, naming the path when it is missing, is not CSV
    or lacks one of the ``required`` columns."""
    path = folder / name
    if not path.is_file():
        raise PluralstanError(
            f"data file {str(path)!r} does not exist; check the data folder (argument folder= "
            f"or the environment variable {ENV_VAR})"
        )
    try:
        table = pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PluralstanError(f"data file {str(path)!r} is not a readable CSV file: {err}") from err
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise PluralstanError(
            f"data file {str(path)!r} has no column {missing[0]!r}; it needs {list(required)}, "
            f"columns present: {list(table.columns)}"
        )
    return table


def _recode(y: pd.Series, path: str) -> np.ndarray:
    """Map 1 / -1 / 0 to 1 / 0 / 0.5, naming the file and row of any other value."""
    bad = ~y.isin(list(_Y_MAP))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PluralstanError(
            f"{path}: column 'y' has value {y.iloc[row]} at row {row}; the data folder's "
            "convention is 1 (item_a preferred), -1 (item_b preferred), 0 (tie)"
        )
    return y.map(_Y_MAP).to_numpy(float)


def _group_column(table: pd.DataFrame, group: str | None, what: str) -> pd.Series | None:
    if group is None:
        return None
    if group not in table.columns:
        raise PluralstanError(
            f"{what} has no column {group!r} to use as group; columns: "
            f"{[c for c in table.columns if c != 'annotator']}"
        )
    return table[group]


# ---------------------------------------------------------------------- items-mode data
def _load_items(
    stem: str, folder: str | Path | None, group: str | None, reference: str | None
) -> Comparisons:
    root = data_dir(folder)
    comps = _read(root, f"{stem}_comparisons.csv", ("annotator_id", "item_a", "item_b", "y"))
    people = _read(root, f"{stem}_annotators.csv", ("annotator_id",))
    people = people.rename(columns={"annotator_id": "annotator"})
    frame = pd.DataFrame({
        "annotator": comps["annotator_id"].to_numpy(),
        "item_a": comps["item_a"].to_numpy(),
        "item_b": comps["item_b"].to_numpy(),
        "y": _recode(comps["y"], f"{stem}_comparisons.csv"),
    })
    labels = _group_column(people, group, f"{stem}_annotators.csv")
    if labels is not None:
        frame["group"] = frame["annotator"].map(labels.set_axis(people["annotator"]))
    return Comparisons.from_frame(frame, annotators=people, reference=reference)


def load_cems(
    folder: str | Path | None = None, *, group: str | None = "work", reference: str = "London"
) -> Comparisons:
    """CEMS business-school choice: 303 students, 15 pairs of 6 schools, ties allowed.

    Parameters
    ----------
    folder
        Data folder (see :func:`data_dir`).
    group
        Student column used as the observed ``group`` label (``"work"``: full-time work while
        studying; also ``"english"``, ``"french"``, ``"spanish"``, ``"italian"``, ``"study"``,
        ``"gender"``, ``"intdegree"``), or ``None`` for no label.
    reference
        School whose ability is fixed at 0 (London, as in the issue; BradleyTerry2's examples
        use Stockholm, a shift of every ability by the same constant).

    Returns
    -------
    Comparisons
        Items mode, 4,454 judgements (some students skipped pairs), 487 ties; the student
        table (string-valued covariates) as ``annotators``.
    """
    return _load_items("cems_choice", folder, group, reference)


def load_german_parties(
    folder: str | Path | None = None, *, group: str | None = None, reference: str = "none"
) -> Comparisons:
    """German parties 2009: 192 respondents x 15 pairs of 6 options, no ties.

    ``group`` is a respondent column (``"gender"``, ``"crisis"``, ...); ``reference`` the
    option fixed at 0 (default ``"none"``, the no-party option).
    """
    return _load_items("german_parties_2009", folder, group, reference)


# ---------------------------------------------------------------------- tax conjoint
def _tax_level(value: str) -> str:
    """``"<10k: 5%"`` -> ``"5%"``; revenue levels are kept as they are."""
    return value.split(": ", 1)[1] if ": " in value else value


def _tax_levels(attr: str, values: pd.Series) -> list[str]:
    """The levels of one tax attribute, in their natural (numeric) order."""
    found = set(values)
    if attr == "taxrev":
        order = [v for v in _TAXREV_ORDER if v in found]
    else:
        order = sorted(found, key=lambda v: float(v.rstrip("%")))
    unknown = found - set(order)
    if unknown:
        raise PluralstanError(
            f"tax conjoint attribute {attr!r} has unexpected level {sorted(unknown)[0]!r}; "
            f"known levels: {list(_TAXREV_ORDER)}"
        )
    return order


def tax_design(comps_file: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Dummy-code the plans of the tax conjoint.

    Each attribute ``attr`` with levels ``l_0 < l_1 < ...`` gets one 0/1 column
    ``<attr>=<level>`` per level other than its reference (:data:`TAX_REFERENCE`), for plan a
    (``a_`` prefix) and plan b (``b_``). A utility linear in these dummies is the conjoint's
    AMCE parameterisation: each coefficient is the change in log-odds from moving that
    attribute from its reference level to the given level, all else equal.

    Returns
    -------
    design
        Columns ``a_<attr>=<level>`` and ``b_<attr>=<level>``, one row per choice.
    levels
        Attribute -> levels in natural order (reference included).
    """
    cols: dict[str, np.ndarray] = {}
    levels: dict[str, list[str]] = {}
    for attr in TAX_ATTRIBUTES:
        a = comps_file[f"{attr}_a"].map(_tax_level)
        b = comps_file[f"{attr}_b"].map(_tax_level)
        levels[attr] = _tax_levels(attr, pd.concat([a, b]))
        ref = TAX_REFERENCE[attr]
        if ref not in levels[attr]:
            raise PluralstanError(
                f"reference level {ref!r} of tax attribute {attr!r} is not among its levels "
                f"{levels[attr]}"
            )
        for level in levels[attr]:
            if level != ref:
                cols[f"a_{attr}={level}"] = (a == level).to_numpy(float)
                cols[f"b_{attr}={level}"] = (b == level).to_numpy(float)
    return pd.DataFrame(cols, index=comps_file.index), levels


def load_taxes(
    folder: str | Path | None = None,
    *,
    missing_party: str = "drop",
    group: str | None = "partyid",
) -> Comparisons:
    """Ballard-Rosa, Martin & Scheve (2017) tax-plan conjoint: 2,000 respondents x 8 choices.

    Parameters
    ----------
    folder
        Data folder (see :func:`data_dir`).
    missing_party
        What to do with the 75 respondents whose ``partyid`` is missing (the data folder's
        README says 60; the file has 75): ``"drop"`` their
        choices (default; the labeled analysis then covers 1,925 respondents), or ``"label"``
        them with the explicit group ``"Unknown"``.
    group
        Respondent column used as ``group`` (``"partyid"``) or ``None``.

    Returns
    -------
    Comparisons
        Attributes mode; the design is the dummy coding of :func:`tax_design`. The annotator
        table has ``partyid`` (string; the covariate model dummy-codes it) and
        ``inequality_aversion`` (0/1); ``taxes_harm_economy`` is left out (397 missing
        values, and the annotator table must be complete).
    """
    if missing_party not in ("drop", "label"):
        raise PluralstanError(
            f"missing_party={missing_party!r}; accepted: 'drop' (leave out respondents without "
            "partyid) or 'label' (give them the group 'Unknown')"
        )
    root = data_dir(folder)
    raw = _read(root, "taxes_conjoint_comparisons.csv")
    people = _read(root, "taxes_conjoint_respondents.csv")
    party = people["partyid"]
    if missing_party == "drop":
        people = people.loc[party.notna()]
        raw = raw.loc[raw["respondent_id"].isin(people["respondent_id"])].reset_index(drop=True)
    else:
        people = people.assign(partyid=party.fillna("Unknown"))
    design, _ = tax_design(raw)
    frame = pd.concat(
        [pd.DataFrame({"annotator": raw["respondent_id"].to_numpy(),
                       "y": _recode(raw["y"], "taxes_conjoint_comparisons.csv")}),
         design],
        axis=1,
    )
    table = pd.DataFrame({
        "annotator": people["respondent_id"].to_numpy(),
        "partyid": people["partyid"].to_numpy(),
        "inequality_aversion": people["inequality_aversion"].to_numpy(float),
    })
    labels = _group_column(people, group, "taxes_conjoint_respondents.csv")
    if labels is not None:
        frame["group"] = frame["annotator"].map(labels.set_axis(people["respondent_id"]))
    return Comparisons.from_frame(frame, annotators=table)


# ---------------------------------------------------------------------- Polis
def polis_votes(conversation: str, folder: str | Path | None = None) -> pd.DataFrame:
    """The final vote of every participant on every statement of a Polis conversation.

    Repeated votes by the same participant on the same statement keep the latest one (by
    timestamp); statements moderated out (``moderated == -1``) are dropped.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant``, ``statement`` (``"s<comment-id>"``), ``vote`` (1 agree, -1
        disagree, 0 pass) and ``group`` (Polis's own opinion group, ``"unclustered"`` for
        participants Polis did not place in one).
    """
    if conversation not in POLIS_CONVERSATIONS:
        raise PluralstanError(
            f"unknown Polis conversation {conversation!r}; available: {list(POLIS_CONVERSATIONS)}"
        )
    root = data_dir(folder) / "polis" / conversation
    votes = _read(root, "votes.csv")
    comments = _read(root, "comments.csv")
    people = _read(root, "participants-votes.csv", usecols=["participant", "group-id"])
    votes = votes.sort_values("timestamp", kind="stable").drop_duplicates(
        ["comment-id", "voter-id"], keep="last")
    kept = comments.loc[comments["moderated"] != -1, "comment-id"]
    votes = votes.loc[votes["comment-id"].isin(kept)]
    group = people.set_index("participant")["group-id"]
    group = group.map(lambda g: "unclustered" if pd.isna(g) else f"polis{int(g)}")
    out = pd.DataFrame({
        "participant": votes["voter-id"].to_numpy(),
        "statement": ["s" + str(c) for c in votes["comment-id"]],
        "vote": votes["vote"].to_numpy(int),
    })
    out["group"] = out["participant"].map(group).fillna("unclustered").to_numpy()
    return out.reset_index(drop=True)


def load_polis(
    conversation: str = "brexit-consensus",
    folder: str | Path | None = None,
    *,
    max_pairs: int | None = 30,
    min_pairs: int = 1,
    seed: int = 0,
) -> Comparisons:
    """Polis votes as within-participant pairwise comparisons.

    Construction: for each participant, every pair (s, t) of statements on which the
    participant voted *differently* among agree / disagree (agree on s, disagree on t) is a
    judgement "s preferred to t". Passes carry no order and are not used. Which of s and t
    is shown as ``item_a`` is decided by a fair coin (seeded), so ``y`` is balanced. A
    participant with ``n_agree`` and ``n_disagree`` votes yields ``n_agree * n_disagree``
    such pairs, built from only ``n_agree + n_disagree`` votes: the pairs are not independent
    judgements, so by default at most ``max_pairs`` pairs per participant are kept (a seeded
    random subset), which keeps the pseudo-likelihood from over-counting a participant's
    votes by a large factor. Participants with fewer than ``min_pairs`` pairs are dropped.

    Parameters
    ----------
    conversation
        ``"brexit-consensus"`` or ``"vtaiwan.uberx"``.
    folder
        Data folder (see :func:`data_dir`).
    max_pairs
        Cap on pairs per participant (``None``: all pairs).
    min_pairs
        Minimum number of pairs for a participant to be kept.
    seed
        Seed of the subsampling and of the side assignment.

    Returns
    -------
    Comparisons
        Items mode (reference: the first statement in sorted order), ``group`` = Polis's own
        opinion group (derived from the same votes: a reference, not an independent label).
    """
    if max_pairs is not None and max_pairs < 1:
        raise PluralstanError(f"max_pairs={max_pairs!r} must be a positive integer or None")
    votes = polis_votes(conversation, folder)
    rng = np.random.default_rng(seed)
    parts = []
    for pid, own in votes.groupby("participant", sort=True):
        agree = own.loc[own["vote"] == 1, "statement"].to_numpy()
        disagree = own.loc[own["vote"] == -1, "statement"].to_numpy()
        n = len(agree) * len(disagree)
        if n < min_pairs:
            continue
        idx = np.arange(n)
        if max_pairs is not None and n > max_pairs:
            idx = np.sort(rng.choice(n, size=max_pairs, replace=False))
        win, lose = agree[idx // len(disagree)], disagree[idx % len(disagree)]
        flip = rng.random(len(idx)) < 0.5
        parts.append(pd.DataFrame({
            "annotator": pid,
            "group": own["group"].iloc[0],
            "item_a": np.where(flip, lose, win),
            "item_b": np.where(flip, win, lose),
            "y": np.where(flip, 0.0, 1.0),
        }))
    if not parts:
        raise PluralstanError(
            f"Polis conversation {conversation!r} has no participant with {min_pairs} or more "
            "agree/disagree pairs"
        )
    return Comparisons.from_frame(pd.concat(parts, ignore_index=True))


# ---------------------------------------------------------------------- personas
_TOKEN = re.compile(r"[a-z][a-z']+")


def text_features(texts: Sequence[str], n_components: int = 16) -> np.ndarray:
    """Offline statement features: TF-IDF of word unigrams, reduced by truncated SVD.

    Written with SciPy / NumPy because no maintained library in this environment provides it
    without a model download (scikit-learn's ``TfidfVectorizer`` + ``TruncatedSVD`` compute
    the same thing). Tokens are lower-cased words of two or more letters; the TF-IDF rows
    are L2-normalised, and the features are the left singular vectors scaled by the singular
    values, then standardised per column.

    Parameters
    ----------
    texts
        The statements.
    n_components
        Number of SVD components kept.

    Returns
    -------
    numpy.ndarray
        ``(len(texts), n_components)`` features, deterministic for the same texts.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    tokens = [_TOKEN.findall(t.lower()) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted({w for ts in tokens for w in ts}))}
    if len(vocab) <= n_components or len(texts) <= n_components:
        raise PluralstanError(
            f"text_features needs more documents ({len(texts)}) and words ({len(vocab)}) than "
            f"n_components={n_components}"
        )
    rows = [i for i, ts in enumerate(tokens) for _ in ts]
    cols = [vocab[w] for ts in tokens for w in ts]
    tf = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(vocab)))
    tf.sum_duplicates()
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log((1 + len(texts)) / (1 + df)) + 1.0
    tfidf = tf.multiply(idf).tocsr()
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1))).ravel()
    tfidf = csr_matrix(tfidf.multiply(1.0 / np.maximum(norms, 1e-12)[:, None]))
    u, s, _ = svds(tfidf, k=n_components, random_state=0)
    order = np.argsort(s)[::-1]
    feats = u[:, order] * s[order]
    feats = feats * np.sign(feats.sum(axis=0, keepdims=True) + 1e-300)  # fix SVD sign
    return (feats - feats.mean(axis=0)) / feats.std(axis=0)


def load_personas(
    folder: str | Path | None = None,
    *,
    personas: Sequence[str] = ("politically-liberal", "politically-conservative"),
    users_per_persona: int = 50,
    pairs_per_user: int = 20,
    statements_per_persona: int = 100,
    beta: float = 3.0,
    n_components: int = 16,
    seed: int = 0,
) -> Comparisons:
    """Semi-synthetic users built from Anthropic persona statements (PAL-style), known groups.

    Construction (stated so group recovery can be scored):

    1. From each persona's file take ``statements_per_persona`` statements (seeded, half
       that the persona agrees with). The item pool is the union over the personas.
    2. A persona's stance on a statement is +1 if it agrees, -1 if not. On statements from
       another persona's file the stance is unknown, and is taken as the *opposite* of that
       persona's stance: so use personas that are opposites (the default liberal /
       conservative pair), for which this is the natural reading of the files.
    3. Each user belongs to one persona (``users_per_persona`` each) and judges
       ``pairs_per_user`` random pairs of distinct pool statements, preferring a with
       probability ``logistic(beta * (stance_a - stance_b) / 2)``; ``beta = 3`` gives about
       95% agreement with the persona on pairs that split it.
    4. Options are described by :func:`text_features` of the statements (``f0``, ``f1``, ...),
       so a linear preference over features must be learnt; ``truth["group"]`` holds every
       user's persona index and ``truth["stance"]`` the (persona x item) stances, both in
       the order of ``comps.group_levels`` (sorted persona names), and ``truth["features"]``
       the (item x feature) matrix.

    Returns
    -------
    Comparisons
        Attributes mode with ``a_f<j>`` / ``b_f<j>``, ``group`` = persona name and ``pair``
        = ``"<i>|<j>"``, the pool indices of the two statements (rows of
        ``truth["features"]``), for held-out-pair splits.
    """
    root = data_dir(folder)
    table = _read(root / "anthropic_persona", "persona_statements_subset.csv")
    unknown = [p for p in personas if p not in set(table["persona"])]
    if unknown:
        raise PluralstanError(
            f"persona {unknown[0]!r} is not in persona_statements_subset.csv; available: "
            f"{sorted(table['persona'].unique())}"
        )
    if len(personas) < 2:
        raise PluralstanError("load_personas needs at least two personas")
    rng = np.random.default_rng(seed)
    pool = []
    for p in personas:
        own = table.loc[table["persona"] == p]
        half = statements_per_persona // 2
        take = [own.loc[own["persona_agrees"] == v].sample(half, random_state=rng.integers(2**31))
                for v in (1, 0)]
        pool.append(pd.concat(take))
    pool = pd.concat(pool, ignore_index=True)
    # stance[k, i]: +1 agree, -1 disagree; opposite persona's file read as the mirror image
    own_stance = 2.0 * pool["persona_agrees"].to_numpy(float) - 1.0
    stance = np.array([np.where(pool["persona"] == p, own_stance, -own_stance)
                       for p in personas])
    feats = text_features(pool["statement"].tolist(), n_components)
    names = [f"f{j}" for j in range(n_components)]
    rows = []
    for k, p in enumerate(personas):
        for u in range(users_per_persona):
            a = rng.integers(len(pool), size=pairs_per_user)
            b = (a + rng.integers(1, len(pool), size=pairs_per_user)) % len(pool)
            prob = 1.0 / (1.0 + np.exp(-beta * (stance[k, a] - stance[k, b]) / 2.0))
            y = (rng.random(pairs_per_user) < prob).astype(float)
            rows.append(pd.DataFrame({"annotator": f"{p}#{u}", "group": p, "y": y,
                                      "pair": [f"{i}|{j}" for i, j in zip(a, b, strict=True)],
                                      "_a": a, "_b": b}))
    frame = pd.concat(rows, ignore_index=True)
    fa = pd.DataFrame(feats[frame["_a"]], columns=[f"a_{n}" for n in names])
    fb = pd.DataFrame(feats[frame["_b"]], columns=[f"b_{n}" for n in names])
    frame = pd.concat([frame.drop(columns=["_a", "_b"]), fa, fb], axis=1)
    # truth follows pluralstan's group coding (sorted labels, as Comparisons.codes("group"))
    levels = sorted(personas)
    group_index = pd.Index(levels).get_indexer(frame.drop_duplicates("annotator")["group"])
    truth = {"group": group_index.astype(np.int64),
             "stance": stance[[list(personas).index(p) for p in levels]],
             "features": feats}
    return Comparisons.from_frame(frame, truth=truth)


# ---------------------------------------------------------------------- audit helpers
def diagnostic_columns(idata: Any) -> dict[str, str]:
    """A fit's table columns for the audits' reports: ``diagnostics`` (its flag, or "ok") and
    ``notes`` (what a reader should know that is no failure: label switching resolved by
    relabelling, modes stacked and their weights)."""
    from . import diagnostics

    return {"diagnostics": diagnostics.flag(idata) or "ok",
            "notes": "; ".join(diagnostics.notes(idata))}


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Hubert & Arabie's adjusted Rand index of two labelings of the same items.

    Written by hand (a dozen lines) because scikit-learn, which provides
    ``adjusted_rand_score``, is not a dependency of pluralstan.
    """
    from scipy.special import comb

    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(table, (ia, ib), 1)
    pairs = comb(table, 2).sum()
    rows, cols = comb(table.sum(axis=1), 2).sum(), comb(table.sum(axis=0), 2).sum()
    expected = rows * cols / comb(len(a), 2)
    top = 0.5 * (rows + cols)
    return float((pairs - expected) / (top - expected)) if top != expected else 1.0

"""Loaders of the real data sets: contents against the data README, recoding, and errors.

The data live beside the repository (``../shared/data``) and are never copied into it; these
tests read them from there (or from ``$PLURALSTAN_DATA``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluralstan import realdata
from pluralstan.errors import PluralstanError

ROOT = realdata.data_dir()


# ---------------------------------------------------------------------- locating the folder
def test_missing_folder_names_the_path_and_the_variable(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(PluralstanError, match="nowhere") as err:
        realdata.load_cems(missing)
    assert realdata.ENV_VAR in str(err.value)


def test_environment_variable_is_used_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv(realdata.ENV_VAR, str(ROOT))
    assert realdata.data_dir() == ROOT
    monkeypatch.setenv(realdata.ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(PluralstanError, match=f"{realdata.ENV_VAR}=.*gone"):
        realdata.data_dir()


def test_missing_file_names_the_file(tmp_path):
    (tmp_path / "cems_choice_comparisons.csv").write_text(
        (ROOT / "cems_choice_comparisons.csv").read_text())
    with pytest.raises(PluralstanError, match=r"cems_choice_annotators\.csv"):
        realdata.load_cems(tmp_path)


def test_outcome_outside_the_convention_is_rejected(tmp_path):
    for name in ("german_parties_2009_comparisons.csv", "german_parties_2009_annotators.csv"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    frame = pd.read_csv(tmp_path / "german_parties_2009_comparisons.csv")
    frame.loc[7, "y"] = 2
    frame.to_csv(tmp_path / "german_parties_2009_comparisons.csv", index=False)
    with pytest.raises(PluralstanError, match="value 2 at row 7"):
        realdata.load_german_parties(tmp_path)


# ---------------------------------------------------------------------- CEMS
def test_cems_counts_match_the_readme():
    comps = realdata.load_cems()
    assert comps.n == 4454
    assert len(comps.annotator_levels) == 303
    assert int((comps.frame["y"] == 0.5).sum()) == 487
    assert comps.mode == "items" and comps.reference == "London"
    assert set(comps.item_levels) == {"London", "Paris", "Milano", "StGallen", "Barcelona",
                                      "Stockholm"}
    assert comps.annotators.shape == (303, 8)


def test_cems_recodes_outcomes_and_labels_groups():
    raw = pd.read_csv(ROOT / "cems_choice_comparisons.csv")
    comps = realdata.load_cems(group="work")
    expected = raw["y"].map({1: 1.0, -1: 0.0, 0: 0.5}).to_numpy()
    np.testing.assert_array_equal(comps.frame["y"].to_numpy(), expected)
    assert comps.group_levels == ("no", "yes")
    workers = comps.frame.drop_duplicates("annotator")["group"].eq("yes").sum()
    assert workers == 13  # students working full time
    assert realdata.load_cems(group=None).has_groups is False


def test_cems_unknown_group_column_is_named():
    with pytest.raises(PluralstanError, match=r"'salary'.*columns"):
        realdata.load_cems(group="salary")


def test_german_parties_counts():
    comps = realdata.load_german_parties(group="gender")
    assert comps.n == 2880 and len(comps.annotator_levels) == 192
    assert not comps.has_ties and comps.reference == "none"


# ---------------------------------------------------------------------- taxes
def test_taxes_missing_party_is_handled_explicitly():
    dropped = realdata.load_taxes()
    labelled = realdata.load_taxes(missing_party="label")
    assert labelled.n == 16000 and len(labelled.annotator_levels) == 2000
    n_unknown = labelled.frame.drop_duplicates("annotator")["group"].eq("Unknown").sum()
    assert n_unknown == 75  # the README says 60; the file has 75 missing partyid
    assert len(dropped.annotator_levels) == 2000 - 75 and dropped.n == 8 * (2000 - 75)
    assert dropped.group_levels == ("Democrat", "Independent", "Republican")
    with pytest.raises(PluralstanError, match="missing_party='impute'"):
        realdata.load_taxes(missing_party="impute")


def test_taxes_dummies_encode_each_plan():
    raw = pd.read_csv(ROOT / "taxes_conjoint_comparisons.csv")
    comps = realdata.load_taxes(missing_party="label")
    # one column per non-reference level: 4+4+4+4+5+6+5 levels minus 7 references
    assert len(comps.attributes) == 25
    assert not any(a.endswith(f"={realdata.TAX_REFERENCE[a.split('=')[0]]}")
                   for a in comps.attributes)
    row = raw.iloc[0]  # plan a: "<10k: 5%", "10-35k: 25%", ..., taxrev "95-105%"
    got = comps.frame.iloc[0]
    assert got["a_taxrate1=5%"] == 1 and got["b_taxrate1=5%"] == 0  # b is "<10k: 0%"
    assert got["a_taxrate2=25%"] == 1 and got["b_taxrate2=35%"] == 1
    assert row["taxrev_a"] == "95-105%"
    assert got[[f"a_{a}" for a in comps.attributes if a.startswith("taxrev")]].sum() == 0
    # every plan has exactly one level per attribute: at most one dummy set per attribute
    for attr in realdata.TAX_ATTRIBUTES:
        cols = [f"a_{a}" for a in comps.attributes if a.split("=")[0] == attr]
        assert comps.frame[cols].sum(axis=1).max() == 1
    np.testing.assert_allclose(comps.frame["y"].mean(), (raw["y"] == 1).mean())


# ---------------------------------------------------------------------- Polis
@pytest.mark.parametrize(("conversation", "votes", "voters"),
                         [("brexit-consensus", 5303, 204), ("vtaiwan.uberx", 49443, 1921)])
def test_polis_votes_match_the_readme(conversation, votes, voters):
    table = realdata.polis_votes(conversation)
    raw = pd.read_csv(ROOT / "polis" / conversation / "votes.csv")
    moderated_out = pd.read_csv(ROOT / "polis" / conversation / "comments.csv").query(
        "moderated == -1")["comment-id"]
    kept = raw.drop_duplicates(["comment-id", "voter-id"])
    assert len(kept) == votes and kept["voter-id"].nunique() == voters
    assert len(table) == votes - kept["comment-id"].isin(moderated_out).sum()
    assert not table.duplicated(["participant", "statement"]).any()


def test_polis_pairs_follow_the_stated_construction():
    votes = realdata.polis_votes("brexit-consensus").set_index(["participant", "statement"])
    comps = realdata.load_polis("brexit-consensus", max_pairs=12, seed=3)
    f = comps.frame
    winner = np.where(f["y"] == 1, f["item_a"], f["item_b"])
    loser = np.where(f["y"] == 1, f["item_b"], f["item_a"])
    assert (votes.loc[list(zip(f["annotator"], winner, strict=True)), "vote"] == 1).all()
    assert (votes.loc[list(zip(f["annotator"], loser, strict=True)), "vote"] == -1).all()
    assert f.groupby("annotator").size().max() == 12
    assert 0.4 < f["y"].mean() < 0.6  # sides assigned by a fair coin
    assert set(comps.group_levels) <= {"polis0", "polis1", "unclustered"}
    with pytest.raises(PluralstanError, match="unknown Polis conversation 'reddit'"):
        realdata.load_polis("reddit")


# ---------------------------------------------------------------------- personas
def test_text_features_are_deterministic_and_standardised():
    texts = pd.read_csv(ROOT / "anthropic_persona" / "persona_statements_subset.csv",
                        nrows=200)["statement"].tolist()
    a, b = realdata.text_features(texts, 8), realdata.text_features(texts, 8)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (200, 8)
    np.testing.assert_allclose(a.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(a.std(axis=0), 1, atol=1e-10)


def test_personas_users_follow_their_persona():
    comps = realdata.load_personas(users_per_persona=20, pairs_per_user=30, seed=1)
    assert comps.n == 2 * 20 * 30 and len(comps.annotator_levels) == 40
    np.testing.assert_array_equal(np.bincount(comps.truth["group"]), [20, 20])
    stance = comps.truth["stance"]
    k = pd.Index(comps.group_levels).get_indexer(comps.frame["group"])
    ia, ib = np.array([p.split("|") for p in comps.frame["pair"]], dtype=int).T
    split = stance[k, ia] != stance[k, ib]
    agrees = (comps.frame["y"].to_numpy() == 1) == (stance[k, ia] > stance[k, ib])
    # beta = 3: P(follow the persona | the pair splits it) = logistic(3) = 0.953
    assert 0.90 < agrees[split].mean() < 0.99
    with pytest.raises(PluralstanError, match="persona 'pirate'"):
        realdata.load_personas(personas=("pirate", "politically-liberal"))

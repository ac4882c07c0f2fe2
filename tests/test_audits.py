"""The real-data audit scripts in ``workflows/`` run in ``--quick`` mode and write their promises.

Each script is run once per module (in-process, through its ``main``) into a temporary folder;
the tests then check the content of its tables and figures.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluralstan import realdata

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
SCHOOLS = {"London", "Paris", "Milano", "StGallen", "Barcelona", "Stockholm"}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, WORKFLOWS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quick_run(name: str, tmp_path_factory) -> tuple:
    """Run a script's ``main`` in --quick mode (seed 3) into a fresh folder."""
    out = tmp_path_factory.mktemp(name)
    module = _script(name)
    assert module.main(["--quick", "--seed", "3", "--out", str(out)]) == 0
    return module, out


@pytest.fixture(scope="module")
def cems(tmp_path_factory):
    return _quick_run("audit_cems", tmp_path_factory)


@pytest.fixture(scope="module")
def taxes(tmp_path_factory):
    return _quick_run("audit_taxes", tmp_path_factory)


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


@pytest.mark.parametrize(("name", "extra"), [
    ("audit_cems", ("--models", "--K", "--groups")),
    ("audit_taxes", ("--models", "--K", "--per-party")),
    ("audit_polis", ("--conversation", "--max-pairs", "--K")),
    ("audit_personas", ("--models", "--users", "--shots")),
    ("audit_datasets", ("--datasets", "--K")),
])
def test_help_lists_the_options(name, extra, capsys):
    with pytest.raises(SystemExit) as done:
        _script(name).parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    shared = ("--quick", "--seed", "--out", "--data", "--chains", "--draws")
    assert all(opt in text for opt in shared + extra)


@pytest.mark.parametrize("name", ["audit_cems", "audit_taxes", "audit_personas"])
def test_unknown_model_is_a_usage_error_naming_it(name, capsys):
    with pytest.raises(SystemExit) as done:
        _script(name).parse_args(["--models", "aggregate,anotator"])
    assert done.value.code == 2
    assert "unknown model 'anotator'" in capsys.readouterr().err


def test_cems_abilities_match_the_ml_fits(cems):
    _, out = cems
    abil = pd.read_csv(out / "abilities.csv", index_col="item")
    assert set(abil.index) == SCHOOLS
    assert abil.loc["London", ["mean", "davidson_ml", "halfwin_ml"]].eq(0).all()
    numeric = abil[["mean", "sd", "davidson_ml", "davidson_se", "halfwin_ml"]].drop("London")
    assert np.isfinite(numeric.to_numpy()).all()
    check = pd.read_csv(out / "ml_crosscheck.csv", index_col=0)
    # the reference ML fits are certified maxima: estimated log-likelihood gap (Newton
    # decrement / 2) below 1e-12 of the log likelihood's scale (about 4,000 here), and a Newton
    # step (the estimated distance to the maximiser) far below the standard errors (about 0.08)
    for name in ("davidson", "halfwin"):
        assert check[f"{name}_ml_gap"].iloc[0] < 1e-12 * 4000
        assert check[f"{name}_ml_step"].iloc[0] < 1e-8
    # the posterior mean against the Davidson ML fit: the posterior sd of each ability is about
    # 0.08 and the prior (sd 2.5) negligible against 4,454 judgements; 0.05 logit leaves room
    # for the O(1/n) mean-vs-mode difference and the quick run's Monte Carlo error
    # (2 chains x 500 draws: MCSE about 0.004)
    assert (abil["mean"] - abil["davidson_ml"]).abs().max() < 0.05
    # and the posterior sd against the ML standard error: both are the curvature of the same
    # likelihood, so they agree to the Monte Carlo error of an sd (about 3% here) plus the
    # small prior; 15% would catch a posterior of the wrong width
    rel = (abil["sd"] / abil["davidson_se"]).drop("London")
    assert rel.between(0.85, 1.15).all(), rel
    # BradleyTerry2's documented route to the published table: half-win ML / 1.75 on the
    # log-linear (half-logit) scale agrees with Davidson ML / 2; an approximation, so 0.1
    gap = (abil["halfwin_ml"] / 1.75 - abil["davidson_ml"] / 2).abs().max()
    assert gap < 0.1
    # the well-known aggregate ranking: London first, Stockholm last
    assert abil["mean"].idxmax() == "London" and abil["mean"].idxmin() == "Stockholm"
    assert bool(check["within_tolerance"].iloc[0])
    assert abs(check["log_nu_posterior_mean"].iloc[0] - check["log_nu_ml"].iloc[0]) < 0.05


def test_cems_groups_and_figures(cems):
    _, out = cems
    groups = pd.read_csv(out / "by_group.csv")
    assert set(groups["covariate"]) == {"work"}
    assert set(zip(groups["group"], groups["item"], strict=True)) == {
        (g, s) for g in ("no", "yes") for s in SCHOOLS}
    assert groups.groupby("group")["students"].first().to_dict() == {"no": 290, "yes": 13}
    np.testing.assert_allclose(groups.groupby("group")["p_first"].sum(), 1.0)
    assert np.isfinite(groups[["mean", "q5", "q95"]].to_numpy()).all()
    # full-time workers like Paris far more than the others do (the known split)
    paris = groups.query("item == 'Paris'").set_index("group")["mean"]
    assert paris["yes"] > paris["no"]
    for name in ("abilities.png", "by_group.png"):
        _png(out / name)
    report = (out / "report.md").read_text()
    assert "## Aggregate abilities" in report and "## Headline" in report


def test_taxes_tables_have_the_promised_rows(taxes):
    _, out = taxes
    agg = pd.read_csv(out / "aggregate.csv", index_col="attribute")
    assert "40 respondents per party" in (out / "report.md").read_text()
    assert len(agg) == 25 and np.isfinite(agg[["mean", "sd", "q5", "q95"]].to_numpy()).all()
    party = pd.read_csv(out / "by_party.csv")
    assert party.groupby("fit").size().eq(25).all() and party["fit"].nunique() == 3
    assert np.isfinite(party[["mean", "q5", "q95"]].to_numpy()).all()
    _png(out / "effects.png")
    report = (out / "report.md").read_text()
    assert "disclosure report" in report and "75 respondents without one" in report
    latent = pd.read_csv(out / "latent.csv")  # --quick fits the latent model with K = 2
    assert list(zip(latent["model"], latent["K"], strict=True)) == [("annotator", 2)]
    assert np.isfinite(latent[["elpd_loo", "recovered_mean"]].to_numpy()).all()
    assert (latent["recovered_q5"] <= latent["recovered_mean"]).all()


# ---------------------------------------------------------------------- Polis
@pytest.fixture(scope="module")
def polis(tmp_path_factory):
    return _quick_run("audit_polis", tmp_path_factory)


def test_polis_statements_cover_the_pairs(polis):
    _, out = polis
    statements = pd.read_csv(out / "statements.csv")
    # the --quick construction: brexit, at most 15 pairs per participant, seed 3
    comps = realdata.load_polis("brexit-consensus", max_pairs=15, seed=3)
    assert set(statements["statement"]) == set(comps.item_levels)
    by_name = statements.set_index("statement")
    assert by_name.loc[str(comps.reference), ["ability", "sd"]].eq(0).all()
    assert np.isfinite(statements[["ability", "sd"]].to_numpy()).all()
    assert (by_name.drop(str(comps.reference))["sd"] > 0).all()
    assert statements["ability"].is_monotonic_decreasing  # best first, as the doc says
    _png(out / "types.png")


def test_polis_latent_table_has_each_K_and_a_valid_rand_index(polis):
    _, out = polis
    latent = pd.read_csv(out / "latent.csv")
    assert list(latent["K"]) == [1, 2]
    assert np.isfinite(latent[["elpd_loo", "se", "elpd_diff", "ari_vs_polis",
                               "mean_max_membership"]].to_numpy()).all()
    assert latent["ari_vs_polis"].between(-1, 1).all()
    assert latent.set_index("K").loc[1, "ari_vs_polis"] == 0  # one type: no partition
    assert latent["elpd_diff"].min() == 0  # compare_K's best model
    shares = latent["type_shares"].str.split(" / ").map(lambda s: sum(map(float, s)))
    np.testing.assert_allclose(shares, 1.0, atol=0.02)  # two-decimal rounding
    report = (out / "report.md").read_text()
    assert "## Headline" in report and "derived from the same votes" in report
    best = int(latent.loc[latent["elpd_diff"].idxmin(), "K"])
    assert re.search(rf"\|\s*K by LOO\s*\|\s*{best}\s*\|", report)


# ---------------------------------------------------------------------- personas
@pytest.fixture(scope="module")
def personas(tmp_path_factory):
    return _quick_run("audit_personas", tmp_path_factory)


def test_personas_accuracy_has_every_model_and_split(personas):
    _, out = personas
    table = pd.read_csv(out / "accuracy.csv")
    models = ("aggregate", "annotator", "pal")
    assert set(zip(table["model"], table["split"], strict=True)) == {
        (m, s) for m in models for s in ("seen", "unseen", "few-shot")}
    assert table["accuracy"].between(0, 1).all() and np.isfinite(table["accuracy"]).all()
    # every model is scored on the same judgements of each split; few-shot reuses the unseen
    # users' test judgements
    counts = table.pivot(index="model", columns="split", values="judgements")
    assert (counts.nunique() == 1).all() and (counts > 0).all().all()
    assert (counts["unseen"] == counts["few-shot"]).all()
    # the aggregate model ignores the revealed pairs, so its unseen and few-shot agree exactly
    agg = table.query("model == 'aggregate'").set_index("split")["accuracy"]
    assert agg["unseen"] == agg["few-shot"]
    # the true probabilities' accuracy depends on the judgements only, not on the model
    assert table.groupby("split")["oracle_accuracy"].nunique().eq(1).all()
    assert table["oracle_accuracy"].between(0.5, 1).all()  # half credit for indifference
    _png(out / "accuracy.png")


def test_personas_group_recovery_is_a_rand_index(personas):
    _, out = personas
    table = pd.read_csv(out / "accuracy.csv")
    ari = table.dropna(subset=["ari_train_users"])
    latent = ("annotator", "pal")
    assert list(zip(ari["model"], ari["split"], strict=True)) == [(m, "seen") for m in latent]
    assert ari["ari_train_users"].between(-1, 1).all()
    report = (out / "report.md").read_text()
    assert "## Held-out accuracy" in report and "## Diagnostics" in report


def test_personas_ari_per_draw_is_label_invariant(personas):
    module, _ = personas
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 10)
    alloc = rng.dirichlet([1, 1], size=(5, 20))  # (draws, users, K)
    swapped = alloc[:, :, ::-1]
    np.testing.assert_allclose(module.ari_per_draw(alloc, truth),
                               module.ari_per_draw(swapped, truth))
    perfect = np.stack([np.eye(2)[truth]] * 3)
    np.testing.assert_allclose(module.ari_per_draw(perfect, truth), 1.0)


def test_personas_report_lists_every_split_whose_diagnostics_differ():
    # PAL's few-shot new-user fits can fail while its training fit passes: the report must not
    # show only the first row of a model
    module = _script("audit_personas")
    table = pd.DataFrame({
        "model": ["aggregate"] * 2 + ["pal"] * 3,
        "split": ["seen", "unseen", "seen", "unseen", "few-shot"],
        "diagnostics": ["ok", "ok", "ok", "ok", "R-hat 1.021 > 1.01 for w[3, 1]"],
    }).set_index(["model", "split"])
    assert module.diagnostics_lines(table) == [
        "* aggregate: ok", "* pal, seen: ok", "* pal, unseen: ok",
        "* pal, few-shot: R-hat 1.021 > 1.01 for w[3, 1]"]


def test_audit_datasets_writes_a_report_and_a_verdict_card(tmp_path):
    # the quick version on one data set: the report of pluralstan.audit and the collected card
    out = tmp_path / "datasets"
    assert _script("audit_datasets").main(["--quick", "--datasets", "german_parties",
                                           "--out", str(out)]) == 0
    card = (out / "verdicts.md").read_text()
    assert "## german_parties ([report](german_parties/report.html)): K = " in card
    assert all(f"| {n}. " in card for n in range(1, 5))
    summary = json.loads((out / "german_parties" / "audit.json").read_text())
    assert summary["data"]["annotators"] == 192 and summary["K"]["fitted"] == [1, 2]
    assert "interviewer" not in summary["data"]["annotator_covariates"]

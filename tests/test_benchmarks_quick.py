"""The benchmark harness runs end to end (``benchmarks/run.py --quick``) and reports what it claims.

No timing assertions: benchmark numbers live in the table the harness writes, not in tests. What
is asserted is the table's content: every target produces its rows, the comparisons carry ratios,
the sufficient-statistic and per-row programs reach the same posterior, and the outputs (CSV,
Markdown, machine description) are written.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "benchmarks" / "run.py"

#: Largest difference of two runs' posterior means, in combined Monte Carlo SEs, that this test
#: accepts as "same posterior" (stated here, not taken from the harness). When both runs sample
#: the same posterior, each coordinate's standardised difference is approximately standard
#: normal; a row compares at most 18 coordinates (theta 3 x 5 and pi 3) and the quick table has
#: at most 19 such rows (2 in target 1, 2 x 2 peers in target 2, 2 cmdstanpy rows in target
#: ``engines``, 2 repetitions x 3 runs in ``ahead``, 2 in ``geometry``, 3 in ``whiten``), so
#: by Bonferroni P(some |z| > 4) <= 342 x P(|Z| > 4) = 342 x 6.3e-5 < 0.022.
#: A posterior that differs by half a posterior sd shows as about 0.5 sqrt(ESS / 2) combined
#: MCSEs, above 4 from ESS 130 on.
SAME_POSTERIOR_Z = 4.0

pytestmark = pytest.mark.slow


def agreement_z(note: str) -> float:
    """The harness's 'max |mean diff| = z MCSE' figure from a row's note."""
    found = re.search(r"max \|mean diff\| = ([0-9.]+) MCSE", note)
    assert found, f"no posterior comparison in note {note!r}"
    return float(found.group(1))


def gradient_measured(row: pd.Series) -> bool:
    """A Stan gradient time is positive, or at quick sizes below the timing resolution and said so.

    Stan's is a difference of two sampling runs' wall times (``stan_gradient_seconds``), which
    can come out at or below zero for a cheap model on a loaded machine; the row must then say so.
    """
    grad = float(row["grad_ms"])
    return grad > 0 or "gradient below timing resolution" in row["note"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[pd.DataFrame, Path, str]:
    """Run the quick harness once for every test in this module."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_csv(out / "benchmarks.csv", keep_default_na=False), out, done.stdout


def test_every_target_has_rows_and_outputs_are_written(quick):
    table, out, stdout = quick
    targets = {t.split()[0] for t in table["target"]}
    assert targets == {"1", "2", "3", "4", "6", "sparse", "flags", "input", "audit", "engines",
                       "ahead", "geometry", "whiten", "realdata", "search", "laplace"}
    assert (out / "benchmarks.md").read_text().count("\n| ") == len(table) + 1  # header + rows
    info = json.loads((out / "machine.json").read_text())
    assert info["cores"] >= 1 and info["cpu"] and "pystan" in info["stan engine"]
    assert "Machine: cpu" in stdout and "ratio" in stdout


def test_sufficient_statistics_rows_compare_same_posterior(quick):
    table, _, _ = quick
    t1 = table[table["target"].str.startswith("1")]
    engines = list(t1["engine"])
    assert engines == ["naive per-row Stan (bpcs style)", "pluralstan aggregate (cells)",
                       "naive per-row labeled Stan", "pluralstan labeled (cells)"]
    compressed = t1[t1["engine"].str.startswith("pluralstan")]
    # each sufficient-statistic fit is scored against its naive twin, on the same posterior
    assert list(compressed["ratio_is"]) == ["aggregate / naive ESS/s", "labeled / naive ESS/s"]
    assert (pd.to_numeric(compressed["ratio"]) > 0).all()
    assert all(agreement_z(note) <= SAME_POSTERIOR_Z for note in compressed["note"])
    # the compressed program really receives fewer rows than judgements
    cells = compressed["note"].str.extract(r"^(\d+) binomial cells")[0].astype(int)
    assert (cells < pd.to_numeric(compressed["n"])).all()


def test_peer_rows_are_measured_or_skipped_with_a_reason(quick):
    table, _, _ = quick
    t2 = table[table["target"].str.startswith("2")]
    for model in ("aggregate", "annotator"):
        rows = t2[t2["case"].str.startswith(model)].set_index("engine")
        ours = rows.loc[f"pluralstan {model} (PyStan)"]
        assert float(ours["ess_per_s"]) > 0 and gradient_measured(ours)
        assert float(ours["grads_per_draw"]) >= 1 and float(ours["ess_per_kgrad"]) > 0
        for peer in ("numpyro", "pymc"):
            row = rows.loc[peer]
            if importlib.util.find_spec(peer) is None:
                assert row["note"].startswith("skipped:") and "not installed" in row["note"]
                continue
            assert row["ratio_is"] == f"pluralstan / {peer} ESS/s"
            expected = float(ours["ess_per_s"]) / float(row["ess_per_s"])
            assert np.isclose(float(row["ratio"]), expected, rtol=0.01, atol=0.01)
            assert float(row["grad_ms"]) > 0
            assert agreement_z(row["note"]) <= SAME_POSTERIOR_Z
    # the annotator model is also timed with membership kept
    rows = t2[t2["case"].str.startswith("annotator")].set_index("engine")
    full, lean = rows.loc["pluralstan annotator (PyStan), membership kept"], rows.loc[
        "pluralstan annotator (PyStan)"]
    assert full["ratio_is"] == "ESS/s with membership output / without"
    assert np.isclose(float(full["ratio"]),
                      float(full["ess_per_s"]) / float(lean["ess_per_s"]), rtol=0.01, atol=0.01)


def test_engine_rows_compare_cmdstanpy_with_pystan_or_say_why_not(quick):
    """Issue 22: a cmdstanpy row beside PyStan's for the annotator and labeled models; with a
    CmdStan it carries the ESS/s ratio and reaches the same posterior, without one it is
    skipped with the reason."""
    from pluralstan.engine import cmdstan_available

    table, _, _ = quick
    rows = table[table["target"] == "engines"]
    for model in ("annotator", "labeled"):
        ours = rows[rows["engine"] == f"pluralstan {model} (PyStan)"].iloc[0]
        other = rows[rows["engine"] == f"pluralstan {model} (cmdstanpy)"].iloc[0]
        assert float(ours["ess_per_s"]) > 0
        if not cmdstan_available():
            assert other["note"].startswith("skipped:") and "CmdStan" in other["note"]
            continue
        assert other["ratio_is"] == "cmdstanpy / PyStan ESS/s"
        assert np.isclose(float(other["ratio"]),
                          float(other["ess_per_s"]) / float(ours["ess_per_s"]), rtol=0.01,
                          atol=0.01)
        assert agreement_z(other["note"]) <= SAME_POSTERIOR_Z


def test_ahead_rows_repeat_every_engine_against_numpyro(quick):
    """Issue 21, goal 3: each repetition runs both NumPyro programs, every pluralstan engine
    and PyStan started as the audit starts (mode search counted, shorter warm-up); a
    pluralstan row's ratio is its ESS/s over the sufficient-statistics NumPyro
    program's in the same repetition, the two NumPyro programs sample the same posterior as
    pluralstan, and the summary row per engine is the median of those ratios, scored against 1
    for the cells program, with their range."""
    from pluralstan.engine import cmdstan_available

    table, _, _ = quick
    rows = table[table["target"] == "ahead of NumPyro"]
    if importlib.util.find_spec("numpyro") is None:
        assert len(rows) == 1 and "not installed" in rows["note"].iloc[0]
        return
    engines = ["PyStan"] + (["cmdstanpy"] if cmdstan_available() else [])
    engines.append("PyStan, the audit's start")
    for engine in engines:
        runs = rows[rows["engine"] == f"pluralstan annotator ({engine})"]
        assert len(runs) == 2  # QUICK.ahead_repeats
        ratios = []
        for rep, (_, row) in enumerate(runs.iterrows(), start=1):
            theirs = rows[(rows["engine"] == "numpyro (cells)")
                          & rows["note"].str.startswith(f"repetition {rep} of 2")].iloc[0]
            expected = float(row["ess_per_s"]) / float(theirs["ess_per_s"])
            assert np.isclose(float(row["ratio"]), expected, rtol=0.01, atol=0.01)
            assert agreement_z(row["note"]) <= SAME_POSTERIOR_Z
            assert "/ numpyro (per judgement) ESS/s" in row["note"]
            if engine.endswith("the audit's start"):
                # QUICK.ahead_draws = 100 warm-up iterations, below the audit's MODE_WARMUP
                assert re.search(r"mode search [0-9.]+ s \(\d+ mode\(s\) from 6 starts, "
                                 r"counted\), 100 warm-up iterations", row["note"]), row["note"]
            ratios.append(float(row["ratio"]))
        summary = rows[rows["engine"] == f"pluralstan annotator ({engine}) vs numpyro (cells)"]
        summary = summary.iloc[0]
        assert np.isclose(float(summary["ratio"]), np.median(ratios), atol=0.011)
        assert summary["meets"] == ("yes" if float(summary["ratio"]) >= 1 else "no")
        assert summary["note"].startswith("range ")
        other = rows[rows["engine"] == f"pluralstan annotator ({engine}) vs numpyro "
                     "(per judgement)"].iloc[0]
        assert other["goal"] == "" and other["note"].startswith("range ")


def test_geometry_rows_compare_centrings_on_the_same_posterior(quick):
    """Issue 21, goal 2: each labeled design is fitted non-centred, with data-chosen centring
    and in the conditional parametrisation (whole and low-rank pilot information); each later
    row's ratio is its ESS/s over the first's, every row reports divergences, tree depth and
    the centring weight (0 for the non-centred and conditional fits), and the
    parametrisations of one model reach the same posterior."""
    table, _, _ = quick
    rows = table[table["target"] == "geometry"]
    names = ["auto", "conditional", "conditional-low-rank"]
    assert list(rows["engine"]) == [f"pluralstan labeled ({name})"
                                    for name in ["non-centred", *names]]
    ref = rows.iloc[0]
    for row in (ref, rows.iloc[2], rows.iloc[3]):
        assert re.search(r"\d+ divergences, mean tree depth [0-9.]+, mean centring weight 0.00",
                         row["note"])
    weight = float(re.search(r"mean centring weight ([0-9.]+)", rows.iloc[1]["note"]).group(1))
    assert 0 <= weight <= 1
    for name, other in zip(names, (rows.iloc[i] for i in (1, 2, 3)), strict=True):
        assert other["ratio_is"] == f"{name} / non-centred ESS/s"
        assert np.isclose(float(other["ratio"]),
                          float(other["ess_per_s"]) / float(ref["ess_per_s"]), rtol=0.01,
                          atol=0.01)
        assert agreement_z(other["note"]) <= SAME_POSTERIOR_Z


def test_whiten_rows_compare_the_qr_basis_on_the_same_posterior(quick):
    """Issue 21, goal 1: each fit of the simulated conjoint (aggregate, annotator types, and
    the types observed as groups, unpooled) is made sampling theta itself and in the design's
    whitened basis; the second row's ratio is its ESS/s over the first's, both
    report divergences and tree depth, and the two parametrisations reach the same
    posterior."""
    table, _, _ = quick
    rows = table[table["target"] == "whiten"]
    fits = ["aggregate", "annotator K = 2", "labeled by group, unpooled"]
    assert list(rows["case"].str.split("; ").str[-1]) == [fit for fit in fits for _ in "ab"]
    for model, pair in zip(("aggregate", "annotator", "labeled"),
                           (rows.iloc[:2], rows.iloc[2:4], rows.iloc[4:]), strict=True):
        ref, white = pair.iloc[0], pair.iloc[1]
        assert [ref["engine"], white["engine"]] == [f"pluralstan {model} (theta)",
                                                     f"pluralstan {model} (whitened)"]
        assert all(re.search(r"\d+ divergences, mean tree depth [0-9.]+", note)
                   for note in (ref["note"], white["note"]))
        assert white["ratio_is"] == "whitened / theta ESS/s"
        assert np.isclose(float(white["ratio"]),
                          float(white["ess_per_s"]) / float(ref["ess_per_s"]), rtol=0.01,
                          atol=0.01)
        assert agreement_z(white["note"]) <= SAME_POSTERIOR_Z


def test_observed_groups_keep_their_order_when_chains_are_compared():
    """The per-chain relabelling that puts latent mixture components in one order is not
    applied to observed groups: a labeled fit whose second group has the larger first
    coefficient keeps group 0 as group 0 in every chain."""
    from benchmarks.run import Run, posterior_of

    theta = np.zeros((2, 4, 2, 3))  # (chain, draw, group, attribute)
    theta[:, :, 1, 0] = 1.0
    stats = {"diverging": np.zeros((2, 4), dtype=bool)}
    latent = posterior_of(Run("latent", {"theta": theta}, stats, 1.0))
    observed = posterior_of(Run("labeled", {"theta": theta}, stats, 1.0, observed_labels=True))
    np.testing.assert_array_equal(observed.posterior["theta"].values, theta)
    # latent components are put in decreasing order of their first coefficient
    np.testing.assert_array_equal(latent.posterior["theta"].values, theta[:, :, ::-1])


def test_scaling_rows_cover_every_size_and_memory(quick):
    table, _, _ = quick
    t3 = table[table["target"].str.startswith("3")]
    sizes = t3[t3["case"].str.startswith("N = ")]
    assert list(pd.to_numeric(sizes["n"])) == [100, 300]
    assert all(gradient_measured(row) for _, row in sizes.iterrows())
    # the growth ratio is reported whenever both gradient times are measurable
    if (pd.to_numeric(sizes["grad_ms"]) > 0).all():
        assert sizes["ratio"].iloc[0] == "" and float(sizes["ratio"].iloc[1]) > 0
    memory = t3[t3["case"].str.startswith("peak memory")].iloc[0]
    assert 0 < float(memory["ratio"]) < 2
    # the benchmark's annotator fits skip the per-annotator log likelihood, as the peers do
    assert "no log_likelihood stored" in memory["note"] and "'log_lik': False" in memory["note"]
    # the gradient-only profile: every size, each relative to the smallest when measurable
    profile = t3[t3["case"].str.startswith("gradient only")]
    assert list(pd.to_numeric(profile["n"])) == [100, 200, 300]
    assert profile["note"].str.contains("us per judgement").all()
    for _, row in profile.iloc[1:].iterrows():
        if float(row["grad_ms"]) > 0 and float(profile["grad_ms"].iloc[0]) > 0:
            expected = (float(row["grad_ms"]) / float(row["n"])) / (
                float(profile["grad_ms"].iloc[0]) / float(profile["n"].iloc[0]))
            assert np.isclose(float(row["ratio"]), expected, rtol=0.02, atol=0.01)
    # the scaling exponent is the least-squares slope of log gradient time on log N
    measured = profile[pd.to_numeric(profile["grad_ms"]) > 0]
    exponent = t3[t3["case"].str.startswith("gradient time ~ N^b")]
    if len(measured) >= 3:
        slope = np.polyfit(np.log(pd.to_numeric(measured["n"])),
                           np.log(pd.to_numeric(measured["grad_ms"])), 1)[0]
        row = exponent.iloc[0]
        assert np.isclose(float(row["ratio"]), slope, atol=0.02)  # grad_ms is rounded
        low, high = map(float, row["note"].removeprefix("90% interval [").rstrip("]").split(", "))
        assert low <= float(row["ratio"]) <= high
        assert row["meets"] == ("yes" if float(row["ratio"]) <= 1 else "no")
    else:
        assert exponent.empty


def test_overhead_and_thread_rows(quick):
    table, _, _ = quick
    t4 = table[table["target"].str.startswith("4")].set_index("case")
    overhead = t4.loc["warm re-run of a fit"]
    assert overhead["ratio_is"] == "seconds before sampling starts"
    assert float(overhead["ratio"]) >= 0
    assert t4.loc["high_conflict.py", "note"].startswith("skipped")
    t6 = table[table["target"].str.startswith("6")]
    assert list(t6["engine"]) == ["naive_bt", "naive_bt_reduce_sum"]
    assert t6["note"].str.contains("CPU s per wall s").all()


def test_design_form_rows_time_both_forms_of_each_design(quick):
    table, _, _ = quick
    rows = table[table["target"].str.startswith("sparse")]
    # pluralstan picks the sparse form for the item design and the dense one for attributes
    assert list(rows["case"]) == ["12 items"] * 2 + ["5 attributes (target 2 data)"] * 2
    assert list(rows["engine"]) == ["sparse (compressed rows) design", "dense design",
                                    "dense design", "sparse (compressed rows) design"]
    assert list(rows["note"].str.split(";").str[0]) == ["chosen by pluralstan", "forced"] * 2
    assert all(gradient_measured(row) for _, row in rows.iterrows())
    for _, pair in rows.groupby("case"):
        chosen, forced = pair.iloc[0], pair.iloc[1]
        if float(chosen["grad_ms"]) > 0 and float(forced["grad_ms"]) > 0:
            assert np.isclose(float(forced["ratio"]),
                              float(forced["grad_ms"]) / float(chosen["grad_ms"]), rtol=0.02)


def test_compile_flag_rows_time_the_three_builds(quick):
    from pluralstan.engine import STANC_OPTIONS, pystan_compile_args

    table, _, _ = quick
    rows = table[table["target"].str.startswith("flags")].set_index("engine")
    builds = ["httpstan's flags", "pluralstan's flags", "pluralstan's flags and stanc options"]
    assert list(rows.index) == builds
    notes = rows["note"].str.split("; ")  # then the per-draw output cost
    ours = " + ".join(["httpstan's own", *pystan_compile_args()])
    assert list(notes.str[0]) == ["httpstan's own", ours, ours]
    stanc = "stanc httpstan's own"
    assert list(notes.str[1]) == [stanc, stanc, " ".join([stanc, *STANC_OPTIONS])]
    assert rows["note"].str.contains("ms per draw").all()
    assert all(gradient_measured(row) for _, row in rows.iterrows())
    grad = pd.to_numeric(rows["grad_ms"])
    for before, build in pairwise(builds):
        if grad[before] > 0 and grad[build] > 0:
            assert rows.loc[build, "ratio_is"] == f"gradient time: {before} / these"
            assert np.isclose(float(rows.loc[build, "ratio"]), grad[before] / grad[build],
                              rtol=0.02, atol=0.01)


def test_search_rows_time_one_process_against_worker_processes(quick):
    table, _, _ = quick
    rows = table[table["target"] == "search"]
    assert list(rows["case"]) == ["target 2 data, annotator K = 2"] * 2
    one, side = rows.iloc[0], rows.iloc[1]
    assert one["engine"] == "mode search, one process"
    assert re.fullmatch(r"mode search, \d+ worker processes", side["engine"])
    assert one["note"] == side["note"] and side["note"].endswith("the same modes: yes")
    assert float(one["seconds"]) > 0 and float(side["seconds"]) > 0
    assert side["ratio_is"] == "seconds: one process / worker processes"
    assert np.isclose(float(side["ratio"]), float(one["seconds"]) / float(side["seconds"]),
                      rtol=0.02, atol=0.01)


def test_laplace_rows_count_every_leapfrog_step_of_both_runs(quick):
    """The two runs of one fit, from the same mode: the ratio is all leapfrog steps (warm-up
    and draws, read back from the notes) with unit scales over those with Laplace scales, and
    the draws' steps give the gradients per draw."""
    table, _, _ = quick
    rows = table[table["target"] == "laplace"]
    assert list(rows["case"]) == ["target 2 data, annotator K = 2"] * 2
    assert list(rows["engine"]) == ["PyStan, mode search, unit scales",
                                    "PyStan, mode search, Laplace scales"]
    steps = []
    for _, row in rows.iterrows():
        found = re.search(r"in the warm-up (\d+), in the draws (\d+)", row["note"])
        warmup, draws = int(found.group(1)), int(found.group(2))
        saved = float(row["chains"]) * float(row["draws"])
        assert warmup > 0 and draws >= saved
        assert np.isclose(float(row["grads_per_draw"]), draws / saved, atol=0.05)
        assert float(row["min_ess_bulk"]) > 0
        steps.append(warmup + draws)
    laplace = rows.iloc[1]
    assert laplace["ratio_is"] == "leapfrog steps: unit scales / Laplace scales"
    assert np.isclose(float(laplace["ratio"]), steps[0] / steps[1], rtol=1e-3)


def test_audit_row_times_the_whole_command(quick):
    table, _, _ = quick
    row = table[table["target"] == "audit"].iloc[0]
    assert float(row["seconds"]) > 0 and row["goal"] == "< 5"
    assert row["meets"] in ("yes", "no") and re.match(r"K chosen \d", row["note"])


def test_realdata_row_audits_a_real_data_set_in_its_own_process(quick):
    """Goal 1's row: the German parties audit (the script's ``--quick``: K = 1, 2) ran to its
    report, with its wall time, the peak memory of its process and the goal scored on both."""
    table, _, _ = quick
    rows = table[(table["target"] == "realdata") & table["case"].str.startswith("german")]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["case"] == "german_parties: 2880 judgements by 192 annotators, K = 1, 2"
    assert float(row["chains"]) == 2 and float(row["draws"]) == 200
    assert float(row["seconds"]) > 0 and row["goal"] == "< 15 min and < 2 GB"
    peak = float(re.search(r"peak memory ([0-9.]+) GB", row["ratio_is"]).group(1))
    assert 0.1 < peak < 24  # a Python process with NumPy and PyStan loaded; the machine's RAM
    assert row["meets"] == ("yes" if float(row["seconds"]) < 900 and peak < 2 else "no")
    # where the time went: each stored fit's gradients per draw and mean tree depth, read from
    # its sampler statistics (a tree of depth d takes at least 2^(d - 1) leapfrog steps)
    geometry = re.search(r"gradients per draw \(mean tree depth\): ([^;]*)", row["note"])
    assert geometry, row["note"]
    fits = {name: (float(g), float(d))
            for name, g, d in re.findall(r"(\w+) ([0-9.]+) \(([0-9.]+)\)", geometry.group(1))}
    assert {"annotator_K1", "annotator_K2"} <= set(fits)
    assert all(g >= 2 ** (d - 1) - 0.05 and d >= 1 for g, d in fits.values()), fits
    assert re.match(r"K chosen [12] by ", row["note"]) and "sampling s per fit: " in row["note"]


def test_realdata_personas_row_times_the_persona_audit(quick):
    """Goal 1 for ``workflows/audit_personas.py`` (its ``--quick``): the script ran to its
    accuracy table in a process of its own; its wall time and peak memory are scored against
    the goal, and the note gives every model's seen / unseen / few-shot accuracy."""
    table, _, _ = quick
    rows = table[(table["target"] == "realdata") & table["case"].str.startswith("personas")]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert "FAILED" not in row["note"], row["note"]
    # the script's --quick: 20 users per persona x 30 pairs, 2 chains x 300 draws
    assert row["case"] == "personas (workflows/audit_personas.py): 1200 judgements"
    assert float(row["chains"]) == 2 and float(row["draws"]) == 300
    peak = float(re.search(r"peak memory ([0-9.]+) GB", row["ratio_is"]).group(1))
    assert 0.1 < peak < 24
    assert row["meets"] == ("yes" if float(row["seconds"]) < 900 and peak < 2 else "no")
    for model in ("aggregate", "annotator", "pal"):
        found = re.search(rf"{model} seen ([0-9.]+), unseen ([0-9.]+), few-shot ([0-9.]+)",
                          row["note"])
        assert found, (model, row["note"])
        assert all(0 <= float(a) <= 1 for a in found.groups())

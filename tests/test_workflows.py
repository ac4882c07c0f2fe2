"""The paper-reproduction scripts in ``workflows/`` run in ``--quick`` mode and keep their promises.

Each script runs once per module as a subprocess (as a user or CI runs it; the scripts that fan
fits out to a process pool need their job functions importable from ``__main__``) into a
temporary folder. The tests then read its tables and figures: the promised rows are there, the
numbers are finite and inside the ranges the model implies, and every figure is a non-empty PNG.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEED = 7


def run_script(name: str, out: Path, *extra: str) -> str:
    """Run ``workflows/<name>.py --quick`` and return what it printed on stdout."""
    cmd = [sys.executable, str(WORKFLOWS / f"{name}.py"), "--quick", "--seed", str(SEED),
           "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-4000:]}"
    return done.stdout


def assert_png(path: Path) -> None:
    """The figure exists, is a PNG and has content."""
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def assert_tables(out: Path, name: str) -> pd.DataFrame:
    """CSV and Markdown are both written; return the CSV."""
    assert (out / f"{name}.md").read_text().startswith("|")
    return pd.read_csv(out / f"{name}.csv")


def finite(series: pd.Series) -> bool:
    return bool(np.isfinite(series.to_numpy(float)).all())


# --------------------------------------------------------------------------- high_conflict.py
@pytest.fixture(scope="module")
def high_conflict(tmp_path_factory):
    out = tmp_path_factory.mktemp("high_conflict")
    return run_script("high_conflict", out), out


def test_high_conflict_table1(high_conflict):
    stdout, out = high_conflict
    table = assert_tables(out, "table1")
    assert list(table["method"]) == ["point estimate (paper)", "aggregate", "labeled",
                                     "unlabeled", "annotator", "paper (Table 1)"]
    fitted = table.iloc[:2]
    assert finite(fitted["norm"]) and (fitted["norm"] >= 0).all()
    assert "paper (Table 1)" in stdout
    masking = assert_tables(out, "masking")
    assert set(masking["target"]) == {"observed", "truth"}
    ratio = masking[masking["quantity"] == "ratio"]
    assert finite(ratio[["lower", "median", "upper"]]) and (ratio["lower"] > 0).all()
    assert (ratio["lower"] <= ratio["median"]).all() and (ratio["median"] <= ratio["upper"]).all()
    # high conflict: the aggregate fit masks the groups (ratio far above 1 against the truth),
    # the labeled mixture does not (it predicts each group with its own theta)
    agg = ratio[(ratio["method"] == "aggregate") & (ratio["target"] == "truth")]["median"]
    lab = ratio[(ratio["method"] == "labeled") & (ratio["target"] == "truth")]["median"]
    assert float(agg.iloc[0]) > 5 * float(lab.iloc[0])
    for fig in ("forest.png", "masking.png"):
        assert_png(out / fig)


def _ml_bt(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the logistic BT maximum-likelihood fit with SciPy, and its
    standard errors from the observed information."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    res = minimize(lambda t: -(y * log_expit(X @ t) + (1 - y) * log_expit(-X @ t)).sum(),
                   np.zeros(X.shape[1]), jac=lambda t: -X.T @ (y - expit(X @ t)),
                   method="BFGS", options={"gtol": 1e-10})
    p = expit(X @ res.x)
    return res.x, np.sqrt(np.diag(np.linalg.inv((X * (p * (1 - p))[:, None]).T @ X)))


def _high_conflict_data():
    """The --quick run's judgements, rebuilt from the seed: (design, y, group, pair) of the
    training rows, the held-out table, the design builder and the full table."""
    import pluralstan as ps
    from pluralstan.checks import split_pairs

    comps = ps.simulate.high_conflict(n_pairs=60, n_annotators=30, seed=SEED)
    train, test = split_pairs(comps, 0.25, seed=SEED)

    def design(frame: pd.DataFrame) -> np.ndarray:
        return np.stack([frame[f"a_{a}"] - frame[f"b_{a}"] for a in comps.attributes], axis=1)

    f = train.frame
    return design(f), f["y"].to_numpy(float), f["group"].to_numpy(int), f["pair"].to_numpy(), \
        test, design, comps


def test_high_conflict_fits_agree_with_independent_ml_fits(high_conflict):
    """The aggregate, labeled and annotator rows against SciPy ML fits of the same training
    judgements (pooled; per subgroup). Criteria: each posterior mean within 0.5 posterior sd
    of the ML estimate (the N(0, 2.5) priors and partial pooling shift it by far less), and
    each posterior sd (from the 90% interval, / 3.29) within 25% of the ML standard error
    (2 x 300 draws; a posterior that ignored the data would be many times wider)."""
    _, out = high_conflict
    X, y, group, *_ = _high_conflict_data()
    theta = pd.read_csv(out / "theta.csv")
    references = {"(pooled)": _ml_bt(X, y)} | {str(k): _ml_bt(X[group == k], y[group == k])
                                              for k in (0, 1)}
    for model in ("aggregate", "labeled", "annotator"):
        rows = theta[theta["model"] == model]
        fitted = {g: (part["mean"].to_numpy(), (part["q95"] - part["q05"]).to_numpy() / 3.29)
                  for g, part in rows.groupby("group", sort=True)}
        # latent types carry no subgroup names: pair them with the subgroups by distance
        names = sorted(fitted)
        refs = ["(pooled)"] if model == "aggregate" else min(
            (["0", "1"], ["1", "0"]),
            key=lambda o: sum(np.sum((fitted[n][0] - references[r][0]) ** 2)
                              for n, r in zip(names, o, strict=True)))
        for name, ref in zip(names, refs, strict=True):
            (mean, sd), (ml, se) = fitted[name], references[ref]
            assert np.all(np.abs(mean - ml) < 0.5 * sd), (model, name, mean, ml, sd)
            assert np.all(np.abs(sd / se - 1) < 0.25), (model, name, sd, se)


def test_high_conflict_masking_ratio_matches_a_hand_computation(high_conflict):
    """The paper pipeline's row, recomputed by hand: theta by least squares of the pooled
    training frequencies (SciPy), then on the held-out pairs the squared errors against the
    truth (each group's probability; pooled = their pi-weighted mean) and against the observed
    frequencies, and the ratio sum_k w_k group_error_k / aggregate_error with w_k the group's
    share of the held-out judgements. Criterion: agreement to 1e-4 (relative)."""
    from scipy.optimize import least_squares
    from scipy.special import expit

    _, out = high_conflict
    X, y, _, train_pairs, test, design, comps = _high_conflict_data()
    # every judgement of a pair has the same options a and b (no reversed presentations)
    _, first = np.unique(train_pairs, return_index=True)
    freq = pd.Series(y).groupby(train_pairs).mean().loc[train_pairs[first]].to_numpy()
    theta = least_squares(lambda t: expit(X[first] @ t) - freq, np.zeros(X.shape[1]),
                          xtol=1e-14, ftol=1e-14, gtol=1e-14).x
    f = test.frame
    Xt, yt, gt = design(f), f["y"].to_numpy(float), f["group"].to_numpy(int)
    pairs = f["pair"].to_numpy()
    _, first_t = np.unique(pairs, return_index=True)
    p_hat = expit(Xt[first_t] @ theta)
    p_true = expit(Xt[first_t] @ np.asarray(comps.truth["theta"]).T)  # (pair, group)
    w = np.bincount(gt) / len(gt)
    order = pairs[first_t]
    observed_pooled = pd.Series(yt).groupby(pairs).mean().loc[order].to_numpy()
    observed_group = np.stack([pd.Series(yt[gt == k]).groupby(pairs[gt == k]).mean()
                               .loc[order].to_numpy() for k in (0, 1)], axis=1)
    expected = {
        "truth": (w * ((p_hat[:, None] - p_true) ** 2).mean(0)).sum()
        / ((p_hat - p_true @ np.asarray(comps.truth["pi"])) ** 2).mean(),
        "observed": (w * ((p_hat[:, None] - observed_group) ** 2).mean(0)).sum()
        / ((p_hat - observed_pooled) ** 2).mean(),
    }
    masking = pd.read_csv(out / "masking.csv")
    point = masking[(masking["method"] == "point estimate (paper)")
                    & (masking["quantity"] == "ratio")].set_index("target")["median"]
    for target, value in expected.items():
        assert point[target] == pytest.approx(value, rel=1e-4), target


# --------------------------------------------------------------------------- diversity_sweep.py
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("diversity_sweep")
    return run_script("diversity_sweep", out, "--workers", "2"), out


def test_sweep_has_every_setting_with_ordered_intervals(sweep):
    stdout, out = sweep
    table = assert_tables(out, "sweep")
    # --quick promises nu in {0, 1}, sigma in {0, 1.5, 3}, both targets, 2 replicates each
    keys = set(zip(table["nu"], table["sigma"], table["target"], strict=True))
    assert keys == {(nu, s, t) for nu in (0.0, 1.0) for s in (0.0, 1.5, 3.0)
                    for t in ("observed", "truth")}
    assert (table["replicates"] == 2).all()
    for name in ("ratio", "aggregate_mse", "group_0_mse", "group_1_mse"):
        cols = table[[f"{name}_lower", f"{name}_median", f"{name}_upper"]]
        assert finite(cols) and (cols.to_numpy() >= 0).all()
        assert (cols.diff(axis=1).iloc[:, 1:].to_numpy() >= 0).all()
    # squared errors of probabilities lie in [0, 1]
    assert (table[[c for c in table if "mse" in c]].to_numpy() <= 1).all()
    # homogeneous population (nu = 0, sigma = 0): group truth = pooled truth, ratio exactly 1
    homo = table[(table["nu"] == 0) & (table["sigma"] == 0) & (table["target"] == "truth")]
    np.testing.assert_allclose(homo[["ratio_lower", "ratio_upper"]].to_numpy(), 1.0)
    # observed target: the noise floor of two equal groups is about K = 2
    floor = table.loc[table["target"] == "observed", "noise_floor"]
    assert ((floor > 1.5) & (floor < 2.5)).all()
    # the paper's two numbers are printed beside ours
    obs = table[table["target"] == "observed"].set_index(["nu", "sigma"])["paper_ratio"]
    assert obs.loc[(0.0, 0.0)] == 1.08 and obs.loc[(0.0, 3.0)] == 4.32
    assert "noise_floor" in stdout


def test_sweep_replicates_and_figure(sweep):
    _, out = sweep
    reps = assert_tables(out, "replicates")
    assert len(reps) == 2 * 3 * 2 * 2  # nu x sigma x replicate x target
    assert finite(reps["masking_ratio"]) and (reps["masking_ratio"] > 0).all()
    # sigma = 0: the two true thetas are exactly +nu and -nu, 2 * nu * sqrt(5) apart
    zero = reps[reps["sigma"] == 0]
    np.testing.assert_allclose(zero["theta_distance"], 2 * zero["nu"] * np.sqrt(5))
    assert_png(out / "figure2.png")


# --------------------------------------------------------------------------- identifiability.py
@pytest.fixture(scope="module")
def identifiability(tmp_path_factory):
    out = tmp_path_factory.mktemp("identifiability")
    return run_script("identifiability", out, "--workers", "2"), out


def test_identifiability_table(identifiability):
    stdout, out = identifiability
    table = assert_tables(out, "identifiability").set_index("design")
    anonymous = "(a) anonymous, unlabeled mixture"
    labeled = "(b) subgroup labels, labeled mixture"
    assert list(table.index) == [anonymous, "(c) annotator model, m = 3",
                                 "(c) annotator model, m = 20", "(d) covariate model, m = 1",
                                 labeled]
    # the same number of judgements in every design
    assert table["judgements"].nunique() == 1
    np.testing.assert_array_equal(table["annotators"] * [1, 3, 20, 1, 1], table["judgements"])
    cols = ["theta contraction (mean)", "theta contraction (min)", "pi contraction",
            "theta RMSE", "|E pi_1 - pi_1|"]
    assert finite(table[cols])
    assert (table[["theta contraction (mean)", "pi contraction"]] <= 1).all().all()
    assert (table["theta RMSE"] >= 0).all() and (table["|E pi_1 - pi_1|"] <= 1).all()
    # the central result: labels identify theta_k, anonymous pooled judgements do not
    assert (table.loc[labeled, "theta contraction (mean)"]
            > table.loc[anonymous, "theta contraction (mean)"] + 0.2)
    assert table.loc[labeled, "theta RMSE"] < table.loc[anonymous, "theta RMSE"]
    assert "judgements per design" in stdout


def test_identifiability_detail_and_figure(identifiability):
    _, out = identifiability
    detail = assert_tables(out, "contraction")
    # per design: 2 x 5 theta coordinates and 2 pi entries
    counts = detail.groupby(["design", "variable"]).size().unstack()
    assert (counts["theta"] == 10).all() and (counts["pi"] == 2).all()
    assert finite(detail[["prior_sd", "post_sd", "post_mean", "truth"]])
    assert ((detail["truth"] >= -1) & (detail["truth"] <= 2)).all()
    assert_png(out / "identifiability.png")


# --------------------------------------------------------------------------- prior_sensitivity.py
@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior_sensitivity")
    return run_script("prior_sensitivity", out), out


def test_pi_grid(sensitivity):
    _, out = sensitivity
    summary = assert_tables(out, "pi_grid")
    assert list(zip(summary["model"], summary["pi assumed"], strict=True)) == [
        (m, p) for m in ("labeled", "unlabeled") for p in ("(0.50, 0.50)", "(0.30, 0.70)",
                                                           "(0.70, 0.30)")]
    detail = assert_tables(out, "pi_grid_detail")
    assert len(detail) == 2 * 3 * 2 * 5  # models x grid x groups x attributes
    assert finite(detail[["mean", "sd", "shift", "shift_sd"]])
    reference = detail[detail["grid"] == "pi=(0.50, 0.50)"]
    np.testing.assert_allclose(reference["shift"], 0.0, atol=1e-12)
    # labeled model: pi ~ Dirichlet(100 pi_0) and the 15 + 15 annotator labels give the
    # conjugate posterior Dirichlet(100 pi_0 + (15, 15)), mean (100 pi_0 + 15) / 130
    lab = summary[summary["model"] == "labeled"]
    pi1 = lab["E[pi] posterior"].str.strip("()").str.split(",").str[0].astype(float)
    assumed = lab["pi assumed"].str.strip("()").str.split(",").str[0].astype(float)
    np.testing.assert_allclose(pi1, (100 * assumed + 15) / 130, atol=0.015)


def test_power_scaling_and_figure(sensitivity):
    stdout, out = sensitivity
    ps_table = assert_tables(out, "power_scaling")
    assert ps_table.groupby("model").size().to_dict() == {"labeled": 12, "unlabeled": 12}
    assert finite(ps_table[["prior", "likelihood"]])
    assert (ps_table[["prior", "likelihood"]].to_numpy() >= 0).all()
    assert "Power scaling" in stdout
    assert_png(out / "prior_sensitivity.png")


# --------------------------------------------------------------------------- sbc.py
@pytest.fixture(scope="module")
def sbc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sbc")
    return run_script("sbc", out, "--workers", "2"), out


def test_sbc_summary_covers_every_model(sbc_run):
    stdout, out = sbc_run
    summary = assert_tables(out, "sbc_summary")
    models = ("aggregate", "labeled", "unlabeled", "annotator", "covariate", "pal")
    assert set(summary["model"]) == set(models)
    assert (summary["n_failed"] == 0).all() and (summary["n_sims"] == 10).all()
    # every model also ranks the simulated data's log likelihood (cell-level or per annotator)
    assert set(summary.loc[summary["quantity"] == "log_lik", "model"]) == set(models)
    # mixture components with latent labels are ranked as order statistics
    assert "theta[(1), x1]" in set(summary.loc[summary["model"] == "unlabeled", "quantity"])
    pal_quantities = set(summary.loc[summary["model"] == "pal", "quantity"])
    assert {"L_M[0, 0]", "theta[(2), x2]", "w[0, (1)]", "beta[5, x2]"} <= pal_quantities
    assert "L_M[0, 1]" not in pal_quantities  # the zero upper triangle tests nothing
    assert finite(summary[["ecdf_max_diff", "chi2_p"]])
    assert summary["chi2_p"].between(0, 1).all() and (summary["ecdf_max_diff"] >= 0).all()
    ranks = pd.read_csv(out / "sbc_ranks.csv")
    assert ranks["rank"].between(0, ranks["max_rank"]).all()
    for model in models:
        assert f"SBC of model '{model}'" in stdout
        for kind in ("ranks", "ecdf_diff"):
            assert_png(out / f"sbc_{model}_{kind}.png")


# --------------------------------------------------------------------------- disclosure.py
@pytest.fixture(scope="module")
def disclosure(tmp_path_factory):
    out = tmp_path_factory.mktemp("disclosure")
    return run_script("disclosure", out), out


def test_disclosure_report(disclosure):
    stdout, out = disclosure
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for heading in ("## 1. Subgroup composition", "## 2. Within-subgroup posteriors",
                    "## 3. Identification gap (masking ratio)",
                    "## 4. Prior sensitivity over the assumed mixture pi"):
        assert heading in md
    assert "NOT PERFORMED" not in md  # the pi grid was run
    assert "data:image/png;base64," in page
    summary = assert_tables(out, "summary")
    assert {"composition", "within", "masking", "sensitivity"} <= set(summary["table"])
    assert "report written to" in stdout

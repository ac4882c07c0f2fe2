"""What identifies subgroup preferences: one population, five ways of collecting its judgements.

The population is the paper's high-conflict example (K = 2, d = 5, theta_1 = (2, 2, 0, -1, -1),
theta_2 = (-1, -1, 0, 2, 2), pi = (0.5, 0.5)). The same number N of judgements (N = 3000;
600 with --quick) on the same kind of option pairs (attributes Uniform(0, 1)^5) is collected as

(a) anonymous pooled judgements, one per annotator, fitted by the unlabeled 2-mixture
    (Proposition 1's setting: what an RLHF preference set offers);
(b) the same judgements with each annotator's subgroup label, fitted by the labeled 2-mixture;
(c) m judgements per annotator (N / m annotators), m = 1, 2, 3, 5, 20 (--quick: 3, 20; m = 1
    carries the information of (a) and is the slowest fit), fitted by the
    annotator-level latent-type model. Latent-class theory (Allman, Matias & Rhodes 2009)
    identifies a nonparametric 2-class mixture from three conditionally independent views per
    person and not from two; here the parametric BT model ties the views together through
    theta, and the table shows how many views it needs in practice;
(d) one judgement per annotator plus an annotator covariate that predicts the type
    (P(type 2 | w) = logistic(3 w), w ~ N(0, 1)), fitted by the covariate model.

Every fit also samples its prior (``sample_prior=True``), latent-component fits come back
relabelled (``ps.fit`` does it) and their components are matched to the true groups (least
squared distance of the posterior means). Reported per design: posterior contraction
1 - Var_post / Var_prior of every theta_k coordinate and of pi
(:func:`pluralstan.checks.contraction`), the RMSE of the posterior mean of theta against the
truth and the absolute error of E[pi_1], with each fit's diagnostic flag.

Outputs in --out: ``identifiability.{csv,md}`` (headline: one row per design),
``contraction.{csv,md}`` (one row per parameter and design), ``identifiability.png``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pluralstan.outputs import run_script, save_figure, script_parser, step, write_table
from pluralstan.parallel import Job, run_jobs

#: Softmax coefficients of design (d): reference type 0, type 1 with slope 3 on the covariate.
COVARIATE_BETA = np.array([[0.0, 0.0], [0.0, 3.0]])


def designs(m_values: tuple[int, ...]) -> list[dict]:
    """The designs, in display order (least to most information about the types)."""
    out = [{"design": "(a) anonymous, unlabeled mixture", "model": "unlabeled", "m": 1}]
    out += [{"design": f"(c) annotator model, m = {m}", "model": "annotator", "m": m}
            for m in m_values]
    out += [{"design": "(d) covariate model, m = 1", "model": "covariate", "m": 1},
            {"design": "(b) subgroup labels, labeled mixture", "model": "labeled", "m": 1}]
    return out


def simulate_design(model: str, m: int, n_judgements: int, n_pairs: int, seed: int):
    """The judgements of one design (same population, same total ``n_judgements``)."""
    import pluralstan as ps
    from pluralstan.models import covariate

    theta = ps.simulate.HIGH_CONFLICT_THETA
    n_annotators = n_judgements // m
    if model == "covariate":
        return covariate.simulate(theta, COVARIATE_BETA, n_annotators=n_annotators,
                                  n_pairs=n_pairs, pairs_per_annotator=m, seed=seed)
    comps = ps.simulate.mixture(theta, [0.5, 0.5], n_pairs=n_pairs, n_annotators=n_annotators,
                                pairs_per_annotator=m, seed=seed)
    if model == "labeled":
        return comps
    # Latent designs: the fit must not see the labels (kept only as truth).
    frame = comps.frame.drop(columns="group")
    return ps.Comparisons.from_frame(frame, truth=comps.truth)


def fit_design(model: str, m: int, n_judgements: int, n_pairs: int, seed: int,
               sampler: dict) -> pd.DataFrame:
    """Simulate, fit (with prior draws), relabel, and return the contraction table (a job)."""
    import pluralstan as ps
    from pluralstan.checks import contraction
    from pluralstan.relabel import match_components

    comps = simulate_design(model, m, n_judgements, n_pairs, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)  # recorded in the flag instead
        idata = ps.fit(model, comps, K=2, seed=seed, sample_prior=True, **sampler)
    post_theta = idata.posterior["theta"].mean(("chain", "draw")).to_numpy()
    # true group of every fitted component (least squares)
    order = match_components(np.asarray(comps.truth["theta"]), post_theta)
    truth = {"theta": np.asarray(comps.truth["theta"])[order],
             "pi": np.asarray(comps.truth["pi"])[order]}
    table = contraction(idata, ["theta", "pi"], truth=truth)
    return table.assign(n_judgements=comps.n, n_annotators=comps.frame["annotator"].nunique())


def summarise(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per design: contraction of theta (mean, min) and pi, errors, z, diagnostics."""
    rows = []
    for design, t in tables.items():
        th, pi = t[t["variable"] == "theta"], t[t["variable"] == "pi"]
        rows.append({
            "design": design,
            "judgements": int(t["n_judgements"].iloc[0]),
            "annotators": int(t["n_annotators"].iloc[0]),
            "theta contraction (mean)": th["contraction"].mean(),
            "theta contraction (min)": th["contraction"].min(),
            "pi contraction": pi["contraction"].mean(),
            "theta RMSE": float(np.sqrt(((th["post_mean"] - th["truth"]) ** 2).mean())),
            "theta post sd (mean)": th["post_sd"].mean(),
            "|E pi_1 - pi_1|": float(abs(pi["post_mean"] - pi["truth"]).iloc[0]),
            "max |z| theta": float(th["z"].abs().max()),
            "diagnostics": t["flag"].iloc[0] or "ok",
        })
    return pd.DataFrame(rows)


def figure(summary: pd.DataFrame, detail: pd.DataFrame, out) -> None:
    """Contraction and error by design: one row of the figure per design, read at a glance."""
    y = np.arange(len(summary))[::-1]
    fig, (ax_c, ax_e) = plt.subplots(1, 2, figsize=(13, 0.55 * len(summary) + 2.2),
                                     sharey=True, gridspec_kw={"width_ratios": [1.4, 1]})
    rng = np.random.default_rng(0)
    for yi, design in zip(y, summary["design"], strict=True):
        t = detail[detail["design"] == design]
        th = t[t["variable"] == "theta"]["contraction"].to_numpy()
        ax_c.scatter(th, yi + rng.uniform(-0.12, 0.12, th.size), s=12, color="C0", alpha=0.5,
                     label="theta_k coordinates" if yi == y[0] else None)
        ax_c.plot(th.mean(), yi, "D", color="C0", ms=8,
                  label="theta mean" if yi == y[0] else None)
        pi = t[t["variable"] == "pi"]["contraction"].mean()
        ax_c.plot(pi, yi, "s", color="C3", ms=8, label="pi" if yi == y[0] else None)
    ax_c.axvline(0, color="0.5", lw=0.8, ls=":")
    ax_c.axvline(1, color="0.5", lw=0.8, ls=":")
    ax_c.set_xlim(min(-0.1, float(detail["contraction"].min()) - 0.05), 1.05)
    ax_c.set_xlabel("posterior contraction 1 - Var_post / Var_prior  (0: prior only, 1: pinned)")
    ax_c.set_yticks(y, [f"{d}" + ("  [!]" if f != "ok" else "")
                        for d, f in zip(summary["design"], summary["diagnostics"], strict=True)])
    ax_c.legend(fontsize=8, loc="lower left")
    ax_c.set_title("How much the data identify theta_k and pi")
    ax_e.barh(y, summary["theta RMSE"], color="C0", alpha=0.7, label="RMSE of E[theta] vs truth")
    ax_e.plot(summary["theta post sd (mean)"], y, "k|", ms=14, mew=2, label="mean posterior sd")
    ax_e.set_xlabel("theta error (same units as theta; truth spans -1 .. 2)")
    ax_e.legend(fontsize=8, loc="lower right")
    ax_e.set_title("Error of the posterior mean")
    n = int(summary["judgements"].iloc[0])
    fig.suptitle(f"High-conflict population, about {n} judgements in every design; "
                 "[!] = fit failed a diagnostic check (see table)", fontsize=10)
    save_figure(fig, out / "identifiability.png")


def main(argv: list[str] | None = None) -> int:
    """Fit every design and print the identifiability table."""
    parser = script_parser(__doc__.split("\n\n")[0], "results/identifiability")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel fits (default: number of cores)")
    args = parser.parse_args(argv)
    if args.quick:
        n_judgements, n_pairs, m_values = 600, 40, (3, 20)
        sampler = {"chains": 2, "draws": 200, "warmup": 200}
    else:
        n_judgements, n_pairs, m_values = 3000, 200, (1, 2, 3, 5, 20)
        sampler = {"chains": 4, "draws": 500, "warmup": 500}
    specs = designs(m_values)
    jobs = [Job(f"design{i}", fit_design,
                {"model": s["model"], "m": s["m"], "n_judgements": n_judgements,
                 "n_pairs": n_pairs, "seed": args.seed + i, "sampler": sampler},
                seed=args.seed + i) for i, s in enumerate(specs)]
    with step(f"{len(jobs)} designs (fits with prior draws)"):
        report = run_jobs(jobs, out_dir=args.out / "jobs", n_workers=args.workers,
                          desc="identifiability")
    report.raise_failures()
    values = report.values()
    tables = {s["design"]: values[j.key] for s, j in zip(specs, jobs, strict=True)}
    detail = pd.concat([t.assign(design=d) for d, t in tables.items()], ignore_index=True)
    summary = summarise(tables)
    out = args.out
    write_table(summary, out, "identifiability")
    write_table(detail, out, "contraction")
    figure(summary, detail, out)
    print(f"Identifiability by design: high-conflict population, {n_judgements} judgements per "
          f"design on {n_pairs} option pairs")
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    print(f"\ntables and figure written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

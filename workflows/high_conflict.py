"""Table 1 of the position paper: the K = 2, d = 5 high-conflict example.

Population: theta_1 = (2, 2, 0, -1, -1), theta_2 = (-1, -1, 0, 2, 2), pi = (0.5, 0.5); 200
option pairs with attributes Uniform(0, 1)^5; 100 annotators (50 per subgroup), each judging
every pair (20,000 judgements). A quarter of the pairs is held out.

Fitted on the training pairs:

* the paper's own pipeline - one theta by gradient descent on the MSE between predicted and
  observed pooled preference frequency (a point estimate);
* the aggregate Bayesian BT model (pooled data: what RLHF fits);
* the labeled 2-mixture (subgroup labels observed: identification route (i));
* the unlabeled 2-mixture on pooled judgements (Proposition 1's setting: not identified);
* the annotator-level latent-type model (200 judgements per annotator: "paired" data).

For each: theta (posterior), the aggregate and per-group MSE on held-out pairs and the masking
ratio (within-group / aggregate error) with 90% intervals, against the observed held-out
frequencies and against the true probabilities. Nothing is tuned to match the paper: its values
are printed beside ours.

Outputs in --out: ``table1.{csv,md}`` (headline), ``theta.{csv,md}``, ``masking.{csv,md}``,
``contraction.{csv,md}``, ``forest.png``, ``masking.png``.
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

import pluralstan as ps
from pluralstan import diagnostics
from pluralstan.checks import (
    central_interval,
    contraction,
    masking_ratio,
    point_estimate_theta,
    split_pairs,
    summarize_masking,
)
from pluralstan.outputs import run_script, save_figure, script_parser, step, write_table
from pluralstan.plots import plot_forest_by_group

#: The paper's Table 1, for side-by-side reporting (not used in any computation).
PAPER = {"theta_agg": "(.05, .03, .05, .04, .00)", "norm": 0.09, "aggregate_mse": 0.008,
         "group_mse": (0.065, 0.060), "ratio": "~8"}

MODELS = ("aggregate", "labeled", "unlabeled", "annotator")
LATENT = ("unlabeled", "annotator")


def fit_all(train: ps.Comparisons, sampler: dict, seed: int) -> dict:
    """Fit the four models (mixtures with K = 2); ``ps.fit`` relabels the latent mixtures."""
    fits = {}
    for name in MODELS:
        with step(f"fitting {name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.DiagnosticWarning)  # recorded on the fit instead
            K = None if name == "aggregate" else 2
            # the annotator model's y_rep has one cell per annotator and pair (15,000 here):
            # the table needs no replicated data, and skipping it makes sampling ~9x faster
            options = {"replicate": False} if name == "annotator" else {}
            fits[name] = ps.fit(name, train, K=K, seed=seed, sample_prior=True, **sampler,
                                **options)
    return fits


def masking_tables(fits: dict, point, test: ps.Comparisons) -> pd.DataFrame:
    """Masking summaries of every fit against observed and true held-out probabilities."""
    frames = []
    for target in ("observed", "truth"):
        for label, fit in [("point estimate (paper)", point), *fits.items()]:
            summary = summarize_masking(masking_ratio(fit, test, target=target))
            summary.insert(0, "method", label)
            frames.append(summary)
    return pd.concat(frames, ignore_index=True)


def _cell(masking: pd.DataFrame, method: str, target: str, quantity: str, group=None) -> str:
    rows = masking[(masking["method"] == method) & (masking["target"] == target)
                   & (masking["quantity"] == quantity)]
    if group is not None:
        # the summary's group column is float (NaN on pooled rows): compare as labels
        rows = rows[rows["group"].map(lambda v: str(v).removesuffix(".0")) == str(group)]
    r = rows.iloc[0]
    if r["lower"] == r["upper"]:
        return f"{r['median']:.4f}"
    return f"{r['median']:.4f} [{r['lower']:.4f}, {r['upper']:.4f}]"


def headline(fits: dict, point, masking: pd.DataFrame, groups: list) -> pd.DataFrame:
    """Table 1: theta_agg, its norm, aggregate / group MSE and masking ratio per method."""
    rows = []
    agg = fits["aggregate"].posterior["theta"]
    entries = [("point estimate (paper)", point.values, ""),
               ("aggregate", agg.mean(("chain", "draw")).values,
                diagnostics.flag(fits["aggregate"]))]
    entries += [(name, None, diagnostics.flag(fits[name])) for name in MODELS[1:]]
    for method, theta, flag in entries:
        row = {"method": method,
               "theta_agg": "" if theta is None else "(" + ", ".join(f"{v:.2f}" for v in theta)
               + ")",
               "norm": np.nan if theta is None else float(np.linalg.norm(theta))}
        for target in ("observed", "truth"):
            row[f"aggregate MSE ({target})"] = _cell(masking, method, target, "aggregate_error")
            for g in groups:
                row[f"group {g} MSE ({target})"] = _cell(masking, method, target, "group_error", g)
            row[f"masking ratio ({target})"] = _cell(masking, method, target, "ratio")
        row["diagnostics"] = flag or "ok"
        rows.append(row)
    rows.append({"method": "paper (Table 1)", "theta_agg": PAPER["theta_agg"],
                 "norm": PAPER["norm"], "aggregate MSE (observed)": str(PAPER["aggregate_mse"]),
                 **{f"group {g} MSE (observed)": str(v)
                    for g, v in zip(groups, PAPER["group_mse"], strict=False)},
                 "masking ratio (observed)": PAPER["ratio"], "diagnostics": ""})
    return pd.DataFrame(rows)


def theta_table(fits: dict) -> pd.DataFrame:
    """Posterior mean and 90% interval of theta for every fit (groups after relabelling)."""
    frames = []
    for name, idata in fits.items():
        interval = central_interval(idata.posterior["theta"], 0.9)
        frame = interval.to_dataframe().reset_index().rename(
            columns={"lower": "q05", "upper": "q95"})
        frame.insert(0, "model", name)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    if "group" in out:
        out["group"] = out["group"].fillna("(pooled)")
    return out


def figures(fits: dict, masking: pd.DataFrame, truth: dict, out) -> None:
    """Forest plot of theta per model and the masking-ratio intervals."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.5), sharex=True)
    for i, (ax, name) in enumerate(zip(axes, MODELS[1:], strict=True)):
        plot_forest_by_group(fits[name], truth=truth, reference=fits["aggregate"], ax=ax)
        failed = " [diagnostics failed: see table1.md]" if diagnostics.failed(fits[name]) else ""
        ax.set_title(f"{name} 2-mixture{failed}", fontsize=10,
                     color="firebrick" if failed else "black")
        if i < 2 and ax.get_legend() is not None:  # one legend, on the last panel
            ax.get_legend().remove()
    fig.suptitle("High-conflict population: subgroup posteriors (90% / 50% intervals), "
                 "truth marked, aggregate posterior in grey")
    fig.tight_layout()
    save_figure(fig, out / "forest.png")

    ratio = masking[masking["quantity"] == "ratio"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, target in enumerate(("observed", "truth")):
        sub = ratio[ratio["target"] == target].reset_index(drop=True)
        y = np.arange(len(sub)) + (0.2 if i else -0.2)
        ax.errorbar(sub["median"], y, xerr=[sub["median"] - sub["lower"],
                                           sub["upper"] - sub["median"]],
                    fmt="o", capsize=3, label=f"vs {target} probabilities")
    ax.set_yticks(np.arange(len(sub)), sub["method"])
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.axvline(1.5, color="firebrick", lw=0.8, ls="--", label="disclosure threshold 1.5")
    ax.set_xscale("log")
    ax.set_xlabel("masking ratio = within-group MSE / aggregate MSE (held-out pairs, log scale)")
    ax.legend(fontsize=8)
    ax.set_title("Masking ratio with 90% posterior intervals")
    save_figure(fig, out / "masking.png")


def main(argv: list[str] | None = None) -> int:
    """Run the high-conflict experiment and print Table 1."""
    parser = script_parser(__doc__.split("\n\n")[0], "results/high_conflict")
    args = parser.parse_args(argv)
    if args.quick:
        n_pairs, n_annotators, sampler = 60, 30, {"chains": 2, "draws": 300, "warmup": 300}
    else:
        n_pairs, n_annotators, sampler = 200, 100, {"chains": 4, "draws": 1000, "warmup": 1000}
    comps = ps.simulate.high_conflict(n_pairs=n_pairs, n_annotators=n_annotators, seed=args.seed)
    train, test = split_pairs(comps, 0.25, seed=args.seed)
    with step("paper pipeline (MSE point estimate)"):
        point = point_estimate_theta(train)
    fits = fit_all(train, sampler, args.seed)
    masking = masking_tables(fits, point, test)
    groups = [str(g) for g in comps.group_levels]
    table = headline(fits, point, masking, groups)
    out = args.out
    write_table(table, out, "table1")
    write_table(theta_table(fits), out, "theta")
    write_table(masking, out, "masking")
    contr = pd.concat([contraction(f, ["theta"]).assign(model=n) for n, f in fits.items()],
                      ignore_index=True)
    write_table(contr, out, "contraction")
    figures(fits, masking, comps.truth, out)
    print(f"High-conflict example: {comps.n} judgements ({len(train.frame)} train / "
          f"{len(test.frame)} held out), {n_pairs} pairs, {n_annotators} annotators")
    cols = ["method", "theta_agg", "norm", "aggregate MSE (observed)",
            *[f"group {g} MSE (observed)" for g in groups], "masking ratio (observed)",
            "masking ratio (truth)", "diagnostics"]
    print(table[cols].to_markdown(index=False, floatfmt=".3f"))
    print(f"\ntables and figures written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

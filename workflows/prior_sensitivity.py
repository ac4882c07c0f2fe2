"""Item four of the disclosure standard on the high-conflict data: prior sensitivity.

Data: the paper's high-conflict population (K = 2, d = 5, theta_1 = (2, 2, 0, -1, -1),
theta_2 = (-1, -1, 0, 2, 2), pi = (0.5, 0.5); 200 pairs x 100 annotators; --quick: 60 x 30).

(a) **pi grid** (the paper's item four). The labeled and the unlabeled 2-mixture are refitted
with pi ~ Dirichlet(100 * pi_0) for assumed compositions pi_0 in {(0.5, 0.5), (0.3, 0.7),
(0.7, 0.3), (0.1, 0.9)} (:func:`pluralstan.checks.pi_grid_sensitivity`); reported is how far the
posterior mean of every theta_k coordinate moves from its value under pi_0 = (0.5, 0.5), in
units of theta and of the reference posterior sd. Unlabeled fits (relabelled by ``ps.fit``)
have their components matched to the true groups first, so that "group 0" means the same thing
at every grid point (for the unlabeled model the assumed pi_0 = (0.3, 0.7) and (0.7, 0.3) differ
only by the labels, so after matching they can show the same fit with pi reversed). With labels,
pi is learned from the label counts and theta_k from each group's own judgements, so the assumed pi
should barely matter; without labels the assumed composition is part of what decides theta_k.

(b) **power scaling** (Kallioinen et al. 2023, via :func:`pluralstan.checks.power_scaling`):
the cumulative Jensen-Shannon distance of each parameter's posterior when the prior or the
likelihood is raised to a power near 1, on the reference fits (default priors of pi, the
pi_0 = (0.5, 0.5) grid point).

Outputs in --out: ``pi_grid.{csv,md}`` (headline summary: one row per model and grid point),
``pi_grid_detail.{csv,md}`` (one row per coordinate), ``power_scaling.{csv,md}``,
``prior_sensitivity.png``.
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
from pluralstan.checks import grid_shifts, pi_grid_sensitivity, power_scaling
from pluralstan.outputs import run_script, save_figure, script_parser, step, write_table
from pluralstan.relabel import match_components, permute

PI_GRID = np.array([[0.5, 0.5], [0.3, 0.7], [0.7, 0.3], [0.1, 0.9]])
CONCENTRATION = 100.0
MODELS = ("labeled", "unlabeled")


def align_to_truth(idata, truth_theta: np.ndarray):
    """Order a (relabelled) latent fit's components like the true groups (least squares)."""
    mean = idata.posterior["theta"].mean(("chain", "draw")).to_numpy()
    order = match_components(mean, truth_theta)  # component shown as true group k
    post = idata.posterior
    perms = np.broadcast_to(order, (post.sizes["chain"], post.sizes["draw"], len(order)))
    return permute(idata, perms.copy())


def pi_grid(comps: ps.Comparisons, grid: np.ndarray, sampler: dict, seed: int
            ) -> tuple[pd.DataFrame, dict]:
    """Grid shifts of theta for every model; fits keyed by (model, grid label)."""
    frames, fits = [], {}
    for model in MODELS:
        with step(f"pi grid: {len(grid)} {model} fits"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.DiagnosticWarning)  # recorded in the flag
            table, model_fits = pi_grid_sensitivity(model, comps, grid, K=2,
                                                    concentration=CONCENTRATION, seed=seed,
                                                    **sampler)
        if model != "labeled":  # latent labels: make "group k" mean the same at every point
            truth = np.asarray(comps.truth["theta"])
            model_fits = {k: align_to_truth(v, truth) for k, v in model_fits.items()}
            shifts = grid_shifts(model_fits, reference=table["grid"].iloc[0])
            table = shifts.merge(table[["grid", "pi_assumed", "pi_0", "pi_1"]].drop_duplicates(),
                                 on="grid", how="left")
        # group labels: strings for observed groups, integers for latent ones; one type here
        frames.append(table.assign(model=model, group=table["group"].astype(str)))
        fits.update({(model, k): v for k, v in model_fits.items()})
    return pd.concat(frames, ignore_index=True), fits


def grid_summary(detail: pd.DataFrame, fits: dict) -> pd.DataFrame:
    """One row per model and grid point: posterior mean pi and the largest theta shifts."""
    rows = []
    for (model, grid), sub in detail.groupby(["model", "grid"], sort=False):
        pi = fits[(model, grid)].posterior["pi"].mean(("chain", "draw")).to_numpy()
        rows.append({"model": model, "pi assumed": grid.removeprefix("pi="),
                     "E[pi] posterior": "(" + ", ".join(f"{v:.2f}" for v in pi) + ")",
                     "max |shift| theta": sub["shift"].abs().max(),
                     "mean |shift| theta": sub["shift"].abs().mean(),
                     "max |shift| / ref sd": sub["shift_sd"].abs().max(),
                     "diagnostics": sub["flag"].iloc[0] or "ok"})
    return pd.DataFrame(rows)


def figure(detail: pd.DataFrame, psense: pd.DataFrame, out) -> None:
    """Top: theta_k per attribute under each assumed pi (one panel per model and group);
    bottom: power-scaling distances per parameter."""
    groups = sorted(detail["group"].unique(), key=str)
    fig = plt.figure(figsize=(14, 9))
    sub = fig.subfigures(2, 1, height_ratios=[1.1, 1])
    axes = sub[0].subplots(1, len(MODELS) * len(groups), sharey=True)
    for ax, (model, g) in zip(axes, [(m, g) for m in MODELS for g in groups], strict=True):
        d = detail[(detail["model"] == model) & (detail["group"] == g)]
        labels = list(dict.fromkeys(d["grid"]))
        for i, label in enumerate(labels):
            r = d[d["grid"] == label]
            x = np.arange(len(r)) + (i - (len(labels) - 1) / 2) * 0.15
            ax.errorbar(x, r["mean"], yerr=[r["mean"] - r["lower"], r["upper"] - r["mean"]],
                        fmt="o", ms=3, capsize=2, color=f"C{i}",
                        label=label.removeprefix("pi="))
            ax.set_xticks(np.arange(len(r)), r["attribute"])
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(f"{model}: theta, group {g}", fontsize=10)
    axes[0].set_ylabel("posterior mean, 90% interval")
    axes[-1].legend(title="assumed pi", fontsize=7, title_fontsize=8)
    sub[0].suptitle(f"(a) pi grid: pi ~ Dirichlet({CONCENTRATION:g} pi_0)", fontsize=11)
    axes = sub[1].subplots(1, len(MODELS), sharey=True)
    for ax, model in zip(axes, MODELS, strict=True):
        p = psense[psense["model"] == model].reset_index(drop=True)
        y = np.arange(len(p))
        ax.barh(y - 0.2, p["prior"], height=0.4, label="prior")
        ax.barh(y + 0.2, p["likelihood"], height=0.4, label="likelihood")
        ax.axvline(0.05, color="firebrick", ls="--", lw=0.8, label="threshold 0.05")
        ax.set_yticks(y, p["variable"], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("cumulative Jensen-Shannon distance (power scaling)")
        ax.set_title(f"{model} 2-mixture", fontsize=10)
    axes[0].legend(fontsize=8)
    sub[1].suptitle("(b) power-scaling sensitivity at the reference fit", fontsize=11)
    save_figure(fig, out / "prior_sensitivity.png")


def main(argv: list[str] | None = None) -> int:
    """Run the pi grid and power scaling on the high-conflict data and print the summary."""
    parser = script_parser(__doc__.split("\n\n")[0], "results/prior_sensitivity")
    args = parser.parse_args(argv)
    if args.quick:
        n_pairs, n_annotators, grid = 60, 30, PI_GRID[:3]
        sampler = {"chains": 2, "draws": 200, "warmup": 200}
    else:
        n_pairs, n_annotators, grid = 200, 100, PI_GRID
        sampler = {"chains": 4, "draws": 1000, "warmup": 1000}
    comps = ps.simulate.high_conflict(n_pairs=n_pairs, n_annotators=n_annotators, seed=args.seed)
    detail, fits = pi_grid(comps, grid, sampler, args.seed)
    reference = detail["grid"].iloc[0]
    with step("power scaling"):
        psense = pd.concat([power_scaling(fits[(m, reference)], ["theta", "pi"]).assign(model=m)
                            for m in MODELS], ignore_index=True)
    summary = grid_summary(detail, fits)
    out = args.out
    write_table(summary, out, "pi_grid")
    write_table(detail, out, "pi_grid_detail")
    write_table(psense, out, "power_scaling")
    figure(detail, psense, out)
    print(f"Prior sensitivity, high-conflict data: {comps.n} judgements; pi grid with "
          f"concentration {CONCENTRATION:g}, shifts from pi_0 = {reference.removeprefix('pi=')}")
    print(summary.to_markdown(index=False, floatfmt=".3f"))
    flagged = psense[psense["prior"] > 0.05]
    print(f"\nPower scaling: {len(flagged)} of {len(psense)} parameters prior-sensitive "
          "(cumulative JS distance > 0.05):")
    print(psense[["model", "variable", "prior", "likelihood", "diagnosis"]]
          .to_markdown(index=False, floatfmt=".3f"))
    print(f"\ntables and figure written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

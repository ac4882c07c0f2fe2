"""Figure 2 of the position paper: the masking ratio of the aggregate fit against diversity.

Population (K = 2, d = 5, pi = (0.5, 0.5)): theta_1 = +nu + eps_1, theta_2 = -nu + eps_2 with
eps_k ~ N(0, sigma^2 I), for sigma in {0, 0.5, 1, 1.5, 2, 3} and several replicates (fresh
thetas, option pairs and judgements) per sigma. The paper does not state nu; it is varied here:
nu = 0 (homogeneous at sigma = 0, the reading under which the paper's ratio of 1.08 at
sigma = 0 is "no masking"), nu = 0.5 * ones(5) and nu = 1 * ones(5) (conflicting groups already
at sigma = 0). Each replicate has the paper's Table 1 design (200 option pairs, Uniform(0, 1)^5
attributes, 50 annotators per subgroup judging every pair); a quarter of the pairs is held out.

Each replicate is fitted by the aggregate Bayesian BT model (what RLHF fits: pooled judgements,
no labels). On the held-out pairs, for every posterior draw: aggregate MSE, each group's MSE and
the masking ratio (within-group MSE / aggregate MSE), against

* the observed held-out frequencies (the paper's target). Their binomial noise inflates group
  errors more than the pooled error (each group has half the judgements), so even a perfect
  model has a ratio near K = 2 here: the "noise floor", printed beside each row;
* the true generating probabilities (no noise floor: a homogeneous population has ratio 1).

Intervals pool the posterior draws of all replicates of a setting (90%, equal-tailed), so they
show replicate-to-replicate variation and posterior uncertainty together. The fits run in
parallel through :func:`pluralstan.parallel.run_jobs`; results are stored per replicate in
``<out>/jobs`` so an interrupted sweep resumes.

Outputs in --out: ``sweep.{csv,md}`` (headline: one row per nu, sigma and target),
``replicates.{csv,md}`` (one row per replicate), ``figure2.png`` (both panels of Figure 2).
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
import xarray as xr

from pluralstan.checks import central_interval
from pluralstan.outputs import run_script, save_figure, script_parser, step, write_table
from pluralstan.parallel import Job, run_jobs

#: The paper's Figure 2 end points (the only values it states), for side-by-side reporting.
PAPER_RATIO = {0.0: 1.08, 3.0: 4.32}

SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
TARGETS = ("observed", "truth")
D = 5
PROB = 0.9
_TARGET_WORD = {"observed": "observed frequencies", "truth": "true probabilities"}


def draw_thetas(nu: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``(2, d)`` thetas: ``+nu + eps_1`` and ``-nu + eps_2``, ``eps_k ~ N(0, sigma^2 I)``."""
    centre = np.array([[nu] * D, [-nu] * D])
    return centre + rng.normal(scale=sigma, size=centre.shape)


def replicate_seed(seed: int, nu: float, sigma: float, rep: int) -> int:
    """Seed of one replicate, fixed by its setting (adding replicates leaves the others alone)."""
    entropy = [seed, round(1000 * nu), round(1000 * sigma), rep]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % 2**31)  # Stan's range


def sweep_replicate(nu: float, sigma: float, seed: int, n_pairs: int, n_annotators: int,
                    sampler: dict) -> dict:
    """Simulate one population, fit the aggregate model, return per-draw masking (a worker job).

    Returns
    -------
    dict
        ``thetas`` (the drawn truth), ``flag`` (the fit's diagnostic flag) and, per target,
        the :func:`pluralstan.checks.masking_ratio` Dataset (dims ``chain, draw, group``).
    """
    import pluralstan as ps
    from pluralstan import diagnostics
    from pluralstan.checks import masking_ratio, split_pairs

    rng = np.random.default_rng(seed)
    thetas = draw_thetas(nu, sigma, rng)
    comps = ps.simulate.mixture(thetas, [0.5, 0.5], n_pairs=n_pairs, n_annotators=n_annotators,
                                seed=int(rng.integers(2**31)))
    train, test = split_pairs(comps, 0.25, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)  # recorded in the flag instead
        idata = ps.fit("aggregate", train, seed=seed, **sampler)
    return {"thetas": thetas, "flag": diagnostics.flag(idata),
            **{t: masking_ratio(idata, test, target=t) for t in TARGETS}}


def replicate_table(results: dict) -> pd.DataFrame:
    """One row per replicate and target: posterior means of the errors and of the ratio."""
    rows = []
    for (nu, sigma, rep), value in results.items():
        for target in TARGETS:
            m = value[target]
            row = {"nu": nu, "sigma": sigma, "replicate": rep, "target": target,
                   "theta_distance": float(np.linalg.norm(value["thetas"][0]
                                                          - value["thetas"][1])),
                   "aggregate_mse": float(m["aggregate_error"].mean()),
                   **{f"group_{g}_mse": float(m["group_error"].sel(group=g).mean())
                      for g in m["group"].values},
                   "masking_ratio": float(m["ratio"].mean()),
                   "noise_floor": m.attrs["noise_floor"], "diagnostics": value["flag"] or "ok"}
            rows.append(row)
    return pd.DataFrame(rows)


def sweep_table(results: dict) -> pd.DataFrame:
    """One row per (nu, sigma, target): pooled-draw medians and 90% intervals."""
    rows = []
    keys = sorted({(nu, sigma) for nu, sigma, _ in results})
    for nu, sigma in keys:
        reps = [v for (n, s, _), v in results.items() if (n, s) == (nu, sigma)]
        for target in TARGETS:
            stack = [r[target] for r in reps]
            row = {"nu": nu, "sigma": sigma, "target": target, "replicates": len(reps)}
            for name, pick in (("ratio", lambda m: m["ratio"]),
                               ("aggregate_mse", lambda m: m["aggregate_error"]),
                               *[(f"group_{g}_mse", lambda m, g=g: m["group_error"].sel(group=g))
                                 for g in stack[0]["group"].values]):
                pooled = xr.DataArray(
                    np.concatenate([np.asarray(pick(m)).ravel() for m in stack]), dims="sample")
                interval = central_interval(pooled, PROB, dims=["sample"], median=True)
                for k in ("lower", "median", "upper"):
                    row[f"{name}_{k}"] = float(interval[k])
            row["noise_floor"] = float(np.mean([m.attrs["noise_floor"] for m in stack]))
            row["paper_ratio"] = PAPER_RATIO.get(sigma, np.nan) if target == "observed" else np.nan
            row["diagnostics"] = _flag_count([r["flag"] for r in reps])
            rows.append(row)
    return pd.DataFrame(rows)


def _flag_count(flags: list[str]) -> str:
    """``"ok"`` or how many of the setting's fits failed a diagnostic check (details per
    replicate in ``replicates.csv``)."""
    bad = sum(bool(f) for f in flags)
    return "ok" if not bad else f"{bad}/{len(flags)} fits flagged"


def figure(table: pd.DataFrame, out) -> None:
    """Figure 2: (a) per-group MSE of the aggregate fit, (b) masking ratio, against sigma."""
    nus = sorted(table["nu"].unique())
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    for col, target in enumerate(TARGETS):
        sub = table[table["target"] == target]
        ax_mse, ax_ratio = axes[0, col], axes[1, col]
        groups = [c.removesuffix("_mse_median") for c in sub if c.endswith("_mse_median")
                  and c.startswith("group_")]
        for i, nu in enumerate(nus):
            s = sub[sub["nu"] == nu]
            shift = (i - (len(nus) - 1) / 2) * 0.06
            for j, g in enumerate(groups):
                _errorbar(ax_mse, s["sigma"] + shift + 0.02 * j, s, f"{g}_mse",
                          color=f"C{i}", marker="os"[j % 2],
                          label=f"nu = {nu:g}, {g.replace('_', ' ')}")
            _errorbar(ax_ratio, s["sigma"] + shift, s, "ratio", color=f"C{i}", marker="o",
                      label=f"nu = {nu:g}")
        if target == "observed":
            floor = sub["noise_floor"].mean()
            ax_ratio.axhline(floor, color="0.4", ls=":", lw=1,
                             label=f"noise floor (perfect model) = {floor:.2f}")
            ax_ratio.plot(list(PAPER_RATIO), list(PAPER_RATIO.values()), "k*", ms=12,
                          label="paper (1.08, 4.32)")
        else:
            ax_ratio.axhline(1.0, color="0.4", ls=":", lw=1, label="no masking (ratio 1)")
            ax_ratio.plot(list(PAPER_RATIO), list(PAPER_RATIO.values()), "k*", ms=12,
                          label="paper (1.08, 4.32)")
        ax_ratio.set_yscale("log")
        ax_mse.set_title(f"(a) within-group MSE of the aggregate fit, vs {_TARGET_WORD[target]}",
                         fontsize=10)
        ax_ratio.set_title(f"(b) masking ratio, vs {_TARGET_WORD[target]} (log scale)",
                           fontsize=10)
        ax_mse.set_ylabel("held-out MSE")
        ax_ratio.set_ylabel("within-group MSE / aggregate MSE")
        ax_ratio.set_xlabel("sigma (subgroup diversity)")
        ax_mse.legend(fontsize=7, ncol=2)
        ax_ratio.legend(fontsize=7)
    fig.suptitle("Diversity sweep: theta_k = +/- nu + N(0, sigma^2 I), aggregate BT fit; "
                 f"medians and {PROB:.0%} intervals over replicates x posterior draws")
    save_figure(fig, out / "figure2.png")


def _errorbar(ax, x, s: pd.DataFrame, name: str, **kwargs) -> None:
    med = s[f"{name}_median"]
    ax.errorbar(x, med, yerr=[med - s[f"{name}_lower"], s[f"{name}_upper"] - med], capsize=2,
                lw=1, ms=4, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Run the diversity sweep and print the Figure 2 table."""
    parser = script_parser(__doc__.split("\n\n")[0], "results/diversity_sweep")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel fits (default: number of cores)")
    parser.add_argument("--nu", type=float, nargs="+", default=None,
                        help="values of nu (theta_k = +/- nu * ones(5) + eps_k); default 0 0.5 1 "
                        "(quick: 0 1)")
    parser.add_argument("--replicates", type=int, default=None,
                        help="replicates per (nu, sigma) (default 10; quick: 2)")
    args = parser.parse_args(argv)
    if args.quick:
        nus, sigmas, n_reps = (0.0, 1.0), (0.0, 1.5, 3.0), 2
        n_pairs, n_annotators = 80, 40
        sampler = {"chains": 2, "draws": 200, "warmup": 200}
    else:
        nus, sigmas, n_reps = (0.0, 0.5, 1.0), SIGMAS, 10
        n_pairs, n_annotators = 200, 100
        sampler = {"chains": 2, "draws": 500, "warmup": 500}
    nus = tuple(args.nu) if args.nu else nus
    n_reps = args.replicates or n_reps
    keys = [(nu, s, r) for nu in nus for s in sigmas for r in range(n_reps)]
    seeds = [replicate_seed(args.seed, *key) for key in keys]
    jobs = [Job(f"nu{nu:g}_sigma{s:g}_rep{r}", sweep_replicate,
                {"nu": nu, "sigma": s, "seed": int(seed), "n_pairs": n_pairs,
                 "n_annotators": n_annotators, "sampler": sampler}, seed=int(seed))
            for (nu, s, r), seed in zip(keys, seeds, strict=True)]
    with step(f"{len(jobs)} aggregate fits"):
        report = run_jobs(jobs, out_dir=args.out / "jobs", n_workers=args.workers,
                          desc="diversity sweep")
    report.raise_failures()
    values = report.values()
    results = {k: values[job.key] for k, job in zip(keys, jobs, strict=True)}
    table = sweep_table(results)
    out = args.out
    write_table(table, out, "sweep")
    write_table(replicate_table(results), out, "replicates")
    figure(table, out)
    print(f"Diversity sweep: {len(jobs)} aggregate fits ({n_reps} replicates per setting), "
          f"{n_pairs} pairs x {n_annotators} annotators each, 25% of pairs held out")
    cols = ["nu", "sigma", "target", "ratio_median", "ratio_lower", "ratio_upper",
            "group_0_mse_median", "group_1_mse_median", "aggregate_mse_median", "noise_floor",
            "paper_ratio", "diagnostics"]
    print(table[cols].to_markdown(index=False, floatfmt=".3g"))
    print("\nAgainst observed frequencies a perfect model has ratio ~ noise_floor (about K = 2: "
          "each group's held-out frequency is noisier than the pooled one); against the true "
          "probabilities the reference is 1.")
    print(f"tables and figure written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

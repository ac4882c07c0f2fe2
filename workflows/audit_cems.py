"""Audit of the CEMS business-school choice data (Dittrich, Hatzinger & Katzenbeisser 1998).

303 students at WU Wien compared 6 CEMS business schools in all 15 pairs, with "no preference"
allowed (487 ties among 4,454 judgements). The audit

1. fits the aggregate item Bradley-Terry model with Davidson (1970) ties, London = 0, and
   checks it against two maximum-likelihood fits computed here with SciPy on the same
   identification: the Davidson ML fit (same likelihood; the posterior mean must be within
   ``ML_TOLERANCE`` of it), and the half-win binomial ML fit that BradleyTerry2's CEMS
   documentation uses to reproduce Dittrich et al.'s published table (ties counted as half a
   win each; ``summary(table3.model)$coef / 1.75`` "reproduces approximately" Table 3 of the
   2001 corrigendum, whose log-linear worths are on half the logit scale). Source:
   BradleyTerry2, ``man/CEMS.Rd`` (https://github.com/hturner/BradleyTerry2) and Dittrich et
   al. (1998) JRSS-C 47, 511-525; corrigendum (2001) JRSS-C 50, 247-249. The printed numbers
   of the published tables could not be retrieved here, so the comparison with the published
   analysis is through its documented procedure, not through transcribed numbers;
2. fits the abilities separately by work status (and, without ``--quick``, by each language
   skill), with the ``labeled`` model (or, with ``--models`` without it, as independent
   aggregate fits per group: the labeled model with no pooling), and reports whether full-time
   workers rank Paris first (the known result);
3. with the ``annotator`` latent-type model (in ``--models``), fits K = 1..4 and compares them by
   leave-one-annotator-out PSIS-LOO, and asks whether a type that ranks Paris first appears.

``--quick`` (the test suite's subset): 2 chains x 500 draws, groups by work status only, no
latent-type model (the K = 1..4 LOO comparison, ``--K``, needs the full run).

Outputs in ``--out``: ``abilities.{csv,md}``, ``ml_crosscheck.{csv,md}``,
``by_group.{csv,md}``, ``latent_loo.{csv,md}`` (with ``annotator`` in ``--models``),
``abilities.png``, ``by_group.png``, ``report.md``. Every table carries the fit's diagnostic flag.

Run ``python workflows/audit_cems.py --help``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

import pluralstan as ps
from pluralstan import _arviz, realdata
from pluralstan.checks import central_interval
from pluralstan.checks.compare import SUMMARY_COLUMNS, compare_K
from pluralstan.data import Comparisons
from pluralstan.files import write_atomic
from pluralstan.outputs import (
    audit_parser,
    model_list,
    run_script,
    save_figure,
    step,
    write_table,
)

#: Largest accepted |posterior mean - Davidson ML estimate| on the logit scale. The posterior
#: sd of each ability is about 0.08 and the prior (sd 2.5) is negligible against 4,454
#: judgements, so the two should agree to Monte Carlo error (~0.005); 0.05 leaves room for
#: the O(1/n) mean-vs-mode difference and short quick-mode chains.
ML_TOLERANCE = 0.05
#: Largest accepted |half-win ML / 1.75 - Davidson ML / 2|: BradleyTerry2's documented
#: approximation of Dittrich et al.'s log-linear scale (an approximation, hence looser).
SCALE_TOLERANCE = 0.10
REFERENCE = "London"
GROUPS_QUICK = ("work",)
GROUPS_FULL = ("work", "english", "french", "spanish", "italian")


# ---------------------------------------------------------------------- ML cross-checks
def ml_fits(comps: Comparisons) -> tuple[pd.DataFrame, dict[str, ps.ml.MLFit]]:
    """Davidson and half-win ML abilities (reference item = 0) with standard errors.

    Both fits are certified by :func:`pluralstan.ml.fit_ml` (exact-Hessian trust region; the
    Newton decrement bounds the log-likelihood gap to the maximum); the fits themselves are
    returned too, so their certificates can be reported.
    """
    cells = comps.cells()
    names = list(comps.attributes)
    dav = ps.ml.fit_ml(cells.X, cells.counts, likelihood="davidson", names=names)
    half = ps.ml.fit_ml(cells.X, cells.counts, likelihood="halfwin", names=names)
    P = len(names)
    table = pd.DataFrame({
        "davidson_ml": dav.estimate[:P], "davidson_se": dav.se[:P],
        "halfwin_ml": half.estimate, "halfwin_se": half.se,
    }, index=pd.Index(names, name="item")).assign(davidson_log_nu=dav.estimate[P])
    return table, {"davidson": dav, "halfwin": half}


# ---------------------------------------------------------------------- Bayesian fits
def _sampler(args: argparse.Namespace) -> dict:
    return {"chains": args.chains, "draws": args.draws, "warmup": args.draws, "seed": args.seed}


def ability_summary(idata: _arviz.Idata, reference: str = REFERENCE) -> pd.DataFrame:
    """Posterior summary of item abilities, the reference item included as an exact 0."""
    theta = idata.posterior["theta"]
    summ = _arviz.summary(idata, var_names=["theta"], ci_prob=0.9)
    summ.index = [str(v) for v in theta.coords["attribute"].values]
    table = summ[["mean", "sd", "hdi_5%", "hdi_95%", "ess_bulk", "r_hat"]]
    ref = pd.DataFrame({c: [0.0] for c in table.columns}, index=[reference]).assign(
        ess_bulk=np.nan, r_hat=np.nan)
    out = pd.concat([ref, table])
    out.index.name = "item"
    return out


def rank_first(theta: np.ndarray, items: list[str]) -> pd.Series:
    """Posterior probability that each item has the largest ability (theta: draws x items)."""
    best = np.argmax(theta, axis=1)
    return pd.Series(np.bincount(best, minlength=len(items)) / len(best), index=items)


def _draws_with_reference(da, reference: str = REFERENCE) -> tuple[np.ndarray, list[str]]:
    """(draws, items) abilities with the reference column of zeros prepended."""
    flat = da.stack(sample=("chain", "draw")).transpose("sample", "attribute").values
    items = [reference, *[str(v) for v in da.coords["attribute"].values]]
    return np.column_stack([np.zeros(len(flat)), flat]), items


def fit_by_group(comps: Comparisons, column: str, args: argparse.Namespace) -> pd.DataFrame:
    """Abilities by the levels of a student covariate.

    Uses the ``labeled`` model when ``--models`` names it; otherwise fits the aggregate model to
    each group's judgements separately (no pooling across groups). Returns one row per (group,
    item): posterior mean, 90% interval, P(item ranked first), and the fit's diagnostic flag.
    """
    labeled = realdata.load_cems(args.data, group=column, reference=REFERENCE)
    rows = []
    if "labeled" in args.models:
        # partial pooling: a hierarchical scale, hence a higher adapt_delta against divergences
        idata = ps.fit("labeled", labeled, adapt_delta=0.95, **_sampler(args))
        fits = [(str(g), idata.posterior["theta"].sel(group=g), ps.diagnostics.flag(idata))
                for g in idata.posterior["theta"].coords["group"].values]
        how = "labeled"
    else:
        fits = []
        for g in labeled.group_levels:
            rows_g = np.flatnonzero((labeled.frame["group"] == g).to_numpy())
            idata = ps.fit("aggregate", labeled.subset(rows_g), **_sampler(args))
            fits.append((str(g), idata.posterior["theta"], ps.diagnostics.flag(idata)))
        how = "aggregate per group"
    counts = labeled.frame.drop_duplicates("annotator")["group"].astype(str).value_counts()
    for g, theta, flag in fits:
        draws, items = _draws_with_reference(theta)
        first = rank_first(draws, items)
        interval = central_interval(xr.DataArray(draws, dims=("sample", "item")), 0.9,
                                    dims=["sample"])
        for j, item in enumerate(items):
            rows.append({
                "covariate": column, "group": g, "students": int(counts[g]), "item": item,
                "mean": float(interval["mean"][j]), "q5": float(interval["lower"][j]),
                "q95": float(interval["upper"][j]), "p_first": first[item],
                "model": how, "diagnostics": flag or "ok",
            })
    return pd.DataFrame(rows).set_index(["covariate", "group", "item"])


def latent_types(comps: Comparisons, args: argparse.Namespace, Ks: list[int]) -> pd.DataFrame:
    """Annotator-latent fits for each K, compared by leave-one-annotator-out PSIS-LOO.

    The types' labels are exchangeable (no ordering constraint: an order on one ability cuts
    the posterior unless that ability separates the types); ``ps.fit`` relabels the draws, and
    the "Paris type" is the type with the highest posterior mean Paris ability. For each K: the
    comparison columns of :func:`pluralstan.checks.compare.compare_K`, the Paris - London
    ability of the Paris type, its share of students (mean membership) and the share of
    full-time workers in it (against 13 / 303 = 4% overall).
    """

    work = comps.annotators["work"].reindex(comps.annotator_levels).eq("yes").to_numpy()
    fits, rows = {}, []
    for K in Ks:
        fits[K] = idata = ps.fit("annotator", comps, K=K, **_sampler(args))
        paris = idata.posterior["theta"].sel(attribute="Paris")
        paris_type = int(paris.mean(("chain", "draw")).argmax("group"))
        theta = paris.isel(group=paris_type)
        member = idata.posterior["membership"].isel(group=paris_type).mean(("chain", "draw"))
        rows.append({
            "K": K, "paris_type_paris_ability": float(theta.mean()),
            "paris_type_share": float(member.mean()),
            "paris_type_work_share": float((member.values * work).sum() / member.sum()),
            **realdata.diagnostic_columns(idata),
        })
    table = pd.DataFrame(rows).set_index("K")
    if len(fits) > 1:
        table = table.join(compare_K(fits, comps=comps)[SUMMARY_COLUMNS])
    return table


# ---------------------------------------------------------------------- figures
def plot_abilities(table: pd.DataFrame, path: Path, flag: str) -> None:
    """Posterior means with 90% intervals against the Davidson and half-win/1.75*2 ML points."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    order = table.sort_values("mean").index
    y = np.arange(len(order))
    t = table.loc[order]
    ax.hlines(y, t["hdi_5%"], t["hdi_95%"], color="C0", lw=2, label="posterior 90% HDI")
    ax.plot(t["mean"], y, "o", color="C0", label="posterior mean")
    ax.plot(t["davidson_ml"], y, "x", color="C3", ms=8, label="Davidson ML (SciPy)")
    ax.plot(t["halfwin_ml"], y, "+", color="C2", ms=9,
            label="half-win ML, unscaled (BradleyTerry2 method)")
    ax.set_yticks(y, order)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel(f"ability (logit scale, {REFERENCE} = 0)")
    ax.set_title("CEMS aggregate Bradley-Terry with Davidson ties" + (f"\n{flag}" if flag else ""),
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_by_group(table: pd.DataFrame, path: Path) -> None:
    """Abilities by group, one panel per covariate."""
    covs = list(dict.fromkeys(table.index.get_level_values("covariate")))
    fig, axes = plt.subplots(1, len(covs), figsize=(4.2 * len(covs), 3.4), squeeze=False)
    for ax, cov in zip(axes[0], covs, strict=True):
        sub = table.xs(cov, level="covariate")
        items = list(dict.fromkeys(sub.index.get_level_values("item")))
        groups = list(dict.fromkeys(sub.index.get_level_values("group")))
        for i, g in enumerate(groups):
            s = sub.xs(g, level="group").loc[items]
            y = np.arange(len(items)) + (i - (len(groups) - 1) / 2) * 0.25
            n = int(s["students"].iloc[0])
            ax.hlines(y, s["q5"], s["q95"], color=f"C{i}", lw=2)
            ax.plot(s["mean"], y, "o", color=f"C{i}", label=f"{cov} = {g} (n = {n})")
        ax.set_yticks(np.arange(len(items)), items)
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_xlabel(f"ability ({REFERENCE} = 0), 90% interval")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: the shared ones (``--quick``, ``--seed``, ``--out``) and ``--data``."""
    p = audit_parser(__doc__.split("\n\n")[0], "out/audit_cems")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="numbers of latent types compared by LOO (default 1 2 3 4)")
    p.add_argument("--groups", nargs="+", choices=GROUPS_FULL, default=None,
                   help="student covariates to split by (default: all of "
                        f"{' '.join(GROUPS_FULL)}; --quick: work)")
    p.add_argument("--models", default="labeled,annotator",
                   help="comma-separated optional models to use: 'labeled' "
                        "(else per-group aggregate fits) and 'annotator' (latent types); "
                        "'none' for the aggregate model only")
    args = p.parse_args(argv)
    if args.groups is None:
        args.groups = list(GROUPS_QUICK if args.quick else GROUPS_FULL)
    if args.quick:
        args.draws, args.chains = min(args.draws, 500), min(args.chains, 2)
    args.models = model_list(p, args.models)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    comps = realdata.load_cems(args.data, group=None, reference=REFERENCE)

    idata = ps.fit("aggregate", comps, **_sampler(args))
    flag = ps.diagnostics.flag(idata)
    ml, certificates = ml_fits(comps)
    abil = ability_summary(idata).join(ml.drop(columns="davidson_log_nu"))
    abil.loc[REFERENCE, ["davidson_ml", "davidson_se", "halfwin_ml", "halfwin_se"]] = 0.0
    abil["abs_diff_ml"] = (abil["mean"] - abil["davidson_ml"]).abs()
    abil["dittrich_scale"] = abil["mean"] / 2.0  # log-linear worth scale of the paper
    abil["diagnostics"] = flag or "ok"
    abil = abil.sort_values("mean", ascending=False)
    write_table(abil.reset_index(), out, "abilities", floatfmt=".4g")

    log_nu = idata.posterior["log_nu"]
    check = pd.DataFrame({
        "max_abs_diff_posterior_vs_davidson_ml": [float(abil["abs_diff_ml"].max())],
        "tolerance": [ML_TOLERANCE],
        "within_tolerance": [bool(abil["abs_diff_ml"].max() < ML_TOLERANCE)],
        "max_abs_diff_halfwin_over_1.75_vs_davidson_over_2": [float(
            (abil["halfwin_ml"] / 1.75 - abil["davidson_ml"] / 2).abs().max())],
        "scale_tolerance": [SCALE_TOLERANCE],
        "log_nu_posterior_mean": [float(log_nu.mean())],
        "log_nu_ml": [float(ml["davidson_log_nu"].iloc[0])],
        **{f"{name}_ml_gap": [fit.gap] for name, fit in certificates.items()},
        **{f"{name}_ml_step": [fit.step] for name, fit in certificates.items()},
    }, index=pd.Index(["cems"], name="data"))
    write_table(check.reset_index(), out, "ml_crosscheck", floatfmt=".4g")
    plot_abilities(abil, out / "abilities.png", flag)

    by_group = pd.concat([fit_by_group(comps, c, args)
                          for c in args.groups])
    write_table(by_group.reset_index(), out, "by_group", floatfmt=".4g")
    plot_by_group(by_group, out / "by_group.png")

    latent = None
    if "annotator" in args.models and not args.quick:
        with step(f"annotator-latent fits, K = {args.K}"):
            latent = latent_types(comps, args, args.K)
        write_table(latent.reset_index(), out, "latent_loo", floatfmt=".4g")

    head = _headline(abil, by_group)
    print(_markdown(head))
    if latent is not None:
        print(_markdown(latent.drop(columns=["diagnostics", "notes"])))
    _report(out, abil, check, by_group, latent, head, args.models, flag)
    return 0


def _headline(abil: pd.DataFrame, by_group: pd.DataFrame) -> pd.DataFrame:
    rows = {"all students": abil["mean"].idxmax()}
    for (cov, g), s in by_group.groupby(level=["covariate", "group"], sort=False):
        rows[f"{cov} = {g}"] = f"{s['p_first'].idxmax()[2]} (P = {s['p_first'].max():.2f})"
    return pd.DataFrame({"ranked first": rows}).rename_axis("students")


def _markdown(table: pd.DataFrame) -> str:
    return table.reset_index().to_markdown(index=False, floatfmt=".4g") + "\n"


def _report(out: Path, abil, check, by_group, latent, head, models: list[str], flag: str) -> None:
    skipped = [m for m in ("labeled", "annotator") if m not in models]
    if latent is None and "annotator" in models:
        skipped.append("annotator (--quick)")
    lines = [
        "# CEMS audit", "",
        "Data: CEMS business-school choice (Dittrich et al. 1998; BradleyTerry2 `CEMS`), "
        "4,454 judgements by 303 students, 487 ties. Outcome coded 1 / 0 / 0.5 (tie).", "",
        "## Aggregate abilities", "",
        "Logit scale, London = 0, Davidson ties. Criterion: |posterior mean - Davidson ML| < "
        f"{ML_TOLERANCE}. {flag}", "", _markdown(abil), "",
        "## Cross-check with maximum likelihood", "",
        "Posterior vs independent SciPy ML fits on the same identification.", "",
        _markdown(check), "",
        "## By group", "",
        "Abilities by student covariate (London = 0); p_first = posterior probability the "
        "school has the largest ability.", "", _markdown(by_group), "",
    ]
    if latent is not None:
        lines += ["## Annotator-latent types (LOO by K)", "",
                  "Leave-one-annotator-out PSIS-LOO by K.", "", _markdown(latent), ""]
    lines += ["## Headline", "", _markdown(head), ""]
    if skipped:
        lines += [f"Not run (left out with --models): {', '.join(skipped)}.", ""]
    write_atomic(out / "report.md", "\n".join(lines))


if __name__ == "__main__":
    warnings.simplefilter("default")
    sys.exit(run_script(main, Path(__file__).name))

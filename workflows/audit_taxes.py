"""Audit of the tax-plan conjoint (Ballard-Rosa, Martin & Scheve 2017, J. Politics).

2,000 US adults each chose between two tax plans 8 times (16,000 forced choices). A plan is six
bracket rates and a revenue level; the utility is linear in attribute-level dummies with a
stated reference level per attribute (:data:`pluralstan.realdata.TAX_REFERENCE`), so each
coefficient is an AMCE-style log-odds effect of moving one attribute off its reference level.
Respondents without a party id (75; the data README says 60) are left out of every fit, so all
models see the same 1,925 respondents (15,400 choices).

The audit fits

1. the aggregate model (one utility for everybody);
2. the labeled model by party (Democrat / Independent / Republican), or, with ``--models``
   without it, one aggregate fit per party (no pooling);
3. the annotator-latent model (8 judgements per respondent) with K types;
4. the covariate-informed mixing model with party as the covariate;

and asks how much of the partisan difference the latent model finds without the labels: the
latent model implies a party's utility as the membership-weighted average of the type
utilities, and ``recovered`` is the projection of that implied Democrat - Republican contrast
on the labeled contrast, ``<d_latent, d_labeled> / <d_labeled, d_labeled>`` (1 = all of it,
0 = none), computed per posterior draw of the latent model against the labeled posterior mean.

``--quick`` (the test suite's subset): 40 respondents per party, 2 chains x 300 draws, the
latent model with K = 2 only, no covariate model.

Outputs in ``--out``: ``aggregate.{csv,md}``, ``by_party.{csv,md}``, ``latent.{csv,md}``
(with a latent model in ``--models``), ``effects.png``, ``report.md`` (disclosure: data, exclusions,
models, diagnostics, what was not run). Run ``python workflows/audit_taxes.py --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr

import pluralstan as ps
from pluralstan import realdata
from pluralstan.checks import central_interval
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

PARTIES = ("Democrat", "Independent", "Republican")


def _sampler(args: argparse.Namespace) -> dict:
    return {"chains": args.chains, "draws": args.draws, "warmup": args.draws, "seed": args.seed}


def _summary(theta, label: str, flag: str) -> pd.DataFrame:
    """Posterior mean, sd and 90% interval per attribute of a ``(chain, draw, attribute)`` array."""
    interval = central_interval(theta, 0.9, sd=True)
    return pd.DataFrame({
        "fit": label,
        "attribute": [str(a) for a in theta.coords["attribute"].values],
        "mean": interval["mean"].values,
        "sd": interval["sd"].values,
        "q5": interval["lower"].values,
        "q95": interval["upper"].values,
        "diagnostics": flag or "ok",
    })


def fit_aggregate(comps: Comparisons, args: argparse.Namespace) -> pd.DataFrame:
    """Aggregate utility: one row per attribute level."""
    idata = ps.fit("aggregate", comps, **_sampler(args))
    return _summary(idata.posterior["theta"], "aggregate", ps.diagnostics.flag(idata))


def fit_by_party(comps: Comparisons, args: argparse.Namespace) -> tuple[pd.DataFrame, np.ndarray]:
    """Utilities by party, and the posterior-mean Democrat - Republican contrast.

    Uses the ``labeled`` model (partial pooling) when ``--models`` names it, else independent
    aggregate fits per party.
    """
    parts = []
    if "labeled" in args.models:
        # partial pooling: a hierarchical scale, hence a higher adapt_delta against divergences
        idata = ps.fit("labeled", comps, adapt_delta=0.95, **_sampler(args))
        flag = ps.diagnostics.flag(idata)
        for party in PARTIES:
            theta = idata.posterior["theta"].sel(group=party)
            parts.append(_summary(theta, f"labeled: {party}", flag))
    else:
        for party in PARTIES:
            rows = np.flatnonzero((comps.frame["group"] == party).to_numpy())
            idata = ps.fit("aggregate", comps.subset(rows), **_sampler(args))
            parts.append(_summary(idata.posterior["theta"], f"aggregate: {party}",
                                  ps.diagnostics.flag(idata)))
    table = pd.concat(parts, ignore_index=True)
    means = {p: t["mean"].to_numpy() for p, t in zip(PARTIES, parts, strict=True)}
    return table, means["Democrat"] - means["Republican"]


def subsample(comps: Comparisons, per_party: int, seed: int) -> Comparisons:
    """All choices of ``per_party`` randomly chosen respondents of each party."""
    rng = np.random.default_rng(seed)
    people = comps.frame.drop_duplicates("annotator")
    keep = np.concatenate([
        rng.choice(g["annotator"].to_numpy(), size=min(per_party, len(g)), replace=False)
        for _, g in people.groupby("group", sort=True)
    ])
    return comps.subset(np.flatnonzero(comps.frame["annotator"].isin(keep).to_numpy()))


def _party_of(comps: Comparisons) -> np.ndarray:
    """Party label of every annotator, in the models' annotator order."""
    first = comps.frame.drop_duplicates("annotator").set_index("annotator")["group"]
    return first.reindex(comps.annotator_levels).astype(str).to_numpy()


def recovered_share(idata, party: np.ndarray, d_labeled: np.ndarray,
                    membership: str) -> np.ndarray:
    """Per-draw share of the labeled Democrat - Republican contrast the latent fit implies.

    A party's implied utility is ``sum_k mean_{i in party} m_ik theta_k`` with ``m`` the
    per-draw membership probabilities; the share is the projection of the implied contrast
    on ``d_labeled``. Invariant to relabelling the types, so label switching cannot bias it.
    """
    m = idata.posterior[membership].transpose("chain", "draw", "annotator", "group").values
    theta = idata.posterior["theta"].transpose("chain", "draw", "group", "attribute").values
    w_dem = m[:, :, party == "Democrat", :].mean(axis=2)  # (chain, draw, K)
    w_rep = m[:, :, party == "Republican", :].mean(axis=2)
    d_latent = np.einsum("cdk,cdkp->cdp", w_dem - w_rep, theta)
    return (d_latent @ d_labeled / (d_labeled @ d_labeled)).reshape(-1)


def fit_latent(comps: Comparisons, d_labeled: np.ndarray, args: argparse.Namespace,
               Ks: list[int]) -> pd.DataFrame:
    """Annotator-latent (and covariate-informed, when in ``--models``) fits by K."""
    from pluralstan.checks.compare import loo

    party = _party_of(comps)
    runs = []
    if "annotator" in args.models:
        runs += [("annotator", K, comps) for K in Ks]
    if "covariate" in args.models:
        with_party = dataclasses.replace(comps, annotators=comps.annotators[["partyid"]])
        runs += [("covariate", K, with_party) for K in Ks if K > 1]
    rows = []
    for model, K, data in runs:
        options = {"reference_levels": {"partyid": "Independent"}} if model == "covariate" else {}
        idata = ps.fit(model, data, K=K, **options, **_sampler(args))
        elpd = loo(idata, level="annotator", comps=data)[0].iloc[0]
        share = central_interval(xr.DataArray(
            recovered_share(idata, party, d_labeled, "membership"), dims="sample"), 0.9,
            dims=["sample"])
        rows.append({
            "model": model, "K": K, "elpd_loo": elpd["elpd"], "se": elpd["se"],
            "n_high_k": elpd["n_high_k"],
            "recovered_mean": float(share["mean"]), "recovered_q5": float(share["lower"]),
            "recovered_q95": float(share["upper"]),
            "diagnostics": ps.diagnostics.flag(idata) or "ok",
        })
    return pd.DataFrame(rows).set_index(["model", "K"]) if rows else pd.DataFrame()


def plot_effects(aggregate: pd.DataFrame, by_party: pd.DataFrame, path: Path) -> None:
    """AMCE-style effects: aggregate and by party, 90% intervals."""
    attrs = list(aggregate["attribute"])
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(attrs) + 1.2))
    fits = [aggregate, *[g for _, g in by_party.groupby("fit", sort=False)]]
    for i, t in enumerate(fits):
        y = np.arange(len(attrs)) + (i - (len(fits) - 1) / 2) * 0.18
        t = t.set_index("attribute").loc[attrs]
        ax.hlines(y, t["q5"], t["q95"], color=f"C{i}", lw=1.5)
        ax.plot(t["mean"], y, "o", ms=3, color=f"C{i}", label=t["fit"].iloc[0])
    ax.set_yticks(np.arange(len(attrs)), attrs, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set_xlabel("effect on log-odds of choosing the plan (vs reference level)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: the shared ones (``--quick``, ``--seed``, ``--out``) and ``--data``."""
    p = audit_parser(__doc__.split("\n\n")[0], "out/audit_taxes")
    p.add_argument("--per-party", type=int, default=None,
                   help="use only this many respondents per party (a seeded random subset)")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 3],
                   help="numbers of latent types (default 1 2 3; the covariate model uses K > 1)")
    p.add_argument("--models", default="labeled,annotator,covariate",
                   help="comma-separated optional models to use: 'labeled' "
                        "(else per-party aggregate fits), 'annotator', 'covariate'; 'none' "
                        "for the aggregate model only")
    args = p.parse_args(argv)
    if args.quick:
        args.draws = min(args.draws, 300)
        args.chains = min(args.chains, 2)
        args.per_party = min(args.per_party or 40, 40)
        args.K = [2]
        args.models = ",".join(m for m in args.models.split(",") if m != "covariate")
    args.models = model_list(p, args.models)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    comps = realdata.load_taxes(args.data, missing_party="drop")
    if args.per_party is not None:
        comps = subsample(comps, args.per_party, args.seed)

    with step(f"aggregate fit, {comps.n} choices"):
        aggregate = fit_aggregate(comps, args)
    write_table(aggregate, out, "aggregate", floatfmt=".4g")
    with step("fits by party"):
        by_party, d_labeled = fit_by_party(comps, args)
    write_table(by_party, out, "by_party", floatfmt=".4g")
    plot_effects(aggregate, by_party, out / "effects.png")
    with step(f"latent fits ({', '.join(args.models)}), K = {args.K}"):
        latent = fit_latent(comps, d_labeled, args, args.K)
    if len(latent):
        write_table(latent.reset_index(), out, "latent", floatfmt=".4g")

    contrast = pd.Series(d_labeled, index=aggregate["attribute"])
    head = pd.DataFrame({
        "value": {
            "respondents (partyid known)": len(comps.annotator_levels),
            "choices": comps.n,
            "largest |Dem - Rep| effect": f"{contrast.abs().idxmax()} "
                                          f"({contrast[contrast.abs().idxmax()]:+.2f})",
            **({f"recovered by {m} K={k}": f"{r.recovered_mean:.2f} "
                                          f"[{r.recovered_q5:.2f}, {r.recovered_q95:.2f}]"
                for (m, k), r in latent.iterrows()} if len(latent) else {}),
        }
    }).rename_axis("taxes")
    print(_markdown(head))
    if len(latent):
        print(_markdown(latent.drop(columns="diagnostics")))
    _report(out, comps, aggregate, by_party, latent, head, args.per_party)
    return 0


def _markdown(table: pd.DataFrame) -> str:
    return table.reset_index().to_markdown(index=False, floatfmt=".4g") + "\n"


def _report(out: Path, comps, aggregate, by_party, latent, head, per_party) -> None:
    flags = sorted(set(aggregate["diagnostics"]) | set(by_party["diagnostics"])
                   | (set(latent["diagnostics"]) if len(latent) else set()))
    lines = [
        "# Tax-plan conjoint audit: disclosure report", "",
        "* Data: Ballard-Rosa, Martin & Scheve (2017), via cregg `taxes` (MIT). "
        f"{comps.n} choices by {len(comps.annotator_levels)} respondents with a known party "
        "id; 75 respondents without one are excluded from every fit"
        + (f"; a random subset of {per_party} respondents per party." if per_party else "."),
        "* Design: attribute-level dummies against the reference levels "
        f"{realdata.TAX_REFERENCE}.",
        "* Identification: subgroup utilities are identified by the party labels in the "
        "labeled fit; the latent fits identify types only through the 8 repeated judgements "
        "per respondent (no labels).",
        f"* Diagnostics: {'; '.join(flags)}",
        "", "## Headline", "", _markdown(head),
        "## Aggregate", "", "Utility: log-odds vs each attribute's reference level.", "",
        aggregate.to_markdown(index=False, floatfmt=".4g"), "",
        "## By party", "", "Utilities by party (90% intervals).", "",
        by_party.to_markdown(index=False, floatfmt=".4g"), "",
    ]
    if len(latent):
        lines += ["## Latent types", "",
                  "Leave-one-respondent-out LOO and the share of the labeled Democrat - "
                  "Republican contrast they recover.", "", _markdown(latent)]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

"""Audit of Polis conversations: latent opinion types from agree / disagree votes.

Polis participants vote agree / disagree / pass on short statements. The votes become
within-participant comparisons (:func:`pluralstan.realdata.load_polis`): a statement the
participant agreed with is preferred to one they disagreed with; passes are not used; at most
``--max-pairs`` pairs per participant (a seeded subset), because the ``n_agree x n_disagree``
pairs of one participant come from only ``n_agree + n_disagree`` votes. The audit fits

1. the aggregate item model (one statement ranking for everybody: the "consensus" view);
2. the annotator-latent model with K = 1..3 types (``--quick``: 1..2), chosen by
   leave-one-participant-out PSIS-LOO (:func:`pluralstan.workflow.compare.compare_K`), with
   the types relabelled draw by draw (Stephens' method, :func:`pluralstan.relabel.relabel`);
3. the agreement of each participant's most probable type with Polis's own opinion group
   (adjusted Rand index). Caveat: Polis's groups are computed from the same votes (PCA +
   k-means), so agreement shows the two methods see the same structure, not that either is
   right.

Outputs in ``--out``: ``statements.{csv,md}``, ``latent.{csv,md}``, ``types.png``,
``report.md``. Run ``python workflows/audit_polis.py --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import pluralstan as ps
from pluralstan import realdata
from pluralstan.data import Comparisons
from pluralstan.outputs import save_figure


def _sampler(args: argparse.Namespace) -> dict:
    return {"chains": args.chains, "draws": args.draws, "warmup": args.draws, "seed": args.seed}


def statement_table(comps: Comparisons, idata, conversation: str, folder) -> pd.DataFrame:
    """Statement abilities (reference = first statement = 0) with their text."""
    theta = idata.posterior["theta"]
    comments = pd.read_csv(realdata.data_dir(folder) / "polis" / conversation / "comments.csv")
    text = comments.set_index("comment-id")["comment-body"]
    items = [str(comps.reference), *[str(a) for a in theta.coords["attribute"].values]]
    mean = np.concatenate([[0.0], theta.mean(("chain", "draw")).values])
    sd = np.concatenate([[0.0], theta.std(("chain", "draw")).values])
    table = pd.DataFrame({"statement": items, "ability": mean, "sd": sd})
    table["text"] = [str(text.get(int(s[1:]), ""))[:90] for s in items]
    table["diagnostics"] = ps.diagnostics.flag(idata) or "ok"
    return table.sort_values("ability", ascending=False).set_index("statement")


def latent_fits(comps: Comparisons, args: argparse.Namespace, Ks: list[int]) -> pd.DataFrame:
    """Annotator-latent fits by K: LOO comparison, type shares and ARI with Polis's groups."""
    from pluralstan.relabel import relabel
    from pluralstan.workflow.compare import compare_K

    polis_group = comps.frame.drop_duplicates("annotator").set_index("annotator")["group"]
    polis_group = polis_group.reindex(comps.annotator_levels).to_numpy()
    clustered = polis_group != "unclustered"
    fits, rows = {}, []
    for K in Ks:
        fits[K] = idata = ps.fit("annotator", comps, K=K, **_sampler(args))
        if K > 1:
            idata, _ = relabel(idata)
        member = idata.posterior["membership"].mean(("chain", "draw"))
        member = member.transpose("annotator", "group").values
        best = member.argmax(axis=1)
        rows.append({
            "K": K,
            "type_shares": " / ".join(f"{s:.2f}" for s in member.mean(axis=0)),
            "mean_max_membership": float(member.max(axis=1).mean()),
            "ari_vs_polis": realdata.adjusted_rand_index(best[clustered], polis_group[clustered])
            if K > 1 else 0.0,
            "diagnostics": ps.diagnostics.flag(idata) or "ok",
        })
    table = pd.DataFrame(rows).set_index("K")
    if len(fits) > 1:
        compared = compare_K(fits, comps=comps)
        compared.index = [int(str(k).split("=")[1]) for k in compared.index]
        table = table.join(compared[["elpd_loo", "se", "elpd_diff", "dse", "n_high_k"]])
    return table


def plot_statements(table: pd.DataFrame, path: Path, title: str) -> None:
    """Statement abilities with +-2 sd bars, best first."""
    fig, ax = plt.subplots(figsize=(6, 0.16 * len(table) + 1.2))
    y = np.arange(len(table))
    ax.errorbar(table["ability"], y, xerr=2 * table["sd"], fmt="o", ms=3, lw=1)
    ax.set_yticks(y, table.index, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"ability (reference {table.index[table['sd'] == 0][0]} = 0), +-2 sd")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help=f"data folder (default: ${realdata.ENV_VAR} or ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("out/audit_polis"), help="output folder")
    p.add_argument("--conversation", default="brexit-consensus",
                   choices=realdata.POLIS_CONVERSATIONS)
    p.add_argument("--max-pairs", type=int, default=30, help="pairs kept per participant")
    p.add_argument("--seed", type=int, default=1, help="seed of the pair subset and sampler")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000, help="draws (and warm-up) per chain")
    p.add_argument("--quick", action="store_true",
                   help="CI subset: brexit only, 300 draws per chain, 15 pairs per participant, "
                        "K = 1, 2")
    args = p.parse_args(argv)
    if args.quick:
        args.draws, args.max_pairs = min(args.draws, 300), min(args.max_pairs, 15)
        args.conversation = "brexit-consensus"
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    comps = realdata.load_polis(args.conversation, args.data, max_pairs=args.max_pairs,
                                seed=args.seed)
    idata = ps.fit("aggregate", comps, **_sampler(args))
    statements = statement_table(comps, idata, args.conversation, args.data)
    realdata.write_table(statements, out, "statements",
                         f"Aggregate statement abilities, {args.conversation}.")
    plot_statements(statements, out / "types.png",
                    f"{args.conversation}: aggregate ranking {ps.diagnostics.flag(idata)}")
    latent = latent_fits(comps, args, [1, 2] if args.quick else [1, 2, 3])
    realdata.write_table(latent, out, "latent",
                         "Latent types by K: leave-one-participant-out LOO and adjusted Rand "
                         "index against Polis's own groups (computed from the same votes).")
    best_k = int(latent["elpd_loo"].idxmax()) if "elpd_loo" in latent else 1
    head = pd.DataFrame({"value": {
        "participants": len(comps.annotator_levels), "pairs": comps.n,
        "K by LOO": best_k, "ARI at that K": f"{latent.loc[best_k, 'ari_vs_polis']:.2f}",
        "top statement": statements.index[0],
    }}).rename_axis(args.conversation)
    print(realdata.markdown_table(head))
    lines = ["# Polis audit", "",
             f"{args.conversation}: {comps.n} within-participant pairs from "
             f"{len(comps.annotator_levels)} participants (at most {args.max_pairs} each).",
             "Polis groups are derived from the same votes: a reference, not ground truth.", "",
             realdata.markdown_table(head), realdata.markdown_table(latent),
             realdata.markdown_table(statements.head(15))]
    tmp = out / ".report.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

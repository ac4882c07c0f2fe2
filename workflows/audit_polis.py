"""Audit of Polis conversations: latent opinion types from agree / disagree votes.

Polis participants vote agree / disagree / pass on short statements. The votes become
within-participant comparisons (:func:`pluralstan.realdata.load_polis`): a statement the
participant agreed with is preferred to one they disagreed with; passes are not used; at most
``--max-pairs`` pairs per participant (a seeded subset), because the ``n_agree x n_disagree``
pairs of one participant come from only ``n_agree + n_disagree`` votes. The audit fits

1. the aggregate item model (one statement ranking for everybody: the "consensus" view);
2. the annotator-latent model with K = 1..3 types (``--K``; ``--quick``: 1, 2), chosen by
   leave-one-participant-out PSIS-LOO (:func:`pluralstan.checks.compare.compare_K`), with
   the types relabelled draw by draw (Stephens' method, :func:`pluralstan.relabel.relabel`);
3. the agreement of each participant's most probable type with Polis's own opinion group
   (adjusted Rand index). Caveat: Polis's groups are computed from the same votes (PCA +
   k-means), so agreement shows the two methods see the same structure, not that either is
   right.

``--quick`` (the test suite's subset): brexit-consensus, at most 15 pairs per participant,
K = 1, 2, 2 chains x 300 draws.

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
from pluralstan.checks.compare import SUMMARY_COLUMNS, compare_K
from pluralstan.data import Comparisons
from pluralstan.files import write_atomic
from pluralstan.outputs import (
    audit_parser,
    run_script,
    save_figure,
    step,
    write_table,
)


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
    polis_group = comps.frame.drop_duplicates("annotator").set_index("annotator")["group"]
    polis_group = polis_group.reindex(comps.annotator_levels).to_numpy()
    clustered = polis_group != "unclustered"
    fits, rows = {}, []
    for K in Ks:
        # no replicated data: the audit checks no predictions, and on vTaiwan y_rep would be
        # 30,000 cells x outcomes per draw
        fits[K] = idata = ps.fit("annotator", comps, K=K, replicate=False, **_sampler(args))
        member = idata.posterior["membership"].mean(("chain", "draw"))
        member = member.transpose("annotator", "group").values
        best = member.argmax(axis=1)
        rows.append({
            "K": K,
            "type_shares": " / ".join(f"{s:.2f}" for s in member.mean(axis=0)),
            "mean_max_membership": float(member.max(axis=1).mean()),
            "ari_vs_polis": realdata.adjusted_rand_index(best[clustered], polis_group[clustered])
            if K > 1 else 0.0,
            **realdata.diagnostic_columns(idata),
        })
    table = pd.DataFrame(rows).set_index("K")
    if len(fits) > 1:
        table = table.join(compare_K(fits, comps=comps)[SUMMARY_COLUMNS])
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
    """Command-line options: the shared ones (``--quick``, ``--seed``, ``--out``) and ``--data``."""
    p = audit_parser(__doc__.split("\n\n")[0], "out/audit_polis")
    p.add_argument("--conversation", default="brexit-consensus",
                   choices=realdata.POLIS_CONVERSATIONS)
    p.add_argument("--max-pairs", type=int, default=30, help="pairs kept per participant")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 3],
                   help="numbers of latent types compared by LOO (default 1 2 3)")
    args = p.parse_args(argv)
    if args.quick:
        args.draws, args.max_pairs = min(args.draws, 300), min(args.max_pairs, 15)
        args.chains, args.K = min(args.chains, 2), [1, 2]
        args.conversation = "brexit-consensus"
    return args


def _markdown(table: pd.DataFrame) -> str:
    return table.reset_index().to_markdown(index=False, floatfmt=".3g") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    comps = realdata.load_polis(args.conversation, args.data, max_pairs=args.max_pairs,
                                seed=args.seed)
    with step(f"aggregate fit, {comps.n} pairs"):
        idata = ps.fit("aggregate", comps, **_sampler(args))
    statements = statement_table(comps, idata, args.conversation, args.data)
    write_table(statements.reset_index(), out, "statements", floatfmt=".4g")
    plot_statements(statements, out / "types.png",
                    f"{args.conversation}: aggregate ranking {ps.diagnostics.flag(idata)}")
    with step(f"annotator-latent fits, K = {args.K}"):
        latent = latent_fits(comps, args, args.K)
    write_table(latent.reset_index(), out, "latent", floatfmt=".4g")
    best_k = int(latent["elpd_loo"].idxmax()) if "elpd_loo" in latent else args.K[0]
    head = pd.DataFrame({"value": {
        "participants": len(comps.annotator_levels), "pairs": comps.n,
        "K by LOO": best_k, "ARI at that K": f"{latent.loc[best_k, 'ari_vs_polis']:.2f}",
        "top statement": statements.index[0],
    }}).rename_axis(args.conversation)
    print(_markdown(head))
    lines = ["# Polis audit", "",
             f"{args.conversation}: {comps.n} within-participant pairs from "
             f"{len(comps.annotator_levels)} participants (at most {args.max_pairs} each); "
             f"{args.chains} chains x {args.draws} draws, seed {args.seed}.",
             "Polis groups are derived from the same votes: a reference, not ground truth.", "",
             "## Headline", "", _markdown(head),
             "## Latent types by K", "",
             "Leave-one-participant-out PSIS-LOO and adjusted Rand index of each participant's "
             "most probable type against Polis's own groups (clustered participants only).", "",
             _markdown(latent),
             "## Aggregate statement abilities (top 15)", "", _markdown(statements.head(15))]
    write_atomic(out / "report.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

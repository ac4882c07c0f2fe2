"""Simulation-based calibration of every comparison model (Talts et al. 2018; Modrak et al. 2023).

For each model, :func:`pluralstan.checks.sbc.sbc` draws parameters from the prior with the Stan
program itself (``prior_only = 1``), simulates judgements on a small fixed design, refits, and
ranks every parameter (mixture components as label-invariant order statistics) and the log
likelihood of the simulated data among the posterior draws. Verdicts: the simultaneous ECDF-band
test at 95% (family-wise over a model's quantities, Bonferroni) and a rank-histogram chi-square.

Designs (small, so that hundreds of refits are affordable; d = 2 attributes):

* ``aggregate``: 20 option pairs x 5 anonymous judgements;
* ``labeled``: 2 labeled groups, 12 annotators judging 6 of 20 pairs each;
* ``unlabeled``: the same judgements without labels (K = 2);
* ``annotator``: the same, annotator identities kept and labels dropped (K = 2);
* ``covariate``: 12 annotators with one standard normal covariate, 6 of 20 pairs each (K = 2);
* ``pal``: the PAL ideal-point model, 6 users x 10 judgements between 20 options (K = 2
  prototypes); ranked: the Cholesky factor ``L_M`` of the metric, the prototype utilities
  ``theta`` and user weights ``w`` (as order statistics over the prototypes) and the user
  utilities ``beta``.

The annotator-level models (``annotator``, ``covariate``, ``pal``) rank the sum of their
per-annotator ``log_lik``, evaluated at the truth by the program itself with the simulated data.

Outputs in --out: ``sbc_summary.{csv,md}`` (headline: one row per model and quantity),
``sbc_ranks.csv`` (every rank), ``sbc_<model>_ranks.png`` and ``sbc_<model>_ecdf_diff.png``.
Per-simulation results are stored under ``<out>/jobs/<model>`` (an interrupted run resumes).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd

import pluralstan as ps
from pluralstan.checks.sbc import sbc
from pluralstan.files import write_atomic
from pluralstan.models import covariate, pal
from pluralstan.outputs import run_script, script_parser, step, write_table
from pluralstan.parallel import local_pool
from pluralstan.plots import save_sbc_plots

THETA = np.array([[1.0, -0.5], [-0.5, 1.0]])


def designs(seed: int) -> dict[str, tuple[ps.Comparisons, int | None, dict]]:
    """Model -> (design whose outcomes SBC replaces, K, further arguments of ``sbc``)."""
    labeled = ps.simulate.mixture(THETA, [0.5, 0.5], n_pairs=20, n_annotators=12,
                                  pairs_per_annotator=6, seed=seed)
    unlabeled = ps.Comparisons.from_frame(labeled.frame.drop(columns="group"))
    cov = covariate.simulate(THETA, np.array([[0.0, 0.0], [0.0, 1.0]]), n_annotators=12,
                             n_pairs=20, pairs_per_annotator=6, seed=seed)
    users = pal.simulate(K=2, n_annotators=6, judgements=10, n_attributes=2, n_items=20,
                         seed=seed)
    return {
        "aggregate": (ps.simulate.bt(THETA[0], n_pairs=20, judgements_per_pair=5, seed=seed),
                      None, {}),
        "labeled": (labeled, 2, {}),
        "unlabeled": (unlabeled, 2, {}),
        "annotator": (unlabeled, 2, {}),
        "covariate": (cov, 2, {}),
        "pal": (users, 2, {"var_names": ["L_M", "theta", "w", "beta"]}),
    }


def main(argv: list[str] | None = None) -> int:
    """Run SBC for every model and print the summary table."""
    parser = script_parser(__doc__.split("\n\n")[0], "results/sbc")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel fits (default: number of cores)")
    args = parser.parse_args(argv)
    if args.quick:
        settings = {"n_sims": 10, "chains": 1, "draws": 100, "warmup": 150, "thin": 1}
    else:
        settings = {"n_sims": 200, "chains": 2, "draws": 200, "warmup": 300, "thin": 2}
    results, summaries = {}, []
    with local_pool(args.workers) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)  # reported in the table
        for i, (model, (design, K, extra)) in enumerate(designs(args.seed).items()):
            with step(f"SBC {model}: {settings['n_sims']} simulations"):
                result = sbc(model, design, K=K, seed=args.seed + i, scheduler=pool,
                             out_dir=args.out / "jobs" / model, progress=False,
                             **settings, **extra)
            results[model] = result
            summaries.append(result.summary().assign(model=model, n_failed=result.n_failed))
            save_sbc_plots(result, args.out)
    summary = pd.concat(summaries, ignore_index=True)
    summary = summary[["model", *[c for c in summary if c != "model"]]]
    ranks = pd.concat([r.ranks.assign(model=m) for m, r in results.items()], ignore_index=True)
    write_table(summary, args.out, "sbc_summary")
    write_atomic(args.out / "sbc_ranks.csv", ranks.to_csv(index=False))
    print(f"SBC: {settings['n_sims']} simulations per model, {settings['chains']} chain(s) x "
          f"{settings['draws']} draws, thin {settings['thin']}")
    print(summary[["model", "quantity", "n_sims", "max_rank", "ecdf_max_diff", "in_band",
                   "chi2_p", "pass", "n_sims_divergent", "n_failed"]]
          .to_markdown(index=False, floatfmt=".3f"))
    for result in results.values():
        print(result.report())
    if args.quick:
        print("(--quick: 10 simulations only check the plumbing; the tests have little power)")
    print(f"\ntables and figures written to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

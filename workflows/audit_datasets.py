"""`pluralstan audit` on every real data set beside the project that has repeated judgements.

Each data set is read by its loader in :mod:`pluralstan.realdata` and audited by
:func:`pluralstan.audit.audit` (the Python form of ``pluralstan audit``): aggregate fit,
annotator latent types for K = 1..4 (``--K``) chosen by leave-one-annotator-out LOO, the
covariate-informed fit at the chosen K when the data set has an annotator table, the labeled
fit when it has observed groups, and the report with its verdict card.

Data sets (``--datasets``):

``cems``
    CEMS business-school choice, 303 students x 15 pairs of 6 schools; observed groups = full-time
    work; student covariates (languages, study, gender, ...).
``german_parties``
    German parties 2009, 192 respondents x 15 pairs of 6 options; covariates gender, age,
    education, crisis (the interviewer id is an id, not a covariate, and is left out).
``polis_brexit``
    Polis brexit-consensus votes as within-participant pairs (at most 30 per participant);
    observed groups = Polis's own opinion groups (derived from the same votes); no covariates.
``taxes``
    Tax-plan conjoint, the 1,925 of 2,000 respondents with a known party x 8 choices between
    plans, utility linear in attribute-level dummies; observed groups = party, covariates party
    and inequality aversion. The labeled fit pools the three parties partially, in the
    conditional parametrisation (``pluralstan.models.labeled``), which samples their 25
    between-party scales in both of their regimes; in the non-centred form that fit took hours.
``vtaiwan``
    Polis vTaiwan (uberX) votes as within-participant pairs: 1,235 participants over 110
    statements (those in an agree / disagree pair); observed groups = Polis's opinion groups.

At the defaults (4 chains x 1000 draws, K = 1..4, leave-one-annotator-out by mixture
importance sampling when PSIS-LOO is unreliable) on 2 cores, CEMS and German parties take about
a minute, Polis brexit about 3.5, the tax conjoint about 14-17 minutes and vTaiwan about 19
(``python benchmarks/run.py --targets realdata`` times them); ``--chains``,
``--draws`` and ``--K`` trade precision for time, and each report states the settings it was
written with.

Outputs: one report folder per data set in ``--out`` (``report.html``, ``report.md``,
``audit.json``, ``figures/``, ``fits/``) and ``verdicts.md``, every data set's verdict card.
``--quick``: K = 1, 2 and 2 chains x 200 draws.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pluralstan import realdata
from pluralstan.audit import audit
from pluralstan.data import Comparisons
from pluralstan.files import write_atomic
from pluralstan.outputs import audit_parser, run_script, step


def _german_parties(folder) -> Comparisons:
    comps = realdata.load_german_parties(folder)
    people = comps.annotators.drop(columns="interviewer")
    return Comparisons.from_frame(comps.to_frame(), annotators=people,
                                  reference=comps.reference, warn_unidentified=False)


LOADERS: dict[str, Callable[..., Comparisons]] = {
    "cems": lambda folder: realdata.load_cems(folder, group="work"),
    "german_parties": _german_parties,
    "polis_brexit": lambda folder: realdata.load_polis("brexit-consensus", folder),
    "taxes": realdata.load_taxes,
    "vtaiwan": lambda folder: realdata.load_polis("vtaiwan.uberx", folder),
}


def parse_args(argv: list[str] | None = None):
    """The shared audit options plus ``--datasets`` and ``--K``."""
    p = audit_parser(__doc__.split("\n\n")[0], "out/audit_datasets")
    p.add_argument("--datasets", nargs="+", choices=sorted(LOADERS), default=list(LOADERS),
                   help="data sets to audit")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="numbers of latent types to compare")
    args = p.parse_args(argv)
    if args.quick:
        args.K, args.chains, args.draws = [1, 2], min(args.chains, 2), min(args.draws, 200)
    return args


def main(argv: list[str] | None = None) -> int:
    """Audit each data set; returns the process exit status."""
    args = parse_args(argv)
    cards = []
    for name in args.datasets:
        comps = LOADERS[name](args.data)
        with step(f"{name}: {comps.n} judgements by {len(comps.annotator_levels)} annotators"):
            result = audit(comps, args.out / name, K=args.K, chains=args.chains,
                           draws=args.draws, warmup=args.draws, seed=args.seed, progress=False)
        verdicts = pd.DataFrame(result.summary["verdicts"])[["item", "mark", "finding"]]
        cards += [f"## {name} ([report]({name}/report.html)): K = "
                  f"{result.summary['K']['chosen']}", "",
                  verdicts.to_markdown(index=False), ""]
    write_atomic(args.out / "verdicts.md", "\n".join(["# Verdict cards", "", *cards]))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

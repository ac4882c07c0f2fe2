"""The ``pluralstan`` command line.

Examples
--------
::

    pluralstan models                                   # list the registered models
    pluralstan simulate high-conflict --out comps.csv   # the position paper's Table 1 data
    pluralstan fit aggregate comps.csv --out fit.nc     # fit, check diagnostics, save NetCDF
    pluralstan summary fit.nc                           # posterior summary + diagnostics
    pluralstan disclose comps.csv agg.nc mix.nc --out report/   # the four-item disclosure
    pluralstan audit judgements.csv --annotators people.csv --out report/  # all of it at once
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import PluralstanError
from .files import check_writable, write_atomic
from .outputs import HelpFormatter

EPILOG = """\
The comparison CSV has one row per judgement: columns `y` (1 = option a preferred, 0 = b
preferred, 0.5 = tie), optional `annotator`, `group`, `order`, `pair`, and either attribute
columns `a_<name>`/`b_<name>` or item ids `item_a`/`item_b` (with --items for an item-feature
table). Engine: --backend or $PLURALSTAN_BACKEND (auto | pystan | cmdstanpy).
"""


def _parse_prior(items: Sequence[str]) -> dict[str, object]:
    """Parse ``KEY=VALUE`` prior overrides; VALUE is a number or a JSON list."""
    priors: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PluralstanError(f"--prior expects KEY=VALUE (e.g. theta_sd=1.0), got {item!r}")
        try:
            priors[key] = json.loads(value)
        except json.JSONDecodeError:
            raise PluralstanError(
                f"--prior {key}: value {value!r} is neither a number nor a JSON list"
            ) from None
    return priors


def cmd_models(args: argparse.Namespace) -> int:
    """List registered models."""
    from .models import REGISTRY

    width = max(len(n) for n in REGISTRY)
    for name, spec in sorted(REGISTRY.items()):
        k = " (takes --K)" if spec.needs_K else ""
        print(f"{name:<{width}}  {spec.summary}{k}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated comparisons as CSV."""
    from . import simulate

    if args.design == "rlhf":
        judgements, responses, people, _ = simulate.rlhf(
            n_annotators=args.annotators, per_annotator=args.per_annotator or 15,
            seed=args.seed)
        out = Path(args.out)
        for name, frame in (("judgements", judgements), ("responses", responses),
                            ("annotators", people)):
            write_atomic(out / f"{name}.csv", frame.to_csv(index=False))
        print(f"wrote {len(judgements)} judgements, {len(responses)} responses and "
              f"{len(people)} annotators to {out}/")
        return 0
    if args.design == "high-conflict":
        comps = simulate.high_conflict(n_pairs=args.pairs, n_annotators=args.annotators,
                                       pairs_per_annotator=args.per_annotator, seed=args.seed)
    else:
        try:
            theta = [float(v) for v in args.theta.split(",")]
        except ValueError:
            raise PluralstanError(
                f"--theta expects comma-separated numbers (e.g. 1,-1,0.5), got {args.theta!r}"
            ) from None
        comps = simulate.bt(theta, n_pairs=args.pairs, judgements_per_pair=args.annotators,
                            seed=args.seed)
    write_atomic(Path(args.out), comps.to_frame().to_csv(index=False))
    print(f"wrote {comps.n} judgements to {args.out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a model to a CSV and save the InferenceData."""
    from .data import read_csv
    from .fit import fit

    check_writable(args.out)  # before sampling: a typo in --out must not cost the fit
    comps = read_csv(args.comparisons, items=args.items, annotators=args.annotators,
                     reference=args.reference)
    idata = fit(args.model, comps, K=args.K, priors=_parse_prior(args.prior), chains=args.chains,
                draws=args.draws, warmup=args.warmup, seed=args.seed, backend=args.backend,
                sample_prior=args.sample_prior, adapt_delta=args.adapt_delta,
                **_latent_options(args))
    saved = _save_or_keep(idata, Path(args.out))
    if saved is None:
        print(f"saved {args.out}")
    _print_summary(idata)
    return 0 if saved is None else 1


def _latent_options(args: argparse.Namespace) -> dict[str, object]:
    """The latent-type options of ``fit``, passed only when they differ from ps.fit's defaults
    (the other models do not take them)."""
    options: dict[str, object] = {}
    if args.modes != "none":
        options |= {"modes": args.modes, "n_starts": args.n_starts}
    if args.no_stack:
        options["stack"] = False
    if args.no_relabel:
        options["relabel"] = False
    return options


def _save_or_keep(idata, out: Path) -> Path | None:
    """Save the fit to ``out``; when that fails, save it in the temporary folder instead.

    Returns
    -------
    Path or None
        ``None`` when ``out`` was written, else where the fit was kept (said on stderr).
    """
    import tempfile

    from .fit import save

    try:
        save(idata, out)
        return None
    except (OSError, PluralstanError) as err:
        fd, name = tempfile.mkstemp(prefix=f"pluralstan-fit-{out.stem[:40]}-", suffix=".nc")
        os.close(fd)
        save(idata, name)
        print(f"pluralstan: error: could not write {str(out)!r} ({err}); the fit was kept in "
              f"{name!r} instead: move it where you want it", file=sys.stderr)
        return Path(name)


def _print_summary(idata) -> None:
    from . import _arviz, diagnostics

    post = _arviz.group(idata, "posterior")
    names = [v for v in post.data_vars if post[v].ndim <= 4 and post[v].size // (
        post.sizes["chain"] * post.sizes["draw"]) <= 50]
    print(_arviz.summary(idata, var_names=names, ci_prob=0.94).to_string())
    problems = diagnostics.failed(idata)
    print("diagnostics: " + ("all checks passed" if not problems else "; ".join(problems)))
    print(diagnostics.summary(idata))  # checks, notes (label switching resolved), modes


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the summary and diagnostics of a saved fit."""
    from .fit import load

    idata = load(args.fit)
    attrs = idata["posterior"].attrs
    print(f"model {attrs.get('model')} | engine {attrs.get('engine_version')} | "
          f"seed {attrs.get('seed')} | program sha256 {str(attrs.get('stan_program_sha256'))[:12]}")
    _print_summary(idata)
    return 0


def cmd_disclose(args: argparse.Namespace) -> int:
    """Write the four-item pluralism identifiability disclosure from saved fits."""
    from .checks import disclosure_report
    from .data import read_csv
    from .fit import load

    comps = read_csv(args.comparisons, items=args.items, annotators=args.annotators)
    test = read_csv(args.test, items=args.items) if args.test else None
    report = disclosure_report(comps, load(args.aggregate), load(args.mixture), args.out,
                               test=test, target=args.target)
    print(f"wrote {report.paths['markdown']} and {report.paths['html']}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Fit, choose K and write the latent-type disclosure report in one command."""
    from .audit import SEARCH_STARTS, audit, read_judgements

    comps = read_judgements(args.judgements, items=args.items, annotators=args.annotators,
                            group=args.group)
    result = audit(comps, args.out, K=args.K, chains=args.chains, draws=args.draws,
                   warmup=args.warmup, seed=args.seed, backend=args.backend,
                   pooling=args.pooling, kfold=args.kfold,
                   starts=SEARCH_STARTS if args.starts is None else args.starts,
                   verbose=args.verbose,
                   progress=not args.no_progress)
    for row in result.summary["verdicts"]:
        print(f"{row['mark']:>7}  {row['item']}: {row['finding']}")
    print(f"K = {result.summary['K']['chosen']}; report: {result.paths['report.html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="pluralstan",
        description="Bayesian identifiability audits for pluralistic preference models "
        "(Bradley-Terry mixtures in Stan).",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = functools.partial(sub.add_parser, formatter_class=HelpFormatter)

    p = command("models", help="list the registered models")
    p.set_defaults(func=cmd_models)

    p = command("simulate", help="write simulated comparisons as CSV")
    p.add_argument("design", choices=["high-conflict", "bt", "rlhf"],
                   help="high-conflict: the position paper's Table 1 population; bt: one "
                        "theta; rlhf: three annotator types in the RLHF layout "
                        "(judgements.csv, responses.csv, annotators.csv)")
    p.add_argument("--out", required=True, help="CSV file to write (rlhf: a folder)")
    p.add_argument("--pairs", type=int, default=200, help="option pairs")
    p.add_argument("--annotators", type=int, default=100,
                   help="annotators (high-conflict) or judgements per pair (bt)")
    p.add_argument("--per-annotator", type=int, default=None,
                   help="pairs each annotator judges (high-conflict; none: all; rlhf: 15)")
    p.add_argument("--theta", default="1,-1,0.5", help="bt: comma-separated theta")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.set_defaults(func=cmd_simulate)

    p = command("fit", help="fit a model to a comparison CSV and save NetCDF",
                       epilog=EPILOG)
    p.add_argument("model", help="model name (see `pluralstan models`)")
    p.add_argument("comparisons", help="comparison table (CSV)")
    p.add_argument("--out", required=True, help="NetCDF file for the InferenceData")
    p.add_argument("--K", type=int, default=None, help="number of mixture components")
    p.add_argument("--items", default=None, help="item-feature table (CSV, column `item`)")
    p.add_argument("--annotators", default=None,
                   help="annotator covariate table (CSV, column `annotator`)")
    p.add_argument("--reference", default=None, help="reference item (ability fixed at 0)")
    p.add_argument("--prior", action="append", default=[], metavar="KEY=VALUE",
                   help="override a prior hyperparameter (repeatable), e.g. theta_sd=1")
    p.add_argument("--chains", type=int, default=4, help="Markov chains")
    p.add_argument("--draws", type=int, default=1000, help="draws per chain after warm-up")
    p.add_argument("--warmup", type=int, default=1000, help="warm-up iterations per chain")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--adapt-delta", type=float, default=0.8,
                   help="target acceptance rate of NUTS's step-size adaptation")
    p.add_argument("--backend", default="auto", choices=["auto", "pystan", "cmdstanpy"],
                   help="Stan engine (auto: cmdstanpy when CmdStan is installed, else pystan)")
    p.add_argument("--sample-prior", action="store_true",
                   help="also sample the prior (adds prior / prior_predictive groups)")
    p.add_argument("--modes", choices=["none", "search"], default="none",
                   help="latent types: search for distinct modes (multi-start L-BFGS) before "
                        "sampling and start the chains in the best ones")
    p.add_argument("--n-starts", type=int, default=20, help="starts of the mode search")
    p.add_argument("--no-stack", action="store_true",
                   help="latent types: keep chains stuck in different modes as they are "
                        "instead of stacking them")
    p.add_argument("--no-relabel", action="store_true",
                   help="latent types: keep the draws' labels as sampled")
    p.set_defaults(func=cmd_fit)

    p = command("disclose", help="four-item pluralism identifiability disclosure report "
                       "(Markdown + HTML) from saved fits")
    p.add_argument("comparisons", help="comparison CSV the fits were made on")
    p.add_argument("aggregate", help="NetCDF of the aggregate fit")
    p.add_argument("mixture", help="NetCDF of a mixture fit (labeled, annotator, ...)")
    p.add_argument("--test", default=None,
                   help="held-out comparison CSV (with `group`) for the masking ratio")
    p.add_argument("--items", default=None, help="item-feature table (CSV)")
    p.add_argument("--annotators", default=None, help="annotator covariate table (CSV)")
    p.add_argument("--target", choices=["observed", "truth"], default=None,
                   help="masking target (default: observed frequencies)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_disclose)

    p = command("audit", help="audit your own judgements in one command: aggregate and "
                "latent-type fits, K by leave-one-annotator-out LOO, the four-item disclosure "
                "with a verdict card (HTML, Markdown, JSON, NetCDF)", epilog=EPILOG + """
RLHF layout: one row per judgement with `chosen`, `rejected` (response ids) and `annotator`;
--items then gives response features (column `item` = response id).""")
    p.add_argument("judgements", help="judgement table (CSV): pluralstan's format or the RLHF "
                                      "layout (chosen / rejected / annotator)")
    p.add_argument("--annotators", default=None,
                   help="annotator covariate table (CSV, column `annotator`): adds the "
                        "covariate-informed fit and who is in each type")
    p.add_argument("--items", default=None, help="item / response feature table (CSV, column "
                                                 "`item`)")
    p.add_argument("--group", default=None, help="column of observed groups: adds the labeled "
                                                 "fit and its own disclosure")
    p.add_argument("--pooling", choices=["partial", "none"], default=None,
                   help="labeled fit (with --group): pooling of the groups' coefficients "
                        "(default: partial from three groups on, else none)")
    p.add_argument("--K", type=int, nargs="+", default=[1, 2, 3, 4],
                   help="numbers of latent types to compare")
    p.add_argument("--kfold", type=int, default=None, metavar="FOLDS",
                   help="choose K by K-fold cross-validation by annotator with FOLDS folds (0: "
                        "by PSIS-LOO however unreliable; none: by PSIS-LOO, or by mixture "
                        "importance sampling when more than 5%% of the annotators have Pareto "
                        "k > 0.7)")
    p.add_argument("--starts", type=int, default=None, metavar="N",
                   help="random starts of the mode search before each fit (but a partially "
                        "pooled labeled fit); the chains start in the best mode found (0: "
                        "Stan's random inits; default: pluralstan.audit.SEARCH_STARTS)")
    p.add_argument("--out", required=True, help="report folder (written whole at the end)")
    p.add_argument("--chains", type=int, default=4, help="Markov chains per fit")
    p.add_argument("--draws", type=int, default=1000, help="draws per chain after warm-up")
    p.add_argument("--warmup", type=int, default=1000, help="warm-up iterations per chain")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--backend", default="auto", choices=["auto", "pystan", "cmdstanpy"],
                   help="Stan engine (auto: cmdstanpy when CmdStan is installed, else pystan)")
    p.add_argument("--verbose", action="store_true",
                   help="show the engine's output and every warning")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_audit)

    p = command("summary", help="summary and diagnostics of a saved fit")
    p.add_argument("fit", help="NetCDF file written by `pluralstan fit`")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pluralstan`` console script.

    Returns
    -------
    int
        The exit code: 0 done, 1 the fit was saved elsewhere than ``--out`` (said on stderr),
        2 bad input (a one-line ``pluralstan: error: ...``), 130 interrupted by Ctrl-C (the
        one line ``pluralstan: interrupted``; no sampler process is left and no partial file).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PluralstanError as err:
        print(f"pluralstan: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(exiting=argv is None)


def _interrupted(exiting: bool) -> int:
    """Report Ctrl-C in one line and return the shell's code for it (128 + SIGINT).

    The engine has stopped its sampler processes (:class:`pluralstan.errors.Interrupted`) and
    outputs are written whole or not at all, so nothing is left to clean up. When ``main`` runs
    as the program (``exiting``: its arguments come from ``sys.argv``), a second Ctrl-C while
    the interpreter exits leaves at once, without a traceback.
    """
    if exiting and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _exit_now)
    # PyStan's progress line is left open when stderr is not a terminal
    start = "" if sys.stderr.isatty() else "\n"
    print(f"{start}pluralstan: interrupted", file=sys.stderr, flush=True)
    return 128 + signal.SIGINT


def _exit_now(signum: int, frame: object) -> None:
    """SIGINT handler after the first Ctrl-C: exit with 128 + ``signum`` straight away."""
    os._exit(128 + signum)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

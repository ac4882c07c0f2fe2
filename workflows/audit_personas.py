"""Audit with semi-synthetic users built from Anthropic persona statements (PAL-style).

Users are simulated from known personas (:func:`pluralstan.realdata.load_personas` states the
construction: liberal and conservative personas by default, a user prefers the statement
their persona agrees with with probability ``logistic(beta)``), and statements are described
by offline TF-IDF + truncated-SVD features, so the models must learn a preference that is
linear in text features and group recovery can be scored against the truth.

Splits, following PAL's evaluation (Chen et al. 2024):

* **seen**: users in the training set, on their held-out pairs (``--holdout`` of each user's
  pairs);
* **unseen**: users never seen in training; the aggregate model predicts them as anybody,
  the latent model with its population mixture ``pi``;
* **few-shot**: the same unseen users after ``--shots`` of their pairs are revealed: the
  latent model's type posterior for the new user is updated from those pairs, per posterior
  draw (``p(k | shots) ∝ pi_k prod_j p(y_j | theta_k)``), and the remaining pairs are
  predicted.

Accuracy is the share of held-out judgements whose posterior-mean predictive probability is on
the right side of 1/2; ``oracle_accuracy`` is that of the true probabilities on the same
judgements (pairs the persona is indifferent about count half), the ceiling. The fitted models
(as ``--models`` selects) are the aggregate model, the annotator-latent model and PAL's
ideal-point model (``"pal"``, model A with a linear map), the latter two with K = number of
personas. The PAL model's unseen / few-shot predictions are
:func:`pluralstan.checks.pal_users.accuracy`'s: zero-shot averages the seen users'
probabilities; few-shot localises each new user from the same revealed pairs with the shared
parameters held at their posterior (:func:`pluralstan.checks.pal_users.fit_new_users`). Group
recovery: adjusted Rand
index of the training users' most probable type (annotator model: membership; PAL: largest
prototype weight) against their persona, computed per posterior draw and averaged, so label
switching between chains cannot lower it.

The new-user localisation of PAL runs min(chains, 2) chains x min(draws, 500) draws.
``--quick`` (the test suite's subset): 20 users per persona, 30 pairs each, 6 features,
2 chains x 300 draws.

Outputs in ``--out``: ``accuracy.{csv,md}``, ``accuracy.png``, ``report.md``.
Run ``python workflows/audit_personas.py --help``.
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
from scipy.special import expit, log_expit, logsumexp

import pluralstan as ps
from pluralstan import realdata
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

#: Strength of the simulated users' preference (:func:`pluralstan.realdata.load_personas`).
BETA = 3.0


def split(comps: Comparisons, unseen_share: float, holdout: float, shots: int, seed: int
          ) -> dict[str, np.ndarray]:
    """Row positions of the training set and of the seen / unseen / few-shot evaluation sets.

    A share ``unseen_share`` of each persona's users is held out entirely; every other user
    keeps ``1 - holdout`` of their pairs for training. Unseen users reveal their first
    ``shots`` pairs (``shots``) and are scored on the rest (``unseen_test``).
    """
    rng = np.random.default_rng(seed)
    users = comps.frame.drop_duplicates("annotator")[["annotator", "group"]]
    unseen = set(users.groupby("group")["annotator"].apply(
        lambda s: s.sample(frac=unseen_share, random_state=int(rng.integers(2**31)))
    ).explode())
    rows = {"train": [], "seen": [], "shots": [], "unseen_test": []}
    for user, pos in comps.frame.groupby("annotator", sort=False).indices.items():
        pos = rng.permutation(pos)
        if user in unseen:
            rows["shots"] += list(pos[:shots])
            rows["unseen_test"] += list(pos[shots:])
        else:
            n_test = round(holdout * len(pos))
            rows["seen"] += list(pos[:n_test])
            rows["train"] += list(pos[n_test:])
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in rows.items()}


def _draws(idata, name: str, dims: tuple[str, ...]) -> np.ndarray:
    da = idata.posterior[name].stack(sample=("chain", "draw"))
    return da.transpose("sample", *dims).values


def oracle_accuracy(comps: Comparisons, rows: np.ndarray) -> float:
    """Accuracy of the true preference probabilities (the users' personas and ``BETA``).

    Pairs on which the persona's stance is equal have probability 1/2 and count as half right,
    so this is the best any model can expect on ``rows``, up to sampling noise.
    """
    truth = comps.truth
    k = truth["group"][comps.codes("annotator")][rows]
    ia, ib = np.array([p.split("|") for p in comps.frame["pair"].iloc[rows]], dtype=int).T
    p = expit(BETA * (truth["stance"][k, ia] - truth["stance"][k, ib]) / 2.0)
    y = comps.frame["y"].to_numpy()[rows]
    return float(np.mean(np.where(p == 0.5, 0.5, (p > 0.5) == (y == 1))))


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Share of judgements whose predictive probability of "a preferred" is on y's side."""
    return float(np.mean((p > 0.5) == (y == 1)))


def aggregate_predict(idata, X: np.ndarray) -> np.ndarray:
    """Posterior predictive P(a preferred) of the aggregate model."""
    theta = _draws(idata, "theta", ("attribute",))  # (S, P)
    return expit(X @ theta.T).mean(axis=1)


def latent_predict(idata, X: np.ndarray, users: np.ndarray, levels: list,
                   shots: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Posterior predictive P(a preferred) of the annotator-latent model.

    Training users are predicted with their per-draw memberships; new users with the
    population weights ``pi``, updated per draw by their revealed ``shots`` = (X, y, users)
    when given. Written by hand because this is a model-specific predictive rule.
    """
    theta = _draws(idata, "theta", ("group", "attribute"))  # (S, K, P)
    util = expit(np.einsum("np,skp->snk", X, theta))  # (S, N, K)
    known = pd.Index(levels).get_indexer(users)
    if (known >= 0).all():
        member = _draws(idata, "membership", ("annotator", "group"))[:, known, :]  # (S, N, K)
        return (util * member).sum(axis=2).mean(axis=0)
    log_w = np.log(_draws(idata, "pi", ("group",)))[:, None, :]  # (S, 1, K)
    log_w = np.repeat(log_w, len(users), axis=1)
    if shots is not None:
        Xs, ys, us = shots
        eta = np.einsum("np,skp->snk", Xs, theta)
        ll = np.where(ys[None, :, None] == 1, log_expit(eta), log_expit(-eta))  # (S, M, K)
        new = pd.Index(pd.unique(users))
        per_user = np.zeros((theta.shape[0], len(new), theta.shape[1]))
        np.add.at(per_user, (slice(None), new.get_indexer(us)), ll)
        log_w = log_w + per_user[:, new.get_indexer(users), :]
    w = np.exp(log_w - logsumexp(log_w, axis=2, keepdims=True))
    return (util * w).sum(axis=2).mean(axis=0)


def ari_per_draw(alloc: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Adjusted Rand index of each draw's most probable type against ``truth``.

    ``alloc`` is ``(draws, annotators, K)`` (membership probabilities or weights). Within one
    draw the labels are consistent, so the index is invariant to label switching.
    """
    best = alloc.argmax(axis=2)
    return np.array([realdata.adjusted_rand_index(b, truth) for b in best])


def unseen_table(comps: Comparisons, parts: dict[str, np.ndarray]) -> Comparisons:
    """The unseen users' judgements, each user's revealed ``shots`` rows first.

    :func:`pluralstan.checks.pal_users.accuracy` reveals a new user's first ``n`` judgements in
    table order and scores the rest, so this order makes its few-shot split the same as the
    other models'.
    """
    users = comps.frame["annotator"].to_numpy()
    order = []
    for user in pd.unique(users[parts["shots"]]):
        order += [r for r in parts["shots"] if users[r] == user]
        order += [r for r in parts["unseen_test"] if users[r] == user]
    return comps.subset(np.asarray(order, dtype=np.int64))


def pal_rows(idata, comps: Comparisons, parts: dict[str, np.ndarray], args) -> list[dict]:
    """Seen / unseen / few-shot rows of the PAL model
    (:func:`pluralstan.checks.pal_users.accuracy`)."""
    from pluralstan.checks import pal_users

    table = pal_users.accuracy(idata, comps.subset(parts["seen"]), unseen_table(comps, parts),
                               shots=(0, args.shots), chains=min(args.chains, 2),
                               draws=min(args.draws, 500), warmup=min(args.draws, 500),
                               seed=args.seed)

    def split_name(r: pd.Series) -> str:
        if r["setting"] == "seen":
            return "seen"
        return "unseen" if int(r["shots"]) == 0 else "few-shot"

    return [{"model": "pal", "split": split_name(r),
             "judgements": int(r["judgements"]), "accuracy": float(r["accuracy"]),
             "diagnostics": r["diagnostics"] or "ok"} for _, r in table.iterrows()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: the shared ones (``--quick``, ``--seed``, ``--out``) and ``--data``."""
    p = audit_parser(__doc__.split("\n\n")[0], "out/audit_personas")
    p.add_argument("--users", type=int, default=60, help="users per persona")
    p.add_argument("--pairs", type=int, default=40, help="pairs per user")
    p.add_argument("--features", type=int, default=16, help="SVD text features")
    p.add_argument("--holdout", type=float, default=0.25, help="held-out share of seen users")
    p.add_argument("--unseen", type=float, default=0.2, help="share of users held out")
    p.add_argument("--shots", type=int, default=5, help="revealed pairs of unseen users")
    p.add_argument("--models", default="annotator,pal",
                   help="comma-separated models fitted besides the aggregate one: "
                        "'annotator', 'pal'; 'none' for the aggregate model only")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.pairs = min(args.users, 20), min(args.pairs, 30)
        args.features, args.draws = min(args.features, 6), min(args.draws, 300)
        args.chains = min(args.chains, 2)
    args.models = model_list(p, args.models)
    return args


def diagnostics_lines(table: pd.DataFrame) -> list[str]:
    """Markdown bullets of the ``diagnostics`` column of a ``(model, split)`` table: one line
    per model when its rows agree, else one per split (PAL's new-user fits differ per split)."""
    lines = []
    for model, flags in table["diagnostics"].groupby(level="model", sort=False):
        if flags.nunique() == 1:
            lines.append(f"* {model}: {flags.iloc[0]}")
        else:
            lines += [f"* {model}, {split}: {flag}" for (_, split), flag in flags.items()]
    return lines


def _markdown(table: pd.DataFrame) -> str:
    return table.reset_index().to_markdown(index=False, floatfmt=".3f") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    comps = realdata.load_personas(args.data, beta=BETA, users_per_persona=args.users,
                                   pairs_per_user=args.pairs, n_components=args.features,
                                   seed=args.seed)
    parts = split(comps, args.unseen, args.holdout, args.shots, args.seed)
    train = comps.subset(parts["train"])
    X, y = comps.design(), comps.frame["y"].to_numpy()
    users = comps.frame["annotator"].to_numpy()
    # no model's replicated data is used here: not generating them keeps the PAL fit's output
    # (its cells x 2 counts per draw were most of it) and memory small
    sampler = {"chains": args.chains, "draws": args.draws, "warmup": args.draws,
               "seed": args.seed, "replicate": False}
    K = len(comps.group_levels)
    fits = {}
    for name in ["aggregate", *args.models]:
        with step(f"{name} fit, {train.n} training judgements"):
            fits[name] = ps.fit(name, train, **({} if name == "aggregate" else {"K": K}),
                                **sampler)
    rows = []
    shots = (X[parts["shots"]], y[parts["shots"]], users[parts["shots"]])
    for name, idata in fits.items():
        if name == "pal":
            with step("PAL seen / unseen / few-shot predictions"):
                rows += pal_rows(idata, comps, parts, args)
            continue
        for split_name, rows_, with_shots in (("seen", parts["seen"], False),
                                              ("unseen", parts["unseen_test"], False),
                                              ("few-shot", parts["unseen_test"], True)):
            if name == "aggregate":
                p = aggregate_predict(idata, X[rows_])
            else:
                p = latent_predict(idata, X[rows_], users[rows_], list(train.annotator_levels),
                                   shots if with_shots else None)
            rows.append({"model": name, "split": split_name, "judgements": len(rows_),
                         "accuracy": accuracy(p, y[rows_]),
                         "diagnostics": ps.diagnostics.flag(idata) or "ok"})
    table = pd.DataFrame(rows).set_index(["model", "split"])
    test_rows = {"seen": parts["seen"], "unseen": parts["unseen_test"],
                 "few-shot": parts["unseen_test"]}
    oracle = {s: oracle_accuracy(comps, r) for s, r in test_rows.items()}
    table.insert(2, "oracle_accuracy", table.index.get_level_values("split").map(oracle))
    # group recovery of the training users (truth in the models' annotator order)
    truth = train.frame.drop_duplicates("annotator")["group"].to_numpy()
    table["ari_train_users"] = np.nan
    for name, var in (("annotator", "membership"), ("pal", "w")):
        if name in fits:
            alloc = _draws(fits[name], var, ("annotator", "group"))
            table.loc[(name, "seen"), "ari_train_users"] = ari_per_draw(alloc, truth).mean()
    write_table(table.reset_index(), out, "accuracy", floatfmt=".4g")
    fig, ax = plt.subplots(figsize=(5, 3))
    wide = table["accuracy"].unstack("split")[["seen", "unseen", "few-shot"]]
    wide.plot.bar(ax=ax, rot=0)
    ax.axhline(0.5, color="0.6", lw=0.8)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    save_figure(fig, out / "accuracy.png")
    shown = table.drop(columns="diagnostics")
    print(_markdown(shown))
    lines = ["# Persona semi-synthetic audit", "",
             f"{comps.n} judgements by {len(comps.annotator_levels)} simulated users of the "
             f"personas {list(comps.group_levels)} ({args.users} per persona, {args.pairs} "
             f"pairs each); {args.features} TF-IDF/SVD features; {args.chains} chains x "
             f"{args.draws} draws, seed {args.seed}. Unseen users: {args.unseen:.0%} of each "
             f"persona; few-shot: {args.shots} revealed pairs.", "",
             "## Held-out accuracy (PAL's seen / unseen / few-shot splits)", "",
             _markdown(shown), "## Diagnostics", "", *diagnostics_lines(table), ""]
    write_atomic(out / "report.md", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, Path(__file__).name))

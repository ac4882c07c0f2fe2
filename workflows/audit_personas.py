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

Accuracy is the share of held-out judgements whose posterior predictive probability is on the
right side of 1/2. The fitted models are the aggregate model and the annotator-latent model
(K = number of personas); PAL's ideal-point model is left out until it is committed. Group
recovery: adjusted Rand index of the training users' most probable type against their persona.

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
from pluralstan.outputs import save_figure


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help=f"data folder (default: ${realdata.ENV_VAR} or ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("out/audit_personas"), help="output folder")
    p.add_argument("--seed", type=int, default=1, help="seed of the users, split and sampler")
    p.add_argument("--users", type=int, default=60, help="users per persona")
    p.add_argument("--pairs", type=int, default=40, help="pairs per user")
    p.add_argument("--features", type=int, default=16, help="SVD text features")
    p.add_argument("--holdout", type=float, default=0.25, help="held-out share of seen users")
    p.add_argument("--unseen", type=float, default=0.2, help="share of users held out")
    p.add_argument("--shots", type=int, default=5, help="revealed pairs of unseen users")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=1000, help="draws (and warm-up) per chain")
    p.add_argument("--quick", action="store_true",
                   help="CI subset: 25 users per persona, 30 pairs, 8 features, 300 draws")
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.pairs = min(args.users, 25), min(args.pairs, 30)
        args.features, args.draws = min(args.features, 8), min(args.draws, 300)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the audit; returns the process exit status."""
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    comps = realdata.load_personas(args.data, users_per_persona=args.users,
                                   pairs_per_user=args.pairs, n_components=args.features,
                                   seed=args.seed)
    parts = split(comps, args.unseen, args.holdout, args.shots, args.seed)
    train = comps.subset(parts["train"])
    X, y = comps.design(), comps.frame["y"].to_numpy()
    users = comps.frame["annotator"].to_numpy()
    sampler = {"chains": args.chains, "draws": args.draws, "warmup": args.draws,
               "seed": args.seed}
    fits = {"aggregate": ps.fit("aggregate", train, **sampler)}
    K = len(comps.group_levels)
    if "annotator" in ps.models:
        fits["annotator"] = ps.fit("annotator", train, K=K, **sampler)
    rows = []
    shots = (X[parts["shots"]], y[parts["shots"]], users[parts["shots"]])
    for name, idata in fits.items():
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
    if "annotator" in fits:
        from pluralstan.relabel import relabel

        # label-dependent summary: relabel draw by draw (Stephens) before averaging
        member = relabel(fits["annotator"])[0].posterior["membership"].mean(("chain", "draw"))
        best = member.transpose("annotator", "group").values.argmax(axis=1)
        truth = train.frame.drop_duplicates("annotator")["group"].to_numpy()
        table["ari_train_users"] = np.nan
        ari = realdata.adjusted_rand_index(best, truth)
        table.loc[("annotator", "seen"), "ari_train_users"] = ari
    realdata.write_table(table, out, "accuracy",
                         "Held-out accuracy (PAL's seen / unseen / few-shot splits).")
    fig, ax = plt.subplots(figsize=(5, 3))
    wide = table["accuracy"].unstack("split")[["seen", "unseen", "few-shot"]]
    wide.plot.bar(ax=ax, rot=0)
    ax.axhline(0.5, color="0.6", lw=0.8)
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    save_figure(fig, out / "accuracy.png")
    print(realdata.markdown_table(table))
    lines = ["# Persona semi-synthetic audit", "",
             f"{comps.n} judgements by {len(comps.annotator_levels)} simulated users of the "
             f"personas {list(comps.group_levels)}; {args.features} TF-IDF/SVD features.", "",
             realdata.markdown_table(table)]
    tmp = out / ".report.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

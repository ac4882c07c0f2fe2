"""NumPy simulators that draw data from exactly the generative models of the Stan programs.

Each simulator returns a validated :class:`~pluralstan.data.Comparisons` whose ``truth`` holds
the generating parameters, so recovery, contraction and SBC can score the fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from .data import Comparisons
from .errors import PluralstanError

#: The position paper's Table 1 population (K = 2, d = 5).
HIGH_CONFLICT_THETA = np.array([[2.0, 2.0, 0.0, -1.0, -1.0], [-1.0, -1.0, 0.0, 2.0, 2.0]])


def attribute_names(d: int) -> list[str]:
    """Default attribute names ``x1 .. xd``."""
    return [f"x{j + 1}" for j in range(d)]


def option_pairs(n_pairs: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` option pairs with attributes drawn Uniform(0, 1)^d (the paper's design)."""
    return rng.uniform(size=(n_pairs, d)), rng.uniform(size=(n_pairs, d))


def _frame(A: np.ndarray, B: np.ndarray, pair: np.ndarray, y: np.ndarray,
           names: Sequence[str]) -> pd.DataFrame:
    cols = {f"a_{n}": A[pair, j] for j, n in enumerate(names)}
    cols |= {f"b_{n}": B[pair, j] for j, n in enumerate(names)}
    return pd.DataFrame({"pair": pair, "y": y.astype(float), **cols})


def bt(
    theta: Sequence[float],
    *,
    n_pairs: int = 200,
    judgements_per_pair: int = 100,
    seed: int | None = None,
) -> Comparisons:
    """Simulate the aggregate Bradley-Terry model.

    Each of ``n_pairs`` pairs of options (attributes Uniform(0, 1)^d) is judged
    ``judgements_per_pair`` times, independently, with P(a > b) = logistic((a - b)' theta).
    Every judgement comes from its own anonymous annotator.
    """
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 1 or theta.size == 0:
        raise PluralstanError(f"theta must be a non-empty vector, got shape {theta.shape}")
    if n_pairs < 1 or judgements_per_pair < 1:
        raise PluralstanError("n_pairs and judgements_per_pair must be at least 1")
    rng = np.random.default_rng(seed)
    A, B = option_pairs(n_pairs, theta.size, rng)
    pair = np.repeat(np.arange(n_pairs), judgements_per_pair)
    y = rng.uniform(size=pair.size) < expit((A[pair] - B[pair]) @ theta)
    frame = _frame(A, B, pair, y, attribute_names(theta.size))
    return Comparisons.from_frame(frame, truth={"theta": theta})


def mixture(
    thetas: np.ndarray,
    pi: Sequence[float],
    *,
    n_pairs: int = 200,
    n_annotators: int = 100,
    pairs_per_annotator: int | None = None,
    balanced: bool = True,
    seed: int | None = None,
) -> Comparisons:
    """Simulate a K-group mixture of Bradley-Terry models with annotator identities.

    Annotator ``i`` belongs to group ``z_i`` (``balanced=True``: exactly round(pi_k * n) per
    group, as in the paper's 50 + 50 design; else ``z_i ~ Categorical(pi)``) and judges
    ``pairs_per_annotator`` distinct pairs (default: all ``n_pairs``), each with
    P(a > b) = logistic((a - b)' theta_{z_i}). The table carries the true ``group`` labels and
    annotator ids; drop the ``group`` column to get unlabeled data.

    With ``pairs_per_annotator = m`` this is the paired-annotator design (m judgements per
    person); with ``m = 1`` every judgement is anonymous in effect.
    """
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    pi = np.asarray(pi, dtype=float)
    K, d = thetas.shape
    if pi.shape != (K,) or np.any(pi < 0) or not np.isclose(pi.sum(), 1.0):
        raise PluralstanError(f"pi must be {K} non-negative weights summing to 1, got {pi}")
    m = n_pairs if pairs_per_annotator is None else int(pairs_per_annotator)
    if not 1 <= m <= n_pairs:
        raise PluralstanError(f"pairs_per_annotator must lie in 1..{n_pairs}, got {m}")
    rng = np.random.default_rng(seed)
    A, B = option_pairs(n_pairs, d, rng)
    if balanced:
        sizes = np.floor(pi * n_annotators).astype(int)
        sizes[np.argmax(pi)] += n_annotators - sizes.sum()
        z = np.repeat(np.arange(K), sizes)
    else:
        z = rng.choice(K, size=n_annotators, p=pi)
    pair = np.concatenate([rng.permutation(n_pairs)[:m] for _ in range(n_annotators)])
    annotator = np.repeat(np.arange(n_annotators), m)
    group = z[annotator]
    eta = np.einsum("nd,nd->n", A[pair] - B[pair], thetas[group])
    y = rng.uniform(size=pair.size) < expit(eta)
    frame = _frame(A, B, pair, y, attribute_names(d))
    frame.insert(0, "group", group)
    frame.insert(0, "annotator", annotator)
    return Comparisons.from_frame(frame, truth={"theta": thetas, "pi": pi, "z": z})


def high_conflict(*, n_pairs: int = 200, n_annotators: int = 100, seed: int | None = None,
                  pairs_per_annotator: int | None = None) -> Comparisons:
    """The position paper's Table 1 data: K = 2, d = 5, pi = (0.5, 0.5), 50 + 50 annotators."""
    return mixture(HIGH_CONFLICT_THETA, [0.5, 0.5], n_pairs=n_pairs, n_annotators=n_annotators,
                   pairs_per_annotator=pairs_per_annotator, seed=seed)


#: Preference weights of the three annotator types of :func:`rlhf` on the response features.
RLHF_THETA = np.array([[3.0, 0.0, -1.0], [0.0, 3.0, -1.0], [0.0, -1.0, 3.0]])
RLHF_FEATURES = ("helpful", "harmless", "concise")


def rlhf(
    *,
    n_annotators: int = 120,
    per_annotator: int = 15,
    seed: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Judgements in the RLHF layout, from three annotator types with covariate-driven shares.

    Every judgement is a fresh prompt with two fresh responses (each response is seen once, as in
    RLHF data), so responses are placed only through their rated features
    (:data:`RLHF_FEATURES`, Uniform(0, 1)). Annotator ``i`` has type ``z_i`` with probabilities
    ``softmax(0.8 s_i, -0.8 s_i, [region_i = "south"])`` (``s_i`` the standardised age) and
    prefers response a with probability ``logistic((a - b)' theta_{z_i})``, ``theta`` =
    :data:`RLHF_THETA` (the helpfulness, harmlessness and concision camps).

    Returns
    -------
    judgements, responses, annotators, truth
        ``annotator``, ``prompt``, ``chosen``, ``rejected``; ``item`` and the features; the
        annotator table (``annotator``, ``age``, ``region``); ``theta``, ``z`` and
        ``p_type`` (annotators x types).
    """
    rng = np.random.default_rng(seed)
    n, m = int(n_annotators), int(per_annotator)
    if n < 1 or m < 1:
        raise PluralstanError(f"n_annotators and per_annotator must be positive, got {n}, {m}")
    age = rng.integers(18, 80, n).astype(float)
    region = rng.choice(["north", "south"], n)
    s = (age - age.mean()) / age.std()
    logits = np.stack([0.8 * s, -0.8 * s, (region == "south").astype(float)], axis=1)
    p_type = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    z = np.array([rng.choice(3, p=p) for p in p_type])
    who = np.repeat(np.arange(n), m)
    A, B = rng.uniform(size=(n * m, 3)), rng.uniform(size=(n * m, 3))
    a_wins = rng.uniform(size=n * m) < expit(np.einsum("nd,nd->n", A - B, RLHF_THETA[z[who]]))
    ids_a = np.array([f"r{2 * j:05d}" for j in range(n * m)])
    ids_b = np.array([f"r{2 * j + 1:05d}" for j in range(n * m)])
    judgements = pd.DataFrame({
        "annotator": [f"u{i:03d}" for i in who],
        "prompt": [f"p{j:05d}" for j in range(n * m)],
        "chosen": np.where(a_wins, ids_a, ids_b),
        "rejected": np.where(a_wins, ids_b, ids_a),
    })
    features = np.round(np.concatenate([A, B]), 3)
    responses = pd.DataFrame({"item": np.concatenate([ids_a, ids_b]),
                              **{f: features[:, j] for j, f in enumerate(RLHF_FEATURES)}})
    annotators = pd.DataFrame({"annotator": [f"u{i:03d}" for i in range(n)],
                               "age": age.astype(int), "region": region})
    return judgements, responses.sort_values("item", ignore_index=True), annotators, {
        "theta": RLHF_THETA, "z": z, "p_type": p_type}

"""A seeded synthetic interaction log shaped like MovieLens, for offline runs and benchmarks.

Items have power-law popularity. Users belong to latent taste groups: group g picks item i with
probability proportional to popularity(i) * exp(strength * <taste_g, factors_i>), so a model
that learns user and item factors beats a popularity ranking. Users' interaction counts are
log-normal with a floor of 20, as MovieLens keeps only users with 20+ ratings. Each user's items
are drawn without replacement by exponential races, vectorized over chunks of users.
"""

from __future__ import annotations

import numpy as np
import torch

from recforge.config import DataConfig
from recforge.core.errors import RecforgeError
from recforge.data.implicit import RawInteractions

MIN_PER_USER = 20
TASTE_GROUPS = 64
FACTORS = 16
STRENGTH = 2.5
ZIPF_EXPONENT = 0.9


def interaction_counts(rng: np.random.Generator, users: int, items: int, total: int) -> np.ndarray:
    """Per-user counts: floor + log-normal share of the rest, summing to `total` (when caps allow)."""
    cap = max(1, min(items - 1, items - 100 if items > 200 else items // 2))
    floor = min(MIN_PER_USER, cap)
    if total < users * floor:
        raise RecforgeError(f"synthetic: {total} interactions cannot give {users} users {floor} each")
    weights = rng.lognormal(mean=0.0, sigma=1.0, size=users)
    counts = np.full(users, floor, dtype=np.int64)
    for _ in range(20):  # share out what is left among users below the cap
        left = min(total, users * cap) - counts.sum()
        open_ = counts < cap
        if left <= 0 or not open_.any():
            break
        share = np.floor(left * weights * open_ / (weights * open_).sum()).astype(np.int64)
        if share.sum() == 0:  # rounding remainder: one each to the heaviest open users
            share[np.argsort(-weights * open_)[:left]] = 1
        counts = np.minimum(counts + share, cap)
    return counts


def sample_without_replacement(logits: np.ndarray, group: np.ndarray, counts: np.ndarray, seed: int):
    """For each user u, `counts[u]` distinct items drawn in sequence with probabilities
    softmax(logits[group[u]]) renormalised after each draw: the `counts[u]` smallest of
    E_i / p_i with E_i ~ Exp(1) (the exponential-races form of the Gumbel top-k trick).
    Exact, and chunked over users sorted by count so each chunk's top-k is tight."""
    users, items = len(group), logits.shape[1]
    generator = torch.Generator().manual_seed(seed)
    inverse_p = torch.from_numpy(np.exp(-(logits - logits.max(axis=1, keepdims=True)))).float()
    order = np.argsort(-counts, kind="stable")
    user_parts, item_parts = [], []
    for chunk in np.array_split(order, max(1, users * items // (1 << 24))):
        k = int(counts[chunk].max())
        race = torch.rand((chunk.size, items), generator=generator).log_().neg_()  # Exp(1), faster than exponential_
        race.mul_(inverse_p[torch.from_numpy(group[chunk])])
        winners = race.topk(k, dim=1, largest=False, sorted=True).indices.numpy()
        take = np.arange(k) < counts[chunk][:, None]
        user_parts.append(np.broadcast_to(chunk[:, None], winners.shape)[take])
        item_parts.append(winners[take])
    user, item = np.concatenate(user_parts), np.concatenate(item_parts).astype(np.int64)
    by_user = np.argsort(user, kind="stable")
    return user[by_user], item[by_user]


def generate(cfg: DataConfig) -> RawInteractions:
    users, items, total = cfg.synthetic_users, cfg.synthetic_items, cfg.synthetic_interactions
    if min(users, items) < 2:
        raise RecforgeError("synthetic: need at least 2 users and 2 items")
    rng = np.random.default_rng(cfg.synthetic_seed)
    counts = interaction_counts(rng, users, items, total)

    popularity = 1.0 / np.arange(1, items + 1) ** ZIPF_EXPONENT
    popularity = popularity[rng.permutation(items)]
    item_factors = rng.standard_normal((items, FACTORS))
    tastes = rng.standard_normal((TASTE_GROUPS, FACTORS))
    affinity = tastes @ item_factors.T / np.sqrt(FACTORS)  # [groups, items]
    logits = np.log(popularity) + STRENGTH * affinity
    group = rng.integers(0, TASTE_GROUPS, size=users)
    user, item = sample_without_replacement(logits, group, counts, cfg.synthetic_seed)

    # Ratings follow affinity (1..5 with MovieLens-like shares); timestamps are random per user.
    score = affinity[group[user], item] + rng.normal(0.0, 0.7, size=user.size)
    ratings = 1 + np.searchsorted(np.quantile(score, [0.06, 0.17, 0.43, 0.78]), score).astype(np.float32)
    timestamps = 946_684_800 + rng.integers(0, 600_000_000, size=user.size)
    return RawInteractions(users=user, items=item, ratings=ratings, timestamps=timestamps)

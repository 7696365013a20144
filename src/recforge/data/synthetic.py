"""A seeded synthetic interaction log shaped like MovieLens, for offline runs and benchmarks.

Items have power-law popularity. Users belong to latent taste groups: group g picks item i with
probability proportional to popularity(i) * exp(strength * <taste_g, factors_i>), so a model
that learns user and item factors beats a popularity ranking. Users' interaction counts are
log-normal with a floor of 20, as MovieLens keeps only users with 20+ ratings. Generation is
vectorized (inverse-CDF draws, one sort to deduplicate) and takes seconds at ml-20m size.
"""

from __future__ import annotations

import numpy as np

from recforge.config import DataConfig
from recforge.data.implicit import RawInteractions
from recforge.errors import RecforgeError

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
    counts = floor + np.floor((total - users * floor) * weights / weights.sum()).astype(np.int64)
    counts[: total - counts.sum()] += 1  # hand out the rounding remainder
    return np.minimum(counts, cap)


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
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    group = rng.integers(0, TASTE_GROUPS, size=users)

    # Oversample with replacement, keep each user's first `count` distinct items.
    draws = np.ceil(counts * 1.6).astype(np.int64) + 8
    draw_user = np.repeat(np.arange(users), draws)
    uniform = rng.random(draw_user.size)
    draw_item = np.empty(draw_user.size, dtype=np.int64)
    for g in range(TASTE_GROUPS):  # one vectorized search per taste group
        rows = group[draw_user] == g
        draw_item[rows] = np.searchsorted(cdf[g], uniform[rows], side="right").clip(max=items - 1)
    _, first = np.unique(draw_user * items + draw_item, return_index=True)
    first.sort()  # draws are user-major, so this orders by (user, draw order)
    kept_user = draw_user[first]
    starts = np.searchsorted(kept_user, np.arange(users))
    rank = np.arange(first.size) - starts[kept_user]
    first = first[rank < counts[kept_user]]
    user, item = draw_user[first], draw_item[first]

    # Ratings follow affinity (1..5 with MovieLens-like shares); timestamps are random per user.
    score = affinity[group[user], item] + rng.normal(0.0, 0.7, size=user.size)
    ratings = 1 + np.searchsorted(np.quantile(score, [0.06, 0.17, 0.43, 0.78]), score).astype(np.float32)
    timestamps = 946_684_800 + rng.integers(0, 600_000_000, size=user.size)
    return RawInteractions(users=user, items=item, ratings=ratings, timestamps=timestamps)

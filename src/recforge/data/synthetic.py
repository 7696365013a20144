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

    # Sequential draws without replacement: draw with replacement, keep each user's first `count`
    # distinct items. Users left short (narrow tastes repeat items) are drawn exactly instead,
    # by the Gumbel top-k trick over their group's logits.
    draw_user = np.repeat(np.arange(users), np.ceil(counts * 1.6).astype(np.int64) + 8)
    uniform = rng.random(draw_user.size)
    draw_item = np.empty(draw_user.size, dtype=np.int64)
    for g in range(TASTE_GROUPS):  # one vectorized search per taste group
        rows = group[draw_user] == g
        draw_item[rows] = np.searchsorted(cdf[g], uniform[rows], side="right").clip(max=items - 1)
    _, first = np.unique(draw_user * items + draw_item, return_index=True)
    first.sort()  # draws are user-major: this orders by (user, draw order)
    kept_user = draw_user[first]
    rank = np.arange(first.size) - np.searchsorted(kept_user, kept_user)
    first = first[rank < counts[kept_user]]
    short = np.bincount(draw_user[first], minlength=users) < counts
    first = first[~short[draw_user[first]]]
    user_parts, item_parts = [draw_user[first]], [draw_item[first]]
    for chunk in np.array_split(np.flatnonzero(short), max(1, int(short.sum()) * items // (1 << 22))):
        keys = logits[group[chunk]] + rng.gumbel(size=(chunk.size, items))
        order = np.argsort(-keys, axis=1)
        take = np.arange(items) < counts[chunk][:, None]
        user_parts.append(np.broadcast_to(chunk[:, None], order.shape)[take])
        item_parts.append(order[take])
    user, item = np.concatenate(user_parts), np.concatenate(item_parts)
    ordered = np.argsort(user, kind="stable")
    user, item = user[ordered], item[ordered]

    # Ratings follow affinity (1..5 with MovieLens-like shares); timestamps are random per user.
    score = affinity[group[user], item] + rng.normal(0.0, 0.7, size=user.size)
    ratings = 1 + np.searchsorted(np.quantile(score, [0.06, 0.17, 0.43, 0.78]), score).astype(np.float32)
    timestamps = 946_684_800 + rng.integers(0, 600_000_000, size=user.size)
    return RawInteractions(users=user, items=item, ratings=ratings, timestamps=timestamps)

"""Hit rate and NDCG at K for one held-out item per user.

Ties count against the held-out item: its rank is the number of *other* candidates scoring at
least as high. A model that scores everything equally ranks it last (HR = 0), never first.
NaN scores count as the lowest possible score.
"""

from __future__ import annotations

import torch


def _clean(scores: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(scores.float(), nan=float("-inf"))


def rank_among_sampled(scores: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    """Rank (0 = best) of column 0, the held-out item, in each row of [users, 1 + negatives].

    `counted` [users, negatives] can exclude negatives from the count, e.g. those that are the
    held-out item itself (the NCF paper's files hold such repeats; its evaluation ignored them).
    """
    scores = _clean(scores)
    above = scores[:, 1:] >= scores[:, :1]
    return (above & counted if counted is not None else above).sum(dim=1)


def rank_among_all(scores: torch.Tensor, held_out: torch.Tensor) -> torch.Tensor:
    """Rank of item `held_out[u]` in row u of [users, items]; excluded items must be -inf."""
    scores = _clean(scores)
    positive = scores.gather(1, held_out.view(-1, 1).to(torch.int64))
    return (scores >= positive).sum(dim=1) - 1


def hit_and_ndcg(rank: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user HR@k (0/1) and NDCG@k (1 / log2(rank + 2) inside the top k, else 0)."""
    hit = rank < k
    ndcg = torch.where(hit, 1.0 / torch.log2(rank.to(torch.float64) + 2.0), torch.zeros((), dtype=torch.float64))
    return hit.to(torch.float64), ndcg


def map_at_k(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, k: int = 12) -> float:
    """Mean over groups (e.g. Outbrain displays) of the average precision at k of the rows ranked
    by score, as the Kaggle Outbrain competition's MAP@12: with one clicked row per group it is
    1 / (its rank) if that rank is at most k, else 0. Groups without a click are left out. Ties
    count against clicked rows (an unclicked row scoring the same ranks first)."""
    scores, labels, groups = _clean(scores), labels.float(), groups.long()
    # Sort by group, then score descending, then unclicked before clicked: stable sorts, last key first.
    order = torch.argsort(labels, stable=True)
    order = order[torch.argsort(-scores[order], stable=True)]
    order = order[torch.argsort(groups[order], stable=True)]
    clicked = labels[order]
    _, group, sizes = torch.unique_consecutive(groups[order], return_inverse=True, return_counts=True)
    starts = sizes.cumsum(0) - sizes
    position = torch.arange(len(order), device=scores.device) - starts[group]
    hits = clicked.cumsum(0)
    hits = hits - (hits - clicked)[starts][group]  # clicked rows up to here, within the group
    precision = torch.where((clicked > 0) & (position < k), hits / (position + 1), torch.zeros_like(hits))
    per_group = torch.zeros(len(sizes), device=scores.device).index_add_(0, group, precision)
    relevant = torch.zeros(len(sizes), device=scores.device).index_add_(0, group, clicked)
    counted = relevant > 0
    if not counted.any():
        return float("nan")
    return (per_group[counted] / relevant[counted].clamp(max=k)).mean().item()

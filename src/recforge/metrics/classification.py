"""Exact metrics for click prediction over a whole evaluation set.

AUC is the Mann-Whitney statistic with average ranks for tied scores: the probability that a
random positive scores above a random negative, ties counting one half. It is exact (one sort,
no histogram or sampling), so it matches scikit-learn's `roc_auc_score`.
"""

from __future__ import annotations

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve; NaN if only one class is present."""
    scores = scores.double().flatten()
    labels = labels.flatten().bool()
    positives = int(labels.sum())
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranked = scores[order]
    # Average 1-based rank of each tie group: its first and last positions.
    new_group = torch.ones_like(ranked, dtype=torch.bool)
    new_group[1:] = ranked[1:] != ranked[:-1]
    group = torch.cumsum(new_group, 0) - 1
    position = torch.arange(1, ranked.numel() + 1, dtype=torch.float64, device=scores.device)
    first = torch.zeros(int(group[-1]) + 1, dtype=torch.float64, device=scores.device).scatter_reduce_(
        0, group, position, "amin", include_self=False
    )
    last = torch.zeros_like(first).scatter_reduce_(0, group, position, "amax", include_self=False)
    average_rank = ((first + last) / 2)[group]
    positive_ranks = average_rank[labels[order]].sum().item()
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def logloss(probabilities: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    p = probabilities.double().clamp(eps, 1 - eps)
    y = labels.double()
    return float(-(y * torch.log(p) + (1 - y) * torch.log1p(-p)).mean())


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> float:
    return float(((probabilities > threshold) == labels.bool()).double().mean())

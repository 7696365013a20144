"""Item popularity: the baseline every ranking model must beat."""

from __future__ import annotations

import numpy as np
import torch

from recforge.models.base import UserItemModel


class ItemPopularity(UserItemModel):
    """Scores an item by its number of training interactions, whoever the user is."""

    counts: torch.Tensor  # a buffer

    def __init__(self, train_items: np.ndarray, num_items: int):
        super().__init__()
        counts = np.bincount(np.asarray(train_items), minlength=num_items)
        self.register_buffer("counts", torch.as_tensor(counts, dtype=torch.float32))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.counts[batch["item"]]

"""Training batches for implicit feedback, drawn as whole-epoch tensor ops on the device.

An epoch is the positives plus `negatives` sampled items per positive, in one random order.
Nothing per sample is materialised beyond one item column: sample `s` of the epoch has
user `users[s % P]`, item `items[s]` and label `s < P` (P positives come first, then the
negatives in the same user order). Every rank draws the same epoch from the same seed and
takes its own slice of each global batch, so N processes see exactly one process's data.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from recforge.data.sampling import sample_train_negatives


class ImplicitEpochs:
    def __init__(
        self,
        train_users: np.ndarray,
        train_items: np.ndarray,
        num_items: int,
        negatives: int,
        device: torch.device,
        seed: int,
        known_keys: np.ndarray | None = None,
    ):
        # int64 indices: index_select's backward is several times slower with int32 ones on CPU.
        self.users = torch.as_tensor(np.asarray(train_users), device=device).to(torch.int64)
        self.items = torch.as_tensor(np.asarray(train_items), device=device).to(torch.int64)
        self.num_items, self.negatives, self.device, self.seed = num_items, negatives, device, seed
        self.known_keys = None if known_keys is None else torch.as_tensor(np.asarray(known_keys), device=device)

    @property
    def samples_per_epoch(self) -> int:
        return self.users.numel() * (1 + self.negatives)

    def batches(
        self, epoch: int, batch_size: int, rank: int = 0, world: int = 1, start_step: int = 0
    ) -> Iterator[tuple[dict, int]]:
        """Yield (this rank's part of each global batch, the global batch's size), from batch
        `start_step` on (a resumed run skips what it already trained on)."""
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + epoch)
        positives = self.users.numel()
        negatives = sample_train_negatives(self.users, self.negatives, self.num_items, generator, self.known_keys)
        items = torch.cat([self.items, negatives])
        order = torch.randperm(items.numel(), generator=generator, device=self.device)
        for start in range(start_step * batch_size, order.numel(), batch_size):
            index = order[start : start + batch_size]
            size = index.numel()
            index = index[size * rank // world : size * (rank + 1) // world]
            batch = {
                "user": self.users[index % positives],
                "item": items[index],
                "label": (index < positives).to(torch.float32),
            }
            yield batch, size

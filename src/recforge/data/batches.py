"""Training batches for implicit feedback, drawn as whole-epoch tensor ops on the device.

An epoch is the positives plus `negatives` sampled items per positive, in one random order.
Nothing per sample is materialised beyond one item column: sample `s` of the epoch has
user `users[s % P]`, item `items[s]` and label `s < P` (P positives come first, then the
negatives in the same user order). Every rank draws the same epoch from the same seed and
takes its own slice of each global batch, so N processes see exactly one process's data.

Where the epoch does not fit on each device (`sharded`), rank r of W holds only the r-th of W
contiguous parts of the positives and draws its own epoch of them (its negatives, its order,
from a seed of its own); global batch b is the b-th of as many near-equal slices of every
rank's epoch. Each positive and its negatives are still seen once per epoch, in batches of
the same size, but the batches are not those of one process.
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
        rank: int = 0,
        world: int = 1,
        sharded: bool = False,
    ):
        positives = len(train_users)
        # Positives per rank: all of them on every rank unless sharded.
        self.counts = [positives * (r + 1) // world - positives * r // world for r in range(world)]
        self.counts = self.counts if sharded else [positives] * world
        first = positives * rank // world if sharded else 0
        mine = slice(first, first + self.counts[rank])
        # int64 indices: index_select's backward is several times slower with int32 ones on CPU.
        self.users = torch.as_tensor(np.asarray(train_users[mine]), device=device).to(torch.int64)
        self.items = torch.as_tensor(np.asarray(train_items[mine]), device=device).to(torch.int64)
        self.num_items, self.negatives, self.device, self.seed = num_items, negatives, device, seed
        self.rank, self.world, self.sharded, self.positives = rank, world, sharded, positives
        self.known_keys = None if known_keys is None else torch.as_tensor(np.asarray(known_keys), device=device)

    @property
    def samples_per_epoch(self) -> int:
        return self.positives * (1 + self.negatives)

    def batches(self, epoch: int, batch_size: int, start_step: int = 0) -> Iterator[tuple[dict, int, int]]:
        """Yield (this rank's part of each global batch, the global batch's size, the largest
        rank's part), from batch `start_step` on (a resumed run skips what it already trained on)."""
        seed = self.seed * 1_000_003 + epoch
        generator = torch.Generator(self.device).manual_seed(seed * 1_000_003 + self.rank if self.sharded else seed)
        positives = self.users.numel()
        negatives = sample_train_negatives(self.users, self.negatives, self.num_items, generator, self.known_keys)
        items = torch.cat([self.items, negatives])
        order = torch.randperm(items.numel(), generator=generator, device=self.device)
        steps = -(-self.samples_per_epoch // batch_size)
        samples = [count * (1 + self.negatives) for count in self.counts]  # each rank's epoch
        for step in range(start_step, steps):
            if self.sharded:  # the step-th of `steps` near-equal slices of each rank's epoch
                sizes = [n * (step + 1) // steps - n * step // steps for n in samples]
                index = order[samples[self.rank] * step // steps :][: sizes[self.rank]]
                size, largest = sum(sizes), max(sizes)
            else:
                index = order[step * batch_size : (step + 1) * batch_size]
                size = index.numel()
                largest = -(-size // self.world)
                index = index[size * self.rank // self.world : size * (self.rank + 1) // self.world]
            batch = {
                "user": self.users[index % positives],
                "item": items[index],
                "label": (index < positives).to(torch.float32),
            }
            yield batch, size, largest

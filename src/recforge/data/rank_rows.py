"""Which rows of a training split each rank reads, so that no rank needs the whole split.

The split is cut into batch-sized blocks of rows (the last one shorter). Rank r of W owns the
r-th of W near-equal parts of every block, rows `lo + size*r//W` to `lo + size*(r+1)//W`: a
fixed set, the same for every epoch and shuffle, holding 1/W of the rows in runs of ~B/W rows
(contiguous reads on disk). Each rank loads or maps only those rows.

- `--shuffle blocks|none`: global batch b is block b (or the b-th of a seeded order of blocks);
  each rank trains on its own part of it, exactly as before this module existed.
- `--shuffle rows`: global batch b is the b-th slice of one seeded permutation of all rows, the
  same on every rank; each rank trains on the batch's rows it owns. The parts are unequal
  (about B/W each, by chance), which changes nothing in the mean loss or its gradient; with one
  rank it is the permutation's slice itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RankRows:
    rows: int  # of the split
    batch: int  # rows per block: the global batch size
    world: int

    @property
    def blocks(self) -> int:
        return -(-self.rows // self.batch)

    def _last(self) -> int:  # rows of the last block
        return self.rows - (self.blocks - 1) * self.batch

    def _part(self, size: int, rank: int) -> tuple[int, int]:  # (first offset, length) of rank's part of a block
        first = size * rank // self.world
        return first, size * (rank + 1) // self.world - first

    def count(self, rank: int) -> int:
        """Rows `rank` owns."""
        return (self.blocks - 1) * self._part(self.batch, rank)[1] + self._part(self._last(), rank)[1]

    def block(self, block: int, rank: int) -> tuple[slice, slice, int]:
        """(rank's part of `block` as rows of the split, the same rows in rank's own array, block size)."""
        size = self._last() if block == self.blocks - 1 else self.batch
        first, length = self._part(size, rank)
        start = block * self.batch + first
        local = block * self._part(self.batch, rank)[1]
        return slice(start, start + length), slice(local, local + length), size

    def owned(self, array: np.ndarray, rank: int) -> np.ndarray:
        """The rows of `array` (a memory map of the split, say) that `rank` owns, in split order;
        only those rows are read."""
        full = (self.blocks - 1) * self.batch
        first, length = self._part(self.batch, rank)
        blocks = array[:full].reshape(self.blocks - 1, self.batch, *array.shape[1:])
        last_rows, _, _ = self.block(self.blocks - 1, rank)
        return np.concatenate([blocks[:, first : first + length].reshape(-1, *array.shape[1:]), array[last_rows]])

    def owners(self, index: torch.Tensor) -> torch.Tensor:
        """The rank owning each row of `index` (rows of the split)."""
        block, offset = index // self.batch, index % self.batch
        size = torch.where(block == self.blocks - 1, self._last(), self.batch)
        # The largest r with size*r//W <= offset.
        return ((offset + 1) * self.world + size - 1) // size - 1

    def local(self, index: torch.Tensor, rank: int) -> torch.Tensor:
        """Rows of the split that `rank` owns, as rows of its own array (`owned`)."""
        block, offset = index // self.batch, index % self.batch
        size = torch.where(block == self.blocks - 1, self._last(), self.batch)
        return block * self._part(self.batch, rank)[1] + offset - size * rank // self.world

"""Row gradients of embedding tables, for the optimizers that update only the rows a step touched."""

from __future__ import annotations

import torch


def touched_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique rows, their summed gradient rows) of a table's gradient, sparse or dense.

    An embedding's sparse gradient holds one row per lookup, uncoalesced; one `unique` and one
    `index_add_` sum them, cheaper than `coalesce()` and the sparse-tensor arithmetic that
    torch's sparse optimizers do per step.
    """
    if not grad.is_sparse:
        return torch.arange(grad.shape[0], device=grad.device), grad
    indices, values = grad._indices()[0], grad._values()
    rows, inverse = torch.unique(indices, return_inverse=True)
    summed = torch.zeros((rows.numel(), values.shape[1]), dtype=values.dtype, device=values.device)
    return rows, summed.index_add_(0, inverse, values)


def nonzero_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, their gradient rows) of a dense table gradient where it is not zero: the rows a step
    touched, for a table whose gradient arrives dense (a data-parallel TorchRec table)."""
    rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)

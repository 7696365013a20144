"""Negative sampling as tensor ops: no per-sample Python, and it runs on whatever device the
keys live on (the whole training epoch can be drawn on the GPU).

Known interactions are represented by their sorted int64 keys `user * num_items + item`;
membership is one `searchsorted`.
"""

from __future__ import annotations

import numpy as np
import torch

from recforge.core.errors import RecforgeError


def contains(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Elementwise: is `queries` among `sorted_keys`?"""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries, dtype=torch.bool)
    position = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[position] == queries


def sample_train_negatives(
    users: torch.Tensor,
    per_user: int,
    num_items: int,
    generator: torch.Generator,
    known_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """`per_user` uniform items for each entry of `users`, laid out [per_user * len(users)]
    (all first negatives, then all second ones, ...).

    With `known_keys`, draws that hit a known interaction are redrawn until none does
    (true negatives); without, they are kept, as NVIDIA's NCF does for speed.
    """
    total = per_user * users.numel()
    items = torch.randint(num_items, (total,), generator=generator, device=users.device)
    if known_keys is None:
        return items
    owners = users.to(torch.int64).repeat(per_user)
    redo = torch.nonzero(contains(known_keys, owners * num_items + items)).squeeze(1)
    while redo.numel():  # each round redraws only the collisions: a handful of rounds
        items[redo] = torch.randint(num_items, (redo.numel(),), generator=generator, device=users.device)
        redo = redo[contains(known_keys, owners[redo] * num_items + items[redo])]
    return items


def sample_eval_negatives(
    known_keys: np.ndarray, interactions_per_user: np.ndarray, num_items: int, per_user: int, seed: int
) -> np.ndarray:
    """[num_users, per_user] distinct items each user never interacted with, uniformly drawn.

    Draws a few extra candidates per user, drops known and repeated ones, keeps the first
    `per_user` in draw order; users left short (those who rated most of the catalogue) are
    finished exactly by ranking random scores over their unknown items.
    """
    num_users = len(interactions_per_user)
    available = num_items - np.asarray(interactions_per_user)
    if num_users and available.min() < per_user:
        user = int(np.argmin(available))
        raise RecforgeError(
            f"user index {user} has only {available[user]} items without an interaction, fewer than "
            f"--valid-negative {per_user}; lower it or use --eval-protocol full"
        )
    generator = torch.Generator().manual_seed(seed)
    keys = torch.from_numpy(np.asarray(known_keys))
    out = torch.empty((num_users, per_user), dtype=torch.int64)
    todo = torch.arange(num_users)
    width = per_user + per_user // 2 + 8
    for _ in range(3):
        if not todo.numel():
            break
        candidates = torch.randint(num_items, (todo.numel(), width), generator=generator)
        valid = ~contains(keys, todo[:, None] * num_items + candidates)
        ordered, order = candidates.sort(dim=1, stable=True)
        repeat_sorted = torch.zeros_like(valid)
        repeat_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        valid &= ~torch.empty_like(valid).scatter_(1, order, repeat_sorted)
        done = valid.sum(1) >= per_user
        first_valid = (~valid[done]).to(torch.int8).argsort(dim=1, stable=True)[:, :per_user]
        out[todo[done]] = candidates[done].gather(1, first_valid)
        todo, width = todo[~done], width * 2
    rows_per_chunk = max(1, (1 << 24) // num_items)
    for chunk in todo.split(rows_per_chunk):
        known = contains(keys, chunk[:, None] * num_items + torch.arange(num_items))
        scores = torch.rand((chunk.numel(), num_items), generator=generator).masked_fill_(known, 2.0)
        out[chunk] = scores.topk(per_user, dim=1, largest=False).indices
    return out.to(torch.int32).numpy()

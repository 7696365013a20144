"""Implicit-feedback data: raw interactions -> contiguous ids -> leave-one-out split.

Everything is columnar numpy: one sort for duplicates, one pass of bincount/reduceat for the
per-user filters and the held-out items. The result keeps training interactions sorted by
(user, item), i.e. CSR rows per user, which the samplers and the full-ranking evaluation use.
Each user's latest interaction is the test item; the second-latest, still among the training
rows, is marked as the validation item, which `--valid-protocol leave-one-out` holds out too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recforge.core.errors import RecforgeError


@dataclass
class RawInteractions:
    """Interactions as read from a source: raw ids (ints, or Arrow strings), optional columns."""

    users: np.ndarray | pa.ChunkedArray
    items: np.ndarray | pa.ChunkedArray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    item_titles: dict[str, np.ndarray] | None = None  # {"ids": raw item ids, "titles": str}


@dataclass
class LeaveOneOutData:
    """A prepared dataset. Users and items are 0..n-1; raw ids are kept for output."""

    train_users: np.ndarray  # int32, sorted by (user, item)
    train_items: np.ndarray  # int32
    test_items: np.ndarray  # int32 [num_users]: each user's held-out item
    user_ids: np.ndarray  # raw id of each user index
    item_ids: np.ndarray  # raw id of each item index
    item_titles: np.ndarray | None = None  # str per item index, where the source has titles
    eval_negatives: np.ndarray | None = None  # int32 [num_users, k], when the source brings them
    # int32 [num_users]: each user's second-latest interaction, one of its training rows (-1 for a
    # user with fewer than 3 interactions: training keeps at least one), for a validation split
    valid_items: np.ndarray | None = None
    user_offsets: np.ndarray = field(init=False)  # int64 [num_users + 1]: CSR rows of train_*

    def __post_init__(self):
        counts = np.bincount(self.train_users, minlength=self.num_users)
        self.user_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def num_users(self) -> int:
        return len(self.test_items)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def train_keys(self) -> np.ndarray:
        """Sorted int64 keys user * num_items + item of the training interactions."""
        return self.train_users.astype(np.int64) * self.num_items + self.train_items  # sorted by (user, item)

    def interaction_keys(self) -> np.ndarray:
        """Sorted int64 keys user * num_items + item of every known interaction, train and test."""
        keys = np.concatenate(
            [self.train_keys(), np.arange(self.num_users, dtype=np.int64) * self.num_items + self.test_items]
        )
        keys.sort()
        return keys

    def without_validation(self) -> LeaveOneOutData:
        """The training rows less each user's validation item (`--valid-protocol leave-one-out`)."""
        if self.valid_items is None:
            raise RecforgeError(
                "this prepared data has no validation items (a source with its own split and no timestamps)"
            )
        held = self.valid_items[self.train_users] == self.train_items
        return LeaveOneOutData(
            train_users=self.train_users[~held],
            train_items=self.train_items[~held],
            test_items=self.test_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            item_titles=self.item_titles,
            eval_negatives=self.eval_negatives,
        )

    def describe(self) -> str:
        density = (len(self.train_items) + self.num_users) / max(1, self.num_users * self.num_items)
        return (
            f"{self.num_users:,} users, {self.num_items:,} items, {len(self.train_items):,} train "
            f"+ {self.num_users:,} test interactions (density {density:.4%})"
        )


def factorize(values: np.ndarray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 in sorted order of the distinct values, and the distinct values."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        encoded = pc.dictionary_encode(values).combine_chunks()
        dictionary = encoded.dictionary.to_numpy(zero_copy_only=False).astype(str)
        order = np.argsort(dictionary, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return rank[encoded.indices.to_numpy()].astype(np.int32), dictionary[order]
    values = np.asarray(values)
    if values.dtype.kind in "iu" and values.size:
        low, high = int(values.min()), int(values.max())
        if high - low <= 4 * values.size + (1 << 20):  # dense id range: O(n) without sorting
            present = np.zeros(high - low + 1, dtype=bool)
            present[values - low] = True
            new_id = np.cumsum(present, dtype=np.int64) - 1
            return new_id[values - low].astype(np.int32), np.flatnonzero(present).astype(np.int64) + low
    uniques, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int32).reshape(-1), uniques


def _compact(codes: np.ndarray, keep_codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber `codes` to 0..m-1 over those still present; returns (new codes, kept old codes)."""
    present = np.zeros(size, dtype=bool)
    present[keep_codes] = True
    new_id = np.cumsum(present) - 1
    return new_id[codes].astype(np.int32), np.flatnonzero(present)


def leave_one_out(
    raw: RawInteractions, *, min_rating: float | None = None, min_user_interactions: int = 1
) -> LeaveOneOutData:
    """Implicit leave-one-out split, as NCF prepares MovieLens.

    Ratings >= `min_rating` are positives; repeated (user, item) pairs keep their latest
    interaction; users with fewer than `min_user_interactions` interactions are dropped; each
    user's latest interaction is held out for testing, equal timestamps broken by the larger
    item index (items are numbered in the sorted order of their raw ids).
    """
    n = len(raw.users)
    keep = np.ones(n, dtype=bool)
    if min_rating is not None:
        if raw.ratings is None:
            raise RecforgeError("min_rating is set but the source has no rating column")
        keep = raw.ratings >= min_rating
    users, user_ids = factorize(_take(raw.users, keep))
    items, item_ids = factorize(_take(raw.items, keep))
    # Without timestamps, a row's position in the file orders a user's interactions.
    times = raw.timestamps[keep] if raw.timestamps is not None else np.flatnonzero(keep)
    if len(users) == 0:
        raise RecforgeError("no interactions left after filtering (check min_rating)")

    # Deduplicate (user, item), keeping the latest; the result is sorted by (user, item).
    num_items = len(item_ids)
    pair = users.astype(np.int64) * num_items + items
    order = np.lexsort((times, pair))
    pair_sorted = pair[order]
    last_of_pair = np.ones(len(order), dtype=bool)
    last_of_pair[:-1] = pair_sorted[1:] != pair_sorted[:-1]
    rows = order[last_of_pair]
    users, items, times = users[rows], items[rows], times[rows]

    # Drop users below the interaction threshold, then items no one is left with.
    counts = np.bincount(users, minlength=len(user_ids))
    kept_users = np.flatnonzero(counts >= max(1, min_user_interactions))
    if kept_users.size == 0:
        raise RecforgeError(f"no user has at least {min_user_interactions} interactions")
    rows = counts[users] >= max(1, min_user_interactions)
    users, items, times = users[rows], items[rows], times[rows]
    users, kept = _compact(users, kept_users, len(user_ids))
    user_ids = user_ids[kept]
    items, kept = _compact(items, np.flatnonzero(np.bincount(items, minlength=len(item_ids))), len(item_ids))
    item_ids = item_ids[kept]

    num_users = len(user_ids)
    test_rows = latest_rows(users, times, num_users)
    train = np.ones(len(users), dtype=bool)
    train[test_rows] = False

    titles = None
    if raw.item_titles is not None:
        titles = _align_titles(item_ids, raw.item_titles)
    test_items = items[test_rows]
    users, items, times = users[train], items[train], times[train]
    return LeaveOneOutData(
        train_users=users,
        train_items=items,
        test_items=test_items,
        valid_items=validation_items(users, items, times, num_users),
        user_ids=user_ids,
        item_ids=item_ids,
        item_titles=titles,
    )


def latest_rows(users: np.ndarray, times: np.ndarray, num_users: int) -> np.ndarray:
    """Per user, the row of its latest interaction, among equal times the largest item (the last of
    them, as rows are sorted by (user, item)); every user must have a row."""
    starts = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))[:-1]])
    latest = np.maximum.reduceat(times, starts)
    position = np.where(times == latest[users], np.arange(len(users)), -1)
    return np.maximum.reduceat(position, starts)


def validation_items(users: np.ndarray, items: np.ndarray, times: np.ndarray, num_users: int) -> np.ndarray:
    """Per user, the latest of its training rows (sorted by (user, item)) as its validation item;
    -1 for a user with fewer than two, whose training would otherwise be empty (as RecBole's LS)."""
    counts = np.bincount(users, minlength=num_users)
    valid = np.full(num_users, -1, dtype=np.int32)
    rows = counts[users] >= 2
    kept = np.flatnonzero(counts >= 2)
    if kept.size:
        compact, _ = _compact(users[rows], kept, num_users)
        valid[kept] = items[rows][latest_rows(compact, times[rows], len(kept))]
    return valid


def _take(values, mask: np.ndarray):
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if mask.all() else values.filter(pa.array(mask))
    return np.asarray(values)[mask]


def _align_titles(item_ids: np.ndarray, titles: dict[str, np.ndarray]) -> np.ndarray:
    """Title per item index; items missing from the title file get ''."""
    ids, names = np.asarray(titles["ids"]), np.asarray(titles["titles"]).astype(str)
    if ids.dtype.kind != item_ids.dtype.kind:
        ids, keys = ids.astype(str), item_ids.astype(str)
    else:
        keys = item_ids
    order = np.argsort(ids)
    position = np.searchsorted(ids, keys, sorter=order).clip(max=len(ids) - 1)
    found = ids[order[position]] == keys
    return np.where(found, names[order[position]], "")

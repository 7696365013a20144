"""A ranking model's serving assets: the raw user and item ids of the model's indices, the item
titles, and each user's training items (excluded from recommendations), written at export from
the prepared dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recforge.core.files import write_array
from recforge.tasks.serving import Request, RequestError, ServingAssets


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


class RankingAssets(ServingAssets):
    """Raw user ids -> model indices; the items each user trained on; item ids and titles."""

    what_it_does = "this bundle's model ranks items for users (/v1/recommend)"
    model_inputs = ["user", "item"]
    inputs = [{"name": "user", "type": "string"}, {"name": "k", "type": "integer", "missing": "default 10"}]

    def __init__(self, folder: Path):
        self.user_ids = _load_array(folder / "user_ids.npy")
        self.item_ids = _load_array(folder / "item_ids.npy")
        self.seen_offsets = _load_array(folder / "seen_offsets.npy")
        self.seen_items = _load_array(folder / "seen_items.npy")
        titles = folder / "item_titles.npy"
        self.item_titles = _load_array(titles) if titles.exists() else None
        # Raw ids are looked up as text: a JSON request's "196" and 196 are the same user.
        text = self.user_ids.astype(str)
        self._order = np.argsort(text, kind="stable")
        self._sorted = text[self._order]

    @staticmethod
    def write(data, out: Path) -> None:
        """The id maps, titles and training items of a prepared ranking dataset (LeaveOneOutData)."""

        def plain(ids) -> np.ndarray:  # Arrow strings or numpy ints; saved without pickle
            ids = np.asarray(ids.to_numpy(zero_copy_only=False) if hasattr(ids, "to_numpy") else ids)
            return ids.astype(str) if ids.dtype == object else ids

        write_array(out / "user_ids.npy", plain(data.user_ids))
        write_array(out / "item_ids.npy", plain(data.item_ids))
        write_array(out / "seen_offsets.npy", np.asarray(data.user_offsets, np.int64))
        write_array(out / "seen_items.npy", np.asarray(data.train_items, np.int32))
        if data.item_titles is not None:
            write_array(out / "item_titles.npy", plain(data.item_titles).astype(str))

    def recommend_request(self, payload: dict, k: int) -> Request:
        """A raw user id: every item scored, the k best it has not trained on answered."""
        if "user" not in payload:
            raise RequestError("user", "missing (the raw user id to recommend for)")
        user = self.user(payload["user"])
        answer = lambda scores: {"user": payload["user"], "items": self.top_items(scores, user, k)}  # noqa: E731
        return Request(rows=self.num_items, payload=user, answer=answer)

    def model_inputs_of(self, payloads: list) -> dict[str, np.ndarray]:
        users = np.repeat(np.array(payloads, np.int64), self.num_items)
        items = np.tile(np.arange(self.num_items, dtype=np.int64), len(payloads))
        return {"user": users, "item": items}

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def user(self, raw) -> int:
        """The model's index of a raw user id; unknown: a RequestError naming `user`."""
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            raise RequestError("user", "must be a user id (a string or an integer)")
        key = str(raw)
        at = np.searchsorted(self._sorted, key)
        if at == len(self._sorted) or self._sorted[at] != key:
            raise RequestError("user", f"unknown user {key!r} (not in the training data)")
        return int(self._order[at])

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_offsets[user] : self.seen_offsets[user + 1]]

    def top_items(self, scores: np.ndarray, user: int, k: int) -> list[dict]:
        """The k best-scored items the user has not trained on, with ids, scores and titles."""
        scores = scores.astype(np.float64).copy()
        scores[self.seen(user)] = -np.inf
        k = min(k, self.num_items - len(self.seen(user)))
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        items = self.item_ids[top].tolist()
        titles = self.item_titles[top].tolist() if self.item_titles is not None else None
        return [
            {"rank": r + 1, "item": items[r], "score": float(scores[i])}
            | ({"title": titles[r]} if titles is not None else {})
            for r, i in enumerate(top.tolist())
        ]

"""Ranking from implicit feedback (the NCF family).

Training: every epoch, the positives plus `negative_samples` uniform negatives per positive,
scored pointwise with binary cross-entropy; verified negatives avoid the user's training items
only (what is held out is unknown to training, as in NCF's and RecBole's code). Evaluation: each
user's held-out item is ranked against `valid_negative` sampled true negatives (the NCF
protocol) or against every item the user has not interacted with in training
(`--eval-protocol full`). Evaluations score the test items (the NCF papers' protocol) or, with
`--valid-protocol leave-one-out`, each user's second-latest interaction, held out of training
too; the test items are then scored once, at the end (`final_split`). Under torchrun every user
is evaluated by exactly one rank and the per-rank sums are added up.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recforge.config import RunConfig
from recforge.core.errors import RecforgeError
from recforge.core.files import write_array
from recforge.core.progress import Progress
from recforge.data.batches import ImplicitEpochs
from recforge.data.cache import prepare
from recforge.data.implicit import LeaveOneOutData
from recforge.data.sampling import sample_eval_negatives
from recforge.metrics.ranking import hit_and_ndcg, rank_among_all, rank_among_sampled
from recforge.models.base import UserItemModel
from recforge.models.popularity import ItemPopularity
from recforge.runtime.distributed import Dist
from recforge.runtime.memory import fits_in_memory
from recforge.runtime.precision import autocast
from recforge.tasks.base import Task, binary_cross_entropy
from recforge.tasks.ranking_serving import RankingAssets
from recforge.tasks.serving import EXPORT_SAMPLE_ROWS, Exported


def eval_negatives(data: LeaveOneOutData, cache_path: Path, per_user: int, seed: int, split: str) -> np.ndarray:
    """Per user, items it never interacted with: for the test items the source's own where it has
    them; else sampled once per (split, count, seed) and cached, validation's from another stream."""
    if data.eval_negatives is not None and split == "test":
        return data.eval_negatives
    name = "eval_negatives" if split == "test" else "valid_negatives"
    path = cache_path / f"{name}_n{per_user}_seed{seed}.npy"
    if not path.exists():
        stream = seed if split == "test" else int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        counts = np.diff(data.user_offsets) + 1
        negatives = sample_eval_negatives(data.interaction_keys(), counts, data.num_items, per_user, stream)
        write_array(path, negatives)
    return np.load(path, mmap_mode="c")


@dataclass
class _Split:
    """What one split's evaluation ranks: its users, their held-out items, their candidates."""

    users: torch.Tensor  # int64: the users with an item held out in this split
    items: torch.Tensor  # the held-out item of each
    negatives: torch.Tensor | None  # [users, k]: sampled protocol; None: every item (full protocol)
    history: LeaveOneOutData  # full protocol: its training rows are what the ranking excludes


def data_fingerprint(data: LeaveOneOutData, dataset: str) -> dict:
    """What a checkpoint was trained on: sizes and a hash of the raw id maps and the interactions
    (ml-20m: ~0.1 s, once per run)."""
    digest = hashlib.sha256()
    for array in (data.user_ids, data.item_ids, data.user_offsets, data.train_items, data.test_items):
        digest.update(np.ascontiguousarray(array).tobytes())
    return {
        "dataset": dataset,
        "users": data.num_users,
        "items": data.num_items,
        "training interactions": len(data.train_items),
        "data hash": digest.hexdigest()[:16],
    }


AUTO_VERIFY_SHARE = 0.03  # --verify-negatives auto: see RankingTask._verify_negatives


class RankingTask(Task):
    name = "ranking"
    model_family = UserItemModel
    assets = RankingAssets
    can_recommend = True

    def __init__(self, cfg: RunConfig, device: torch.device, dist: Dist, log=print):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.precision = cfg.train.precision
        validating = cfg.eval.valid_protocol == "leave-one-out"
        sampled = cfg.eval.eval_protocol == "sampled"
        splits = ("valid", "test") if validating else ("test",)
        with dist.main_first():  # rank 0 prepares and caches; the others then read the cache
            self.data, self.cache_path = prepare(cfg.data, log=log)
            negatives = {
                split: eval_negatives(self.data, self.cache_path, cfg.eval.valid_negative, cfg.train.seed, split)
                for split in splits
                if sampled
            }
        data = self.data
        # Training's positives (the data's fingerprint stays the whole data's: the same ids).
        self.positives = data.without_validation() if validating else data
        if data.eval_negatives is not None and sampled and cfg.eval.valid_negative != data.eval_negatives.shape[1]:
            log(
                f"note: {cfg.data.dataset} brings {data.eval_negatives.shape[1]} negatives per user; "
                "--valid-negative is ignored" + (" for the test items" if validating else "")
            )
        verify = self._verify_negatives(cfg.train.verify_negatives)
        most = int(np.diff(self.positives.user_offsets).max(initial=0))
        if verify and most >= data.num_items:
            raise RecforgeError("--verify-negatives: a user has interacted with every item; no negatives exist")
        # An epoch's tensors: users and items of the positives, the negatives, all items and their order.
        positives, drawn = len(self.positives.train_items), len(self.positives.train_items) * cfg.train.negative_samples
        epoch_bytes = 8 * (2 * positives + drawn + 2 * (positives + drawn))
        sharded = dist.enabled and not fits_in_memory(epoch_bytes, device, cfg.data.memory_fraction)
        if sharded:
            log(f"an epoch's {epoch_bytes / 2**20:,.0f} MiB do not fit on {device}: each rank draws its part")
        self.epochs = ImplicitEpochs(
            self.positives.train_users,
            self.positives.train_items,
            data.num_items,
            cfg.train.negative_samples,
            device,
            cfg.train.seed,
            self.positives.train_keys() if verify else None,
            dist.rank,
            dist.world,
            sharded,
        )
        candidates = data.num_items if not sampled else 1 + min(n.shape[1] for n in negatives.values())
        if cfg.eval.topk > candidates:  # HR@K would be 1.0 whatever the model
            raise RecforgeError(
                f"--topk {cfg.eval.topk}: more than the {candidates} candidates each held-out item is ranked "
                f"among ({'every item' if not sampled else 'it and its negatives, --valid-negative'})"
            )
        self.splits = {split: self._split(split, negatives.get(split)) for split in splits}
        self.eval_split = splits[0]
        self.final_split = "test" if validating else None
        self.topk = cfg.eval.topk

    def _split(self, split: str, negatives: np.ndarray | None) -> _Split:
        data = self.data
        if split == "valid":  # ranked against training's rows: the test item is unknown yet
            assert data.valid_items is not None  # a valid split is one held out
            users, history = np.flatnonzero(data.valid_items >= 0), self.positives
            items = data.valid_items[users]
        else:  # the validation item, if held out, is history by now: the whole data's training rows
            users, items, history = np.arange(data.num_users), data.test_items, data
        tensor = lambda a: torch.as_tensor(np.asarray(a), device=self.device)  # noqa: E731
        return _Split(
            users=tensor(users.astype(np.int64)),
            items=tensor(items),
            negatives=None if negatives is None else tensor(np.asarray(negatives)[users]),
            history=history,
        )

    def _verify_negatives(self, setting) -> bool:
        """--verify-negatives auto: verify where unchecked draws often hit a user's known items.

        A draw for user u hits one of u's d_u known items with probability d_u / items, and u's
        positives draw d_u * k negatives: the share of hits is sum(d_u^2) / (items * sum(d_u)).
        It is 12% on ml-100k (unchecked: HR@10 0.594, verified 0.637, RecBole's NeuMF setup),
        6.2% on ml-latest-small, ~10% on ml-1m, ~1.9% on ml-20m, where NVIDIA's and MLPerf's
        references differ and verification costs one search per draw in 20M keys (~50 s of an
        epoch's 80M draws on 2 AVX2 cores). From 3% on, the hits would be a noticeable share of
        the negatives (label noise): verify. Below, the shortcut."""
        if setting != "auto":
            return bool(setting)
        known = np.diff(self.data.user_offsets).astype(np.float64) + 1  # train items and the held-out one
        share = float((known * known).sum() / (self.data.num_items * max(known.sum(), 1.0)))
        verify = share >= AUTO_VERIFY_SHARE
        why = f"{share:.1%} of unchecked draws would be known positives; verified from {AUTO_VERIFY_SHARE:.0%}"
        self.resolved = {"verify_negatives": {"value": verify, "why": why}}  # printed by a training run
        return verify

    @property
    def model_dims(self) -> dict:
        return {"num_users": self.data.num_users, "num_items": self.data.num_items}

    @functools.cached_property
    def data_fingerprint(self) -> dict:
        return data_fingerprint(self.data, self.cfg.data.dataset)

    @property
    def samples_per_epoch(self) -> int:
        return self.epochs.samples_per_epoch

    @property
    def primary_metric(self) -> str:
        return f"HR@{self.topk}"

    @classmethod
    def metrics_of(cls, cfg: RunConfig) -> list[str]:
        return [f"HR@{cfg.eval.topk}", f"NDCG@{cfg.eval.topk}"]

    def loss(self, outputs: torch.Tensor, batch: dict):
        return binary_cross_entropy(outputs, batch)

    @classmethod
    def choose_on_validation(cls, cfg: RunConfig) -> str:
        cfg.eval.valid_protocol = "leave-one-out"
        return "each user's second-latest interaction held out for it"

    @classmethod
    def export(cls, cfg: RunConfig, folder: Path, log) -> Exported:
        """The id maps and training items; checked on each user's held-out item, then random pairs."""
        cfg.data.clean = False
        data, _ = prepare(cfg.data, log=log)
        RankingAssets.write(data, folder)
        rng = np.random.default_rng(0)
        extra = max(0, EXPORT_SAMPLE_ROWS - data.num_users)
        users = np.concatenate([np.arange(data.num_users), rng.integers(0, data.num_users, extra)])
        items = np.concatenate([np.asarray(data.test_items), rng.integers(0, data.num_items, extra)])
        sample = {"user": users[:EXPORT_SAMPLE_ROWS], "item": items[:EXPORT_SAMPLE_ROWS]}
        return Exported(
            fingerprint=data_fingerprint(data, cfg.data.dataset),
            data=cfg.data.dataset,
            sample=sample,
            sample_of=f"{len(sample['user']):,} (user, item) pairs: each user's held-out item, then random pairs",
        )

    def baseline(self) -> tuple[str, dict]:
        """Item popularity on the same evaluation: what a model must clearly beat to have learned."""
        metrics, _ = self.evaluate(ItemPopularity(self.positives.train_items, self.data.num_items).to(self.device))
        return "popularity", metrics

    def train_batches(self, epoch: int, batch_size: int, start_step: int = 0):
        return self.epochs.batches(epoch, batch_size, start_step)

    def _score(self, model, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores [len(users), items per user] for each user against its row of `items`."""
        width = items.shape[1]
        batch = {"user": users.repeat_interleave(width), "item": items.reshape(-1)}
        with autocast(self.device, self.precision):
            return model(batch).float().view(-1, width)

    def _scored_chunks(self, model, split: str):
        """This rank's users of `split` in chunks: (candidate scores, rank of the held-out item).

        Sampled protocol: scores [n, 1 + negatives], column 0 the held-out item. Full protocol:
        scores [n, items], the user's history (`_Split.history`) at -inf."""
        part = self.splits[split]
        count, num_items = len(part.users), self.data.num_items
        lo, hi = count * self.dist.rank // self.dist.world, count * (self.dist.rank + 1) // self.dist.world
        full = part.negatives is None
        step = max(
            1, self.cfg.eval.valid_batch_size // (num_items if part.negatives is None else 1 + part.negatives.shape[1])
        )
        for start in range(lo, hi, step):
            chunk = slice(start, min(hi, start + step))
            users, held_out = part.users[chunk], part.items[chunk]
            if full:
                scores = self._score(model, users, torch.arange(num_items, device=self.device).expand(len(users), -1))
                rows, seen = self._history(part.history, users.cpu().numpy())
                scores[rows, seen] = float("-inf")
                yield scores, rank_among_all(scores, held_out)
            else:
                assert part.negatives is not None  # not `full`
                negatives = part.negatives[chunk]
                candidates = torch.cat([held_out.view(-1, 1), negatives], dim=1)
                scores = self._score(model, users, candidates)
                yield scores, rank_among_sampled(scores, negatives != held_out.view(-1, 1))

    def _history(self, history: LeaveOneOutData, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in `users`, item) of each training item of those users in `history`: CSR rows gathered."""
        offsets = history.user_offsets
        starts, counts = offsets[users], offsets[users + 1] - offsets[users]
        rows = np.repeat(np.arange(len(users)), counts)
        index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        items = np.asarray(history.train_items)[index]
        return torch.as_tensor(rows, device=self.device), torch.as_tensor(items, device=self.device).to(torch.int64)

    @torch.no_grad()
    def evaluate(self, model, split: str | None = None) -> tuple[dict, int]:
        """Metrics over the split's users (summed across ranks) and the number of pairs scored."""
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # hits, ndcg, users, pairs
        split = split or self.eval_split
        if split not in self.splits:
            raise RecforgeError(f"no '{split}' split: --valid-protocol leave-one-out holds validation items out")
        part = self.splits[split]
        progress = Progress(len(part.users) // self.dist.world, f"evaluate {split}", self.dist.is_main, unit="users")
        for scores, rank in self._scored_chunks(model, split):
            hit, ndcg = hit_and_ndcg(rank, self.topk)
            users, width = scores.shape
            progress.update(users)
            totals[0] += hit.sum()
            totals[1] += ndcg.sum()
            totals[2] += users
            totals[3] += users * width
        progress.close()
        self.dist.all_reduce_sum(totals)
        model.train(was_training)
        hits, ndcg, users, pairs = totals.tolist()
        metrics = {f"HR@{self.topk}": hits / users, f"NDCG@{self.topk}": ndcg / users, "eval_users": int(users)}
        return metrics, int(pairs)

    @torch.no_grad()
    def predict(self, model) -> torch.Tensor:
        """Click-style probabilities of this rank's evaluation candidates (for --mode inference)."""
        model.eval()
        chunks = self._scored_chunks(model, self.eval_split)
        return torch.cat([torch.sigmoid(scores).flatten() for scores, _ in chunks])

    def write_predictions(self, folder: Path, probabilities: torch.Tensor) -> list[Path]:
        write_array(folder / "predictions.npy", probabilities.cpu().numpy())
        return [folder / "predictions.npy"]

    @torch.no_grad()
    def recommend(self, model, raw_user: str, k: int) -> list[dict]:
        """Top-k items by score among those the user has not interacted with in training."""
        ids = self.data.user_ids
        try:
            key = ids.dtype.type(raw_user)
        except (ValueError, OverflowError):  # not an id of this dtype: no such user (23 digits for int64)
            key = None
        found = np.flatnonzero(ids == key) if key is not None else np.array([])
        if not found.size:
            raise RecforgeError(f"user '{raw_user}' is not in the prepared {self.cfg.data.dataset} data")
        user = int(found[0])
        model.eval()
        scores = self._score(
            model,
            torch.tensor([user], device=self.device),
            torch.arange(self.data.num_items, device=self.device).view(1, -1),
        )[0]
        offsets = self.data.user_offsets
        seen = np.asarray(self.data.train_items[offsets[user] : offsets[user + 1]])
        scores[torch.as_tensor(seen, device=self.device).to(torch.int64)] = float("-inf")
        top = scores.topk(min(k, self.data.num_items - len(seen)))
        titles = self.data.item_titles
        return [
            {
                "rank": r + 1,
                "item": self.data.item_ids[i].item(),
                "score": float(s),
                **({"title": str(titles[i])} if titles is not None else {}),
            }
            for r, (i, s) in enumerate(zip(top.indices.tolist(), top.values.tolist()))
        ]

"""Click prediction (DLRM, Wide & Deep): labelled rows of dense and categorical features.

Batches hold `label`, `dense`, `sparse` and, when the prepared data has them, `multi_hot` and
`crossed`. Data with a group column (Outbrain's display_id) is also scored by MAP@12 (its primary
metric then) and its predictions can be written as a Kaggle submission, ads ranked per display.

Training reads the prepared folder's train split; when it fits in memory (a quarter of RAM, or
of the GPU), it is loaded onto the device once and every epoch is a seeded permutation of rows;
otherwise batches are sliced from the memory-mapped arrays, in a shuffled order of contiguous
batch-sized blocks (`--shuffle blocks`). Evaluation scores the valid (or test) split, sharded by
rank; every rank then holds all scores and computes the exact AUC, log loss and accuracy.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import torch

from recforge.config import RunConfig
from recforge.core.errors import RecforgeError
from recforge.core.files import atomic_write, write_array
from recforge.data.ctr_format import CTRMeta, load_meta, load_split
from recforge.data.rank_rows import RankRows
from recforge.data.read_ahead import copy_rows, read_ahead
from recforge.metrics.classification import accuracy, auc, logloss
from recforge.metrics.ranking import map_at_k
from recforge.models.base import ClickLogModel
from recforge.runtime.distributed import Dist
from recforge.runtime.memory import fits_in_memory
from recforge.runtime.precision import autocast
from recforge.tasks.base import Task, binary_cross_entropy
from recforge.tasks.ctr_serving import ClickLogAssets, model_inputs
from recforge.tasks.serving import EXPORT_SAMPLE_ROWS, Exported

FEATURES = ("label", "dense", "sparse", "multi_hot", "crossed")  # the arrays a batch holds, when present


def _to_batch(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**arrays, "label": arrays["label"].to(torch.float32)}


def data_fingerprint(meta: CTRMeta) -> dict:
    """The prepared layout a checkpoint's tables index: features, their cardinalities, rows."""
    saved = meta.to_json()
    layout = json.dumps(
        {k: saved[k] for k in ("dense", "sparse", "cardinalities", "multi_hot", "crossed", "rows")}, sort_keys=True
    )
    return {
        "train rows": meta.rows.get("train", 0),
        "fields": len(meta.cardinalities) + len(meta.multi_hot),
        "embedding rows": sum(meta.cardinalities) + sum(f["cardinality"] for f in meta.multi_hot),
        "layout hash": hashlib.sha256(layout.encode()).hexdigest()[:16],
    }


def _prepared_folder(cfg: RunConfig) -> Path:
    folder = cfg.data.prepared_dir or cfg.data.data_dir  # --data-dir: its name before --prepared-dir
    if folder is None:
        raise RecforgeError(
            f"--prepared-dir FOLDER is required for {cfg.data.dataset} "
            f"(made by `recforge prepare {cfg.data.dataset} ... --out FOLDER`)"
        )
    return Path(folder).expanduser()


def _metrics(meta: CTRMeta) -> list[str]:
    """MAP@12 where the log groups its rows (Outbrain's displays), then the per-row metrics."""
    return ["MAP@12", "AUC", "logloss", "accuracy"] if meta.group else ["AUC", "logloss", "accuracy"]


class CTRTask(Task):
    name = "ctr"
    model_family = ClickLogModel
    assets = ClickLogAssets

    def __init__(self, cfg: RunConfig, device: torch.device, dist: Dist, log=print):
        folder = _prepared_folder(cfg)
        self.cfg, self.device, self.dist, self.folder = cfg, device, dist, folder
        self.precision = cfg.train.precision
        self.meta = load_meta(folder)
        self.train = load_split(folder, "train") if cfg.train.mode == "train" else None
        self.eval_split = cfg.eval.eval_split
        self.eval_arrays = self._split(self.eval_split)
        # Validation during training, the test rows once at the end (with the best checkpoint).
        self.final_split = "test" if self.eval_split == "valid" and self.meta.rows.get("test") else None
        self.rank_rows = RankRows(self.meta.rows.get("train", 0), cfg.train.batch_size, dist.world)
        self.resident = None  # this rank's training rows on the device, when they fit
        if self.train is not None:
            self.train = {k: v for k, v in self.train.items() if k in FEATURES}
            mine = self.rank_rows.count(dist.rank)
            nbytes = sum(a.nbytes // max(1, len(a)) for a in self.train.values()) * mine
            if cfg.data.shuffle == "rows":  # the epoch's permutation of all rows, on every rank
                nbytes += 8 * self.rank_rows.rows
            if fits_in_memory(nbytes, device, cfg.data.memory_fraction):
                self.resident = {
                    k: torch.from_numpy(self.rank_rows.owned(v, dist.rank)).to(device) for k, v in self.train.items()
                }
                part = f" (rank {dist.rank}'s part of {self.rank_rows.rows:,})" if dist.enabled else ""
                log(f"{folder}: {mine:,} training rows loaded onto {device}{part}")

    @property
    def model_dims(self) -> dict:
        return {
            "num_dense": len(self.meta.dense_names),
            "cardinalities": list(self.meta.cardinalities),
            "meta": self.meta.to_json(),
        }

    @functools.cached_property
    def data_fingerprint(self) -> dict:
        return data_fingerprint(self.meta)

    @property
    def samples_per_epoch(self) -> int:
        return self.meta.rows["train"]

    @property
    def primary_metric(self) -> str:
        return "MAP@12" if self.meta.group else "AUC"

    @property
    def metric_names(self) -> list[str]:
        return _metrics(self.meta)

    @classmethod
    def metrics_of(cls, cfg: RunConfig) -> list[str]:
        return _metrics(load_meta(_prepared_folder(cfg)))

    def loss(self, outputs: torch.Tensor, batch: dict):
        return binary_cross_entropy(outputs, batch)

    @classmethod
    def choose_on_validation(cls, cfg: RunConfig) -> str:
        if cfg.eval.eval_split == "test":
            raise RecforgeError("--eval-split test: a search must choose on the validation split (--eval-split valid)")
        return "the prepared valid split"

    @classmethod
    def export(cls, cfg: RunConfig, folder: Path, log) -> Exported:
        """The prepared folder's encoders; checked on the first rows of its valid (or test, or train) split."""
        prepared = _prepared_folder(cfg)
        meta = load_meta(prepared)
        ClickLogAssets.write(prepared, folder)
        split = next((s for s in ("valid", "test", "train") if meta.rows.get(s)), None)
        assert split is not None  # a prepared log has rows
        arrays = load_split(prepared, split)
        sample = {k: np.array(arrays[k][:EXPORT_SAMPLE_ROWS]) for k in model_inputs(meta)}
        return Exported(
            fingerprint=data_fingerprint(meta),
            data=f"{cfg.data.dataset} in {prepared}",
            sample=sample,
            sample_of=f"the first {len(sample['dense']):,} rows of the {split} split",
        )

    def train_batches(self, epoch: int, batch_size: int, start_step: int = 0):
        """(this rank's part of each global batch, global batch size, the largest rank's part); the
        same global batches on every rank and for any number of ranks (`RankRows`)."""
        assert batch_size == self.rank_rows.batch, "the rows each rank owns were chosen for another batch size"
        parts, rank = self.rank_rows, self.dist.rank
        steps = self.steps_per_epoch(batch_size)
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch)
        # Out of core, a row permutation would read the disk at random: shuffle batch-sized blocks.
        shuffle = "blocks" if self.cfg.data.shuffle == "rows" and self.resident is None else self.cfg.data.shuffle
        if shuffle == "rows":
            assert self.resident is not None  # rows are shuffled only when they are resident
            order = torch.randperm(parts.rows, generator=generator).to(self.device)
            for step in range(start_step, steps):
                batch = order[step * batch_size : (step + 1) * batch_size]
                owners = parts.owners(batch)
                mine: torch.Tensor | slice = parts.local(batch[owners == rank], rank)
                largest = int(torch.bincount(owners, minlength=self.dist.world).max())
                yield _to_batch({k: v[mine] for k, v in self.resident.items()}), len(batch), largest
            return
        blocks = torch.randperm(steps, generator=generator) if shuffle == "blocks" else torch.arange(steps)
        chosen = (parts.block(int(block), rank) for block in blocks[start_step:])
        if self.resident is not None:
            for _, mine, size in chosen:
                yield _to_batch({k: v[mine] for k, v in self.resident.items()}), size, -(-size // self.dist.world)
            return
        pinned = self.device.type == "cuda"
        assert self.train is not None  # training rows, in train mode
        read = lambda part: (copy_rows(self.train, part[0], pinned), part[2])  # noqa: E731
        for arrays, size in read_ahead(chosen, read):
            tensors = {k: a.to(self.device, non_blocking=True) for k, a in arrays.items()}
            yield _to_batch(tensors), size, -(-size // self.dist.world)

    def _split(self, split: str) -> dict[str, np.ndarray] | None:
        return load_split(self.folder, split) if self.meta.rows.get(split) else None

    def _arrays(self, split: str) -> dict[str, np.ndarray]:
        """The arrays of a split to score (the evaluation split's, loaded once)."""
        arrays = self.eval_arrays if split == self.eval_split else self._split(split)
        if arrays is None:
            raise RecforgeError(f"{self.folder}: no '{split}' split to evaluate")
        return arrays

    @torch.no_grad()
    def _probabilities(self, model, arrays: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and labels of this rank's shard of a split's `arrays`."""
        was_training = model.training
        model.eval()
        rows = len(arrays["label"])
        lo, hi = rows * self.dist.rank // self.dist.world, rows * (self.dist.rank + 1) // self.dist.world
        # Every rank runs as many batches as the largest shard needs (a sharded model's forward
        # is a collective that all ranks join), its own shard cut into that many equal parts.
        largest = -(-rows // self.dist.world)
        batches = -(-largest // self.cfg.eval.valid_batch_size)
        bounds = [lo + (hi - lo) * i // batches for i in range(batches + 1)]
        probabilities, labels = [], []
        features = {k: v for k, v in arrays.items() if k in FEATURES}
        pinned = self.device.type == "cuda"
        slices = (slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:]))
        for arrays in read_ahead(slices, lambda rows: copy_rows(features, rows, pinned)):
            batch = _to_batch({k: a.to(self.device, non_blocking=True) for k, a in arrays.items()})
            with autocast(self.device, self.precision):
                probabilities.append(torch.sigmoid(model(batch).float()))
            labels.append(batch["label"])
        model.train(was_training)
        empty = torch.zeros(0, device=self.device)
        return torch.cat(probabilities) if probabilities else empty, torch.cat(labels) if labels else empty

    def evaluate(self, model, split: str | None = None) -> tuple[dict, int]:
        arrays = self._arrays(split or self.eval_split)
        probabilities, labels = self._probabilities(model, arrays)
        probabilities, labels = self.dist.gather_cat(probabilities), self.dist.gather_cat(labels)
        metrics = {
            "AUC": auc(probabilities, labels),
            "logloss": logloss(probabilities, labels),
            "accuracy": accuracy(probabilities, labels),
            "eval_rows": int(labels.numel()),
        }
        if self.meta.group:
            groups = torch.from_numpy(np.array(arrays["group"])).to(probabilities.device)
            metrics = {"MAP@12": map_at_k(probabilities, labels, groups, k=12), **metrics}
        return metrics, int(labels.numel())

    def predict(self, model) -> torch.Tensor:
        """Probabilities of the evaluation split, in row order (for --mode inference)."""
        return self.dist.gather_cat(self._probabilities(model, self._arrays(self.eval_split))[0])

    def write_predictions(self, folder: Path, probabilities: torch.Tensor) -> list[Path]:
        """predictions.npy (row order) and, for grouped data with an item column, submission.csv in
        the Kaggle Outbrain format: `display_id,ad_id` then per display its ads, most probable first."""
        scores = probabilities.cpu().numpy()
        written = [folder / "predictions.npy"]
        write_array(written[0], scores)
        if self.meta.group and self.meta.item:
            assert self.eval_arrays is not None  # `predict` scored them
            groups, items = np.asarray(self.eval_arrays["group"]), np.asarray(self.eval_arrays["item"])
            order = np.lexsort((-scores, groups))  # by group, then probability descending
            groups, items = groups[order], items[order]
            starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
            ranked = pa.ListArray.from_arrays(
                pa.array(np.r_[starts, len(groups)].astype(np.int32)), pc.cast(pa.array(items), pa.string())
            )
            table = pa.table({self.meta.group: groups[starts], self.meta.item: pc.binary_join(ranked, " ")})
            written.append(folder / "submission.csv")

            def write(f):
                f.write(f"{self.meta.group},{self.meta.item}\n".encode())
                pcsv.write_csv(table, f, pcsv.WriteOptions(include_header=False, quoting_style="none"))

            atomic_write(written[1], write, mode="wb")
        return written

"""Prepared datasets cached as memory-mappable .npy columns plus meta.json.

A cache entry is keyed by the dataset name, the source files (name and content: `core.content`)
and every preprocessing option, so changing any of them prepares afresh. Entries are written into a temp
folder and renamed into place: a crash or a full disk never leaves a half-written entry, and a
failed write is reported as one about the entry.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from recforge.config import DataConfig
from recforge.core.content import described
from recforge.core.files import naming, remove, replace, temp_folder, write_array, write_json
from recforge.data.datasets import dataset_entry
from recforge.data.implicit import LeaveOneOutData, leave_one_out

FORMAT_VERSION = 3  # 2: valid_items; 3: keyed by content
ARRAYS = (
    "train_users",
    "train_items",
    "test_items",
    "user_ids",
    "item_ids",
    "item_titles",
    "eval_negatives",
    "valid_items",
)
NOT_IN_KEY = (
    "cache_dir",
    "clean",
    "data_dir",
    "data_file",
    "out",
    "overwrite",
    "workers",
)  # files stand in; the rest is not preprocessing


def cache_root(cfg: DataConfig) -> Path:
    default = os.environ.get("RECFORGE_CACHE") or Path.home() / ".cache" / "recforge"
    return Path(cfg.cache_dir or default).expanduser()


def cache_key(cfg: DataConfig, sources: list[Path]) -> str:
    options = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_KEY}
    files = [described(p) for p in sources]
    blob = json.dumps({"version": FORMAT_VERSION, "options": options, "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save(path: Path, data: LeaveOneOutData, meta: dict) -> None:
    tmp = temp_folder(path)
    try:
        with naming(path, inside=tmp):
            for name in ARRAYS:
                value = getattr(data, name)
                if value is not None:
                    write_array(tmp / f"{name}.npy", np.ascontiguousarray(value))
            write_json(tmp / "meta.json", meta)
        try:
            replace(tmp, path)
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove(tmp)  # another process finished the same entry first
    except BaseException:
        remove(tmp)
        raise


def load(path: Path) -> LeaveOneOutData:
    arrays: dict[str, Any] = {}
    for name in ARRAYS:
        file = path / f"{name}.npy"
        arrays[name] = np.load(file, mmap_mode="c", allow_pickle=False) if file.exists() else None
    return LeaveOneOutData(**arrays)


def prepare(cfg: DataConfig, log=print) -> tuple[LeaveOneOutData, Path]:
    """The prepared dataset for `cfg`, from the cache or built now (and cached)."""
    entry = dataset_entry(cfg.dataset)
    sources = entry.sources(cfg)
    path = cache_root(cfg) / f"{cfg.dataset}-{cache_key(cfg, sources)}"
    if cfg.clean and path.exists():
        shutil.rmtree(path)
    if not (path / "meta.json").exists():
        start = time.perf_counter()
        source = entry.read(cfg)
        read_s = time.perf_counter() - start
        data = (
            source
            if isinstance(source, LeaveOneOutData)
            else leave_one_out(source, min_rating=cfg.min_rating, min_user_interactions=cfg.min_user_interactions)
        )
        seconds = time.perf_counter() - start
        meta = {
            "dataset": cfg.dataset,
            "options": asdict(cfg),
            "sources": [str(p) for p in sources],
            "num_users": data.num_users,
            "num_items": data.num_items,
            "train_interactions": len(data.train_items),
            "read_s": round(read_s, 3),
            "prepare_s": round(seconds, 3),
            "format_version": FORMAT_VERSION,
        }
        save(path, data, meta)
        log(f"prepared {cfg.dataset} in {seconds:.1f}s: {data.describe()} -> {path}")
    return load(path), path

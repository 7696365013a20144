"""The NCF paper's file triple: `NAME.train.rating`, `NAME.test.rating`, `NAME.test.negative`.

The triple brings its own leave-one-out split (one test row per user, users 0..n-1) and its own
evaluation negatives (`(user,item)` followed by the sampled items on each line), so no
preprocessing is applied beyond sorting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recforge.config import DataConfig
from recforge.data.implicit import LeaveOneOutData
from recforge.data.tabular import read_delimited, require_file
from recforge.errors import DataError, RecforgeError

RATING_COLUMNS = ["user", "item", "rating", "timestamp"]


def ncf_prefix(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise RecforgeError("--dataset ncf needs --data-dir (the folder of NAME.train.rating, NAME.test.rating, NAME.test.negative)")
    folder = Path(cfg.data_dir).expanduser()
    if cfg.data_file:
        return folder / cfg.data_file
    found = sorted(folder.glob("*.test.rating"))
    if len(found) != 1:
        raise RecforgeError(f"{folder}: expected one NAME.test.rating, found {len(found)}; name the triple with --data-file NAME")
    return folder / found[0].name[: -len(".test.rating")]


def sources(cfg: DataConfig) -> list[Path]:
    prefix = ncf_prefix(cfg)
    return [require_file(Path(f"{prefix}.{part}")) for part in ("train.rating", "test.rating", "test.negative")]


def read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(require_file(path)) as f:
        width = len(f.readline().rstrip("\n").split("\t"))
    names = RATING_COLUMNS[:width] + [f"_{i}" for i in range(width - len(RATING_COLUMNS))]
    table = read_delimited(path, delimiter="\t", columns={"user": pa.int64(), "item": pa.int64()}, column_names=names)
    return table.column("user").to_numpy(), table.column("item").to_numpy()


def read_test(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out item per user (users must be 0..n-1, one row each) and the [n, k] negatives."""
    rating_path, negative_path = Path(f"{prefix}.test.rating"), Path(f"{prefix}.test.negative")
    users, items = read_ratings(rating_path)
    if not np.array_equal(users, np.arange(len(users))):
        line = int(np.flatnonzero(users != np.arange(len(users)))[0]) + 1
        raise DataError(rating_path, line, "user", f"expected user {line - 1}: one test row per user, in order")
    with open(require_file(negative_path)) as f:
        width = len(f.readline().rstrip("\n").split("\t"))
    names = ["pair"] + [f"n{i}" for i in range(width - 1)]
    columns = {"pair": pa.string(), **{n: pa.int64() for n in names[1:]}}
    table = read_delimited(negative_path, delimiter="\t", columns=columns, column_names=names)
    pair = pc.extract_regex(table.column("pair"), r"^\((?P<user>\d+),(?P<item>\d+)\)$")
    if pair.null_count:
        line = int(np.flatnonzero(pair.is_null().to_numpy(zero_copy_only=False))[0]) + 1
        raise DataError(negative_path, line, "pair", "expected '(user,item)'")
    pair_users = pc.struct_field(pair, "user").cast(pa.int64()).to_numpy()
    pair_items = pc.struct_field(pair, "item").cast(pa.int64()).to_numpy()
    common = min(len(pair_users), len(users))
    mismatch = (pair_users[:common] != users[:common]) | (pair_items[:common] != items[:common])
    if len(pair_users) != len(users) or mismatch.any():
        line = int(np.flatnonzero(mismatch)[0]) + 1 if mismatch.any() else common + 1
        raise DataError(negative_path, line, "pair", f"does not match line {line} of {rating_path.name}")
    negatives = np.stack([table.column(n).to_numpy() for n in names[1:]], axis=1)
    return items, negatives


def read(cfg: DataConfig) -> LeaveOneOutData:
    prefix = ncf_prefix(cfg)
    sources(cfg)
    train_users, train_items = read_ratings(Path(f"{prefix}.train.rating"))
    test_items, negatives = read_test(prefix)
    num_users = len(test_items)
    if train_users.size and train_users.max() >= num_users:
        raise RecforgeError(f"{prefix}.train.rating: user {train_users.max()} has no row in {prefix.name}.test.rating")
    num_items = int(max(train_items.max(initial=0), test_items.max(), negatives.max())) + 1
    order = np.lexsort((train_items, train_users))
    return LeaveOneOutData(
        train_users=train_users[order].astype(np.int32),
        train_items=train_items[order].astype(np.int32),
        test_items=test_items.astype(np.int32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
        eval_negatives=negatives.astype(np.int32),
    )

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
from recforge.core.errors import DataError, RecforgeError
from recforge.data.implicit import LeaveOneOutData, validation_items
from recforge.data.tabular import read_delimited, require_file, row_error

RATING_COLUMNS = ["user", "item", "rating", "timestamp"]


def ncf_prefix(cfg: DataConfig) -> Path:
    if cfg.data_dir is None:
        raise RecforgeError(
            "--dataset ncf needs --data-dir (the folder of NAME.train.rating, NAME.test.rating, NAME.test.negative)"
        )
    folder = Path(cfg.data_dir).expanduser()
    if cfg.data_file:
        return folder / cfg.data_file
    found = sorted(folder.glob("*.test.rating"))
    if len(found) != 1:
        raise RecforgeError(
            f"{folder}: expected one NAME.test.rating, found {len(found)}; name the triple with --data-file NAME"
        )
    return folder / found[0].name[: -len(".test.rating")]


def sources(cfg: DataConfig) -> list[Path]:
    prefix = ncf_prefix(cfg)
    return [require_file(Path(f"{prefix}.{part}")) for part in ("train.rating", "test.rating", "test.negative")]


def fields_in_first_line(path: Path) -> int:
    with open(require_file(path), "rb") as f:  # bytes: a binary file is named by read_delimited
        return len(f.readline().rstrip(b"\r\n").split(b"\t"))


def read_ratings(path: Path, with_times: bool = False) -> tuple[np.ndarray, ...]:
    """Users and items (and, asked for, timestamps: the rows' order where the file has none)."""
    width = fields_in_first_line(path)
    names = RATING_COLUMNS[:width] + [f"_{i}" for i in range(width - len(RATING_COLUMNS))]
    columns = {"user": pa.int64(), "item": pa.int64()} | ({"timestamp": pa.int64()} if with_times and width > 3 else {})
    table = read_delimited(path, delimiter="\t", columns=columns, column_names=names)
    ids = table.column("user").to_numpy(), table.column("item").to_numpy()
    if not with_times:
        return ids
    times = table.column("timestamp").to_numpy() if "timestamp" in columns else np.arange(table.num_rows)
    return (*ids, times)


def read_test(prefix: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out item per user (users must be 0..n-1, one row each) and the [n, k] negatives."""
    rating_path, negative_path = Path(f"{prefix}.test.rating"), Path(f"{prefix}.test.negative")
    users, items = read_ratings(rating_path)
    if not np.array_equal(users, np.arange(len(users))):
        line = int(np.flatnonzero(users != np.arange(len(users)))[0]) + 1
        raise DataError(rating_path, line, "user", f"expected user {line - 1}: one test row per user, in order")
    names = ["pair"] + [f"n{i}" for i in range(fields_in_first_line(negative_path) - 1)]
    columns = {"pair": pa.string(), **{n: pa.int64() for n in names[1:]}}
    table = read_delimited(negative_path, delimiter="\t", columns=columns, column_names=names)
    pair = pc.extract_regex(table.column("pair"), r"^\((?P<user>\d{1,18}),(?P<item>\d{1,18})\)$")
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
    train_path, test_path, negative_path = sources(cfg)
    train_users, train_items, train_times = read_ratings(train_path, with_times=True)
    test_items, negatives = read_test(prefix)
    num_users = len(test_items)
    _check_ids(train_path, train_users, ["user"], num_users, f"has no row in {test_path.name}")
    # NCF files number items densely from 0, so the tables are sized by the largest id. An id beyond
    # any dense numbering of these files (more ids than they hold, plus slack for items seen in none)
    # is refused at its line rather than remapped: remapping would hide a corrupt file and change
    # which items exist; files with arbitrary ids are `--dataset csv`, which renumbers them.
    held = train_items.size + test_items.size + negatives.size
    beyond = (
        f"is far beyond what these files can number: they mention items {held:,} times (training rows, test "
        "items and negatives), so dense ids from 0 stay below that (--dataset csv renumbers any ids)"
    )
    for path, ids, fields in (
        (train_path, train_items, ["item"]),
        (test_path, test_items, ["item"]),
        (negative_path, negatives, [f"n{i}" for i in range(negatives.shape[1])]),
    ):
        _check_ids(path, ids, fields, held + (1 << 20), beyond)
    num_items = int(max(train_items.max(initial=0), test_items.max(), negatives.max(initial=0))) + 1
    order = np.lexsort((train_items, train_users))
    users, items = train_users[order].astype(np.int32), train_items[order].astype(np.int32)
    return LeaveOneOutData(
        train_users=users,
        train_items=items,
        test_items=test_items.astype(np.int32),
        user_ids=np.arange(num_users, dtype=np.int64),
        item_ids=np.arange(num_items, dtype=np.int64),
        eval_negatives=negatives.astype(np.int32),
        valid_items=validation_items(users, items, train_times[order], num_users),
    )


def _check_ids(path: Path, ids: np.ndarray, fields: list[str], limit: int, beyond: str) -> None:
    """Ids ([rows] or [rows, fields]) must be in 0..limit-1; the first that is not names its line."""
    table = ids.reshape(len(ids), -1)
    bad = (table < 0) | (table >= limit)
    if bad.any():
        row, column = divmod(int(np.argmax(bad)), table.shape[1])
        value = int(table[row, column])
        message = f"id {value} is negative (ids count from 0)" if value < 0 else f"id {value:,} {beyond}"
        raise row_error(path, row, fields[column], message, header_lines=0)

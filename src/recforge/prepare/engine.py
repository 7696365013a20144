"""The one pass engine every preparation of a click log runs on: Criteo's day files, a feature
spec's CSV or Parquet files (`prepare ctr`), and Outbrain through the latter.

A `ClickLog` says how its files are read: a unit's rows counted, fitted (vocabularies, moments)
and encoded into the prepared arrays, and how the rows fall into splits. The engine cuts nothing
and parses nothing; it runs three passes over the units in `workers` processes:

- `rows`: each unit's rows. Needed first when the split depends on the totals (a holdout
  fraction, Kaggle's seven days) or when nothing is fitted; else counted by the fit pass.
- `fit`: every encoder that learns from data, fitted on the train rows of each unit and merged in
  unit order (units without train rows whose rows are still unknown are only counted).
- `write`: each unit encoded and written at its rows' offsets in the preallocated arrays.

Each pass tells the journal (`journal.py`) which of its tasks finished, after what they wrote is
durable, so an interrupted preparation continues after the last of them to byte-identical output.
A task's bad line comes back relative to its unit (`BadLine`) and is named here, once the rows of
the file's earlier units are known.
"""

from __future__ import annotations

import functools
import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recforge.core.errors import DataError, RecforgeError
from recforge.core.files import atomic_write
from recforge.data.ctr_format import CTRMeta, allocate, array_layout, sync_file, write_rows_at
from recforge.data.encoders import Encoders, load_encoders
from recforge.prepare.journal import Journal, prepare_resumably
from recforge.prepare.workers import _Workers

PASSES = ("rows", "fit", "write")
FITTED = "fitted-encoders.pickle"  # the fit pass's merged state so far, for a resumed pass (our own file)


@dataclass(frozen=True)
class Unit:
    """What one task reads: whole lines in bytes [start, end) of a plain file, row groups of a
    Parquet file, or (end None, no row groups) a whole file, streamed. `file`: its index in the
    click log's files; `first_row`: its first row in the file where known when cut (Parquet)."""

    file: int
    path: str
    start: int = 0
    end: int | None = None
    row_groups: tuple[int, ...] = ()
    first_row: int = 0


class BadLine(Exception):
    """A task's bad input: (line index in its unit or None, field or None, message)."""


@dataclass
class _Failed:
    """A task's `BadLine`, as its result (the engine names the file's line)."""

    line: int | None
    field: str | None
    message: str


@dataclass
class Prepared:
    """What the passes found, for the click log's meta.json."""

    file_rows: list[int]
    rows: dict[str, int]  # per split with rows, in the click log's order
    encoders: Encoders  # fitted, as saved in the folder
    distinct: list[int] | None  # distinct train values per categorical column, when fitted


class ClickLog(ABC):
    """One kind of input, sent to the workers with every task (keep it small: no units, no data)."""

    files: list[Path]

    @abstractmethod
    def encoders(self) -> Encoders:
        """The encoders of its columns, unfitted."""

    @abstractmethod
    def splits(self, file_rows: list[int]) -> dict[str, tuple[int, int]]:
        """Each split's rows [lo, hi) in the files' rows numbered in file order, in meta's order."""

    def train_files(self) -> frozenset[int] | None:
        """Files that are train rows only, when the split does not depend on the totals (the others
        then hold no train row); None: the rows are counted before the fit pass."""
        return None

    def optional(self, encoders: Encoders) -> dict[str, int]:
        """The optional arrays of the prepared splits, with their widths (`ctr_format.allocate`)."""
        return {}

    @abstractmethod
    def estimated_rows(self, unit: Unit) -> int:
        """A unit's rows before they are counted (progress only)."""

    @abstractmethod
    def count(self, unit: Unit, report: Callable[[int], None]) -> int:
        """The unit's rows; `report(rows)` is told them as they are read."""

    @abstractmethod
    def fit(self, unit: Unit, limit: int | None, first_row: int | None, encoders: Encoders, report) -> int:
        """Fit `encoders` on the unit's first `limit` rows (None: all); the rows read.
        `first_row`: the unit's first row in its file, where already counted."""

    @abstractmethod
    def encode(self, unit: Unit, first_row: int, encoders: Encoders) -> Iterator[dict[str, np.ndarray]]:
        """The unit's rows in batches, as the prepared arrays hold them (label, dense, sparse, ...)."""


def prepare_click_log(
    click_log: ClickLog,
    units: list[Unit],
    out: Path,
    key: str,
    overwrite: bool,
    processes: int,
    meta: Callable[[Prepared], CTRMeta],
    started: float,
    log: Callable[[str], None],
) -> tuple[CTRMeta, dict | None]:
    """The passes over `units` into the resumable folder of fingerprint `key` beside `out`, then
    `meta(prepared)`'s meta.json; what `journal.prepare_resumably` returns."""

    def build(tmp: Path, journal: Journal, pool: _Workers) -> CTRMeta:
        return meta(_passes(click_log, units, tmp, pool, journal, log))

    try:
        steps = dict.fromkeys(PASSES, len(units))
        return prepare_resumably(out, key, overwrite, (processes, _task), steps, build, started, log)
    finally:
        _encoders_in.cache_clear()


def _passes(click_log: ClickLog, units: list[Unit], tmp: Path, pool, journal: Journal, log) -> Prepared:
    """The rows, fit and write passes, each after the tasks `journal` says were finished."""
    rows: list[int | None] = journal.get("rows") or [None] * len(units)

    def named(i: int, result):
        if isinstance(result, _Failed):
            first = _firsts(units, rows)[i] if result.line is not None else None
            line = None if first is None or result.line is None else first + result.line + 1
            raise DataError(units[i].path, line, result.field, result.message)
        return result

    def expected(indices) -> int:
        return sum(rows[i] if rows[i] is not None else click_log.estimated_rows(units[i]) for i in indices)

    fitting = bool(click_log.encoders().fitted_columns())
    train_files = click_log.train_files()
    if train_files is None or not fitting:
        done = journal.done("rows")

        def counted(k: int, result) -> int:
            rows[done + k] = found = named(done + k, result)
            journal.finished("rows", done + k + 1, {"rows": rows})
            return found

        tasks: list[tuple] = [("rows", click_log, u, None) for u in units[done:]]
        pool.run("rows", tasks, counted, expected(range(done, len(units))), log)
        journal.finished("rows", len(units), {"rows": rows}, final=True)

    if not journal.done("allocate"):
        encoders, distinct = _fit(
            click_log, units, rows, train_files if fitting else None, tmp, pool, journal, log, named
        )
        _check_ids(encoders)
        splits = click_log.splits(_file_rows(click_log, units, rows))
        for split, (lo, hi) in splits.items():
            if hi > lo:
                allocate(tmp, split, hi - lo, len(encoders.dense), len(encoders.sparse), click_log.optional(encoders))
        encoders.save(tmp)  # the write pass's workers read them from the folder; they stay for raw rows later
        journal.finished("allocate", 1, {"rows": rows, "distinct": distinct}, final=True)
        (tmp / FITTED).unlink(missing_ok=True)
    counts = _counted(rows)
    file_rows = _file_rows(click_log, units, rows)
    splits = click_log.splits(file_rows)
    sizes = {split: hi - lo for split, (lo, hi) in splits.items() if hi > lo}
    ranges = {split: splits[split] for split in sizes}
    layout = {split: array_layout(tmp, split) for split in sizes}
    paths = [path for arrays in layout.values() for path, _, _ in arrays.values()]

    def durable() -> None:
        for path in paths:
            sync_file(path)

    done = journal.done("write")

    def written(k: int, result) -> int:
        named(done + k, result)
        journal.finished("write", done + k + 1, durable=durable)
        return result

    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    in_file = _firsts(units, rows)
    writes = [
        ("write", click_log, u, (starts[i], in_file[i], counts[i], ranges, layout, str(tmp)))
        for i, u in enumerate(units)
    ]
    pool.run("write", writes[done:], written, sum(counts[done:]), log)
    _encoders_in.cache_clear()
    journal.finished("write", len(units), durable=durable, final=True)  # durable before meta.json marks it complete
    return Prepared(file_rows, sizes, load_encoders(tmp), journal.get("distinct"))


def _fit(click_log, units, rows, train_files, tmp: Path, pool, journal: Journal, log, named) -> tuple:
    """The fit pass (when any encoder learns from data): the fitted encoders, and the distinct
    train values of each categorical column (None when nothing was fitted)."""
    encoders = click_log.encoders()
    if not encoders.fitted_columns():
        encoders.finish()
        return encoders, None
    if train_files is None:  # every unit counted: the train rows at the head of each unit
        lo, hi = click_log.splits(_file_rows(click_log, units, rows))["train"]
        starts = np.concatenate([[0], np.cumsum(_counted(rows))]).tolist()
        limits: list[int | None] = []
        for start, n in zip(starts, _counted(rows)):
            assert start >= lo or min(hi, start + n) <= max(lo, start), "train rows must be a head of each unit"
            limits.append(max(0, min(hi, start + n) - max(lo, start)))
    else:
        limits = [None if u.file in train_files else 0 for u in units]
    todo = [i for i, limit in enumerate(limits) if not (limit == 0 and rows[i] is not None)]
    done = journal.done("fit")
    if done:
        with open(tmp / FITTED, "rb") as f:
            encoders = pickle.load(f)
    in_file = _firsts(units, rows)

    def merged(k: int, result) -> int:
        i = todo[done + k]
        seen, partial = named(i, result)
        if rows[i] is None:
            rows[i] = seen
        if partial is not None:
            encoders.merge(partial)
        journal.finished("fit", done + k + 1, {"rows": rows}, durable=lambda: _save_fitted(tmp, encoders))
        return seen

    tasks = [("fit", click_log, units[i], (limits[i], in_file[i])) for i in todo[done:]]
    estimate = sum(
        click_log.estimated_rows(units[i]) if limits[i] is None else int(limits[i] or 0) for i in todo[done:]
    )
    pool.run("fit", tasks, merged, estimate, log)
    journal.finished("fit", len(todo), {"rows": rows})  # written with the allocation
    return encoders, encoders.finish()


def _firsts(units: list[Unit], rows: list[int | None]) -> list[int | None]:
    """Each unit's first row in its file, where every earlier unit of the file is counted."""
    out: list[int | None] = []
    following: dict[int, int | None] = {}  # per file: the first row of its next unit
    for unit, n in zip(units, rows):
        first = following.get(unit.file, unit.first_row)
        out.append(first)
        following[unit.file] = None if first is None or n is None else first + n
    return out


def _check_ids(encoders: Encoders) -> None:
    largest = np.iinfo(np.int32).max
    for encoder in [*encoders.sparse, *(m.values for m in encoders.multi_hot)]:
        if encoder.cardinality > largest:
            raise RecforgeError(
                f"{encoder.name}: {encoder.cardinality - 1:,} values kept, more than int32 ids hold; hash this column"
            )


def _file_rows(click_log: ClickLog, units: list[Unit], rows: list[int | None]) -> list[int]:
    counts = _counted(rows)
    return [sum(n for u, n in zip(units, counts) if u.file == f) for f in range(len(click_log.files))]


def _counted(rows: list[int | None]) -> list[int]:
    """`rows` of units whose rows have all been counted."""
    counts = [n for n in rows if n is not None]
    assert len(counts) == len(rows), "a unit's rows were never counted"
    return counts


def _save_fitted(folder: Path, encoders: Encoders) -> None:
    atomic_write(folder / FITTED, lambda f: pickle.dump(encoders, f), mode="wb")


@functools.lru_cache(maxsize=1)
def _encoders_in(folder: str) -> Encoders:
    """The encoders saved in `folder`, loaded (vocabularies memory-mapped) once per worker process."""
    return load_encoders(folder)


def _task(op: str, click_log: ClickLog, unit: Unit, arg, report: Callable[[int], None]):
    """One task, in a worker process (or this one): a unit's rows, (rows read, fitted encoders),
    or the rows it encoded and wrote; a `_Failed` for a bad line."""
    try:
        if op == "rows":
            return click_log.count(unit, report)
        if op == "fit":
            limit, first_row = arg
            if limit == 0:  # no train rows: only counted
                return click_log.count(unit, report), None
            encoders = click_log.encoders()
            return click_log.fit(unit, limit, first_row, encoders, report), encoders
        first, first_in_file, rows, ranges, layout, folder = arg
        return _write(click_log, unit, first, first_in_file, rows, ranges, layout, folder, report)
    except BadLine as bad:
        return _Failed(*bad.args)


def _write(
    click_log: ClickLog,
    unit: Unit,
    first: int,
    first_in_file: int,
    rows: int,
    ranges: dict[str, tuple[int, int]],
    layout: dict,
    folder: str,
    report: Callable[[int], None],
) -> int:
    """Encode the unit's rows (the `first`.. of all files') and write them at their offsets in the
    arrays of the splits whose rows [lo, hi) they fall in."""
    at = first
    for arrays in click_log.encode(unit, first_in_file, _encoders_in(folder)):
        n = len(arrays["label"])
        for split, (lo, hi) in ranges.items():
            a, b = max(at, lo), min(at + n, hi)
            if a < b:
                for name, array in arrays.items():
                    path, offset, row_bytes = layout[split][name]
                    write_rows_at(path, offset + (a - lo) * row_bytes, array[a - at : b - at])
        at += n
        report(n)
    if at - first != rows:
        raise BadLine(
            None, None, f"has {at - first:,} rows now, {rows:,} when counted: did it change while being prepared?"
        )
    return rows


def line_ranges(path: Path, start: int, unit_bytes: int) -> list[tuple[int, int]]:
    """A plain file's bytes from `start` cut into ranges of whole lines of about `unit_bytes`."""
    size = path.stat().st_size
    cuts = [start]
    with open(path, "rb") as f:
        while cuts[-1] + unit_bytes < size and (cut := next_line_start(f, cuts[-1] + unit_bytes)) < size:
            cuts.append(cut)
    return [(a, b) for a, b in zip(cuts, [*cuts[1:], size]) if b > a]


def next_line_start(f, position: int) -> int:
    """The offset just after the first newline at or after `position - 1`."""
    f.seek(position - 1)
    while True:
        piece = f.read(1 << 16)
        if not piece:
            return f.tell()
        found = piece.find(b"\n")
        if found >= 0:
            return f.tell() - len(piece) + found + 1

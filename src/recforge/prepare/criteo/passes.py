"""The three passes over the units: `count` (newlines), `vocabulary` (value counts of train rows)
and `write` (parse, encode, write each row at its offset); `_prepare` runs them in order, the
`_task` functions run in the worker processes. Each pass tells the journal which of its tasks
have finished, so an interrupted preparation continues after the last of them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recforge.core.errors import DataError, RecforgeError
from recforge.core.files import atomic_write
from recforge.data.ctr_format import SPLITS, CTRMeta, allocate, array_layout, sync_file, write_rows_at
from recforge.data.encoders import Categorical, Encoders, Numeric, load_encoders, merge_sorted_counts
from recforge.prepare.criteo.layout import KAGGLE_DAYS, _blocks, _count_lines, _estimated_rows, _split_rows, _Unit
from recforge.prepare.criteo.parse import DENSE, SPARSE, _BadLine, _parse_located
from recforge.prepare.journal import Journal


@dataclass(frozen=True)
class _Plan:
    """One preparation: its input files, cut into units, and its options."""

    kind: str
    files: list[Path]
    units: list[_Unit]
    chunk_bytes: int
    line_bytes: float  # the first file's mean line length (for progress estimates)
    min_frequency: int
    max_ind_range: int | None


def _prepare(plan: _Plan, tmp: Path, pool, log: Callable[[str], None], journal: Journal) -> CTRMeta:
    """The passes, in order, run by `pool` (a `_Workers`), writing into the folder `tmp`; the meta for
    meta.json. Each pass starts after the tasks `journal` says an earlier attempt finished."""
    units = plan.units
    rows: list[int | None] = journal.get("rows") or [None] * len(units)

    def check(unit_index: int, result: tuple) -> tuple:
        if result[0] == "bad":
            _, line, field, message = result
            unit = units[unit_index]
            before = _counted(rows[:unit_index])  # (results come in order: the earlier units' are known)
            first = sum(n for n, u in zip(before, units) if u.file == unit.file) if line is not None else 0
            raise DataError(unit.path, None if line is None else first + line + 1, field, message)
        return result

    def expected(indices) -> int:  # rows the tasks will read, for progress
        return sum(rows[i] if rows[i] is not None else _estimated_rows(units[i], plan.line_bytes) for i in indices)

    if plan.kind == "criteo-kaggle" or plan.max_ind_range is not None:  # rows needed before the vocabulary pass
        done = journal.done("count")

        def counted(k, result):
            i = done + k
            rows[i] = check(i, result)[1]
            journal.finished("count", i + 1, {"rows": rows})
            return rows[i]

        tasks = [("count", u, plan.chunk_bytes, None) for u in units[done:]]
        pool.run("count", tasks, counted, expected(range(done, len(units))), log)
        journal.finished("count", len(units), {"rows": rows}, final=True)

    if plan.max_ind_range is None and not journal.done("allocate"):
        if plan.kind == "criteo-kaggle":
            counts = _counted(rows)
            train_end = _split_rows(plan.kind, [sum(counts)])["train"]
            first_rows = np.concatenate([[0], np.cumsum(counts)]).tolist()
            limits = [min(max(train_end - first_rows[i], 0), rows[i]) for i in range(len(units))]
            limits = [None if limit == rows[i] else limit for i, limit in enumerate(limits)]
        else:  # every day but the last is train; the last day is only counted
            limits = [0 if u.file == len(plan.files) - 1 else None for u in units]
        todo = [i for i, limit in enumerate(limits) if not (limit == 0 and rows[i] is not None)]
        done = journal.done("vocabulary")
        totals = _load_counts(tmp) if done else [(np.zeros(0, np.uint32), np.zeros(0, np.int64))] * len(SPARSE)

        def counted_values(k, result):
            i = todo[done + k]
            _, seen, counts = check(i, result)
            if rows[i] is None:
                rows[i] = seen
            if counts is not None:
                for j, pair in enumerate(counts):
                    totals[j] = merge_sorted_counts(totals[j], pair)
            journal.finished("vocabulary", done + k + 1, {"rows": rows}, durable=lambda: _save_counts(tmp, totals))
            return seen

        tasks = [("vocab", units[i], plan.chunk_bytes, limits[i]) for i in todo[done:]]
        pool.run("vocabulary", tasks, counted_values, expected(todo[done:]), log)
        journal.finished("vocabulary", len(todo), {"rows": rows})  # written with the allocation below
        distinct = [len(values) for values, _ in totals]
        vocabulary = [values[counts >= plan.min_frequency] for values, counts in totals]
        del totals
        if max(len(v) for v in vocabulary) + 1 > np.iinfo(np.int32).max:
            raise RecforgeError("a vocabulary has more than 2^31 - 1 values; use max_ind_range")
    else:
        vocabulary, distinct = None, journal.get("distinct")

    counts = _counted(rows)
    file_rows = [sum(r for u, r in zip(units, counts) if u.file == f) for f in range(len(plan.files))]
    split_rows = _split_rows(plan.kind, file_rows)
    if sum(file_rows) == 0:
        raise DataError(plan.files[0], None, None, "no rows")
    ranges, start = {}, 0
    for split in split_rows:  # in file order: train, test, valid
        ranges[split] = (start, start + split_rows[split])
        start += split_rows[split]
    if not journal.done("allocate"):
        for split in SPLITS:
            if split_rows[split]:
                allocate(tmp, split, split_rows[split], len(DENSE), len(SPARSE))  # preallocated files
        # The encoders are saved in the folder first: the write pass's workers read them from there,
        # and they stay for encoding raw rows later.
        if vocabulary is not None:
            sparse = [Categorical(name, "vocabulary", "uint32", plan.min_frequency) for name in SPARSE]
            for encoder, keys in zip(sparse, vocabulary):
                encoder.keys = keys.astype(np.uint32)
            del vocabulary
        else:
            sparse = [Categorical(name, "modulo", "uint32", buckets=plan.max_ind_range) for name in SPARSE]
        Encoders([Numeric(name, "log1p") for name in DENSE], sparse).save(tmp)
        del sparse
        journal.finished("allocate", 1, {"rows": rows, "distinct": distinct}, final=True)
        (tmp / COUNTS).unlink(missing_ok=True)
    layout = {split: array_layout(tmp, split) for split in SPLITS if split_rows[split]}
    cardinalities = [encoder.cardinality for encoder in _encoders_in(str(tmp)).sparse]
    paths = [path for split in layout.values() for path, _, _ in split.values()]

    def durable() -> None:
        for path in paths:
            sync_file(path)

    done = journal.done("write")

    def written(k, result):
        check(done + k, result)
        journal.finished("write", done + k + 1, durable=durable)
        return result[1]

    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    writes = [
        ("write", u, plan.chunk_bytes, (starts[i], counts[i], ranges, layout, str(tmp))) for i, u in enumerate(units)
    ]
    pool.run("write", writes[done:], written, sum(counts[done:]), log)
    _encoders_in.cache_clear()
    journal.finished("write", len(units), durable=durable, final=True)  # durable before meta.json marks it complete

    info: dict[str, Any] = {
        "source": plan.kind,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "rows": r} for p, r in zip(plan.files, file_rows)],
        "split": (
            f"{KAGGLE_DAYS} days of ceil(rows/{KAGGLE_DAYS}) rows; days 0-5 train"
            if plan.kind == "criteo-kaggle"
            else f"days 0-{len(plan.files) - 2} train"
        )
        + "; last day: first half test, second half valid",
        "dense": "log(1 + max(x, 0)) as float32; missing -> 0",
        "min_frequency": plan.min_frequency if plan.max_ind_range is None else None,
        "max_ind_range": plan.max_ind_range,
        "sparse": (
            "hex value % max_ind_range; missing -> 0"
            if plan.max_ind_range is not None
            else "ids 1..V: train values seen >= min_frequency times, in value order; 0: rarer, unseen or missing"
        ),
    }
    if distinct is not None:
        info["train_distinct_values"] = distinct
    return CTRMeta(DENSE, SPARSE, cardinalities, {s: n for s, n in split_rows.items() if n}, info)


COUNTS = "vocabulary-counts.npz"  # the vocabulary pass's merged counts so far, for a resumed pass


def _counted(rows: list[int | None]) -> list[int]:
    """`rows` of units whose rows have all been counted."""
    counts = [n for n in rows if n is not None]
    assert len(counts) == len(rows), "a unit's rows were never counted"
    return counts


def _save_counts(folder: Path, totals: list[tuple[np.ndarray, np.ndarray]]) -> None:
    arrays: dict[str, Any] = {
        f"{kind}_{j}": pair[k] for j, pair in enumerate(totals) for k, kind in enumerate(("values", "counts"))
    }
    atomic_write(folder / COUNTS, lambda f: np.savez(f, **arrays), mode="wb")


def _load_counts(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(folder / COUNTS) as saved:
        return [(saved[f"values_{j}"], saved[f"counts_{j}"]) for j in range(len(SPARSE))]


@functools.lru_cache(maxsize=1)
def _encoders_in(folder: str) -> Encoders:
    """The encoders saved in `folder`, loaded (vocabularies memory-mapped) once per process."""
    return load_encoders(folder)


def _task(op: str, unit: _Unit, chunk_bytes: int, arg, report: Callable[[int], None]) -> tuple:
    """One task. Returns ("ok", rows, payload) or ("bad", line index in the unit or None, field, message).
    `report(rows)` is told the rows read as they are (progress): a queue's `put` in a worker process,
    `Progress.update` when the tasks run in the main process."""
    try:
        if op == "count" or (op == "vocab" and arg == 0):
            return "ok", _count_lines(unit, report), None
        if op == "vocab":
            return _vocabulary_task(unit, chunk_bytes, arg, report)
        first_row, rows, ranges, layout, folder = arg
        return _write_task(unit, chunk_bytes, first_row, rows, ranges, layout, folder, report)
    except _BadLine as bad:
        return ("bad", *bad.args)


def _vocabulary_task(unit: _Unit, chunk_bytes: int, limit: int | None, report: Callable[[int], None]) -> tuple:
    """Value counts (sorted values, counts) per field over the first `limit` rows (None: all)."""
    totals = [(np.zeros(0, np.uint32), np.zeros(0, np.int64))] * len(SPARSE)
    seen = 0
    for data in _blocks(unit, chunk_bytes):
        chunk = _parse_located(data, seen, dense=False)
        n = chunk.rows if limit is None else min(chunk.rows, limit - seen)
        for j in range(len(SPARSE)):
            values = chunk.values[j, :n][chunk.present[j, :n]]
            totals[j] = merge_sorted_counts(totals[j], np.unique(values, return_counts=True))
        seen += chunk.rows
        report(chunk.rows)
        if limit is not None and seen >= limit:
            break
    return "ok", seen, totals


def _write_task(
    unit: _Unit,
    chunk_bytes: int,
    first_row: int,
    rows: int,
    ranges: dict,
    layout: dict,
    folder: str,
    report: Callable[[int], None],
) -> tuple:
    """Parse, transform and write the unit's rows at their row offsets in each split's arrays."""
    seen = 0
    for data in _blocks(unit, chunk_bytes):
        chunk = _parse_located(data, seen)
        assert chunk.dense is not None  # parsed with dense=True
        encoders = _encoders_in(folder)
        ids = np.empty((chunk.rows, len(SPARSE)), np.int32)
        for j, encoder in enumerate(encoders.sparse):
            ids[:, j] = encoder.ids(chunk.values[j], chunk.present[j])
        begin = first_row + seen
        for split, (lo, hi) in ranges.items():
            a, b = max(begin, lo), min(begin + chunk.rows, hi)
            if a < b:
                local = slice(a - begin, b - begin)
                for name, array in (("label", chunk.label), ("dense", chunk.dense), ("sparse", ids)):
                    path, offset, row_bytes = layout[split][name]
                    write_rows_at(path, offset + (a - lo) * row_bytes, array[local])
        seen += chunk.rows
        report(chunk.rows)
    if seen != rows:
        raise _BadLine(
            None, None, f"has {seen:,} lines now, {rows:,} when counted: did it change while being prepared?"
        )
    return "ok", seen, None

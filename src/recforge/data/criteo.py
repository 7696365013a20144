"""Criteo click logs -> the prepared click-log format (`ctr_format`), out of core.

Inputs, tab-separated without a header, plain or `.gz`: `label I1..I13 C1..C26`, where the label
is 0/1, I* are integers (empty = missing, may be negative) and C* are 8 hex digits (a 32-bit
value; empty = missing).

- criteo-kaggle: one `train.txt` (45,840,617 rows). Its rows are cut into 7 consecutive "days" of
  ceil(rows / 7) rows; days 0-5 are train, day 6's first half (the larger half when odd) is
  `test`, its second half `valid` (as Facebook's DLRM reference splits it).
- criteo-terabyte: `day_0 .. day_23`. Every day but the last is train; the last day's first half
  is `test`, its second half `valid`. A contiguous prefix day_0..day_K (K >= 1) is accepted, so a
  few downloaded days make a small set with the same rules.

Transforms: dense `log(1 + max(x, 0))` as float32, missing -> 0. Categorical either through a
vocabulary of the values seen in TRAIN rows at least `min_frequency` times (ids 1..V in order of
the value, 0 for out-of-vocabulary or missing; cardinality V + 1) or, with `max_ind_range`, as
`value % max_ind_range` with missing -> 0 (MLPerf's hashing; no vocabulary pass).

Why it is shaped this way:
- Memory must not grow with the input (the Terabyte set is ~1 TB of text), so files are read in
  chunks of about `chunk_rows` rows and outputs are preallocated `.npy` files that each chunk
  is written into at its row offset. Vocabulary counts are merged per chunk (sorted uniques and
  counts), so they grow with the number of distinct values, never with rows.
- Plain files are split into newline-aligned byte ranges, so any number of processes can read
  one file. gzip cannot be split by bytes; a `.gz` file is one task, so several `.gz` days
  still run in parallel but a single `train.txt.gz` uses one process.
- Passes: `count` (newlines only; needed first when the split boundary depends on the total, as
  in Kaggle, or when there is no vocabulary pass), `vocabulary` (train rows only) and `write`.
- Parsing is pyarrow's CSV reader on 1 MiB blocks (larger blocks parse several times slower);
  hex is decoded with SWAR arithmetic on 8-byte words; vocabulary ids are found by hashing
  (small vocabularies) or a bucket directory over the sorted values (large ones), both several
  times faster than `searchsorted`. Python loops over rows happen only after a chunk has
  failed, to name the first bad line and field.
- Workers write their rows with plain file writes at byte offsets of the preallocated `.npy`
  files (disjoint ranges), so written pages never count in a worker's resident memory.
- Output goes to a hidden temp folder beside `out`; meta.json is written last and the folder is
  renamed into place, so an interruption never leaves something that looks complete.
"""

from __future__ import annotations

import functools
import gzip
import multiprocessing as mp
import os
import queue
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from recforge.core.errors import DataError, RecforgeError
from recforge.core.files import naming
from recforge.core.progress import Progress
from recforge.data.ctr_format import SPLITS, CTRMeta, allocate, finish, new_folder
from recforge.data.encoders import Categorical, Encoders, Numeric, hex_words, load_encoders, merge_sorted_counts
from recforge.runtime.memory import keep_freed_memory

KINDS = ("criteo-kaggle", "criteo-terabyte")
DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
FIELDS = ["label", *DENSE, *SPARSE]
KAGGLE_DAYS = 7
TERABYTE_DAYS = 24
MAX_CHUNK_BYTES = 1 << 30  # a chunk is one bytes object; pyarrow's binary offsets are int32
_PIECE = 1 << 26  # reads for counting newlines

_ALLOWED = b"0123456789abcdefABCDEF-\t\n"  # every byte a valid line can hold, but a CR before LF
_READ = pcsv.ReadOptions(column_names=FIELDS, use_threads=False, block_size=1 << 20)
_PARSE = pcsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False)
_CONVERT = pcsv.ConvertOptions(
    column_types={"label": pa.int64(), **{n: pa.int64() for n in DENSE}, **{n: pa.binary() for n in SPARSE}},
    null_values=[""],
    strings_can_be_null=True,
    quoted_strings_can_be_null=False,
)
LOG1P = Numeric("dense", "log1p")  # every dense field's transform
_INT = re.compile(rb"-?[0-9]+\Z")  # what pyarrow's int64 parser accepts, given the allowed bytes
_HEX = re.compile(rb"[0-9a-fA-F]{8}\Z")


# ----------------------------------------------------------------------------- the public API


def prepare_criteo(
    kind: str,
    data_dir: Path,
    out: Path,
    min_frequency: int = 1,
    max_ind_range: int | None = None,
    workers: int = 2,
    chunk_rows: int = 1 << 20,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> CTRMeta:
    """Prepare Criteo Kaggle or Terabyte click logs from `data_dir` into the folder `out`.

    `min_frequency`: train values seen fewer times share the out-of-vocabulary id 0 (rare values
    would otherwise get embeddings that are trained on a handful of rows). `max_ind_range`:
    hash instead (`value % max_ind_range`), which bounds the embedding tables and skips the
    vocabulary pass. `workers` processes read chunks of about `chunk_rows` rows in every pass.
    An `out` that already holds a meta.json is replaced only with `overwrite`.
    """
    started = time.perf_counter()
    if kind not in KINDS:
        raise RecforgeError(f"unknown Criteo kind {kind!r}; expected one of {', '.join(KINDS)}")
    _check_int("min_frequency", min_frequency, 1)
    _check_int("workers", workers, 1)
    _check_int("chunk_rows", chunk_rows, 1)
    if max_ind_range is not None:
        _check_int("max_ind_range", max_ind_range, 1, 1 << 31)  # ids must fit int32
        if min_frequency != 1:
            raise RecforgeError(
                "min_frequency applies to a vocabulary; max_ind_range hashes without one (use one of them)"
            )
    data_dir, out = Path(data_dir).expanduser(), Path(out).expanduser()
    files = criteo_files(kind, data_dir)

    line_bytes = _mean_line_bytes(files[0])
    chunk_bytes = int(min(MAX_CHUNK_BYTES, max(1, chunk_rows * line_bytes)))
    units = _units(files, chunk_bytes)
    processes = min(workers, len(units))
    log(
        f"{kind}: {', '.join(p.name for p in files)} in {data_dir} -> {out}; "
        f"{len(units)} chunk(s) of ~{chunk_rows:,} rows, {processes} process(es)"
    )
    if processes < workers and any(p.suffix == ".gz" for p in files):
        log(
            "  .gz files are read by one process each (gzip cannot be split); "
            "decompress them to use every worker on one file"
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out.parent.glob(f".{out.name}.partial-*")):
        log(f"  note: {stale} is left from an interrupted run; remove it to free its disk space")
    pool = None
    try:
        with new_folder(out, overwrite) as tmp:
            pool = _Workers(processes)
            meta = _prepare(kind, files, units, chunk_bytes, line_bytes, tmp, pool, min_frequency, max_ind_range, log)
            pool.close()
            meta.info["seconds"] = round(time.perf_counter() - started, 1)
            finish(tmp, meta)
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        _encoders_in.cache_clear()
    log(
        f"{kind}: "
        + ", ".join(f"{s} {n:,}" for s, n in meta.rows.items())
        + f" rows; {sum(meta.cardinalities):,} embedding rows over {len(SPARSE)} fields; "
        f"{meta.info['seconds']:.1f} s -> {out}"
    )
    return meta


def criteo_files(kind: str, data_dir: Path) -> list[Path]:
    """The input files in row order (plain preferred when both `name` and `name.gz` exist)."""
    data_dir = Path(data_dir).expanduser()
    if kind == "criteo-kaggle":
        path = _plain_or_gz(data_dir, "train.txt")
        if path is None:
            raise RecforgeError(
                f"{data_dir / 'train.txt'}: file not found (nor train.txt.gz); unpack Criteo's "
                "Kaggle Display Advertising Challenge dac.tar.gz there"
            )
        return [path]
    days = [_plain_or_gz(data_dir, f"day_{k}") for k in range(TERABYTE_DAYS)]
    present = [k for k, p in enumerate(days) if p is not None]
    if len(present) < 2 or present != list(range(len(present))):
        missing = [k for k in range(max(present, default=1) + 1) if days[k] is None]
        raise RecforgeError(
            f"{data_dir}: Criteo Terabyte needs day_0, day_1, ... (plain or .gz) without gaps, "
            f"at least two days; missing day_{missing[0]}"
        )
    return [days[k] for k in present]


# ----------------------------------------------------------------------------- the passes


def _prepare(kind, files, units, chunk_bytes, line_bytes, tmp, pool, min_frequency, max_ind_range, log) -> CTRMeta:
    rows: list[int | None] = [None] * len(units)
    estimate = sum(_estimated_rows(u, line_bytes) for u in units)

    def check(unit_index: int, result: tuple) -> tuple:
        if result[0] == "bad":
            _, line, field, message = result
            unit = units[unit_index]
            first = sum(rows[i] for i in range(unit_index) if units[i].file == unit.file) if line is not None else 0
            raise DataError(unit.path, None if line is None else first + line + 1, field, message)
        return result

    if kind == "criteo-kaggle" or max_ind_range is not None:  # rows needed before the vocabulary pass

        def counted(i, result):
            rows[i] = check(i, result)[1]
            return rows[i]

        pool.run("count", [("count", u, chunk_bytes, None) for u in units], counted, estimate, log)

    vocabulary, distinct = None, None
    if max_ind_range is None:
        totals: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.uint32), np.zeros(0, np.int64))] * len(SPARSE)
        if kind == "criteo-kaggle":
            train_end = _split_rows(kind, [sum(rows)])["train"]
            first_rows = np.concatenate([[0], np.cumsum(rows)]).tolist()
            limits = [min(max(train_end - first_rows[i], 0), rows[i]) for i in range(len(units))]
            limits = [None if limit == rows[i] else limit for i, limit in enumerate(limits)]
        else:  # every day but the last is train; the last day is only counted
            limits = [0 if u.file == len(files) - 1 else None for u in units]
        todo = [i for i, limit in enumerate(limits) if not (limit == 0 and rows[i] is not None)]

        def counted_values(k, result):
            i = todo[k]
            _, seen, counts = check(i, result)
            if rows[i] is None:
                rows[i] = seen
            if counts is not None:
                for j, pair in enumerate(counts):
                    totals[j] = merge_sorted_counts(totals[j], pair)
            return seen

        total = sum(rows[i] if rows[i] is not None else _estimated_rows(units[i], line_bytes) for i in todo)
        pool.run("vocabulary", [("vocab", units[i], chunk_bytes, limits[i]) for i in todo], counted_values, total, log)
        distinct = [len(values) for values, _ in totals]
        vocabulary = [values[counts >= min_frequency] for values, counts in totals]
        del totals
        if max(len(v) for v in vocabulary) + 1 > np.iinfo(np.int32).max:
            raise RecforgeError("a vocabulary has more than 2^31 - 1 values; use max_ind_range")

    file_rows = [sum(r for u, r in zip(units, rows) if u.file == f) for f in range(len(files))]
    split_rows = _split_rows(kind, file_rows)
    if sum(file_rows) == 0:
        raise DataError(files[0], None, None, "no rows")
    ranges, start = {}, 0
    for split in split_rows:  # in file order: train, test, valid
        ranges[split] = (start, start + split_rows[split])
        start += split_rows[split]
    layout = {}
    for split in SPLITS:
        if split_rows[split]:
            arrays = allocate(tmp, split, split_rows[split], len(DENSE), len(SPARSE))
            layout[split] = {name: (str(a.filename), int(a.offset), int(a.strides[0])) for name, a in arrays.items()}
            del arrays
    # The encoders are saved in the folder first: the write pass's workers read them from there,
    # and they stay for encoding raw rows later.
    if vocabulary is not None:
        sparse = [Categorical(name, "vocabulary", "uint32", min_frequency) for name in SPARSE]
        for encoder, keys in zip(sparse, vocabulary):
            encoder.keys = keys.astype(np.uint32)
        del vocabulary
    else:
        sparse = [Categorical(name, "modulo", "uint32", buckets=max_ind_range) for name in SPARSE]
    Encoders([Numeric(name, "log1p") for name in DENSE], sparse).save(tmp)
    cardinalities = [encoder.cardinality for encoder in sparse]
    del sparse

    starts = np.concatenate([[0], np.cumsum(rows)]).tolist()
    tasks = [("write", u, chunk_bytes, (starts[i], rows[i], ranges, layout, str(tmp))) for i, u in enumerate(units)]
    pool.run("write", tasks, lambda i, result: check(i, result)[1], sum(rows), log)
    _encoders_in.cache_clear()
    for split in layout:  # durable before meta.json marks the folder complete
        for path, _, _ in layout[split].values():
            _fsync(path)

    info = {
        "source": kind,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "rows": r} for p, r in zip(files, file_rows)],
        "split": (
            f"{KAGGLE_DAYS} days of ceil(rows/{KAGGLE_DAYS}) rows; days 0-5 train"
            if kind == "criteo-kaggle"
            else f"days 0-{len(files) - 2} train"
        )
        + "; last day: first half test, second half valid",
        "dense": "log(1 + max(x, 0)) as float32; missing -> 0",
        "min_frequency": min_frequency if max_ind_range is None else None,
        "max_ind_range": max_ind_range,
        "sparse": (
            "hex value % max_ind_range; missing -> 0"
            if max_ind_range is not None
            else "ids 1..V: train values seen >= min_frequency times, in value order; 0: rarer, unseen or missing"
        ),
    }
    if distinct is not None:
        info["train_distinct_values"] = distinct
    return CTRMeta(DENSE, SPARSE, cardinalities, {s: n for s, n in split_rows.items() if n}, info)


def _split_rows(kind: str, file_rows: list[int]) -> dict[str, int]:
    """Rows per split, as Facebook's DLRM reference splits: Kaggle's rows are cut into 7 days
    (`divmod`: the first `rows % 7` days one row longer), Terabyte's days are its files; the
    last day is held out, its first half `test` and its second half `valid` (`np.array_split`)."""
    total = sum(file_rows)
    if kind == "criteo-kaggle":
        day, longer = divmod(total, KAGGLE_DAYS)
        train = (KAGGLE_DAYS - 1) * day + min(longer, KAGGLE_DAYS - 1)
    else:
        train = total - file_rows[-1]
    held_out = total - train
    test = (held_out + 1) // 2
    return {"train": train, "test": test, "valid": held_out - test}


# ----------------------------------------------------------------------------- input units


@dataclass(frozen=True)
class _Unit:
    """What one task reads: whole lines in bytes [start, end) of a plain file, or a whole .gz file."""

    file: int  # index in the file list
    path: str
    start: int = 0
    end: int | None = None  # None: the whole file, streamed


def _units(files: list[Path], chunk_bytes: int) -> list[_Unit]:
    units = []
    for index, path in enumerate(files):
        if path.suffix == ".gz":
            units.append(_Unit(index, str(path)))
            continue
        size = path.stat().st_size
        cuts = [0]
        with open(path, "rb") as f:
            while cuts[-1] + chunk_bytes < size:
                cut = _next_line_start(f, cuts[-1] + chunk_bytes)
                if cut >= size:
                    break
                cuts.append(cut)
        cuts.append(size)
        units += [_Unit(index, str(path), a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    return units


def _next_line_start(f, position: int) -> int:
    """The offset just after the first newline at or after `position - 1`."""
    f.seek(position - 1)
    while True:
        piece = f.read(1 << 16)
        if not piece:
            return f.tell()
        found = piece.find(b"\n")
        if found >= 0:
            return f.tell() - len(piece) + found + 1


def _plain_or_gz(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _mean_line_bytes(path: Path) -> float:
    """Mean line length over the first MiB: turns `chunk_rows` into a byte size."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            head = f.read(1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(path, None, None, f"cannot read: {e}") from None
    return len(head) / max(1, head.count(b"\n")) or 1.0


def _estimated_rows(unit: _Unit, line_bytes: float) -> int:
    """For progress only: .gz sizes are scaled by a typical compression ratio of 4."""
    size = (unit.end - unit.start) if unit.end is not None else 4 * os.path.getsize(unit.path)
    return int(size / line_bytes)


# ----------------------------------------------------------------------------- worker side


def _no_report(rows: int) -> None:
    pass


_report: Callable[[int], None] = _no_report  # progress: queue.put in workers, Progress.update in-process


@functools.lru_cache(maxsize=1)
def _encoders_in(folder: str) -> Encoders:
    """The encoders saved in `folder`, loaded (vocabularies memory-mapped) once per process."""
    return load_encoders(folder)


def _init_worker(progress_queue) -> None:
    global _report
    _report = progress_queue.put
    keep_freed_memory()  # each chunk allocates the same large temporaries; do not fault them in again


def _task(op: str, unit: _Unit, chunk_bytes: int, arg) -> tuple:
    """One task. Returns ("ok", rows, payload) or ("bad", line index in the unit or None, field, message)."""
    try:
        if op == "count" or (op == "vocab" and arg == 0):
            return "ok", _count_lines(unit), None
        if op == "vocab":
            return _vocabulary_task(unit, chunk_bytes, arg)
        return _write_task(unit, chunk_bytes, *arg)
    except _BadLine as bad:
        return ("bad", *bad.args)


class _BadLine(Exception):
    """(line index in the unit or None, field or None, message)."""


def _vocabulary_task(unit: _Unit, chunk_bytes: int, limit: int | None) -> tuple:
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
        _report(chunk.rows)
        if limit is not None and seen >= limit:
            break
    return "ok", seen, totals


def _write_task(
    unit: _Unit, chunk_bytes: int, first_row: int, rows: int, ranges: dict, layout: dict, folder: str
) -> tuple:
    """Parse, transform and write the unit's rows at their row offsets in each split's arrays."""
    seen = 0
    for data in _blocks(unit, chunk_bytes):
        chunk = _parse_located(data, seen)
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
                    _write_at(path, offset + (a - lo) * row_bytes, array[local])
        seen += chunk.rows
        _report(chunk.rows)
    if seen != rows:
        raise _BadLine(
            None, None, f"has {seen:,} lines now, {rows:,} when counted: did it change while being prepared?"
        )
    return "ok", seen, None


def _write_at(path: str, offset: int, array: np.ndarray) -> None:
    """Workers write disjoint byte ranges of the preallocated .npy files with plain file writes:
    unlike a memmap, this never counts the written pages in the worker's resident memory. A
    failure comes back to the main process as an OSError naming the file, printed as one line."""
    with naming(path), open(path, "r+b") as f:
        f.seek(offset)
        f.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def _blocks(unit: _Unit, chunk_bytes: int) -> Iterator[bytes | bytearray]:
    """Whole lines of the unit, about `chunk_bytes` at a time; at most one block alive at once."""
    with _reading():
        if unit.end is not None:
            with open(unit.path, "rb") as f:
                f.seek(unit.start)
                yield f.read(unit.end - unit.start)
            return
        carry = b""
        with gzip.open(unit.path, "rb") as f:
            while piece := f.read(chunk_bytes):
                cut = piece.rfind(b"\n") + 1
                if not cut:
                    carry += piece
                    continue
                block = bytearray(carry)
                block += memoryview(piece)[:cut]
                carry = piece[cut:]
                del piece
                yield block
                del block
        if carry:
            yield carry


def _count_lines(unit: _Unit) -> int:
    """Lines in the unit (a last line without a newline counts)."""
    lines, last = 0, b"\n"
    with _reading():
        if unit.end is not None:
            with open(unit.path, "rb") as f:
                f.seek(unit.start)
                left = unit.end - unit.start
                while left > 0 and (piece := f.read(min(_PIECE, left))):
                    lines += piece.count(b"\n")
                    left -= len(piece)
                    last = piece[-1:]
            _report(lines + (last != b"\n"))
        else:
            with gzip.open(unit.path, "rb") as f:
                while piece := f.read(_PIECE):
                    lines += piece.count(b"\n")
                    last = piece[-1:]
                    _report(piece.count(b"\n"))
    return lines + (last != b"\n")


@contextmanager
def _reading():
    """An unreadable input (a truncated or corrupt .gz) becomes a DataError naming the file."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as e:
        raise _BadLine(None, None, f"cannot read: {e}") from None


# ----------------------------------------------------------------------------- parsing


@dataclass
class _Chunk:
    rows: int
    label: np.ndarray  # uint8 [rows]
    dense: np.ndarray | None  # float32 [rows, 13]; None in the vocabulary pass
    values: np.ndarray  # uint32 [26, rows], 0 where missing
    present: np.ndarray  # bool [26, rows]


def _parse_located(data: bytes, lines_before: int, dense: bool = True) -> _Chunk:
    """`_parse`, with a failure's line index made relative to the unit."""
    try:
        return _parse(data, dense)
    except _BadLine as bad:
        line, field, message = bad.args
        raise _BadLine(None if line is None else lines_before + line, field, message) from None


def _parse(data: bytes, dense: bool = True) -> _Chunk:
    """Whole lines -> arrays (dense features transformed only if `dense`). Any doubt (a byte no valid line
    holds, a pyarrow error, a row count
    that differs from the newline count, a bad label or hex value) sends the block to `_locate`."""
    chunk = None
    others = data.translate(None, _ALLOWED)
    if not others.strip(b"\r"):
        try:
            table = pcsv.read_csv(
                pa.py_buffer(data), read_options=_READ, parse_options=_PARSE, convert_options=_CONVERT
            )
        except pa.ArrowInvalid:
            table = None
        # pyarrow also ends lines at a lone CR; without CRs its rows are the LF-terminated lines
        rows = data.count(b"\n") + (bool(data) and not data.endswith(b"\n")) if others else None
        if table is not None and (rows is None or table.num_rows == rows):
            chunk = _columns(table, table.num_rows, dense)
    if chunk is None:
        raise _BadLine(*_locate(data))
    return chunk


def _columns(table: pa.Table, rows: int, transform_dense: bool) -> _Chunk | None:
    label_column = table.column("label")
    if label_column.null_count:
        return None
    label = label_column.to_numpy()
    if rows and (label.min() < 0 or label.max() > 1):
        return None
    dense = np.empty((rows, len(DENSE)), np.float32) if transform_dense else None
    for j, name in enumerate(DENSE if transform_dense else ()):
        dense[:, j] = LOG1P.apply(table.column(name).fill_null(0).to_numpy())  # float64, then rounded once to float32
    values = np.zeros((len(SPARSE), rows), np.uint32)
    present = np.zeros((len(SPARSE), rows), bool)
    for j, name in enumerate(SPARSE):
        column = table.column(name)
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        _, offset_buffer, data_buffer = array.buffers()
        offsets = np.frombuffer(offset_buffer, np.int32, count=rows + 1, offset=4 * array.offset)
        lengths = np.diff(offsets)
        has = lengths == 8
        if not (has | (lengths == 0)).all():
            return None
        size = int(offsets[-1] - offsets[0])
        if not size:
            continue
        raw = np.frombuffer(data_buffer, np.uint8, count=size, offset=int(offsets[0]))
        if (raw == ord("-")).any():  # after the byte check, '-' is the only non-hex byte a field can hold
            return None
        decoded = hex_words(raw.view("<u8").astype(np.uint64))
        if size == 8 * rows:
            values[j] = decoded
        else:
            values[j, has] = decoded
        present[j] = has
    return _Chunk(rows, label.astype(np.uint8), dense, values, present)


def _locate(data: bytes) -> tuple[int | None, str | None, str]:
    """Error path only (the fast path has failed): the first bad line of a block, field by field,
    in Python. Accepts exactly what the fast path accepts."""
    nul = data.find(b"\0")
    if nul >= 0:  # a binary file: say so, rather than describe the bytes of its first line
        return data.count(b"\n", 0, nul), None, "binary data (a NUL byte), not text"
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return i, "label", f"empty line; expected {len(FIELDS)} tab-separated fields (label, I1..I13, C1..C26)"
        fields = line.split(b"\t")
        if b"\r" in line:
            k = next(k for k, value in enumerate(fields) if b"\r" in value)
            return i, FIELDS[min(k, len(FIELDS) - 1)], "holds a carriage return (CR); lines must end with LF or CR LF"
        if len(fields) != len(FIELDS):
            field = FIELDS[len(fields)] if len(fields) < len(FIELDS) else FIELDS[-1]
            where = "missing" if len(fields) < len(FIELDS) else "followed by more fields"
            return (
                i,
                field,
                (
                    f"{where}: the line has {len(fields)} tab-separated fields, expected {len(FIELDS)} "
                    "(label, I1..I13, C1..C26)"
                ),
            )
        for name, value in zip(FIELDS, fields):
            problem = _check_value(name, value)
            if problem:
                return i, name, problem
    return None, None, "cannot be parsed, but no bad line was found"


def _check_value(name: str, value: bytes) -> str | None:
    text = repr(value[:40].decode("utf-8", "replace"))
    if name == "label":
        if not value:
            return "missing (expected 0 or 1)"
        if not _INT.match(value) or int(value) not in (0, 1):
            return f"expected 0 or 1, found {text}"
    elif name.startswith("I"):
        if value and not _INT.match(value):
            return f"not an integer: {text}"
        if value and not -(1 << 63) <= int(value) < (1 << 63):
            return f"integer out of range for int64: {text}"
    elif value and not _HEX.match(value):
        return f"not 8 hex digits: {text}"
    return None


# ----------------------------------------------------------------------------- counts


# ----------------------------------------------------------------------------- processes


class _Workers:
    """Runs tasks in `processes` spawned workers (in this process when 1), at most two per worker
    in flight, and hands results back in task order: merges follow file order, line numbers can be
    completed from earlier chunks, and finished results never pile up in memory."""

    def __init__(self, processes: int):
        self.processes = processes
        self.pool = self.queue = None
        if processes > 1:
            context = mp.get_context("spawn")  # no forked pyarrow thread pools
            self.queue = context.Queue()
            self.pool = context.Pool(processes, initializer=_init_worker, initargs=(self.queue,))
            # Pool silently replaces a worker that dies (killed for memory, say) and its task never
            # finishes; the original processes are kept to notice that instead of waiting forever.
            self.started = list(getattr(self.pool, "_pool", []))

    def run(self, name: str, tasks: list[tuple], on_result: Callable[[int, tuple], int], total: int, log) -> None:
        global _report
        progress = Progress(total, name)
        started, rows = time.perf_counter(), 0
        try:
            if self.pool is None:
                _report = progress.update
                for i, task in enumerate(tasks):
                    rows += on_result(i, _task(*task))
            else:
                window: deque = deque()
                for i, task in enumerate(tasks):
                    window.append((i, self.pool.apply_async(_task, task)))
                    if len(window) >= 2 * self.processes:
                        rows += self._next(window, on_result, progress)
                while window:
                    rows += self._next(window, on_result, progress)
        finally:
            _report = _no_report
            progress.close()
        seconds = time.perf_counter() - started
        log(f"  {name}: {rows:,} rows in {seconds:.1f} s, {rows / max(seconds, 1e-9):,.0f} rows/s")

    def _next(self, window: deque, on_result, progress) -> int:
        i, pending = window.popleft()
        while not pending.ready():
            pending.wait(0.2)
            self._drain(progress)
            dead = [p.exitcode for p in self.started if p.exitcode is not None]
            if dead and not pending.ready():
                raise RecforgeError(
                    f"a preparation worker exited unexpectedly (exit code {dead[0]}; out of memory? "
                    "try fewer workers or a smaller chunk_rows)"
                )
        self._drain(progress)
        return on_result(i, pending.get())

    def _drain(self, progress: Progress) -> None:
        try:
            while True:
                progress.update(self.queue.get_nowait())
        except queue.Empty:
            pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()

    def terminate(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# ----------------------------------------------------------------------------- output folder


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise RecforgeError(f"{name} must be an integer {bound}, got {value!r}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

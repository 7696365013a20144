"""Click-log encoders: raw column values -> the model's inputs, the same way at preparation and later.

Preparation fits each encoder on the train rows (a vocabulary counts values, `standardize` its
moments), saves them all in the prepared folder (`encoders.json`, and a file per vocabulary in
`encoders/`) and
applies them to every split; `load_encoders(folder).encode(table)` applies the same encoders to
new raw rows (a pyarrow table with the log's column names), vectorized, as serving needs.

The kinds of encoder are tables, each entry saying what it computes and whether it is fitted on
the train rows (a preparation's fit pass reads those columns); a feature spec, a saved
encoders.json and the messages take their names from there:
- `NUMERIC_KINDS` (float64 in, missing as NaN -> 0 first; written as float32): log1p, standardize,
  none, each a transform of a [rows, columns] matrix, so a batch of columns of one kind is one
  numpy expression;
- `CATEGORICAL_KINDS` (an id per value, int32; 0 is the out-of-vocabulary and missing id):
  vocabulary (text values, pyarrow strings, or Criteo's 32-bit hex values, uint32), hash, modulo.
Multi-hot: delimited lists, each value encoded by a categorical encoder, padded with -1 to
`max_length` (the longest train list unless given). Crosses: the FNV hash of the joined values of
several columns.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recforge.core.errors import RecforgeError
from recforge.core.files import write_array, write_json

FORMAT = "recforge-encoders-1"
FNV_OFFSET, FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
CROSS_SEPARATOR = "\x1f"  # between a cross's column values (a byte no text value holds)


# ----------------------------------------------------------------------------- numeric


@dataclass(frozen=True)
class NumericKind:
    about: str
    transform: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x, means, stds) -> encoded
    fitted: bool = False  # its train rows' mean and std are measured


NUMERIC_KINDS = {
    "log1p": NumericKind("log(1 + max(x, 0))", lambda x, mean, std: np.log1p(np.maximum(x, 0.0))),
    "standardize": NumericKind("(x - mean) / std of the train rows", lambda x, mean, std: (x - mean) / std, True),
    "none": NumericKind("x", lambda x, mean, std: x),
}


@dataclass(frozen=True)
class CategoricalKind:
    about: str
    fitted: bool = False  # its values are counted on the train rows


CATEGORICAL_KINDS = {
    "vocabulary": CategoricalKind("values seen in train rows at least `min_frequency` times, sorted, get 1..V", True),
    "hash": CategoricalKind("FNV-1a 64 of the value's UTF-8 bytes -> 1 + h % (buckets - 1)"),
    # MLPerf DLRM's hashing of Criteo: value 0 and a missing value share id 0, as in the reference.
    "modulo": CategoricalKind("a uint32 value % buckets"),
}


def _known(kind: str, kinds: dict, name: str) -> None:
    if kind not in kinds:
        raise RecforgeError(f"encoder {name!r}: kind {kind!r} is none of {', '.join(kinds)}")


@dataclass
class Numeric:
    """One numeric column, encoded as its `kind` (`NUMERIC_KINDS`) says."""

    name: str
    kind: str = "log1p"
    moments: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # count, sum, sum of squares (fit)
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        _known(self.kind, NUMERIC_KINDS, self.name)

    def fit(self, x: np.ndarray) -> None:
        if NUMERIC_KINDS[self.kind].fitted:
            x = np.nan_to_num(x, nan=0.0)
            self.moments = [self.moments[0] + len(x), self.moments[1] + x.sum(), self.moments[2] + np.square(x).sum()]

    def merge(self, other: Numeric) -> None:
        """Add what `other` (the same column, fitted on other rows) has seen."""
        self.moments = [a + b for a, b in zip(self.moments, other.moments)]

    def finish(self) -> None:
        if NUMERIC_KINDS[self.kind].fitted:
            count, total, squares = self.moments
            self.mean = total / max(count, 1)
            self.std = max(np.sqrt(max(squares / max(count, 1) - self.mean * self.mean, 0.0)), 1e-12)

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
        return NUMERIC_KINDS[self.kind].transform(x, np.float64(self.mean), np.float64(self.std))

    def to_json(self) -> dict:
        saved = {"name": self.name, "kind": self.kind}
        return saved | ({"mean": self.mean, "std": self.std} if NUMERIC_KINDS[self.kind].fitted else {})


# ----------------------------------------------------------------------------- categorical


def fnv1a(values: pa.Array) -> np.ndarray:
    """FNV-1a 64-bit of each string's UTF-8 bytes (null -> 0), vectorized over character positions."""
    values = values.cast(pa.string())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], np.uint8) if values.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    hashes = np.full(len(values), FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position in range(int(lengths.max(initial=0))):
            active = np.flatnonzero(lengths > position)
            hashes[active] = (hashes[active] ^ data[starts[active] + position].astype(np.uint64)) * FNV_PRIME
    valid = values.is_valid().to_numpy(zero_copy_only=False)
    return np.where(valid, hashes, np.uint64(0))


@dataclass
class Categorical:
    """One categorical column (or the values of a multi-hot one), given ids as its `kind`
    (`CATEGORICAL_KINDS`) says.

    `values` says what the raw values are: "text" (pyarrow strings) or "uint32" (Criteo's hex,
    decoded; missing values are passed as a `present` mask)."""

    name: str
    kind: str = "vocabulary"
    values: str = "text"
    min_frequency: int = 1
    buckets: int | None = None  # hash: buckets (ids 1..buckets-1); modulo: the modulus
    keys: Any = None  # vocabulary: the sorted values kept (pa.StringArray or np.uint32), after finish()
    _counts: Any = None  # vocabulary, while fitting: pa.Table(value, count) or (sorted uint32, int64 counts)
    _lookup: Any = None

    def __post_init__(self) -> None:
        _known(self.kind, CATEGORICAL_KINDS, self.name)

    @property
    def cardinality(self) -> int:
        if self.kind == "vocabulary":
            return len(self.keys) + 1
        return self._buckets

    @property
    def _buckets(self) -> int:
        if self.buckets is None:
            raise RecforgeError(f"encoder {self.name!r}: a {self.kind} encoder needs its buckets")
        return self.buckets

    def count(self, values, present: np.ndarray | None = None) -> None:
        """Fit on a batch of train values (vocabularies only)."""
        if self.kind != "vocabulary":
            return
        if self.values == "uint32":
            present_values = values if present is None else values[present]
            self.merge_counts(np.unique(present_values, return_counts=True))
            return
        batch = pc.value_counts(values.drop_null())
        self._add_text_counts(pa.table({"value": batch.field("values"), "count": batch.field("counts")}))

    def _add_text_counts(self, table: pa.Table) -> None:
        if self._counts is not None:
            merged = pa.concat_tables([self._counts, table]).group_by("value").aggregate([("count", "sum")])
            table = merged.rename_columns(["value", "count"])
        self._counts = table

    def merge_counts(self, pair: tuple[np.ndarray, np.ndarray]) -> None:
        """uint32 vocabularies: add (sorted unique values, counts), e.g. a worker's."""
        self._counts = pair if self._counts is None else merge_sorted_counts(self._counts, pair)

    def merge(self, other: Categorical) -> None:
        """Add the counts of `other` (the same column, fitted on other rows)."""
        if other._counts is None:
            return
        if self.values == "uint32":
            self.merge_counts(other._counts)
        else:
            self._add_text_counts(other._counts)

    def finish(self) -> int:
        """Keep the values seen at least `min_frequency` times; returns how many distinct values were seen."""
        if self.kind != "vocabulary":
            return 0
        if self.values == "uint32":
            values, counts = self._counts if self._counts is not None else (np.zeros(0, np.uint32), np.zeros(0))
            self.keys, self._counts = values[counts >= self.min_frequency].astype(np.uint32), None
            return len(values)
        table = (
            self._counts if self._counts is not None else pa.table({"value": pa.array([], pa.string()), "count": []})
        )
        kept = table.filter(pc.greater_equal(table.column("count"), self.min_frequency))
        self.keys = pc.take(kept.column("value"), pc.sort_indices(kept.column("value"))).combine_chunks()
        self._counts = None
        return table.num_rows

    def ids(self, values, present: np.ndarray | None = None) -> np.ndarray:
        """An id per value: int64, 0 for a missing or out-of-vocabulary one."""
        if self.kind == "hash":
            valid = values.is_valid().to_numpy(zero_copy_only=False)
            return np.where(valid, 1 + fnv1a(values) % np.uint64(self._buckets - 1), 0).astype(np.int64)
        if self.kind == "modulo":
            ids = (values % np.uint32(self._buckets)).astype(np.int64)
            return ids if present is None else np.where(present, ids, 0)
        if self.values == "uint32":
            if self._lookup is None:
                self._lookup = SortedKeys(self.keys)
            ids = self._lookup.ids(values)
            return ids if present is None else np.where(present, ids, 0)
        index = pc.index_in(values, value_set=self.keys)
        return pc.fill_null(pc.add(index, 1), 0).to_numpy(zero_copy_only=False).astype(np.int64)

    def to_json(self) -> dict:
        saved = {"name": self.name, "kind": self.kind, "values": self.values}
        if self.kind == "vocabulary":
            return saved | {"min_frequency": self.min_frequency, "cardinality": self.cardinality}
        return saved | {"buckets": self.buckets}


class SortedKeys:
    """Ids (1 + index, 0 when absent) of uint32 values in sorted keys, by whichever lookup is the
    cheapest for the number of values n against the K keys (measured, K = 100k):
    - n < K / 64 (a server's request): binary search, 18 us for 256 values;
    - n >= 2K on small key sets (preparation's chunks): pyarrow's `index_in`, whose hash table
      of the keys is built per call (~2 ms at K = 100k) and then costs little per value;
    - otherwise a bucket directory of the keys, built once: 0.8 ms for 16k values, where
      index_in took 2.6 ms and binary search 2.6 ms."""

    HASHED = 1 << 17  # index_in only below this many keys: above, its per-call table costs more
    FEW = 64  # fewer values than keys / FEW: binary search

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        self.arrow = pa.array(np.asarray(keys)) if len(keys) < self.HASHED else None

    @functools.cached_property
    def directory(self):
        return directory(self.keys)

    def ids(self, values: np.ndarray) -> np.ndarray:
        if self.arrow is not None and len(values) >= 2 * len(self.keys):
            return pc.index_in(pa.array(values), value_set=self.arrow).fill_null(-1).to_numpy() + 1
        if len(values) * self.FEW < len(self.keys):
            position = np.searchsorted(self.keys, values)
        else:
            position = lower_bound(self.keys, values, self.directory)
        return np.where(found_at(self.keys, values, position), position + 1, 0)


def merge_sorted_counts(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple:
    """Merge two (sorted unique values, counts): found values add, new ones are inserted in order.
    A lower-bound search plus `insert` costs O(len(b) log len(a)) plus one copy when there are new
    values, and no copy at all once the vocabulary has saturated: no re-sort of all values."""
    values, counts = a
    new_values, new_counts = b
    if not len(values):
        return new_values.astype(np.uint32), new_counts.astype(np.int64)
    large = len(new_values) * 16 > len(values)
    position = lower_bound(values, new_values, directory(values)) if large else np.searchsorted(values, new_values)
    found = found_at(values, new_values, position)
    counts = counts.copy() if not counts.flags.writeable else counts
    counts[position[found]] += new_counts[found]
    if not found.all():
        fresh = ~found
        values = np.insert(values, position[fresh], new_values[fresh])
        counts = np.insert(counts, position[fresh], new_counts[fresh])
    return values, counts


def directory(keys: np.ndarray) -> tuple[np.ndarray, np.uint32, int]:
    """For sorted uint32 `keys`: where each bucket of the top bits starts (~2-4 keys per bucket),
    the shift that gives a value's bucket, and the bisection rounds that the widest bucket needs."""
    bits = min(26, max(1, len(keys).bit_length() - 2))
    shift = np.uint32(32 - bits)
    starts = np.zeros((1 << bits) + 1, np.int64)
    if len(keys):
        np.cumsum(np.bincount(keys >> shift, minlength=1 << bits), out=starts[1:])
    return starts, shift, int(np.diff(starts).max()).bit_length()


def lower_bound(keys: np.ndarray, values: np.ndarray, found_directory) -> np.ndarray:
    """`np.searchsorted(keys, values)` for sorted uint32 keys, several times faster for large
    inputs (0.1 s instead of 0.85 s for 1M values in 10M keys): the directory narrows each search
    to one bucket of a few keys, which a few vectorized bisection rounds finish. Keys outside a
    value's bucket are all smaller or all larger than it, so the bucket's lower bound is the
    global one. Clustered keys (a wide bucket) fall back to searchsorted."""
    starts, shift, rounds = found_directory
    if not len(keys) or rounds > 12:
        return np.searchsorted(keys, values)
    bucket = values >> shift
    lo, hi = starts[bucket], starts[bucket + np.uint32(1)]
    last = len(keys) - 1
    for _ in range(rounds):
        mid = (lo + hi) >> 1
        go = (mid < hi) & (keys[np.minimum(mid, last)] < values)
        lo = np.where(go, mid + 1, lo)
        hi = np.where(go, hi, mid)
    return lo


def hex_words(w: np.ndarray) -> np.ndarray:
    """uint64 words each holding 8 ASCII hex digits (first digit in the lowest byte) -> uint32.

    Per byte c, the digit is (c & 0xF) + 9 * (c >> 6 & 1) for '0'-'9' (0x30-0x39), 'a'-'f'
    (0x61-0x66) and 'A'-'F' (0x41-0x46); then nibble pairs, byte pairs and 16-bit pairs are packed
    with shifts and masks (SWAR), in place. A table lookup per byte is about twice as slow."""
    nib = w >> np.uint64(6)
    nib &= np.uint64(0x0101010101010101)
    nib *= np.uint64(9)
    w &= np.uint64(0x0F0F0F0F0F0F0F0F)
    nib += w
    w = nib << np.uint64(4)  # byte 2k: digit(2k) << 4 | digit(2k + 1)
    nib >>= np.uint64(8)
    w |= nib
    w &= np.uint64(0x00FF00FF00FF00FF)
    nib = w << np.uint64(8)  # 32-bit half h: byte(2h) << 8 | byte(2h + 1)
    w >>= np.uint64(16)
    nib |= w
    nib &= np.uint64(0x0000FFFF0000FFFF)
    w = nib << np.uint64(16)
    nib >>= np.uint64(32)
    w |= nib
    return w.astype(np.uint32)


_HEX_DIGIT = np.zeros(256, bool)
_HEX_DIGIT[np.frombuffer(b"0123456789abcdefABCDEF", np.uint8)] = True


_ALL_DIGITS = np.frombuffer(np.ones(8, bool).tobytes(), np.uint64)[0]


def parse_hex32(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Criteo's categorical text (8 hex digits; empty or null: missing) -> (uint32 values, 0 where
    missing; present; well-formed: 8 hex digits or missing)."""
    text = pc.fill_null(column.cast(pa.string()), "")
    lengths = pc.binary_length(text).to_numpy(zero_copy_only=False)
    present = lengths == 8
    filled = pc.if_else(pa.array(present), text, "00000000")
    offsets = np.frombuffer(filled.buffers()[1], np.int32)[filled.offset : filled.offset + len(filled) + 1]
    data = np.frombuffer(filled.buffers()[2], np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 8)
    # A table lookup per byte, not a regex per value (~20x faster on a request's columns); a value's
    # 8 flags read as one word, not numpy's slow `all` over a short axis.
    good = (_HEX_DIGIT[data].view(np.uint64).reshape(-1) == _ALL_DIGITS) & (present | (lengths == 0))
    return hex_words(np.ascontiguousarray(data).view("<u8").reshape(-1).copy()), present, good


def hex32(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`parse_hex32`'s (values, present) of well-formed text."""
    values, present, good = parse_hex32(column)
    if not good.all():
        raise RecforgeError("a Criteo categorical value is not 8 hex digits (nor empty)")
    return values, present


# ----------------------------------------------------------------------------- lists and crosses


@dataclass
class MultiHot:
    """Delimited lists of categorical values -> [rows, max_length] ids, -1 after each list."""

    values: Categorical
    delimiter: str = "|"
    max_length: int | None = None  # None while fitting: the longest train list
    pooling: str = "mean"
    _longest: int = 1

    @property
    def name(self) -> str:
        return self.values.name

    def split(self, column: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """The non-empty values of the lists, in row order, and the row of each."""
        lists = pc.split_pattern(pc.fill_null(column, ""), self.delimiter)
        values = pc.list_flatten(lists)
        rows = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        keep = pc.not_equal(values, "")
        return values.filter(keep), rows[keep.to_numpy(zero_copy_only=False)]

    def fit(self, column: pa.Array, measure: bool) -> None:
        values, rows = self.split(column)
        if measure:
            self._longest = max(self._longest, int(np.bincount(rows).max(initial=0)))
        self.values.count(values)

    def merge(self, other: MultiHot) -> None:
        self._longest = max(self._longest, other._longest)
        self.values.merge(other.values)

    def finish(self) -> None:
        self.values.finish()
        self.max_length = self.max_length or self._longest

    @property
    def width(self) -> int:
        """Ids per row, once `finish` has set `max_length`."""
        assert self.max_length is not None, "finish() sets it"
        return self.max_length

    def apply(self, column: pa.Array) -> np.ndarray:
        values, rows = self.split(column)
        ids = self.values.ids(values)
        n, width = len(column), self.width
        counts = np.bincount(rows, minlength=n)
        position = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
        keep = position < width
        out = np.full((n, width), -1, dtype=np.int32)
        out[rows[keep], position[keep]] = ids[keep]
        return out

    def to_json(self) -> dict:
        return self.values.to_json() | {
            "delimiter": self.delimiter,
            "max_length": self.max_length,
            "pooling": self.pooling,
        }


@dataclass
class Cross:
    """Several categorical columns' values joined, hashed into `buckets` (ids 1..buckets-1)."""

    name: str
    columns: list[str]
    buckets: int

    def apply(self, columns: list[pa.Array]) -> np.ndarray:
        joined = pc.binary_join_element_wise(*(pc.fill_null(c, "") for c in columns), CROSS_SEPARATOR)
        return (1 + fnv1a(joined) % np.uint64(self.buckets - 1)).astype(np.int64)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": "cross", "columns": self.columns, "buckets": self.buckets}


# ----------------------------------------------------------------------------- a log's encoders


@dataclass
class Encoders:
    """Every encoder of a prepared click log, in the prepared arrays' column order."""

    dense: list[Numeric] = field(default_factory=list)
    sparse: list[Categorical] = field(default_factory=list)
    multi_hot: list[MultiHot] = field(default_factory=list)
    crossed: list[Cross] = field(default_factory=list)

    def merge(self, other: Encoders) -> None:
        """Add what `other` (the same encoders, fitted on other rows) has seen, before `finish`."""
        for group in ("dense", "sparse", "multi_hot"):
            for mine, theirs in zip(getattr(self, group), getattr(other, group)):
                mine.merge(theirs)

    def finish(self) -> list[int]:
        """After the fits and merges: vocabularies kept, moments made means and stds. Returns the
        distinct train values each categorical column had (0 where not counted)."""
        for group in (self.dense, self.multi_hot):
            for encoder in group:
                encoder.finish()
        return [encoder.finish() for encoder in self.sparse]

    def fitted_columns(self) -> list[str]:
        """The columns fitting reads: vocabularies, lists of unknown length, standardized numbers."""
        fitted = {e.name for e in self.sparse if CATEGORICAL_KINDS[e.kind].fitted}
        fitted |= {m.name for m in self.multi_hot if CATEGORICAL_KINDS[m.values.kind].fitted or m.max_length is None}
        fitted |= {e.name for e in self.dense if NUMERIC_KINDS[e.kind].fitted}
        return sorted(fitted)

    def save(self, folder: Path) -> None:
        """`encoders.json` and one file per vocabulary (`encoders/sparse-J.npy` for uint32 values,
        `.arrow` for text; `multi_hot-J` for lists) in `folder`."""
        files = {}
        for group, encoders in (("sparse", self.sparse), ("multi_hot", [m.values for m in self.multi_hot])):
            for j, encoder in enumerate(encoders):
                if encoder.kind != "vocabulary":
                    continue
                (folder / "encoders").mkdir(exist_ok=True)
                name = f"encoders/{group}-{j}.{'npy' if encoder.values == 'uint32' else 'arrow'}"
                files[group, j] = name
                if encoder.values == "uint32":
                    write_array(folder / name, np.asarray(encoder.keys, np.uint32))
                    continue
                table = pa.table({"value": encoder.keys})
                with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)

        def entries(group: str, encoders: list) -> list[dict]:
            return [
                e.to_json() | ({"file": files[group, j]} if (group, j) in files else {}) for j, e in enumerate(encoders)
            ]

        write_json(
            folder / "encoders.json",
            {
                "format": FORMAT,
                "dense": entries("dense", self.dense),
                "sparse": entries("sparse", self.sparse),
                "multi_hot": entries("multi_hot", self.multi_hot),
                "crossed": entries("crossed", self.crossed),
            },
        )

    def encode(self, table: pa.Table) -> dict[str, np.ndarray]:
        """New raw rows (columns named as in the log) -> the arrays a prepared split holds.

        The numeric columns and Criteo's hex columns go through numpy together, as one matrix each:
        column by column, the fixed cost of each call (not the work) was most of a served one-row
        request's encoding (3.6 ms for 39 columns on an AVX2 EPYC, 0.4 ms together)."""
        rows = table.num_rows
        out = {"dense": self._dense(table, rows), "sparse": np.zeros((rows, len(self.sparse)), np.int32)}
        hexed = [j for j, e in enumerate(self.sparse) if e.values == "uint32"]
        if hexed:
            columns = [one_array(table.column(self.sparse[j].name)) for j in hexed]
            if all(c.type == pa.uint32() for c in columns):  # parsed already (null: missing), by a server's check
                joined = pa.concat_arrays(columns)
                values = joined.fill_null(0).to_numpy()
                present = joined.is_valid().to_numpy(zero_copy_only=False)
            else:  # parsed in one pass: a request's fixed costs once, not per column
                values, present = hex32(pa.concat_arrays([c.cast(pa.string()) for c in columns]))
            shape = (len(hexed), rows)
            out["sparse"][:, hexed] = self._uint32_ids(values.reshape(shape), present.reshape(shape)).T
        for j, e in enumerate(self.sparse):
            if e.values != "uint32":
                out["sparse"][:, j] = e.ids(one_array(table.column(e.name)).cast(pa.string()))
        if self.multi_hot:
            out["multi_hot"] = np.concatenate(
                [m.apply(one_array(table.column(m.name)).cast(pa.string())) for m in self.multi_hot], axis=1
            )
        if self.crossed:
            out["crossed"] = np.stack(
                [c.apply([one_array(table.column(n)).cast(pa.string()) for n in c.columns]) for c in self.crossed],
                axis=1,
            ).astype(np.int32)
        return out

    def _dense(self, table: pa.Table, rows: int) -> np.ndarray:
        if not self.dense:
            return np.zeros((rows, 0), np.float32)
        columns = [one_array(table.column(e.name)) for e in self.dense]
        x = pa.concat_arrays([c if c.type == pa.float64() else c.cast(pa.float64()) for c in columns])
        x = np.nan_to_num(x.to_numpy(zero_copy_only=False).reshape(len(columns), rows).T, nan=0.0)
        kinds = np.array([e.kind for e in self.dense])
        means, stds = np.array([e.mean for e in self.dense]), np.array([e.std for e in self.dense])
        for name, kind in NUMERIC_KINDS.items():  # the columns of each kind at once
            of_kind = np.flatnonzero(kinds == name)
            if len(of_kind):
                x[:, of_kind] = kind.transform(x[:, of_kind], means[of_kind], stds[of_kind])
        return x.astype(np.float32)

    def _uint32_ids(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Ids of the uint32 columns' (columns, rows) values: the vocabularies' all at once."""
        hexed = [e for e in self.sparse if e.values == "uint32"]
        ids = np.zeros(values.shape, np.int64)
        vocabularies = [k for k, e in enumerate(hexed) if e.kind == "vocabulary"]
        if vocabularies:
            ids[vocabularies] = self._vocabularies.ids(values[vocabularies], present[vocabularies])
        for k, e in enumerate(hexed):
            if e.kind != "vocabulary":
                ids[k] = e.ids(values[k], present[k])
        return ids

    @functools.cached_property
    def _vocabularies(self) -> ColumnsKeys:
        return ColumnsKeys([e for e in self.sparse if e.values == "uint32" and e.kind == "vocabulary"])


def one_array(column: pa.ChunkedArray) -> pa.Array:
    """A table column as one array (without a copy when it is one chunk already)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def found_at(keys: np.ndarray, values: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Whether each value is the key at its lower-bound `position` in the sorted keys."""
    found = position < len(keys)
    found[found] = keys[position[found]] == values[found]
    return found


class ColumnsKeys:
    """Ids of the values of several uint32 vocabulary columns at once. Few values (a served
    request's) cost one binary search over every column's keys, each column's keys shifted into a
    uint64 range of its own, instead of a search per column: 26 searches of one value each cost
    26 calls' fixed cost. More values go column by column, to each one's fastest lookup."""

    def __init__(self, encoders: list[Categorical]):
        self.encoders = encoders
        self.starts = np.cumsum([0] + [len(e.keys) for e in encoders[:-1]])[:, None]

    @functools.cached_property
    def keys(self) -> np.ndarray:  # built at the first small request: a copy of every vocabulary
        return np.concatenate(
            [(np.uint64(k) << np.uint64(32)) | np.asarray(e.keys, np.uint64) for k, e in enumerate(self.encoders)]
        )

    def ids(self, values: np.ndarray, present: np.ndarray) -> np.ndarray:
        total = int(self.starts[-1, 0]) + len(self.encoders[-1].keys)
        if values.size * SortedKeys.FEW >= total:
            return np.stack([e.ids(v, p) for e, v, p in zip(self.encoders, values, present)])
        wanted = (np.arange(len(self.encoders), dtype=np.uint64)[:, None] << np.uint64(32)) | values
        position = np.searchsorted(self.keys, wanted)
        return np.where(found_at(self.keys, wanted, position) & present, position - self.starts + 1, 0)


def load_encoders(folder: str | Path) -> Encoders:
    """The encoders a prepared folder was made with."""
    folder = Path(folder).expanduser()
    path = folder / "encoders.json"
    if not path.is_file():
        raise RecforgeError(f"{folder}: no encoders.json (prepared before encoders were saved; prepare it again)")
    saved = json.loads(path.read_text())

    def categorical(entry: dict) -> Categorical:
        encoder = Categorical(
            entry["name"], entry["kind"], entry["values"], entry.get("min_frequency", 1), entry.get("buckets")
        )
        if encoder.kind == "vocabulary" and encoder.values == "uint32":
            encoder.keys = np.load(folder / entry["file"], mmap_mode="r")
        elif encoder.kind == "vocabulary":
            with pa.memory_map(str(folder / entry["file"])) as source:
                encoder.keys = pa.ipc.open_file(source).read_all().column("value").combine_chunks()
        return encoder

    try:
        return Encoders(
            dense=[
                Numeric(e["name"], e["kind"], mean=e.get("mean", 0.0), std=e.get("std", 1.0)) for e in saved["dense"]
            ],
            sparse=[categorical(e) for e in saved["sparse"]],
            multi_hot=[
                MultiHot(categorical(e), e["delimiter"], e["max_length"], e["pooling"]) for e in saved["multi_hot"]
            ],
            crossed=[Cross(e["name"], e["columns"], e["buckets"]) for e in saved["crossed"]],
        )
    except RecforgeError as e:  # a kind this recforge lacks: written by another version, or edited
        raise RecforgeError(f"{path}: {e}") from None

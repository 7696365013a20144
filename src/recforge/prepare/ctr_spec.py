"""Any click log in CSV or Parquet, described by a YAML feature spec, into the prepared format.

A spec names the label, the numeric, categorical (one value per row) and multi-hot (a delimited
list per row) columns, optional hashed crosses for a wide part, and where the rows are:

    label: click
    numeric: [price, {name: age, transform: none, tag: request}]   # log1p(max(x, 0)) (default), none, standardize
    categorical: [user_id, {name: item_id, min_frequency: 5, embedding_dim: 32, tag: item},
                  {name: query, hash_buckets: 100000}]
    multi_hot: [{name: topics, delimiter: "|", max_length: 3, pooling: mean, hash_buckets: 350}]
    crossed: [{name: user_x_item, columns: [user_id, item_id], hash_buckets: 100000}]
    group: display_id                                    # optional: rows ranked together (MAP@12)
    item: ad_id                                          # optional: the id predictions name
    files: {train: train.csv, valid: valid.csv, test: test.csv}   # or {all: log.csv}
    holdout: {test: 0.05, valid: 0.05}                   # with `all`: the last rows, in file order
    separator: ","                                       # CSV only

Categorical values are read as text. A vocabulary (sorted values seen in train rows at least
`min_frequency` times) numbers them 1..V, and 0 is missing or out of vocabulary; or a stable
64-bit FNV-1a hash modulo `hash_buckets - 1`, plus 1. A multi-hot list keeps its first
`max_length` values (default: the longest list in the train rows); empty items are skipped and
an empty list stays empty. A cross hashes the joined text of its columns. `embedding_dim` and
`tag` (request or item level) travel to the model through meta.json. Files are read in batches
(pyarrow's streaming CSV reader, Parquet row groups): memory is bounded by the vocabularies.
"""

from __future__ import annotations

import gzip
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.core.errors import DataError
from recforge.core.shipped import FEATURE_SPECS, resolve
from recforge.core.yaml_file import read_yaml
from recforge.data.ctr_format import (
    COLUMNS,
    FORMAT,
    OPTIONAL,
    CTRMeta,
)
from recforge.data.encoders import (
    NUMERIC_KINDS,
    Categorical,
    Cross,
    Encoders,
    MultiHot,
    Numeric,
)
from recforge.data.tabular import (
    check_parquet,
    convert,
    os_error,
    read_delimited,
    require_file,
    row_error,
    text_problem,
)
from recforge.prepare.engine import ClickLog, Prepared, Unit, line_ranges, prepare_click_log
from recforge.prepare.journal import fingerprint

BATCH_BYTES = 1 << 24


@dataclass
class Feature:
    name: str
    transform: str = "log1p"  # numeric: log1p(max(x, 0)) | none | standardize (train rows' mean and std)
    min_frequency: int = 1  # categorical vocabulary threshold
    hash_buckets: int | None = None  # categorical: hash instead of a vocabulary
    embedding_dim: int | None = None  # categorical: the model's default when absent
    tag: str | None = None  # request | item
    delimiter: str = "|"  # multi-hot: between the values of a list
    max_length: int | None = None  # multi-hot: values kept per row (default: longest in train)
    pooling: str = "mean"  # multi-hot: sum | mean of the values' embeddings
    columns: list[str] = field(default_factory=list)  # crossed: the categorical columns joined


@dataclass
class FeatureSpec:
    label: str
    numeric: list[Feature]
    categorical: list[Feature]
    files: dict[str, str]
    multi_hot: list[Feature] = field(default_factory=list)
    crossed: list[Feature] = field(default_factory=list)
    group: str | None = None
    item: str | None = None
    holdout: dict[str, float] = field(default_factory=dict)
    separator: str = ","
    path: Path | None = None


def _integer(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# What a feature's keys must be: (a test of the YAML value, the words for it). YAML types are kept
# as written: `max_length: "3"` is text, not a number.
FEATURE_KEYS = {
    "transform": (lambda v: v in NUMERIC_KINDS, f"{', '.join([*NUMERIC_KINDS][:-1])} or {[*NUMERIC_KINDS][-1]}"),
    "min_frequency": (lambda v: _integer(v, 1), "a positive integer"),
    "hash_buckets": (lambda v: v is None or _integer(v, 2), "an integer, at least 2"),
    "embedding_dim": (lambda v: v is None or _integer(v, 1), "a positive integer"),
    "tag": (lambda v: v in (None, "request", "item"), "request or item"),
    "delimiter": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "max_length": (lambda v: v is None or _integer(v, 1), "a positive integer"),
    "pooling": (lambda v: v in ("sum", "mean"), "sum or mean"),
    "columns": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of column names"),
}
SECTION_KEYS = {
    "numeric": {"transform", "tag"},
    "categorical": {"min_frequency", "hash_buckets", "embedding_dim", "tag"},
    "multi_hot": {"min_frequency", "hash_buckets", "embedding_dim", "tag", "delimiter", "max_length", "pooling"},
    "crossed": {"columns", "hash_buckets"},
}


def load_spec(path: str | Path) -> FeatureSpec:
    """The feature spec at `path`, or the shipped one of that name (`--feature-spec criteo-csv`)."""
    path = resolve(path, FEATURE_SPECS)
    require_file(path, "the YAML feature spec")
    raw, lines = read_yaml(path, "a YAML feature spec")
    known = (
        "label",
        "numeric",
        "categorical",
        "multi_hot",
        "crossed",
        "group",
        "item",
        "files",
        "holdout",
        "separator",
    )
    if raw is None:
        raise DataError(path, None, None, "the feature spec is empty (it names the label, the features and the files)")
    if not isinstance(raw, dict):
        raise DataError(path, 1, None, f"a feature spec is a mapping of {', '.join(known)}, not a {type(raw).__name__}")

    def fail(where: tuple, message: str):
        """A DataError at the line of `where` (a path of keys and list positions), naming its keys."""
        line = next((lines[where[:n]] for n in range(len(where), 0, -1) if where[:n] in lines), None)
        raise DataError(path, line, ".".join(str(p) for p in where if not isinstance(p, int)), message)

    for key in raw:
        if key not in known:
            fail((str(key),), f"unknown key (expected {', '.join(sorted(known))})")
    if not isinstance(raw.get("label"), str):
        fail(("label",), "the label column's name is required")
    files = raw.get("files") or {}
    if not isinstance(files, dict) or not files or set(files) - {"all", "train", "valid", "test"}:
        fail(("files",), "a mapping of train/valid/test (or all) to file names")
    if "all" in files and len(files) > 1:
        fail(("files",), "either `all` or train/valid/test, not both")
    if "all" not in files and "train" not in files:
        fail(("files",), "needs a `train` file (or `all`)")
    for split, name in files.items():
        if not isinstance(name, str):
            fail(("files", split), f"must be a file name, got {name!r}")
    holdout = raw.get("holdout") or {}
    if not isinstance(holdout, dict) or set(holdout) - {"valid", "test"}:
        fail(("holdout",), "fractions of the rows for valid and test, summing to less than 1")
    for split, fraction in holdout.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            fail(("holdout", split), f"must be a fraction of the rows (a number), got {fraction!r}")
    if sum(holdout.values()) >= 1 or min(holdout.values(), default=0) < 0:
        fail(("holdout",), "fractions of the rows for valid and test, summing to less than 1")
    separator = raw.get("separator", ",")
    if not isinstance(separator, str) or len(separator) != 1:
        fail(("separator",), f"must be one character, got {separator!r}")

    def features(section: str) -> list[Feature]:
        entries = raw.get(section) or []
        if not isinstance(entries, list):
            fail((section,), "a list of column names or {name: ..., ...} mappings")
        allowed = SECTION_KEYS[section]
        out = []
        for i, entry in enumerate(entries):
            entry = {"name": entry} if isinstance(entry, (str, int)) and not isinstance(entry, bool) else entry
            if not isinstance(entry, dict) or "name" not in entry or set(entry) - allowed - {"name"}:
                fail(
                    (section, i),
                    f"each feature is a name or a mapping with name and {', '.join(sorted(allowed))}: {entry!r}",
                )
            name = entry["name"]
            if isinstance(name, bool) or not isinstance(name, (str, int)):
                fail((section, i, "name"), f"must be a column name, got {name!r}")
            for key, value in entry.items():
                test, words = FEATURE_KEYS[key] if key != "name" else (lambda v: True, "")
                if not test(value):
                    fail((section, i, key), f"{name}: {key} must be {words}, got {value!r}")
            out.append(Feature(**{**entry, "name": str(name)}))
        return out

    for key in ("group", "item"):
        if key in raw and not isinstance(raw[key], str):
            fail((key,), "a column name")
    spec = FeatureSpec(
        label=raw["label"],
        numeric=features("numeric"),
        categorical=features("categorical"),
        multi_hot=features("multi_hot"),
        crossed=features("crossed"),
        group=raw.get("group"),
        item=raw.get("item"),
        files=dict(files),
        holdout={k: float(v) for k, v in holdout.items()},
        separator=separator,
        path=path,
    )
    if not spec.numeric and not spec.categorical and not spec.multi_hot:
        fail(("numeric",), "the spec names no features")
    categorical_names = {f.name for f in spec.categorical}
    for i, f in enumerate(spec.crossed):
        if len(f.columns) < 2 or set(f.columns) - categorical_names:
            fail(("crossed", i, "columns"), f"{f.name}: columns must name two or more categorical features")
        if f.hash_buckets is None:
            fail(("crossed", i), f"{f.name}: hash_buckets (at least 2) is required")
    as_text = {f.name for f in spec.categorical + spec.multi_hot}
    for column in sorted(as_text & ({f.name for f in spec.numeric} | {spec.label})):
        fail(("numeric",), f"{column}: read as a number and as text; name a column in one of them")
    return spec


class _Source:
    """Batches of one file's spec columns: numbers as float64, categories as text."""

    def __init__(self, path: Path, spec: FeatureSpec):
        self.path, self.spec = path, spec
        categorical = {f.name for f in spec.categorical}  # a group or item column may be a feature too (read as text)
        self.types = {
            spec.label: pa.float64(),
            **{f.name: pa.float64() for f in spec.numeric},
            **{f.name: pa.string() for f in spec.categorical + spec.multi_hot},
            **{name: pa.int64() for name in (spec.group, spec.item) if name and name not in categorical},
        }

    def batches(self, columns: list[str] | None = None, unit: Unit | None = None) -> Iterator[pa.RecordBatch]:
        """Batches of `columns` (default: every spec column) of the whole file or of one `unit`."""
        types = {c: self.types[c] for c in columns} if columns else self.types
        if self.path.suffix == ".parquet":
            check_parquet(self.path, types)
            groups = list(unit.row_groups) if unit is not None else None
            first = unit.first_row if unit is not None else 0
            for batch in pq.ParquetFile(self.path).iter_batches(
                columns=list(types), batch_size=1 << 16, row_groups=groups
            ):
                arrays = [convert(self.path, batch.column(c), t, c, first) for c, t in types.items()]
                # An empty string is a missing category, as in CSV files.
                arrays = [
                    pc.if_else(pc.equal(a, ""), pa.scalar(None, pa.string()), a) if a.type == pa.string() else a
                    for a in arrays
                ]
                yield pa.RecordBatch.from_arrays(arrays, names=list(types))
                first += batch.num_rows
            return
        try:
            source, read = self.path, pcsv.ReadOptions(block_size=BATCH_BYTES)
            if unit is not None and unit.end is not None:  # whole lines after the header: named by it
                with open(self.path, "rb") as f:
                    f.seek(unit.start)
                    source = pa.BufferReader(f.read(unit.end - unit.start))
                read = pcsv.ReadOptions(block_size=BATCH_BYTES, column_names=self.header())
            reader = pcsv.open_csv(
                source,
                read_options=read,
                parse_options=pcsv.ParseOptions(delimiter=self.spec.separator),
                convert_options=pcsv.ConvertOptions(
                    column_types=types, include_columns=list(types), strings_can_be_null=True
                ),
            )
            yield from reader
        except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
            # The slow path names the first bad line and field (and raises there).
            read_delimited(self.path, delimiter=self.spec.separator, missing_ok=True, columns=types)
            raise text_problem(self.path, BATCH_BYTES) or DataError(
                self.path, None, None, str(error).splitlines()[0]
            ) from None
        except OSError as error:
            raise os_error(self.path, error) from None

    def _check_columns(self) -> None:
        """Every spec column is in the file: from its header (or schema) alone where it can be; a
        streaming reader abandoned after its first batch would go on parsing the file ahead."""
        if self.path.suffix == ".parquet":
            return check_parquet(self.path, self.types)
        try:
            header = self.header()
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error):
            header = []  # an empty or binary file
        if any(name not in header for name in self.types):
            next(self.batches(), None)  # error path: the reader says what is wrong (binary data, ...)
            missing = next(name for name in self.types if name not in header)
            raise DataError(self.path, 1, missing, "column not found in the header")

    def header(self) -> list[str]:
        """A CSV file's column names (its first line)."""
        with gzip.open(self.path, "rb") if self.path.suffix == ".gz" else open(self.path, "rb") as f:
            line = f.readline()
        parse = pcsv.ParseOptions(delimiter=self.spec.separator)
        return pcsv.read_csv(pa.py_buffer(line), parse_options=parse).column_names

    def units(self, file: int, unit_bytes: int) -> list[Unit]:
        """The file cut into units of work: ranges of ~`unit_bytes` of whole lines of a plain CSV
        (after its header), each row group of a Parquet file, or a whole .gz (gzip cannot be split)."""
        path = str(self.path)
        self._check_columns()
        if self.path.suffix == ".parquet":
            metadata = pq.ParquetFile(path).metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            firsts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
            return [Unit(file, path, row_groups=(g,), first_row=firsts[g]) for g in range(len(sizes))]
        if self.path.suffix == ".gz":
            return [Unit(file, path)]
        with open(self.path, "rb") as f:
            header = len(f.readline())
        return [Unit(file, path, a, b) for a, b in line_ranges(self.path, header, unit_bytes)]


UNIT_BYTES = 1 << 26  # a CSV unit: 64 MiB of lines


def prepare_ctr(
    spec_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    log=print,
    overwrite: bool = False,
    info: dict | None = None,
    workers: int = 1,
) -> CTRMeta:
    """Prepare the click log a feature spec describes into `out` (new, empty, or with `overwrite`
    a prepared folder to replace). `info`: a caller's provenance for meta.json's info (meta.json
    is written once, last, so a failure never replaces `out`).

    The pass engine's three passes (`engine.py`) over the files' units, each run by `workers`
    processes and resumable after an interruption from the last finished unit: `rows` (each
    unit's rows), `fit` (the encoders' counts and moments on the train rows, merged in unit
    order) and `write` (each unit encoded and written at its rows' offsets)."""
    start = time.perf_counter()
    spec = load_spec(spec_path)
    data_dir, out = Path(data_dir).expanduser(), Path(out).expanduser()
    names = list(spec.files)
    sources = [_Source(require_file(data_dir / spec.files[name]), spec) for name in names]
    units = [unit for file, source in enumerate(sources) for unit in source.units(file, UNIT_BYTES)]
    processes = max(1, min(workers, len(units)))
    options = {"spec": str(spec), "units": [asdict(u) for u in units], "format": FORMAT}
    key = fingerprint([source.path for source in sources], **options)
    click_log = SpecLog(spec, [source.path for source in sources], names)
    meta, report = prepare_click_log(
        click_log, units, out, key, overwrite, processes, lambda found: click_log.meta(found, info or {}), start, log
    )
    if report is None:  # finished by an earlier attempt
        return meta
    seconds = report["seconds"]
    embedding_rows = sum(meta.cardinalities) + sum(f["cardinality"] for f in meta.multi_hot)
    log(
        f"ctr: {', '.join(f'{k} {v:,}' for k, v in meta.rows.items())} rows, {embedding_rows:,} embedding rows over "
        f"{len(meta.cardinalities) + len(meta.multi_hot)} fields; {seconds:.1f}s -> {out}"
    )
    return meta


@dataclass
class SpecLog(ClickLog):
    """The files of a feature spec (`names`: their keys in its `files`) as the pass engine's click log."""

    spec: FeatureSpec
    files: list[Path]
    names: list[str]

    def encoders(self) -> Encoders:
        return _encoders(self.spec)

    def splits(self, file_rows: list[int]) -> dict[str, tuple[int, int]]:
        """The spec's files, or one file's head (train) and tail (`holdout` fractions for valid and test)."""
        rows = dict(zip(self.names, file_rows))
        for name in ("train", "all"):  # an empty valid or test file is a split without rows (Outbrain writes one)
            if rows.get(name, 1) == 0:
                raise DataError(self.files[self.names.index(name)], None, None, "no data rows")
        if "all" not in rows:
            starts = np.concatenate([[0], np.cumsum(file_rows)]).tolist()
            return {name: (starts[i], starts[i] + n) for i, (name, n) in enumerate(rows.items())}
        total = rows["all"]
        test = int(total * self.spec.holdout.get("test", 0.0))
        valid = int(total * self.spec.holdout.get("valid", 0.0))
        return {
            "train": (0, total - valid - test),
            "valid": (total - valid - test, total - test),
            "test": (total - test, total),
        }

    def optional(self, encoders: Encoders) -> dict[str, int]:
        spec = self.spec
        optional = {"multi_hot": sum(m.width for m in encoders.multi_hot)} if spec.multi_hot else {}
        optional |= {"crossed": len(spec.crossed)} if spec.crossed else {}
        return optional | {name: 0 for name, column in (("group", spec.group), ("item", spec.item)) if column}

    def estimated_rows(self, unit: Unit) -> int:
        return ((unit.end or os.path.getsize(unit.path)) - unit.start) // 100  # progress only: ~100 bytes a row

    def count(self, unit: Unit, report) -> int:
        rows = 0
        for batch in _Source(Path(unit.path), self.spec).batches([self.spec.label], unit):
            rows += batch.num_rows
            report(batch.num_rows)
        return rows

    def fit(self, unit: Unit, limit: int | None, first_row: int | None, encoders: Encoders, report) -> int:
        """Fit on the unit's first `limit` rows (its train rows; the rows are counted first)."""
        assert limit is not None and first_row is not None  # (no `train_files`: the rows pass comes first)
        fitted, seen = encoders.fitted_columns(), 0
        for batch in _Source(Path(unit.path), self.spec).batches(fitted, replace(unit, first_row=first_row)):
            batch = batch.slice(0, limit - seen)
            seen += batch.num_rows
            for e in encoders.dense:
                if e.name in fitted:
                    e.fit(batch.column(e.name).to_numpy(zero_copy_only=False))
            for m in encoders.multi_hot:
                if m.name in fitted:
                    m.fit(batch.column(m.name), measure=m.max_length is None)
            for c in encoders.sparse:
                if c.name in fitted:
                    c.count(batch.column(c.name))
            report(batch.num_rows)
            if seen >= limit:
                break
        return seen

    def encode(self, unit: Unit, first_row: int, encoders: Encoders) -> Iterator[dict[str, np.ndarray]]:
        source = _Source(Path(unit.path), self.spec)
        for batch in source.batches(None, replace(unit, first_row=first_row)):
            yield _encoded(batch, self.spec, encoders, source, first_row)
            first_row += batch.num_rows

    def meta(self, prepared: Prepared, info: dict) -> CTRMeta:
        return _meta(self.spec, prepared.encoders, prepared.rows, info)


def _encoded(batch: pa.RecordBatch, spec: FeatureSpec, encoders: Encoders, source: _Source, first: int) -> dict:
    """A batch's rows as the prepared arrays hold them (`first`: its first row in the file, for messages)."""
    n = batch.num_rows
    out = {
        "label": _labels(batch.column(spec.label), source, first, spec.label),
        "dense": np.zeros((n, len(encoders.dense)), COLUMNS["dense"]),
        "sparse": np.zeros((n, len(encoders.sparse)), COLUMNS["sparse"]),
    }
    for j, e in enumerate(encoders.dense):
        out["dense"][:, j] = e.apply(batch.column(e.name).to_numpy(zero_copy_only=False))
    for j, c in enumerate(encoders.sparse):
        out["sparse"][:, j] = c.ids(batch.column(c.name))
    if encoders.multi_hot:
        out["multi_hot"] = np.concatenate([m.apply(batch.column(m.name)) for m in encoders.multi_hot], axis=1)
    if encoders.crossed:
        crossed = [c.apply([batch.column(name) for name in c.columns]) for c in encoders.crossed]
        out["crossed"] = np.stack(crossed, axis=1).astype(OPTIONAL["crossed"])
    for name, column in (("group", spec.group), ("item", spec.item)):
        if column:
            out[name] = _required_ints(batch.column(column), source, first, column)
    return out


def _meta(spec: FeatureSpec, encoders: Encoders, sizes: dict[str, int], info: dict) -> CTRMeta:
    features = {
        f.name: {k: v for k, v in (("tag", f.tag), ("embedding_dim", f.embedding_dim)) if v is not None}
        for f in spec.numeric + spec.categorical + spec.multi_hot
    }
    return CTRMeta(
        dense_names=[f.name for f in spec.numeric],
        sparse_names=[f.name for f in spec.categorical],
        cardinalities=[e.cardinality for e in encoders.sparse],
        rows=sizes,
        info={
            "source": "feature spec",
            "spec": str(spec.path),
            "files": spec.files,
            "holdout": spec.holdout,
            "standardized": {e.name: [e.mean, e.std] for e in encoders.dense if e.kind == "standardize"},
            **info,
        },
        multi_hot=[
            {"name": m.name, "cardinality": m.values.cardinality, "max_length": m.max_length, "pooling": m.pooling}
            for m in encoders.multi_hot
        ],
        crossed=[{"name": c.name, "columns": c.columns, "cardinality": c.buckets} for c in encoders.crossed],
        features={name: entry for name, entry in features.items() if entry},
        group=spec.group,
        item=spec.item,
    )


def _encoders(spec: FeatureSpec) -> Encoders:
    """The encoders a feature spec describes, unfitted."""

    def categorical(f: Feature) -> Categorical:
        kind = "hash" if f.hash_buckets else "vocabulary"
        return Categorical(f.name, kind, "text", min_frequency=f.min_frequency, buckets=f.hash_buckets)

    return Encoders(
        dense=[Numeric(f.name, f.transform) for f in spec.numeric],
        sparse=[categorical(f) for f in spec.categorical],
        multi_hot=[MultiHot(categorical(f), f.delimiter, f.max_length, f.pooling) for f in spec.multi_hot],
        crossed=[Cross(f.name, f.columns, f.hash_buckets or 0) for f in spec.crossed],  # (load_spec requires it)
    )


def _required_ints(column: pa.Array, source: _Source, first_row: int, name: str) -> np.ndarray:
    """An integer id per row (a group or item column), read as text when it is a feature too."""
    bad = ~column.is_valid().to_numpy(zero_copy_only=False)
    if column.type == pa.string():
        digits = pc.match_substring_regex(column, r"^-?[0-9]+$").to_numpy(zero_copy_only=False)
        bad |= ~np.asarray(digits, dtype=bool)
    if bad.any():
        raise row_error(source.path, first_row + int(np.flatnonzero(bad)[0]), name, "missing or not an integer")
    return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)


def _labels(column: pa.Array, source: _Source, first_row: int, name: str) -> np.ndarray:
    labels = column.to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))
    if bad.size:
        raise row_error(source.path, first_row + int(bad[0]), name, f"label must be 0 or 1, got {labels[bad[0]]}")
    return labels.astype(np.uint8)

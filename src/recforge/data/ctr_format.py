"""The prepared click-log format: the contract between preparation and training.

A prepared dataset is a folder:

    meta.json                       format, features, cardinalities, rows per split, provenance
    <split>/label.npy               uint8   [rows]          0/1 clicks
    <split>/dense.npy               float32 [rows, dense]   numeric features, already transformed
    <split>/sparse.npy              int32   [rows, fields]  categorical ids, 0..cardinality-1
    <split>/multi_hot.npy           int32   [rows, sum of max lengths]  optional: each multi-hot
                                    field's ids in its own block of columns, -1 after the list ends
    <split>/crossed.npy             int32   [rows, crosses]  optional: hashed crosses (wide part only)
    <split>/group.npy               int64   [rows]  optional: the ranking group (e.g. display_id)
    <split>/item.npy                int64   [rows]  optional: the raw item id (e.g. ad_id)

for splits `train`, `valid`, `test` (a split may be absent). Every array is a `.npy` file, so it
memory-maps and the trainer slices large contiguous batches without per-row Python. Writers
preallocate the arrays (`open_memmap`, with their disk space reserved, so a full disk fails
there and not as SIGBUS mid-write) once the row counts are known and fill them in place, so
memory stays bounded whatever the input size; a folder is complete once meta.json exists.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recforge.core.errors import RecforgeError
from recforge.core.files import exchange, held_alone, naming, preallocate, remove, replace, temp_folder, write_json

FORMAT = "recforge-ctr-1"
SPLITS = ("train", "valid", "test")
COLUMNS = {"label": np.uint8, "dense": np.float32, "sparse": np.int32}
OPTIONAL = {"multi_hot": np.int32, "crossed": np.int32, "group": np.int64, "item": np.int64}


@dataclass
class CTRMeta:
    dense_names: list[str]
    sparse_names: list[str]
    cardinalities: list[int]
    rows: dict[str, int]  # split -> rows
    info: dict = field(default_factory=dict)  # provenance, options, e.g. a synthetic set's Bayes AUC
    multi_hot: list[dict] = field(default_factory=list)  # {name, cardinality, max_length, pooling}
    crossed: list[dict] = field(default_factory=list)  # {name, columns, cardinality}
    features: dict[str, dict] = field(default_factory=dict)  # name -> {tag: request|item, embedding_dim}
    group: str | None = None  # the column group.npy holds
    item: str | None = None  # the column item.npy holds

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "dense": self.dense_names,
            "sparse": self.sparse_names,
            "cardinalities": self.cardinalities,
            "multi_hot": self.multi_hot,
            "crossed": self.crossed,
            "features": self.features,
            "group": self.group,
            "item": self.item,
            "rows": self.rows,
            "info": self.info,
        }

    @property
    def multi_hot_width(self) -> int:
        return sum(f["max_length"] for f in self.multi_hot)


def allocate(
    folder: Path, split: str, rows: int, num_dense: int, num_sparse: int, optional: dict[str, int] | None = None
) -> dict[str, np.memmap]:
    """Writable, preallocated arrays of one split (filled in place by the caller); `optional` names
    the optional arrays to add with their widths (0: one value per row)."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    shapes = {"label": (rows,), "dense": (rows, num_dense), "sparse": (rows, num_sparse)}
    dtypes = dict(COLUMNS)
    for name, width in (optional or {}).items():
        shapes[name] = (rows, width) if width else (rows,)
        dtypes[name] = OPTIONAL[name]
    arrays = {}
    for name, dtype in dtypes.items():
        path = folder / split / f"{name}.npy"
        with naming(path):
            arrays[name] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shapes[name])
        preallocate(path)
    return arrays


def array_layout(folder: Path, split: str) -> dict[str, tuple[str, int, int]]:
    """Where each preallocated array of a split keeps its rows: (path, data offset, row bytes)."""
    layout = {}
    for path in sorted((folder / split).glob("*.npy")):
        array = np.load(path, mmap_mode="r")
        layout[path.stem] = (str(path), int(array.offset), int(array.strides[0]))
        del array
    return layout


def write_rows_at(path: str, offset: int, array: np.ndarray) -> None:
    """Preparation workers write disjoint byte ranges of the preallocated .npy files with plain
    file writes: unlike a memmap, this never counts the written pages in the worker's resident
    memory. A failure comes back to the main process as an OSError naming the file (one line)."""
    if not array.size:  # no rows, or no columns (a spec without numeric features)
        return
    with naming(path), open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.ascontiguousarray(array).data.cast("B"))


def sync_file(path: str) -> None:
    """What was written to `path` is on disk (before a journal or meta.json says so)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dataset_files(out: Path) -> set[str]:
    return {"meta.json", "prepare.json", "encoders.json", "encoders", *SPLITS}


def check_out(
    out: Path, overwrite: bool, marker: str = "meta.json", kind: str = "prepared dataset", owned=_dataset_files
) -> None:
    """`out` may be new or empty; a folder of this `kind` (it has `marker`) is replaced only with
    `overwrite` and only if everything in it is `owned(out)`'s; any other folder never is."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RecforgeError(f"{out}: exists and is not a folder")
    entries = {p.name for p in out.iterdir()}
    if marker in entries:
        if not overwrite:
            raise RecforgeError(f"{out}: already holds a {kind} ({marker}); replace it with --overwrite")
        others = entries - owned(out)
        if others:
            raise RecforgeError(f"{out}: holds other files too ({', '.join(sorted(others))}); not replacing it")
    elif entries:
        raise RecforgeError(f"{out}: exists, is not empty and is not a {kind}; choose a new or empty folder")


@contextlib.contextmanager
def new_folder(out: str | Path, overwrite: bool = False, check=None):
    """A folder beside `out` to write into (`.NAME.partial-XXXX`); it replaces `out` when the block
    succeeds and is removed when it fails, so `out` never holds half a dataset and a dataset being
    replaced stays as it was until the new one is complete. A failed write in it (a full disk)
    is reported as one about `out`. `check(out, overwrite)` refuses an `out` it must not replace
    (default: `check_out`, for prepared datasets)."""
    out = Path(out).expanduser()
    (check or check_out)(out, overwrite)
    with _built_in(temp_folder(out), out, removed_on=BaseException) as tmp:
        yield tmp


@contextlib.contextmanager
def resumable_folder(out: str | Path, fingerprint: str, overwrite: bool = False):
    """`new_folder`'s, but named by the preparation's `fingerprint` (`.NAME.resumable-HASH`) and kept
    when the process is interrupted (Ctrl-C, a kill), so that the same command continues in it
    (`journal`). An error (bad input, a full disk) removes it as `new_folder` does. The folder is
    locked while it is used: the same command run twice at once refuses the second, naming the
    first's PID."""
    out = Path(out).expanduser()
    tmp = out.parent / f".{out.name}.resumable-{fingerprint}"
    while True:
        check_out(out, overwrite)
        with naming(out, inside=tmp):
            tmp.mkdir(parents=True, exist_ok=True)
        with held_alone(tmp, f"the same preparation into {out}") as still_there:
            if still_there:  # else the holder just moved it into place: check `out` again
                with _built_in(tmp, out, removed_on=Exception) as tmp:
                    yield tmp
                return


@contextlib.contextmanager
def _built_in(tmp: Path, out: Path, removed_on: type[BaseException]):
    """The block writes into `tmp`, which then replaces `out`; `tmp` is removed when the block
    raises `removed_on` (a failed write in it is reported as one about `out`)."""
    try:
        with naming(out, inside=tmp):
            yield tmp
        _put_in_place(tmp, out)
    except removed_on:
        remove(tmp)
        raise


def _put_in_place(tmp: Path, out: Path) -> None:
    """Move the complete folder `tmp` to `out`, replacing what is there in one step where it can."""
    if not out.exists():
        replace(tmp, out)
    elif exchange(tmp, out):  # the old dataset is now at tmp
        remove(tmp)
    else:
        old = temp_folder(out)
        replace(out, old)
        replace(tmp, out)
        remove(old)


def finish(folder: Path, meta: CTRMeta) -> None:
    """Mark the folder complete: meta.json is written last, atomically."""
    write_json(folder / "meta.json", meta.to_json())


def load_meta(folder: str | Path) -> CTRMeta:
    folder = Path(folder).expanduser()
    path = folder / "meta.json"
    if not path.is_file():
        raise RecforgeError(
            f"{path}: not a prepared click log; run `recforge prepare criteo-kaggle|criteo-terabyte|ctr "
            f"--data-dir RAW --out {folder}` first"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT:
        raise RecforgeError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    return CTRMeta(
        raw["dense"],
        raw["sparse"],
        raw["cardinalities"],
        raw["rows"],
        raw.get("info", {}),
        raw.get("multi_hot", []),
        raw.get("crossed", []),
        raw.get("features", {}),
        raw.get("group"),
        raw.get("item"),
    )


def load_split(folder: str | Path, split: str) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of one split (the optional ones that it has)."""
    folder = Path(folder).expanduser()
    if not (folder / split / "label.npy").is_file():
        raise RecforgeError(f"{folder / split}: split not prepared")
    names = [*COLUMNS, *(name for name in OPTIONAL if (folder / split / f"{name}.npy").is_file())]
    return {name: np.load(folder / split / f"{name}.npy", mmap_mode="r") for name in names}

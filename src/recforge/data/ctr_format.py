"""The prepared click-log format: the contract between preparation and training.

A prepared dataset is a folder:

    meta.json                       format, features, cardinalities, rows per split, provenance
    <split>/label.npy               uint8   [rows]          0/1 clicks
    <split>/dense.npy               float32 [rows, dense]   numeric features, already transformed
    <split>/sparse.npy              int32   [rows, fields]  categorical ids, 0..cardinality-1

for splits `train`, `valid`, `test` (a split may be absent). Every array is a `.npy` file, so it
memory-maps and the trainer slices large contiguous batches without per-row Python. Writers
preallocate the arrays (`open_memmap`) once the row counts are known and fill them in place,
so memory stays bounded whatever the input size; a folder is complete once meta.json exists.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recforge.errors import RecforgeError
from recforge.files import write_json

FORMAT = "recforge-ctr-1"
SPLITS = ("train", "valid", "test")
COLUMNS = {"label": np.uint8, "dense": np.float32, "sparse": np.int32}


@dataclass
class CTRMeta:
    dense_names: list[str]
    sparse_names: list[str]
    cardinalities: list[int]
    rows: dict[str, int]  # split -> rows
    info: dict = field(default_factory=dict)  # provenance, options, e.g. a synthetic set's Bayes AUC

    def to_json(self) -> dict:
        return {"format": FORMAT, "dense": self.dense_names, "sparse": self.sparse_names,
                "cardinalities": self.cardinalities, "rows": self.rows, "info": self.info}


def allocate(folder: Path, split: str, rows: int, num_dense: int, num_sparse: int) -> dict[str, np.memmap]:
    """Writable, preallocated arrays of one split (filled in place by the caller)."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    shapes = {"label": (rows,), "dense": (rows, num_dense), "sparse": (rows, num_sparse)}
    return {
        name: np.lib.format.open_memmap(folder / split / f"{name}.npy", mode="w+", dtype=dtype, shape=shapes[name])
        for name, dtype in COLUMNS.items()
    }


@contextlib.contextmanager
def new_folder(out: Path):
    """A temp folder beside `out` to write into; renamed to `out` when the block succeeds, removed
    when it fails, so `out` never holds half a dataset. `out` must not exist or be empty."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise RecforgeError(f"{out}: exists and is not empty; remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    return CTRMeta(raw["dense"], raw["sparse"], raw["cardinalities"], raw["rows"], raw.get("info", {}))


def load_split(folder: str | Path, split: str) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of one split."""
    folder = Path(folder).expanduser()
    if not (folder / split / "label.npy").is_file():
        raise RecforgeError(f"{folder / split}: split not prepared")
    return {name: np.load(folder / split / f"{name}.npy", mmap_mode="r") for name in COLUMNS}

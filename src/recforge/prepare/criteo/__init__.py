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
- The passes are the pass engine's (`prepare/engine.py`, which `prepare ctr` runs on too): `rows`
  (newlines only; needed first when the split boundary depends on the total, as in Kaggle, or
  when there is no vocabulary), `fit` (the vocabularies, on train rows only) and `write`.
- Parsing is pyarrow's CSV reader on 1 MiB blocks (larger blocks parse several times slower);
  hex is decoded with SWAR arithmetic on 8-byte words; vocabulary ids are found by hashing
  (small vocabularies) or a bucket directory over the sorted values (large ones), both several
  times faster than `searchsorted`. Python loops over rows happen only after a chunk has
  failed, to name the first bad line and field.
- Workers write their rows with plain file writes at byte offsets of the preallocated `.npy`
  files (disjoint ranges), so written pages never count in a worker's resident memory.
- Output goes to a hidden folder beside `out` named after the inputs and options
  (`.NAME.resumable-HASH`); meta.json is written last and the folder is renamed into place, so
  an interruption never leaves something that looks complete. Interrupted (Ctrl-C, a kill), the
  folder stays with its journal (`prepare/journal.py`), and the same command continues after the
  last finished chunk of the pass it was in, to byte-identical output. How the run went
  (seconds, rows/s per process per pass, peak memory) is in prepare.json, not meta.json.

The modules, by stage: `layout` (input files, units, block reading and line counting, the split),
`parse` (bytes -> arrays), `click_log` (Criteo as the engine's `ClickLog`: count, fit, encode, the
split and meta.json); `prepare/engine.py` runs the passes, `prepare/workers.py` the process pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from recforge.core.errors import RecforgeError
from recforge.data.ctr_format import CTRMeta
from recforge.prepare.criteo.click_log import CriteoLog
from recforge.prepare.criteo.layout import MAX_CHUNK_BYTES, _mean_line_bytes, _units, criteo_files
from recforge.prepare.criteo.parse import DENSE, FIELDS, SPARSE
from recforge.prepare.engine import prepare_click_log
from recforge.prepare.journal import fingerprint

__all__ = ["DENSE", "FIELDS", "KINDS", "SPARSE", "criteo_files", "prepare_criteo"]

KINDS = ("criteo-kaggle", "criteo-terabyte")


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
    options = {"kind": kind, "units": [asdict(u) for u in units], "chunk_bytes": chunk_bytes}
    key = fingerprint(files, min_frequency=min_frequency, max_ind_range=max_ind_range, **options)
    click_log = CriteoLog(kind, files, chunk_bytes, line_bytes, min_frequency, max_ind_range)
    meta, report = prepare_click_log(click_log, units, out, key, overwrite, processes, click_log.meta, started, log)
    if report is None:  # finished by an earlier attempt
        return meta
    peaks = report["peak_memory_bytes"]
    log("  peak resident memory: " + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in peaks.items()))
    seconds = report["seconds"]
    log(
        f"{kind}: "
        + ", ".join(f"{s} {n:,}" for s, n in meta.rows.items())
        + f" rows; {sum(meta.cardinalities):,} embedding rows over {len(SPARSE)} fields; "
        f"{seconds:.1f} s -> {out}"
    )
    return meta


def _check_int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise RecforgeError(f"{name} must be an integer {bound}, got {value!r}")

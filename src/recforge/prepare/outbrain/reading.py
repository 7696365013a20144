"""Reading the Outbrain CSV files: the inputs, their batches (errors name file, line and field),
id columns, clicks_train's rows, and the lookup of ids in the tables indexed by id."""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recforge.core.errors import DataError, RecforgeError
from recforge.data.tabular import os_error, read_delimited, row_error, text_problem

BLOCK_BYTES = 1 << 20  # CSV bytes per batch (~75k clicks_train rows; larger batches are hardly faster)
NULLS = ["", "\\N"]  # Kaggle's files write a missing platform as \N
_MAX_ID = (1 << 31) - 1


def _input(data_dir: Path, name: str) -> Path:
    path = _optional_input(data_dir, name)
    if path is None:
        raise RecforgeError(
            f"{data_dir / name}: file not found (nor {name}.gz); the Outbrain Click Prediction "
            "files from Kaggle go in --data-dir under their own names"
        )
    return path


def _optional_input(data_dir: Path, name: str) -> Path | None:
    return next((p for p in (data_dir / name, data_dir / f"{name}.gz") if p.is_file()), None)


def _header(path: Path) -> list[str]:
    with (
        gzip.open(path, "rt", encoding="utf-8", errors="replace")
        if path.suffix == ".gz"
        else open(path, encoding="utf-8", errors="replace")
    ) as f:
        return [name.strip().strip('"') for name in f.readline().rstrip("\r\n").split(",")]


def _batches(
    path: Path, types: dict[str, pa.DataType], required: tuple[str, ...] = ()
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first data row, batch) of a CSV file's `types` columns, streamed. A missing value in a
    `required` column, a bad number or a wrong field count is a DataError with its line."""
    try:
        header = _header(path)
    except (OSError, EOFError, zlib.error) as error:  # a corrupt .gz
        raise os_error(path, error) from None
    for name in types:
        if name not in header:  # a binary or empty file, or a header without the column
            raise text_problem(path, BLOCK_BYTES) or DataError(
                path, 1, name, f"column not found in the header ({', '.join(header)})"
            )
    row = 0
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES),
            convert_options=pcsv.ConvertOptions(
                column_types=types, include_columns=list(types), null_values=NULLS, strings_can_be_null=True
            ),
        )
        for batch in reader:
            for name in required:
                column = batch.column(name)
                if column.null_count:
                    at = row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                    raise row_error(path, at, name, "missing value")
            yield row, batch
            row += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
        if path.suffix != ".gz":
            # The slow path names the first bad line and field (and raises there).
            read_delimited(path, delimiter=",", missing_ok=True, columns=types)
        problem = text_problem(path, BLOCK_BYTES)  # binary data or a line longer than a block
        if problem:
            raise problem from None
        message = str(error).splitlines()[0]
        column = re.match(r"In CSV column #(\d+)", message)  # the file's column index
        field = header[int(column.group(1))] if column and int(column.group(1)) < len(header) else None
        raise DataError(path, None, field, f"{message} (in the block of rows after data row {row:,})") from None
    except OSError as error:
        raise os_error(path, error) from None
    if row == 0:
        raise DataError(path, None, None, "no data rows")


def _ids(column: pa.Array, path: Path, first_row: int, name: str) -> np.ndarray:
    """An int32 id per row (-1: missing); ids must be in 0..2^31-1."""
    ids = pc.fill_null(column, -1).to_numpy(zero_copy_only=False)
    bad = (ids < -1) | (ids > _MAX_ID) | ((ids == -1) & column.is_valid().to_numpy(zero_copy_only=False))
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise row_error(path, first_row + at, name, f"an id must be an integer in 0..{_MAX_ID}, got {ids[at]}")
    return ids.astype(np.int32)


def _at(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table[ids] for int32 ids; a missing id (-1, which is 2^32 - 1 as uint32) or one beyond the
    table reads the last row (the missing value)."""
    return table[np.minimum(ids.astype(np.uint32), len(table) - 1)]


def _clicks(path: Path) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, display_id, ad_id, clicked) batches of clicks_train."""
    types = {"display_id": pa.int64(), "ad_id": pa.int64(), "clicked": pa.int64()}
    for first, batch in _batches(path, types, required=tuple(types)):
        clicked = batch.column("clicked").to_numpy()
        bad = (clicked != 0) & (clicked != 1)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise row_error(path, first + at, "clicked", f"must be 0 or 1, got {clicked[at]}")
        yield (
            first,
            _ids(batch.column("display_id"), path, first, "display_id"),
            _ids(batch.column("ad_id"), path, first, "ad_id"),
            clicked.astype(np.int8),
        )

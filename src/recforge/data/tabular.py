"""Columnar reading of delimited text and Parquet files with pyarrow.

The fast path is pyarrow's multithreaded CSV reader. Only when it fails is the file read again,
slowly, to find the first bad row, so that the error names file, line and field.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.errors import DataError, RecforgeError

_INT = re.compile(r"^\s*[+-]?\d+\s*$")
_FLOAT = re.compile(r"^\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|NaN|Inf))\s*$")


def require_file(path: Path, hint: str = "") -> Path:
    if not path.is_file():
        raise RecforgeError(f"{path}: file not found{'; ' + hint if hint else ''}")
    return path


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    columns: dict[str, pa.DataType | None],
    column_names: list[str] | None = None,
    encoding: str = "utf8",
) -> pa.Table:
    """Read `columns` (name -> type, None to infer) of a delimited file.

    `column_names` names the columns of a file without a header line; otherwise the first line is
    the header. Missing values in the requested columns are errors.
    """
    header_lines = 0 if column_names else 1
    read = pcsv.ReadOptions(column_names=column_names, encoding=encoding, block_size=1 << 24)
    parse = pcsv.ParseOptions(delimiter=delimiter)
    convert = pcsv.ConvertOptions(
        include_columns=list(columns),
        column_types={k: v for k, v in columns.items() if v is not None},
    )
    try:
        table = pcsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        raise _locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, e) from None
    for name in columns:
        column = table.column(name)
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(path, first + 1 + header_lines, name, "missing value")
    return table


def _locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, error) -> Exception:
    """Re-read the file single-threaded and as text to find the first row that failed to parse."""
    bad_rows = []

    def on_invalid(row):
        bad_rows.append(row)
        return "skip"

    try:
        header = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=column_names, encoding=encoding, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        message = str(e)
        if "not exist" in message or "not found" in message.lower():
            return DataError(path, 1 if header_lines else None, None, f"missing column(s) {', '.join(columns)}: {message}")
        return DataError(path, None, None, message)
    if bad_rows:
        row = bad_rows[0]
        return DataError(path, row.number, None, f"expected {row.expected_columns} fields, found {row.actual_columns}: {row.text[:80]!r}")
    missing = [c for c in columns if c not in header.column_names]
    if missing:
        return DataError(path, 1, missing[0], "column not found in the header")
    for name, dtype in columns.items():
        if dtype is None or pa.types.is_string(dtype):
            continue
        pattern = _INT if pa.types.is_integer(dtype) else _FLOAT
        text = header.column(name).to_numpy(zero_copy_only=False)
        ok = pc.fill_null(pc.match_substring_regex(header.column(name), pattern.pattern), False)
        bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        if bad.size:
            value = text[bad[0]]
            what = "missing value" if value in (None, "") else f"not {'an integer' if pattern is _INT else 'a number'}: {value!r}"
            return DataError(path, int(bad[0]) + 1 + header_lines, name, what)
    return DataError(path, None, None, str(error))


def read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, KeyError) as e:
        raise DataError(path, None, None, f"cannot read columns {', '.join(columns)}: {e}") from None
    for name in columns:
        column = table.column(name)
        if column.null_count:
            first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(path, f"row {first}", name, "missing value")
    return table


def to_numpy(column: pa.ChunkedArray) -> np.ndarray | pa.ChunkedArray:
    """Numeric columns become numpy arrays; text stays an Arrow array (for hashing)."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.int64()).to_numpy()
    if pa.types.is_date(column.type):
        return column.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy()
    return column.cast(pa.string())

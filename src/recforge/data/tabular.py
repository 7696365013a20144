"""Columnar reading of delimited text and Parquet files with pyarrow.

The fast path is pyarrow's multithreaded CSV reader. Only when it fails (or finds a missing
value) is the file looked at again, slowly, to name the first bad row's line and field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.errors import DataError, RecforgeError

_INT = r"^\s*[+-]?\d+\s*$"
_FLOAT = r"^\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|NaN|Inf))\s*$"
_CANONICAL_INT = r"^(0|-?[1-9]\d{0,17})$"  # integer text that round-trips through int64


def require_file(path: Path, hint: str = "") -> Path:
    if not path.is_file():
        raise RecforgeError(f"{path}: file not found{'; ' + hint if hint else ''}")
    return path


def line_number(path: Path, ordinal: int) -> int:
    """1-based line of the `ordinal`-th (0-based) non-blank line: pyarrow skips blank lines."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    newlines = np.flatnonzero(data == ord("\n"))
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [data.size]])
    length = ends - starts
    length -= (length > 0) & (data[np.maximum(ends - 1, 0)] == ord("\r"))
    nonblank = np.flatnonzero(length > 0)
    return int(nonblank[ordinal]) + 1 if ordinal < nonblank.size else int(ordinal) + 1


def row_error(path: Path, row: int, field: str | None, message: str) -> DataError:
    """The error of data row `row` (0-based, after one header line): its line in a plain text
    file; its row number where lines cannot be counted (compressed files, Parquet)."""
    if path.suffix in (".gz", ".parquet"):
        return DataError(path, None, field, f"{message} (data row {row + 1:,})")
    return DataError(path, line_number(path, row + 1), field, message)


def read_delimited(
    path: Path,
    *,
    delimiter: str,
    columns: dict[str, pa.DataType | None],
    column_names: list[str] | None = None,
    encoding: str = "utf8",
    missing_ok: bool = False,
) -> pa.Table:
    """Read `columns` (name -> type, None to infer) of a delimited file.

    `column_names` names the columns of a file without a header line; otherwise the first line is
    the header. Missing values (empty fields) in the requested columns are errors unless `missing_ok`.
    """
    header_lines = 0 if column_names else 1
    read = pcsv.ReadOptions(column_names=column_names, encoding=encoding, block_size=1 << 24)
    parse = pcsv.ParseOptions(delimiter=delimiter)
    convert = pcsv.ConvertOptions(
        include_columns=list(columns),
        column_types={k: v for k, v in columns.items() if v is not None},
        strings_can_be_null=True,
    )
    try:
        table = pcsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        raise _locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, e, missing_ok) from None
    for name in columns:
        column = table.column(name)
        if (column.null_count and not missing_ok) or pa.types.is_binary(column.type):  # binary: not UTF-8
            raise _locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, None, missing_ok)
    return table


def _locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, error, missing_ok=False) -> Exception:
    """Re-read the file as raw bytes, single-threaded, to find the first row that cannot parse."""
    bad_rows = []

    def on_invalid(row):
        bad_rows.append(row)
        return "skip"

    try:
        raw = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=column_names, encoding=encoding, use_threads=False),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as e:
        return DataError(path, None, None, str(e).splitlines()[0])
    if bad_rows:
        row = bad_rows[0]
        return DataError(path, line_number(path, row.number - 1), None,
                         f"expected {row.expected_columns} fields, found {row.actual_columns}: {row.text[:80]!r}")
    for name in columns:
        if name not in raw.column_names:
            return DataError(path, 1 if header_lines else None, name, "column not found in the header")
    found = []  # (row, field, problem) of the first bad value of each column
    for name, dtype in columns.items():
        column = raw.column(name)
        problem = None
        if column.null_count and not missing_ok:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            found.append((row, name, "missing value"))
        if dtype is not None and (pa.types.is_integer(dtype) or pa.types.is_floating(dtype)):
            pattern, kind = (_INT, "an integer") if pa.types.is_integer(dtype) else (_FLOAT, "a number")
            ok = pc.fill_null(pc.match_substring_regex(column, pattern), True).to_numpy(zero_copy_only=False)
            if not ok.all():
                row = int(np.flatnonzero(~ok)[0])
                problem = (row, name, f"not {kind}: {column[row].as_py().decode(errors='replace')!r}")
        else:
            # Error path only: the fast reader has already failed, so a Python scan is affordable.
            for row, value in enumerate(column.to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    problem = (row, name, f"not valid UTF-8 text: {value[:40]!r}")
                    break
        if problem:
            found.append(problem)
    if found:
        row, name, message = min(found)
        return DataError(path, line_number(path, row + header_lines), name, message)
    return DataError(path, None, None, str(error).splitlines()[0] if error else "cannot parse")


def read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        present = set(pq.read_schema(path).names)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for name in columns:
        if name not in present:
            raise DataError(path, None, name, "column not found")
    table = pq.read_table(path, columns=columns)
    for name in columns:
        column = table.column(name)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(path, None, name, f"missing value in row {row + 1}")
    return table


def ids_to_numpy(column: pa.ChunkedArray) -> np.ndarray | pa.ChunkedArray:
    """Ids read as text: int64 when every value is a plain integer ('7', not '007' or '7.0'),
    so that numeric ids stay numbers without merging distinct strings; else Arrow strings."""
    if pa.types.is_integer(column.type):
        return column.to_numpy()
    text = column.cast(pa.string())
    if pc.all(pc.match_substring_regex(text, _CANONICAL_INT)).as_py():
        return text.cast(pa.int64()).to_numpy()
    return text


def to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """Numbers and dates (as int64 ticks) to numpy; text is an error for the caller to name."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.int64()).to_numpy()
    if pa.types.is_date(column.type):
        return column.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return column.to_numpy()
    raise TypeError(column.type)

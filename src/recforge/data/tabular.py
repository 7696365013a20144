"""Columnar reading of delimited text and Parquet files with pyarrow.

The fast path is pyarrow's multithreaded CSV reader. Only when it fails (or finds a missing
value) is the file looked at again, slowly, to name the first bad row's line and field.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.core.errors import DataError, RecforgeError

_INT = r"^\s*[+-]?\d+\s*$"
_FLOAT = r"^\s*([+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|NaN|Inf))\s*$"
_CANONICAL_INT = r"^(0|-?[1-9]\d{0,17})$"  # integer text that round-trips through int64
BLOCK_BYTES = 1 << 24  # pyarrow's CSV block: the longest line it can read
_KINDS = {"integer": "an integer", "floating": "a number", "string": "text or a number"}  # a value of pa.types.is_*


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


def row_error(path: Path, row: int, field: str | None, message: str, header_lines: int = 1) -> DataError:
    """The error of data row `row` (0-based, after `header_lines` header lines): its line in a plain
    text file; its row number where lines cannot be counted (compressed files, Parquet)."""
    if path.suffix in (".gz", ".parquet"):
        return DataError(path, None, field, f"{message} (data row {row + 1:,})")
    return DataError(path, line_number(path, row + header_lines), field, message)


def text_problem(path: Path, block_size: int = BLOCK_BYTES, utf8: bool = False) -> DataError | None:
    """Error path: why `path` is not delimited text pyarrow can read, from one streaming pass over
    its bytes (decompressed for .gz): not valid gzip, no text at all, binary data (a NUL byte), a
    line longer than `block_size`, or (with `utf8`) bytes that are not UTF-8. None if none of these."""
    lines, pending, any_text = 0, b"", False  # complete lines read, the unfinished last line
    too_long = f"a line longer than {block_size >> 20} MiB (a lost line end or an unclosed quote?)"
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            while True:
                chunk = f.read(BLOCK_BYTES)
                data = pending + chunk
                end = data.rfind(b"\n") + 1 if chunk else len(data)  # whole lines: no UTF-8 character is cut
                whole, pending = data[:end], data[end:]
                newlines = np.flatnonzero(np.frombuffer(whole, np.uint8) == ord("\n"))
                ends = newlines if whole.endswith(b"\n") else np.r_[newlines, len(whole)]
                starts = np.r_[0, newlines + 1][: len(ends)]
                found = []  # (byte offset, problem)
                if (nul := whole.find(b"\0")) >= 0:
                    found.append((nul, "binary data (a NUL byte), not text"))
                if (long := np.flatnonzero(ends - starts > block_size)).size:
                    found.append((int(starts[long[0]]), too_long))
                if utf8:
                    try:
                        whole.decode("utf-8")
                    except UnicodeDecodeError as e:
                        found.append((e.start, f"not UTF-8 text (byte 0x{whole[e.start]:02x})"))
                if found:
                    offset, problem = min(found)
                    line = lines + int(np.searchsorted(newlines, offset)) + 1
                    if path.suffix == ".gz":
                        return DataError(path, None, None, f"{problem} (line {line:,} of the decompressed text)")
                    return DataError(path, line, None, problem)
                if len(pending) > block_size:
                    return DataError(path, lines + newlines.size + 1, None, too_long)
                any_text = any_text or bool(whole.strip())
                lines += newlines.size
                if not chunk:
                    break
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        return DataError(path, None, None, f"not a valid gzip file ({e})")
    return None if any_text else DataError(path, None, None, "no data rows (the file is empty)")


def os_error(path: Path, error: Exception) -> Exception:
    """An error reading `path` as it is, unless `path` is a corrupt .gz: then a DataError naming it
    (pyarrow's zlib errors are OSErrors without an errno)."""
    return (text_problem(path) if path.suffix == ".gz" else None) or error


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
    read = pcsv.ReadOptions(column_names=column_names, encoding=encoding, block_size=BLOCK_BYTES)
    parse = pcsv.ParseOptions(delimiter=delimiter)
    convert = pcsv.ConvertOptions(
        include_columns=list(columns),
        column_types={k: v for k, v in columns.items() if v is not None},
        strings_can_be_null=True,
    )
    try:
        table = pcsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as e:
        raise locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, e, missing_ok) from None
    except OSError as e:
        raise os_error(path, e) from None
    if table.num_rows == 0:
        raise DataError(path, None, None, "no data rows" + (" (only the header line)" if header_lines else ""))
    for name in columns:
        column = table.column(name)
        if (column.null_count and not missing_ok) or pa.types.is_binary(column.type):  # binary: not UTF-8
            raise locate_bad_row(path, delimiter, columns, column_names, encoding, header_lines, None, missing_ok)
    return table


def locate_bad_row(
    path, delimiter, columns, column_names, encoding, header_lines, error, missing_ok=False
) -> Exception:
    """Re-read the file as raw bytes, single-threaded, to find the first row that cannot parse."""
    problem = text_problem(path)  # empty, binary, a line too long to parse
    if problem:
        return problem
    if header_lines:  # a column missing from the header is named from the first block, before the slow read
        try:
            header = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(encoding=encoding, block_size=BLOCK_BYTES),
                parse_options=pcsv.ParseOptions(delimiter=delimiter),
            ).schema.names
        except pa.ArrowInvalid:
            header = columns  # the first block does not parse: the slow read below says why
        for name in columns:
            if name not in header:
                return DataError(path, 1, name, "column not found in the header")
    bad_rows = []

    def on_invalid(row):
        bad_rows.append(row)
        return "skip"

    # pyarrow decodes a bad row's text as UTF-8 before calling on_invalid; where it cannot, it prints
    # the UnicodeDecodeError as "unraisable" (a traceback on stderr) and fails the read: silence it.
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        raw = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(
                column_names=column_names, encoding=encoding, use_threads=False, block_size=BLOCK_BYTES
            ),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.binary() for c in columns}, strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as e:
        raw, error = None, e
    finally:
        sys.unraisablehook = hook
    if bad_rows:
        row = bad_rows[0]
        return row_error(
            path,
            row.number - 1 - header_lines,
            None,
            f"expected {row.expected_columns} fields, found {row.actual_columns}: {row.text[:80]!r}",
            header_lines,
        )
    if raw is None:
        return text_problem(path, utf8=encoding == "utf8") or DataError(path, None, None, str(error).splitlines()[0])
    for name in columns:
        if name not in raw.column_names:
            return DataError(path, 1 if header_lines else None, name, "column not found in the header")
    found = []  # (row, field, problem) of the first bad value of each column
    for name, dtype in columns.items():
        column = raw.column(name)
        bad: tuple[int, str] | None = None  # (row, problem)
        if column.null_count and not missing_ok:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            found.append((row, name, "missing value"))
        if dtype is not None and pa.types.is_integer(dtype):
            bad = first_bad_integer(column, dtype)
        elif dtype is not None and pa.types.is_floating(dtype):
            ok = pc.fill_null(pc.match_substring_regex(column, _FLOAT), True).to_numpy(zero_copy_only=False)
            if not ok.all():
                row = int(np.flatnonzero(~ok)[0])
                bad = (row, f"not a number: {shown(column[row].as_py())}")
        elif not _is_utf8(column):
            # Error path only: the fast reader has already failed, so a Python scan is affordable.
            for row, value in enumerate(column.to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    bad = (row, f"not valid UTF-8 text: {value[:40]!r}")
                    break
        if bad:
            found.append((bad[0], name, bad[1]))
    if found:
        row, name, message = min(found)
        return row_error(path, row, name, message, header_lines)
    return DataError(path, None, None, str(error).splitlines()[0] if error else "cannot parse")


def shown(value) -> str:
    """A value for a message: its repr, cut after 40 characters."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return repr(
        value if not isinstance(value, str) or len(value) <= 40 else value[:40] + f"... ({len(value):,} characters)"
    )


def first_bad_integer(column: pa.ChunkedArray, dtype: pa.DataType) -> tuple[int, str] | None:
    """(row, problem) of the first text (or raw bytes) value that is not an integer in `dtype`'s range."""
    integer = pc.fill_null(pc.match_substring_regex(column, _INT), True).to_numpy(zero_copy_only=False)
    info = np.iinfo(dtype.to_pandas_dtype())
    short = rf"^\s*[+-]?0*\d{{1,{len(str(info.max)) - 1}}}\s*$"  # too few digits to be out of range
    fits = pc.fill_null(pc.match_substring_regex(column, short), True).to_numpy(zero_copy_only=False)
    for row in np.flatnonzero(~fits):  # error path: only the long or non-integer values
        value = column[int(row)].as_py()
        text = (value.decode(errors="replace") if isinstance(value, bytes) else value).strip()
        if not integer[row]:
            return int(row), f"not an integer: {shown(text)}"
        if len(text.lstrip("+-").lstrip("0")) > len(str(info.max)) or not info.min <= int(text) <= info.max:
            return int(row), f"integer out of range for {dtype}: {shown(text)}"
    return None


def _is_utf8(column: pa.ChunkedArray) -> bool:
    try:
        column.cast(pa.string())  # validates UTF-8, vectorized
        return True
    except pa.ArrowInvalid:
        return False


def check_parquet(path: Path, columns) -> None:
    """`path` must be a Parquet file holding `columns`."""
    try:
        present = set(pq.read_schema(path).names)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for name in columns:
        if name not in present:
            raise DataError(path, None, name, "column not found")


def read_parquet(path: Path, columns: dict[str, pa.DataType | None]) -> pa.Table:
    """`columns` (name -> type, None to keep the file's) of a Parquet file: columns of numbers are
    kept as they are (ids, ratings), others converted by `convert` (numbers stored as text)."""
    check_parquet(path, columns)
    try:
        table = pq.read_table(path, columns=list(columns))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise DataError(path, None, None, "no data rows")
    converted = {}
    for name, dtype in columns.items():
        column = table.column(name)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(path, None, name, f"missing value in row {row + 1}")
        keep = dtype is None or pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        converted[name] = column if keep else convert(path, column, dtype, name)
    return pa.table(converted)


def convert(path: Path, column: pa.Array | pa.ChunkedArray, dtype: pa.DataType, name: str, first_row: int = 0):
    """A Parquet column as `dtype`, text parsed to numbers as in CSV files; a column of another kind
    (a list, say) or a value that does not convert is a DataError naming the column (and the row)."""
    if column.type == dtype:
        return column
    kind = next(words for type_name, words in _KINDS.items() if getattr(pa.types, f"is_{type_name}")(dtype))
    try:
        return column.cast(dtype)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise DataError(path, None, name, f"holds {column.type} values, expected {kind} per row") from None
    except pa.ArrowInvalid:
        lo, hi = 0, len(column)  # bisection for the first value that does not cast: column[lo:hi] holds it
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                column.slice(lo, mid - lo).cast(dtype)
                lo = mid
            except pa.ArrowInvalid:
                hi = mid
        raise row_error(path, first_row + lo, name, f"not {kind}: {shown(column[lo].as_py())}") from None


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

"""Criteo's text format: bytes of whole lines -> arrays. A fast path (pyarrow, then vectorized
checks) and, only after it has failed, a slow one that names the first bad line and field."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from recforge.data.encoders import Numeric, hex_words, one_array
from recforge.prepare.engine import BadLine

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
FIELDS = ["label", *DENSE, *SPARSE]

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


@dataclass
class _Chunk:
    rows: int
    label: np.ndarray  # uint8 [rows]
    dense: np.ndarray | None  # float32 [rows, 13]; None in the vocabulary pass
    values: np.ndarray  # uint32 [26, rows], 0 where missing
    present: np.ndarray  # bool [26, rows]


def _parse_located(data: bytes | bytearray, lines_before: int, dense: bool = True) -> _Chunk:
    """`_parse`, with a failure's line index made relative to the unit."""
    try:
        return _parse(data, dense)
    except BadLine as bad:
        line, field, message = bad.args
        raise BadLine(None if line is None else lines_before + line, field, message) from None


def _parse(data: bytes | bytearray, dense: bool = True) -> _Chunk:
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
        raise BadLine(*_locate(data))
    return chunk


def _columns(table: pa.Table, rows: int, transform_dense: bool) -> _Chunk | None:
    label_column = table.column("label")
    if label_column.null_count:
        return None
    label = label_column.to_numpy()
    if rows and (label.min() < 0 or label.max() > 1):
        return None
    dense = None
    if transform_dense:
        dense = np.empty((rows, len(DENSE)), np.float32)
        for j, name in enumerate(DENSE):
            dense[:, j] = LOG1P.apply(table.column(name).fill_null(0).to_numpy())  # float64, rounded once to float32
    values = np.zeros((len(SPARSE), rows), np.uint32)
    present = np.zeros((len(SPARSE), rows), bool)
    for j, name in enumerate(SPARSE):
        array = one_array(table.column(name))
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


def _locate(data: bytes | bytearray) -> tuple[int | None, str | None, str]:
    """Error path only (the fast path has failed): the first bad line of a block, field by field,
    in Python. Accepts exactly what the fast path accepts."""
    data = bytes(data)  # (a copy, on this path only)
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

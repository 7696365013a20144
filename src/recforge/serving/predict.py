"""`recforge predict`: a CSV or Parquet file of raw click-log rows -> scores.parquet, through the
bundle's encoders and model, a batch of rows at a time (bounded memory), with a progress bar.

The output has one `probability` per input row, in input order. It is written beside its name and
renamed when complete, so a failed or killed run leaves no half file. A bad value is one error
naming the file, its line (a Parquet file: its row) and the column.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.core.errors import RecforgeError
from recforge.core.files import atomic_write
from recforge.core.progress import Progress
from recforge.data.tabular import convert, locate_bad_row, require_file, row_error
from recforge.serving.bundle import Bundle
from recforge.tasks.serving import RequestError, RowScoringAssets


def _batches(path: Path, names: list[str], rows: int):
    """(first data row, table of the raw input columns) of a CSV (read as text) or Parquet file."""
    if path.suffix == ".parquet":
        source = pq.ParquetFile(path)
        missing = [n for n in names if n not in source.schema_arrow.names]
        if missing:
            raise RecforgeError(f"{path}: no column '{missing[0]}' (the bundle's inputs: manifest.json)")
        start = 0
        for batch in source.iter_batches(batch_size=rows, columns=names):
            yield start, pa.Table.from_batches([batch])
            start += batch.num_rows
        return
    columns = dict.fromkeys(names, pa.string())
    try:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
    except (UnicodeDecodeError, csv.Error):
        raise locate_bad_row(path, ",", columns, None, "utf8", 1, None, missing_ok=True) from None
    missing = [n for n in names if n not in header]
    if missing:
        raise RecforgeError(f"{path}:1: no column '{missing[0]}' in the header (the bundle's inputs: manifest.json)")
    # Text, converted below, so that a bad value is found with its line; blocks of ~`rows` lines.
    convert_options = pcsv.ConvertOptions(column_types=columns, include_columns=names)
    block = max(1 << 16, min(1 << 26, path.stat().st_size * rows // max(1, _rows(path))))
    start = 0
    try:
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=block), convert_options=convert_options)
        for batch in reader:
            yield start, pa.Table.from_batches([batch])
            start += batch.num_rows
    except pa.ArrowInvalid as e:  # a line of too few or too many fields, bytes that are not text
        raise locate_bad_row(path, ",", columns, None, "utf8", 1, e, missing_ok=True) from None


def _missing_as_null(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A CSV number column read as text: an empty field is a missing value, as when preparation
    read the file."""
    if not pa.types.is_string(column.type):
        return column
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:  # newlines, counted in C a block at a time
        return max(0, sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b"")) - 1)


def predict(bundle: Bundle, path: str | Path, output: str | Path, batch_rows: int = 65_536, log=print) -> int:
    """Score every row of `path` into `output`; returns the number of rows."""
    path, output = Path(path).expanduser(), Path(output).expanduser()
    assets = bundle.assets
    if not isinstance(assets, RowScoringAssets):
        raise RecforgeError(f"recforge predict scores raw rows; {assets.what_it_does}")
    require_file(path)
    inputs = assets.inputs
    names = [c["name"] for c in inputs]
    progress = Progress(_rows(path), f"predict {path.name}", unit="rows")
    done = 0

    def write(f):
        nonlocal done
        with pq.ParquetWriter(f, pa.schema([("probability", pa.float32())])) as writer:
            for first, table in _batches(path, names, batch_rows):
                columns = {
                    c["name"]: convert(path, _missing_as_null(table.column(c["name"])), pa.float64(), c["name"], first)
                    if c["type"] == "number"
                    else table.column(c["name"])
                    for c in inputs
                }
                try:
                    checked = assets.table({"columns": columns})
                except RequestError as e:  # its field: columns.NAME[i]
                    name, _, index = e.field.removeprefix("columns.").partition("[")
                    raise row_error(path, first + int(index.rstrip("]") or 0), name, e.message) from None
                scores = bundle.probabilities(assets.encode(checked))
                writer.write_table(pa.table({"probability": pa.array(scores, pa.float32())}))
                done += len(scores)
                progress.update(len(scores))

    atomic_write(output, write, mode="wb")
    progress.close()
    log(f"{done:,} rows scored -> {output}")
    return done

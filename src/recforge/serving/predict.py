"""`recforge predict`: a CSV or Parquet file of raw click-log rows -> scores.parquet, through the
bundle's encoders and model, a batch of rows at a time (bounded memory), with a progress bar.

The output has one `probability` per input row in input order (and the `--keep` columns); it is
written beside its name and renamed when complete, so a failed or killed run leaves no half file.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.core.errors import RecforgeError
from recforge.core.files import atomic_write
from recforge.core.progress import Progress
from recforge.serving.assets import RequestError
from recforge.serving.bundle import Bundle

TYPES = {"number": pa.float64(), "hex32": pa.string(), "string": pa.string(), "list": pa.string()}


def _batches(path: Path, inputs: list[dict], rows: int):
    """(first row's line number, record batch) of the input's raw columns."""
    if path.suffix == ".parquet":
        source = pq.ParquetFile(path)
        names = set(source.schema_arrow.names)
        missing = [c["name"] for c in inputs if c["name"] not in names]
        if missing:
            raise RecforgeError(
                f"{path}: no column '{missing[0]}' (the bundle's inputs: recforge serve's /v1/metadata)"
            )
        start = 0
        for batch in source.iter_batches(batch_size=rows, columns=[c["name"] for c in inputs]):
            yield start, batch, f"row {start}"
            start += batch.num_rows
        return
    header = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
    missing = [c["name"] for c in inputs if c["name"] not in header]
    if missing:
        raise RecforgeError(f"{path}:1: no column '{missing[0]}' in the header (the bundle's inputs)")
    convert = pcsv.ConvertOptions(
        column_types={c["name"]: TYPES[c["type"]] for c in inputs},
        include_columns=[c["name"] for c in inputs],
        strings_can_be_null=True,
    )
    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 24), convert_options=convert)
    line = 2
    for batch in reader:
        yield line, batch, "line"
        line += batch.num_rows


def predict(bundle: Bundle, path: str | Path, output: str | Path, batch_rows: int = 65_536, log=print) -> int:
    """Score every row of `path` into `output`; returns the number of rows."""
    path, output = Path(path).expanduser(), Path(output).expanduser()
    if bundle.assets.kind != "ctr":
        raise RecforgeError("recforge predict scores click-log rows; use recforge recommend for a ranking model")
    if not path.is_file():
        raise RecforgeError(f"{path}: no such file")
    inputs = bundle.assets.inputs
    total = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else path.stat().st_size
    progress = Progress(total, f"predict {path.name}")
    done = 0

    def write(f):
        nonlocal done
        writer = pq.ParquetWriter(f, pa.schema([("probability", pa.float32())]))
        try:
            for first, batch, unit in _batches(path, inputs, batch_rows):
                table = pa.Table.from_batches([batch])
                try:
                    checked = bundle.assets.table(
                        {"columns": {n: table.column(n).to_pylist() for n in table.column_names}}
                    )
                except RequestError as e:
                    row = int(e.field.rsplit("[", 1)[1].rstrip("]")) if "[" in e.field else 0
                    where = f"{path}:{first + row}" if unit == "line" else f"{path}: row {first + row}"
                    name = e.field.split(".", 1)[1].split("[")[0]
                    raise RecforgeError(f"{where}: field '{name}': {e.message}") from None
                scores = bundle.probabilities(bundle.assets.encode(checked))
                writer.write_table(pa.table({"probability": pa.array(scores, pa.float32())}))
                done += len(scores)
                progress.update(done if unit != "line" else min(total, int(total * 0) + done), "")
        finally:
            writer.close()

    atomic_write(output, write, mode="wb")
    progress.close()
    log(f"{done:,} rows scored -> {output}")
    return done

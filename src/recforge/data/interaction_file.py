"""Any CSV/TSV or Parquet file of interactions, with configurable column names.

User and item ids may be integers or strings; rating and timestamp columns are optional
(`--rating-column none`); timestamps may be numbers or dates. Without timestamps the order of
rows in the file decides which interaction of a user is the latest.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from recforge.config import DataConfig
from recforge.core.errors import RecforgeError
from recforge.data.implicit import RawInteractions
from recforge.data.tabular import ids_to_numpy, read_delimited, read_parquet, require_file, to_numpy


def interaction_path(cfg: DataConfig) -> Path:
    if cfg.data_dir is None and cfg.data_file is None:
        raise RecforgeError("--dataset csv needs --data-file FILE (or --data-dir holding one .csv/.tsv/.parquet file)")
    base = Path(cfg.data_dir or ".").expanduser()
    if cfg.data_file:
        return require_file(base / cfg.data_file)
    if base.is_file():
        return base
    found = sorted(p for ext in ("*.csv", "*.tsv", "*.parquet") for p in base.glob(ext))
    if len(found) != 1:
        raise RecforgeError(
            f"{base}: expected exactly one .csv/.tsv/.parquet file, found {len(found)}; name it with --data-file"
        )
    return found[0]


def sources(cfg: DataConfig) -> list[Path]:
    return [interaction_path(cfg)]


def read(cfg: DataConfig) -> RawInteractions:
    path = interaction_path(cfg)
    wanted = {cfg.user_column: pa.string(), cfg.item_column: pa.string()}
    if cfg.rating_column:
        wanted[cfg.rating_column] = pa.float32()
    if cfg.timestamp_column:
        wanted[cfg.timestamp_column] = None
    if path.suffix == ".parquet":
        table = read_parquet(path, wanted)
    else:
        delimiter = "\t" if path.suffix == ".tsv" and cfg.separator == "," else cfg.separator
        table = read_delimited(path, delimiter=delimiter, columns=wanted)
    timestamps = None
    if cfg.timestamp_column:
        try:
            timestamps = to_numpy(table.column(cfg.timestamp_column))
        except TypeError:
            raise RecforgeError(f"{path}: field '{cfg.timestamp_column}': holds text, not numbers or dates") from None
    return RawInteractions(
        users=ids_to_numpy(table.column(cfg.user_column)),
        items=ids_to_numpy(table.column(cfg.item_column)),
        ratings=table.column(cfg.rating_column).to_numpy() if cfg.rating_column else None,
        timestamps=timestamps,
    )

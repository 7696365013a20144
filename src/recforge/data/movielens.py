"""MovieLens ratings in their three historical layouts, with movie titles where present.

- ml-100k: `u.data`, tab-separated `user item rating timestamp`, no header; titles in `u.item`.
- ml-1m, ml-10m: `ratings.dat`, `user::item::rating::timestamp`; titles in `movies.dat`.
- ml-20m, ml-25m, ml-latest, ml-latest-small: `ratings.csv` with a header; titles in `movies.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recforge.config import DataConfig
from recforge.core.errors import DataError, RecforgeError
from recforge.data.implicit import RawInteractions
from recforge.data.tabular import first_bad_integer, read_delimited, require_file, row_error, text_problem


@dataclass(frozen=True)
class Layout:
    folder: str  # the folder the GroupLens zip unpacks to
    ratings: str
    titles: str
    encoding: str = "utf8"


LAYOUTS = {
    "ml-100k": Layout("ml-100k", "u.data", "u.item", "latin-1"),
    "ml-1m": Layout("ml-1m", "ratings.dat", "movies.dat", "latin-1"),
    "ml-10m": Layout("ml-10M100K", "ratings.dat", "movies.dat"),
    "ml-20m": Layout("ml-20m", "ratings.csv", "movies.csv"),
    "ml-25m": Layout("ml-25m", "ratings.csv", "movies.csv"),
    "ml-latest": Layout("ml-latest", "ratings.csv", "movies.csv"),
    "ml-latest-small": Layout("ml-latest-small", "ratings.csv", "movies.csv"),
}
COLUMNS = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}


def dataset_dir(name: str, cfg: DataConfig) -> Path:
    """`--data-dir` may be the unpacked folder itself or the folder holding it."""
    layout = LAYOUTS[name]
    if cfg.data_dir is None:
        raise RecforgeError(f"--data-dir is required for {name} (get the files with `recforge download {name}`)")
    root = Path(cfg.data_dir).expanduser()
    for candidate in (root, root / layout.folder):
        if (candidate / layout.ratings).is_file():
            return candidate
    raise RecforgeError(
        f"{root / layout.ratings}: file not found; run `recforge download {name} --data-dir {root}` "
        f"or unpack {layout.folder}.zip from https://files.grouplens.org/datasets/movielens/ there"
    )


def sources(name: str, cfg: DataConfig) -> list[Path]:
    folder = dataset_dir(name, cfg)
    layout = LAYOUTS[name]
    return [p for p in (folder / layout.ratings, folder / layout.titles) if p.is_file()]


def read(name: str, cfg: DataConfig) -> RawInteractions:
    layout = LAYOUTS[name]
    folder = dataset_dir(name, cfg)
    path = require_file(folder / layout.ratings)
    if layout.ratings == "u.data":
        table = read_delimited(path, delimiter="\t", columns=COLUMNS, column_names=list(COLUMNS))
    elif layout.ratings == "ratings.dat":
        # '::' separated: split on ':' and keep every other field.
        names = ["user", "_1", "item", "_3", "rating", "_5", "timestamp"]
        table = read_delimited(path, delimiter=":", columns=COLUMNS, column_names=names)
    else:
        renamed = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float32(), "timestamp": pa.int64()}
        table = read_delimited(path, delimiter=",", columns=renamed).rename_columns(list(COLUMNS))
    titles_path = folder / layout.titles
    return RawInteractions(
        users=table.column("user").to_numpy(),
        items=table.column("item").to_numpy(),
        ratings=table.column("rating").to_numpy(),
        timestamps=table.column("timestamp").to_numpy(),
        item_titles=read_titles(titles_path, layout.encoding) if titles_path.is_file() else None,
    )


def read_titles(path: Path, encoding: str) -> dict[str, np.ndarray]:
    if path.suffix == ".csv":
        table = read_delimited(path, delimiter=",", columns={"movieId": pa.int64(), "title": pa.string()})
        return {
            "ids": table.column("movieId").to_numpy(),
            "titles": table.column("title").to_numpy(zero_copy_only=False),
        }
    # u.item ('|') and movies.dat ('::'): titles may hold ':' or quotes, so split whole lines.
    try:
        lines = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=["line"], encoding=encoding),
            parse_options=pcsv.ParseOptions(delimiter="\x1f", quote_char=False),
        ).column("line")
    except pa.ArrowInvalid as e:  # a binary file, say
        raise text_problem(path) or DataError(path, None, None, str(e).splitlines()[0]) from None
    parts = pc.split_pattern(lines, "|" if path.name == "u.item" else "::", max_splits=2)
    id_text = pc.utf8_trim_whitespace(pc.list_element(parts, 0))
    try:
        ids = id_text.cast(pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        row, problem = first_bad_integer(id_text, pa.int64()) or (0, "not an integer")  # (the cast found one)
        raise text_problem(path) or row_error(path, row, "movie id", problem, header_lines=0) from None
    return {"ids": ids, "titles": pc.list_element(parts, 1).to_numpy(zero_copy_only=False)}

"""Outbrain Click Prediction (Kaggle 2016) -> a prepared click log for Wide & Deep.

Inputs in one folder, under their Kaggle names, plain or `.gz`:

    clicks_train.csv        display_id,ad_id,clicked          87M rows: the click log
    events.csv              display_id,uuid,document_id,timestamp,platform,geo_location
    promoted_content.csv    ad_id,document_id,campaign_id,advertiser_id
    documents_meta.csv      document_id,source_id,publisher_id,publish_time
    documents_topics.csv    document_id,topic_id,confidence_level      (also
    documents_entities.csv  document_id,entity_id,confidence_level      top 3 kept
    documents_categories.csv document_id,category_id,confidence_level   per document)
    page_views_sample.csv   uuid,document_id,timestamp,platform,geo_location,traffic_source (optional)

What it does (docs/outbrain.md lists every column):

1. The small tables are streamed into numpy arrays indexed by their id (events by display_id,
   ads by ad_id, documents by document_id; Kaggle numbers them densely 1..N). Text values
   (platform, geo_location, topic/entity/category ids) become codes of a dictionary; each
   document keeps its 3 most confident topics, entities and categories ([documents, 3] arrays,
   -1 after the list ends).
2. A display goes to `valid` iff a seeded 64-bit hash of its display_id falls under
   `valid_fraction` (`valid_displays`), so all ads of a display are in one split.
3. Pass 1 streams clicks_train and counts views and clicks of the TRAIN rows only per key:
   request level the displayed document, its source and publisher, geo_location (and its country
   and state) and platform; item level the ad_id, the ad's document, campaign, advertiser, and the
   source and publisher of the ad's document. A smoothed CTR
   `(clicks + prior * CTR_PRIOR_VIEWS) / (views + CTR_PRIOR_VIEWS)` (prior: the train click
   rate) and the view count follow from them: rows of valid displays never
   contributed to any feature. (Train rows do see their own click in these counts, as in
   NVIDIA's preparation; the prior's weight keeps that small for rarely shown ads.)
4. Pass 2 streams clicks_train again and writes one Parquet feature table per split into a
   temporary folder beside `out`, in batches; `ctr_spec.prepare_ctr` then turns them into the
   prepared folder with the preset spec recforge/data/specs/outbrain.yaml (hashing,
   multi-hot lists, tags, group = display_id, item = ad_id), and the temporary folder is removed.

Memory is bounded by the small tables (about 1 GB for the real data), never by clicks_train.
Ids outside a table (an ad missing from promoted_content, say) give missing features, counted
in the log. Bad values are DataErrors naming file, line and field; finding the line re-reads the
file on that error path.
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recforge.core.errors import DataError, RecforgeError
from recforge.core.files import naming, remove, temp_folder
from recforge.core.progress import Progress
from recforge.core.shipped import FEATURE_SPECS
from recforge.data.ctr_format import CTRMeta, check_out
from recforge.data.ctr_spec import prepare_ctr
from recforge.data.tabular import os_error, read_delimited, row_error, text_problem

SPEC = FEATURE_SPECS / "outbrain.yaml"
KAGGLE_EPOCH_MS = 1465876799998  # events.timestamp is milliseconds since this instant (2016-06-14 03:59:59.998 UTC)
DAY_MS = 86_400_000
CTR_PRIOR_VIEWS = 10.0  # the prior CTR counts as this many views
TOP = 3  # topics / entities / categories kept per document
MISSING_DAYS = -1.0  # days since publication when a time is missing (log1p(max(x, 0)) makes it 0)
BLOCK_BYTES = 1 << 20  # CSV bytes per batch (~75k clicks_train rows; larger batches are hardly faster)
NULLS = ["", "\\N"]  # Kaggle's files write a missing platform as \N
HOUR_MS = 3_600_000
# Smoothed train CTR + train views per key; the request keys describe the display (page, reader),
# the item keys the ad. Every key is an int32 code per row (-1: missing), see _Tables.rows.
REQUEST_CTR_KEYS = (
    "document_id",
    "source_id",
    "publisher_id",
    "geo_location",
    "geo_location_country",
    "geo_location_state",
    "platform",
)
ITEM_CTR_KEYS = ("ad_id", "document_id_promo", "campaign_id", "advertiser_id", "source_id_promo", "publisher_id_promo")
CTR_KEYS = REQUEST_CTR_KEYS + ITEM_CTR_KEYS
LISTS = {
    "topics": ("documents_topics.csv", "topic_id"),
    "entities": ("documents_entities.csv", "entity_id"),
    "categories": ("documents_categories.csv", "category_id"),
}
_MAX_ID = (1 << 31) - 1


def feature_columns() -> dict[str, list[str]]:
    """The feature table's columns by kind, as prepare_outbrain writes them."""
    return {
        "keys": ["clicked", "display_id", "ad_id"],
        "request": [
            "document_id",
            "platform",
            "geo_location",
            "geo_location_country",
            "geo_location_state",
            "source_id",
            "publisher_id",
            "event_hour",
            "event_weekday",
        ],
        "item": ["document_id_promo", "campaign_id", "advertiser_id", "source_id_promo", "publisher_id_promo"],
        "multi_hot": [f"{side}_{kind}" for side in ("document", "promo") for kind in LISTS],
        "numeric": [
            *(f"{key}_{what}" for key in CTR_KEYS for what in ("ctr", "count")),  # request keys, then item keys
            "days_since_published",
            "days_since_published_promo",
            *(f"{kind}_similarity" for kind in LISTS),
            "document_page_views",
        ],
    }


def valid_displays(display_ids: np.ndarray, valid_fraction: float, seed: int = 0) -> np.ndarray:
    """True for the displays that go to `valid`: a seeded splitmix64 hash of the display_id,
    as a fraction in [0, 1), below `valid_fraction`."""
    with np.errstate(over="ignore"):
        x = np.asarray(display_ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53 < valid_fraction


def prepare_outbrain(
    data_dir: str | Path,
    out: str | Path,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> CTRMeta:
    """Prepare Kaggle's Outbrain Click Prediction files in `data_dir` into the folder `out`
    (new, empty, or with `overwrite` a prepared folder to replace)."""
    started = time.perf_counter()
    if isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float)) or not 0 <= valid_fraction < 1:
        raise RecforgeError(f"valid_fraction must be a number in [0, 1), got {valid_fraction!r}")
    data_dir, out = Path(data_dir).expanduser(), Path(out).expanduser()
    check_out(out, overwrite)
    files = {
        name: _input(data_dir, name)
        for name in (
            "clicks_train.csv",
            "events.csv",
            "promoted_content.csv",
            "documents_meta.csv",
            *(f for f, _ in LISTS.values()),
        )
    }
    page_views = _input(data_dir, "page_views_sample.csv", required=False)

    tables = _Tables.load(files, page_views, log)
    counts, rows = _count_train(files["clicks_train.csv"], tables, valid_fraction, seed, log)
    if not rows["train"]:
        raise RecforgeError(
            f"{files['clicks_train.csv']}: no train rows (valid_fraction {valid_fraction} took every display)"
        )
    prior = rows["train_clicks"] / rows["train"]
    ctr = {key: counts[key].tables(prior) for key in CTR_KEYS}

    features = temp_folder(out)
    try:
        with naming(out, inside=features):  # a full disk is reported as one about `out`
            _write_features(
                files["clicks_train.csv"],
                tables,
                ctr,
                valid_fraction,
                seed,
                features,
                rows["train"] + rows["valid"],
                log,
            )
        info = {
            "source": "outbrain",
            "data_dir": str(data_dir),
            "files": sorted(p.name for p in [*files.values(), page_views] if p),
            "split": f"display_id hashed with seed {seed}: {valid_fraction:g} of the displays are valid",
            "valid_fraction": valid_fraction,
            "seed": seed,
            "train_click_rate": float(prior),
            "ctr": f"(train clicks + {prior:.4f} * {CTR_PRIOR_VIEWS:g}) / (train views + {CTR_PRIOR_VIEWS:g})",
            "missing": tables.missing,
        }
        meta = prepare_ctr(SPEC, features, out, log=log, overwrite=overwrite, info=info)
    finally:
        remove(features)
    log(
        f"outbrain: {', '.join(f'{s} {n:,}' for s, n in meta.rows.items())} rows "
        f"in {time.perf_counter() - started:.1f} s -> {out}"
    )
    return meta


# ----------------------------------------------------------------------------- reading CSV files


def _input(data_dir: Path, name: str, required: bool = True) -> Path | None:
    for path in (data_dir / name, data_dir / f"{name}.gz"):
        if path.is_file():
            return path
    if required:
        raise RecforgeError(
            f"{data_dir / name}: file not found (nor {name}.gz); the Outbrain Click Prediction "
            "files from Kaggle go in --data-dir under their own names"
        )
    return None


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


class _Dictionary:
    """Codes 0..V-1 for text values, in order of first appearance (null -> -1)."""

    def __init__(self):
        self.values = pa.array([], pa.string())

    def encode(self, column: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(column)
        local = encoded.dictionary
        position = pc.fill_null(pc.index_in(local, value_set=self.values), -1).to_numpy(zero_copy_only=False).copy()
        fresh = np.flatnonzero(position < 0)
        if fresh.size:
            position[fresh] = len(self.values) + np.arange(fresh.size)
            self.values = pa.concat_arrays([self.values, local.take(pa.array(fresh))])
        indices = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return np.where(indices >= 0, position[np.maximum(indices, 0)], -1).astype(np.int32)

    def text(self, codes: np.ndarray) -> pa.Array:
        return self.values.take(pa.array(codes, mask=codes < 0))


class _ById:
    """Columns indexed by an integer id, grown as batches arrive; one spare last row holds the
    missing value, which unknown ids read (`_at`). Kaggle's ids are dense (1..N): an id far
    beyond the rows read is an error rather than a huge allocation."""

    def __init__(self, path: Path, key: str, columns: dict[str, tuple[np.dtype, float]]):
        self.path, self.key = path, key
        self.spec = {**columns, "known": (np.bool_, False)}
        self.columns = {name: np.full(1, missing, dtype) for name, (dtype, missing) in self.spec.items()}
        self.rows = 0

    def put(self, ids: np.ndarray, first_row: int, values: dict[str, np.ndarray]) -> None:
        self.rows += len(ids)
        if (ids < 0).any():
            raise row_error(self.path, first_row + int(np.flatnonzero(ids < 0)[0]), self.key, "missing value")
        top = int(ids.max(initial=-1)) + 1
        if top > 16 * self.rows + (1 << 24):
            at = first_row + int(np.argmax(ids))
            raise row_error(
                self.path,
                at,
                self.key,
                f"id {top - 1} is far beyond the {self.rows:,} rows read; "
                "ids are expected to be numbered densely (1..N) as in Kaggle's files",
            )
        size = len(next(iter(self.columns.values())))
        if top + 1 > size:
            grown = max(top + 1, 2 * size)
            for name, (dtype, missing) in self.spec.items():
                column = np.full(grown, missing, dtype)
                column[: size - 1] = self.columns[name][: size - 1]
                self.columns[name] = column
        for name, column in self.columns.items():
            column[ids] = values[name] if name != "known" else True

    def done(self) -> dict[str, np.ndarray]:
        """The columns, trimmed to the largest id + 1 plus the missing row."""
        top = int(np.flatnonzero(self.columns["known"]).max(initial=-1))
        out = {}
        for name, column in self.columns.items():
            trimmed = np.empty(top + 2, column.dtype)
            trimmed[:-1] = column[: top + 1]
            trimmed[-1] = self.spec[name][1]
            out[name] = trimmed
        self.columns = {}
        return out


class _Lists:
    """Each document's TOP values by confidence: codes [documents + 1, TOP] (-1 after the list
    ends; the last row is the missing document's), confidences and the vectors' norms."""

    def __init__(self, path: Path, value: str):
        self.dictionary = _Dictionary()
        documents, codes, confidence = [], [], []
        types = {"document_id": pa.int64(), value: pa.string(), "confidence_level": pa.float64()}
        for first, batch in _batches(path, types, required=("document_id", value)):
            documents.append(_ids(batch.column("document_id"), path, first, "document_id"))
            codes.append(self.dictionary.encode(batch.column(value)))
            weight = pc.fill_null(batch.column("confidence_level"), 0.0).to_numpy(zero_copy_only=False)
            confidence.append(np.nan_to_num(np.maximum(weight, 0.0)).astype(np.float32))
        document = np.concatenate(documents) if documents else np.zeros(0, np.int32)
        code = np.concatenate(codes) if codes else np.zeros(0, np.int32)
        weight = np.concatenate(confidence) if confidence else np.zeros(0, np.float32)
        del documents, codes, confidence
        order = np.lexsort((code, -weight, document))  # by document, most confident first, then code
        document, code, weight = document[order], code[order], weight[order]
        del order
        starts = np.flatnonzero(np.r_[True, document[1:] != document[:-1]]) if document.size else np.zeros(0, np.int64)
        rank = np.arange(document.size) - np.repeat(starts, np.diff(np.r_[starts, document.size]))
        keep = rank < TOP
        size = int(document.max(initial=-1)) + 2
        self.codes = np.full((size, TOP), -1, np.int32)
        self.weights = np.zeros((size, TOP), np.float32)
        self.codes[document[keep], rank[keep]] = code[keep]
        self.weights[document[keep], rank[keep]] = weight[keep]
        self.norms = np.sqrt((self.weights.astype(np.float64) ** 2).sum(axis=1)).astype(np.float32)

    def joined(self, documents: np.ndarray) -> pa.Array:
        """Each document's values joined by '|' ('' for none)."""
        codes = _at(self.codes, documents)
        present = codes >= 0  # values are packed to the left
        offsets = np.zeros(len(codes) + 1, np.int32)
        np.cumsum(present.sum(axis=1), out=offsets[1:])
        values = self.dictionary.values.take(pa.array(codes[present]))
        return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), "|")

    def cosine(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Confidence-weighted cosine similarity of documents a and b (0 when either has none)."""
        ca, cb = _at(self.codes, a), _at(self.codes, b)
        wa, wb = _at(self.weights, a), _at(self.weights, b)
        match = (ca[:, :, None] == cb[:, None, :]) & (ca[:, :, None] >= 0)
        dot = (match * (wa[:, :, None] * wb[:, None, :])).sum(axis=(1, 2))
        norm = _at(self.norms, a) * _at(self.norms, b)
        return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- the small tables


class _Tables:
    """Everything but clicks_train, indexed by id."""

    events: dict[str, np.ndarray]
    ads: dict[str, np.ndarray]
    documents: dict[str, np.ndarray]
    lists: dict[str, _Lists]
    page_views: np.ndarray
    platform: _Dictionary
    geo: _Dictionary
    geo_country: pa.Array  # text per geo code
    geo_state: pa.Array
    geo_country_code: np.ndarray  # int32 code per geo code (+ the missing row, -1)
    geo_state_code: np.ndarray
    missing: dict[str, int]

    @classmethod
    def load(cls, files: dict[str, Path], page_views: Path | None, log) -> _Tables:
        self = cls()
        started = time.perf_counter()
        path = files["events.csv"]
        self.platform, self.geo = _Dictionary(), _Dictionary()
        events = _ById(
            path,
            "display_id",
            {
                "document_id": (np.int32, -1),
                "day": (np.float32, np.nan),
                "platform": (np.int16, -1),
                "geo": (np.int32, -1),
                "hour": (np.int8, -1),
                "weekday": (np.int8, -1),
            },
        )
        types = {
            "display_id": pa.int64(),
            "document_id": pa.int64(),
            "timestamp": pa.int64(),
            "platform": pa.string(),
            "geo_location": pa.string(),
        }
        for first, batch in _batches(path, types, required=("display_id",)):
            timestamp = batch.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
            known = batch.column("timestamp").is_valid().to_numpy(zero_copy_only=False)
            with np.errstate(over="ignore"):  # UTC instant in ms; floor division and % keep hour 0-23, weekday 0-6
                utc = (
                    pc.fill_null(batch.column("timestamp"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
                    + KAGGLE_EPOCH_MS
                )
            events.put(
                _ids(batch.column("display_id"), path, first, "display_id"),
                first,
                {
                    "document_id": _ids(batch.column("document_id"), path, first, "document_id"),
                    "day": (timestamp / DAY_MS).astype(np.float32),
                    "hour": np.where(known, utc // HOUR_MS % 24, -1).astype(np.int8),
                    "weekday": np.where(known, (utc // DAY_MS + 3) % 7, -1).astype(
                        np.int8
                    ),  # 1970-01-01 was a Thursday (3)
                    "platform": self.platform.encode(batch.column("platform")).astype(np.int16),
                    "geo": self.geo.encode(batch.column("geo_location")),
                },
            )
        self.events = events.done()
        # "US>CA>807" -> country "US", state "US>CA" (None when the location has no state part).
        parts = pc.split_pattern(self.geo.values, ">")
        self.geo_country = pc.binary_join(pc.list_slice(parts, 0, 1), ">")
        state = pc.binary_join(pc.list_slice(parts, 0, 2), ">")
        self.geo_state = pc.if_else(
            pc.greater_equal(pc.list_value_length(parts), 2), state, pa.scalar(None, pa.string())
        )
        # Integer codes of countries and states per geo code, for their CTR counts (the last row: missing geo).
        self.geo_country_code, self.geo_state_code = (
            np.r_[pc.fill_null(pc.dictionary_encode(text).indices, -1).to_numpy(zero_copy_only=False), -1].astype(
                np.int32
            )
            for text in (self.geo_country, self.geo_state)
        )

        path = files["promoted_content.csv"]
        ads = _ById(
            path,
            "ad_id",
            {"document_id": (np.int32, -1), "campaign_id": (np.int32, -1), "advertiser_id": (np.int32, -1)},
        )
        for first, batch in _batches(
            path,
            {name: pa.int64() for name in ("ad_id", "document_id", "campaign_id", "advertiser_id")},
            required=("ad_id",),
        ):
            ads.put(
                _ids(batch.column("ad_id"), path, first, "ad_id"),
                first,
                {
                    name: _ids(batch.column(name), path, first, name)
                    for name in ("document_id", "campaign_id", "advertiser_id")
                },
            )
        self.ads = ads.done()

        path = files["documents_meta.csv"]
        documents = _ById(
            path,
            "document_id",
            {"source_id": (np.int32, -1), "publisher_id": (np.int32, -1), "day": (np.float32, np.nan)},
        )
        types = {
            "document_id": pa.int64(),
            "source_id": pa.int64(),
            "publisher_id": pa.int64(),
            "publish_time": pa.string(),
        }
        for first, batch in _batches(path, types, required=("document_id",)):
            published = pc.coalesce(
                *(
                    pc.strptime(batch.column("publish_time"), format=f, unit="s", error_is_null=True)
                    for f in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d")
                )
            )
            ms = pc.cast(published, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64) * 1000.0
            documents.put(
                _ids(batch.column("document_id"), path, first, "document_id"),
                first,
                {
                    "source_id": _ids(batch.column("source_id"), path, first, "source_id"),
                    "publisher_id": _ids(batch.column("publisher_id"), path, first, "publisher_id"),
                    "day": ((ms - KAGGLE_EPOCH_MS) / DAY_MS).astype(np.float32),
                },
            )
        self.documents = documents.done()
        self.lists = {kind: _Lists(files[name], value) for kind, (name, value) in LISTS.items()}

        self.page_views = np.zeros(1, np.int64)
        if page_views is not None:
            for first, batch in _batches(page_views, {"document_id": pa.int64()}, required=("document_id",)):
                ids = _ids(batch.column("document_id"), page_views, first, "document_id")
                counts = np.bincount(ids, minlength=len(self.page_views) - 1)
                grown = np.zeros(max(len(counts), len(self.page_views) - 1) + 1, np.int64)
                grown[: len(self.page_views) - 1] = self.page_views[:-1]
                grown[: len(counts)] += counts
                self.page_views = grown
        self.missing = {
            "display_id not in events": 0,
            "ad_id not in promoted_content": 0,
            "document_id not in documents_meta": 0,
        }
        log(
            f"outbrain: {len(self.events['document_id']) - 1:,} display ids, "
            f"{len(self.ads['document_id']) - 1:,} ad ids, "
            f"{len(self.documents['source_id']) - 1:,} document ids, "
            + ", ".join(f"{len(v.dictionary.values):,} {k}" for k, v in self.lists.items())
            + f" loaded in {time.perf_counter() - started:.1f} s"
        )
        return self

    def rows(self, display_id: np.ndarray, ad_id: np.ndarray) -> dict[str, np.ndarray]:
        """The ids (or text codes) behind each click-log row (-1: missing)."""
        geo = _at(self.events["geo"], display_id)
        row = {
            "display_id": display_id,
            "ad_id": ad_id,
            "document_id": _at(self.events["document_id"], display_id),
            "platform": _at(self.events["platform"], display_id).astype(np.int32),
            "geo_location": geo,
            "geo_location_country": _at(self.geo_country_code, geo),
            "geo_location_state": _at(self.geo_state_code, geo),
            "document_id_promo": _at(self.ads["document_id"], ad_id),
            "campaign_id": _at(self.ads["campaign_id"], ad_id),
            "advertiser_id": _at(self.ads["advertiser_id"], ad_id),
        }
        for side in ("", "_promo"):
            document = row[f"document_id{side}"]
            row[f"source_id{side}"] = _at(self.documents["source_id"], document)
            row[f"publisher_id{side}"] = _at(self.documents["publisher_id"], document)
        return row

    def note_missing(self, display_id: np.ndarray, ad_id: np.ndarray, row: dict[str, np.ndarray]) -> None:
        self.missing["display_id not in events"] += int((~_at(self.events["known"], display_id)).sum())
        self.missing["ad_id not in promoted_content"] += int((~_at(self.ads["known"], ad_id)).sum())
        for side in ("", "_promo"):
            document = row[f"document_id{side}"]
            self.missing["document_id not in documents_meta"] += int(
                ((document >= 0) & ~_at(self.documents["known"], document)).sum()
            )


# ----------------------------------------------------------------------------- the passes


class _Counts:
    """Train views and clicks per id, grown as ids arrive."""

    def __init__(self):
        self.views = np.zeros(0, np.int64)
        self.clicks = np.zeros(0, np.int64)

    def add(self, keys: np.ndarray, clicked: np.ndarray) -> None:
        known = keys >= 0
        keys = keys[known]
        views = np.bincount(keys, minlength=len(self.views))
        clicks = np.bincount(keys, weights=clicked[known], minlength=len(self.views)).astype(np.int64)
        if len(views) > len(self.views):
            self.views = np.concatenate([self.views, np.zeros(len(views) - len(self.views), np.int64)])
            self.clicks = np.concatenate([self.clicks, np.zeros(len(views) - len(self.clicks), np.int64)])
        self.views += views
        self.clicks += clicks

    def tables(self, prior: float) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed CTR, views) per id, plus the missing row (the prior, 0 views)."""
        ctr = (self.clicks + prior * CTR_PRIOR_VIEWS) / (self.views + CTR_PRIOR_VIEWS)
        return np.r_[ctr, prior].astype(np.float32), np.r_[self.views, 0].astype(np.float32)


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


def _count_train(
    path: Path, tables: _Tables, valid_fraction: float, seed: int, log
) -> tuple[dict[str, _Counts], dict[str, int]]:
    """Pass 1: views and clicks of the train rows per CTR key, and the rows of each split."""
    started = time.perf_counter()
    counts = {key: _Counts() for key in CTR_KEYS}
    rows = {"train": 0, "valid": 0, "train_clicks": 0}
    known_ads = len(tables.ads["known"]) - 1
    known_documents = len(tables.documents["known"]) - 1
    for _, display_id, ad_id, clicked in _clicks(path):
        train = ~valid_displays(display_id, valid_fraction, seed)
        row = tables.rows(display_id[train], ad_id[train])
        # Ads outside promoted_content's id range are not counted (they read the prior), so that
        # a stray huge ad_id cannot make the count arrays huge.
        row["ad_id"] = np.where(row["ad_id"] < known_ads, row["ad_id"], -1)
        # The same for displayed documents beyond documents_meta's id range (events' ids are not checked for density).
        row["document_id"] = np.where(row["document_id"] < known_documents, row["document_id"], -1)
        for key in CTR_KEYS:
            counts[key].add(row[key], clicked[train])
        rows["train"] += int(train.sum())
        rows["valid"] += int((~train).sum())
        rows["train_clicks"] += int(clicked[train].sum())
    seconds = time.perf_counter() - started
    total = rows["train"] + rows["valid"]
    log(
        f"  pass 1 (train counts): {total:,} rows in {seconds:.1f} s, {total / max(seconds, 1e-9):,.0f} rows/s; "
        f"train {rows['train']:,}, valid {rows['valid']:,}"
    )
    return counts, rows


def _nullable(ids: np.ndarray) -> pa.Array:
    return pa.array(ids.astype(np.int64), mask=ids < 0)


def _write_features(
    path: Path, tables: _Tables, ctr: dict, valid_fraction: float, seed: int, folder: Path, total: int, log
) -> None:
    """Pass 2: the feature table of each split, as Parquet in `folder`."""
    started = time.perf_counter()
    progress = Progress(total, "outbrain features")
    writers: dict[str, pq.ParquetWriter] = {}

    def write(split: str, table: pa.Table | None, schema: pa.Schema) -> None:
        """Append `table` (None: only create the file) to the split's file."""
        with naming(folder / f"{split}.parquet"):  # pyarrow's write errors name no file
            if split not in writers:
                writers[split] = pq.ParquetWriter(folder / f"{split}.parquet", schema)
            if table is not None:
                writers[split].write_table(table)

    try:
        for _, display_id, ad_id, clicked in _clicks(path):
            table = _feature_table(tables, ctr, display_id, ad_id, clicked)
            valid = valid_displays(display_id, valid_fraction, seed)
            for split, mask in (("train", ~valid), ("valid", valid)):
                write(split, table.filter(pa.array(mask)), table.schema)
            progress.update(len(display_id))
        for split in ("train", "valid"):  # a split without rows is an empty file
            if split not in writers:
                write(
                    split,
                    None,
                    _feature_table(tables, ctr, *(np.zeros(0, t) for t in (np.int32, np.int32, np.int8))).schema,
                )
    finally:
        progress.close()
        for split, writer in writers.items():
            with naming(folder / f"{split}.parquet"):
                writer.close()
    seconds = time.perf_counter() - started
    log(f"  pass 2 (feature table): {total:,} rows in {seconds:.1f} s, {total / max(seconds, 1e-9):,.0f} rows/s")


def _feature_table(
    tables: _Tables, ctr: dict, display_id: np.ndarray, ad_id: np.ndarray, clicked: np.ndarray
) -> pa.Table:
    row = tables.rows(display_id, ad_id)
    tables.note_missing(display_id, ad_id, row)
    platform, geo = row["platform"], row["geo_location"]
    hour, weekday = _at(tables.events["hour"], display_id), _at(tables.events["weekday"], display_id)
    columns: dict[str, pa.Array] = {
        "clicked": pa.array(clicked),
        "display_id": pa.array(display_id.astype(np.int64)),
        "ad_id": pa.array(ad_id.astype(np.int64)),
        "document_id": _nullable(row["document_id"]),
        "platform": tables.platform.text(platform),
        "geo_location": tables.geo.text(geo),
        "geo_location_country": tables.geo_country.take(pa.array(geo, mask=geo < 0)),
        "geo_location_state": tables.geo_state.take(pa.array(geo, mask=geo < 0)),
        "source_id": _nullable(row["source_id"]),
        "publisher_id": _nullable(row["publisher_id"]),
        "event_hour": _nullable(hour),
        "event_weekday": _nullable(weekday),  # UTC, 0-23 and 0 Monday .. 6 Sunday
        **{
            name: _nullable(row[name])
            for name in ("document_id_promo", "campaign_id", "advertiser_id", "source_id_promo", "publisher_id_promo")
        },
    }
    for side, document in (("document", row["document_id"]), ("promo", row["document_id_promo"])):
        for kind, lists in tables.lists.items():
            columns[f"{side}_{kind}"] = lists.joined(document)
    for key in CTR_KEYS:
        rate, views = ctr[key]
        columns[f"{key}_ctr"] = pa.array(_at(rate, row[key]))
        columns[f"{key}_count"] = pa.array(_at(views, row[key]))
    event_day = _at(tables.events["day"], display_id)
    for name, document in (
        ("days_since_published", row["document_id"]),
        ("days_since_published_promo", row["document_id_promo"]),
    ):
        days = event_day - _at(tables.documents["day"], document)
        # Missing times -> MISSING_DAYS; a publication after the event (it happens in Kaggle's data) -> 0.
        columns[name] = pa.array(np.where(np.isnan(days), MISSING_DAYS, np.maximum(days, 0.0)).astype(np.float32))
    for kind, lists in tables.lists.items():
        columns[f"{kind}_similarity"] = pa.array(lists.cosine(row["document_id"], row["document_id_promo"]))
    columns["document_page_views"] = pa.array(_at(tables.page_views, row["document_id"]).astype(np.float32))
    return pa.table(columns)

"""Train counts and CTRs per key (pass 1) and the feature table of each split (pass 2)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recforge.core.files import naming
from recforge.core.progress import Progress
from recforge.prepare.outbrain.reading import _at, _clicks
from recforge.prepare.outbrain.tables import LISTS, _Tables

CTR_PRIOR_VIEWS = 10.0  # the prior CTR counts as this many views
MISSING_DAYS = -1.0  # days since publication when a time is missing (log1p(max(x, 0)) makes it 0)
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
    progress = Progress(total, "outbrain features", unit="rows")
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

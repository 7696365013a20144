"""The small tables, streamed into numpy arrays indexed by id: events by display_id, ads by
ad_id, documents by document_id, each document's top topics / entities / categories, page views;
text values as dictionary codes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import DTypeLike

from recforge.data.tabular import row_error
from recforge.prepare.outbrain.reading import _at, _batches, _ids

KAGGLE_EPOCH_MS = 1465876799998  # events.timestamp is milliseconds since this instant (2016-06-14 03:59:59.998 UTC)
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TOP = 3  # topics / entities / categories kept per document
LISTS = {
    "topics": ("documents_topics.csv", "topic_id"),
    "entities": ("documents_entities.csv", "entity_id"),
    "categories": ("documents_categories.csv", "category_id"),
}


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

    def __init__(self, path: Path, key: str, columns: dict[str, tuple[DTypeLike, float]]):
        self.path, self.key = path, key
        self.spec: dict[str, tuple[DTypeLike, float]] = {**columns, "known": (np.bool_, False)}
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
        self.platform, self.geo = _Dictionary(), _Dictionary()
        self.events = _events(files["events.csv"], self.platform, self.geo)
        self.geo_country, self.geo_state, self.geo_country_code, self.geo_state_code = _geo_parts(self.geo.values)
        self.ads = _ads(files["promoted_content.csv"])
        self.documents = _documents(files["documents_meta.csv"])
        self.lists = {kind: _Lists(files[name], value) for kind, (name, value) in LISTS.items()}
        self.page_views = _page_views(page_views)
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


def _events(path: Path, platform: _Dictionary, geo: _Dictionary) -> dict[str, np.ndarray]:
    """events.csv by display_id: the displayed document, the event's day, UTC hour and weekday, and
    the codes of its platform and geo_location (added to `platform` and `geo`)."""
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
                # 1970-01-01 was a Thursday (3)
                "weekday": np.where(known, (utc // DAY_MS + 3) % 7, -1).astype(np.int8),
                "platform": platform.encode(batch.column("platform")).astype(np.int16),
                "geo": geo.encode(batch.column("geo_location")),
            },
        )
    return events.done()


def _geo_parts(geo: pa.Array) -> tuple[pa.Array, pa.Array, np.ndarray, np.ndarray]:
    """Per geo code (`geo`: the geo_location texts): the country and state texts, and their codes."""
    # "US>CA>807" -> country "US", state "US>CA" (None when the location has no state part).
    parts = pc.split_pattern(geo, ">")
    country = pc.binary_join(pc.list_slice(parts, 0, 1), ">")
    state = pc.binary_join(pc.list_slice(parts, 0, 2), ">")
    state = pc.if_else(pc.greater_equal(pc.list_value_length(parts), 2), state, pa.scalar(None, pa.string()))
    # Integer codes of countries and states per geo code, for their CTR counts (the last row: missing geo).
    country_code, state_code = (
        np.r_[pc.fill_null(pc.dictionary_encode(text).indices, -1).to_numpy(zero_copy_only=False), -1].astype(np.int32)
        for text in (country, state)
    )
    return country, state, country_code, state_code


def _ads(path: Path) -> dict[str, np.ndarray]:
    """promoted_content.csv by ad_id: the ad's document, campaign and advertiser."""
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
    return ads.done()


def _documents(path: Path) -> dict[str, np.ndarray]:
    """documents_meta.csv by document_id: source, publisher and the day of publication."""
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
    return documents.done()


def _page_views(path: Path | None) -> np.ndarray:
    """Views per document_id in page_views_sample.csv (+ the missing row); none without the file."""
    views = np.zeros(1, np.int64)
    if path is not None:
        for first, batch in _batches(path, {"document_id": pa.int64()}, required=("document_id",)):
            ids = _ids(batch.column("document_id"), path, first, "document_id")
            counts = np.bincount(ids, minlength=len(views) - 1)
            grown = np.zeros(max(len(counts), len(views) - 1) + 1, np.int64)
            grown[: len(views) - 1] = views[:-1]
            grown[: len(counts)] += counts
            views = grown
    return views

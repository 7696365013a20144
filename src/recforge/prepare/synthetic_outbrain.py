"""A seeded, Outbrain-shaped world written as Kaggle's CSV files, with a planted click signal.

Documents belong to sources (of publishers) and carry 1-5 topics, 0-4 entities and 1-2
categories with decreasing confidence; ads point at a document and belong to campaigns of
advertisers; displays show 2-12 distinct ads on a document to a user, on platform 1-3, from a
location like "US>CA>807". Documents, ads, users and locations are drawn with power laws.

Each display has exactly one click, drawn from a softmax over its ads of

    quality[ad] + TOPIC_WEIGHT * cosine(top-3 topics of the displayed doc, of the ad's doc)

where quality = a campaign effect + an ad effect and the cosine is confidence-weighted, as
`outbrain.prepare_outbrain` computes `topics_similarity`. Ranking each display's ads by these
true probabilities gives the best achievable MAP@12 (returned, with a random ranking's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import torch

from recforge.core.files import naming
from recforge.metrics.ranking import map_at_k
from recforge.prepare.outbrain import DAY_MS, KAGGLE_EPOCH_MS, TOP

TOPIC_WEIGHT = 3.0
TOPICS, CATEGORIES = 300, 97
GEOS = [
    "US>CA>807",
    "US>NY>501",
    "US>TX>623",
    "US>FL>528",
    "US>IL>602",
    "US>CA>803",
    "US>WA>819",
    "US>GA>524",
    "US>PA>504",
    "US>MA>506",
    "CA>ON",
    "CA>BC",
    "GB>H9",
    "GB>E7",
    "AU>02",
    "IN>07",
    "DE>16",
    "FR>A8",
    "PH",
    "--",
]
FILES = (
    "clicks_train.csv",
    "events.csv",
    "promoted_content.csv",
    "documents_meta.csv",
    "documents_topics.csv",
    "documents_entities.csv",
    "documents_categories.csv",
    "page_views_sample.csv",
)


class _PowerLaw:
    """Draws of ids 1..n with Zipf-like frequencies; which ids are popular is fixed at creation
    (scattered over the id range), so every draw favours the same ones."""

    def __init__(self, rng: np.random.Generator, n: int, exponent: float = 1.0):
        weights = 1.0 / np.arange(1, n + 1) ** exponent
        self.rng, self.cdf, self.ids = rng, np.cumsum(weights) / weights.sum(), rng.permutation(n) + 1

    def __call__(self, size: int) -> np.ndarray:
        return self.ids[np.minimum(np.searchsorted(self.cdf, self.rng.random(size)), len(self.ids) - 1)]


def _hex(rng: np.random.Generator, n: int, digits: int) -> pa.Array:
    """n distinct-looking lowercase hex strings of `digits` digits."""
    nibbles = rng.integers(0, 16, (n, digits), dtype=np.uint8)
    chars = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles]
    offsets = np.arange(0, n * digits + 1, digits, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes()))


def _lists(rng: np.random.Generator, documents: int, low: int, high: int, values: int, exponent: float):
    """Per document low..high distinct values (primary by power law, the others at increasing
    offsets from it) with strictly decreasing confidences: codes [documents, high] (-1 padding)."""
    length = rng.integers(low, high + 1, documents)
    first = _PowerLaw(rng, values, exponent)(documents) - 1
    steps = rng.integers(1, max(2, values // (2 * high)), (documents, high))
    steps[:, 0] = 0
    codes = (first[:, None] + np.cumsum(steps, axis=1)) % values  # offsets below values: distinct
    confidence = np.sort(rng.uniform(0.02, 0.95, (documents, high)), axis=1)[:, ::-1].copy()
    present = np.arange(high)[None, :] < length[:, None]
    return np.where(present, codes, -1), np.where(present, confidence, 0.0)


def _repeated(display: np.ndarray, ad: np.ndarray) -> np.ndarray:
    """True for each row whose ad already appeared in its display."""
    order = np.lexsort((ad, display))
    repeated = np.zeros(len(ad), bool)
    repeated[order[1:]] = (display[order][1:] == display[order][:-1]) & (ad[order][1:] == ad[order][:-1])
    return repeated


def _cosine(codes: np.ndarray, weights: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ca, cb, wa, wb = codes[a, :TOP], codes[b, :TOP], weights[a, :TOP], weights[b, :TOP]
    match = (ca[:, :, None] == cb[:, None, :]) & (ca[:, :, None] >= 0)
    dot = (match * (wa[:, :, None] * wb[:, None, :])).sum(axis=(1, 2))
    norm = np.sqrt((wa**2).sum(1)) * np.sqrt((wb**2).sum(1))
    return np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)


def _write(path: Path, columns: dict[str, pa.Array | np.ndarray]) -> None:
    table = pa.table({k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for k, v in columns.items()})
    with naming(path), open(path, "wb") as f:  # an unquoted header, as Kaggle's; pyarrow's write errors name no file
        f.write((",".join(table.column_names) + "\n").encode())
        pcsv.write_csv(table, f, pcsv.WriteOptions(include_header=False, quoting_style="none"))


def _long(codes: np.ndarray, confidence: np.ndarray, names: pa.Array | None = None) -> dict:
    """(document_id, value, confidence) rows of the present list entries, values as ids or names."""
    document, position = np.nonzero(codes >= 0)
    value = codes[document, position]
    return {
        "document_id": document.astype(np.int64),
        "value": names.take(pa.array(value)) if names is not None else value,
        "confidence_level": np.round(confidence[document, position], 6),
    }


def write_outbrain_csvs(folder: str | Path, displays: int = 20000, seed: int = 0) -> dict:
    """Write the Kaggle-format CSVs of a synthetic world into `folder`; returns what was
    planted and MAP@12 of ranking by the true click probabilities (best) and at random."""
    if displays < 1:
        raise ValueError("displays must be positive")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_documents = max(200, displays // 4)
    n_ads = max(60, displays // 8)
    n_campaigns, n_users = max(10, n_ads // 5), max(50, displays // 2)
    n_advertisers, n_sources = max(4, n_campaigns // 4), max(10, n_documents // 40)
    n_publishers, n_entities = max(4, n_sources // 3), max(100, n_documents // 4)

    # Documents (ids 1..n; row 0 of every array is unused so that ids index it).
    source = np.r_[0, _PowerLaw(rng, n_sources)(n_documents)]
    publisher = np.r_[0, rng.integers(1, n_publishers + 1, n_sources + 1)][source]
    published = KAGGLE_EPOCH_MS - rng.exponential(60.0, n_documents + 1) * DAY_MS + 10 * DAY_MS  # some after the events
    topic, topic_weight = _lists(rng, n_documents + 1, 1, 5, TOPICS, 1.1)
    entity, entity_weight = _lists(rng, n_documents + 1, 0, 4, n_entities, 1.0)
    category, category_weight = _lists(rng, n_documents + 1, 1, 2, CATEGORIES, 0.8)
    for array in (topic, entity, category):
        array[0] = -1
    entity_names = _hex(rng, n_entities, 32)
    category_ids = pa.array(1000 + 100 * (np.arange(CATEGORIES) // 10) + np.arange(CATEGORIES) % 10)
    ids = np.arange(1, n_documents + 1)
    missing_meta = rng.random(n_documents) < 0.02
    published_text = pc.strftime(
        pa.array((published[1:] // 1000).astype(np.int64), pa.timestamp("s")), format="%Y-%m-%d %H:%M:%S"
    )
    _write(
        folder / "documents_meta.csv",
        {
            "document_id": ids,
            "source_id": pa.array(source[1:], mask=missing_meta),
            "publisher_id": pa.array(publisher[1:], mask=missing_meta),
            "publish_time": pc.if_else(
                pa.array(rng.random(n_documents) < 0.03), pa.scalar(None, pa.string()), published_text
            ),
        },
    )
    for name, (codes, weights, names) in {
        "topic_id": (topic, topic_weight, None),
        "entity_id": (entity, entity_weight, entity_names),
        "category_id": (category, category_weight, category_ids),
    }.items():
        rows = _long(codes, weights, names)
        order = rng.permutation(len(rows["document_id"]))  # Kaggle's rows are not sorted by confidence
        rows = {k: (v.take(pa.array(order)) if isinstance(v, pa.Array) else v[order]) for k, v in rows.items()}
        kind = name.split("_")[0].replace("entity", "entitie").replace("category", "categorie")
        _write(
            folder / f"documents_{kind}s.csv",
            {"document_id": rows["document_id"], name: rows["value"], "confidence_level": rows["confidence_level"]},
        )

    # Ads: a landing document, a campaign of an advertiser, and a planted quality.
    campaign = np.r_[0, _PowerLaw(rng, n_campaigns)(n_ads)]
    advertiser = np.r_[0, rng.integers(1, n_advertisers + 1, n_campaigns + 1)][campaign]
    ad_document = np.r_[0, rng.integers(1, n_documents + 1, n_ads)]
    quality = rng.normal(0.0, 0.6, n_campaigns + 1)[campaign] + rng.normal(0.0, 0.8, n_ads + 1)
    _write(
        folder / "promoted_content.csv",
        {
            "ad_id": np.arange(1, n_ads + 1),
            "document_id": ad_document[1:],
            "campaign_id": campaign[1:],
            "advertiser_id": advertiser[1:],
        },
    )

    # Events: who saw which document where and when.
    uuids = _hex(rng, n_users, 14)
    users, documents, geos = _PowerLaw(rng, n_users), _PowerLaw(rng, n_documents), _PowerLaw(rng, len(GEOS), 1.2)
    document = documents(displays)
    platform = rng.choice(np.array([1, 2, 3]), displays, p=[0.35, 0.5, 0.15])
    geo = pa.array(GEOS).take(pa.array(geos(displays) - 1, mask=rng.random(displays) < 0.01))
    timestamp = np.sort(rng.integers(0, 15 * DAY_MS, displays))
    _write(
        folder / "events.csv",
        {
            "display_id": np.arange(1, displays + 1),
            "uuid": uuids.take(pa.array(users(displays) - 1)),
            "document_id": document,
            "timestamp": timestamp,
            "platform": pa.array(platform, mask=rng.random(displays) < 0.005),
            "geo_location": geo,
        },
    )

    # Clicks: 2-12 distinct ads per display, one click from the softmax of the planted scores.
    shown = rng.integers(2, 13, displays)
    display = np.repeat(np.arange(displays), shown)
    ads = _PowerLaw(rng, n_ads, 0.9)
    ad = ads(len(display))
    for _ in range(100):  # redraw the ads repeated within a display
        repeated = _repeated(display, ad)
        if not repeated.any():
            break
        ad[repeated] = ads(int(repeated.sum()))
    keep = ~_repeated(display, ad)  # practically always all of them
    display, ad = display[keep], ad[keep]
    starts = np.flatnonzero(np.r_[True, display[1:] != display[:-1]])
    group = np.searchsorted(starts, np.arange(len(ad)), side="right") - 1
    score = quality[ad] + TOPIC_WEIGHT * _cosine(topic, topic_weight, document[display], ad_document[ad])
    noisy = score + rng.gumbel(size=len(ad))  # Gumbel-max draws from the softmax
    first = np.flatnonzero(noisy == np.maximum.reduceat(noisy, starts)[group])
    first = first[np.r_[True, display[first][1:] != display[first][:-1]]]  # one per display, even on ties
    clicked = np.zeros(len(ad), np.int8)
    clicked[first] = 1
    probability = np.exp(score - np.maximum.reduceat(score, starts)[group])
    probability /= np.add.reduceat(probability, starts)[group]
    _write(folder / "clicks_train.csv", {"display_id": display + 1, "ad_id": ad, "clicked": clicked})

    # A sample of page views, with the displays' popularity of documents.
    views = 3 * displays
    _write(
        folder / "page_views_sample.csv",
        {
            "uuid": uuids.take(pa.array(users(views) - 1)),
            "document_id": documents(views),
            "timestamp": rng.integers(0, 15 * DAY_MS, views),
            "platform": rng.choice(np.array([1, 2, 3]), views, p=[0.35, 0.5, 0.15]),
            "geo_location": pa.array(GEOS).take(pa.array(geos(views) - 1)),
            "traffic_source": rng.integers(1, 4, views),
        },
    )

    best = map_at_k(torch.from_numpy(probability), torch.from_numpy(clicked), torch.from_numpy(display))
    sizes = np.diff(np.r_[starts, len(ad)])
    harmonic = np.cumsum(1.0 / np.arange(1, 13))
    return {
        "folder": str(folder),
        "files": list(FILES),
        "seed": seed,
        "displays": displays,
        "rows": len(ad),
        "documents": n_documents,
        "ads": n_ads,
        "campaigns": n_campaigns,
        "advertisers": n_advertisers,
        "click_rate": float(clicked.mean()),
        "signal": (
            f"one click per display, softmax over its ads of quality[ad] (campaign effect N(0, 0.6) + ad "
            f"effect N(0, 0.8)) + {TOPIC_WEIGHT:g} * confidence-weighted cosine of the top-{TOP} topics of "
            "the displayed document and of the ad's document"
        ),
        "best_map12": best,
        "random_map12": float(np.mean(harmonic[sizes - 1] / sizes)),  # 1/rank, rank uniform
    }

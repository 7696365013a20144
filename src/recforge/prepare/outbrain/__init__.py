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
   prepared folder with the preset spec recforge/prepare/specs/outbrain.yaml (hashing,
   multi-hot lists, tags, group = display_id, item = ad_id), and the temporary folder is removed.

Memory is bounded by the small tables (about 1 GB for the real data), never by clicks_train.
Ids outside a table (an ad missing from promoted_content, say) give missing features, counted
in the log. Bad values are DataErrors naming file, line and field; finding the line re-reads the
file on that error path.

The modules: `reading` (CSV inputs, batches, id columns), `tables` (the small tables, step 1),
`features` (the split, the counts and CTRs, the feature table: steps 2-4).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from recforge.core.errors import RecforgeError
from recforge.core.files import naming, remove, temp_folder
from recforge.core.shipped import FEATURE_SPECS
from recforge.data.ctr_format import CTRMeta, check_out
from recforge.prepare.ctr_spec import prepare_ctr
from recforge.prepare.outbrain.features import (
    CTR_KEYS,
    CTR_PRIOR_VIEWS,
    REQUEST_CTR_KEYS,
    _count_train,
    _write_features,
    feature_columns,
    valid_displays,
)
from recforge.prepare.outbrain.reading import _input, _optional_input
from recforge.prepare.outbrain.tables import DAY_MS, HOUR_MS, KAGGLE_EPOCH_MS, LISTS, TOP, _Tables

__all__ = [
    "CTR_PRIOR_VIEWS",
    "DAY_MS",
    "HOUR_MS",
    "KAGGLE_EPOCH_MS",
    "REQUEST_CTR_KEYS",
    "SPEC",
    "TOP",
    "feature_columns",
    "prepare_outbrain",
    "valid_displays",
]

SPEC = FEATURE_SPECS / "outbrain.yaml"


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
    page_views = _optional_input(data_dir, "page_views_sample.csv")

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

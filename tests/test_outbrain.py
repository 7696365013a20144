"""Outbrain Click Prediction: Kaggle-format CSVs -> the prepared click log, and the generator."""

import gzip
import math
import shutil
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from recforge.core.errors import DataError, RecforgeError
from recforge.data.ctr_format import load_meta, load_split
from recforge.data.encoders import fnv1a as stable_hash
from recforge.prepare.outbrain import (
    CTR_PRIOR_VIEWS,
    DAY_MS,
    HOUR_MS,
    KAGGLE_EPOCH_MS,
    REQUEST_CTR_KEYS,
    feature_columns,
    prepare_outbrain,
    valid_displays,
)
from recforge.prepare.synthetic_outbrain import FILES, write_outbrain_csvs

QUIET = {"log": lambda *_: None}


def column(meta, split, name):
    """One prepared feature of a split: dense (numeric) or sparse (categorical) values."""
    if name in meta.dense_names:
        return np.asarray(split["dense"][:, meta.dense_names.index(name)])
    return np.asarray(split["sparse"][:, meta.sparse_names.index(name)])


def hashed(value: str, buckets: int) -> int:
    return 1 + int(stable_hash(pa.array([value]))[0]) % (buckets - 1)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    raw = tmp_path_factory.mktemp("outbrain") / "raw"
    return raw, write_outbrain_csvs(raw, displays=1500, seed=3)


def test_prepare_generated_csvs(generated, tmp_path):
    raw, info = generated
    meta = prepare_outbrain(raw, tmp_path / "prepared", valid_fraction=0.25, seed=5, **QUIET)
    assert set(meta.rows) == {"train", "valid"} and sum(meta.rows.values()) == info["rows"]
    assert meta.group == "display_id" and meta.item == "ad_id"
    assert [f["max_length"] for f in meta.multi_hot] == [3] * 6 and meta.multi_hot_width == 18
    assert meta.features["ad_id"] == {"tag": "item", "embedding_dim": 128}
    assert meta.features["document_id"]["tag"] == "request" and meta.features["ad_id_ctr"]["tag"] == "item"
    assert meta.features["event_hour"] == {"tag": "request", "embedding_dim": 16} == meta.features["event_weekday"]
    tags = [meta.features[name]["tag"] for name in meta.dense_names]
    assert len(meta.dense_names) == 32 and tags.count("request") == 16 and tags.count("item") == 16
    assert {f"{key}_{what}" for key in REQUEST_CTR_KEYS for what in ("ctr", "count")} | {
        "days_since_published",
        "document_page_views",
    } == {name for name, tag in zip(meta.dense_names, tags) if tag == "request"}
    assert meta.cardinalities[meta.sparse_names.index("event_hour")] == 25  # hours 0-23 (15 days of events) + missing
    assert meta.cardinalities[meta.sparse_names.index("event_weekday")] == 8
    columns = feature_columns()
    assert set(meta.dense_names) == set(columns["numeric"])
    assert set(meta.sparse_names) == set(columns["request"] + columns["item"] + ["ad_id"])
    assert meta.info["source"] == "outbrain" and meta.info["missing"]["ad_id not in promoted_content"] == 0
    assert load_meta(tmp_path / "prepared").info["train_click_rate"] == meta.info["train_click_rate"]
    train, valid = load_split(tmp_path / "prepared", "train"), load_split(tmp_path / "prepared", "valid")
    assert not set(np.asarray(train["group"]).tolist()) & set(np.asarray(valid["group"]).tolist())
    assert (
        valid_displays(np.asarray(valid["group"]), 0.25, 5).all()
        and not valid_displays(np.asarray(train["group"]), 0.25, 5).any()
    )
    assert 0.1 < meta.rows["valid"] / info["rows"] < 0.4
    for split in (train, valid):
        assert np.all(np.diff(split["group"]) >= 0)  # displays stay contiguous, in file order
        assert np.isfinite(split["dense"]).all()
        assert (np.asarray(split["sparse"]) < np.array(meta.cardinalities)).all() and (split["sparse"][:, 0] > 0).all()
        widths = (np.asarray(split["multi_hot"]) >= 0).reshape(-1, 6, 3).sum(axis=2)
        assert widths[:, 0].min() >= 1 and widths.max() == 3  # every document has a topic; lists cut at 3
    assert meta.cardinalities[meta.sparse_names.index("platform")] == 4  # platforms 1-3 and missing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # the feature tables are gone


def test_gzip_inputs_give_the_same_arrays(generated, tmp_path):
    raw, _ = generated
    zipped = tmp_path / "zipped"
    shutil.copytree(raw, zipped)
    for name in ("clicks_train.csv", "events.csv", "documents_topics.csv"):
        with open(zipped / name, "rb") as f, gzip.open(zipped / f"{name}.gz", "wb") as g:
            shutil.copyfileobj(f, g)
        (zipped / name).unlink()
    prepare_outbrain(raw, tmp_path / "a", **QUIET)
    prepare_outbrain(zipped, tmp_path / "b", **QUIET)
    for split in ("train", "valid"):
        a, b = load_split(tmp_path / "a", split), load_split(tmp_path / "b", split)
        assert all(np.array_equal(a[k], b[k]) for k in a)


# A hand-made world. Displays 1-3 are train, 4-5 valid (found from the split hash below).
# t1, t2 show document 10 (source 100, publisher 1000) in US>CA>807, t3 document 12 (source 103,
# publisher 1003) in US>NY>501 at 2016-06-17 01:00:00.000 UTC; all three on platform 2.
# v1 shows document 10 in GB on a missing platform, v2 document 11 (source 101) with no location
# and no timestamp.
T3_TIMESTAMP = 2 * DAY_MS + 21 * HOUR_MS + 2  # KAGGLE_EPOCH_MS is 2 ms before an hour


def tiny(folder, *, clicks=None):
    ids = np.arange(1, 200)
    in_valid = valid_displays(ids, 0.5, seed=0)
    t1, t2, t3 = ids[~in_valid][:3].tolist()
    v1, v2 = ids[in_valid][:2].tolist()
    rows = clicks or [
        (t1, 1, 1),
        (t1, 2, 0),
        (t2, 1, 1),
        (t2, 2, 0),
        (t3, 1, 0),
        (t3, 2, 1),
        (v1, 3, 1),
        (v1, 1, 0),
        (v2, 3, 0),
        (v2, 2, 1),
        (v2, 9, 0),
    ]  # ad 9 is not in promoted_content
    files = {
        "clicks_train.csv": "display_id,ad_id,clicked\n" + "".join(f"{d},{a},{c}\n" for d, a, c in rows),
        "events.csv": "display_id,uuid,document_id,timestamp,platform,geo_location\n"
        + "".join(f"{d},u{d},10,{2 * DAY_MS},2,US>CA>807\n" for d in (t1, t2))
        + f"{t3},u{t3},12,{T3_TIMESTAMP},2,US>NY>501\n"
        + f"{v1},u9,10,{3 * DAY_MS},\\N,GB\n{v2},u9,11,,2,\n",
        "promoted_content.csv": "ad_id,document_id,campaign_id,advertiser_id\n1,20,7,70\n2,21,8,70\n3,20,7,71\n",
        "documents_meta.csv": "document_id,source_id,publisher_id,publish_time\n10,100,1000,2016-06-10 03:59:59\n"
        "11,101,,\n12,103,1003,2016-06-12 00:00:00\n20,100,1001,2016-06-01 00:00:00\n21,102,1002,2016-06-20 00:00:00\n",
        # document 10: four topics (the least confident, 4, is dropped); 20: topic 1 only
        "documents_topics.csv": "document_id,topic_id,confidence_level\n"
        "10,4,0.1\n10,1,0.5\n10,2,0.5\n10,3,0.2\n20,1,0.9\n",
        "documents_entities.csv": "document_id,entity_id,confidence_level\n10,e1,0.3\n",
        "documents_categories.csv": "document_id,category_id,confidence_level\n10,1403,0.8\n20,1403,0.4\n21,1100,0.9\n",
    }
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return (t1, t2, t3), (v1, v2)


def test_ctr_features_count_train_rows_only(tmp_path):
    (t1, t2, t3), (v1, v2) = tiny(tmp_path / "raw")
    meta = prepare_outbrain(tmp_path / "raw", tmp_path / "out", valid_fraction=0.5, seed=0, **QUIET)
    assert meta.rows == {"train": 6, "valid": 5}
    prior = 3 / 6  # train clicks / train rows
    assert meta.info["train_click_rate"] == pytest.approx(prior)

    def smoothed(clicks, views):
        return (clicks + prior * CTR_PRIOR_VIEWS) / (views + CTR_PRIOR_VIEWS)

    train, valid = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "valid")
    assert valid["group"].tolist() == [v1, v1, v2, v2, v2] and valid["item"].tolist() == [3, 1, 3, 2, 9]
    # ad 1: 2 clicks in 3 train views; its valid row (unclicked) does not count.
    # ad 3: shown in valid displays only (clicked once there): no train views, so the prior.
    # campaign 7 holds ads 1 and 3: its counts are ad 1's. Ad 9 is unknown: the prior, 0 views.
    expected_ad = {1: smoothed(2, 3), 2: smoothed(1, 3), 3: prior, 9: prior}
    for split in (train, valid):
        ads = split["item"].tolist()
        assert column(meta, split, "ad_id_ctr") == pytest.approx([expected_ad[a] for a in ads])
        views = {1: 3, 2: 3, 3: 0, 9: 0}
        assert column(meta, split, "ad_id_count") == pytest.approx([math.log1p(views[a]) for a in ads])
    assert column(meta, valid, "campaign_id_ctr") == pytest.approx(
        [smoothed(2, 3), smoothed(2, 3), smoothed(2, 3), smoothed(1, 3), prior]
    )
    assert column(meta, valid, "advertiser_id_ctr")[[1, 3]] == pytest.approx(
        [smoothed(3, 6)] * 2
    )  # advertiser 70: ads 1 and 2
    assert column(meta, valid, "advertiser_id_ctr")[0] == pytest.approx(prior)  # advertiser 71: ad 3 only
    # document 20 is promoted by ads 1 and 3, so its train counts are ad 1's
    assert column(meta, valid, "document_id_promo_ctr")[0] == pytest.approx(smoothed(2, 3))
    # request level: source 101 (of v2's page) appears in valid displays only -> the prior, 0 views
    assert column(meta, valid, "source_id_ctr")[2:] == pytest.approx([prior] * 3)
    assert column(meta, valid, "source_id_count")[2:].tolist() == [0.0] * 3
    assert column(meta, train, "source_id_count") == pytest.approx([math.log1p(4)] * 4 + [math.log1p(2)] * 2)


def test_request_ctr_features_count_train_rows_only(tmp_path):
    (t1, t2, t3), (v1, v2) = tiny(tmp_path / "raw")
    clicks = [
        (t1, 1, 1),
        (t1, 2, 1),
        (t2, 1, 1),
        (t2, 2, 0),
        (t3, 1, 0),
        (t3, 2, 0),
        (v1, 3, 1),
        (v1, 1, 0),
        (v2, 3, 0),
        (v2, 2, 1),
        (v2, 9, 0),
    ]
    tiny(tmp_path / "raw", clicks=clicks)
    meta = prepare_outbrain(tmp_path / "raw", tmp_path / "out", valid_fraction=0.5, seed=0, **QUIET)
    prior = 3 / 6
    assert meta.info["train_click_rate"] == pytest.approx(prior)

    def smoothed(clicks, views):
        return (clicks + prior * CTR_PRIOR_VIEWS) / (views + CTR_PRIOR_VIEWS)

    train, valid = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "valid")
    # document 10: t1 and t2, 3 clicks in 4 train views (v1's 2 rows on it do not count); 12: t3, 0 in 2
    page = [smoothed(3, 4)] * 4 + [smoothed(0, 2)] * 2
    for name in ("document_id", "source_id", "publisher_id", "geo_location", "geo_location_state"):
        assert column(meta, train, f"{name}_ctr") == pytest.approx(page), name
        assert column(meta, train, f"{name}_count") == pytest.approx([math.log1p(4)] * 4 + [math.log1p(2)] * 2), name
    for name in ("geo_location_country", "platform"):  # US and platform 2: every train row
        assert column(meta, train, f"{name}_ctr") == pytest.approx([smoothed(3, 6)] * 6), name
        assert column(meta, train, f"{name}_count") == pytest.approx([math.log1p(6)] * 6), name
    # v1: document 10, source 100, publisher 1000 (train counts); GB only in valid, platform missing -> the prior
    # v2: document 11 and source 101 only in valid, no publisher, no location -> the prior; platform 2
    expected = {
        "document_id": [smoothed(3, 4)] * 2 + [prior] * 3,
        "source_id": [smoothed(3, 4)] * 2 + [prior] * 3,
        "publisher_id": [smoothed(3, 4)] * 2 + [prior] * 3,
        "geo_location": [prior] * 5,
        "geo_location_country": [prior] * 5,
        "geo_location_state": [prior] * 5,
        "platform": [prior] * 2 + [smoothed(3, 6)] * 3,
    }
    for name, values in expected.items():
        assert column(meta, valid, f"{name}_ctr") == pytest.approx(values), name
    assert column(meta, valid, "document_id_count") == pytest.approx([math.log1p(4)] * 2 + [0.0] * 3)
    assert column(meta, valid, "platform_count") == pytest.approx([0.0] * 2 + [math.log1p(6)] * 3)
    tags = [meta.features[name]["tag"] for name in meta.dense_names]
    assert tags.count("request") == 16 and tags.count("item") == 16


def test_event_hour_and_weekday_by_hand(tmp_path):
    (t1, t2, t3), (v1, v2) = tiny(tmp_path / "raw")
    meta = prepare_outbrain(tmp_path / "raw", tmp_path / "out", valid_fraction=0.5, seed=0, **QUIET)
    train, valid = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "valid")
    timestamps = {t1: 2 * DAY_MS, t2: 2 * DAY_MS, t3: T3_TIMESTAMP, v1: 3 * DAY_MS, v2: None}
    when = {
        d: datetime.fromtimestamp((KAGGLE_EPOCH_MS + ms) / 1000, tz=timezone.utc)
        for d, ms in timestamps.items()
        if ms is not None
    }
    assert when[t1] == datetime(2016, 6, 16, 3, 59, 59, 998000, tzinfo=timezone.utc)  # a Thursday
    assert when[t3] == datetime(2016, 6, 17, 1, tzinfo=timezone.utc)  # a Friday, on the hour
    hours = {d: t.hour for d, t in when.items()}
    weekdays = {d: t.weekday() for d, t in when.items()}
    assert (hours[t1], weekdays[t1], hours[t3], weekdays[t3], hours[v1], weekdays[v1]) == (3, 3, 1, 4, 3, 4)
    for name, truth in (("event_hour", hours), ("event_weekday", weekdays)):
        vocabulary = sorted({str(truth[d]) for d in (t1, t2, t3)})  # train values as text, sorted; 0 = missing / unseen
        for split in (train, valid):
            ids = [vocabulary.index(str(truth[d])) + 1 if d in truth else 0 for d in split["group"].tolist()]
            assert column(meta, split, name).tolist() == ids, name
    assert column(meta, valid, "event_hour").tolist() == [2, 2, 0, 0, 0]  # hour 3 of {1, 3}; v2 has no timestamp
    assert meta.features["event_hour"]["tag"] == "request" and meta.features["event_weekday"]["embedding_dim"] == 16


def test_document_features_by_hand(tmp_path):
    (t1, _, _), (v1, v2) = tiny(tmp_path / "raw")
    meta = prepare_outbrain(tmp_path / "raw", tmp_path / "out", valid_fraction=0.5, seed=0, **QUIET)
    train, valid = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "valid")
    event = KAGGLE_EPOCH_MS + 2 * DAY_MS

    def days(published: str) -> float:
        ms = datetime.fromisoformat(published).replace(tzinfo=timezone.utc).timestamp() * 1000
        return math.log1p((event - ms) / DAY_MS)

    # train row 0: display t1 (document 10) shows ad 1 (document 20)
    assert column(meta, train, "days_since_published")[0] == pytest.approx(days("2016-06-10 03:59:59"), rel=1e-5)
    assert column(meta, train, "days_since_published_promo")[0] == pytest.approx(days("2016-06-01 00:00:00"), rel=1e-5)
    assert column(meta, train, "days_since_published_promo")[1] == 0.0  # ad 2's document is published after the event
    assert column(meta, valid, "days_since_published")[2] == 0.0  # display v2: no timestamp (missing -> 0)
    # topics of 10: {1: .5, 2: .5, 3: .2} (top 3), of 20: {1: .9} -> cosine .5 / sqrt(.54)
    assert column(meta, train, "topics_similarity")[0] == pytest.approx(0.5 / math.sqrt(0.54), rel=1e-5)
    assert column(meta, train, "categories_similarity")[:2] == pytest.approx([1.0, 0.0])
    assert column(meta, train, "entities_similarity")[0] == 0.0
    topics = np.asarray(train["multi_hot"][0, :3])
    assert sorted(topics.tolist()) == sorted(hashed(v, 350) for v in ("1", "2", "3"))
    assert topics[0] in (hashed("1", 350), hashed("2", 350)) and topics[2] == hashed("3", 350)  # by confidence
    assert train["multi_hot"][0, 3:].tolist() == [
        hashed("e1", 10000),
        -1,
        -1,
        hashed("1403", 100),
        -1,
        -1,
        hashed("1", 350),
        -1,
        -1,
        -1,
        -1,
        -1,
        hashed("1403", 100),
        -1,
        -1,
    ]
    assert column(meta, train, "geo_location_state")[0] == hashed("US>CA", 2000)
    assert column(meta, train, "geo_location_country")[0] == hashed("US", 300)
    assert column(meta, valid, "geo_location_state")[0] == 0 and column(meta, valid, "geo_location_country")[
        0
    ] == hashed("GB", 300)
    assert column(meta, valid, "geo_location")[2] == 0  # missing
    assert column(meta, valid, "platform").tolist() == [0, 0, 1, 1, 1]  # \\N is missing; the train vocabulary is {2}
    assert column(meta, train, "publisher_id")[0] == hashed("1000", 1000)
    assert column(meta, valid, "publisher_id")[2] == 0  # document 11 has no publisher
    assert column(meta, valid, "document_id_promo")[4] == 0 and column(meta, valid, "campaign_id")[4] == 0  # ad 9
    assert meta.info["missing"]["ad_id not in promoted_content"] == 1
    assert not column(meta, train, "document_page_views").any()  # no page_views_sample.csv


def test_malformed_click_rows_name_file_line_and_field(tmp_path):
    tiny(tmp_path / "raw")
    path = tmp_path / "raw" / "clicks_train.csv"
    lines = path.read_text().splitlines(keepends=True)
    for bad, field, words in [
        ("12,abc,1\n", "ad_id", "not an integer: 'abc'"),
        ("12,5\n", None, "expected 3 fields"),
        ("12,,1\n", "ad_id", "missing value"),
        ("12,5,2\n", "clicked", "must be 0 or 1"),
        ("-4,5,1\n", "display_id", "an id must be"),
    ]:
        path.write_text("".join(lines[:4] + [bad] + lines[4:]))
        with pytest.raises(DataError) as error:
            prepare_outbrain(tmp_path / "raw", tmp_path / "out", **QUIET)
        message = str(error.value)
        assert message.startswith(f"{path}:5:") and words in message and "\n" not in message, message
        if field:
            assert f"field '{field}'" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # nothing written, nothing left behind


def test_missing_inputs_and_bad_options(tmp_path):
    tiny(tmp_path / "raw")
    (tmp_path / "raw" / "documents_entities.csv").unlink()
    with pytest.raises(RecforgeError, match=r"documents_entities\.csv: file not found"):
        prepare_outbrain(tmp_path / "raw", tmp_path / "out", **QUIET)
    tiny(tmp_path / "raw")
    (tmp_path / "raw" / "events.csv").write_text("display_id,uuid,document_id,timestamp,platform\n1,u,2,3,1\n")
    with pytest.raises(DataError, match=r"events\.csv:1: field 'geo_location': column not found"):
        prepare_outbrain(tmp_path / "raw", tmp_path / "out", **QUIET)
    with pytest.raises(RecforgeError, match="valid_fraction"):
        prepare_outbrain(tmp_path / "raw", tmp_path / "out", valid_fraction=1.0, **QUIET)
    tiny(tmp_path / "raw")
    prepare_outbrain(tmp_path / "raw", tmp_path / "out", **QUIET)
    with pytest.raises(RecforgeError, match="overwrite"):
        prepare_outbrain(tmp_path / "raw", tmp_path / "out", **QUIET)
    prepare_outbrain(tmp_path / "raw", tmp_path / "out", overwrite=True, valid_fraction=0.0, **QUIET)
    assert load_meta(tmp_path / "out").rows == {"train": 11}


def test_generator_is_seeded_with_one_click_per_display(tmp_path):
    a = write_outbrain_csvs(tmp_path / "a", displays=800, seed=7)
    b = write_outbrain_csvs(tmp_path / "b", displays=800, seed=7)
    write_outbrain_csvs(tmp_path / "c", displays=800, seed=8)
    assert {k: v for k, v in a.items() if k != "folder"} == {k: v for k, v in b.items() if k != "folder"}
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "clicks_train.csv").read_bytes() != (tmp_path / "c" / "clicks_train.csv").read_bytes()
    clicks = pcsv.read_csv(tmp_path / "a" / "clicks_train.csv")
    display, ad, clicked = (clicks.column(n).to_numpy() for n in ("display_id", "ad_id", "clicked"))
    assert len(display) == a["rows"] and np.array_equal(np.unique(display), np.arange(1, 801))
    assert (np.bincount(display, weights=clicked)[1:] == 1).all()  # exactly one click per display
    shown = np.bincount(display)[1:]
    assert shown.min() >= 2 and shown.max() <= 12
    assert len(np.unique(display.astype(np.int64) * 10**6 + ad)) == len(ad)  # distinct ads within a display
    events = pcsv.read_csv(tmp_path / "a" / "events.csv")
    assert events.column_names == ["display_id", "uuid", "document_id", "timestamp", "platform", "geo_location"]
    assert (tmp_path / "a" / "events.csv").read_text().startswith("display_id,uuid,")  # Kaggle's unquoted header


def test_planted_signal_beats_a_random_ranking(generated):
    _, info = generated
    assert 0.3 < info["random_map12"] < 0.5  # 1/rank averaged over 2-12 ads
    assert info["best_map12"] > info["random_map12"] + 0.15
    assert "topics" in info["signal"]


def test_prepare_train_evaluate_predict_through_the_cli(generated, tmp_path):
    import json

    from recforge.cli import main

    raw, info = generated
    main(["prepare", "outbrain", "--data-dir", str(raw), "--out", str(tmp_path / "prepared")])
    small = ["--data-dir", str(tmp_path / "prepared"), "--batch-size", "512", "--deep-hidden-units", "64-32"]
    main(
        [
            "train",
            "--config",
            "wide-deep-outbrain",
            *small,
            "--epochs",
            "3",
            "--deep-learning-rate",
            "0.1",
            "--output-dir",
            str(tmp_path / "run"),
        ]
    )
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"]
    assert trained["MAP@12"] > info["random_map12"] + 0.05, (trained, info)
    checkpoint = str(tmp_path / "run" / "checkpoints" / "best.pt")
    main(
        [
            "train",
            "--config",
            "wide-deep-outbrain",
            *small,
            "--evaluate",
            "--restore-checkpoint",
            checkpoint,
            "--output-dir",
            str(tmp_path / "eval"),
        ]
    )
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]["MAP@12"] == pytest.approx(
        trained["MAP@12"]
    )
    main(
        [
            "train",
            "--config",
            "wide-deep-outbrain",
            *small,
            "--predict",
            "--restore-checkpoint",
            checkpoint,
            "--output-dir",
            str(tmp_path / "predict"),
        ]
    )
    lines = (tmp_path / "predict" / "submission.csv").read_text().splitlines()
    valid = load_split(tmp_path / "prepared", "valid")
    assert lines[0] == "display_id,ad_id" and len(lines) == 1 + len(np.unique(valid["group"]))
    submitted = {int(d): [int(a) for a in ads.split()] for d, ads in (line.split(",") for line in lines[1:])}
    for display, ads in list(submitted.items())[:50]:  # every ad of the display, once
        assert sorted(ads) == sorted(valid["item"][valid["group"] == display].tolist())

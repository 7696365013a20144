"""Fault matrix, data inputs: every bad input file gives one line naming the file, the line and the
field (issue 8). One representative of each class runs the real CLI (`faults.run_cli`: exit 2, one
`recforge: error:` line, no traceback, nothing partial left behind); the rest of each family calls
the reader in-process, where the DataError is the line the CLI prints (a CLI start costs seconds)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import assert_user_error, run_cli, snapshot

from recforge.config import DataConfig
from recforge.core.errors import DataError
from recforge.data import interaction_file, movielens, ncf_files
from recforge.prepare import criteo, ctr_spec, outbrain

BINARY = bytes(range(256)) * 8  # NUL bytes, invalid UTF-8, CRs and LFs
HUGE = "99999999999999999999999"  # beyond int64


def expect_error(call, *needles: str) -> str:
    """`call()` raises a one-line DataError holding every needle (what the CLI prints)."""
    with pytest.raises(DataError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in: {text}"
    return text


def unchanged(folder: Path, before: dict, names: list[str]) -> None:
    """Files that existed are byte-identical and nothing (a cache entry, a partial folder) was added."""
    assert snapshot(folder) == before and sorted(p.name for p in folder.iterdir()) == names


# --------------------------------------------------------------------------- feature spec (prepare ctr)

LOG = "click,price,user,item\n1,10,u1,i1\n0,0,u2,i1\n0,-5,u1,i2\n1,3,u3,i3\n"
SPEC = "label: click\nnumeric: [price]\ncategorical: [user, item]\nfiles: {all: log.csv}\n"


def spec_folder(tmp_path: Path, spec: str = SPEC, log: str | bytes | pa.Table = LOG, name: str = "log.csv") -> Path:
    if isinstance(log, pa.Table):
        pq.write_table(log, tmp_path / name)
    else:
        (tmp_path / name).write_bytes(log if isinstance(log, bytes) else log.encode())
    (tmp_path / "spec.yaml").write_text(spec.replace("log.csv", name))
    return tmp_path / "spec.yaml"


def prepare_ctr_cli(tmp_path: Path, *needles: str) -> None:
    before, names = snapshot(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(
        "prepare", "ctr", "--feature-spec", tmp_path / "spec.yaml", "--data-dir", tmp_path, "--out", tmp_path / "out"
    )
    assert_user_error(result, *needles)
    unchanged(tmp_path, before, names)  # no --out folder, no partial one beside it


def prepare_ctr(tmp_path: Path):
    return lambda: ctr_spec.prepare_ctr(tmp_path / "spec.yaml", tmp_path, tmp_path / "out", log=lambda *_: None)


def test_spec_value_of_the_wrong_type_cli(tmp_path):
    spec_folder(
        tmp_path,
        "label: click\nfiles: {all: log.csv}\nnumeric: [price]\ncategorical: [{name: user, hash_buckets: many}]\n",
    )
    prepare_ctr_cli(tmp_path, "spec.yaml:4: field 'categorical.hash_buckets'", "got 'many'")


@pytest.mark.parametrize(
    "text, line, field, words",
    [
        ('multi_hot: [{name: item, max_length: "3"}]\n', 4, "multi_hot.max_length", "got '3'"),
        ("holdout: {test: lots}\n", 4, "holdout.test", "got 'lots'"),
        (
            "categorical:\n  - user\n  - name: item\n    min_frequency: often\n",
            7,
            "categorical.min_frequency",
            "got 'often'",
        ),
        ("categorical: [{name: user, embedding_dim: x}]\n", 4, "categorical.embedding_dim", "got 'x'"),
        ("categorical: [{name: user, tag: 1}]\n", 4, "categorical.tag", "request or item, got 1"),
        ("categorical: [{name: [a]}]\n", 4, "categorical.name", "must be a column name"),
        ("numeric: [{name: price, transform: 3}]\n", 3, "numeric.transform", "got 3"),
        ("multi_hot: [{name: item, pooling: [a]}]\n", 4, "multi_hot.pooling", "got ['a']"),
        ("multi_hot: [{name: item, delimiter: 5}]\n", 4, "multi_hot.delimiter", "got 5"),
        (
            "categorical: [user, item]\ncrossed: [{name: x, columns: user, hash_buckets: 9}]\n",
            5,
            "crossed.columns",
            "got 'user'",
        ),
        ("holdout: {valid: 0.1, test: [0.1]}\n", 4, "holdout.test", "got [0.1]"),
        ("separator: [1]\n", 4, "separator", "one character"),
        ("categorical: user\n", 4, "categorical", "a list of column names"),
    ],
    ids=[
        "max_length-quoted",
        "holdout-text",
        "min_frequency",
        "embedding_dim",
        "tag",
        "name",
        "transform",
        "pooling",
        "delimiter",
        "columns",
        "holdout",
        "separator",
        "section-not-a-list",
    ],
)
def test_spec_value_of_the_wrong_type(tmp_path, text, line, field, words):
    spec = spec_folder(
        tmp_path, "label: click\nfiles: {all: log.csv}\n" + ("" if "numeric" in text else "numeric: [price]\n") + text
    )
    expect_error(lambda: ctr_spec.load_spec(spec), f"{spec}:{line}: field '{field}'", words)


def test_spec_yaml_syntax_error_cli(tmp_path):
    spec_folder(tmp_path, "label: click\nnumeric: [price\nfiles: {all: log.csv}\n")
    prepare_ctr_cli(tmp_path, "spec.yaml:", "invalid YAML")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("- label\n- click\n", "spec.yaml:1: a feature spec is a mapping"),
        ("", "spec.yaml: the feature spec is empty"),
        ("# nothing but a comment\n", "spec.yaml: the feature spec is empty"),
    ],
    ids=["top-level-list", "empty", "comment-only"],
)
def test_spec_that_is_not_a_mapping(tmp_path, text, needle):
    (tmp_path / "spec.yaml").write_text(text)
    expect_error(lambda: ctr_spec.load_spec(tmp_path / "spec.yaml"), needle)


def test_spec_column_missing_from_the_csv_cli(tmp_path):
    spec_folder(tmp_path, SPEC.replace("[user, item]", "[user, {name: query, hash_buckets: 10}]"))
    prepare_ctr_cli(tmp_path, "log.csv:1: field 'query': column not found")


@pytest.mark.parametrize(
    "table, needle",
    [
        (
            pa.table({"click": [1, 0], "price": [1.0, 2.0], "user": [[1], [2]], "item": ["a", "b"]}),
            "log.parquet: field 'user': holds list<element: int64> values",
        ),
        (
            pa.table({"click": ["1", "yes"], "price": [1.0, 2.0], "user": ["a", "b"], "item": ["a", "b"]}),
            "log.parquet: field 'click': not a number: 'yes' (data row 2)",
        ),
    ],
    ids=["list-category", "text-label"],
)
def test_spec_parquet_column_of_the_wrong_type_cli(tmp_path, table, needle):
    spec_folder(tmp_path, log=table, name="log.parquet")
    prepare_ctr_cli(tmp_path, needle)


@pytest.mark.parametrize(
    "table, needle",
    [
        (
            pa.table({"click": [1, 0], "price": ["1.5", "cheap"], "user": ["a", "b"], "item": ["a", "b"]}),
            "field 'price': not a number: 'cheap' (data row 2)",
        ),
        (
            pa.table(
                {
                    "click": pa.array([], pa.int64()),
                    "price": pa.array([], pa.float64()),
                    "user": pa.array([], pa.string()),
                    "item": pa.array([], pa.string()),
                }
            ),
            "log.parquet: no data rows",
        ),
    ],
    ids=["text-number", "no-rows"],
)
def test_spec_parquet_values(tmp_path, table, needle):
    spec_folder(tmp_path, log=table, name="log.parquet")
    expect_error(prepare_ctr(tmp_path), needle)


def test_spec_corrupt_gzip_csv_cli(tmp_path):
    spec_folder(tmp_path, log=gzip.compress(LOG.encode() * 50)[:-30] + b"garbage", name="log.csv.gz")
    prepare_ctr_cli(tmp_path, "log.csv.gz: not a valid gzip file")


def test_spec_header_only_csv_cli(tmp_path):
    spec_folder(tmp_path, log="click,price,user,item\n")
    prepare_ctr_cli(tmp_path, "log.csv: no data rows")


@pytest.mark.parametrize(
    "log, name, needle",
    [
        (b"", "log.csv", "log.csv: no data rows (the file is empty)"),
        (BINARY, "log.csv", "log.csv:1: binary data"),
        (b"click,price\n1,2\n", "log.csv.gz", "log.csv.gz: not a valid gzip file"),
        (b"click,price\n1,2\n", "log.parquet", "log.parquet: not a readable Parquet file"),
        (LOG + '1,2,"u' + "x" * (17 << 20) + ",i\n", "log.csv", "log.csv:6: a line longer than 16 MiB"),
    ],
    ids=["empty", "binary", "not-gzip", "not-parquet", "unclosed-quote"],
)
def test_spec_data_files(tmp_path, log, name, needle):
    spec_folder(tmp_path, log=log, name=name)
    expect_error(prepare_ctr(tmp_path), needle)


@pytest.mark.parametrize(
    "value, needle",
    [
        (HUGE, f"log.csv:4: field 'display': integer out of range for int64: '{HUGE}'"),
        ("abc", "log.csv:4: field 'display': not an integer: 'abc'"),
    ],
    ids=["huge", "text"],
)
def test_spec_group_ids(tmp_path, value, needle):
    spec_folder(
        tmp_path,
        SPEC + "group: display\n",
        log=f"click,price,user,item,display\n1,1,u,i,1\n0,1,u,i,1\n1,1,u,i,{value}\n",
    )
    expect_error(prepare_ctr(tmp_path), needle)


# --------------------------------------------------------------------------- interaction files (prepare csv)


def csv_cfg(path: Path) -> DataConfig:
    return DataConfig(dataset="csv", data_dir=str(path.parent), data_file=path.name, min_user_interactions=1)


def prepare_csv_cli(path: Path, *needles: str) -> None:
    before = snapshot(path.parent)
    result = run_cli(
        "prepare",
        "csv",
        "--data-dir",
        path.parent,
        "--data-file",
        path.name,
        "--cache-dir",
        path.parent / "cache",
        "--min-user-interactions",
        "1",
    )
    assert_user_error(result, *needles)
    assert snapshot(path.parent) == before and not any((path.parent / "cache").glob("*"))  # no cache entry


def test_csv_header_only_cli(tmp_path):
    (tmp_path / "a.csv").write_text("user_id,item_id,rating,timestamp\n")
    prepare_csv_cli(tmp_path / "a.csv", "a.csv: no data rows (only the header line)")


def test_parquet_list_column_as_user_id_cli(tmp_path):
    pq.write_table(
        pa.table({"user_id": [[1], [2]], "item_id": [1, 2], "rating": [4.0, 5.0], "timestamp": [1, 2]}),
        tmp_path / "a.parquet",
    )
    prepare_csv_cli(tmp_path / "a.parquet", "a.parquet: field 'user_id': holds list<element: int64> values")


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("a.csv", BINARY, "a.csv:1: binary data"),
        ("a.csv", b"", "a.csv: no data rows (the file is empty)"),
        (
            "a.csv",
            b"user_id,item_id,rating,timestamp\na,b,1,2\ncaf\xe9,x,1,2,3\n",
            "a.csv:3: not UTF-8 text (byte 0xe9)",
        ),  # no traceback from pyarrow
        ("a.csv.gz", b"\x1f\x8b\x08\x00" + b"junk" * 50, "a.csv.gz: not a valid gzip file"),
        (
            "a.parquet",
            pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": ["4.5", "good"], "timestamp": [1, 2]}),
            "a.parquet: field 'rating': not a number: 'good' (data row 2)",
        ),
        (
            "a.parquet",
            pa.table(
                {
                    "user_id": pa.array([], pa.int64()),
                    "item_id": pa.array([], pa.int64()),
                    "rating": pa.array([], pa.float32()),
                    "timestamp": pa.array([], pa.int64()),
                }
            ),
            "a.parquet: no data rows",
        ),
    ],
    ids=["binary", "empty", "latin-1-short-row", "corrupt-gzip", "text-rating", "parquet-no-rows"],
)
def test_interaction_files(tmp_path, name, data, needle):
    path = tmp_path / name
    pq.write_table(data, path) if isinstance(data, pa.Table) else path.write_bytes(data)
    expect_error(lambda: interaction_file.read(csv_cfg(path)), needle)


def test_parquet_text_ratings_that_are_numbers_are_read(tmp_path):
    pq.write_table(
        pa.table({"user_id": ["a", "b"], "item_id": [1, 2], "rating": ["4.5", "3"], "timestamp": [1, 2]}),
        tmp_path / "a.parquet",
    )
    raw = interaction_file.read(csv_cfg(tmp_path / "a.parquet"))
    assert raw.ratings.tolist() == [4.5, 3.0] and raw.items.tolist() == [1, 2]


# --------------------------------------------------------------------------- MovieLens


def prepare_movielens_cli(folder: Path, *needles: str) -> None:
    before = snapshot(folder)
    result = run_cli("prepare", "ml-100k", "--data-dir", folder, "--cache-dir", folder / "cache")
    assert_user_error(result, *needles)
    assert snapshot(folder) == before and not any((folder / "cache").glob("*"))


def test_u_data_huge_id_cli(tmp_path):
    (tmp_path / "u.data").write_text(f"1\t2\t3\t4\n1\t{HUGE}\t3\t4\n")
    prepare_movielens_cli(tmp_path, f"u.data:2: field 'item': integer out of range for int64: '{HUGE}'")


@pytest.mark.parametrize(
    "file, data, needle",
    [
        ("u.data", b"", "u.data: no data rows (the file is empty)"),
        ("u.data", BINARY, "u.data:1: binary data"),
        (
            "u.data",
            b"1\t2\t3\t4\n1\t" + b"9" * (10 << 20) + b"\t3\t4\n",
            "u.data:2: field 'item': integer out of range for int64",
        ),
        ("u.data", b"1\t2\t3\t4\n1\t" + b"9" * (17 << 20) + b"\t3\t4\n", "u.data:2: a line longer than 16 MiB"),
        ("u.item", BINARY, "u.item:1: binary data"),
        ("u.item", b"1|Toy Story|x\nthree|GoldenEye|y\n", "u.item:2: field 'movie id': not an integer: 'three'"),
    ],
    ids=["empty", "binary", "10MB-line", "17MB-line", "binary-titles", "bad-title-id"],
)
def test_movielens_100k_files(tmp_path, file, data, needle):
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\t3\t5\n")
    (tmp_path / file).write_bytes(data)
    expect_error(lambda: movielens.read("ml-100k", DataConfig(dataset="ml-100k", data_dir=str(tmp_path))), needle)


@pytest.mark.parametrize(
    "file, text, needle",
    [
        ("ratings.csv", "userId,movieId,rating,timestamp\n", "ratings.csv: no data rows (only the header line)"),
        ("movies.csv", "movie,name\n1,a\n", "movies.csv:1: field 'movieId': column not found"),
        ("movies.csv", "movieId,title,genres\n1,a,b\n2\n", "movies.csv:3: expected 3 fields, found 1"),
    ],
    ids=["header-only-ratings", "titles-without-id", "titles-short-row"],
)
def test_movielens_csv_files(tmp_path, file, text, needle):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3,4\n1,3,3,5\n")
    (folder / file).write_text(text)
    expect_error(
        lambda: movielens.read("ml-latest-small", DataConfig(dataset="ml-latest-small", data_dir=str(tmp_path))), needle
    )


# --------------------------------------------------------------------------- NCF triple

TRAIN, TEST, NEGATIVE = "0\t1\t5\t1\n1\t2\t5\t1\n", "0\t4\t5\t200\n1\t6\t4\t201\n", "(0,4)\t5\t7\n(1,6)\t2\t7\n"


def ncf_folder(folder: Path, train=TRAIN, test=TEST, negative=NEGATIVE) -> Path:
    for part, data in (("train.rating", train), ("test.rating", test), ("test.negative", negative)):
        (folder / f"t.{part}").write_bytes(data if isinstance(data, bytes) else data.encode())
    return folder


@pytest.mark.parametrize(
    "files, needle",
    [
        ({"train": BINARY}, "t.train.rating:1: binary data"),
        (
            {"train": "0\t1\t5\t1\n1\t999999999\t5\t1\n"},
            "t.train.rating:2: field 'item': id 999,999,999 is far beyond what these files can number: they mention "
            "items 8 times",
        ),
    ],
    ids=["binary", "huge-item-id"],
)
def test_ncf_cli(tmp_path, files, needle):
    folder = ncf_folder(tmp_path, **files)
    before = snapshot(folder)
    assert_user_error(run_cli("prepare", "ncf", "--data-dir", folder, "--cache-dir", folder / "cache"), needle)
    assert snapshot(folder) == before and not any((folder / "cache").glob("*"))  # no cache entry, small or huge


@pytest.mark.parametrize(
    "files, needle",
    [
        ({"negative": BINARY}, "t.test.negative:1: binary data"),
        ({"train": ""}, "t.train.rating: no data rows (the file is empty)"),
        ({"test": "", "negative": ""}, "t.test.rating: no data rows (the file is empty)"),
        ({"train": "0\t1\t5\t1\n1\t-3\t5\t1\n"}, "t.train.rating:2: field 'item': id -3 is negative"),
        ({"train": "0\t1\t5\t1\n-1\t2\t5\t1\n"}, "t.train.rating:2: field 'user': id -1 is negative"),
        ({"train": "0\t1\t5\t1\n5\t2\t5\t1\n"}, "t.train.rating:2: field 'user': id 5 has no row in t.test.rating"),
        (
            {"test": "0\t4\t5\t200\n1\t2000000000\t4\t201\n", "negative": "(0,4)\t5\t7\n(1,2000000000)\t2\t7\n"},
            "t.test.rating:2: field 'item': id 2,000,000,000 is far beyond",
        ),
        (
            {"negative": "(0,4)\t5\t7\n(1,6)\t2\t999999999\n"},
            "t.test.negative:2: field 'n1': id 999,999,999 is far beyond",
        ),
        ({"negative": f"(0,4)\t5\t7\n(1,{HUGE})\t2\t7\n"}, "t.test.negative:2: field 'pair': expected '(user,item)'"),
        (
            {"train": f"0\t1\t5\t1\n1\t{HUGE}\t5\t1\n"},
            f"t.train.rating:2: field 'item': integer out of range for int64: '{HUGE}'",
        ),
    ],
    ids=[
        "binary-negatives",
        "empty-train",
        "empty-test",
        "negative-item",
        "negative-user",
        "user-without-test-row",
        "huge-test-item",
        "huge-negative",
        "huge-pair",
        "beyond-int64",
    ],
)
def test_ncf_files(tmp_path, files, needle):
    cfg = DataConfig(dataset="ncf", data_dir=str(ncf_folder(tmp_path, **files)))
    expect_error(lambda: ncf_files.read(cfg), needle)


# --------------------------------------------------------------------------- Outbrain

OUTBRAIN = {
    "clicks_train.csv": "display_id,ad_id,clicked\n1,1,1\n1,2,0\n2,1,0\n2,2,1\n3,1,1\n3,2,0\n4,1,0\n4,2,1\n",
    "events.csv": "display_id,uuid,document_id,timestamp,platform,geo_location\n1,u1,10,100,1,US\n2,u2,10,200,2,US>CA\n"
    "3,u3,10,300,1,US\n4,u4,10,400,1,GB\n",
    "promoted_content.csv": "ad_id,document_id,campaign_id,advertiser_id\n1,20,7,70\n2,21,8,70\n",
    "documents_meta.csv": "document_id,source_id,publisher_id,publish_time\n"
    "10,100,1000,2016-06-10 03:59:59\n20,100,1001,\n21,102,1002,\n",
    "documents_topics.csv": "document_id,topic_id,confidence_level\n10,1,0.5\n",
    "documents_entities.csv": "document_id,entity_id,confidence_level\n10,e1,0.3\n",
    "documents_categories.csv": "document_id,category_id,confidence_level\n10,1403,0.8\n",
}


def outbrain_folder(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir()
    for file, text in OUTBRAIN.items():
        (folder / file).write_text(text)
    if name.endswith(".gz"):
        (folder / name.removesuffix(".gz")).unlink()
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "name, data, needle",
    [
        (
            "clicks_train.csv.gz",
            gzip.compress(OUTBRAIN["clicks_train.csv"].encode() * 20)[:-30],
            "clicks_train.csv.gz: not a valid gzip file",
        ),
        ("clicks_train.csv", b"display_id,ad_id,clicked\n", "clicks_train.csv: no data rows"),
    ],
    ids=["truncated-gzip", "header-only-clicks"],
)
def test_outbrain_cli(tmp_path, name, data, needle):
    raw = outbrain_folder(tmp_path / "raw", name, data)
    before = snapshot(raw)
    line = assert_user_error(run_cli("prepare", "outbrain", "--data-dir", raw, "--out", tmp_path / "out"), needle)
    assert "valid_fraction" not in line
    unchanged(raw, before, sorted(p.name for p in raw.iterdir()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no --out, no feature tables left


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("events.csv", BINARY, "events.csv:1: binary data"),
        ("events.csv", OUTBRAIN["events.csv"].split("\n")[0].encode() + b"\n", "events.csv: no data rows"),
        ("events.csv.gz", OUTBRAIN["events.csv"].encode(), "events.csv.gz: not a valid gzip file"),
        ("clicks_train.csv", b"", "clicks_train.csv: no data rows (the file is empty)"),
        (
            "clicks_train.csv",
            (OUTBRAIN["clicks_train.csv"] + f"{HUGE},1,0\n").encode(),
            f"clicks_train.csv:10: field 'display_id': integer out of range for int64: '{HUGE}'",
        ),
        (
            "documents_meta.csv",
            (OUTBRAIN["documents_meta.csv"] + f"22,{HUGE},1,\n").encode(),
            "documents_meta.csv:5: field 'source_id': integer out of range",
        ),
        (
            "events.csv",
            (OUTBRAIN["events.csv"] + "5,u5,10,500,1," + "X" * (2 << 20) + "\n").encode(),
            "events.csv:6: a line longer than 1 MiB",
        ),
    ],
    ids=["binary", "header-only", "not-gzip", "empty-clicks", "huge-display-id", "huge-source-id", "2MB-line"],
)
def test_outbrain_files(tmp_path, name, data, needle):
    raw = outbrain_folder(tmp_path / "raw", name, data)
    expect_error(lambda: outbrain.prepare_outbrain(raw, tmp_path / "out", log=lambda *_: None), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# --------------------------------------------------------------------------- Criteo (prepare criteo-kaggle)

CRITEO_ROW = "\t".join(["1"] + ["3"] * 13 + ["68fd1e64"] * 26) + "\n"


def test_criteo_binary_cli(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.txt").write_bytes(BINARY)
    assert_user_error(
        run_cli("prepare", "criteo-kaggle", "--data-dir", raw, "--out", tmp_path / "out", "--workers", "1"),
        "train.txt:1: binary data",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    "text, needle",
    [
        (
            CRITEO_ROW * 3 + CRITEO_ROW.replace("1\t3\t", f"1\t{HUGE}\t", 1),
            f"train.txt:4: field 'I1': integer out of range for int64: '{HUGE}'",
        ),
        (
            "\t".join(["label", *criteo.DENSE, *criteo.SPARSE]) + "\n" + CRITEO_ROW,
            "train.txt:1: field 'label': expected 0 or 1, found 'label'",
        ),
        ("", "train.txt: no rows"),
    ],
    ids=["huge-int", "header-line", "empty"],
)
def test_criteo_files(tmp_path, text, needle):
    (tmp_path / "train.txt").write_text(text)
    expect_error(
        lambda: criteo.prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", workers=1, log=lambda *_: None),
        needle,
    )
    assert not (tmp_path / "out").exists()

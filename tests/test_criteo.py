"""Criteo click logs -> prepared folder: values against a plain-Python computation, splits, the
vocabulary or hashing, gzip and Terabyte day files, bad lines, and workers=1 == workers=2."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from recforge.cli import main
from recforge.core.errors import DataError, RecforgeError
from recforge.data import encoders
from recforge.data.ctr_format import CTRMeta, load_meta, load_split
from recforge.prepare import criteo
from recforge.prepare.criteo import prepare_criteo

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(*parts: str) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA.joinpath(*parts)


def quiet(message: str) -> None:
    pass


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    text = "".join("\t".join(row) + "\n" for row in rows).encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def random_rows(n: int, seed: int = 0) -> list[list[str]]:
    """Criteo-like rows: few distinct values per field, so some are frequent and some rare."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = str(int(rng.random() < 0.3))
        ints = ["" if rng.random() < 0.2 else str(rng.randint(-3, 500)) for _ in range(13)]
        cats = ["" if rng.random() < 0.15 else f"{rng.randint(0, 40) * 104729 + j:08x}" for j in range(26)]
        rows.append([label, *ints, *cats])
    return rows


def reference(rows: list[list[str]], train_rows: int, min_frequency: int = 1, modulus: int | None = None):
    """The expected arrays, row by row in plain Python."""
    counts = [Counter(int(v, 16) for v in (row[14 + j] for row in rows[:train_rows]) if v) for j in range(26)]
    vocab = [
        {v: i + 1 for i, v in enumerate(sorted(v for v, c in counts[j].items() if c >= min_frequency))}
        for j in range(26)
    ]
    label = [int(row[0]) for row in rows]
    dense = [[math.log1p(max(int(x), 0)) if x else 0.0 for x in row[1:14]] for row in rows]
    if modulus:
        sparse = [[int(v, 16) % modulus if v else 0 for v in row[14:]] for row in rows]
        cardinalities = [modulus] * 26
    else:
        sparse = [[vocab[j].get(int(v, 16), 0) if v else 0 for j, v in enumerate(row[14:])] for row in rows]
        cardinalities = [len(v) + 1 for v in vocab]
    return np.array(label), np.array(dense), np.array(sparse), cardinalities


def prepared(out: Path) -> tuple[CTRMeta, dict[str, np.ndarray]]:
    """meta rows and the splits' arrays concatenated in input row order (train, test, valid)."""
    meta = load_meta(out)
    splits = [load_split(out, s) for s in ("train", "test", "valid") if s in meta.rows]
    return meta, {name: np.concatenate([s[name] for s in splits]) for name in ("label", "dense", "sparse")}


def assert_matches(out: Path, rows, train_rows: int, **options) -> None:
    meta, arrays = prepared(out)
    label, dense, sparse, cardinalities = reference(rows, train_rows, **options)
    assert meta.cardinalities == cardinalities
    assert arrays["label"].dtype == np.uint8 and arrays["dense"].dtype == np.float32
    assert arrays["sparse"].dtype == np.int32
    np.testing.assert_array_equal(arrays["label"], label)
    np.testing.assert_allclose(arrays["dense"], dense, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(arrays["sparse"], sparse)


@pytest.fixture(scope="module")
def kaggle_tiny(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """The real Kaggle sample as DLRM's raw layout: drop the Id column, join with tabs."""
    with open(shared("criteo-kaggle-tiny", "train.tiny.csv"), newline="") as f:
        reader = csv.reader(f)
        assert next(reader)[:3] == ["Id", "Label", "I1"]
        rows = [row[1:] for row in reader]
    folder = tmp_path_factory.mktemp("kaggle")
    write_tsv(folder / "train.txt", rows)
    return folder, rows


# --------------------------------------------------------------------------- values and splits


@pytest.mark.parametrize("lookup", ["hashed", "directory"])
def test_kaggle_sample_matches_plain_python(kaggle_tiny, tmp_path, monkeypatch, lookup):
    if lookup == "directory":  # the path taken by vocabularies of 2^17 values and more
        monkeypatch.setattr(encoders.SortedKeys, "HASHED", 0)
    folder, rows = kaggle_tiny
    assert len(rows) == 1999
    meta = prepare_criteo(
        "criteo-kaggle", folder, tmp_path / "out", min_frequency=3, workers=1, chunk_rows=300, log=quiet
    )
    # divmod(1999, 7) = (285, 4): days 0-3 have 286 rows, days 4-6 285; day 6: 143 test + 142 valid
    assert meta.rows == {"train": 1714, "test": 143, "valid": 142}
    assert meta.info["split"].endswith("last day: first half test, second half valid")  # what the rows say
    assert load_meta(tmp_path / "out").rows == meta.rows
    assert_matches(tmp_path / "out", rows, 1714, min_frequency=3)

    _, arrays = prepared(tmp_path / "out")
    first = rows[0]  # 0, 1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, '', 2, 68fd1e64, ...
    assert first[:3] == ["0", "1", "1"] and first[12] == ""
    assert arrays["dense"][0, 0] == np.float32(math.log(2)) and arrays["dense"][0, 11] == 0
    sparse = arrays["sparse"]
    assert (sparse[:1714] == 0).any() and (sparse[:1714] > 0).any()  # rare train values share id 0
    # the vocabulary comes from train rows only: counting every row would give other ids
    assert reference(rows, 1999, min_frequency=3)[3] != meta.cardinalities


@pytest.mark.parametrize("hashing", [None, 1000])
def test_saved_encoders_encode_raw_rows_as_preparation_did(kaggle_tiny, tmp_path, hashing):
    """The vocabularies (or the modulus) stay in the prepared folder: the raw rows encoded again,
    as a server would encode a request, give the prepared arrays."""
    folder, rows = kaggle_tiny
    options = {"max_ind_range": hashing} if hashing else {"min_frequency": 3}
    prepare_criteo("criteo-kaggle", folder, tmp_path / "out", workers=1, log=quiet, **options)
    _, arrays = prepared(tmp_path / "out")
    raw = pa.table({name: [row[k] for row in rows] for k, name in enumerate(criteo.FIELDS)})
    dense = {
        name: pa.array([int(v) if v else None for v in raw.column(name).to_pylist()], pa.int64())
        for name in criteo.DENSE
    }
    table = pa.table({**dense, **{name: raw.column(name) for name in criteo.SPARSE}})
    encoded = encoders.load_encoders(tmp_path / "out").encode(table)
    np.testing.assert_array_equal(encoded["dense"], arrays["dense"])
    np.testing.assert_array_equal(encoded["sparse"], arrays["sparse"])


def test_dense_missing_negative_and_rare_values(tmp_path):
    rows = random_rows(14)  # 7 days of 2 rows: 12 train, 1 test, 1 valid
    rows[0][1:5] = ["-5", "", "0", "1"]
    rows[1][1:3] = [str(10**12), "-1"]
    for i in range(12):  # C1 in train: 'a' 3 times (upper and lower case), 'b' once, missing the rest
        rows[i][14] = ["0000000a", "0000000A", "0000000a", "0000000b"][i] if i < 4 else ""
    rows[12][14], rows[13][14] = "0000000c", "0000000a"  # unseen in train, then frequent
    write_tsv(tmp_path / "train.txt", rows)
    meta = prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", min_frequency=2, workers=1, log=quiet)
    assert meta.rows == {"train": 12, "test": 1, "valid": 1}
    assert_matches(tmp_path / "out", rows, 12, min_frequency=2)
    _, arrays = prepared(tmp_path / "out")
    assert arrays["dense"][0, :4].tolist() == [0.0, 0.0, 0.0, np.float32(math.log(2))]
    assert arrays["dense"][1, :2].tolist() == [np.float32(math.log1p(10**12)), 0.0]
    assert meta.cardinalities[0] == 2  # id 1: 0xa; id 0: 'b' (rare), 'c' (not in train), missing
    assert arrays["sparse"][:, 0].tolist() == [1, 1, 1, 0] + [0] * 8 + [0, 1]


def test_max_ind_range_hashes_without_a_vocabulary(tmp_path):
    rows = random_rows(50, seed=1)
    rows[0][14] = "ffffffff"
    write_tsv(tmp_path / "train.txt", rows)
    logged = []
    meta = prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", max_ind_range=1000, workers=1, log=logged.append)
    assert meta.cardinalities == [1000] * 26
    assert_matches(tmp_path / "out", rows, meta.rows["train"], modulus=1000)
    assert prepared(tmp_path / "out")[1]["sparse"][0, 0] == 0xFFFFFFFF % 1000
    assert not any(line.startswith("  fit:") for line in logged)  # nothing to fit: no pass over the train rows
    assert any(
        line.startswith("  write: 50 rows in") and "(" in line and "per process of 1)" in line for line in logged
    )
    assert any(line.startswith("  peak resident memory: main process ") for line in logged)
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert set(report["peak_memory_bytes"]) == {"main process"}  # one process: no worker pool
    assert report["passes"]["write"]["rows"] == 50 and report["passes"]["write"]["rows_per_s_per_process"] > 0
    assert list(report["passes"]) == ["rows", "write"]
    with pytest.raises(RecforgeError, match="min_frequency"):
        prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "other", max_ind_range=1000, min_frequency=2, log=quiet)


def test_gzip_input_gives_the_same_arrays(tmp_path):
    rows = random_rows(300, seed=2)
    for name, file in (("plain", "train.txt"), ("gz", "train.txt.gz")):
        (tmp_path / name).mkdir()
        write_tsv(tmp_path / name / file, rows)
        prepare_criteo(
            "criteo-kaggle",
            tmp_path / name,
            tmp_path / f"out-{name}",
            min_frequency=2,
            workers=1,
            chunk_rows=40,
            log=quiet,
        )
    assert_matches(tmp_path / "out-gz", rows, 6 * 43, min_frequency=2)  # ceil(300 / 7) = 43
    assert_same_files(tmp_path / "out-plain", tmp_path / "out-gz")


def test_terabyte_days(tmp_path):
    days = [random_rows(n, seed=10 + k) for k, n in enumerate((30, 25, 5))]
    days[2][0][14] = "12345678"  # only in the held-out day: out of vocabulary
    write_tsv(tmp_path / "day_0", days[0])
    write_tsv(tmp_path / "day_1.gz", days[1])
    write_tsv(tmp_path / "day_2", days[2])
    meta = prepare_criteo("criteo-terabyte", tmp_path, tmp_path / "out", workers=2, chunk_rows=8, log=quiet)
    assert meta.rows == {"train": 55, "test": 3, "valid": 2}  # the last day: first half test, second valid
    assert [f["rows"] for f in meta.info["files"]] == [30, 25, 5]
    rows = days[0] + days[1] + days[2]
    assert_matches(tmp_path / "out", rows, 55)
    assert prepared(tmp_path / "out")[1]["sparse"][55, 0] == 0
    report = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert list(report["passes"]) == ["fit", "write"]  # the fit pass counts the days: no pass of its own


def test_workers_1_and_2_write_identical_bytes(kaggle_tiny, tmp_path):
    folder, _ = kaggle_tiny
    for workers in (1, 2):
        prepare_criteo(
            "criteo-kaggle",
            folder,
            tmp_path / f"w{workers}",
            min_frequency=2,
            workers=workers,
            chunk_rows=150,
            log=quiet,
        )
    assert_same_files(tmp_path / "w1", tmp_path / "w2")


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.relative_to(a) for p in a.rglob("*.npy"))
    assert names == sorted(p.relative_to(b) for p in b.rglob("*.npy")) and len(names) == 9 + 26  # + vocabularies
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    meta_a, meta_b = load_meta(a), load_meta(b)
    assert (meta_a.rows, meta_a.cardinalities) == (meta_b.rows, meta_b.cardinalities)


def test_lower_bound_equals_searchsorted():
    rng = np.random.default_rng(0)
    spread = np.unique(rng.integers(0, 1 << 32, 5000, dtype=np.uint64).astype(np.uint32))
    clustered = np.unique(rng.integers(0, 3000, 2000).astype(np.uint32))  # one bucket: searchsorted
    for keys in (spread, clustered, spread[:1], spread[:0]):
        values = np.concatenate(
            [
                keys,
                keys + np.uint32(1),
                keys - np.uint32(1),
                np.array([0, 2**32 - 1], np.uint32),
                rng.integers(0, 1 << 32, 1000, dtype=np.uint64).astype(np.uint32),
            ]
        )
        found = encoders.lower_bound(keys, values, encoders.directory(keys))
        np.testing.assert_array_equal(found, np.searchsorted(keys, values))


@pytest.mark.parametrize("hashed", [True, False])
def test_sorted_keys_give_the_same_ids_by_every_lookup(monkeypatch, hashed):
    """A server's few values take binary search, a batch the directory, a chunk index_in."""
    if not hashed:
        monkeypatch.setattr(encoders.SortedKeys, "HASHED", 0)
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 1 << 32, 4000, dtype=np.uint64).astype(np.uint32))
    lookup = encoders.SortedKeys(keys)
    values = np.concatenate([keys[::7], rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)])
    expected = np.where(np.isin(values, keys), np.searchsorted(keys, values) + 1, 0)
    for n in (9, len(values), 3 * len(values)):  # < K/64, between, >= 2K
        np.testing.assert_array_equal(lookup.ids(np.resize(values, n)), np.resize(expected, n))
    assert lookup.ids(keys[5:6]).tolist() == [6] and lookup.ids(np.array([keys[5] + 1], np.uint32)).tolist() == [0]


def test_encoding_the_columns_together_equals_encoding_them_one_by_one():
    """Encoders.encode takes the numeric columns as one matrix and the uint32 vocabularies' values
    in one search (few rows) or column by column (many): each column's ids and values as alone."""
    rng = np.random.default_rng(2)
    dense = [
        encoders.Numeric("a", "log1p"),
        encoders.Numeric("b", "standardize", mean=2.0, std=3.0),
        encoders.Numeric("c", "none"),
    ]
    sparse = [
        encoders.Categorical(
            "h1", values="uint32", keys=np.unique(rng.integers(0, 1 << 32, 4000, dtype=np.uint64)).astype(np.uint32)
        ),
        encoders.Categorical("h2", kind="modulo", values="uint32", buckets=97),
        encoders.Categorical("h3", values="uint32", keys=np.unique(rng.integers(0, 1 << 12, 900)).astype(np.uint32)),
    ]
    together = encoders.Encoders(dense=dense, sparse=sparse)
    for rows in (1, 5, 5000):  # 1 and 5: one search over both vocabularies; 5000: one per column
        numbers = {e.name: pa.array(rng.integers(-5, 50, rows), mask=rng.random(rows) < 0.2) for e in dense}
        keyed = [np.resize(e.keys, rows) if e.keys is not None else rng.integers(0, 1 << 32, rows) for e in sparse]
        values = {
            e.name: pa.array(
                np.where(rng.random(rows) < 0.5, k, rng.integers(0, 1 << 32, rows)).astype(np.uint32),
                mask=rng.random(rows) < 0.2,
            )
            for e, k in zip(sparse, keyed)
        }
        encoded = together.encode(pa.table(numbers | values))
        for j, e in enumerate(dense):
            alone = e.apply(numbers[e.name].to_numpy(zero_copy_only=False).astype(np.float64))
            np.testing.assert_array_equal(encoded["dense"][:, j], alone.astype(np.float32))
        for j, e in enumerate(sparse):
            column = values[e.name]
            alone = e.ids(column.fill_null(0).to_numpy(), column.is_valid().to_numpy(zero_copy_only=False))
            np.testing.assert_array_equal(encoded["sparse"][:, j], alone)
    assert (encoded["sparse"][:, 0] > 0).any() and (encoded["sparse"][:, 0] == 0).any()  # found and not


def test_crlf_line_ends_are_accepted(tmp_path):
    rows = random_rows(20, seed=5)
    (tmp_path / "train.txt").write_bytes("".join("\t".join(row) + "\r\n" for row in rows).encode())
    meta = prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", workers=1, log=quiet)
    assert_matches(tmp_path / "out", rows, meta.rows["train"])


# --------------------------------------------------------------------------- bad input


BAD_LINES = {
    "too few fields": (lambda row: row[:-1], "C26", "has 39 tab-separated fields"),
    "too many fields": (lambda row: row + ["0000abcd"], "C26", "has 41 tab-separated fields"),
    "empty line": (lambda row: [""], "label", "empty line"),
    "non-integer dense": (lambda row: row[:3] + ["1.5"] + row[4:], "I3", "not an integer: '1.5'"),
    "hex-prefixed dense": (lambda row: row[:5] + ["0x10"] + row[6:], "I5", "not an integer: '0x10'"),
    "space in dense": (lambda row: row[:1] + [" 7"] + row[2:], "I1", "not an integer: ' 7'"),
    "non-hex categorical": (lambda row: row[:18] + ["12z45678"] + row[19:], "C5", "not 8 hex digits: '12z45678'"),
    "short categorical": (lambda row: row[:18] + ["abc"] + row[19:], "C5", "not 8 hex digits: 'abc'"),
    "negative categorical": (lambda row: row[:39] + ["-1234567"], "C26", "not 8 hex digits: '-1234567'"),
    "label 2": (lambda row: ["2"] + row[1:], "label", "expected 0 or 1, found '2'"),
    "label missing": (lambda row: [""] + row[1:], "label", "missing"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
@pytest.mark.parametrize("line", [3, 250, 393])  # first chunk, a later train chunk, the held-out day
def test_bad_line_names_file_line_and_field(tmp_path, case, line):
    change, field, message = BAD_LINES[case]
    rows = random_rows(400, seed=3)
    rows[line - 1] = change(rows[line - 1])
    path = write_tsv(tmp_path / "train.txt", rows)
    with pytest.raises(DataError) as caught:
        prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", workers=1, chunk_rows=50, log=quiet)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}: field '{field}': "), text
    assert message in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]  # no output, no temp folder


def test_bad_line_in_a_gzip_day_counts_lines_from_that_file(tmp_path):
    write_tsv(tmp_path / "day_0", random_rows(20))
    rows = random_rows(20, seed=4)
    rows[11][7] = "seven"
    bad = write_tsv(tmp_path / "day_1.gz", rows)
    write_tsv(tmp_path / "day_2", random_rows(4))
    with pytest.raises(DataError, match=rf"^{bad}:12: field 'I7': not an integer: 'seven'$"):
        prepare_criteo("criteo-terabyte", tmp_path, tmp_path / "out", workers=2, chunk_rows=4, log=quiet)
    with pytest.raises(DataError, match=rf"^{bad}:12: field 'I7'"):  # hashing finds it in the write pass
        prepare_criteo("criteo-terabyte", tmp_path, tmp_path / "out", max_ind_range=10, workers=1, log=quiet)


def test_truncated_gzip(tmp_path):
    data = gzip.compress("".join("\t".join(row) + "\n" for row in random_rows(200)).encode())
    (tmp_path / "train.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'train.txt.gz'}: cannot read: "):
        prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", workers=1, log=quiet)


def test_missing_files_and_day_gaps(tmp_path):
    with pytest.raises(RecforgeError, match="train.txt: file not found"):
        prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "out", log=quiet)
    write_tsv(tmp_path / "day_0", random_rows(3))
    write_tsv(tmp_path / "day_2", random_rows(3))
    with pytest.raises(RecforgeError, match="missing day_1"):
        prepare_criteo("criteo-terabyte", tmp_path, tmp_path / "out", log=quiet)


# --------------------------------------------------------------------------- the output folder


def test_existing_output_is_replaced_only_with_overwrite(tmp_path):
    write_tsv(tmp_path / "train.txt", random_rows(30))
    out = tmp_path / "out"
    prepare_criteo("criteo-kaggle", tmp_path, out, workers=1, log=quiet)
    with pytest.raises(RecforgeError, match="already holds a prepared dataset"):
        prepare_criteo("criteo-kaggle", tmp_path, out, workers=1, log=quiet)
    meta = prepare_criteo("criteo-kaggle", tmp_path, out, max_ind_range=5, workers=1, log=quiet, overwrite=True)
    assert load_meta(out).cardinalities == meta.cardinalities == [5] * 26
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "train.txt"]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(RecforgeError, match="not a prepared dataset"):
        prepare_criteo("criteo-kaggle", tmp_path, tmp_path / "notes", workers=1, log=quiet, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_real_kaggle_sample_prepare_train_eval_through_the_cli(kaggle_tiny, tmp_path, capsys):
    raw, _ = kaggle_tiny
    out, run = tmp_path / "prepared", tmp_path / "run"
    main(["prepare", "criteo-kaggle", "--data-dir", str(raw), "--out", str(out), "--workers", "1"])
    args = [
        "--config",
        "dlrm-criteo-kaggle",
        "--data-dir",
        str(out),
        "--output-dir",
        str(run),
        "--batch-size",
        "128",
        "--optimizer",
        "adam",
        "--learning-rate",
        "0.001",
        "--threads",
        "1",
        "--embedding-dim",
        "4",
        "--bottom-mlp",
        "13-16-4",
        "--top-mlp",
        "16-1",
    ]
    main(["train", *args])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 14 and 0.0 < summary["metrics"]["AUC"] <= 1.0  # 1,714 rows: 14 steps of 128
    main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--eval-split", "test"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("AUC = ") and "logloss = " in line and "accuracy = " in line

"""The generic click-log format: a YAML feature spec over CSV or Parquet."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from recforge.cli import main
from recforge.core.errors import DataError, RecforgeError
from recforge.core.shipped import FEATURE_SPECS
from recforge.data.ctr_format import load_meta, load_split
from recforge.data.encoders import fnv1a as stable_hash
from recforge.data.encoders import load_encoders
from recforge.prepare.ctr_spec import load_spec, prepare_ctr

LOG = """click,price,age,user,item
1,10,30,u1,i1
0,0,,u2,i1
0,-5,41,u1,i2
1,3,22,u3,
0,7,35,u1,i1
1,1,50,u2,i3
"""

SPEC = """label: click
numeric: [price, {name: age, transform: none}]
categorical: [{name: user, min_frequency: 2}, item, {name: item, hash_buckets: 7}]
files: {all: log.csv}
holdout: {test: 0.34}
"""


def write(tmp_path, log=LOG, spec=SPEC):
    (tmp_path / "log.csv").write_text(log)
    (tmp_path / "spec.yaml").write_text(spec)
    return tmp_path / "spec.yaml"


def test_fnv1a_hash_is_the_published_function():
    hashes = stable_hash(pa.array(["", "a", "foobar", None]))
    assert hashes.tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8, 0]


def test_prepare_by_hand(tmp_path):
    spec = write(tmp_path)
    meta = prepare_ctr(spec, tmp_path, tmp_path / "out", log=lambda *_: None)
    assert meta.rows == {"train": 4, "test": 2} and meta.dense_names == ["price", "age"]
    # user: u1 appears twice in the 4 train rows, u2 and u3 once -> vocabulary [u1] with min_frequency 2
    # item: vocabulary of train values [i1, i2] (missing -> 0); hashed item: 7 buckets
    assert meta.cardinalities == [2, 3, 7]
    train, test = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "test")
    assert train["label"].tolist() == [1, 0, 0, 1] and test["label"].tolist() == [0, 1]
    assert np.allclose(train["dense"][:, 0], [math.log1p(10), 0.0, 0.0, math.log1p(3)])  # log1p(max(x, 0))
    assert np.allclose(train["dense"][:, 1], [30, 0, 41, 22])  # transform none, missing -> 0
    assert train["sparse"][:, 0].tolist() == [1, 0, 1, 0] and test["sparse"][:, 0].tolist() == [1, 0]
    assert train["sparse"][:, 1].tolist() == [1, 1, 2, 0] and test["sparse"][:, 1].tolist() == [1, 0]  # i3 unseen
    expected = [1 + int(h) % 6 for h in stable_hash(pa.array(["i1", "i1", "i2"]))] + [0]
    assert train["sparse"][:, 2].tolist() == expected


def test_parquet_gives_the_same_arrays(tmp_path):
    spec = write(tmp_path)
    prepare_ctr(spec, tmp_path, tmp_path / "from-csv", log=lambda *_: None)
    table = pcsv.read_csv(
        tmp_path / "log.csv",
        convert_options=pcsv.ConvertOptions(column_types={"user": pa.string(), "item": pa.string()}),
    )
    pq.write_table(table, tmp_path / "log.parquet")
    (tmp_path / "spec.yaml").write_text(SPEC.replace("log.csv", "log.parquet"))
    prepare_ctr(tmp_path / "spec.yaml", tmp_path, tmp_path / "from-parquet", log=lambda *_: None)
    for split in ("train", "test"):
        a, b = load_split(tmp_path / "from-csv", split), load_split(tmp_path / "from-parquet", split)
        assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "spec, line, key, message",
    [
        ("label: click\nnumeric: [price]\nfiles: {all: log.csv}\ncolour: red\n", 4, "colour", "unknown key"),
        ("numeric: [price]\nfiles: {all: log.csv}\n", None, "label", "required"),
        (
            "label: click\nnumeric: [{name: price, transform: sqrt}]\nfiles: {all: log.csv}\n",
            2,
            "numeric.transform",
            "transform must be",
        ),
        (
            "label: click\nnumeric: [price]\nfiles: {all: log.csv}\nholdout: {test: 0.6, valid: 0.5}\n",
            4,
            "holdout",
            "less than 1",
        ),
        ("label: click\nnumeric: [price]\nfiles: {train: a.csv, all: b.csv}\n", 3, "files", "not both"),
    ],
)
def test_spec_errors_name_file_line_and_key(tmp_path, spec, line, key, message):
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    with pytest.raises(DataError) as info:
        load_spec(path)
    assert (info.value.line, info.value.field) == (line, key) and message in str(info.value)


def test_bad_values_name_the_line(tmp_path):
    spec = write(tmp_path, log=LOG.replace("0,-5,41", "0,-5,forty"))
    with pytest.raises(DataError) as info:
        prepare_ctr(spec, tmp_path, tmp_path / "out", log=lambda *_: None)
    assert str(info.value).startswith(f"{tmp_path / 'log.csv'}:4: field 'age'")
    spec = write(tmp_path, log=LOG.replace("1,1,50", "2,1,50"))
    with pytest.raises(DataError) as info:
        prepare_ctr(spec, tmp_path, tmp_path / "out", log=lambda *_: None)
    assert str(info.value).startswith(f"{tmp_path / 'log.csv'}:7: field 'click': label must be 0 or 1")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec, folder, dense",
    [
        ("ali-ccp.yaml", "torchrechub-samples", 8),
        ("criteo-csv.yaml", "criteo-deepctr-sample", 13),
    ],
)
def test_real_samples_prepare_train_evaluate(tmp_path, capsys, spec, folder, dense):
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the repository")
    out, run = tmp_path / "prepared", tmp_path / "run"
    main(
        [
            "prepare",
            "ctr",
            "--feature-spec",
            str(FEATURE_SPECS / spec),
            "--data-dir",
            str(SHARED_DATA / folder),
            "--out",
            str(out),
        ]
    )
    meta = load_meta(out)
    assert len(meta.dense_names) == dense and min(meta.rows.values()) > 0
    main(
        [
            "train",
            "--model",
            "dlrm",
            "--dataset",
            "ctr",
            "--data-dir",
            str(out),
            "--output-dir",
            str(run),
            "--batch-size",
            "32",
            "--optimizer",
            "adam",
            "--learning-rate",
            "0.01",
            "--epochs",
            "3",
            "--embedding-dim",
            "4",
            "--bottom-mlp",
            f"{dense}-8-4",
            "--top-mlp",
            "8-1",
            "--threads",
            "1",
        ]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_trained"] == 3 and 0.0 <= summary["metrics"]["AUC"] <= 1.0
    main(["evaluate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--eval-split", "test"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("AUC = ")


def test_saved_encoders_encode_new_raw_rows_as_preparation_did(tmp_path):
    """The prepared folder keeps its encoders: applied to the raw rows again (as a server would
    to a request), they give the prepared arrays."""
    spec = write(
        tmp_path, spec=SPEC.replace("price, {name: age", "price, {name: age, transform: standardize}, {name: age")
    )
    prepare_ctr(spec, tmp_path, tmp_path / "out", log=lambda *_: None)
    encoders = load_encoders(tmp_path / "out")
    raw = pcsv.read_csv(
        tmp_path / "log.csv",
        convert_options=pcsv.ConvertOptions(
            column_types={"user": pa.string(), "item": pa.string()}, strings_can_be_null=True
        ),
    )
    encoded = encoders.encode(raw)
    train, test = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "test")
    for name in ("dense", "sparse"):
        assert np.array_equal(encoded[name], np.concatenate([train[name], test[name]])), name
    assert [e.kind for e in encoders.dense] == ["log1p", "standardize", "none"]
    assert encoders.dense[1].mean == pytest.approx((30 + 0 + 41 + 22) / 4)  # moments of the train rows only


def test_each_numeric_kind_encodes_as_its_table_entry_says_by_column_and_by_matrix():
    from recforge.data.encoders import NUMERIC_KINDS, Encoders, Numeric

    x = np.array([-2.0, 0.0, 3.0, np.nan])
    expected = {  # by hand; NaN is 0 first
        "log1p": [0.0, 0.0, math.log(4.0), 0.0],
        "standardize": [(-2 - 1) / 2, (0 - 1) / 2, (3 - 1) / 2, (0 - 1) / 2],
        "none": [-2.0, 0.0, 3.0, 0.0],
    }
    assert set(expected) == set(NUMERIC_KINDS)
    encoders = Encoders(dense=[Numeric(kind, kind, mean=1.0, std=2.0) for kind in expected])
    matrix = encoders.encode(pa.table(dict.fromkeys(expected, x)))["dense"]
    for j, values in enumerate(expected.values()):
        np.testing.assert_allclose(encoders.dense[j].apply(x), values)
        np.testing.assert_allclose(matrix[:, j], np.float32(values))


def test_an_encoder_kind_this_recforge_lacks_is_named_with_the_file(tmp_path):
    prepare_ctr(write(tmp_path), tmp_path, tmp_path / "out", log=lambda *_: None)
    saved = json.loads((tmp_path / "out" / "encoders.json").read_text())
    saved["dense"][0]["kind"] = "sqrt"
    (tmp_path / "out" / "encoders.json").write_text(json.dumps(saved))
    with pytest.raises(
        RecforgeError, match=r"encoders.json: encoder 'price': kind 'sqrt' is none of log1p, standardize"
    ):
        load_encoders(tmp_path / "out")
    (tmp_path / "spec.yaml").write_text(SPEC.replace("transform: none", "transform: sqrt"))
    with pytest.raises(DataError, match="transform must be log1p, standardize or none"):
        load_spec(tmp_path / "spec.yaml")

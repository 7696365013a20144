"""A bad input gives one line naming the file, the line and the field: readers, config, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recforge.config import DataConfig, load_yaml
from recforge.core.errors import DataError
from recforge.data import interaction_file, movielens, ncf_files
from recforge.registry import build_config

REPO = Path(__file__).resolve().parents[1]


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def read_csv(tmp_path, name, text, **columns):
    (tmp_path / name).write_text(text)
    cfg = DataConfig(dataset="csv", data_dir=str(tmp_path), data_file=name, **columns)
    return interaction_file.read(cfg)


NAMED = {"user_column": "customer", "item_column": "sku", "rating_column": "stars", "timestamp_column": "when"}


# --------------------------------------------------------------------------- MovieLens


def test_u_data_non_integer_item(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t100\n1\t20\t3\t200\n2\t3O\t4\t150\n2\t10\t4\t160\n")
    with pytest.raises(DataError) as info:
        movielens.read("ml-100k", DataConfig(dataset="ml-100k", data_dir=str(tmp_path)))
    text = one_line(info.value)
    assert text.startswith(f"{tmp_path / 'u.data'}:3:")
    assert "field 'item'" in text and "'3O'" in text
    assert (info.value.line, info.value.field) == (3, "item")


def test_ratings_csv_row_with_too_few_fields(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n1,6\n1,47,5.0,964983815\n"
    )
    with pytest.raises(DataError) as info:
        movielens.read("ml-latest-small", DataConfig(dataset="ml-latest-small", data_dir=str(tmp_path)))
    text = one_line(info.value)
    assert text.startswith(f"{folder / 'ratings.csv'}:4:")
    assert "expected 4 fields, found 2" in text
    assert info.value.line == 4


@pytest.mark.parametrize(
    "name, file, text, expected",
    [
        ("ml-100k", "u.data", "1\t10\t5\t100\n1\t20\tgood\t200\n", "u.data:2: field 'rating': not a number: 'good'"),
        (
            "ml-1m",
            "ratings.dat",
            "1::1193::5::978300760\n1::661::3::\n",
            "ratings.dat:2: field 'timestamp': missing value",
        ),
        (
            "ml-1m",
            "ratings.dat",
            "1::1193::5::978300760\n1::661::3::978302109\n1::914:3::978301968\n",
            "ratings.dat:3:",
        ),
    ],
    ids=["u.data-rating", "ratings.dat-timestamp", "ratings.dat-single-colon"],
)
def test_movielens_bad_value(tmp_path, name, file, text, expected):
    (tmp_path / file).write_text(text)
    with pytest.raises(DataError) as info:
        movielens.read(name, DataConfig(dataset=name, data_dir=str(tmp_path)))
    assert one_line(info.value).startswith(f"{tmp_path}/{expected}")


# --------------------------------------------------------------------------- generic csv / parquet


@pytest.mark.parametrize("line", [2, 4])
def test_csv_empty_integer_user_id(tmp_path, line):
    rows = ["1,10,5,100", "2,20,3,200", "3,30,4,300", "4,40,4,400"]
    rows[line - 2] = rows[line - 2].replace(str(line - 1), "", 1)
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", "customer,sku,stars,when\n" + "\n".join(rows) + "\n", **NAMED)
    assert one_line(info.value) == f"{tmp_path / 'a.csv'}:{line}: field 'customer': missing value"


def test_csv_empty_rating(tmp_path):
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", "customer,sku,stars,when\nu1,s1,5,100\nu2,s2,,200\n", **NAMED)
    assert one_line(info.value) == f"{tmp_path / 'a.csv'}:3: field 'stars': missing value"


def test_csv_non_numeric_rating_with_string_ids(tmp_path):
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", "customer,sku,stars,when\nu1,s1,5,100\nu2,s2,4,200\nu3,s3,five,300\n", **NAMED)
    assert one_line(info.value) == f"{tmp_path / 'a.csv'}:4: field 'stars': not a number: 'five'"


def test_csv_empty_string_user_id(tmp_path):
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", "customer,sku,stars,when\nalice,A1,5,10\nbob,B2,3,20\n,B2,4,30\n", **NAMED)
    assert one_line(info.value) == f"{tmp_path / 'a.csv'}:4: field 'customer': missing value"


@pytest.mark.parametrize(
    "bad_row", ["3,30,4,", "3,30,x,300", "3,30"], ids=["missing", "not-a-number", "too-few-fields"]
)
def test_csv_line_numbers_count_blank_lines(tmp_path, bad_row):
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", f"customer,sku,stars,when\n1,10,5,100\n\n2,20,3,200\n{bad_row}\n", **NAMED)
    assert one_line(info.value).startswith(f"{tmp_path / 'a.csv'}:5:")


@pytest.mark.parametrize("column", ["user_column", "item_column", "rating_column", "timestamp_column"])
def test_csv_missing_configured_column(tmp_path, column):
    columns = {**NAMED, column: "nope"}
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.csv", "customer,sku,stars,when\nu1,s1,5,100\n", **columns)
    text = one_line(info.value)
    assert text.startswith(f"{tmp_path / 'a.csv'}:1:")
    assert "'nope'" in text and "column not found" in text


def test_tsv_read_with_wrong_separator_names_the_column(tmp_path):
    with pytest.raises(DataError) as info:
        read_csv(tmp_path, "a.txt", "customer\tsku\tstars\twhen\nu1\ts1\t5\t100\n", **NAMED)
    assert "field 'customer': column not found" in one_line(info.value)


def test_parquet_missing_value(tmp_path):
    pq.write_table(pa.table({"customer": ["a", None], "sku": ["x", "y"]}), tmp_path / "e.parquet")
    with pytest.raises(DataError) as info:
        interaction_file.read(
            DataConfig(
                dataset="csv",
                data_dir=str(tmp_path),
                data_file="e.parquet",
                user_column="customer",
                item_column="sku",
                rating_column=None,
                timestamp_column=None,
            )
        )
    text = one_line(info.value)
    assert text.startswith(f"{tmp_path / 'e.parquet'}:") and "field 'customer': missing value" in text


def test_parquet_missing_configured_column(tmp_path):
    pq.write_table(pa.table({"customer": ["a", "b"], "sku": ["x", "y"], "when": [1, 2]}), tmp_path / "e.parquet")
    with pytest.raises(DataError) as info:
        interaction_file.read(
            DataConfig(
                dataset="csv",
                data_dir=str(tmp_path),
                data_file="e.parquet",
                user_column="customer",
                item_column="sku",
                rating_column="stars",
                timestamp_column="when",
            )
        )
    assert info.value.field == "stars"
    one_line(info.value)


def test_csv_non_utf8_id(tmp_path):
    (tmp_path / "a.csv").write_bytes("customer,sku\nab,x\ncd,caf\xe9\n".encode("latin-1"))
    cfg = DataConfig(
        dataset="csv",
        data_dir=str(tmp_path),
        data_file="a.csv",
        user_column="customer",
        item_column="sku",
        rating_column=None,
        timestamp_column=None,
    )
    with pytest.raises(DataError) as info:
        interaction_file.read(cfg)
    assert one_line(info.value).startswith(f"{tmp_path / 'a.csv'}:3: field 'sku':")


# --------------------------------------------------------------------------- NCF triple


def write_triple(folder: Path, negative: str, rating: str = "0\t4\t5\t200\n1\t6\t4\t201\n2\t0\t3\t202\n") -> DataConfig:
    (folder / "t.train.rating").write_text("0\t1\t5\t1\n1\t2\t5\t1\n2\t3\t5\t1\n")
    (folder / "t.test.rating").write_text(rating)
    (folder / "t.test.negative").write_text(negative)
    return DataConfig(dataset="ncf", data_dir=str(folder))


@pytest.mark.parametrize("pair", ["(1 6)", "(1, 6)", "1,6", "(1,6", "(a,6)"])
def test_ncf_malformed_pair(tmp_path, pair):
    cfg = write_triple(tmp_path, f"(0,4)\t5\t7\n{pair}\t2\t7\n(2,0)\t6\t7\n")
    with pytest.raises(DataError) as info:
        ncf_files.read(cfg)
    assert one_line(info.value) == f"{tmp_path / 't.test.negative'}:2: field 'pair': expected '(user,item)'"


@pytest.mark.parametrize("pair", ["(1,5)", "(2,6)"])
def test_ncf_pair_not_matching_test_rating(tmp_path, pair):
    cfg = write_triple(tmp_path, f"(0,4)\t5\t7\n{pair}\t2\t7\n(2,0)\t6\t7\n")
    with pytest.raises(DataError) as info:
        ncf_files.read(cfg)
    assert (
        one_line(info.value)
        == f"{tmp_path / 't.test.negative'}:2: field 'pair': does not match line 2 of t.test.rating"
    )


RATING = "0\t4\t5\t200\n1\t6\t4\t201\n2\t0\t3\t202\n"


@pytest.mark.parametrize(
    "negative, rating, expected",
    [
        ("(0,4)\t5\t7\n(1,6)\t2\t7\n", RATING, "t.test.negative:3:"),
        ("(0,4)\t5\t7\n(1,6)\t2\t7\n(2,0)\t6\t7\n(3,1)\t6\t7\n", RATING, "t.test.negative:4:"),
        (
            "(0,4)\t5\t7\n(1,6)\t2\tseven\n(2,0)\t6\t7\n",
            RATING,
            "t.test.negative:2: field 'n1': not an integer: 'seven'",
        ),
        (
            "(0,4)\t5\t7\n(2,6)\t2\t7\n(1,0)\t6\t7\n",
            "0\t4\t5\t200\n2\t6\t4\t201\n1\t0\t3\t202\n",
            "t.test.rating:2: field 'user':",
        ),
    ],
    ids=["negatives-shorter", "negatives-longer", "non-integer-negative", "users-out-of-order"],
)
def test_ncf_files_that_do_not_line_up(tmp_path, negative, rating, expected):
    cfg = write_triple(tmp_path, negative, rating)
    with pytest.raises(DataError) as info:
        ncf_files.read(cfg)
    assert one_line(info.value).startswith(f"{tmp_path}/{expected}")


# --------------------------------------------------------------------------- YAML config


def config_error(path: Path, text: str) -> DataError:
    path.write_text(text)
    values, lines = load_yaml(path)
    with pytest.raises(DataError) as info:
        build_config(values, source=path, lines=lines)
    one_line(info.value)
    return info.value


def test_yaml_wrong_type(tmp_path):
    path = tmp_path / "run.yaml"
    error = config_error(
        path, "model: neumf\ndata:\n  dataset: ml-100k\ntrain:\n  batch_size: 256\n  epochs: many\neval:\n  topk: 10\n"
    )
    assert str(error) == f"{path}:6: field 'train.epochs': must be an integer, got 'many'"
    assert (error.line, error.field) == (6, "train.epochs")


@pytest.mark.parametrize(
    "text, line, field, message",
    [
        ("# preset\n\ntrain: {epochs: many}\n", 3, "train.epochs", "must be an integer"),
        (
            "model: gmf\ndata:\n  dataset: ml-100k\n  min_user_interactions: 20\n  colour: blue\n",
            5,
            "data.colour",
            "unknown key",
        ),
        ("model: neumf\ndata:\n  dataset: ml-100k\ntrainer:\n  epochs: 3\n", 4, "trainer", "unknown key"),
    ],
    ids=["flow-style", "unknown-key-in-section", "unknown-section"],
)
def test_yaml_error_names_line_and_key(tmp_path, text, line, field, message):
    path = tmp_path / "run.yaml"
    assert str(config_error(path, text)).startswith(f"{path}:{line}: field '{field}': {message}")


def test_yaml_bad_literal_and_section(tmp_path):
    path = tmp_path / "run.yaml"
    error = config_error(path, "train:\n  epochs: 2\n  precision: fp8\n")
    assert str(error).startswith(f"{path}:3: field 'train.precision': must be one of fp32, bf16, fp16")
    error = config_error(path, "model: neumf\neval: 10\n")
    assert str(error).startswith(f"{path}:2: field 'eval': must be a mapping")


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: [1, 2\n")
    with pytest.raises(DataError) as info:
        load_yaml(path)
    assert one_line(info.value).startswith(f"{path}:")
    assert "invalid YAML" in str(info.value)


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "recforge", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def test_cli_train_on_bad_u_data(tmp_path):
    bad_dir = tmp_path / "ml-100k"
    bad_dir.mkdir()
    (bad_dir / "u.data").write_text("1\t10\t5\t100\n1\t20\t3\t200\n2\tten\t4\t150\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("# an earlier run's config\nmodel: gmf\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_cli(
        "train",
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(bad_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        "--epochs",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert result.stderr == f"recforge: error: {bad_dir / 'u.data'}:3: field 'item': not an integer: 'ten'\n"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not any((tmp_path / "cache").glob("ml-100k-*"))


def test_cli_train_with_bad_config_file(tmp_path):
    config = tmp_path / "preset.yaml"
    config.write_text("model: neumf\ntrain:\n  epochs: many\n")
    out = tmp_path / "run"
    result = run_cli("train", "--config", str(config), "--output-dir", str(out), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"recforge: error: {config}:3: field 'train.epochs': must be an integer, got 'many'\n"
    assert not out.exists()

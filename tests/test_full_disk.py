"""A full disk or a read-only folder: every writer fails with one line naming the path, removes
what it had begun and leaves earlier files byte-identical.

Each disk is a small tmpfs mounted in tmp_path (root only; this machine and CI run as root);
a read-only folder is a tmpfs remounted read-only, since root ignores file modes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from conftest import tiny_synthetic_args
from faults import assert_user_error, run_cli, snapshot

from recforge.config import DataConfig
from recforge.core.errors import user_message
from recforge.core.files import append_jsonl, read_jsonl
from recforge.data import cache
from recforge.data.ctr_format import load_meta
from recforge.data.download import download
from recforge.data.encoders import Categorical, Encoders, Numeric
from recforge.prepare import criteo
from recforge.prepare.criteo.click_log import CriteoLog
from recforge.prepare.engine import Unit, _task
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.prepare.synthetic_outbrain import write_outbrain_csvs
from recforge.prepare.workers import _Workers

NO_SPACE, READ_ONLY = "no space left on device", "read-only file system"
QUIET = {"log": lambda *_: None}
SPEC = """label: click
numeric: [price, {name: age, transform: none}]
categorical: [user, item, {name: item, hash_buckets: 7}]
files: {all: log.csv}
holdout: {test: 0.2}
"""
SYNTHETIC = {"synthetic-users": 151, "synthetic-items": 300}


@pytest.fixture
def disk(tmp_path):
    """`disk(name, size)`: a new folder of tmp_path that is a tmpfs of `size` ("256k"), unmounted after the test."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small disk is a tmpfs mount, which needs root and mount(8)")
    mounted = []

    def mount(name: str = "disk", size: str = "256k"):
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)]).returncode:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # busy: detach now, freed when unused


def read_only(folder):
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def fill(folder, leave: int = 0) -> None:
    """Take the disk's free space but `leave` bytes."""
    stat = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - leave))


def earlier_dataset(folder):
    """A small prepared click log in folder/out: what a failed --overwrite must leave as it was."""
    generate_ctr(folder / "out", rows=60, **QUIET)
    return snapshot(folder)


def click_log(folder, rows: int):
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "click": rng.integers(0, 2, rows),
            "price": rng.integers(0, 100, rows),
            "age": rng.integers(18, 80, rows),
            "user": np.char.add("u", rng.integers(0, 50, rows).astype(str)),
            "item": np.char.add("i", rng.integers(0, 9, rows).astype(str)),
        }
    )
    folder.mkdir(exist_ok=True)
    pcsv.write_csv(table, folder / "log.csv")
    (folder / "spec.yaml").write_text(SPEC)
    return folder


def criteo_log(folder, rows: int):
    rng = np.random.default_rng(0)
    columns = [
        rng.integers(0, 2, rows),
        *(rng.integers(-1, 500, rows) for _ in range(13)),
        *(np.char.mod("%08x", rng.integers(0, 40, rows) * 104729 + j) for j in range(26)),
    ]
    folder.mkdir(exist_ok=True)
    table = pa.table({str(i): column for i, column in enumerate(columns)})
    pcsv.write_csv(
        table, folder / "train.txt", pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    )
    return folder


def assert_kept(folder, before: dict, *names: str) -> None:
    """Earlier files byte-identical, and nothing else left in `folder` (no partial folder or temp file)."""
    assert snapshot(folder) == before
    assert sorted(os.listdir(folder)) == sorted(names)


# ----------------------------------------------------------------------------- prepared click logs


def test_prepare_ctr(disk, tmp_path):
    folder = disk()
    before = earlier_dataset(folder)
    raw = click_log(tmp_path / "raw", 20000)
    result = run_cli(
        "prepare", "ctr", "--feature-spec", raw / "spec.yaml", "--data-dir", raw, "--out", folder / "out", "--overwrite"
    )
    assert_user_error(result, f"{folder / 'out'}: {NO_SPACE}")
    assert_kept(folder, before, "out")


def test_prepare_criteo_with_workers(disk, tmp_path):
    folder = disk()
    before = earlier_dataset(folder)
    raw = criteo_log(tmp_path / "raw", 2000)
    result = run_cli(
        "prepare", "criteo-kaggle", "--data-dir", raw, "--out", folder / "out", "--overwrite", "--workers", "2"
    )
    assert_user_error(result, f"{folder / 'out'}: {NO_SPACE}")
    assert_kept(folder, before, "out")


def test_a_workers_write_error_comes_back_naming_the_file(disk, tmp_path):
    """Outputs are preallocated, so a worker never meets a full disk; if one did (a file system
    that cannot preallocate), its error comes back to the main process naming the file."""
    folder = disk(size="64k")
    target = folder / "dense.npy"
    with open(target, "wb") as f:
        f.truncate(1 << 20)  # sparse: no space reserved
    raw = criteo_log(tmp_path / "raw", 2000)
    rows, size = 2000, (raw / "train.txt").stat().st_size
    encoders = tmp_path / "encoders"  # what the write pass's workers read: hashing, no vocabulary
    encoders.mkdir()
    Encoders(
        [Numeric(n, "log1p") for n in criteo.DENSE],
        [Categorical(n, "modulo", "uint32", buckets=1000) for n in criteo.SPARSE],
    ).save(encoders)
    layout = {
        "train": {name: (str(target), 0, width) for name, width in (("label", 1), ("dense", 52), ("sparse", 104))}
    }
    click_log = CriteoLog("criteo-kaggle", [raw / "train.txt"], size, 100.0, 1, 1000)
    task = (
        "write",
        click_log,
        Unit(0, str(raw / "train.txt"), 0, size),
        (0, 0, rows, {"train": (0, rows)}, layout, str(encoders)),
    )
    pool = _Workers(2, _task)
    try:
        with pytest.raises(OSError) as raised:
            pool.run("write", [task], lambda i, result: result, rows, lambda *_: None)
    finally:
        pool.terminate()
    assert user_message(raised.value) == (f"{target}: {NO_SPACE} (free some space or choose another folder)", 2)


def test_prepare_criteo_synthetic(disk):
    folder = disk()
    before = earlier_dataset(folder)
    result = run_cli("prepare", "criteo-synthetic", "--synthetic-rows", 5000, "--out", folder / "out", "--overwrite")
    assert_user_error(result, f"{folder / 'out'}: {NO_SPACE}")
    assert_kept(folder, before, "out")


# Sizes at which the 300-display world fails in each stage: its raw CSVs, the feature tables
# (Parquet), the prepared arrays.
@pytest.mark.parametrize("size", ["64k", "256k", "512k"])
def test_prepare_outbrain_synthetic(disk, size):
    folder = disk(size=size)
    before = earlier_dataset(folder)
    result = run_cli(
        "prepare",
        "outbrain-synthetic",
        "--synthetic-displays",
        300,
        "--synthetic-seed",
        1,
        "--out",
        folder / "out",
        "--overwrite",
    )
    assert_user_error(result, f"{folder / 'out'}: {NO_SPACE}")
    assert_kept(folder, before, "out")


def test_prepare_outbrain(disk, tmp_path):
    folder = disk(size="128k")  # fails writing the feature tables (the arrays: as outbrain-synthetic at 512k)
    raw = tmp_path / "raw"
    write_outbrain_csvs(raw, displays=300, seed=1)
    before = earlier_dataset(folder)
    result = run_cli("prepare", "outbrain", "--data-dir", raw, "--out", folder / "out", "--overwrite")
    assert_user_error(result, f"{folder / 'out'}: {NO_SPACE}")
    assert_kept(folder, before, "out")


# ----------------------------------------------------------------------------- the ranking cache


def synthetic_flags(**overrides) -> list[str]:
    return [x for k, v in {**SYNTHETIC, **overrides}.items() for x in (f"--{k}", str(v))]


def cached_entry(folder, interactions: int):
    """An entry of the ranking cache in `folder`, prepared here."""
    cfg = DataConfig(
        dataset="synthetic",
        synthetic_users=151,
        synthetic_items=300,
        synthetic_interactions=interactions,
        cache_dir=str(folder),
    )
    return cache.prepare(cfg, **QUIET)[1]


def test_ranking_cache_entry(disk):
    folder = disk()
    entry = cached_entry(folder, 3100)
    before = snapshot(folder)
    result = run_cli(
        "prepare", "synthetic", *synthetic_flags(**{"synthetic-interactions": 60000}), "--cache-dir", folder
    )
    assert_user_error(result, str(folder), NO_SPACE)
    assert_kept(folder, before, entry.name)


def test_ranking_cache_eval_negatives(disk, tmp_path):
    folder = disk()
    entry = cached_entry(folder, 6000)
    fill(folder)
    before = snapshot(folder)
    result = run_cli("train", *tiny_synthetic_args(tmp_path, cache_dir=folder))
    assert_user_error(result, f"{entry}/eval_negatives_n99_seed", NO_SPACE)
    assert_kept(folder, before, entry.name, "filler")
    assert cache.load(entry).num_users == 151  # still a valid entry


# ----------------------------------------------------------------------------- a training run


def assert_run_is_consistent(run) -> None:
    """No temp files; every metrics line is whole."""
    names = [p.name for p in run.rglob("*")]
    assert not [name for name in names if name.startswith(".")], names
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    assert len(read_jsonl(run / "metrics.jsonl")) == len(lines)


@pytest.mark.parametrize(
    "leave, failing", [(16 << 10, "checkpoints/last.pt"), (0, "config.yaml")], ids=["checkpoint", "config"]
)
def test_training_run(disk, tmp_path, leave, failing):
    folder = disk()
    fill(folder, leave)  # 16 KiB: room for config.yaml, not for a checkpoint
    before = snapshot(folder / "filler")
    run = folder / "run"
    result = run_cli("train", *tiny_synthetic_args(tmp_path, output_dir=run))
    assert_user_error(result, f"{run / failing}: {NO_SPACE}")
    assert_run_is_consistent(run)
    assert snapshot(folder / "filler") == before


def test_a_metrics_line_that_does_not_fit_is_not_left_half_written(disk):
    folder = disk(size="64k")
    metrics = folder / "metrics.jsonl"
    append_jsonl(metrics, {"epoch": 1})
    fill(folder)
    before = metrics.read_bytes()
    with pytest.raises(OSError) as raised:
        append_jsonl(metrics, {"epoch": 2, "note": "x" * 20000})  # more than the rest of the file's page
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(metrics)
    assert metrics.read_bytes() == before


# ----------------------------------------------------------------------------- read-only folders


def test_read_only_prepare(disk, tmp_path):
    folder = disk()
    before = earlier_dataset(folder)
    read_only(folder)
    raw = click_log(tmp_path / "raw", 100)
    result = run_cli(
        "prepare", "ctr", "--feature-spec", raw / "spec.yaml", "--data-dir", raw, "--out", folder / "out", "--overwrite"
    )
    assert_user_error(result, f"{folder / 'out'}: {READ_ONLY}")
    assert snapshot(folder) == before and load_meta(folder / "out").rows


def test_read_only_cache(disk):
    folder = disk()
    read_only(folder)
    result = run_cli(
        "prepare", "synthetic", *synthetic_flags(**{"synthetic-interactions": 3100}), "--cache-dir", folder
    )
    assert_user_error(result, str(folder), READ_ONLY)


def test_read_only_training_run(disk, tmp_path):
    folder = disk()
    read_only(folder)
    result = run_cli("train", *tiny_synthetic_args(tmp_path, output_dir=folder / "run"))
    assert_user_error(result, str(folder / "run"), READ_ONLY)


def test_read_only_evaluate(disk, tmp_path):
    trained = tmp_path / "trained"
    assert run_cli("train", *tiny_synthetic_args(trained, epochs=1)).code == 0
    folder = disk(size="2m")
    shutil.copytree(trained / "run", folder / "run")
    read_only(folder)
    before = snapshot(folder)
    result = run_cli("evaluate", "--checkpoint", folder / "run" / "checkpoints" / "best.pt")
    assert_user_error(result, f"{folder / 'run' / 'evaluation-sampled.json'}: {READ_ONLY}")
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- downloads


@pytest.mark.parametrize("size", ["256k", "900k"])  # the archive does not fit; it fits but unpacked does not
def test_download_that_does_not_fit_names_the_folder_not_the_network(disk, tmp_path, size):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "ml-100k.zip", "w") as z:  # stored, incompressible: larger than the disk
        z.writestr("ml-100k/u.data", np.random.default_rng(0).bytes(600_000))
    folder = disk(size=size)
    (folder / "kept.txt").write_text("an earlier file\n")
    before = snapshot(folder)
    md5 = hashlib.md5((served / "ml-100k.zip").read_bytes()).hexdigest()
    with pytest.raises(OSError) as info:
        download("ml-100k", folder, base_url=f"file://{served}/", md5=md5)
    assert user_message(info.value)[0].startswith(f"{folder}: {NO_SPACE}")
    assert_kept(folder, before, "kept.txt")

"""An interrupted `prepare criteo-kaggle|criteo-terabyte` continues after the last chunk it finished
and gives byte-identical output (meta.json included; only prepare.json, how the run went, differs)."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

import pytest
from faults import assert_interrupted_preparation_continues, assert_user_error, prepared_files, run_cli, snapshot
from test_criteo import random_rows, write_tsv

from recforge.prepare.criteo import prepare_criteo


def days(folder: Path, sizes=(300, 250, 200)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for day, rows in enumerate(sizes):
        write_tsv(folder / f"day_{day}", random_rows(rows, seed=day))
    return folder


def kaggle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tsv(folder / "train.txt", random_rows(700, seed=9))
    return folder


@pytest.mark.parametrize(
    "kind, step, finished",
    [("criteo-terabyte", "fit", 4), ("criteo-terabyte", "write", 5), ("criteo-kaggle", "rows", 3)]
    + [("criteo-kaggle", "write", 0), ("criteo-kaggle", "fit", 6)],
)
def test_an_interrupted_preparation_continues_after_its_last_finished_chunk(
    tmp_path, monkeypatch, kind, step, finished
):
    raw = (days if kind == "criteo-terabyte" else kaggle)(tmp_path / "raw")
    options = {"min_frequency": 2, "workers": 1, "chunk_rows": 40}
    assert_interrupted_preparation_continues(
        tmp_path,
        monkeypatch,
        lambda out, log: prepare_criteo(kind, raw, out, log=log, **options),
        step,
        finished,
    )


def test_a_preparation_killed_at_every_file_operation_continues_to_the_same_output(tmp_path):
    raw = days(tmp_path / "raw", sizes=(120, 100, 80))
    args = ["prepare", "criteo-terabyte", "--data-dir", raw, "--workers", "1"]
    log = tmp_path / "points.log"
    assert run_cli(*args, "--out", tmp_path / "reference", env={"RECFORGE_FAULT_LOG": log}).code == 0
    points = log.read_text().splitlines()
    assert any("journal.json" in p for p in points)
    expected = prepared_files(tmp_path / "reference")
    # Just before each file appears (its rename; of the 26 vocabulary files the first only: a CLI start
    # costs seconds) and once the folder is in place: the journal's, prepare.json's, meta.json's.
    renames = [n for n, p in enumerate(points, 1) if p.split()[1] in ("rename", "renamed")]
    chosen = [n for n in renames if "/encoders/" not in points[n - 1] or n == renames[0]]
    for point in chosen:
        out = tmp_path / f"kill-{point}" / "out"
        result = run_cli(*args, "--out", out, env={"RECFORGE_FAULT_AT": point})
        assert result.code == -signal.SIGKILL, (points[point - 1], result.stderr)
        assert not out.exists() or (out / "meta.json").exists(), points[point - 1]
        if not out.exists():  # else it was killed once the folder was in place: complete
            result = run_cli(*args, "--out", out)
            assert result.code == 0, (points[point - 1], result.stderr)
        assert prepared_files(out) == expected, points[point - 1]
        assert not list(out.parent.glob(".out.*")), points[point - 1]


def _killed_after_its_last_journal_entry(args, tmp_path: Path) -> Path:
    """Run `args` to the end once (logging file operations), then into `tmp_path/out`, killed as its
    last journal entry is renamed into place (the preparation's passes are all but done)."""
    log = tmp_path / "points.log"
    assert run_cli(*args, "--out", tmp_path / "reference", env={"RECFORGE_FAULT_LOG": log}).code == 0
    points = log.read_text().splitlines()
    last = max(n for n, p in enumerate(points, 1) if p.split()[1] == "written" and p.endswith("journal.json"))
    assert run_cli(*args, "--out", tmp_path / "out", env={"RECFORGE_FAULT_AT": last}).code == -signal.SIGKILL
    [kept] = tmp_path.glob(".out.resumable-*")
    return kept


def test_an_input_rewritten_with_its_old_size_and_time_is_prepared_afresh_not_continued(tmp_path):
    """A resumable preparation is keyed by its inputs' bytes: a rewrite that keeps the size and the
    modification time (cp -p, rsync -t, touch -r) must not continue with the old file's counts."""
    raw = kaggle(tmp_path / "raw")
    args = ["prepare", "criteo-kaggle", "--data-dir", raw, "--workers", "1"]
    _killed_after_its_last_journal_entry(args, tmp_path)
    train, stat = raw / "train.txt", (raw / "train.txt").stat()
    train.write_bytes(train.read_bytes().translate(bytes.maketrans(b"abcdef", b"bcdefa")))  # other categories
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert train.stat().st_size == stat.st_size
    result = run_cli(*args, "--out", tmp_path / "out")
    assert result.code == 0, result.stderr
    assert "continuing the interrupted preparation" not in result.stdout
    fresh = run_cli(*args, "--out", tmp_path / "fresh")
    assert fresh.code == 0, fresh.stderr
    assert prepared_files(tmp_path / "out") == prepared_files(tmp_path / "fresh")
    assert prepared_files(tmp_path / "out") != prepared_files(tmp_path / "reference")


def test_the_same_preparation_twice_at_once_refuses_the_second_naming_the_first(tmp_path):
    raw = kaggle(tmp_path / "raw")
    args = ["prepare", "criteo-kaggle", "--data-dir", raw, "--workers", "1"]
    kept = _killed_after_its_last_journal_entry(args, tmp_path)
    before = snapshot(kept)
    fd = os.open(kept, os.O_RDONLY)  # this process stands in for a preparation still running in it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run_cli(*args, "--out", tmp_path / "out")
        assert_user_error(result, "the same preparation into", f"PID {os.getpid()}", "wait for it to end")
        assert snapshot(kept) == before and not (tmp_path / "out").exists()
    finally:
        os.close(fd)
    result = run_cli(*args, "--out", tmp_path / "out")
    assert result.code == 0 and "continuing the interrupted preparation" in result.stdout, result.stderr
    assert prepared_files(tmp_path / "out") == prepared_files(tmp_path / "reference")

"""An interrupted `prepare criteo-kaggle|criteo-terabyte` continues after the last chunk it finished
and gives byte-identical output (meta.json included; only prepare.json, how the run went, differs)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from faults import assert_interrupted_preparation_continues, prepared_files, run_cli
from test_criteo import random_rows, write_tsv

from recforge.data import criteo
from recforge.data.criteo import prepare_criteo


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
    [("criteo-terabyte", "vocab", 4), ("criteo-terabyte", "write", 5), ("criteo-kaggle", "count", 3)]
    + [("criteo-kaggle", "write", 0), ("criteo-kaggle", "vocab", 6)],
)
def test_an_interrupted_preparation_continues_after_its_last_finished_chunk(
    tmp_path, monkeypatch, kind, step, finished
):
    raw = (days if kind == "criteo-terabyte" else kaggle)(tmp_path / "raw")
    options = {"min_frequency": 2, "workers": 1, "chunk_rows": 40}
    assert_interrupted_preparation_continues(
        tmp_path,
        monkeypatch,
        criteo,
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

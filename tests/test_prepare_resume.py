"""An interrupted `prepare criteo-kaggle|criteo-terabyte` continues after the last chunk it finished
and gives byte-identical output (meta.json included; only prepare.json, how the run went, differs)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from faults import run_cli, snapshot
from test_criteo import random_rows, write_tsv

from recforge.data import criteo, journal
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


def dataset(out: Path) -> dict[str, str]:
    """sha256 of every file of a prepared folder but prepare.json, by path inside it."""
    return {k.split(f"{out.name}/", 1)[1]: v for k, v in snapshot(out).items() if not k.endswith("prepare.json")}


@pytest.mark.parametrize(
    "kind, step, finished",
    [("criteo-terabyte", "vocab", 4), ("criteo-terabyte", "write", 5), ("criteo-kaggle", "count", 3)]
    + [("criteo-kaggle", "write", 0), ("criteo-kaggle", "vocab", 6)],
)
def test_an_interrupted_preparation_continues_after_its_last_finished_chunk(
    tmp_path, monkeypatch, kind, step, finished
):
    raw = (days if kind == "criteo-terabyte" else kaggle)(tmp_path / "raw")
    options = {"min_frequency": 2, "workers": 1, "chunk_rows": 40, "log": lambda *_: None}
    calls: dict[str, int] = {}
    interrupt, task = False, criteo._task

    def counted(op, *args):  # and interrupted at the chosen task, when `interrupt`
        calls[op] = calls.get(op, 0) + 1
        if interrupt and op == step and calls[op] == finished + 1:
            raise KeyboardInterrupt
        return task(op, *args)

    monkeypatch.setattr(criteo, "_task", counted)
    prepare_criteo(kind, raw, tmp_path / "reference", **options)
    tasks, calls = calls, {}
    monkeypatch.setattr(journal, "JOURNAL_SECONDS", 0.0)  # a journal entry after every chunk
    interrupt, out = True, tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare_criteo(kind, raw, out, **options)
    assert not out.exists()
    [kept] = tmp_path.glob(".out.resumable-*")
    assert (kept / "journal.json").is_file()
    interrupt, calls, logged = False, {}, []
    prepare_criteo(kind, raw, out, **{**options, "log": logged.append})
    assert any("continuing the interrupted preparation" in line for line in logged), logged
    passes = [op for op in ("count", "vocab", "write") if op in tasks]
    for op in passes:  # the passes before: nothing again; the interrupted one: its other tasks
        before, after = passes.index(op) < passes.index(step), passes.index(op) > passes.index(step)
        assert calls.get(op, 0) == (0 if before else tasks[op] if after else tasks[op] - finished), (op, calls, tasks)
    assert dataset(out) == dataset(tmp_path / "reference")
    assert not list(tmp_path.glob(".out.*"))


def test_a_preparation_killed_at_every_file_operation_continues_to_the_same_output(tmp_path):
    raw = days(tmp_path / "raw", sizes=(120, 100, 80))
    args = ["prepare", "criteo-terabyte", "--data-dir", raw, "--workers", "1"]
    log = tmp_path / "points.log"
    assert run_cli(*args, "--out", tmp_path / "reference", env={"RECFORGE_FAULT_LOG": log}).code == 0
    points = log.read_text().splitlines()
    assert any("journal.json" in p for p in points)
    expected = dataset(tmp_path / "reference")
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
        assert dataset(out) == expected, points[point - 1]
        assert not list(out.parent.glob(".out.*")), points[point - 1]

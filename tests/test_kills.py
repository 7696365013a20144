"""A kill at any instant leaves a consistent folder: the deterministic fault injector
(`recforge.files.fault_point`, RECFORGE_FAULT_AT=N) SIGKILLs the process before and after every
file operation of a training run (cache, config, checkpoints, metrics, summary), of a prepare
and of an evaluation; after each, `--resume` or a re-run must give what an uninterrupted run does.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import tiny_synthetic_args
from faults import run_cli, snapshot


def fault_points(tmp_path: Path, *args) -> list[str]:
    """The file operations an uninterrupted command passes, in order (and that it succeeded)."""
    log = tmp_path / "points.log"
    result = run_cli(*args, env={"RECFORGE_FAULT_LOG": log})
    assert result.code == 0, result.stderr
    return log.read_text().splitlines()


def killed_at(point: int, *args):
    result = run_cli(*args, env={"RECFORGE_FAULT_AT": point})
    assert result.code == -signal.SIGKILL, (point, result.code, result.stderr)


def evaluations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_killed_at_every_file_operation_resumes_consistently(tmp_path):
    args = ["train", *tiny_synthetic_args(tmp_path / "reference", epochs=3, batch_size=2048, dropout=0.1)]
    points = fault_points(tmp_path, *args)
    assert any("best.pt" in p for p in points) and any("summary.json" in p for p in points)
    reference = tmp_path / "reference" / "run"
    expected, summary = evaluations(reference), json.loads((reference / "summary.json").read_text())

    for point in range(1, len(points) + 1):
        where = tmp_path / f"kill-{point}"
        args = ["train", *tiny_synthetic_args(where, epochs=3, batch_size=2048, dropout=0.1)]
        killed_at(point, *args)
        run = where / "run"
        assert not (run / "summary.json").exists() or point == len(points), points[point - 1]
        result = run_cli(*args, "--resume")
        assert result.code == 0, (points[point - 1], result.stderr)
        records = evaluations(run)
        assert [r["epoch"] for r in records] == [1, 2, 3], points[point - 1]
        assert [r["HR@10"] for r in records] == [r["HR@10"] for r in expected], points[point - 1]
        resumed = json.loads((run / "summary.json").read_text())
        assert (resumed["metrics"], resumed["best_step"]) == (summary["metrics"], summary["best_step"]), points[point - 1]
        best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        assert best["step"] == resumed["best_step"] and best["history"]["best_metrics"] == resumed["metrics"], points[point - 1]
        assert not list(run.rglob(".*.tmp")) and not list(run.rglob("*.link")), points[point - 1]

    # The set is consistent for the evaluation command too: it reproduces summary.json's best.
    result = run_cli("evaluate", "--checkpoint", run / "checkpoints" / "best.pt")
    assert result.code == 0, result.stderr
    written = json.loads((run / "evaluation-sampled.json").read_text())
    assert written["metrics"]["HR@10"] == summary["metrics"]["HR@10"]


@pytest.mark.parametrize("dataset", ["criteo-synthetic", "outbrain-synthetic"])
def test_prepare_killed_at_every_file_operation_leaves_nothing_half_written(tmp_path, dataset):
    size = ["--synthetic-rows", 3000] if dataset == "criteo-synthetic" else ["--synthetic-displays", 200]
    points = fault_points(tmp_path, "prepare", dataset, *size, "--out", tmp_path / "reference")
    reference = {k.split("reference/", 1)[1]: v for k, v in snapshot(tmp_path / "reference").items()}
    for point in range(1, len(points) + 1):
        out = tmp_path / f"kill-{point}" / "out"
        killed_at(point, "prepare", dataset, *size, "--out", out)
        assert not out.exists() or (out / "meta.json").exists(), points[point - 1]  # absent or complete
        result = run_cli("prepare", dataset, *size, "--out", out, *(["--overwrite"] if out.exists() else []))
        assert result.code == 0, (points[point - 1], result.stderr)
        after = {k.split("out/", 1)[1]: v for k, v in snapshot(out).items()}
        reference_arrays = {k: v for k, v in reference.items() if k != "meta.json"}
        assert {k: v for k, v in after.items() if k != "meta.json"} == reference_arrays, points[point - 1]


def test_evaluation_killed_at_every_file_operation_keeps_the_run(tmp_path):
    args = tiny_synthetic_args(tmp_path, epochs=1)
    assert run_cli("train", *args).code == 0
    run = tmp_path / "run"
    before = snapshot(run)
    evaluate = ["evaluate", "--checkpoint", run / "checkpoints" / "best.pt"]
    points = fault_points(tmp_path, *evaluate)
    complete = (run / "evaluation-sampled.json").read_text()
    for point in range(1, len(points) + 1):
        (run / "evaluation-sampled.json").unlink()
        killed_at(point, *evaluate)
        written = run / "evaluation-sampled.json"
        assert not written.exists() or written.read_text() == complete, points[point - 1]
        assert {k: v for k, v in snapshot(run).items() if "evaluation-" not in k} == before
        assert not list(run.glob(".*.tmp"))

"""A kill at any instant leaves a consistent folder: the deterministic fault injector
(`recforge.core.files.fault_point`, RECFORGE_FAULT_AT=N) SIGKILLs the process before and after every
file operation of a training run (cache, config, checkpoints, metrics, summary), of a prepare
and of an evaluation; after each, `--resume` or a re-run must give what an uninterrupted run does.
"""

from __future__ import annotations

import json
import shutil
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
    # The cache is warm (its own kills are below): every point is one of the run folder's.
    def args(root):
        return [
            "train",
            *tiny_synthetic_args(root, epochs=2, batch_size=2048, dropout=0.1, cache_dir=tmp_path / "cache"),
        ]

    assert run_cli(*args(tmp_path / "warm-up")).code == 0
    points = fault_points(tmp_path, *args(tmp_path / "reference"))
    assert any("best.pt" in p for p in points) and any("summary.json" in p for p in points)
    reference = tmp_path / "reference" / "run"
    expected, summary = evaluations(reference), json.loads((reference / "summary.json").read_text())

    for point in range(1, len(points) + 1):
        where = tmp_path / f"kill-{point}"
        killed_at(point, *args(where))
        run = where / "run"
        assert not (run / "summary.json").exists() or point == len(points), points[point - 1]
        result = run_cli(*args(where), "--resume")
        assert result.code == 0, (points[point - 1], result.stderr)
        records = evaluations(run)
        assert [r["epoch"] for r in records] == [1, 2], points[point - 1]
        assert [r["HR@10"] for r in records] == [r["HR@10"] for r in expected], points[point - 1]
        resumed = json.loads((run / "summary.json").read_text())
        assert (resumed["metrics"], resumed["best_step"]) == (summary["metrics"], summary["best_step"]), points[
            point - 1
        ]
        best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
        assert best["step"] == resumed["best_step"] and best["history"]["best_metrics"] == resumed["metrics"], points[
            point - 1
        ]
        assert not list(run.rglob(".*.tmp")) and not list(run.rglob(".*-link")), points[point - 1]

    # The set is consistent for the evaluation command too: it reproduces summary.json's best.
    result = run_cli("evaluate", "--checkpoint", run / "checkpoints" / "best.pt")
    assert result.code == 0, result.stderr
    written = json.loads((run / "evaluation-sampled.json").read_text())
    assert written["metrics"]["HR@10"] == summary["metrics"]["HR@10"]


def test_ranking_cache_killed_at_every_file_operation_is_absent_or_complete(tmp_path):
    dataset = ["synthetic", "--synthetic-users", 151, "--synthetic-items", 300, "--synthetic-interactions", 6000]

    def prepare(cache, **env):
        return run_cli("prepare", *dataset, "--cache-dir", cache, env=env)

    points = fault_points(tmp_path, "prepare", *dataset, "--cache-dir", tmp_path / "reference")
    (entry,) = (tmp_path / "reference").iterdir()
    reference = {k.split(entry.name, 1)[1]: v for k, v in snapshot(entry).items() if not k.endswith("meta.json")}
    for point in range(1, len(points) + 1):
        cache = tmp_path / f"kill-{point}"
        assert prepare(cache, RECFORGE_FAULT_AT=point).code == -signal.SIGKILL
        entries = [p for p in cache.iterdir() if not p.name.startswith(".")] if cache.exists() else []
        assert all((p / "meta.json").exists() for p in entries), points[point - 1]  # none, or a complete one
        assert prepare(cache).code == 0
        (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
        assert {
            k.split(entry.name, 1)[1]: v for k, v in snapshot(entry).items() if not k.endswith("meta.json")
        } == reference


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
        run_reports = ("meta.json", "prepare.json")  # they hold the run's seconds
        reference_arrays = {k: v for k, v in reference.items() if k not in run_reports}
        assert {k: v for k, v in after.items() if k not in run_reports} == reference_arrays, points[point - 1]


def test_evaluation_killed_at_every_file_operation_keeps_the_run(tmp_path):
    args = tiny_synthetic_args(tmp_path, epochs=1)
    assert run_cli("train", *args).code == 0
    run = tmp_path / "run"
    before = snapshot(run)
    evaluate = ["evaluate", "--checkpoint", run / "checkpoints" / "best.pt"]
    points = fault_points(tmp_path, *evaluate)
    written = run / "evaluation-sampled.json"
    metrics = json.loads(written.read_text())["metrics"]  # (its timings differ from run to run)
    for point in range(1, len(points) + 1):
        written.unlink()
        killed_at(point, *evaluate)
        assert not written.exists() or json.loads(written.read_text())["metrics"] == metrics, points[point - 1]
        assert {k: v for k, v in snapshot(run).items() if "evaluation-" not in k} == before
        assert run_cli(*evaluate).code == 0  # and a re-run leaves no temp file of the killed one
        assert json.loads(written.read_text())["metrics"] == metrics and not list(run.glob(".*.tmp")), points[point - 1]


def test_replacing_a_prepared_folder_killed_at_every_file_operation_keeps_one_complete_dataset(tmp_path):
    def prepare(seed, out, **env):
        return run_cli(
            "prepare",
            "criteo-synthetic",
            "--synthetic-rows",
            2000,
            "--synthetic-seed",
            seed,
            "--out",
            out,
            "--overwrite",
            env=env,
        )

    versions = {}
    for seed in (1, 2):
        assert prepare(seed, tmp_path / f"seed-{seed}").code == 0
        versions[seed] = {
            k.split(f"seed-{seed}/", 1)[1]: v
            for k, v in snapshot(tmp_path / f"seed-{seed}").items()
            if not k.endswith("meta.json")
        }
    log = tmp_path / "points.log"
    shutil.copytree(tmp_path / "seed-1", tmp_path / "count")
    assert prepare(2, tmp_path / "count", RECFORGE_FAULT_LOG=log).code == 0
    points = log.read_text().splitlines()
    for point in range(1, len(points) + 1):
        out = tmp_path / f"kill-{point}"
        shutil.copytree(tmp_path / "seed-1", out)
        assert prepare(2, out, RECFORGE_FAULT_AT=point).code == -signal.SIGKILL
        arrays = {k.split(f"kill-{point}/", 1)[1]: v for k, v in snapshot(out).items() if not k.endswith("meta.json")}
        assert arrays in (versions[1], versions[2]), points[point - 1]  # the old dataset or the new, whole
        assert prepare(2, out).code == 0
        assert {
            k.split(f"kill-{point}/", 1)[1]: v for k, v in snapshot(out).items() if not k.endswith("meta.json")
        } == versions[2]
        assert not list(tmp_path.glob(f".kill-{point}.partial-*")), points[
            point - 1
        ]  # the killed run's folders are gone

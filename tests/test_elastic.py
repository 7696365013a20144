"""Long runs that lose a process: torchrun's restarts resume by themselves, a lost peer ends the
run in seconds with one line, timed checkpoints bound what a kill loses."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import torchrun_command

from recforge.cli import main
from recforge.prepare.synthetic_ctr import generate_ctr

STEPS = 36  # 3 epochs of 12 steps, an evaluation (and a checkpoint) after each


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctr") / "synthetic"
    generate_ctr(folder, rows=14_000, seed=3, cardinalities=[50, 200, 1000, 30, 5000, 8], log=lambda *_: None)
    return folder


def flags(click_log, run) -> list[str]:
    options = {
        "model": "dlrm",
        "dataset": "criteo-synthetic",
        "prepared-dir": click_log,
        "output-dir": run,
        "batch-size": 1000,
        "optimizer": "sgd",
        "learning-rate": 0.5,
        "threads": 1,
        "precision": "fp32",  # compared with one process at 1e-6: bf16 rounds each sum's order apart
        "epochs": 3,
        "evals-per-epoch": 12,
        "embedding-dim": 8,
        "bottom-mlp": "13-32-8",
        "top-mlp": "32-1",
    }
    return [x for k, v in options.items() for x in (f"--{k}", str(v))]


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def kill_rank_1_after(process: subprocess.Popen, run, evaluations: int) -> float:
    """kill -9 the worker of local rank 1 once `evaluations` records are written; when it died."""
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").exists() and len(records(run)) >= evaluations):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
        time.sleep(0.05)
    for proc in Path("/proc").iterdir():
        try:
            environ, cmdline = (proc / "environ").read_bytes().split(b"\0"), (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"LOCAL_RANK=1" in environ and f"--output-dir\0{run}\0".encode() in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)
            return time.monotonic()
    raise AssertionError("no worker of local rank 1")


@pytest.fixture(scope="module")
def uninterrupted(click_log, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    main(["train", *flags(click_log, run)])
    return records(run)


def test_a_killed_worker_is_restarted_and_the_run_resumes_by_itself(click_log, uninterrupted, tmp_path):
    """kill -9 of rank 1 after 3 evaluations under --max-restarts 1: torchrun restarts both
    workers, they resume from the last complete checkpoint without --resume, and every
    evaluation equals the uninterrupted run's (one process: loss within 1e-6, AUC 2e-5)."""
    run = tmp_path / "run"
    command = [*torchrun_command(torchrun_flags=("--max-restarts", "1")), "train", *flags(click_log, run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_rank_1_after(process, run, 3)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "torchrun restarted the workers (1x): resuming from the last complete checkpoint" in out
    resumed = records(run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert any(r.get("resumed_from_step", 0) >= 2 for r in resumed)  # the record comes before its checkpoint
    for mine, theirs in zip(resumed, uninterrupted):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)


def test_a_lost_peer_without_restarts_ends_the_run_in_seconds_with_one_line(click_log, tmp_path):
    """Without restarts, rank 0 sees the dead peer's sockets close: it ends within 30 s of the
    kill (measured: under 1 s) with one line naming the checkpoint to resume from."""
    run = tmp_path / "run"
    process = subprocess.Popen(
        [*torchrun_command(), "train", *flags(click_log, run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = kill_rank_1_after(process, run, 3)
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - killed < 30
    assert process.returncode != 0
    line = next(x for x in err.splitlines() if x.startswith("recforge: error: rank 0:"))
    assert "lost another process of the run" in line or "stopped by SIGTERM" in line
    pointer = json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"]
    assert f"its last complete checkpoint is {run / 'checkpoints' / pointer}: continue with --resume" in line
    assert "torchrun --max-restarts" not in line  # it was started without restarts: nothing resumes by itself


def test_timed_checkpoints_come_between_evaluations(click_log, tmp_path):
    """--save-every-minutes: one evaluation per epoch, yet a checkpoint at every step once the
    interval has passed (here 60 us, shorter than any step, so the count does not hang on the
    machine's speed); without it, at the evaluations only."""
    counts = {}
    for minutes in (0, 1e-6):
        run, log = tmp_path / f"run-{minutes}", tmp_path / f"files-{minutes}.log"
        args = [*flags(click_log, run), "--evals-per-epoch", "1", "--epochs", "1", "--save-every-minutes", str(minutes)]
        os.environ["RECFORGE_FAULT_LOG"] = str(log)
        try:
            main(["train", *args])
        finally:
            del os.environ["RECFORGE_FAULT_LOG"]
        operations = [line.split(" ", 2)[1:] for line in log.read_text().splitlines()]
        counts[minutes] = sum(
            1 for operation, path in operations if operation == "written" and path.endswith("last.pt")
        )
    assert counts[0] == 1
    assert counts[1e-6] >= 11  # of 12 steps

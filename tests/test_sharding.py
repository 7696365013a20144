"""Embedding tables sharded across processes on TorchRec: the same training as one process."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import torchrun_command

from recforge.cli import main
from recforge.data.ctr_format import load_split
from recforge.metrics.classification import auc
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.serving.bundle import Bundle
from recforge.train import sharding
from recforge.train.sharding import torchrec_available

needs_torchrec = pytest.mark.skipif(not torchrec_available(), reason="TorchRec is not installed")

CARDINALITIES = [50, 200, 1000, 30, 5000, 8, 300, 2000]
STEPS = 6
RATES = {"sgd": 0.5, "rowwise-adagrad": 0.05, "adagrad": 0.05, "adam": 0.01}


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctr") / "synthetic"
    generate_ctr(folder, rows=14_000, seed=3, cardinalities=CARDINALITIES, log=lambda *_: None)
    return folder


def flags(click_log, run, **extra) -> list[str]:
    """DLRM for STEPS steps of 1000 rows (per rank 500 / 333-334), an evaluation after each step."""
    options = {
        "model": "dlrm",
        "dataset": "criteo-synthetic",
        "prepared-dir": click_log,
        "output-dir": run,
        "batch-size": 1000,
        "optimizer": extra.get("optimizer", "sgd"),
        "learning-rate": RATES.get(extra.get("optimizer", "sgd"), 0.1),
        "threads": 1,
        "precision": "fp32",  # compared with one process at 1e-6: bf16 rounds each sum's order apart
        "epochs": 1,
        "max-steps": STEPS,
        "evals-per-epoch": 12,
        "embedding-dim": 8,
        "bottom-mlp": "13-32-8",
        "top-mlp": "32-1",
        "valid-batch-size": 300,
    } | extra
    if options["optimizer"] == "ftrl+proximal-adagrad":  # its rates have other names
        del options["learning-rate"]
    return [x for k, v in options.items() for x in (f"--{k}", str(v))]


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def torchrun(args: list[str], processes: int, env: dict | None = None) -> str:
    result = subprocess.run(
        [*torchrun_command(processes), "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def one_process(click_log, tmp_path_factory):
    """recforge's own kernels in one process, per optimizer."""
    runs = {}
    for optimizer in RATES:
        run = tmp_path_factory.mktemp("one") / optimizer
        main(["train", *flags(click_log, run, optimizer=optimizer)])
        runs[optimizer] = records(run)
    return runs


@needs_torchrec
@pytest.mark.parametrize(
    "sharding, optimizer, processes",
    [
        ("table-wise", "sgd", 2),
        ("row-wise", "sgd", 3),
        ("column-wise", "adagrad", 2),
        ("table-row-wise", "rowwise-adagrad", 2),
        ("data-parallel", "adam", 3),  # data-parallel tables take recforge's optimizers
    ],
)
def test_sharded_training_follows_one_process(click_log, one_process, tmp_path, sharding, optimizer, processes):
    """Each step's loss and AUC as in one process with the whole batch, to float summation
    differences (bounds: 1e-6 in loss and log loss, 2e-5 in AUC, a few of the 270 x 730 pairs)."""
    out = torchrun(
        flags(click_log, tmp_path / "run", optimizer=optimizer, **{"embedding-sharding": sharding}), processes
    )
    assert sharding == "none" or "embedding tables across processes:" in out and sharding.replace("-", "_") in out
    sharded, reference = records(tmp_path / "run"), one_process[optimizer]
    assert [r["step"] for r in sharded] == [r["step"] for r in reference] == list(range(1, STEPS + 1))
    for mine, theirs in zip(sharded, reference):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["logloss"] == pytest.approx(theirs["logloss"], abs=1e-6)
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)
        assert mine["eval_rows"] == theirs["eval_rows"] == 1_000
    assert reference[-1]["train_loss"] < reference[0]["train_loss"] - 0.02  # it learned something to follow


def refused(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"embedding-sharding": "table-wise", "optimizer": "adam"},
            "--embedding-sharding table-wise: FBGEMM's CPU kernels have no fused adam",
        ),
        (
            {"embedding-sharding": "row-wise", "optimizer": "ftrl+proximal-adagrad"},
            "--optimizer ftrl+proximal-adagrad has no fused TorchRec kernel",
        ),
        (
            {"embedding-memory-per-rank": "100KiB"},
            "the embedding tables and their sgd state need 268.38 KiB in every process, more than its 100.00 KiB",
        ),
        ({"embedding-memory-per-rank": "12 parsecs"}, "--embedding-memory-per-rank 12 parsecs: not a size"),
        (
            {"embedding-sharding": "table-wise", "embedding-dim": 6, "bottom-mlp": "13-32-6"},
            " is 6 wide; FBGEMM's kernels take widths that are multiples of 4 (or 1)",
        ),
        (
            {"embedding-sharding": "auto", "embedding-memory-per-rank": "100KiB"},
            "--embedding-sharding auto: the tables and their sgd state need 268.38 KiB, more than 1 process(es)",
        ),
    ],
)
def test_what_cannot_be_sharded_is_refused_in_one_line(click_log, tmp_path, capsys, extra, message):
    """(Tables: 8,588 rows x 8 floats = 268.38 KiB; SGD keeps no state.)"""
    if extra.get("embedding-sharding") in ("table-wise", "row-wise") and not torchrec_available():
        pytest.skip("TorchRec is not installed")
    error = refused(capsys, flags(click_log, tmp_path / "run", **extra))
    assert error.startswith("recforge: error: ") and message in error and "\n" not in error
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_auto_keeps_tables_that_fit_on_recforge_kernels(click_log, tmp_path, capsys):
    main(["train", *flags(click_log, tmp_path / "run", **{"embedding-sharding": "auto", "max-steps": 1})])
    out = capsys.readouterr().out
    assert "--embedding-sharding auto: the tables (268.38 KiB) fit one process: not sharded" in out
    assert "embedding tables across processes" not in out


def test_without_torchrec_sharding_says_how_to_install_it(click_log, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sharding, "torchrec_available", lambda: False)
    error = refused(capsys, flags(click_log, tmp_path / "run", **{"embedding-sharding": "row-wise"}))
    assert "--embedding-sharding row-wise: TorchRec is not installed: `bash scripts/setup.sh` installs" in error


@needs_torchrec
@pytest.mark.parametrize(
    "first, then",
    [
        (("row-wise", 2), ("row-wise", 2)),
        (("row-wise", 2), ("none", 1)),  # sharded -> one process, recforge's tables
        (("row-wise", 2), ("table-wise", 3)),
        (("none", 2), ("column-wise", 2)),  # replicated (DDP) -> sharded
        (("none", 1), ("row-wise", 2)),  # one process's last.pt -> sharded
    ],
)
def test_resume_at_another_size_continues_the_run(click_log, one_process, tmp_path, first, then):
    """Stopped after 3 of 6 steps and resumed with other processes or sharding (the checkpoint is
    resharded on load): every evaluation as in the uninterrupted one-process run; `evaluate` in
    one process reads the last checkpoint and scores it as training did."""
    run = tmp_path / "run"
    args = flags(click_log, run, optimizer="rowwise-adagrad")
    torchrun([*args, "--max-steps", "3", "--embedding-sharding", first[0]], first[1])
    if first[1] == 1:
        assert (run / "checkpoints" / "last.pt").is_file()
    else:
        assert json.loads((run / "checkpoints" / "last.json").read_text()) == {"checkpoint": "step-3", "step": 3}
    torchrun([*args, "--resume", "--embedding-sharding", then[0]], then[1])
    assert not (run / "checkpoints" / "converted").exists()
    resumed, reference = records(run), one_process["rowwise-adagrad"]
    lasts = [p.name for p in (run / "checkpoints").glob("last.*")]
    assert lasts == ["last.pt" if then[1] == 1 else "last.json"]  # one process writes a file, several a folder
    main(["evaluate", "--checkpoint", str(run / "checkpoints" / lasts[0])])  # one process reads either
    assert json.loads((run / "evaluation-sampled.json").read_text())["metrics"]["AUC"] == resumed[-1]["AUC"]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert resumed[3]["resumed_from_step"] == 3
    for mine, theirs in zip(resumed, reference):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)


@needs_torchrec
@pytest.mark.parametrize("point", ["during-save", "before-pointer"])
def test_a_kill_during_a_distributed_save_leaves_the_previous_checkpoint(click_log, one_process, tmp_path, point):
    """Rank 0 killed while the checkpoint of step 2 is written (its folder has no .metadata), or
    after it but before last.json moved: last.json still names step 1, which --resume continues."""
    run = tmp_path / "run"
    args = [*flags(click_log, run, optimizer="rowwise-adagrad"), "--max-steps", "3", "--embedding-sharding", "row-wise"]
    log = tmp_path / "points.log"
    torchrun(args, 2, env={"RECFORGE_FAULT_LOG": str(log)})
    points = [
        (int(n), operation, path) for n, operation, path in (x.split(" ", 2) for x in log.read_text().splitlines())
    ]
    saving, written = (
        next(n for n, operation, path in points if operation == name and path.endswith("step-2"))
        for name in ("distributed-checkpoint", "distributed-checkpoint-written")
    )
    at = saving if point == "during-save" else next(n for n, _, path in points if n > written and "last.json" in path)
    shutil.rmtree(run)
    killed = subprocess.run(
        [*torchrun_command(2), "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RECFORGE_FAULT_AT": str(at)},
    )
    assert killed.returncode != 0
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == 1
    torchrun([*args, "--resume"], 2)
    resumed = records(run)
    assert [r["step"] for r in resumed] == [1, 2, 3]
    for mine, theirs in zip(resumed, one_process["rowwise-adagrad"]):
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.json", "last.json", "step-3"]
    if point == "before-pointer":  # the resharded DCP checkpoint exports (one process) as it scored
        main(["export", "--checkpoint", str(run / "checkpoints" / "last.json"), "--out", str(tmp_path / "b")]
             + ["--format", "none"])  # fmt: skip
        bundle = Bundle(tmp_path / "b")
        valid = load_split(click_log, "valid")
        scores = bundle.probabilities({k: np.array(valid[k]) for k in bundle.manifest["model_inputs"]})
        assert auc(torch.tensor(scores), torch.tensor(np.array(valid["label"]))) == pytest.approx(
            resumed[-1]["AUC"], abs=1e-5
        )


@needs_torchrec
def test_tables_the_planner_cannot_place_are_refused_in_one_line(click_log, tmp_path):
    """268 KiB of tables, 2 x 140 KiB: our count lets it through, TorchRec's planner (which keeps
    room for the rest of the model) cannot place them; its error becomes one line."""
    extra = {"embedding-sharding": "table-wise", "embedding-memory-per-rank": "140KiB"}
    result = subprocess.run(
        [*torchrun_command(2), "train", *flags(click_log, tmp_path / "run", **extra)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    line = next(x for x in result.stderr.splitlines() if x.startswith("recforge: error:"))
    assert "TorchRec's planner cannot place the tables in 2 process(es) x 140.00 KiB" in line
    assert "internal error" not in result.stderr


@needs_torchrec
def test_tables_larger_than_one_process_train_in_two_with_half_the_memory_each(tmp_path, capsys):
    """Two 4.5 M-row tables (549 MiB with the small ones) and 366 MiB per rank: refused in one
    process, trained sharded in two; each rank's peak resident memory grows by about half the
    table bytes over the same run with tiny tables: its shard (0.5) and ~100 MB that does not grow
    with the tables (blocks of rows being made, DCP's copies of 16 MB blocks, kept by the heap):
    measured 0.66-0.80 (the most under CI's load). A rank that built the whole model first, or
    made a second copy of its rows, grows by the whole of it (measured 1.08-1.18 before)."""
    big, tiny = [4_500_000, 4_500_000, 50, 30], [45, 45, 50, 30]
    table_bytes = sum(big) * 16 * 4
    budget = {"embedding-memory-per-rank": "366MiB", "embedding-dim": 16, "bottom-mlp": "13-32-16", "max-steps": 3}
    peaks = {}
    for name, cardinalities in (("big", big), ("tiny", tiny)):
        data = tmp_path / name
        generate_ctr(data, rows=6_000, seed=5, cardinalities=cardinalities, log=lambda *_: None)
        args = flags(data, tmp_path / f"run-{name}", **budget)
        if name == "big":
            error = refused(capsys, [*args, "--embedding-sharding", "none"])
            assert "need 549.32 MiB in every process, more than its 366.00 MiB" in error
        torchrun([*args, "--embedding-sharding", "auto"], 2)
        summary = json.loads((tmp_path / f"run-{name}" / "summary.json").read_text())
        peaks[name] = summary["peak_memory_bytes_per_rank"]
    growth = [(b - t) / table_bytes for b, t in zip(peaks["big"], peaks["tiny"])]
    assert all(0.45 < g < 0.9 for g in growth), growth


@needs_torchrec
def test_a_one_process_checkpoint_of_another_architecture_is_refused_before_conversion(click_log, tmp_path):
    """Resuming one process's last.pt sharded with another embedding width: one line naming the
    setting; last.pt untouched and no converted folder left."""
    run = tmp_path / "run"
    main(["train", *flags(click_log, run, **{"max-steps": 2})])
    before = (run / "checkpoints" / "last.pt").read_bytes()
    other = flags(click_log, run, **{"embedding-dim": 12, "bottom-mlp": "13-32-12", "embedding-sharding": "table-wise"})
    result = subprocess.run(
        [*torchrun_command(2), "train", *other, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    line = next(x for x in result.stderr.splitlines() if x.startswith("recforge: error:"))
    assert "--resume: --embedding-dim" in line and "cannot change mid-run" in line
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not (run / "checkpoints" / "converted").exists()

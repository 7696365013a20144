"""The fault matrix of settings, checkpoints and run folders (data files: test_fault_matrix_data.py,
full disks and read-only folders: test_full_disk.py). Every case is a user's mistake or a fault
they can fix: exit 2, one `recforge: error:` line naming the flag, the file and line, or the
path, no traceback, and every file that existed before is byte-identical after.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from conftest import tiny_synthetic_args
from faults import assert_user_error, run_cli, snapshot


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished NeuMF run and a GMF run on the same tiny data, sharing a cache."""
    root = tmp_path_factory.mktemp("matrix")
    for model in ("neumf", "gmf"):
        args = tiny_synthetic_args(root, epochs=1, model=model, output_dir=root / model, cache_dir=root / "cache")
        result = run_cli("train", *args)
        assert result.code == 0, result.stderr
    return root


def tiny(root, **overrides):
    return tiny_synthetic_args(root, **{"epochs": 1, "cache_dir": root / "cache", **overrides})


BAD_FLAGS = [
    ({"batch_size": 0}, "--batch-size: must be at least 1, got 0"),
    ({"batch_size": -5}, "--batch-size: must be at least 1"),
    ({"batch_size": "many"}, "--batch-size: must be an integer, got 'many'"),
    ({"learning_rate": "nan"}, "--learning-rate: must be a finite number"),
    ({"learning_rate": "inf"}, "--learning-rate: must be a finite number"),
    ({"learning_rate": -0.1}, "--learning-rate: must be greater than 0"),
    ({"dropout": 2}, "--dropout: must be at least 0 and less than 1, got 2.0"),
    ({"negative_samples": -1}, "--negative-samples: must be at least 1"),
    ({"epochs": 0}, "--epochs: must be at least 1"),
    ({"topk": 0}, "--topk: must be at least 1"),
    ({"topk": 500}, "--topk 500: more than the 100 candidates"),
    ({"num_factors": 0}, "--num-factors: must be at least 1"),
    ({"layers": "64,0,8"}, "--layers: must be at least 1, got 0 (item 2)"),
    ({"layers": "33,8"}, "--layers"),
    ({"beta2": 1}, "--beta2: must be at least 0 and less than 1"),
    ({"threads": 0}, "--threads: must be at least 1"),
    ({"synthetic_interactions": 0}, "--synthetic-interactions: must be at least 1"),
    ({"synthetic_users": -3}, "--synthetic-users: must be at least 1"),
    ({"valid_batch_size": 0}, "--valid-batch-size: must be at least 1"),
    ({"device": "cuda"} if not torch.cuda.is_available() else {"device": "cuda:99"}, "--device cuda"),
    ({"device": "tpu"}, "--device tpu: not a device"),
    ({"precision": "fp8"}, "argument --precision: invalid choice: 'fp8'"),
    ({"valid_negative": 100_000}, "fewer than --valid-negative 100000"),
    ({"quality_target": 2}, "--quality-target: must be at least 0 and at most 1"),
    ({"eval_split": "test"}, "--eval-split test: applies to click-log models only, not neumf: it would be ignored"),
]


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--valid-protocol", "leave-one-out"], "--valid-protocol leave-one-out: applies to ranking models only"),
        (["--topk", "5"], "--topk 5: applies to ranking models only, not dlrm"),
        (
            ["--deep-learning-rate", "0.5"],
            "--deep-learning-rate: a setting of --optimizer ftrl+proximal-adagrad, not of sgd",
        ),
    ],
)
def test_a_setting_of_another_kind_of_model_is_refused_not_ignored(tmp_path, flags, needle):
    result = run_cli("train", "--model", "dlrm", "--data-dir", tmp_path, *flags, "--output-dir", tmp_path / "run")
    assert_user_error(result, needle)
    assert not (tmp_path / "run").exists()


def test_a_preset_setting_of_another_kind_of_model_names_its_line(tmp_path):
    (tmp_path / "preset.yaml").write_text("model: dlrm\neval:\n  valid_protocol: leave-one-out\n")
    result = run_cli("train", "--config", tmp_path / "preset.yaml", "--output-dir", tmp_path / "run")
    assert_user_error(result, "preset.yaml:3: field 'eval.valid_protocol': applies to ranking models only, not dlrm")


@pytest.mark.parametrize(
    "flags, needle", BAD_FLAGS, ids=[next(iter(f)) + "=" + str(next(iter(f.values()))) for f, _ in BAD_FLAGS]
)
def test_bad_flag(tmp_path, flags, needle):
    result = run_cli("train", *tiny(tmp_path, **flags))
    assert_user_error(result, needle)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["criteo-synthetic", "--synthetic-rows", "0"], "--synthetic-rows: must be at least 10"),
        (["outbrain-synthetic", "--synthetic-displays", "-1"], "--synthetic-displays: must be at least 1"),
        (["outbrain-synthetic", "--valid-fraction", "1.5"], "--valid-fraction: must be greater than 0 and less than 1"),
        (["criteo-synthetic", "--workers", "0"], "--workers: must be at least 1"),
        (["ml-100k", "--dataset", "csv"], "unrecognized arguments: --dataset csv"),
        (["criteo-kaggle", "--max-ind-range", "1"], "--max-ind-range: must be at least 2"),
    ],
)
def test_bad_prepare_flag(tmp_path, flags, needle):
    result = run_cli("prepare", *flags, "--out", tmp_path / "out", "--data-dir", tmp_path)
    assert_user_error(result, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("train:\n  batch_size: 0\n", "preset.yaml:2: field 'train.batch_size': must be at least 1"),
        ("train:\n  learning_rate: fast\n", "preset.yaml:2: field 'train.learning_rate': must be a number"),
        ("train:\n  batch_size: [1\n", "preset.yaml:3: invalid YAML"),
        ("- train\n- eval\n", "preset.yaml:1: a config file must be a mapping"),
        ("trian:\n  epochs: 2\n", "preset.yaml:1: field 'trian': unknown key"),
        ("arch:\n  dropout: 1.0\n", "preset.yaml:2: field 'arch.dropout': must be at least 0 and less than 1"),
        ("eval:\n  topk: -1\n", "preset.yaml:2: field 'eval.topk'"),
    ],
)
def test_bad_preset(tmp_path, text, needle):
    (tmp_path / "preset.yaml").write_text(text)
    result = run_cli("train", "--config", tmp_path / "preset.yaml", "--output-dir", tmp_path / "run")
    assert_user_error(result, needle)


def test_missing_preset(tmp_path):
    assert_user_error(
        run_cli("train", "--config", tmp_path / "nope.yaml"), "nope.yaml: no such file, and no preset of that name"
    )


def checkpoint_cases(root):
    neumf, gmf = root / "neumf" / "checkpoints" / "best.pt", root / "gmf" / "checkpoints" / "best.pt"
    (root / "text.pt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, root / "plain.pt")
    torch.save({"format": "recforge-checkpoint-2", "payload": shutil.SameFileError("x")}, root / "objects.pt")
    return [
        (["evaluate", "--checkpoint", root / "missing.pt"], ["missing.pt: checkpoint not found"]),
        (["evaluate", "--checkpoint", root / "text.pt"], ["text.pt: not a readable checkpoint"]),
        (["evaluate", "--checkpoint", root / "plain.pt"], ["plain.pt: a torch file but not a recforge checkpoint"]),
        (["evaluate", "--checkpoint", root / "objects.pt"], ["objects.pt: holds Python objects", "not loaded"]),
        (["recommend", "--checkpoint", neumf, "--user", "1", "--k", "-3"], ["--k: must be at least 1, got -3"]),
        (["recommend", "--checkpoint", neumf, "--user", "no-such-user"], ["user 'no-such-user' is not in"]),
        (["recommend", "--checkpoint", neumf, "--user", "1" * 23], [f"user '{'1' * 23}' is not in"]),
        (
            ["evaluate", "--checkpoint", neumf, "--synthetic-interactions", "5000"],
            ["best.pt: trained on other data", "training interactions"],
        ),
        (
            ["recommend", "--checkpoint", neumf, "--user", "1", "--synthetic-seed", "7"],
            ["best.pt: trained on other data"],
        ),
        (
            ["train", *tiny(root, output_dir=root / "fresh", restore_checkpoint=gmf)],
            ["best.pt: a gmf checkpoint, not neumf"],
        ),
        (
            ["train", *tiny(root, output_dir=root / "fresh", restore_checkpoint=neumf, num_factors=16)],
            ["best.pt: trained with another architecture: --num-factors (8 -> 16)"],
        ),
        (
            ["train", *tiny(root, output_dir=root / "fresh", restore_checkpoint=neumf, synthetic_interactions=5000)],
            ["trained on other data"],
        ),
        (["train", *tiny(root, output_dir=root / "scored", mode="eval")], ["--mode eval needs --restore-checkpoint"]),
        (
            ["train", *tiny(root, output_dir=root / "scored", mode="eval", restore_checkpoint=root / "text.pt")],
            ["text.pt: not a readable checkpoint"],
        ),
        (["train", *tiny(root, output_dir=root / "neumf")], ["holds an earlier run; pass --resume"]),
        (
            ["train", *tiny(root, output_dir=root / "neumf", batch_size=512), "--resume"],
            ["--resume: --batch-size (1024 -> 512) differs from the run", "cannot change mid-run"],
        ),
        (
            ["train", *tiny(root, output_dir=root / "neumf", seed=9, synthetic_interactions=5000), "--resume"],
            ["trained on other data"],
        ),
    ]


def test_checkpoint_and_run_folder_faults(trained):
    before = snapshot(trained / "neumf", trained / "gmf")
    for args, needles in checkpoint_cases(trained):
        assert_user_error(run_cli(*args), *needles)
        assert snapshot(trained / "neumf", trained / "gmf") == before, args
    assert not (trained / "fresh" / "checkpoints").exists()


def test_a_dlrm_checkpoint_is_not_a_recommender(tmp_path):
    assert run_cli("prepare", "criteo-synthetic", "--synthetic-rows", 3000, "--out", tmp_path / "ctr").code == 0
    result = run_cli(
        "train",
        "--model",
        "dlrm",
        "--data-dir",
        tmp_path / "ctr",
        "--dataset",
        "criteo-synthetic",
        "--output-dir",
        tmp_path / "run",
        "--batch-size",
        512,
        "--embedding-dim",
        4,
        "--bottom-mlp",
        "13-8-4",
        "--top-mlp",
        "8-1",
        "--threads",
        1,
    )
    assert result.code == 0, result.stderr
    result = run_cli("recommend", "--checkpoint", tmp_path / "run" / "checkpoints" / "best.pt", "--user", "1")
    assert_user_error(result, "a dlrm checkpoint scores click logs; recommend takes a ranking model's checkpoint")


def test_scoring_never_rewrites_the_training_run(trained):
    run = trained / "neumf"
    before = snapshot(run)
    result = run_cli(
        "train", *tiny(trained, output_dir=run, mode="eval", restore_checkpoint=run / "checkpoints" / "best.pt")
    )
    assert result.code == 0, result.stderr
    assert {k: v for k, v in snapshot(run).items() if "/eval/" not in k} == before
    scored = json.loads((run / "eval" / "summary.json").read_text())
    trained_best = json.loads((run / "summary.json").read_text())["metrics"]
    assert scored["metrics"]["HR@10"] == trained_best["HR@10"]
    shutil.rmtree(run / "eval")


def test_a_diverging_run_stops_naming_the_step_and_saves_nothing_as_best(tmp_path):
    result = run_cli("train", *tiny(tmp_path, learning_rate=1e6, epochs=3))
    line = assert_user_error(result, "the training loss diverged", "no checkpoint was written", "--learning-rate")
    assert "step " in line
    assert (
        not (tmp_path / "run" / "checkpoints" / "best.pt").exists() and not (tmp_path / "run" / "summary.json").exists()
    )


def test_a_diverged_run_is_set_back_to_its_last_sound_checkpoint_and_the_advice_followed_trains(tmp_path):
    """With a checkpoint every step, the last ones hold weights already diverging (their next loss
    is high, the smoothed loss not yet over the bound): the run is set back to the last checkpoint
    whose weights trained on soundly, and --resume with a lower rate, as the message says, trains."""
    ramp = {"learning_rate": 10, "warmup_steps": 30, "save_steps": 1}  # the rate rises until the loss blows up
    result = run_cli("train", *tiny(tmp_path, epochs=3, **ramp))
    line = assert_user_error(result, "the training loss diverged", "the run is set back to", "(step ")
    assert "--resume with lower --learning-rate (or --warmup-steps) continues from it" in line
    stopped = int(line.split("step ")[1].split()[0])
    back = int(line.split("set back to ")[1].split("(step ")[1].split(")")[0])
    assert back < stopped - 1
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["step"] == back
    assert not (checkpoints / "best.pt").exists()
    resumed = run_cli("train", *tiny(tmp_path, epochs=3, **(ramp | {"learning_rate": 0.01})), "--resume")
    assert resumed.code == 0, resumed.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["resumed_from_step"] == back
    losses = [r["train_loss"] for r in records]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert not (checkpoints / "sound.pt").exists()  # a finished run keeps no fallback


def test_an_environment_fault_names_its_path_and_a_bug_asks_for_a_report(tmp_path):
    # The kill tests' hook opens its log for appending: a folder there is an OS error with a path.
    result = run_cli("train", *tiny(tmp_path), env={"RECFORGE_FAULT_LOG": tmp_path})
    assert_user_error(result, f"{tmp_path}: is a folder, not a file")
    # int("x") inside the hook stands in for a bug: one line asking for a report, exit 1.
    result = run_cli("train", *tiny(tmp_path), env={"RECFORGE_FAULT_AT": "x"})
    assert_user_error(result, "internal error (ValueError", "please report it", code=1)
    debug = run_cli("train", *tiny(tmp_path), env={"RECFORGE_FAULT_AT": "x", "RECFORGE_DEBUG": "1"})
    assert debug.code == 1 and "Traceback (most recent call last)" in debug.stderr


def test_files_follow_the_umask(tmp_path):
    result = run_cli("train", *tiny(tmp_path))
    assert result.code == 0, result.stderr
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [
        tmp_path / "run" / "config.yaml",
        tmp_path / "run" / "summary.json",
        tmp_path / "run" / "checkpoints" / "last.pt",
    ]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    cache_entry = next((tmp_path / "cache").iterdir())
    assert cache_entry.stat().st_mode & 0o777 == 0o777 & ~mask

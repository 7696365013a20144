"""The command line end to end: train -> evaluate -> recommend, run directory, resume, torchrun."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import SHARED_DATA, tiny_synthetic_args, torchrun_command
from faults import run_cli

from recforge.cli import main


def test_train_evaluate_recommend(tmp_path, capsys):
    main(["train", *tiny_synthetic_args(tmp_path)])
    out = capsys.readouterr().out
    assert "New Best Epoch" in out and "HR@10 = " in out and "summary:" in out
    run = tmp_path / "run"

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"] == "neumf" and config["arch"]["layers"] == [32, 16, 8] and config["train"]["epochs"] == 3
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    summary = json.loads((run / "summary.json").read_text())
    best = max(metrics, key=lambda m: m["HR@10"])
    assert summary["best_epoch"] == best["epoch"] and summary["metrics"]["HR@10"] == best["HR@10"]
    for key in ("NDCG@10", "train_samples_per_s", "eval_samples_per_s", "time_to_train_s"):
        assert key in summary or key in summary["metrics"]
    assert summary["train_samples_per_s"] > 0 and summary["time_to_train_s"] > 0

    checkpoint = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert checkpoint["epoch"] == summary["best_epoch"] and {"model", "optimizers", "scaler", "rng"} <= set(checkpoint)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3

    main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"HR@10 = {best['HR@10']:.4f}, NDCG@10 = {best['NDCG@10']:.4f}"
    evaluation = json.loads((run / "evaluation-sampled.json").read_text())
    assert evaluation["metrics"]["HR@10"] == pytest.approx(best["HR@10"])

    main(
        [
            "evaluate",
            "--checkpoint",
            str(run / "checkpoints" / "best.pt"),
            "--eval-protocol",
            "full",
            "--output",
            str(tmp_path / "full.json"),
        ]
    )
    capsys.readouterr()
    full = json.loads((tmp_path / "full.json").read_text())
    assert full["eval_protocol"] == "full"
    assert full["metrics"]["HR@10"] < best["HR@10"]  # ranking against every item is harder

    main(["recommend", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--user", "7", "--k", "5", "--json"])
    rows = json.loads(capsys.readouterr().out)["items"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_recommend_uses_raw_ids_and_titles_and_skips_seen_items(tmp_path, capsys):
    data = SHARED_DATA / "ml-100k"
    if not data.exists():
        pytest.skip("../shared/data is not beside the repository")
    args = [
        "--dataset",
        "ml-100k",
        "--data-dir",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--output-dir",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "8192",
        "--threads",
        "1",
    ]
    main(["train", *args])
    capsys.readouterr()
    main(
        [
            "recommend",
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "last.pt"),
            "--user",
            "196",
            "--k",
            "10",
            "--json",
        ]
    )
    rows = json.loads(capsys.readouterr().out)["items"]
    seen = {
        int(line.split("\t")[1]) for line in (data / "u.data").read_text().splitlines() if line.split("\t")[0] == "196"
    }
    assert len(rows) == 10 and not {r["item"] for r in rows} & (seen - {max(seen)})
    titles = {
        int(line.split("|")[0]): line.split("|")[1]
        for line in (data / "u.item").read_text(encoding="latin-1").splitlines()
    }
    assert all(r["title"] == titles[r["item"]] for r in rows)
    with pytest.raises(SystemExit):
        main(["recommend", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"), "--user", "99999"])
    assert "user '99999' is not in" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "HR@10": 0.5}\n')
    result = run_cli("train", *tiny_synthetic_args(tmp_path))
    assert result.code == 2
    assert result.stderr.strip().startswith("recforge: error:") and "--resume" in result.stderr
    assert (run / "metrics.jsonl").read_text() == '{"epoch": 1, "HR@10": 0.5}\n'


def test_threshold_stops_early(tmp_path):
    result = run_cli("train", *tiny_synthetic_args(tmp_path, epochs=10, quality_target=0.2))
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["first_epoch_at_target"] == summary["epochs_trained"] < 10
    assert "reached the target" in result.stdout


def test_killed_run_resumes_to_the_same_result(tmp_path):
    epochs = 6
    reference = tmp_path / "reference"
    args = tiny_synthetic_args(reference, epochs=epochs, synthetic_interactions=20_000, batch_size=256, dropout=0.2)
    assert run_cli("train", *args).code == 0

    victim = tmp_path / "victim"
    args = tiny_synthetic_args(victim, epochs=epochs, synthetic_interactions=20_000, batch_size=256, dropout=0.2)
    process = subprocess.Popen(
        [sys.executable, "-m", "recforge", "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    metrics = victim / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = len(metrics.read_text().splitlines())
    assert interrupted_at < epochs, "the run finished before it could be killed"

    result = run_cli("train", *args, "--resume")
    assert result.code == 0, result.stderr
    assert "resuming" in result.stdout
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, epochs + 1))
    expected = [json.loads(line) for line in (reference / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["HR@10"] for m in lines] == [m["HR@10"] for m in expected]
    assert [m["train_loss"] for m in lines] == pytest.approx([m["train_loss"] for m in expected], rel=1e-6)


def test_two_process_torchrun_matches_one_process(tmp_path):
    one = tmp_path / "one"
    args = tiny_synthetic_args(one, synthetic_users=203, precision="fp32")  # 203 users: uneven shards
    assert run_cli("train", *args).code == 0
    two = tmp_path / "two"
    args = tiny_synthetic_args(two, synthetic_users=203, precision="fp32")
    torchrun = torchrun_command()
    result = subprocess.run([*torchrun, "train", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("summary:") == 1  # only rank 0 reports
    single = [json.loads(line) for line in (one / "run" / "metrics.jsonl").read_text().splitlines()]
    double = [json.loads(line) for line in (two / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["eval_users"] for m in double] == [m["eval_users"] for m in single]
    for a, b in zip(single, double):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert abs(b["HR@10"] - a["HR@10"]) <= 0.02

    # Evaluating one checkpoint with 2 processes counts every user exactly once; several processes
    # write a distributed checkpoint, which one process reads too.
    assert not (two / "run" / "checkpoints" / "last.pt").exists()
    checkpoint = two / "run" / "checkpoints" / "last.json"
    result = subprocess.run(
        [*torchrun, "evaluate", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "e2.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert run_cli("evaluate", "--checkpoint", checkpoint, "--output", tmp_path / "e1.json").code == 0
    e1, e2 = (json.loads((tmp_path / f).read_text())["metrics"] for f in ("e1.json", "e2.json"))
    assert e2["eval_users"] == e1["eval_users"] == double[-1]["eval_users"]
    assert e2["HR@10"] == pytest.approx(e1["HR@10"], abs=1e-12) and e2["NDCG@10"] == pytest.approx(
        e1["NDCG@10"], abs=1e-12
    )


@pytest.mark.parametrize(
    "flags",
    [["--precision", "fp32"], ["--precision", "bf16"], ["--precision", "fp16"], ["--compile"]],
    ids=["fp32", "bf16", "fp16", "compile"],
)
def test_precisions_and_compile_train_and_learn(tmp_path, flags):
    result = run_cli("train", *tiny_synthetic_args(tmp_path, epochs=4), *flags)
    assert result.code == 0, result.stderr[-2000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["train_loss"] == m["train_loss"] for m in metrics)  # finite, not NaN
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert max(m["HR@10"] for m in metrics) > 0.2  # a random ranking of 100 candidates gets 0.1
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["precision"] == (
        flags[1] if len(flags) > 1 else "auto"
    )

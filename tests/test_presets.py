"""Every shipped preset trains stably on small synthetic data of its kind: the loss falls, the
metric beats a random ranking, and the divergence guard does not fire.

Each preset keeps its model, optimizer and rates; the data, the number of epochs and (where the
preset's batch would leave a small log one or two steps) the batch size are scaled to a test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from faults import run_cli

from recforge.core.shipped import PRESETS
from recforge.prepare.outbrain import prepare_outbrain
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.prepare.synthetic_outbrain import write_outbrain_csvs

CONFIGS = PRESETS
RANKING = ["quickstart", "ncf-nvidia-ml20m", "ncf-mlperf-ml20m", "ncf-paper-ml1m", "recbole-neumf", "ncf-ml100k"]
CLICK_LOGS = ["dlrm-criteo-kaggle", "dlrm-criteo-terabyte", "deepctr-wdl"]
GROUPED = ["wide-deep-outbrain"]
THROUGHPUT = ["wide-deep-outbrain-tf1-throughput"]


def test_every_preset_is_tested_here():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(RANKING + CLICK_LOGS + GROUPED + THROUGHPUT)


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("presets") / "ctr"
    generate_ctr(
        folder, rows=40_000, seed=5, cardinalities=[40, 300, 2000, 25, 6000, 9, 500, 1200], log=lambda *_: None
    )
    return folder


@pytest.fixture(scope="module")
def outbrain_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    info = write_outbrain_csvs(root / "raw", displays=3000, seed=2)
    prepare_outbrain(root / "raw", root / "prepared", valid_fraction=0.25, seed=2, log=lambda *_: None)
    return root / "prepared", info


def capped_batch(preset: str, cap: int) -> list:
    """--batch-size CAP where the preset's batch is larger (it would leave a small log a step or two)."""
    batch = (yaml.safe_load((CONFIGS / f"{preset}.yaml").read_text()).get("train") or {}).get("batch_size", cap)
    return ["--batch-size", cap] if batch > cap else []


def train(preset: str, tmp_path: Path, *flags) -> list[dict]:
    result = run_cli(
        "train",
        "--config",
        CONFIGS / f"{preset}.yaml",
        "--output-dir",
        tmp_path / "run",
        "--threads",
        1,
        *capped_batch(preset, 2048),
        *flags,
    )
    assert result.code == 0, result.stderr
    assert "diverged" not in result.stdout + result.stderr
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def assert_learned(records: list[dict], metric: str, baseline: float) -> None:
    losses = [r["train_loss"] for r in records]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
    best = max(r[metric] for r in records)
    assert best > baseline, (metric, best, baseline)


@pytest.mark.parametrize("preset", RANKING)
def test_ranking_preset_trains(preset, tmp_path):
    data = [
        "--dataset",
        "synthetic",
        "--synthetic-users",
        400,
        "--synthetic-items",
        4000,
        "--synthetic-interactions",
        25_000,
        "--cache-dir",
        tmp_path / "cache",
        "--min-user-interactions",
        20,
    ]
    records = train(preset, tmp_path, *data, "--epochs", 3, "--hr-threshold", "none")
    negatives = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["eval"]["valid_negative"]
    assert_learned(records, "HR@10", baseline=2 * 10 / (1 + negatives))  # twice a random ranking's


# MLPerf's Terabyte schedule is in steps of batch 65536 (warm-up 8000, decay from 48000 over
# 24000): on a test log of 17 steps of 2048 it is scaled to the run, and SGD's rate 24 by the
# batch (the linear scaling rule MLPerf's rate comes from): 24 * 2048 / 65536.
SCALED = {
    "dlrm-criteo-terabyte": ["--learning-rate", 0.75, "--warmup-steps", 3, "--decay-start-step", 10, "--decay-steps", 8]
}


@pytest.mark.parametrize("preset", CLICK_LOGS)
def test_click_log_preset_trains(preset, click_log, tmp_path):
    records = train(
        preset,
        tmp_path,
        "--dataset",
        "criteo-synthetic",
        "--data-dir",
        click_log,
        *SCALED.get(preset, []),
        "--evals-per-epoch",
        3,
        "--epochs",
        1,
        "--hr-threshold",
        "none",
    )
    assert_learned(records, "AUC", baseline=0.6)


# The preset's 20 warm-up steps need a run longer than them: at batch 2048 this log is 8 steps an
# epoch, and 2 epochs ended inside the warm-up with the loss still rising (0.51, 0.42, 0.60, 0.85).
# At batch 512 (31 steps an epoch), 4 epochs: loss 0.65, 0.46, 0.42, 0.39; MAP@12 0.50 -> 0.55
# (seeds 1-3 alike; the planted best 0.63, a random ranking 0.42).
def test_outbrain_preset_trains(outbrain_log, tmp_path):
    prepared, info = outbrain_log
    records = train("wide-deep-outbrain", tmp_path, "--data-dir", prepared, "--batch-size", 512, "--epochs", 4)
    assert_learned(records, "MAP@12", baseline=info["random_map12"] + 0.05)


def test_throughput_preset_says_so_and_benchmarks(outbrain_log, tmp_path):
    header = (CONFIGS / "wide-deep-outbrain-tf1-throughput.yaml").read_text().splitlines()[0]
    assert header.startswith("# THROUGHPUT ONLY")
    result = run_cli(
        "train",
        "--config",
        CONFIGS / "wide-deep-outbrain-tf1-throughput.yaml",
        "--data-dir",
        outbrain_log[0],
        "--output-dir",
        tmp_path / "run",
        "--batch-size",
        2048,
        "--max-steps",
        4,
        "--benchmark",
        "--threads",
        1,
    )
    assert result.code == 0, result.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train_samples_per_s"] > 0


def test_presets_are_found_by_name_and_listed():
    listed = run_cli("presets")
    assert listed.code == 0
    rows = dict(line.split(None, 1) for line in listed.stdout.splitlines())
    assert sorted(rows) == sorted(RANKING + CLICK_LOGS + GROUPED + THROUGHPUT)
    assert all(0 < len(text) <= 100 for text in rows.values())
    assert rows["wide-deep-outbrain-tf1-throughput"].startswith("THROUGHPUT ONLY")
    unknown = run_cli("train", "--config", "no-such-preset")
    assert unknown.code == 2 and "no preset of that name (shipped: deepctr-wdl," in unknown.stderr

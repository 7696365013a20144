"""DLRM, the click-log task and the step-based loop features it brought."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import torchrun_command

from recforge.cli import main
from recforge.config import TrainConfig
from recforge.data.ctr_format import load_meta, load_split
from recforge.data.encoders import load_encoders
from recforge.models.dlrm import DLRM, DLRMConfig, DotInteraction
from recforge.optim.build import lr_factor, make_optimizers
from recforge.optim.row_wise import SGD, RowWiseAdagrad, SparseRowAdam
from recforge.optim.sparse_grad import unique_rows
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.registry import build_config


@pytest.fixture(scope="module")
def click_log(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ctr") / "synthetic"
    cardinalities = [50, 200, 1000, 30, 5000, 8, 300, 2000]
    generate_ctr(folder, rows=60_000, seed=3, cardinalities=cardinalities, log=lambda *_: None)
    return folder


def dlrm_args(click_log, run, **extra):
    flags = {
        "model": "dlrm",
        "dataset": "criteo-synthetic",
        "data-dir": click_log,
        "output-dir": run,
        "batch-size": 1024,
        "optimizer": "adam",
        "learning-rate": 0.002,
        "threads": 1,
        "epochs": 1,
        "embedding-dim": 8,
        "bottom-mlp": "13-64-8",
        "top-mlp": "64-1",
        "valid-batch-size": 8192,
    }
    flags.update(extra)
    return [x for k, v in flags.items() for x in (f"--{k}", str(v))]


def summary_of(run):
    return json.loads((run / "summary.json").read_text())


def test_synthetic_click_log_is_seeded_and_knows_its_best_auc(click_log, tmp_path):
    meta = load_meta(click_log)
    assert meta.rows == {"train": 51_428, "valid": 4_286, "test": 4_286}
    assert 0.8 < meta.info["bayes_auc"]["valid"] < 1.0
    train = load_split(click_log, "train")
    assert train["sparse"].shape == (51_428, 8) and train["dense"].dtype == np.float32
    assert (train["sparse"].max(axis=0) < np.array(meta.cardinalities)).all() and train["sparse"].min() >= 0
    assert 0.15 < train["label"].mean() < 0.4
    again = tmp_path / "again"
    generate_ctr(again, rows=60_000, seed=3, cardinalities=meta.cardinalities, log=lambda *_: None)
    assert np.array_equal(load_split(again, "valid")["sparse"], load_split(click_log, "valid")["sparse"])


def test_synthetic_click_log_saves_encoders_for_criteo_format_rows(click_log):
    """The synthetic log goes through the click-log encoders: its saved encoders take raw rows as a
    Criteo log has them (counts, 32-bit hex values) and give the ids and features it holds."""
    meta, valid = load_meta(click_log), load_split(click_log, "valid")
    ids = np.asarray(valid["sparse"][:64])
    raw = {name: pa.array([f"{v:08x}" for v in ids[:, j]]) for j, name in enumerate(meta.sparse_names)}
    counts = {name: pa.array([None, -3, 0, 3] * 16, pa.int64()) for name in meta.dense_names}
    encoded = load_encoders(click_log).encode(pa.table(raw | counts))
    np.testing.assert_array_equal(encoded["sparse"], ids)
    np.testing.assert_array_equal(encoded["dense"][:4, 0], np.log1p(np.array([0, 0, 0, 3], np.float32)))
    too_big = load_encoders(click_log).encode(pa.table({**raw, "C1": pa.array([f"{50 + 7:08x}"] * 64)} | counts))
    assert (too_big["sparse"][:, 0] == 7).all()  # a value past the cardinality wraps, as MLPerf's modulo


def test_dlrm_learns_the_planted_signal(click_log, tmp_path, capsys):
    main(["train", *dlrm_args(click_log, tmp_path / "run", epochs=2, **{"evals-per-epoch": 2})])
    summary = summary_of(tmp_path / "run")
    bayes = load_meta(click_log).info["bayes_auc"]["valid"]
    assert summary["metrics"]["AUC"] > 0.75 and summary["metrics"]["AUC"] > bayes - 0.12
    assert summary["metrics"]["logloss"] < 0.5
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [26, 51, 77, 102]  # two evaluations per 51-step epoch
    assert "AUC = " in capsys.readouterr().out


def test_eval_and_inference_modes_score_a_checkpoint(click_log, tmp_path):
    main(["train", *dlrm_args(click_log, tmp_path / "run")])
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    main(["train", *dlrm_args(click_log, tmp_path / "eval", mode="eval", **{"restore-checkpoint": checkpoint})])
    assert summary_of(tmp_path / "eval")["metrics"]["AUC"] == pytest.approx(
        summary_of(tmp_path / "run")["metrics"]["AUC"]
    )
    main(
        [
            "train",
            *dlrm_args(click_log, tmp_path / "infer", mode="inference", **{"restore-checkpoint": checkpoint}),
            "--write-predictions",
        ]
    )
    predictions = np.load(tmp_path / "infer" / "predictions.npy")
    assert predictions.shape == (4_286,) and ((predictions > 0) & (predictions < 1)).all()
    assert summary_of(tmp_path / "infer")["inference_samples_per_s"] > 0
    main(["evaluate", "--checkpoint", str(checkpoint), "--eval-split", "test", "--output", str(tmp_path / "test.json")])
    assert 0.5 < json.loads((tmp_path / "test.json").read_text())["metrics"]["AUC"] < 1.0


def test_max_steps_then_resume_equals_one_uninterrupted_run(click_log, tmp_path):
    main(["train", *dlrm_args(click_log, tmp_path / "whole", **{"save-steps": 10})])
    main(["train", *dlrm_args(click_log, tmp_path / "split", **{"max-steps": 20, "save-steps": 10})])
    assert summary_of(tmp_path / "split")["steps"] == 20
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step-*.pt")) == ["step-10.pt"]
    main(
        ["train", *dlrm_args(click_log, tmp_path / "split", **{"save-steps": 10, "keep-checkpoint-max": 2}), "--resume"]
    )
    whole, split = summary_of(tmp_path / "whole"), summary_of(tmp_path / "split")
    assert split["steps"] == whole["steps"] == 51
    assert split["metrics"]["AUC"] == pytest.approx(whole["metrics"]["AUC"], abs=1e-9)
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").glob("step-*.pt")) == [
        "step-40.pt",
        "step-50.pt",
    ]


def test_a_diverging_run_stops_at_the_step_and_keeps_the_last_good_checkpoint(click_log, tmp_path):
    args = dlrm_args(click_log, tmp_path / "run", optimizer="sgd", **{"learning-rate": 1e30, "save-steps": 1})
    result = subprocess.run([sys.executable, "-m", "recforge", "train", *args], capture_output=True, text=True)
    assert result.returncode == 2
    error = result.stderr.strip()
    assert error.startswith("recforge: error: step ") and "training loss is" in error and "last.pt" in error
    failed_step = int(error.split("step ")[1].split()[0])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == failed_step - 1


def test_profile_writes_a_trace(click_log, tmp_path):
    main(
        [
            "train",
            *dlrm_args(click_log, tmp_path / "run", **{"max-steps": 8, "profile-start-step": 3, "profile-steps": 2}),
            "--profile",
            "--no-eval",
        ]
    )
    assert (tmp_path / "run" / "profile" / "trace.json").stat().st_size > 1000
    assert "aten::" in (tmp_path / "run" / "profile" / "top_ops.txt").read_text()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records and not any("AUC" in r for r in records)  # --no-eval
    assert summary_of(tmp_path / "run")["steps"] == 8


def test_fused_table_equals_per_field_tables():
    torch.manual_seed(0)
    cardinalities = [5, 7, 3]
    separate = DLRM(4, cardinalities, DLRMConfig(embedding_dim=4, bottom_mlp=[4, 4], top_mlp=[8, 1]))
    fused = DLRM(4, cardinalities, DLRMConfig(embedding_dim=4, bottom_mlp=[4, 4], top_mlp=[8, 1], emb_fusion=True))
    state = separate.state_dict()
    state["embeddings.table.weight"] = torch.cat([state.pop(f"embeddings.tables.{f}.weight") for f in range(3)])
    fused.load_state_dict(state)
    batch = {"dense": torch.randn(6, 4), "sparse": torch.stack([torch.randint(0, c, (6,)) for c in cardinalities], 1)}
    assert torch.allclose(separate(batch), fused(batch), atol=1e-6)


def test_dot_interaction_is_the_upper_triangle():
    x = torch.randn(2, 3, 4)
    gram = x @ x.transpose(1, 2)
    assert torch.allclose(DotInteraction(3, False)(x), torch.stack([gram[:, 0, 1], gram[:, 0, 2], gram[:, 1, 2]], 1))
    assert DotInteraction(3, True)(x).shape == (2, 6)


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_gradient_matches_finite_differences(self_interaction):
    # Its backward is hand-written (one bmm on the symmetrised pair gradients), the diagonal
    # counting twice when a feature meets itself.
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(DotInteraction(5, self_interaction), (x,))


def test_rowwise_adagrad_step_by_hand():
    table = torch.nn.EmbeddingBag(3, 2, mode="sum", sparse=True)
    with torch.no_grad():
        table.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))
    optimizer = RowWiseAdagrad(table.parameters(), lr=0.5, eps=0.0)
    out = table(torch.tensor([[0], [2], [2]]))  # row 0 once, row 2 twice
    (out * torch.tensor([[1.0, 3.0]])).sum().backward()  # gradient of each use: [1, 3]
    optimizer.step()
    # row 0: g = [1, 3], state = mean(g^2) = 5, step = 0.5 * g / sqrt(5)
    # row 2: g = [2, 6], state = 20, step = 0.5 * g / sqrt(20); row 1 untouched
    expected = torch.tensor([[1 - 0.5 / 5**0.5, 1 - 1.5 / 5**0.5], [2.0, 2.0], [3 - 1 / 20**0.5, 3 - 3 / 20**0.5]])
    assert torch.allclose(table.weight, expected)
    assert torch.allclose(optimizer.state[table.weight]["sum"], torch.tensor([5.0, 0.0, 20.0]))


def test_learning_rate_schedule_warms_up_then_decays():
    cfg = TrainConfig(warmup_steps=4, decay_start_step=10, decay_steps=10, decay_power=2.0)
    assert [lr_factor(cfg, s) for s in (0, 1, 3, 4, 9)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(cfg, 15) == pytest.approx(0.25) and lr_factor(cfg, 20) == 0.0 and lr_factor(cfg, 30) == 0.0


def test_optimizers_take_sparse_tables_apart():
    model = DLRM(4, [5, 7], DLRMConfig(embedding_dim=4, bottom_mlp=[4, 4], top_mlp=[8, 1]))
    kinds = {
        name: [type(o).__name__ for o in make_optimizers(build_config({}, {"model": "dlrm", "optimizer": name}), model)]
        for name in ("adam", "sgd", "adagrad", "rowwise-adagrad")
    }
    assert kinds == {
        "adam": ["Adam", "SparseRowAdam"],
        "sgd": ["SGD"],
        "adagrad": ["Adagrad"],
        "rowwise-adagrad": ["Adagrad", "RowWiseAdagrad"],
    }


def test_two_process_torchrun_evaluates_every_row_once(click_log, tmp_path):
    args = dlrm_args(click_log, tmp_path / "two", **{"batch-size": 999})  # uneven last batch and shards
    torchrun = torchrun_command()
    result = subprocess.run(
        [*torchrun, "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )  # a crash shows its Python stack
    crash = result.stderr.find("Fatal Python error")
    assert result.returncode == 0, result.stderr[crash : crash + 3000] if crash >= 0 else result.stderr[-2000:]
    main(["train", *dlrm_args(click_log, tmp_path / "one", **{"batch-size": 999})])
    one, two = summary_of(tmp_path / "one"), summary_of(tmp_path / "two")
    assert two["metrics"]["eval_rows"] == one["metrics"]["eval_rows"] == 4_286
    assert two["steps"] == one["steps"] == 52
    assert abs(two["metrics"]["AUC"] - one["metrics"]["AUC"]) < 0.01


def test_sparse_row_adam_matches_torch_sparse_adam():
    torch.manual_seed(0)
    ours = torch.nn.EmbeddingBag(50, 4, mode="sum", sparse=True)
    reference = torch.nn.EmbeddingBag(50, 4, mode="sum", sparse=True)
    reference.load_state_dict(ours.state_dict())
    optimizers = [SparseRowAdam(ours.parameters(), lr=0.01), torch.optim.SparseAdam(reference.parameters(), lr=0.01)]
    for step in range(5):
        ids = torch.randint(0, 20, (32, 1))  # repeated ids: gradients of one row add up
        target = torch.randn(32, 4)
        for table, optimizer in zip((ours, reference), optimizers):
            optimizer.zero_grad()
            ((table(ids) - target) ** 2).sum().backward()
            optimizer.step()
        assert torch.allclose(ours.weight, reference.weight, atol=1e-6), step
    assert torch.equal(ours.weight[20:], reference.weight[20:])  # untouched rows stay


def test_sgd_on_sparse_tables_equals_torch_sgd():
    """recforge's SGD applies a table's sparse gradient itself (faster on CPUs): torch's update up
    to rounding (each lookup's row times -lr, not their sum), repeated rows included; dense
    parameters and their weight decay bit for bit as torch's; gradients stay readable after the
    step, and a torch SGD's saved state loads."""
    torch.manual_seed(0)
    ours = torch.nn.ModuleList([torch.nn.EmbeddingBag(50, 4, mode="sum", sparse=True), torch.nn.Linear(4, 1)])
    reference = copy.deepcopy(ours)

    def optimizer(kind, model):
        groups = [{"params": model[1].parameters(), "weight_decay": 0.01}, {"params": model[0].parameters()}]
        return kind(groups, lr=0.01)

    optimizers = [optimizer(SGD, ours), optimizer(torch.optim.SGD, reference)]
    optimizers[0].load_state_dict(optimizers[1].state_dict())
    start = ours[0].weight.detach().clone()
    for step in range(5):
        ids = torch.randint(0, 20, (32, 1))  # repeated ids: gradients of one row add up
        for model, opt in zip((ours, reference), optimizers):
            opt.zero_grad()
            model[1](model[0](ids)).square().sum().backward()
            opt.step()
        assert torch.allclose(ours[0].weight, reference[0].weight, rtol=1e-6, atol=1e-7), step
        assert torch.equal(ours[1].weight, reference[1].weight), step
        assert ours[0].weight.grad.is_sparse and ours[0].weight.grad._nnz() == 32
    assert not torch.equal(ours[0].weight[:20], start[:20]) and torch.equal(ours[0].weight[20:], start[20:])


@pytest.mark.parametrize("table_rows", [7, 20, 10_000])  # rows marked one by one, or sorted
def test_unique_rows_are_torch_unique(table_rows):
    indices = torch.tensor([5, 0, 5, 6, 3, 0, 5]) * (table_rows // 7)
    rows, inverse = unique_rows(indices, table_rows)
    expected_rows, expected_inverse = torch.unique(indices, return_inverse=True)
    assert rows.tolist() == expected_rows.tolist() and inverse.tolist() == expected_inverse.tolist()
    assert unique_rows(indices[:0], table_rows)[0].numel() == 0


def test_prepare_replaces_a_prepared_folder_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "synthetic"
    args = ["prepare", "criteo-synthetic", "--synthetic-rows", "1400", "--out", str(out)]
    main(args)
    with pytest.raises(SystemExit):
        main(args)
    assert "already holds a prepared dataset (meta.json); replace it with --overwrite" in capsys.readouterr().err
    main([*args, "--synthetic-seed", "5", "--overwrite"])
    assert load_meta(out).info["seed"] == 5
    assert not list(tmp_path.glob(".synthetic.*"))  # no partial or old folder left behind

"""Experiments people can see and tune: TensorBoard event files (read back with TensorBoard's own
reader), reports, a validation split that leaves the test items for the end."""

import json
import sys

import numpy as np
import pytest
from conftest import tiny_synthetic_args

from recforge.cli import main
from recforge.tasks.ranking import RankingTask
from recforge.train.curves import Curves

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")


def events(folder):
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    return reader


def test_event_files_hold_every_step_evaluation_and_the_hyperparameters(tmp_path):
    main(["train", *tiny_synthetic_args(tmp_path, epochs=2, evals_per_epoch=2)])
    run = tmp_path / "run"
    reader = events(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = records[-1]["step"]
    loss = reader.Scalars("step/loss")
    assert [e.step for e in loss] == list(range(1, steps + 1)) and all(0 < e.value < 2 for e in loss)
    assert [e.step for e in reader.Scalars("step/learning_rate/Adam")] == list(range(1, steps + 1))
    assert all(e.value > 0 for e in reader.Scalars("step/samples_per_s"))
    for tag, name in (("eval/HR@10", "HR@10"), ("eval/NDCG@10", "NDCG@10"), ("train/loss", "train_loss")):
        logged = reader.Scalars(tag)
        assert [e.step for e in logged] == [r["step"] for r in records]
        assert [e.value for e in logged] == pytest.approx([r[name] for r in records], rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    start = plugin_data_pb2.HParamsPluginData.FromString(
        reader.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["model"].string_value == "neumf"
    assert start.hparams["optim.learning_rate"].number_value == pytest.approx(0.01)
    best = reader.Scalars("best/HR@10")
    assert best[-1].value == pytest.approx(summary["metrics"]["HR@10"], rel=1e-6)


def test_a_resumed_run_replaces_the_curves_after_its_checkpoint(tmp_path):
    """Steps a killed run logged after its last checkpoint are purged by the resumed run's file."""
    with Curves(tmp_path, True, None, print) as first:
        for step in range(1, 11):
            first.step(step, 1.0, 100.0, [])
    with Curves(tmp_path, True, 5, print) as resumed:  # resumed from the checkpoint of step 5
        for step in range(6, 9):
            resumed.step(step, 2.0, 100.0, [])
    logged = events(tmp_path).Scalars("step/loss")
    assert [(e.step, e.value) for e in logged] == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 9)]


def test_a_run_without_tensorboard_trains_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    main(["train", *tiny_synthetic_args(tmp_path, epochs=1)])
    assert "no TensorBoard event files: the tensorboard package is not installed" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").exists()
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_no_tensorboard_writes_no_event_files(tmp_path):
    main(["train", *tiny_synthetic_args(tmp_path, epochs=1), "--no-tensorboard"])
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_a_report_of_two_runs_shows_their_metrics_differences_and_valid_images(tmp_path, capsys):
    summaries = {}
    for name, rate in (("slow", "0.001"), ("fast", "0.01")):
        folder = tmp_path / name
        main(["train", *tiny_synthetic_args(folder, epochs=2, learning_rate=rate), "--output-dir", str(folder / "r")])
        summaries[name] = json.loads((folder / "r" / "summary.json").read_text())
    out = tmp_path / "pages" / "report.html"
    main(["report", str(tmp_path / "slow" / "r"), str(tmp_path / "fast" / "r"), "--out", str(out)])
    page = out.read_text()
    assert "slow/r" in page and "fast/r" in page  # two folders named r: named by their paths
    for summary in summaries.values():
        assert f"{summary['metrics']['HR@10']:,.4f}" in page
    difference = page[page.index("<td>optim.learning_rate</td>") :].split("</tr>")[0]
    assert "<td>0.001</td>" in difference and "<td>0.01</td>" in difference
    assert "train.epochs" not in page  # the same in both: not a difference
    pngs = sorted(out.parent.glob("report-*.png"))
    assert {p.name for p in pngs} >= {"report-train_loss.png", "report-HR@10.png", "report-NDCG@10.png"}
    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 100 and height > 100
    assert page.count("data:image/png;base64,") == len(pngs) and "http" not in page.replace("http-equiv", "")
    # Run again into the same name: refused, every file as it was; replaced with --overwrite.
    (out.parent / "report-HR@10.png").write_bytes(b"mine")
    out.unlink()
    before = {p: p.read_bytes() for p in out.parent.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "slow" / "r"), "--out", str(out)])
    assert exit_.value.code == 2
    assert "report-train_loss.png exists; replace it with --overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.parent.iterdir()} == before
    main(["report", str(tmp_path / "slow" / "r"), "--out", str(out), "--overwrite"])
    assert out.is_file() and (out.parent / "report-HR@10.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_names_a_folder_that_is_no_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "report.html")])
    assert exit_.value.code == 2
    assert f"recforge: error: {tmp_path / 'empty'}: no metrics.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_a_validation_split_chooses_the_checkpoint_and_the_test_items_are_scored_once_at_the_end(
    tmp_path, monkeypatch, protocol
):
    scored, tasks = [], []
    evaluate = RankingTask.evaluate

    def spy(self, model, split=None):
        tasks.append(self)
        scored.append(split or self.eval_split)
        return evaluate(self, model, split)

    monkeypatch.setattr(RankingTask, "evaluate", spy)
    args = tiny_synthetic_args(tmp_path, epochs=3, eval_protocol=protocol, valid_protocol="leave-one-out")
    main(["train", *args])
    assert scored == ["valid"] * 4 + ["test"]  # the baseline, 3 epochs, then test once
    task = tasks[0]
    data, positives = task.data, task.positives
    users = np.flatnonzero(data.valid_items >= 0)
    assert len(users) > 100 and (data.valid_items[users] != data.test_items[users]).all()
    train_keys, valid_keys = set(positives.train_keys().tolist()), users * data.num_items + data.valid_items[users]
    test_keys = np.arange(data.num_users) * data.num_items + data.test_items
    assert not train_keys & set(valid_keys.tolist()) and not train_keys & set(test_keys.tolist())
    assert sorted(train_keys | set(valid_keys.tolist())) == data.train_keys().tolist()  # nothing else held out

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["eval_users"] == len(users) for r in records)
    summary = json.loads((run / "summary.json").read_text())
    best = max(records, key=lambda r: r["HR@10"])
    assert summary["eval_split"] == "valid" and summary["metrics"]["HR@10"] == best["HR@10"]
    assert summary["best_step"] == best["step"] and summary["test_split"] == "test"
    assert summary["test_metrics"]["eval_users"] == data.num_users
    # The test metrics are the best checkpoint's: scoring it again on test gives them.
    main(["evaluate", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--split", "test"])
    again = json.loads((run / f"evaluation-{protocol}-test.json").read_text())
    assert again["metrics"] == pytest.approx(summary["test_metrics"])

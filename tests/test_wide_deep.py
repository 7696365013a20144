"""Wide & Deep on grouped click logs: multi-hot and crossed features in the feature spec, MAP@12,
the model, its optimizers through the CLI, the Kaggle submission, torchrun."""

import csv
import json
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import torchrun_command

from recforge.cli import main
from recforge.data.ctr_format import load_meta, load_split
from recforge.metrics.ranking import map_at_k
from recforge.models.layers import bags
from recforge.models.wide_deep import WideDeep, WideDeepConfig
from recforge.prepare.ctr_spec import prepare_ctr
from recforge.train.sharding import torchrec_available


def test_map_at_12_by_hand():
    scores = torch.tensor([0.9, 0.5, 0.1, 0.7, 0.2, 0.3, 0.4])
    labels = torch.tensor([0, 1, 0, 1, 0, 0, 0])
    groups = torch.tensor([5, 5, 5, 9, 9, 2, 2])  # display 2 has no click: left out
    assert map_at_k(scores, labels, groups) == pytest.approx((1 / 2 + 1) / 2)
    # Ties count against the click; a click ranked 13th of 13 scores 0 at k=12, 1/13 at k=13.
    assert map_at_k(torch.tensor([0.5, 0.5]), torch.tensor([1, 0]), torch.tensor([1, 1])) == pytest.approx(0.5)
    last = torch.tensor([1] + [0] * 12)
    assert map_at_k(-torch.arange(13.0).flip(0), last, torch.zeros(13, dtype=torch.long)) == 0.0
    assert map_at_k(-torch.arange(13.0).flip(0), last, torch.zeros(13, dtype=torch.long), k=13) == pytest.approx(1 / 13)
    # Row order does not matter.
    perm = torch.randperm(7)
    assert map_at_k(scores[perm], labels[perm], groups[perm]) == pytest.approx(0.75)


def test_bags_pool_variable_length_lists_and_empty_ones():
    ids = torch.tensor([[-1, -1, -1], [3, -1, -1], [1, 2, 4]])
    values, offsets = bags(ids)
    assert values.tolist() == [3, 1, 2, 4] and offsets.tolist() == [0, 0, 1]
    table = torch.nn.EmbeddingBag(5, 2, mode="mean")
    pooled = table(values, offsets)
    assert torch.equal(pooled[0], torch.zeros(2))  # an empty list pools to zeros
    assert torch.allclose(pooled[2], table.weight[[1, 2, 4]].mean(0))


def _grouped_log(folder, displays=6000, seed=0):
    """Displays of 2-6 ads, one clicked per display: the click goes to the ad with the highest
    planted score (ad quality, a match of the ad's topic with the page's topics, a numeric
    feature) plus Gumbel noise. Returns the MAP@12 of ranking by the planted score."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, displays)
    display = np.repeat(np.arange(1, displays + 1), sizes)
    rows = len(display)
    ad = rng.integers(1, 300, rows)
    quality = rng.normal(size=300) * 1.5
    ad_topic = rng.integers(0, 12, rows)
    page_topics = rng.integers(0, 12, (displays, 3))
    page_lengths = rng.integers(0, 4, displays)  # 0..3 topics, some pages none
    page_lists = ["|".join(map(str, page_topics[d, : page_lengths[d]])) for d in range(displays)]
    match = (page_topics[display - 1] == ad_topic[:, None]) & (np.arange(3) < page_lengths[display - 1, None])
    x = rng.normal(size=rows)
    planted = quality[ad] + 2.0 * match.any(1) + 0.5 * x
    noisy = planted + rng.gumbel(size=rows)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    best = np.maximum.reduceat(noisy, starts)
    clicked = (noisy == np.repeat(best, sizes)).astype(int)
    platform = rng.integers(1, 4, displays)[display - 1]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clicked", "display_id", "ad_id", "platform", "x", "page_topics", "ad_topic"])
        for row in zip(clicked, display, ad, platform, x.round(4), (page_lists[d - 1] for d in display), ad_topic):
            w.writerow(row)
    (folder / "spec.yaml").write_text(
        "label: clicked\ngroup: display_id\nitem: ad_id\n"
        "numeric: [{name: x, transform: standardize, tag: item}]\n"
        "categorical: [{name: ad_id, hash_buckets: 512, embedding_dim: 8, tag: item},"
        " {name: platform, tag: request}, ad_topic]\n"
        "multi_hot: [{name: page_topics, max_length: 3, pooling: mean, tag: request}]\n"
        "crossed: [{name: topic_x_platform, columns: [ad_topic, platform], hash_buckets: 97}]\n"
        "files: {all: log.csv}\nholdout: {valid: 0.2}\n"
    )
    valid = display > int(displays * 0.8)
    return map_at_k(torch.tensor(planted[valid]), torch.tensor(clicked[valid]), torch.tensor(display[valid]))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    best_map = _grouped_log(root / "raw")
    main(
        [
            "prepare",
            "ctr",
            "--feature-spec",
            str(root / "raw" / "spec.yaml"),
            "--data-dir",
            str(root / "raw"),
            "--out",
            str(root / "prepared"),
        ]
    )
    return root / "prepared", best_map


def test_feature_spec_writes_multi_hot_crossed_group_and_item(tmp_path):
    (tmp_path / "log.csv").write_text(
        "click,display,ad,site,tags\n1,10,7,a,x|y\n0,10,8,b,\n0,11,7,a,y|z|x|w\n1,11,9,b,||z\n"
    )
    (tmp_path / "spec.yaml").write_text(
        "label: click\ngroup: display\nitem: ad\ncategorical: [ad, {name: site, embedding_dim: 4, tag: request}]\n"
        "multi_hot: [{name: tags, max_length: 2, pooling: sum}]\n"
        "crossed: [{name: ad_x_site, columns: [ad, site], hash_buckets: 1000}]\nfiles: {all: log.csv}\n"
    )
    meta = prepare_ctr(tmp_path / "spec.yaml", tmp_path, tmp_path / "out", log=lambda *_: None)
    train = load_split(tmp_path / "out", "train")
    # Vocabulary of tags (train rows): w x y z -> 1..4; the list is cut at 2, empty items skipped.
    assert train["multi_hot"].tolist() == [[2, 3], [-1, -1], [3, 4], [4, -1]]
    assert meta.multi_hot == [{"name": "tags", "cardinality": 5, "max_length": 2, "pooling": "sum"}]
    assert train["group"].tolist() == [10, 10, 11, 11] and train["item"].tolist() == [7, 8, 7, 9]
    crossed = train["crossed"][:, 0]
    assert (
        crossed[0] == crossed[2] != crossed[1] != crossed[3] and crossed.min() >= 1 and crossed.max() < 1000
    )  # (7, a) twice
    assert meta.features == {"site": {"embedding_dim": 4, "tag": "request"}}
    assert load_meta(tmp_path / "out").crossed == [
        {"name": "ad_x_site", "columns": ["ad", "site"], "cardinality": 1000}
    ]


def test_feature_spec_rejects_a_cross_of_unknown_columns(tmp_path, capsys):
    (tmp_path / "log.csv").write_text("click,ad\n1,7\n")
    (tmp_path / "spec.yaml").write_text(
        "label: click\ncategorical: [ad]\ncrossed: [{name: c, columns: [ad, nope], hash_buckets: 9}]\n"
        "files: {all: log.csv}\n"
    )
    with pytest.raises(SystemExit):
        main(
            [
                "prepare",
                "ctr",
                "--feature-spec",
                str(tmp_path / "spec.yaml"),
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    err = capsys.readouterr().err
    assert "spec.yaml:3: field 'crossed.columns': c: columns must name two or more categorical features" in err


def test_wide_part_starts_at_zero_and_sees_every_field():
    model = WideDeep(
        2,
        [3, 4],
        [4, 4],
        [{"name": "m", "cardinality": 5, "max_length": 2, "pooling": "mean"}],
        [3],
        [7],
        WideDeepConfig(deep_hidden_units=[8]),
    )
    batch = {
        "dense": torch.randn(3, 2),
        "sparse": torch.tensor([[0, 1], [2, 3], [1, 0]]),
        "multi_hot": torch.tensor([[1, 2], [-1, -1], [4, -1]]),
        "crossed": torch.tensor([[6], [0], [3]]),
    }
    wide = model.wide(batch["dense"], batch["sparse"], batch["multi_hot"], batch["crossed"])
    assert torch.equal(wide, torch.zeros(3))
    with torch.no_grad():  # one weight per row: fields, then crosses, then multi-hot values, end to end
        model.wide.table.weight.copy_(torch.arange(3 + 4 + 7 + 5, dtype=torch.float32)[:, None])
    wide = model.wide(batch["dense"], batch["sparse"], batch["multi_hot"], batch["crossed"])
    expected = [0 + (3 + 1) + (7 + 6) + (14 + 1) + (14 + 2), 2 + (3 + 3) + (7 + 0), 1 + (3 + 0) + (7 + 3) + (14 + 4)]
    assert wide.tolist() == expected


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_wide_deep_takes_multi_hot_features_alone():
    model = WideDeep(
        0,
        [],
        [],
        [{"name": "m", "cardinality": 6, "max_length": 3, "pooling": "sum"}],
        [4],
        [],
        WideDeepConfig(deep_hidden_units=[8]),
    )
    batch = {
        "dense": torch.zeros(2, 0),
        "sparse": torch.zeros(2, 0, dtype=torch.long),
        "multi_hot": torch.tensor([[1, 5, -1], [-1, -1, -1]]),
    }
    logits = model(batch)
    logits.sum().backward()
    assert logits.shape == (2,) and model.multi_hot[0].weight.grad is not None


def test_wide_deep_learns_the_planted_ranking_through_the_cli(grouped, tmp_path):
    prepared, best_map = grouped
    run = tmp_path / "run"
    main(
        [
            "train",
            "--model",
            "wide-deep",
            "--data-dir",
            str(prepared),
            "--batch-size",
            "256",
            "--epochs",
            "5",
            "--deep-hidden-units",
            "32-16",
            "--embedding-dim",
            "8",
            "--deep-learning-rate",
            "0.5",
            "--linear-learning-rate",
            "1.0",
            "--output-dir",
            str(run),
            "--seed",
            "3",
        ]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["metrics"]) >= {"MAP@12", "AUC", "logloss"}
    random_map = map_at_k(
        torch.rand(len(load_split(prepared, "valid")["label"])),
        torch.from_numpy(np.array(load_split(prepared, "valid")["label"])),
        torch.from_numpy(np.array(load_split(prepared, "valid")["group"])),
    )
    learned = summary["metrics"]["MAP@12"]
    assert learned > random_map + 0.12 and learned > best_map - 0.12, (learned, random_map, best_map)

    # --evaluate scores the checkpoint to the same figures; --predict writes the Kaggle submission.
    checkpoint = str(run / "checkpoints" / "best.pt")
    main(
        [
            "train",
            "--model",
            "wide-deep",
            "--data-dir",
            str(prepared),
            "--evaluate",
            "--restore-checkpoint",
            checkpoint,
            "--output-dir",
            str(tmp_path / "eval"),
        ]
    )
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())["metrics"]
    assert evaluated["MAP@12"] == pytest.approx(learned)
    main(
        [
            "train",
            "--model",
            "wide-deep",
            "--data-dir",
            str(prepared),
            "--predict",
            "--restore-checkpoint",
            checkpoint,
            "--output-dir",
            str(tmp_path / "predict"),
        ]
    )
    probabilities = np.load(tmp_path / "predict" / "predictions.npy")
    valid = load_split(prepared, "valid")
    lines = (tmp_path / "predict" / "submission.csv").read_text().splitlines()
    assert lines[0] == "display_id,ad_id"
    displays = np.unique(valid["group"])
    assert len(lines) == 1 + len(displays)
    display, ads = lines[1].split(",")
    rows = np.flatnonzero(valid["group"] == int(display))
    assert [int(a) for a in ads.split(" ")] == valid["item"][
        rows[np.argsort(-probabilities[rows], kind="stable")]
    ].tolist()


def test_wide_deep_two_process_torchrun_evaluates_every_row_once(grouped, tmp_path):
    prepared, _ = grouped
    args = [
        "--model",
        "wide-deep",
        "--data-dir",
        str(prepared),
        "--batch-size",
        "333",
        "--epochs",
        "1",
        "--deep-hidden-units",
        "16",
        "--embedding-dim",
        "4",
    ]
    torchrun = torchrun_command()
    result = subprocess.run(
        [*torchrun, "train", *args, "--output-dir", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )  # a crash shows its Python stack
    crash = result.stderr.find("Fatal Python error")
    assert result.returncode == 0, result.stderr[crash : crash + 3000] if crash >= 0 else result.stderr[-2000:]
    main(["train", *args, "--output-dir", str(tmp_path / "one")])
    one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two"))
    rows = len(load_split(prepared, "valid")["label"])
    assert one["metrics"]["eval_rows"] == two["metrics"]["eval_rows"] == rows
    assert one["steps"] == two["steps"]
    assert abs(one["metrics"]["MAP@12"] - two["metrics"]["MAP@12"]) < 0.02


@pytest.mark.skipif(not torchrec_available(), reason="TorchRec is not installed")
@pytest.mark.parametrize(
    "sharding, optimizer, resumed_as",
    [("row-wise", "rowwise-adagrad", None), ("table-wise", "adagrad", "row-wise")],
)
def test_wide_deep_sharded_with_multi_hot_fields_follows_one_process(
    grouped, tmp_path, sharding, optimizer, resumed_as
):
    """Every table sharded (two one-hot widths, the mean-pooled multi-hot field, the crossed
    field's rows and the one-weight wide table, held as 4 equal columns): each step's loss, AUC
    and MAP@12 as in one process (bounds as in test_sharding), also when stopped after 3 steps and
    resumed with another sharding; one process evaluates the sharded checkpoint."""
    prepared, _ = grouped
    args = ["--model", "wide-deep", "--prepared-dir", str(prepared), "--batch-size", "1000", "--max-steps", "5"]
    args += ["--evals-per-epoch", "50", "--embedding-dim", "4", "--deep-hidden-units", "16", "--deep-dropout", "0"]
    args += ["--optimizer", optimizer, "--learning-rate", "0.05", "--threads", "1", "--precision", "fp32"]
    main(["train", *args, "--output-dir", str(tmp_path / "one")])
    legs = [[]] if resumed_as is None else [["--max-steps", "3"], ["--resume", "--embedding-sharding", resumed_as]]
    for extra in legs:
        result = subprocess.run(
            [*torchrun_command(), "train", *args, "--output-dir", str(tmp_path / "two")]
            + ["--embedding-sharding", sharding, *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert "wide.table: " + (resumed_as or sharding).replace("-", "_") in result.stdout
    one, two = (
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    )
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4, 5]
    for mine, theirs in zip(two, one):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)
        # Ranks add their gradients in another order than one process: probabilities differ by ~1e-9,
        # which can swap two near-tied ads of a display and move MAP@12 by a display's share (~4e-4).
        assert mine["MAP@12"] == pytest.approx(theirs["MAP@12"], abs=1e-3)
    assert one[-1]["train_loss"] < one[0]["train_loss"] - 0.01
    main(
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "two" / "checkpoints" / "last.json"),
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    scored = json.loads((tmp_path / "e.json").read_text())["metrics"]  # one process reads the shards
    assert scored["MAP@12"] == pytest.approx(two[-1]["MAP@12"], abs=1e-9)

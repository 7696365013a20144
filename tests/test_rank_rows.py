"""Each rank holds only its part of the training rows and still trains on one process's batches."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import tiny_synthetic_args, torchrun_command

from recforge.cli import main
from recforge.data.batches import ImplicitEpochs
from recforge.data.rank_rows import RankRows
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.registry import build_config, build_task
from recforge.runtime.distributed import Dist


def test_each_rank_owns_its_part_of_every_block():
    # 10 rows in blocks of 4 (0-3, 4-7, 8-9) over 2 ranks
    parts = RankRows(rows=10, batch=4, world=2)
    rows = np.arange(10)
    assert parts.owned(rows, 0).tolist() == [0, 1, 4, 5, 8]
    assert parts.owned(rows, 1).tolist() == [2, 3, 6, 7, 9]
    assert parts.owners(torch.arange(10)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    assert parts.local(torch.tensor([2, 3, 6, 7, 9]), 1).tolist() == [0, 1, 2, 3, 4]
    assert parts.block(2, 1) == (slice(9, 10), slice(4, 5), 2)


@pytest.mark.parametrize("rows, batch, world", [(1, 4, 3), (17, 5, 3), (100, 7, 4), (64, 64, 2), (1000, 33, 5)])
def test_the_parts_split_the_rows_and_map_back(rows, batch, world):
    parts = RankRows(rows, batch, world)
    everything = np.arange(rows).reshape(-1, 1).repeat(2, axis=1)  # 2-D, as dense features are
    owned = [parts.owned(everything, r)[:, 0] for r in range(world)]
    assert sorted(np.concatenate(owned).tolist()) == list(range(rows))
    owners = parts.owners(torch.arange(rows))
    for r in range(world):
        assert len(owned[r]) == parts.count(r)
        assert (owners[torch.from_numpy(owned[r])] == r).all()
        assert parts.local(torch.from_numpy(owned[r]), r).tolist() == list(range(len(owned[r])))
        for block in range(parts.blocks):  # a block's part in the split and in the rank's rows
            split, local, _ = parts.block(block, r)
            assert owned[r][local].tolist() == list(range(rows))[split]


@pytest.mark.parametrize("shuffle", ["rows", "blocks"])
def test_ranks_holding_their_part_train_on_one_process_batches(tmp_path, shuffle):
    generate_ctr(tmp_path, rows=2_345, seed=2, cardinalities=[30, 400, 9], log=lambda *_: None)
    cfg = build_config(
        overrides={
            "model": "dlrm",
            "dataset": "criteo-synthetic",
            "prepared_dir": str(tmp_path),
            "batch_size": 256,
            "shuffle": shuffle,
        }
    )
    cpu = torch.device("cpu")
    one = build_task(cfg, cpu, Dist(), lambda *_: None)
    ranks = [build_task(cfg, cpu, Dist(rank=r, world=3), lambda *_: None) for r in range(3)]
    rows = len(one.resident["label"])
    assert [len(task.resident["label"]) for task in ranks] == [RankRows(rows, 256, 3).count(r) for r in range(3)]
    assert sum(len(task.resident["label"]) for task in ranks) == rows
    for whole, *parts in zip(one.train_batches(2, 256), *(task.train_batches(2, 256) for task in ranks)):
        assert {size for _, size, _ in parts} == {whole[1]}
        assert max(len(batch["label"]) for batch, _, _ in parts) == parts[0][2]
        for name, rows in whole[0].items():  # the same rows, each rank's in the split's order
            joined = torch.cat([batch[name] for batch, _, _ in parts])
            assert sorted(map(tuple, joined.reshape(len(joined), -1).tolist())) == sorted(
                map(tuple, rows.reshape(len(rows), -1).tolist())
            )


def test_a_sharded_ranking_epoch_sees_each_positive_once_across_the_ranks():
    users = np.repeat(np.arange(11, dtype=np.int32), 3)
    items = np.tile(np.arange(3, dtype=np.int32), 11)
    cpu = torch.device("cpu")
    ranks = [ImplicitEpochs(users, items, 20, 2, cpu, seed=3, rank=r, world=2, sharded=True) for r in range(2)]
    assert [e.users.numel() for e in ranks] == [16, 17]  # each rank holds its half of the positives
    steps = [list(e.batches(1, batch_size=10)) for e in ranks]
    assert len(steps[0]) == len(steps[1]) == 10  # ceil(33 * 3 / 10)
    batches = [b for rank in steps for b, _, _ in rank]
    label = torch.cat([b["label"] for b in batches])
    pairs = torch.stack([torch.cat([b["user"] for b in batches]), torch.cat([b["item"] for b in batches])], 1)
    assert sorted(map(tuple, pairs[label == 1].tolist())) == sorted(zip(users.tolist(), items.tolist()))
    assert (label == 0).sum() == 66
    for (a, size_a, largest_a), (b, size_b, largest_b) in zip(*steps):
        assert size_a == size_b == len(a["label"]) + len(b["label"])
        assert largest_a == largest_b == max(len(a["label"]), len(b["label"]))


def test_ranking_epochs_too_large_for_each_device_are_split_among_the_ranks(tmp_path):
    """Under torchrun, an NCF epoch over the memory budget is drawn by each rank for its half of the
    positives; the model still learns as one process does (HR@10 within 0.05, well above random)."""
    main(["train", *tiny_synthetic_args(tmp_path / "one", epochs=4)])
    result = subprocess.run(
        [*torchrun_command(), "train", *tiny_synthetic_args(tmp_path / "two", epochs=4, memory_fraction=1e-12)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "do not fit on cpu: each rank draws its part" in result.stdout
    one, two = (
        [json.loads(line) for line in (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    )
    assert [r["step"] for r in two] == [r["step"] for r in one]
    assert abs(two[-1]["HR@10"] - one[-1]["HR@10"]) < 0.05 and two[-1]["HR@10"] > 2 * 10 / 101

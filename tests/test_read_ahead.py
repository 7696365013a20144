"""Out-of-core batches read ahead on a background thread: the synchronous order and results."""

import json
import threading

import numpy as np
import pytest

from recforge.cli import main
from recforge.data.read_ahead import copy_rows, read_ahead
from recforge.prepare.synthetic_ctr import generate_ctr


def test_read_ahead_keeps_the_order_and_raises_at_the_failing_item():
    assert list(read_ahead(range(100), lambda i: i * i)) == [i * i for i in range(100)]

    def read(i):
        if i == 7:
            raise ValueError("bad block 7")
        return i

    got = []
    with pytest.raises(ValueError, match="bad block 7"):
        for value in read_ahead(range(20), read):
            got.append(value)
    assert got == list(range(7))


def test_closing_early_stops_the_reader():
    items = read_ahead(range(10_000), lambda i: i, depth=2)
    assert next(items) == 0
    items.close()
    assert not any(t.name == "recforge-read-ahead" for t in threading.enumerate())


def test_copy_rows_makes_tensors_of_their_own(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(30, dtype=np.int32).reshape(10, 3))
    mapped = np.load(path, mmap_mode="r")
    rows = copy_rows({"a": mapped}, slice(2, 5), pinned=False)["a"]
    assert rows.tolist() == [[6, 7, 8], [9, 10, 11], [12, 13, 14]] and rows.dtype.is_floating_point is False
    rows[0, 0] = -1
    assert mapped[2, 0] == 6


def test_training_from_disk_equals_training_in_memory(tmp_path):
    """--memory-fraction 0 reads every batch from the memory maps ahead of the step; with the same
    block order (--shuffle blocks) it trains and evaluates exactly as the split loaded in memory."""
    data = tmp_path / "data"
    generate_ctr(data, rows=9_000, seed=4, cardinalities=[40, 300, 2000, 7], log=lambda *_: None)
    args = ["--model", "dlrm", "--dataset", "criteo-synthetic", "--prepared-dir", str(data), "--batch-size", "500"]
    args += ["--epochs", "2", "--evals-per-epoch", "3", "--shuffle", "blocks", "--threads", "1"]
    args += ["--embedding-dim", "8", "--bottom-mlp", "13-16-8", "--top-mlp", "16-1", "--valid-batch-size", "256"]
    runs = {}
    for fraction in ("0.25", "0"):
        main(["train", *args, "--memory-fraction", fraction, "--output-dir", str(tmp_path / fraction)])
        runs[fraction] = [json.loads(x) for x in (tmp_path / fraction / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "train_loss", "AUC", "logloss", "eval_rows")
    assert [{k: r[k] for k in keys} for r in runs["0"]] == [{k: r[k] for k in keys} for r in runs["0.25"]]
    assert len(runs["0"]) == 6

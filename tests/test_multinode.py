"""Several machines through torchrun's own c10d rendezvous, as two "nodes" on this machine (two
torchrun invocations with --nnodes 2 on a loopback endpoint, one process each): the same
training as one process, the run folder written once, the checkpoint by both."""

import json
import subprocess
import sys

import pytest
from conftest import free_port, tiny_synthetic_args

from recforge.cli import main
from recforge.prepare.synthetic_ctr import generate_ctr
from recforge.runtime.tf_config import torchrun_flags


def two_nodes(args: list[str], via_tf_config: bool = False) -> None:
    """`recforge train ARGS` on 2 nodes of 1 process each, rendezvous at a free port of 127.0.0.1; with
    `via_tf_config`, each node's command line is `recforge tf-config`'s for a TensorFlow cluster
    of a chief and a worker."""
    port = free_port()
    commands = [
        ["torchrun", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
        + ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}", "-m", "recforge"]
        for node in (0, 1)
    ]
    if via_tf_config:
        cluster = {"chief": [f"127.0.0.1:{port}"], "worker": [f"127.0.0.1:{free_port()}"]}
        tasks = [{"type": "chief", "index": 0}, {"type": "worker", "index": 0}]
        specs = [json.dumps({"cluster": cluster, "task": task}) for task in tasks]
        commands = [torchrun_flags(spec, "1", f"test-{port}") for spec in specs]
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *command[1:], "train", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert sum(out.count("summary:") for out, _ in outputs) == 1  # only rank 0 reports


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_neumf_on_two_nodes_trains_as_one_process(tmp_path):
    one, two = (tiny_synthetic_args(tmp_path / n, synthetic_users=203, precision="fp32") for n in ("one", "two"))
    main(["train", *one])
    two_nodes(two)
    single, double = records(tmp_path / "one" / "run"), records(tmp_path / "two" / "run")
    assert [m["eval_users"] for m in double] == [m["eval_users"] for m in single]
    for a, b in zip(single, double):  # as test_cli's two local processes
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert abs(b["HR@10"] - a["HR@10"]) <= 0.02
    summary = json.loads((tmp_path / "two" / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(summary["peak_memory_bytes_per_rank"]) == 2
    assert (tmp_path / "two" / "run" / "checkpoints" / "last.json").is_file()  # both ranks' DCP folder


def test_dlrm_on_two_nodes_of_a_tensorflow_cluster_trains_as_one_process(tmp_path):
    data = tmp_path / "data"
    generate_ctr(data, rows=8_000, seed=3, cardinalities=[50, 200, 1000, 30, 5000], log=lambda *_: None)
    options = {"model": "dlrm", "dataset": "criteo-synthetic", "prepared-dir": data, "batch-size": 1000}
    options |= {"optimizer": "sgd", "learning-rate": 0.5, "threads": 1, "epochs": 1, "evals-per-epoch": 8}
    options |= {"precision": "fp32"}  # bf16 rounds differently in two processes' sums
    options |= {"embedding-dim": 8, "bottom-mlp": "13-32-8", "top-mlp": "32-1"}
    args = [x for k, v in options.items() for x in (f"--{k}", str(v))]
    main(["train", *args, "--output-dir", str(tmp_path / "one")])
    two_nodes([*args, "--output-dir", str(tmp_path / "two")], via_tf_config=True)
    single, double = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in double] == [r["step"] for r in single] and len(single) >= 5
    for mine, theirs in zip(double, single):  # bounds as in test_sharding
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=1e-6)
        assert mine["AUC"] == pytest.approx(theirs["AUC"], abs=2e-5)

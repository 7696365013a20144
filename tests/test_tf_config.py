"""`recforge tf-config`: a TensorFlow cluster spec as torchrun's command line (a run on two
nodes through it: tests/test_multinode.py)."""

import json

import pytest

from recforge.cli import main
from recforge.core.errors import RecforgeError
from recforge.runtime.tf_config import torchrun_flags

CLUSTER = {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"], "ps": ["h3:2222"], "evaluator": ["h4:2222"]}


def spec(kind: str, index: int, cluster=CLUSTER) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize(
    "kind, index, cluster, nodes, rank, endpoint",
    [
        ("chief", 0, CLUSTER, 3, 0, "h0:2222"),
        ("worker", 1, CLUSTER, 3, 2, "h0:2222"),  # after the chief
        ("worker", 1, {"worker": ["w0:1", "w1:1"]}, 2, 1, "w0:1"),  # no chief: worker 0 leads
    ],
)
def test_each_trainer_is_a_node_with_the_chief_first(kind, index, cluster, nodes, rank, endpoint):
    flags = torchrun_flags(spec(kind, index, cluster), "4", "job7")
    assert flags == [
        "torchrun",
        *("--nnodes", str(nodes), "--node-rank", str(rank), "--nproc-per-node", "4"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "job7", "-m", "recforge"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        (spec("ps", 0), "task ps 0 is a parameter server; recforge has none"),
        (spec("evaluator", 0), "score the run's checkpoints with `recforge evaluate"),
        (spec("worker", 5), "task worker 5 is not in the cluster's worker list"),
        (spec("master", 0), "field 'task.type': \"master\": expected chief, worker, ps, evaluator"),
        ('{"cluster": {"worker": [', "TF_CONFIG: not JSON (line 1, column 25"),
        ("[1, 2]", "TF_CONFIG: must be a JSON object of 'cluster' and 'task'"),
        ('{"task": {"type": "worker", "index": 0}}', "field 'cluster': missing, or not an object"),
        (
            json.dumps({"cluster": {"worker": "h1:1"}, "task": {}}),
            "field 'cluster.worker': must be a list of host:port",
        ),
        (json.dumps({"cluster": {"worker": ["h1"]}, "task": {}}), "field 'cluster.worker[0]': \"h1\" is not host:port"),
        (json.dumps({"cluster": {"worker": [7]}, "task": {}}), "field 'cluster.worker[0]': 7 is not host:port"),
        (json.dumps({"cluster": {"master": ["h:1"]}, "task": {}}), "field 'cluster.master': unknown role"),
        (spec("chief", 0, {"chief": ["h0:1", "h1:1"]}), "field 'cluster.chief': 2 chiefs; a cluster has at most one"),
        (spec("worker", 0, {"chief": ["h0:1"], "worker": ["h0:1"]}), "h0:1 is listed twice"),
        (spec("ps", 0, {"ps": ["h0:1"]}), "field 'cluster': no chief and no worker: nothing trains"),
        (json.dumps({"cluster": CLUSTER}), "field 'task': missing, or not an object"),
        (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": "1"}}), "field 'task.index': \"1\""),
        (spec("worker", -1), "field 'task.index': -1: must be an integer of at least 0"),
    ],
)
def test_what_is_not_a_trainer_is_refused_in_one_line(text, message):
    with pytest.raises(RecforgeError) as error:
        torchrun_flags(text)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("processes, message", [("0", "got '0'"), ("-2", "got '-2'"), ("two", "got 'two'")])
def test_processes_per_node_is_auto_or_at_least_one(capsys, processes, message):
    with pytest.raises(SystemExit) as exit_:
        main(["tf-config", "--tf-config", spec("chief", 0), "--nproc-per-node", processes])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"recforge: error: --nproc-per-node: auto or a number of at least 1, {message}\n"


def test_the_command_reads_the_environment_and_prints_one_line(monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", spec("worker", 0))
    main(["tf-config", "--nproc-per-node", "2"])
    assert capsys.readouterr().out == (
        "torchrun --nnodes 3 --node-rank 1 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint h0:2222 "
        "--rdzv-id recforge -m recforge\n"
    )
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(SystemExit):
        main(["tf-config"])
    assert capsys.readouterr().err == "recforge: error: TF_CONFIG is not set (or pass --tf-config JSON)\n"

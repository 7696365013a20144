"""A TensorFlow cluster (`TF_CONFIG`) as the torchrun command line of this machine's task.

TensorFlow's MultiWorkerMirroredStrategy and ParameterServerStrategy describe a job as
{"cluster": {"chief": [...], "worker": [...], "ps": [...], "evaluator": [...]}, "task": {"type":
..., "index": i}}. recforge trains on torchrun's processes: every chief and worker machine is a
node (the chief first, node rank 0), the chief's address is the c10d rendezvous endpoint. There
are no parameter servers: tables larger than one process are sharded across the trainers
(`--embedding-sharding auto`); an evaluator is `recforge evaluate` on the run's checkpoints.
"""

from __future__ import annotations

import json

from recforge.core.errors import RecforgeError

ROLES = ("chief", "worker", "ps", "evaluator")


def _field(name: str, message: str) -> RecforgeError:
    return RecforgeError(f"TF_CONFIG: field '{name}': {message}")


def _read(tf_config: str) -> tuple[dict[str, list[str]], str, int]:
    """(the cluster's roles -> addresses, this task's type, its index), every field checked."""
    try:
        spec = json.loads(tf_config)
    except json.JSONDecodeError as e:
        raise RecforgeError(f"TF_CONFIG: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(spec, dict):
        raise RecforgeError("TF_CONFIG: must be a JSON object of 'cluster' and 'task'")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _field("cluster", "missing, or not an object of role -> list of host:port")
    for role, addresses in cluster.items():
        if role not in ROLES:
            raise _field(f"cluster.{role}", f"unknown role (expected {', '.join(ROLES)})")
        if not isinstance(addresses, list):
            raise _field(f"cluster.{role}", "must be a list of host:port")
        for i, address in enumerate(addresses):
            host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise _field(f"cluster.{role}[{i}]", f"{json.dumps(address)} is not host:port")
    if len(cluster.get("chief", [])) > 1:
        raise _field("cluster.chief", f"{len(cluster['chief'])} chiefs; a cluster has at most one")
    trainers = [*cluster.get("chief", []), *cluster.get("worker", [])]
    if not trainers:
        raise _field("cluster", "no chief and no worker: nothing trains")
    repeated = next((a for i, a in enumerate(trainers) if a in trainers[:i]), None)
    if repeated:
        raise _field("cluster", f"{repeated} is listed twice among the chief and workers")
    if not isinstance(task, dict):
        raise _field("task", 'missing, or not an object {"type": ROLE, "index": N}')
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in ROLES:
        raise _field("task.type", f"{json.dumps(kind)}: expected {', '.join(ROLES)}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise _field("task.index", f"{json.dumps(index)}: must be an integer of at least 0")
    return cluster, kind, index


def torchrun_flags(tf_config: str, processes_per_node: str = "auto", job: str = "recforge") -> list[str]:
    """torchrun's flags (up to and including `-m recforge`) for the task TF_CONFIG names."""
    if processes_per_node != "auto" and not (processes_per_node.isdigit() and int(processes_per_node) >= 1):
        raise RecforgeError(f"--nproc-per-node: auto or a number of at least 1, got {processes_per_node!r}")
    if not job.strip():
        raise RecforgeError("--rdzv-id: must not be empty (the same id on every machine)")
    cluster, kind, index = _read(tf_config)
    if kind == "ps":
        raise RecforgeError(
            f"TF_CONFIG: task ps {index} is a parameter server; recforge has none: start no process on this machine "
            "(the trainers shard tables larger than one process with --embedding-sharding auto)"
        )
    if kind == "evaluator":
        raise RecforgeError(
            "TF_CONFIG: task evaluator: score the run's checkpoints with `recforge evaluate --checkpoint "
            "RUN/checkpoints/last.json` (one process) instead"
        )
    if index >= len(cluster.get(kind, [])):
        raise RecforgeError(f"TF_CONFIG: task {kind} {index} is not in the cluster's {kind} list")
    trainers = [*cluster.get("chief", []), *cluster.get("worker", [])]
    offset = len(cluster.get("chief", [])) if kind == "worker" else 0
    return [
        "torchrun",
        "--nnodes",
        str(len(trainers)),
        "--node-rank",
        str(offset + index),
        "--nproc-per-node",
        processes_per_node,
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        trainers[0],
        "--rdzv-id",
        job,
        "-m",
        "recforge",
    ]

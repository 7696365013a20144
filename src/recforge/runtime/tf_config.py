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


def torchrun_flags(tf_config: str, processes_per_node: str = "auto", job: str = "recforge") -> list[str]:
    """torchrun's flags (up to and including `-m recforge`) for the task TF_CONFIG names."""
    try:
        spec = json.loads(tf_config)
        cluster, task = spec["cluster"], spec["task"]
        kind, index = task["type"], int(task["index"])
        trainers = [*cluster.get("chief", []), *cluster.get("worker", [])]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise RecforgeError(f"TF_CONFIG: not a TensorFlow cluster spec ({error})") from None
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
    if kind not in ("chief", "worker"):
        raise RecforgeError(f"TF_CONFIG: task type {kind!r}: expected chief, worker, ps or evaluator")
    offset = len(cluster.get("chief", [])) if kind == "worker" else 0
    if not trainers or not 0 <= index < len(cluster.get(kind, [])):
        raise RecforgeError(f"TF_CONFIG: task {kind} {index} is not in the cluster's {kind} list")
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

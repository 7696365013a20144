"""Every step's training loss and every evaluation of NeuMF, DLRM and Wide & Deep on fixed seeds,
one process and two (DDP; DLRM's tables also sharded by TorchRec), as JSON: the before/after
proof that a change of the loop or the task contract left training exactly as it was.

    python benchmarks/loss_trace.py --out after.json [--compare before.json]

Each run evaluates after every step, so metrics.jsonl's `train_loss` is that step's loss; the
one-process runs also record a hash of their last checkpoint's weights. `--compare` exits 1 when
any number differs (exactly: same code paths, same seeds, same machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from recforge.prepare.synthetic_ctr import generate_ctr

NEUMF = {
    "model": "neumf",
    "dataset": "synthetic",
    "synthetic-users": 151,
    "synthetic-items": 300,
    "synthetic-interactions": 6000,
    "epochs": 2,
    "batch-size": 4096,
    "evals-per-epoch": 8,
    "num-factors": 8,
    "layers": "32,16,8",
    "learning-rate": 0.01,
}
CLICK_LOG = {
    "dataset": "criteo-synthetic",
    "epochs": 1,
    "batch-size": 1000,
    "max-steps": 10,
    "evals-per-epoch": 12,
    "valid-batch-size": 300,
}
DLRM = CLICK_LOG | {
    "model": "dlrm",
    "optimizer": "sgd",
    "learning-rate": 0.5,
    "embedding-dim": 8,
    "bottom-mlp": "13-32-8",
    "top-mlp": "32-1",
}
WIDE_DEEP = CLICK_LOG | {"model": "wide-deep", "deep-hidden-units": "32,16"}
RUNS = {
    "neumf-1": (NEUMF, 1),
    "neumf-2": (NEUMF, 2),
    "dlrm-1": (DLRM, 1),
    "dlrm-2": (DLRM, 2),
    "dlrm-2-sharded": (DLRM | {"embedding-sharding": "row-wise"}, 2),
    "wide-deep-1": (WIDE_DEEP, 1),
    "wide-deep-2": (WIDE_DEEP, 2),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(options: dict, processes: int, folder: Path) -> dict:
    flags = [x for k, v in options.items() for x in (f"--{k}", str(v))]
    flags += ["--output-dir", str(folder), "--threads", "1", "--precision", "fp32", "--no-tensorboard"]
    launcher = [sys.executable, "-m", "recforge"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        launcher += ["--master-port", str(_free_port()), "-m", "recforge"]
    done = subprocess.run([*launcher, "train", *flags], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(flags)}:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    keep = lambda r: {k: v for k, v in r.items() if not k.endswith("_s") and k != "time_s"}  # noqa: E731
    trace = {"records": [keep(r) for r in records if "step" in r and "train_loss" in r]}
    last = folder / "checkpoints" / "last.pt"
    if last.is_file():
        state = torch.load(last, weights_only=True)["model"]
        digest = hashlib.sha256()
        for name in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)):
            digest.update(name.encode() + state[name].cpu().numpy().tobytes())
        trace["weights"] = digest.hexdigest()
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--compare")
    parser.add_argument("--only", nargs="*", choices=list(RUNS))
    args = parser.parse_args()
    traces = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = root / "click-log"
        generate_ctr(log, rows=14_000, seed=3, cardinalities=[50, 200, 1000, 30, 5000, 8, 300, 2000], log=lambda *_: 0)
        os.environ["RECFORGE_CACHE"] = str(root / "cache")
        for name in args.only or RUNS:
            options, processes = RUNS[name]
            if options["dataset"] == "criteo-synthetic":
                options = options | {"prepared-dir": log}
            traces[name] = _run(options, processes, root / name)
            print(name, len(traces[name]["records"]), "records", traces[name].get("weights", "")[:12], flush=True)
    Path(args.out).write_text(json.dumps(traces, indent=1) + "\n")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        differing = [name for name in traces if before.get(name) != traces[name]]
        print("identical" if not differing else f"differ: {', '.join(differing)}")
        sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()

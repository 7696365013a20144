"""Side-by-side speed against the peer systems of ../shared/peers, alternating runs in one session
(the machine is noisy: compare medians and per-round ratios, not single runs).

    python benchmarks/versus_peers.py w1 --reps 3      # RecBole NeuMF vs recforge fp32 / bf16 on W1
    python benchmarks/versus_peers.py w2 --reps 3      # TorchRec DLRM vs recforge fp32 / bf16 on W2
    python benchmarks/versus_peers.py w3 --reps 3      # DeepCTR-Torch WDL vs recforge Wide & Deep on W3
    python benchmarks/versus_peers.py w2 --isa avx2    # both sides limited to AVX2 code paths

`--isa avx2` caps every library's instruction set through its own switch (torch's ATen kernels,
oneDNN, MKL, FBGEMM), for a preview of an AVX2-only CPU on a newer one. It is not one: clocks,
caches and memory stay this machine's, so figures from a real AVX2 machine take precedence.

Needs the peers installed and W1 generated (../shared/peers/README.md: setup.sh, make_data.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("PEERS", ROOT.parent / "shared" / "peers"))
DATA = Path(os.environ.get("PEERS_DATA", "/opt/peers-data"))
RESULT = re.compile(
    r"^RESULT peer=(\S+) workload=(\S+) samples_per_s=([\d.]+) metric=([^:]+):([\d.]+) wall_s=([\d.]+)(.*)$", re.M
)


# Each library's own cap on the instruction set it dispatches to.
ISA_CAPS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "native": {},
}
ENV = dict(os.environ)


def peer(script: str) -> dict:
    out = subprocess.run([str(PEERS / script)], capture_output=True, text=True, env=ENV).stdout
    match = RESULT.findall(out)
    if not match:
        raise SystemExit(f"{script} printed no RESULT line:\n{out[-2000:]}")
    name, workload, rate, metric, value, wall, rest = match[-1]
    return {
        "system": name,
        "samples_per_s": float(rate),
        metric: float(value),
        "wall_s": float(wall),
        "extra": rest.strip(),
    }


def recforge(config: str, flags: list[str], label: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "recforge",
            "train",
            "--config",
            config,  # a preset name
            "--output-dir",
            f"{tmp}/run",
            "--threads",
            "2",
            *flags,
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=ENV)
        if result.returncode:
            raise SystemExit(result.stderr[-2000:])
        summary = json.loads(Path(f"{tmp}/run/summary.json").read_text())
    return {
        "system": label,
        "samples_per_s": summary["train_samples_per_s"],
        **summary["metrics"],
        "wall_s": summary["epoch_time_avg_s"],
    }


W2_PREPARED = DATA / "recforge-w2"
W2_FLAGS = ["--data-dir", str(W2_PREPARED), "--batch-size", "2048", "--emb-fusion"]
W2_ADAM = [*W2_FLAGS, "--optimizer", "adam", "--learning-rate", "0.001"]
W2_SGD = [*W2_FLAGS, "--optimizer", "sgd", "--learning-rate", "0.1"]  # the peer's optimizer

W3_PREPARED = DATA / "recforge-w3"

WORKLOADS = {
    "w2": {
        "prepare": ["prepare", "criteo-kaggle", "--data-dir", str(DATA / "w2_dlrm"), "--out", str(W2_PREPARED)],
        "peers": [("torchrec", "run_torchrec_w2.sh")],
        "ours": [
            ("recforge-fp32-sgd", "dlrm-criteo-kaggle", [*W2_SGD, "--precision", "fp32"]),
            ("recforge-fp32-sgd-onednn", "dlrm-criteo-kaggle", [*W2_SGD, "--precision", "fp32", "--gemm", "onednn"]),
            ("recforge-fp32", "dlrm-criteo-kaggle", [*W2_ADAM, "--precision", "fp32"]),
            ("recforge-bf16", "dlrm-criteo-kaggle", [*W2_ADAM, "--precision", "bf16"]),
            ("recforge-auto", "dlrm-criteo-kaggle", [*W2_ADAM, "--precision", "auto"]),
        ],
        "metric": "AUC",
    },
    "w3": {
        "prepare": [
            "prepare",
            "ctr",
            "--feature-spec",
            "deepctr-w3",
            "--data-dir",
            str(DATA / "w3_wd"),
            "--out",
            str(W3_PREPARED),
        ],
        "peers": [("deepctr", "run_deepctr_w3.sh")],
        "ours": [
            ("recforge-fp32", "deepctr-wdl", ["--data-dir", str(W3_PREPARED), "--precision", "fp32"]),
            ("recforge-bf16", "deepctr-wdl", ["--data-dir", str(W3_PREPARED), "--precision", "bf16"]),
            ("recforge-auto", "deepctr-wdl", ["--data-dir", str(W3_PREPARED), "--precision", "auto"]),
        ],
        "metric": "AUC",
    },
    "w1": {
        "peers": [("recbole", "run_recbole_w1.sh")],
        "ours": [
            (
                "recforge-fp32",
                "recbole-neumf",
                ["--data-file", str(DATA / "w1_ncf" / "ratings.csv"), "--precision", "fp32"],
            ),
            (
                "recforge-bf16",
                "recbole-neumf",
                ["--data-file", str(DATA / "w1_ncf" / "ratings.csv"), "--precision", "bf16"],
            ),
            (
                "recforge-auto",
                "recbole-neumf",
                ["--data-file", str(DATA / "w1_ncf" / "ratings.csv"), "--precision", "auto"],
            ),
        ],
        "metric": "HR@10",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=list(WORKLOADS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="JSON file for the raw rows")
    parser.add_argument("--without-peers", action="store_true", help="ours only (ratios to our first row)")
    parser.add_argument("--only", help="comma-separated labels of our rows to run (default: all)")
    parser.add_argument("--isa", choices=list(ISA_CAPS), default="native", help="instruction sets allowed")
    args = parser.parse_args()
    ENV.update(ISA_CAPS[args.isa])
    spec = WORKLOADS[args.workload]
    ours = [row for row in spec["ours"] if not args.only or row[0] in args.only.split(",")]
    prepared = spec.get("prepare")
    if prepared and not Path(prepared[prepared.index("--out") + 1], "meta.json").exists():
        subprocess.run([sys.executable, "-m", "recforge", *prepared], check=True)
    rows = []
    # Alternate peer, ours, ours, ... every round. The peer's seed is fixed by its driver; ours is
    # the round number, so the quality column shows a median over seeds, not one draw.
    for rep in range(1, args.reps + 1):
        for _name, script in [] if args.without_peers else spec["peers"]:
            rows.append({"round": rep, **peer(script)})
            print(json.dumps(rows[-1]), flush=True)
        for label, config, flags in ours:
            rows.append({"round": rep, **recforge(config, [*flags, "--seed", str(rep)], label)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    metric = spec["metric"]
    baseline = rows[0]["system"]  # the peer's own name for itself (e.g. torchrec-dmp)
    print(
        f"\n{args.workload}, {args.reps} rounds, {time.strftime('%Y-%m-%d')}, --isa {args.isa}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"| system | samples/s (median) | min..max | ratio to {baseline} (median of rounds) | {metric} |")
    print("|---|---|---|---|---|")
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        rates = [r["samples_per_s"] for r in mine]
        ratios = [
            r["samples_per_s"]
            / next(p["samples_per_s"] for p in rows if p["system"] == baseline and p["round"] == r["round"])
            for r in mine
        ]
        quality = statistics.median(r.get(metric, float("nan")) for r in mine)
        print(
            f"| {system} | {statistics.median(rates):,.0f} | {min(rates):,.0f}..{max(rates):,.0f} "
            f"| {statistics.median(ratios):.2f}x | {quality:.4f} |"
        )


if __name__ == "__main__":
    main()

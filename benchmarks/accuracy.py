"""Accuracy on real data: GMF, MLP, NeuMF (and NeuMF from pretrained GMF + MLP) next to item
popularity, leave-one-out with sampled negatives, best epoch as the NCF protocol reports it.

    python benchmarks/accuracy.py --dataset ml-100k --data-dir ../shared/data/ml-100k \
        --config ncf-ml100k --seeds 1 2 3 --out docs/results-ml-100k.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from recforge import registry
from recforge.config import load_yaml
from recforge.core.shipped import PRESETS, find
from recforge.registry import build_config, build_task
from recforge.runtime.distributed import Dist
from recforge.train.loop import train


def run(args, model: str, seed: int, workdir: Path, **extra) -> dict:
    values, lines = load_yaml(args.config)
    cfg = build_config(
        values,
        {
            "model": model,
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "cache_dir": args.cache_dir,
            "output_dir": str(workdir / f"{model}-{seed}-{time.time_ns()}"),
            "seed": seed,
            "threads": args.threads,
            **extra,
        },
        source=args.config,
        lines=lines,
    )
    summary = train(cfg, registry)
    return {
        "model": model,
        "seed": seed,
        **summary["metrics"],
        "best_epoch": summary["best_epoch"],
        "time_to_train_s": summary["time_to_train_s"],
        "output_dir": cfg.output_dir,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--config", required=True, help="a preset name or a YAML file")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--models", nargs="+", default=["gmf", "mlp", "neumf", "neumf-pretrained"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.config = find(args.config, PRESETS, "preset")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for seed in args.seeds:
            trained = {}
            for model in args.models:
                if model == "neumf-pretrained":
                    row = run(
                        args,
                        "neumf",
                        seed,
                        workdir,
                        pretrained_gmf=str(Path(trained["gmf"]) / "checkpoints" / "best.pt"),
                        pretrained_mlp=str(Path(trained["mlp"]) / "checkpoints" / "best.pt"),
                    )
                    row["model"] = "neumf-pretrained"
                else:
                    row = run(args, model, seed, workdir)
                    trained[model] = row["output_dir"]
                rows.append(row)
            values, _ = load_yaml(args.config)
            cfg = build_config(
                values, {"dataset": args.dataset, "data_dir": args.data_dir, "cache_dir": args.cache_dir, "seed": seed}
            )
            task = build_task(cfg, torch.device("cpu"), Dist(), lambda *_: None)
            _, metrics = task.baseline()
            rows.append({"model": "popularity", "seed": seed, **metrics})
    print(f"\n{args.dataset} ({args.config}, seeds {args.seeds}): median over seeds of the best epoch")
    print("| model | HR@10 | NDCG@10 | best epoch | runs |")
    print("|---|---|---|---|---|")
    for model in [*args.models, "popularity"]:
        mine = [r for r in rows if r["model"] == model]
        hr = statistics.median(r["HR@10"] for r in mine)
        ndcg = statistics.median(r["NDCG@10"] for r in mine)
        epochs = ",".join(str(r.get("best_epoch", "-")) for r in mine)
        print(f"| {model} | {hr:.4f} | {ndcg:.4f} | {epochs} | {len(mine)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Test metrics of presets over seeds, under one of two protocols; the medians over the seeds are
what docs/results.md quotes.

- `valid`: each run trains without its validation items (each user's second-latest interaction;
  a click log's valid split), keeps the epoch best on validation and scores the test items once,
  at the end.
- `refit`: each run trains on everything but the test items for the configured epochs; the test
  figures are the last epoch's (chosen by nothing), and the best epoch's are kept beside them as
  `ncf_best_metrics`, the NCF paper's protocol, which picks the epoch on the test items.

    python benchmarks/seeds.py --config ncf-ml100k /tmp/sweep/best.yaml --seeds 1 2 3 --jobs 2 \
        --protocol valid --out /tmp/seeds.json -- --data-dir ../shared/data/ml-100k

Arguments after `--` go to every `recforge train` (data folder, cache). Runs go `--jobs` at a
time, each with cores / jobs threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recforge.config import load_yaml
from recforge.core.shipped import PRESETS, find
from recforge.registry import model_entry
from recforge.tasks.ranking import RankingTask


def train(config: str, seed: int, protocol: str, threads: int, workdir: Path, extra: list[str]) -> dict:
    output = workdir / f"{Path(config).stem}-seed{seed}"
    ranking = model_entry(load_yaml(find(config, PRESETS, "preset"))[0]["model"]).task is RankingTask
    held_out = ["--valid-protocol", "leave-one-out" if protocol == "valid" else "none"] if ranking else []
    command = [
        *(sys.executable, "-m", "recforge", "train", "--config", config, "--seed", str(seed), *held_out),
        *("--threads", str(threads), "--output-dir", str(output), *extra),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    summary = json.loads((output / "summary.json").read_text())
    run = {"config": config, "seed": seed, "best_epoch": summary["best_epoch"]}
    if protocol == "valid":
        return run | {"valid_metrics": summary["metrics"], "test_metrics": summary["test_metrics"]}
    last = json.loads((output / "metrics.jsonl").read_text().splitlines()[-1])
    return run | {"test_metrics": {m: last[m] for m in summary["metrics"]}, "ncf_best_metrics": summary["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", required=True, help="presets or YAML files, compared")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--protocol", choices=["valid", "refit"], default="valid", help="see above")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--out", help="JSON file for the runs and medians")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(
            pool.map(
                lambda cs: train(*cs, args.protocol, threads, Path(workdir), extra),
                [(c, s) for c in args.config for s in args.seeds],
            )
        )
    medians = {}
    for config in args.config:
        mine = [r for r in runs if r["config"] == config]
        medians[config] = {
            split: {m: statistics.median(r[split][m] for r in mine) for m in mine[0][split]}
            for split in ("valid_metrics", "test_metrics", "ncf_best_metrics")
            if split in mine[0]
        }
        print(config, json.dumps(medians[config]))
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "medians": medians, "args": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()

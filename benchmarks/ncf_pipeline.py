"""Throughput of the NCF data pipeline at ml-20m size (or any prepared dataset): negative
sampling (fast and verified), a whole epoch's batches, and evaluation users/s.

    python benchmarks/ncf_pipeline.py --synthetic-users 138493 --synthetic-items 26744 \
        --synthetic-interactions 20000263 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recforge.data.batches import ImplicitEpochs
from recforge.data.sampling import sample_train_negatives
from recforge.registry import build_config, build_model, build_task
from recforge.runtime.distributed import Dist


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=3):
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data-dir")
    parser.add_argument("--synthetic-users", type=int, default=138493)
    parser.add_argument("--synthetic-items", type=int, default=26744)
    parser.add_argument("--synthetic-interactions", type=int, default=20000263)
    parser.add_argument("--cache-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--valid-negative", type=int, default=100)
    args = parser.parse_args()
    device = torch.device(args.device)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in ("device", "negatives")}
    cfg = build_config(
        {},
        {
            **overrides,
            "device": args.device,
            "model": "neumf",
            "num_factors": 64,
            "layers": "256,256,128,64",
            "valid_batch_size": 1 << 20,
        },
    )
    start = time.perf_counter()
    task = build_task(cfg, device, Dist(), print)
    setup_s = time.perf_counter() - start
    data = task.data
    users = torch.as_tensor(np.asarray(data.train_users), device=device)
    keys = torch.as_tensor(data.interaction_keys(), device=device)
    generator = torch.Generator(device).manual_seed(0)
    draws = users.numel() * args.negatives
    fast_s = timed(lambda: sample_train_negatives(users, args.negatives, data.num_items, generator), device)
    verified_s = timed(lambda: sample_train_negatives(users, args.negatives, data.num_items, generator, keys), device)
    epochs = ImplicitEpochs(data.train_users, data.train_items, data.num_items, args.negatives, device, 1)
    epoch_s = timed(lambda: list(epochs.batches(1, 1 << 20)), device, repeats=1)
    model = build_model(cfg, task.model_dims, device)
    eval_s = timed(lambda: task.evaluate(model), device, repeats=1)
    result = {
        "device": str(device),
        "users": data.num_users,
        "items": data.num_items,
        "train_positives": len(data.train_items),
        "setup_s": setup_s,
        "negatives_fast_per_s": draws / fast_s,
        "negatives_verified_per_s": draws / verified_s,
        "epoch_batches_samples_per_s": epochs.samples_per_epoch / epoch_s,
        "eval_users_per_s": data.num_users / eval_s,
        "eval_pairs_per_s": data.num_users * (1 + args.valid_negative) / eval_s,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

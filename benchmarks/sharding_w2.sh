#!/bin/bash
# DLRM on W2 (dlrm-criteo-kaggle, batch 2048, SGD, 300 steps, --benchmark): one process with 2
# threads, 2 processes with replicated tables (DDP), 2 processes with the tables sharded on
# TorchRec (table-wise, row-wise); alternating, ROUNDS rounds; samples/s and the largest process's
# peak RSS. Usage: W2=prepared-w2-folder [ROUNDS=2] bash benchmarks/sharding_w2.sh
set -u
T=$(mktemp -d); ROUNDS=${ROUNDS:-2}
A="--config dlrm-criteo-kaggle --prepared-dir $W2 --batch-size 2048 --max-steps 300 --benchmark"
for round in $(seq "$ROUNDS"); do
  for how in one ddp table-wise row-wise; do
    rm -rf "$T/run"
    case $how in
      one) cmd="python -m recforge train $A --threads 2";;
      ddp) cmd="torchrun --nproc-per-node 2 -m recforge train $A --threads 1";;
      *) cmd="torchrun --nproc-per-node 2 -m recforge train $A --threads 1 --embedding-sharding $how";;
    esac
    /usr/bin/time -f "%M" -o "$T/rss" $cmd --output-dir "$T/run" > "$T/log" 2>&1 || { grep error "$T/log" | head -2; continue; }
    python -c "import json; s = json.load(open('$T/run/summary.json')); print('$how round $round:', f\"{s['train_samples_per_s']:,.0f} samples/s,\", 'peak RSS', round(int(open('$T/rss').read().split()[-1]) / 1024), 'MiB')"
  done
done
rm -rf "$T"

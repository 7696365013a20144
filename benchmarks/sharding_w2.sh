#!/bin/bash
# DLRM on W2 (dlrm-criteo-kaggle, batch 2048, SGD, 300 steps, --benchmark): one process with 2
# threads, 2 processes with replicated tables (DDP), 2 processes with the tables sharded on
# TorchRec (table-wise, row-wise), and TorchRec's own DLRM (the peers' driver: one process, 2 threads,
# DistributedModelParallel, fused SGD 0.1, the same 300 batches of 2048); alternating, ROUNDS rounds;
# samples/s and the largest process's peak RSS (TorchRec's includes its pandas parse of the raw file).
# Usage: W2=prepared-w2-folder PEERS_DATA=raw-peers-data [ROUNDS=2] bash benchmarks/sharding_w2.sh
set -u
T=$(mktemp -d); ROUNDS=${ROUNDS:-2}
A="--config dlrm-criteo-kaggle --prepared-dir $W2 --batch-size 2048 --max-steps 300 --benchmark"
for round in $(seq "$ROUNDS"); do
  for how in torchrec one ddp table-wise row-wise; do
    rm -rf "$T/run"
    if [ "$how" = torchrec ]; then
      /usr/bin/time -f "%M" -o "$T/rss" bash "$(dirname "$0")/../../shared/peers/run_torchrec_w2.sh" --max-batches 300 > "$T/log" 2>&1
      echo "torchrec round $round: $(grep -o 'samples_per_s=[0-9.]*' "$T/log" | cut -d= -f2) samples/s, peak RSS $(( $(tail -1 "$T/rss") / 1024 )) MiB"
      continue
    fi
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

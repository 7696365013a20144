#!/bin/bash
# DLRM on W2 in 2 processes: one torchrun with --nproc-per-node 2 vs two torchrun "nodes" (--nnodes 2,
# c10d rendezvous on loopback, one process each); alternating, ROUNDS rounds; samples/s.
# Usage: W2=prepared-w2-folder [ROUNDS=2] bash benchmarks/two_nodes_w2.sh
set -u
T=$(mktemp -d); ROUNDS=${ROUNDS:-2}
A="--config dlrm-criteo-kaggle --prepared-dir $W2 --batch-size 2048 --max-steps 300 --benchmark --threads 1"
for round in $(seq "$ROUNDS"); do
  for how in local nodes; do
    rm -rf "$T/run"
    if [ "$how" = local ]; then
      torchrun --nproc-per-node 2 -m recforge train $A --output-dir "$T/run" > "$T/log" 2>&1
    else
      for node in 0 1; do
        torchrun --nnodes 2 --node-rank $node --nproc-per-node 1 --rdzv-backend c10d \
          --rdzv-endpoint 127.0.0.1:29499 --rdzv-id "bench-$round" -m recforge train $A --output-dir "$T/run" > "$T/log$node" 2>&1 &
      done
      wait
    fi
    python -c "import json; s = json.load(open('$T/run/summary.json')); print('$how round $round:', f\"{s['train_samples_per_s']:,.0f} samples/s\")"
  done
done
rm -rf "$T"

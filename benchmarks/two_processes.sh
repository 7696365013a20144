#!/bin/bash
# Usage: W2=PREPARED_W2 bash benchmarks/two_processes.sh   (recforge prepare criteo-kaggle --data-dir $PEERS_DATA/w2_dlrm --out PREPARED_W2)
# 1 process x 2 threads vs torchrun 2 processes x 1 thread, alternating, oneDNN on; DLRM on W2 and NeuMF on the quickstart data.
cd "$(dirname "$0")/.." && source .venv/bin/activate
W2=${W2:?the prepared W2 folder}
export RECFORGE_CACHE=${RECFORGE_CACHE:-/tmp/recforge-cache}
DLRM="--config dlrm-criteo-kaggle --prepared-dir $W2 --batch-size 2048 --optimizer adam --learning-rate 0.001 --emb-fusion --benchmark --max-steps 300"
NCF="--config quickstart --synthetic-interactions 500000 --epochs 1 --benchmark --max-steps 100"
for round in 1 2 3; do
  for model in dlrm neumf; do
    flags=$DLRM; [ $model = neumf ] && flags=$NCF
    rm -rf /tmp/sp1 /tmp/sp2
    python -m recforge train $flags --threads 2 --output-dir /tmp/sp1 > /dev/null 2>&1
    torchrun --standalone --nproc-per-node 2 -m recforge train $flags --threads 1 --output-dir /tmp/sp2 > /dev/null 2>&1
    python -c "
import json
a=json.load(open('/tmp/sp1/summary.json'))['train_samples_per_s']; b=json.load(open('/tmp/sp2/summary.json'))['train_samples_per_s']
print(f'$model round $round: 1 process x 2 threads {a:,.0f}/s, 2 processes x 1 thread {b:,.0f}/s, ratio {b/a:.2f}')"
  done
done

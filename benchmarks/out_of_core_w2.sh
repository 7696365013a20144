#!/bin/bash
# DLRM on W2 with the training split in memory vs read from disk ahead of the steps
# (--memory-fraction 0), the prepared files evicted from the page cache before each run
# (posix_fadvise DONTNEED: no root needed); alternating, ROUNDS rounds; samples/s.
# Both with --shuffle blocks (the order out of core), and in memory with its default row shuffle.
# Usage: W2=prepared-w2-folder [ROUNDS=3] [STEPS=300] bash benchmarks/out_of_core_w2.sh
set -u
T=$(mktemp -d); ROUNDS=${ROUNDS:-3}; STEPS=${STEPS:-300}
A="--config dlrm-criteo-kaggle --prepared-dir $W2 --batch-size 2048 --max-steps $STEPS --benchmark --threads 2"
evict() {
  python - "$W2" <<'PY'
import os, sys, pathlib
for path in pathlib.Path(sys.argv[1]).rglob("*.npy"):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
PY
}
for round in $(seq "$ROUNDS"); do
  for how in disk memory-blocks memory-rows; do
    rm -rf "$T/run"; evict
    case $how in
      disk) extra="--memory-fraction 0 --shuffle blocks";;
      memory-blocks) extra="--shuffle blocks";;
      memory-rows) extra="";;
    esac
    python -m recforge train $A $extra --output-dir "$T/run" > "$T/log" 2>&1 || { grep error "$T/log" | head -2; continue; }
    python -c "import json; s = json.load(open('$T/run/summary.json')); print('$how round $round:', f\"{s['train_samples_per_s']:,.0f} samples/s\")"
  done
done
rm -rf "$T"

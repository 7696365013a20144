#!/bin/bash
# Preparation rate per worker process as workers and input grow: `prepare criteo-terabyte` on
# days cut from W2's train.txt (500,000 rows a day; 2 and 4 days) and `prepare ctr` on W3 (1x and
# 2x its train.csv), each at --workers 1 and 2, alternating. Prints each pass's rows/s per process
# and the peak resident memory, from the run's prepare.json.
# Usage: PEERS_DATA=/tmp/peers-data OUT=/tmp/scaling bash benchmarks/prepare_scaling.sh
set -eu
D=${PEERS_DATA:-/opt/peers-data}; O=${OUT:-/tmp/scaling}; mkdir -p "$O"
for days in 2 4; do  # day_K: rows 500,000*K.. of W2 (its 2M rows, repeated past the end)
  mkdir -p "$O/tb$days"
  for k in $(seq 0 $((days - 1))); do
    [ -f "$O/tb$days/day_$k" ] || tail -n +$(( (k % 4) * 500000 + 1 )) "$D/w2_dlrm/train.txt" | head -n 500000 \
      > "$O/tb$days/day_$k"
  done
done
mkdir -p "$O/w3x1" "$O/w3x2"
ln -sf "$D/w3_wd/train.csv" "$O/w3x1/train.csv"
[ -f "$O/w3x2/train.csv" ] || { cat "$D/w3_wd/train.csv"; tail -n +2 "$D/w3_wd/train.csv"; } > "$O/w3x2/train.csv"
report() {
  python - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[2] + "/prepare.json"))
passes = ", ".join(f"{k} {v['rows_per_s_per_process']:,}" for k, v in r["passes"].items())
peak = max(r["peak_memory_bytes"].values()) / 2**20
print(f"{sys.argv[1]}: {r['seconds']} s; rows/s per process: {passes}; largest process peak {peak:,.0f} MiB")
PY
}
for workers in 1 2 1 2; do
  for input in tb2 tb4 w3x1 w3x2; do
    out=$O/out-$input-$workers; rm -rf "$out"
    if [ "${input:0:2}" = tb ]; then args="prepare criteo-terabyte --data-dir $O/$input"
    else args="prepare ctr --feature-spec deepctr-w3 --data-dir $O/$input"; fi
    python -m recforge $args --workers "$workers" --out "$out" > /dev/null
    report "$input, $workers worker(s)" "$out"
  done
done

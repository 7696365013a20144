#!/bin/bash
# Training throughput of two checkouts' code on W1-W3, alternating, ROUNDS rounds (our side of
# benchmarks/versus_peers.py's workloads, limited to --max-steps; no evaluation).
# Usage: BEFORE=old/src BEFORE_PRESETS=old/configs AFTER=new/src PEERS_DATA=... \
#        W2_BEFORE=prepared-by-old W2_AFTER=prepared-by-new W3_BEFORE=... W3_AFTER=... bash benchmarks/train_before_after.sh
set -u
D=${PEERS_DATA:-/opt/peers-data}; ROUNDS=${ROUNDS:-2}; TMP=$(mktemp -d)
for round in $(seq "$ROUNDS"); do
  for who in before after; do
    if [ $who = before ]; then SRC=$BEFORE; P="$BEFORE_PRESETS/"; X=.yaml; W2=$W2_BEFORE; W3=$W3_BEFORE
    else SRC=$AFTER; P=; X=; W2=$W2_AFTER; W3=$W3_AFTER; fi
    for w in w1 w2 w3; do
      case $w in
        w1) args="--config ${P}recbole-neumf$X --data-file $D/w1_ncf/ratings.csv --max-steps 60";;
        w2) args="--config ${P}dlrm-criteo-kaggle$X --data-dir $W2 --batch-size 2048 --optimizer adam --learning-rate 0.001 --emb-fusion --max-steps 300";;
        w3) args="--config ${P}deepctr-wdl$X --data-dir $W3 --max-steps 150";;
      esac
      [ "${ONLY:-}" ] && [[ " $ONLY " != *" $w "* ]] && continue
      rm -rf "$TMP/run"
      PYTHONPATH=$SRC python -m recforge train $args --benchmark --threads 2 --output-dir "$TMP/run" > "$TMP/log" 2>&1 \
        || { tail -3 "$TMP/log"; continue; }
      python -c "import json; s = json.load(open('$TMP/run/summary.json')); print('$w $who round $round:', f\"{s['train_samples_per_s']:,.0f} samples/s\")"
    done
  done
done
rm -rf "$TMP"

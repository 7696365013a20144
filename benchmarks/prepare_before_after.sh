#!/bin/bash
# Prepare W2 (criteo-kaggle) and W3 (feature spec) with two checkouts' code, alternating, twice;
# seconds and peak RSS per run, then whether the arrays are byte-identical and how meta.json differs.
# Usage: BEFORE=path/to/old/src AFTER=path/to/new/src BEFORE_SPEC=old/deepctr-w3.yaml \
#        PEERS_DATA=/opt/peers-data OUT=/tmp/cmp bash benchmarks/prepare_before_after.sh
set -u
D=${PEERS_DATA:-/opt/peers-data}; O=${OUT:-/tmp/cmp}; mkdir -p "$O"; rm -f "$O/times.txt"
for round in 1 2; do
  for who in before after; do
    if [ $who = before ]; then SRC=$BEFORE; SPEC=${BEFORE_SPEC:-deepctr-w3}; else SRC=$AFTER; SPEC=deepctr-w3; fi
    for w in w2 w3; do
      out=$O/$w-$who; rm -rf "$out"
      if [ $w = w2 ]; then args="prepare criteo-kaggle --data-dir $D/w2_dlrm --out $out"
      else args="prepare ctr --feature-spec $SPEC --data-dir $D/w3_wd --out $out"; fi
      /usr/bin/time -f "$w $who round $round: %e s, peak RSS %M KB" env PYTHONPATH="$SRC" python -m recforge $args \
        > /dev/null 2>> "$O/times.txt"
      tail -1 "$O/times.txt"
    done
  done
done
for w in w2 w3; do
  echo "== $w"
  (cd "$O/$w-before" && find . -name "*.npy" -not -path "./encoders/*" | sort) > "$O/$w-before.list"
  (cd "$O/$w-after" && find . -name "*.npy" -not -path "./encoders/*" | sort) > "$O/$w-after.list"
  diff "$O/$w-before.list" "$O/$w-after.list" && echo "same array files: $(wc -l < "$O/$w-before.list")"
  while read -r f; do cmp -s "$O/$w-before/$f" "$O/$w-after/$f" || echo "DIFFERENT: $f"; done < "$O/$w-before.list"
  python - "$O/$w-before/meta.json" "$O/$w-after/meta.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for key in sorted(set(a) | set(b)):
    if a.get(key) != b.get(key) and key != "info":
        print("  meta", key, "differs")
for key in sorted(set(a.get("info", {})) | set(b.get("info", {}))):
    if a["info"].get(key) != b["info"].get(key):
        print("  meta.info", key, ":", str(a["info"].get(key))[:80], "->", str(b["info"].get(key))[:80])
PY
done

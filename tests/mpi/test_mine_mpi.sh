#!/usr/bin/env bash
# sn_mine's dense scorer under mpirun: each rank embeds and searches its slice of the corpus, the
# lists are merged in trec order on rank 0; the file must be byte for byte the one-process file, on
# 2 and 3 ranks (3 does not divide the corpus), with a margin too.
set -uo pipefail
BUILD=$(cd "$1" && pwd)
SRC=${SN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
source "$SRC/tests/mine_setup.sh"
fail=0
for extra in "" "--margin 0.0005"; do
  ARGS="$DENSE --data data/train.jsonl --corpus corpus.jsonl --range 1:20 --negatives 5 --seed 3 --batch 5 $extra"
  "$BUILD/sn_mine" $ARGS --out one.jsonl 2> one.log || { echo "FAIL: 1 process: $(tail -2 one.log)"; exit 1; }
  for np in 2 3; do
    timeout 300 mpirun --oversubscribe -np $np "$BUILD/sn_mine" $ARGS --out np$np.jsonl 2> np$np.log \
      || { echo "FAIL: $np ranks: $(tail -3 np$np.log)"; fail=1; continue; }
    if cmp -s one.jsonl np$np.jsonl; then echo "ok: $np ranks $extra: the one-process file"
    else echo "FAIL: $np ranks $extra: differs from one process"; diff one.jsonl np$np.jsonl | head -4; fail=1; fi
  done
done
exit $fail

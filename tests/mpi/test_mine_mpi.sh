#!/usr/bin/env bash
# sn_mine's dense scorer under mpirun: each rank embeds and searches its slice of the corpus, the
# lists are merged in trec order on rank 0; the file must be byte for byte the one-process file, on
# 2 and 3 ranks (3 does not divide the corpus), with a margin too. Stage 1's mining rounds on 2 ranks
# (each searching its slice): stopped at a round's boundary and resumed, the run is the
# uninterrupted 2-rank run bit for bit, mined rounds included.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
sn_test_needs_command mpirun
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
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

# Stage 1's mining rounds on 2 ranks.
mkdir s1 && cd s1
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 6 1
MINE='--set stage1.mine.every_steps=2 --set stage1.mine.range_lo=1 --set stage1.mine.range_hi=12 --set stage1.mine.negatives=2'
train() { timeout 300 mpirun --oversubscribe -np 2 "$BUILD/sn_train" --config cfg.json $MINE --stage 1 "$@"; }
train --set run_dir=straight 2> straight.log || { echo "FAIL: 2-rank mining run: $(tail -3 straight.log)"; exit 1; }
grep -q "mining round 2: .*sliced over the ranks" straight.log || { echo "FAIL: no sliced round 2"; fail=1; }
train --set run_dir=resumed --stop-after 2 2> r1.log && train --set run_dir=resumed --resume auto 2> r2.log \
  || { echo "FAIL: stop/resume on 2 ranks: $(tail -3 r1.log r2.log)"; exit 1; }
same_run straight resumed "2 ranks, stopped at step 2 and resumed" && echo "ok: 2 ranks: stopped at a round's boundary, resumed: identical" || fail=1
for r in 1 2; do cmp -s straight/mined/round_$r.jsonl resumed/mined/round_$r.jsonl || { echo "FAIL: round $r differs"; fail=1; }; done
exit $fail

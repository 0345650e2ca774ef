#!/usr/bin/env bash
# The run folder: one sn_train at a time (a second exits 2 naming the holder's pid; the lock goes
# with the holder, even on SIGKILL); a fresh start in a used folder exits 2 unless --overwrite;
# metrics.jsonl never repeats a step (resume, restart, --resume auto before any checkpoint); and
# resume compatibility: a changed architecture, tokenizer or training data exits 2 naming the keys,
# a changed learning rate warns naming it, a moved run folder or changed logging resumes silently,
# and the resume step is state.bin's, not the folder name's.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
source "$SRC/tests/cpu/tiny_run.sh"
EXPECT_BIN=$BUILD/sn_train
source "$SRC/tests/cpu/expect_exit2.sh"
tiny_run_setup 6 4
train() { "$BUILD/sn_train" --config cfg.json "$@"; }
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
# No step twice, none missing: stage-1 steps 1..6 then stage-2 steps 1..4.
steps_once() { [ "$(python3 -c 'import json,sys
print(" ".join("%d.%d" % (r["stage"], r["step"]) for r in map(json.loads, open(sys.argv[1]))))' "$1/metrics.jsonl")" = \
  "1.1 1.2 1.3 1.4 1.5 1.6 2.1 2.2 2.3 2.4" ]; }

train --set run_dir=straight 2> straight.log || { tail straight.log; exit 1; }
# ---- a used folder
expect "fresh start in a used run folder" "already holds a run (metrics.jsonl" --config cfg.json --set run_dir=straight
expect "--overwrite with --resume" "--overwrite" --config cfg.json --set run_dir=straight --overwrite --resume auto
cp -r straight over
train --set run_dir=over --overwrite 2> over.log
check "--overwrite replaces the earlier run" "grep -q 'overwrite: removed' over.log && steps_once over && same_run straight over overwrite"
# ---- metrics.jsonl after a stop, a resume, and a --resume auto that finds no checkpoint
train --set run_dir=r --stop-after 4 2> /dev/null && train --set run_dir=r --resume auto 2> /dev/null
check "resumed run: every step once, equal to the straight run" "steps_once r && same_run straight r resume"
rm -r r/ckpt-*
train --set run_dir=r --resume auto 2> r2.log
check "--resume auto without a checkpoint starts afresh without duplicating steps" \
  "grep -q 'no complete checkpoint' r2.log && steps_once r && same_run straight r 'resume without checkpoint'"
# ---- the lock
"$BUILD/sn_train" --config cfg.json --set run_dir=locked --set stage1.steps=100000 2> /dev/null &
holder=$!
for _ in $(seq 300); do [ -s locked/metrics.jsonl ] && break; sleep 0.1; done
expect "a second process on the run folder" "in use by another sn_train (pid $holder" --config cfg.json --set run_dir=locked --resume auto
kill -9 $holder; wait $holder 2> /dev/null
train --set run_dir=locked --set stage1.steps=100000 --resume auto --stop-after 1 2> locked.log; rc=$?
check "the lock goes with a SIGKILLed holder" "[ $rc = 0 ] && grep -q 'stopped before the end' locked.log"
# ---- resume compatibility
train --set run_dir=c --stop-after 3 2> /dev/null
expect "changed architecture" "stage1.model / stage1.model_desc" --config cfg.json --set run_dir=c --resume auto \
  --set 'stage1.model_desc={"arch": "qwen2", "layers": 1, "hidden": 16, "heads": 2, "kv_heads": 1, "intermediate": 48, "vocab": 4096}'
expect "changed tokenizer" "stage1.tokenizer" --config cfg.json --set run_dir=c --resume auto --set stage1.tokenizer="$SRC/configs/default/student/tokenizer.json"
expect "LoRA added" "stage1.lora.rank" --config cfg.json --set run_dir=c --resume auto --set stage1.lora.rank=2
sed '2s/"query": "/"query": "changed /' data/train.jsonl > data/changed.jsonl
expect "changed training data" "data.train" --config cfg.json --set run_dir=c --resume auto --set 'data.train=["data/changed.jsonl"]'
train --set run_dir=c --resume auto --stop-after 1 --set stage1.optim.lr=2e-3 2> lr.log
check "a changed learning rate warns naming it" "grep -q 'warning: the config differs .* in stage1.optim.lr: ' lr.log"
rm -r c/ckpt-1-4  # the lr=2e-3 step
mv c moved && cp data/train.jsonl data/copy.jsonl
train --set run_dir=moved --resume auto --set log.every=7 --set checkpoint.keep=2 --set 'data.train=["data/copy.jsonl"]' 2> moved.log
check "a moved run folder (and data file, logging, checkpointing) resumes without a warning" \
  "! grep -q 'warning' moved.log && grep -q 'resume: stage 1, step 3' moved.log && same_run straight moved moved"
# ---- the step comes from state.bin
train --set run_dir=renamed --stop-after 2 2> /dev/null && mv renamed/ckpt-1-2 renamed/ckpt-1-5 && rm -r renamed/ckpt-1-1
train --set run_dir=renamed --resume auto --stop-after 1 2> renamed.log
check "the resume step is state.bin's" "grep -q 'resume: stage 1, step 2, from renamed/ckpt-1-5' renamed.log"
exit $fail

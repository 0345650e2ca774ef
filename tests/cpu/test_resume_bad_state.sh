#!/usr/bin/env bash
# A checkpoint whose state file is well formed (checksums and MANIFEST agree) but whose optimizer
# state does not fit the model: the resume exits 2 naming the file and the section, instead of
# training from a partly restored state. The state file is damaged by tests/cpu/state_edit.c.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each case records its failure and the test goes on
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 6 4
"$BUILD/sn_train" --config cfg.json --stop-after 3 2> stop.log || { tail stop.log; exit 1; }
state=run/ckpt-1-3/state.bin
[ -f $state ] || { echo "FAIL: no checkpoint after step 3: $(ls run)"; exit 1; }
# The tiny tower's parameter count, from the size of a section (4 bytes an element).
floats=$("$BUILD/tests/state_edit" $state | awk '$1 == "query.master" { print $2 / 4 }')
[ "${floats:-0}" -gt 1 ] || { echo "FAIL: cannot read query.master's size from $state"; exit 1; }
cut_bytes=$(( (floats - 1) * 4 ))

EXPECT_BIN=$BUILD/sn_train
source "$SRC/tests/cpu/expect_exit2.sh"
# case NAME NEEDLE EDITS...: a fresh copy of the stopped run, its newest state file edited, resumed.
case_() {
  local name=$1 needle=$2; shift 2
  rm -rf $name && cp -r run $name || { fail=1; return; }
  "$BUILD/tests/state_edit" $name/ckpt-1-3/state.bin "$@" || { echo "FAIL: $name: state_edit"; fail=1; return; }
  expect "$name" "$needle" --config cfg.json --set run_dir=$name --resume auto
}
case_ moment-shorter-than-master "moment-shorter-than-master/ckpt-1-3/state.bin: 'doc.m' holds $((floats - 1)) elements, 'doc.master' $floats" \
  cut doc.m $cut_bytes
case_ state-short-of-the-model "state.bin: 'query.master' does not cover the model's $floats parameters" \
  cut query.master $cut_bytes cut query.m $cut_bytes cut query.v $cut_bytes
case_ slice-past-the-model "'query.master' covers elements [1, $((floats + 1))) of a model with $floats (another model?)" \
  set query.begin 1
exit $fail

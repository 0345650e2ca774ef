#!/usr/bin/env bash
# A damaged newest checkpoint: --resume auto warns naming the damaged file, falls back to the
# previous checkpoint, and the run still ends identical to an uninterrupted one. One case for each
# kind of damage the manifest catches; a checkpoint without a manifest (an older build's) resumes.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
source "$SRC/tests/cpu/tiny_run.sh"
tiny_run_setup 8 6
"$BUILD/sn_train" --config cfg.json --set run_dir=straight 2> straight.log || { tail straight.log; exit 1; }

fail=0
# damage NAME STOP FILE HOW SAYS: stop after STOP steps, damage FILE of the newest checkpoint by HOW,
# resume: the warning must say SAYS and the resume must start from the checkpoint before.
damage() {
  local name=$1 stop=$2 file=$3 how=$4 says=$5
  "$BUILD/sn_train" --config cfg.json --set run_dir=$name --stop-after $stop 2> $name-1.log || { tail $name-1.log; fail=1; return; }
  local newest prev
  newest=$(ls -d $name/ckpt-* | sort -t- -k2,2n -k3,3n | tail -1)
  prev=$(ls -d $name/ckpt-* | sort -t- -k2,2n -k3,3n | tail -2 | head -1)
  case $how in
    truncate) truncate -s 100 "$newest/$file" ;;
    delete) rm "$newest/$file" ;;
    flip) printf 'X' | dd of="$newest/$file" bs=1 seek=10 conv=notrunc status=none ;;
    drop-manifest) rm "$newest/MANIFEST"; prev=$newest ;;  # still valid: resumes from it
  esac
  "$BUILD/sn_train" --config cfg.json --set run_dir=$name --resume auto 2> $name-2.log || { tail $name-2.log; fail=1; return; }
  if [ -n "$says" ] && ! grep -q "warning: skipping $newest: .*$says" $name-2.log; then
    echo "FAIL: $name: no warning naming '$says'"; grep -i "warn\|resume" $name-2.log; fail=1; return
  fi
  grep -q "resume: stage [12], step [0-9]*, from $prev\$" $name-2.log ||
    { echo "FAIL: $name: did not resume from $prev"; grep resume $name-2.log; fail=1; return; }
  same_run straight $name "$name" || { fail=1; return; }
  echo "ok: $name: $(grep -m1 'warning: skipping' $name-2.log || echo 'no warning'); resumed from $prev, equal to the straight run"
}
damage truncated-tower 5 query_tower/model.safetensors truncate "query_tower/model.safetensors has 100 bytes"
damage deleted-config 3 doc_tower/config.json delete "doc_tower/config.json is missing"
damage flipped-state 6 state.bin flip "state.bin fails its checksum"
damage deleted-state 4 state.bin delete "state.bin is missing"
damage truncated-manifest 5 MANIFEST truncate "MANIFEST"
damage student-tower 11 student/model.safetensors truncate "student/model.safetensors has 100 bytes"
damage no-manifest 5 - drop-manifest ""
exit $fail

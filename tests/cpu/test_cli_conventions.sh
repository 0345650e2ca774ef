#!/usr/bin/env bash
# Every program (host/cli/ and the benchmarks) follows the same command-line conventions:
# --help: exit 0, the usage on stdout (nothing on stderr), each option of the usage line described;
# --version: exit 0, "<prog> (scalingnote) <CMake project version>" on stdout;
# a bad flag: exit 2, "error: ..." and the usage on stderr, no source location ("file.c:line").
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
set +e  # each check records its failure and the test goes on
VERSION=$(sed -n 's/^project(scalingnote VERSION \([0-9.]*\).*/\1/p' "$SRC/CMakeLists.txt")
[ -n "$VERSION" ] || { echo "FAIL: no project(VERSION) in CMakeLists.txt"; exit 1; }
PROGRAMS="sn_train sn_embed sn_eval sn_mine sn_tokenize sn_make_dataset sn_inspect sn_default_run
          sn_bench sn_bench_cpu sn_bench_comm sn_bench_tokenizer sn_bench_retrieval sn_bench_bm25 sn_bench_encode"
fail=0
bad() { echo "FAIL: $*"; fail=1; this_fail=1; }
for p in $PROGRAMS; do
  this_fail=0
  bin=$BUILD/$p
  [ -x "$bin" ] || { bad "$p: not built"; continue; }
  "$bin" --help >"$WORK/out" 2>"$WORK/err"; rc=$?
  [ $rc = 0 ] || bad "$p --help: exit $rc"
  grep -q "^usage: \|^usage: \[mpirun" "$WORK/out" || bad "$p --help: no usage on stdout"
  [ -s "$WORK/err" ] && bad "$p --help: wrote to stderr: $(head -2 "$WORK/err")"
  # Each --flag of the usage line(s) is described on a line of its own ("  --flag ...").
  for flag in $(sed -n '/^usage:/,/^[^ ]/p' "$WORK/out" | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
    grep -qE -- "^  (-[a-z], )?$flag([ ,]|$)|^  --[a-z-]+ [A-Z]+ $flag " "$WORK/out" || bad "$p --help: $flag not described"
  done
  "$bin" --version >"$WORK/out" 2>"$WORK/err"; rc=$?
  [ $rc = 0 ] || bad "$p --version: exit $rc"
  grep -qx "$p (scalingnote) $VERSION" "$WORK/out" || bad "$p --version: '$(cat "$WORK/out")'"
  # sn_default_run passes arguments on to sn_train (checked before any dataset work).
  "$bin" --no-such-flag >"$WORK/out" 2>"$WORK/err"; rc=$?
  [ $rc = 2 ] || bad "$p --no-such-flag: exit $rc, expected 2"
  [ -s "$WORK/out" ] && bad "$p --no-such-flag: wrote to stdout"
  grep -q "^error: .*--no-such-flag" "$WORK/err" || bad "$p --no-such-flag: no error naming the flag: $(head -1 "$WORK/err")"
  grep -q "^usage: \|^usage: \[mpirun" "$WORK/err" || bad "$p --no-such-flag: no usage on stderr"
  grep -q '\.c:[0-9]' "$WORK/err" && bad "$p --no-such-flag: source location in a usage error: $(grep '\.c:' "$WORK/err")"
  [ $this_fail = 0 ] && echo "ok: $p"
done
# A malformed flag value is a usage error too: no source location.
for args in "sn_embed --batch x" "sn_eval --k 0" "sn_train --stage 3" "sn_make_dataset --seed -1" \
            "sn_inspect --rewrite a b --dtype f8" "sn_bench_tokenizer --repeat 0"; do
  $BUILD/$args >/dev/null 2>"$WORK/err"; rc=$?
  [ $rc = 2 ] || bad "$args: exit $rc, expected 2"
  grep -q '\.c:[0-9]' "$WORK/err" && bad "$args: source location in a usage error: $(grep '\.c:' "$WORK/err")"
done
exit $fail

#!/usr/bin/env bash
# test_cuda_ops's own arguments are checked before it looks for a GPU: a bad one exits 2 naming it.
set -uo pipefail
BUILD=$1
BIN=$BUILD/tests/test_cuda_ops
[ -x "$BIN" ] || { echo "SKIP: $BIN not built (no CUDA toolkit)"; exit 77; }
fail=0
expect() {  # expect "what" "needle" args...
  local what=$1 needle=$2; shift 2
  local out rc
  out=$("$BIN" "$@" 2>&1); rc=$?
  if [ $rc != 2 ]; then echo "FAIL: $what: exit $rc, expected 2"; echo "$out" | tail -3; fail=1; return; fi
  if ! grep -qF -- "$needle" <<<"$out"; then echo "FAIL: $what: message lacks '$needle': $out"; fail=1; return; fi
  echo "ok: $what: $(head -1 <<<"$out")"
}
expect "unknown op group" "unknown op group: 'nope'" --only nope
expect "group list in the usage" "GROUP: elementwise embedding norms matmul attention pooling" --only nope
expect "--only without a group" "--only needs a GROUP" --quick --only
expect "unknown argument" "unknown argument: '--fast'" --fast
exit $fail

#!/usr/bin/env bash
# A model folder whose safetensors holds a NaN or an infinity is refused when loaded (exit 2 naming
# the file, the tensor and the first bad element) instead of giving NaN embeddings and exit 0.
# usage: test_nonfinite_weights.sh BUILD_DIR
set -u
BUILD_DIR=${1:-build}
SRC_DIR=${SN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
EMBED="$BUILD_DIR/sn_embed"
Q="$SRC_DIR/tests/fixtures/qwen2"

skip() { echo "SKIP: $*"; exit 77; }
[ -x "$EMBED" ] || skip "$EMBED is not built"
python3 -c "import numpy, safetensors" 2>/dev/null || skip "python3 with numpy and safetensors is needed"
[ -f "$Q/model.safetensors" ] || skip "fixture qwen2 missing (run tests/make_fixtures.py)"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# plant NAME TENSOR INDEX VALUE: a copy of the fixture with tensor.flat[INDEX] = VALUE
plant() {
  mkdir -p "$TMP/$1"
  cp "$Q/config.json" "$TMP/$1/"
  python3 - "$Q/model.safetensors" "$TMP/$1/model.safetensors" "$2" "$3" "$4" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
name, index, value = sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
t[name] = t[name].copy()
t[name].reshape(-1)[index] = value
save_file(t, sys.argv[2], metadata={"format": "pt"})
PY
}

# expect_refused NAME TENSOR INDEX: sn_embed exits 2 naming the file, the tensor and the index
expect_refused() {
  "$EMBED" --model "$TMP/$1" --input "$Q/inputs.jsonl" --out "$TMP/$1.npy" >/dev/null 2>"$TMP/err"
  local rc=$?
  if [ $rc -ne 2 ]; then
    fail "$1: exit $rc, expected 2 ($(head -c 300 "$TMP/err"))"
  elif ! grep -q "$TMP/$1/model.safetensors: tensor '$2' holds a non-finite value .* at element $3 " "$TMP/err"; then
    fail "$1: message does not name the file, tensor '$2' and element $3: $(cat "$TMP/err")"
  elif [ -e "$TMP/$1.npy" ]; then
    fail "$1: embeddings were written"
  else
    echo "ok: $1: $(grep -m1 error "$TMP/err")"
  fi
}

plant nan layers.0.self_attn.q_proj.weight 7 nan
expect_refused nan layers.0.self_attn.q_proj.weight 7
plant inf norm.weight 3 -inf
expect_refused inf norm.weight 3
# The untouched fixture still loads (the check rejects nothing finite).
"$EMBED" --model "$Q" --input "$Q/inputs.jsonl" --out "$TMP/ok.npy" 2>"$TMP/err" || fail "clean fixture: $(cat "$TMP/err")"

if [ $failures -ne 0 ]; then
  echo "test_nonfinite_weights: $failures failure(s)"
  exit 1
fi
echo "test_nonfinite_weights: all checks passed"

#!/usr/bin/env bash
# sn_embed end to end: embeds each fixture model's inputs and compares with the pooled embeddings
# transformers computed (tests/fixtures/*/pooled.npy), then checks that bad input exits with 2 and
# a message that names the problem (sn_eval too, for the pooling names they share).
# usage: test_embed_cli.sh BUILD_DIR
set -u
BUILD_DIR=${1:-build}
SRC_DIR=${SN_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
EMBED="$BUILD_DIR/sn_embed"
FIXTURES="$SRC_DIR/tests/fixtures"
REL_TOL=1e-4

skip() { echo "SKIP: $*"; exit 77; }
[ -x "$EMBED" ] || skip "$EMBED is not built"
python3 -c "import numpy" 2>/dev/null || skip "python3 with numpy is needed to read .npy"
for m in qwen2 llama bert; do
  [ -f "$FIXTURES/$m/model.safetensors" ] || skip "fixture $m missing (run tests/make_fixtures.py)"
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# compare OUT.npy REF.npy [normalised:1|0]: same shape, relative error within REL_TOL
compare() {
  python3 - "$1" "$2" "$3" "$REL_TOL" <<'EOF'
import sys
import numpy as np
out, ref, normalised, tol = np.load(sys.argv[1]), np.load(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4])
if out.dtype != np.float32 or out.shape != ref.shape:
    sys.exit(f"{sys.argv[1]}: dtype {out.dtype} shape {out.shape}, expected float32 {ref.shape}")
if not normalised:  # raw pooled vectors: normalise here, and they must not already be unit length
    norms = np.linalg.norm(out, axis=1)
    if np.allclose(norms, 1.0, atol=1e-3):
        sys.exit(f"{sys.argv[1]}: --no-normalize output is unit length")
    out = out / norms[:, None]
err = np.linalg.norm(out - ref) / np.linalg.norm(ref)
print(f"  {sys.argv[1]}: rel err {err:.2e}")
sys.exit(0 if err <= tol else f"rel err {err:.3g} > {tol}")
EOF
}

# ---- the fixture models, several batchings ------------------------------------------------------
for m in qwen2 llama bert; do
  dir="$FIXTURES/$m"
  for batch in 2 32; do
    out="$TMP/$m.b$batch.npy"
    if "$EMBED" --model "$dir" --input "$dir/inputs.jsonl" --out "$out" --batch "$batch" --threads 2 \
        2>"$TMP/log"; then
      compare "$out" "$dir/pooled.npy" 1 || fail "$m --batch $batch differs from transformers"
    else
      fail "$m --batch $batch exited $?: $(cat "$TMP/log")"
    fi
  done
  out="$TMP/$m.raw.npy"
  if "$EMBED" --model "$dir" --input "$dir/inputs.jsonl" --out "$out" --no-normalize 2>"$TMP/log"; then
    compare "$out" "$dir/pooled.npy" 0 || fail "$m --no-normalize"
  else
    fail "$m --no-normalize exited $?: $(cat "$TMP/log")"
  fi
done
"$EMBED" --model "$FIXTURES/qwen2" --input "$FIXTURES/qwen2/inputs.jsonl" --out "$TMP/mean.npy" \
  --pooling mean 2>"$TMP/log" || fail "--pooling mean exited $?: $(cat "$TMP/log")"

# ---- usage ----------------------------------------------------------------------------------------
"$EMBED" --help >"$TMP/help" 2>&1 && grep -q "usage: sn_embed" "$TMP/help" || fail "--help"

# expect_bad NAME PATTERN ARGS...: exit status 2 and stderr matching PATTERN (BIN: sn_embed unless set)
expect_bad() {
  local name=$1 pattern=$2
  shift 2
  "${BIN:-$EMBED}" "$@" >/dev/null 2>"$TMP/err"
  local rc=$?
  if [ $rc -ne 2 ]; then
    fail "$name: exit $rc, expected 2 (stderr: $(head -c 300 "$TMP/err"))"
  elif ! grep -q -- "$pattern" "$TMP/err"; then
    fail "$name: stderr lacks '$pattern': $(head -c 300 "$TMP/err")"
  fi
}

Q="$FIXTURES/qwen2"
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5,\n' >"$TMP/malformed.jsonl"
expect_bad "malformed line" "malformed.jsonl:2" --model "$Q" --input "$TMP/malformed.jsonl" --out "$TMP/x.npy"
printf '{"input_ids": [1, 2]}\n\n{"input_ids": [1, 300]}\n' >"$TMP/oov.jsonl"
expect_bad "id outside the vocabulary" "oov.jsonl:3.*300" --model "$Q" --input "$TMP/oov.jsonl" --out "$TMP/x.npy"
printf '{"input_ids": []}\n' >"$TMP/empty.jsonl"
expect_bad "empty input_ids" "empty.jsonl:1" --model "$Q" --input "$TMP/empty.jsonl" --out "$TMP/x.npy"
printf '{"input_ids": [1, 2.5]}\n' >"$TMP/float.jsonl"
expect_bad "non-integer id" "float.jsonl:1" --model "$Q" --input "$TMP/float.jsonl" --out "$TMP/x.npy"
printf '{"ids": [1, 2]}\n' >"$TMP/nokey.jsonl"
expect_bad "missing input_ids" "nokey.jsonl:1" --model "$Q" --input "$TMP/nokey.jsonl" --out "$TMP/x.npy"
expect_bad "missing input file" "no-such-input.jsonl" --model "$Q" --input "$TMP/no-such-input.jsonl" --out "$TMP/x.npy"
expect_bad "missing model dir" "no-such-model" --model "$TMP/no-such-model" --input "$Q/inputs.jsonl" --out "$TMP/x.npy"
mkdir -p "$TMP/weird"
cp "$Q/model.safetensors" "$TMP/weird/"
sed 's/"model_type": *"qwen2"/"model_type": "gpt9"/' "$Q/config.json" >"$TMP/weird/config.json"
expect_bad "unknown model_type" "gpt9" --model "$TMP/weird" --input "$Q/inputs.jsonl" --out "$TMP/x.npy"
mkdir -p "$TMP/short"
cp "$Q/config.json" "$TMP/short/"
python3 - "$Q/model.safetensors" "$TMP/short/model.safetensors" <<'EOF'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
del t["layers.1.mlp.down_proj.weight"]
save_file(t, sys.argv[2], metadata={"format": "pt"})
EOF
if [ -f "$TMP/short/model.safetensors" ]; then
  expect_bad "missing tensor" "layers.1.mlp.down_proj.weight" --model "$TMP/short" --input "$Q/inputs.jsonl" --out "$TMP/x.npy"
fi
expect_bad "unknown flag" "usage: sn_embed" --model "$Q" --input "$Q/inputs.jsonl" --out "$TMP/x.npy" --frobnicate
expect_bad "missing --out" "--out" --model "$Q" --input "$Q/inputs.jsonl"
expect_bad "bad --batch" "--batch" --model "$Q" --input "$Q/inputs.jsonl" --out "$TMP/x.npy" --batch 0
expect_bad "bad --pooling" "unknown pooling 'max'" --model "$Q" --input "$Q/inputs.jsonl" --out "$TMP/x.npy" --pooling max
# sn_eval parses pooling names with the same function (sn_pooling_parse): the flag is named.
EVAL="$BUILD_DIR/sn_eval"
if [ -x "$EVAL" ]; then
  BIN=$EVAL expect_bad "sn_eval bad --pooling" "--pooling: unknown pooling 'max'" --pooling max
  BIN=$EVAL expect_bad "sn_eval bad --doc-pooling" "--doc-pooling: unknown pooling 'avg'" --doc-pooling avg
else
  fail "$EVAL is not built"
fi

if [ $failures -ne 0 ]; then
  echo "test_embed_cli: $failures failure(s)"
  exit 1
fi
echo "test_embed_cli: all checks passed"

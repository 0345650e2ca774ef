#!/usr/bin/env bash
# Every shipped run config and model description parses and validates.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
fail=0
for cfg in "$SRC"/configs/*.json; do
  if "$BUILD/sn_train" --config "$cfg" --print-config > /dev/null; then echo "ok: $cfg"; else echo "FAIL: $cfg"; fail=1; fi
done
for desc in "$SRC"/configs/models/*.json "$SRC"/configs/default/*.json; do
  if "$BUILD/sn_train" --set "stage1.model_desc=$desc" --print-config > /dev/null; then echo "ok: $desc"; else echo "FAIL: $desc"; fail=1; fi
done
exit $fail

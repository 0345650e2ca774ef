#!/usr/bin/env bash
# docs/USAGE.md's config-key table (between the schema markers) is exactly `sn_train --print-schema`:
# a key the docs list that the schema lacks, or one they miss, or a changed default, fails.
source "$(dirname "$0")/../test_env.sh"
sn_test_env "$@"
USAGE="$SRC/docs/USAGE.md"
grep -q '^<!-- schema:begin -->$' "$USAGE" && grep -q '^<!-- schema:end -->$' "$USAGE" ||
  { echo "FAIL: $USAGE lacks the <!-- schema:begin --> / <!-- schema:end --> markers"; exit 1; }
if diff -u <(sed -n '/^<!-- schema:begin -->$/,/^<!-- schema:end -->$/{//!p}' "$USAGE") \
           <("$BUILD/sn_train" --print-schema); then
  echo "ok: $USAGE matches sn_train --print-schema"
else
  echo "FAIL: $USAGE's config keys differ from sn_train --print-schema (-: docs, +: schema)"
  exit 1
fi

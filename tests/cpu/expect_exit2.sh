# Sourced by the bad-input tests. expect WHAT NEEDLE ARGS... runs "$EXPECT_BIN" ARGS and requires
# exit status 2 and NEEDLE in its output; a miss prints why and sets fail=1.
fail=0
expect() {
  local what=$1 needle=$2; shift 2
  local out rc
  out=$("$EXPECT_BIN" "$@" 2>&1); rc=$?
  if [ $rc != 2 ]; then echo "FAIL: $what: exit $rc, expected 2"; echo "$out" | tail -3; fail=1; return; fi
  if ! grep -qF -- "$needle" <<<"$out"; then echo "FAIL: $what: message lacks '$needle': $out"; fail=1; return; fi
  echo "ok: $what: $(grep -m1 error <<<"$out" || head -1 <<<"$out")"
}

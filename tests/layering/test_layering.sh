#!/usr/bin/env bash
# Builds every layering probe (tests/layering/CMakeLists.txt) one after another and checks the
# compiler's verdict: "never" probes must fail because the header is not on the include path,
# "ok" probes must compile. Usage: test_layering.sh BUILD_DIR PROBE_LIST
set -u
build=$1 list=$2
fail=0 checked=0
while read -r probe header expect; do
  [ -z "$probe" ] && continue
  out=$(cmake --build "$build" --target "$probe" 2>&1); rc=$?
  checked=$((checked + 1))
  if [ "$expect" = ok ]; then
    if [ $rc != 0 ]; then echo "FAIL: $probe: $header should compile"; echo "$out" | tail -5; fail=1
    else echo "ok: $probe: $header is reachable"; fi
  else
    if [ $rc = 0 ]; then echo "FAIL: $probe: $header compiled, but this layer may never use it"; fail=1
    elif ! grep -q "$header: No such file" <<<"$out"; then
      echo "FAIL: $probe: failed for another reason than a missing $header:"; echo "$out" | tail -5; fail=1
    else echo "ok: $probe: $header is not on the include path"; fi
  fi
done <"$list"
[ $checked -gt 0 ] || { echo "FAIL: no probes in $list"; exit 1; }
echo "$checked probes checked"
exit $fail

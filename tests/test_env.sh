# shellcheck shell=bash
# The preamble every shell test shares, sourced as its first lines:
#
#   source "$(dirname "$0")/../test_env.sh"
#   sn_test_env "$@"                          # strict mode, BUILD, SRC, WORK; the current folder is WORK
#   sn_test_needs_python numpy safetensors    # exit 77 (skipped) when a module is missing
#
# Why: each test used to repeat these lines, with small drifts (a relative BUILD that broke after
# the cd, skip messages in three spellings). Sourcing runs in the test's own shell, so the strict
# mode and the variables set here are the test's.
#
# Contract of sn_test_env [BUILD_DIR]:
#   - set -euo pipefail. A test that counts its failures (fail=1) and goes on says `set +e` after.
#   - BUILD: BUILD_DIR (else $SN_BUILD_DIR, else ./build) as an absolute path, so that a test run
#     by hand from anywhere (`bash tests/cpu/test_x.sh build`) still finds it after the cd.
#   - SRC: $SN_SOURCE_DIR (ctest sets it, tests/CMakeLists.txt), else the checkout this file is
#     in; absolute either way.
#   - WORK: a fresh temporary folder, the current folder from now on, removed at exit whatever
#     happened. Extra cleanup (background processes, daemons) goes through sn_test_on_exit, never
#     through a trap of the test's own, which would replace the removal.
#   - The test's exit status is kept: cleanup never changes it.

SN_TEST_AT_EXIT=()

# shellcheck disable=SC2034  # BUILD, SRC: for the test that sources this file
sn_test_env() {
  set -euo pipefail
  local build_dir=${1:-${SN_BUILD_DIR:-build}}
  [[ -d $build_dir ]] || { echo "FAIL: build folder '$build_dir' not found" >&2; exit 1; }
  BUILD=$(cd "$build_dir" && pwd)
  SRC=$(cd "${SN_SOURCE_DIR:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
  WORK=$(mktemp -d)
  trap sn_test_cleanup EXIT
  cd "$WORK"
}

# sn_test_on_exit CMD: runs CMD (eval'd at exit) before WORK is removed; the last one registered
# runs first, as nested set-ups unwind.
sn_test_on_exit() {
  SN_TEST_AT_EXIT+=("$1")
}

# The EXIT trap: every sn_test_on_exit command, newest first, then WORK goes. A failing command does
# not stop the rest (errexit is off here) nor change the test's exit status.
sn_test_cleanup() {
  set +e
  local i
  for ((i = ${#SN_TEST_AT_EXIT[@]} - 1; i >= 0; i--)); do
    eval "${SN_TEST_AT_EXIT[i]}"
  done
  cd / && rm -rf "$WORK"
}

# sn_test_needs_python MODULE...: exit 77 (ctest: skipped) unless python3 imports every MODULE.
sn_test_needs_python() {
  local modules
  modules=$(IFS=,; echo "$*")
  python3 -c "import $modules" 2>/dev/null && return 0
  echo "SKIP: python modules ${modules//,/, } not installed"
  exit 77
}

# sn_test_needs_command COMMAND...: exit 77 (ctest: skipped) unless every COMMAND is on the PATH.
sn_test_needs_command() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || { echo "SKIP: $c not installed"; exit 77; }
  done
}

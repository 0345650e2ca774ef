"""What the Python tests share: the exit status that means "skipped" and a failure counter.

A test keeps going after a failed check (every failure is reported, not only the first) and ends
with `sys.exit(1 if failures() else 0)`. Imported from the test's own folder:

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from testlib import SKIP, check, failures
"""
import sys

SKIP = 77  # ctest's SKIP_RETURN_CODE (tests/CMakeLists.txt)

_failures = 0


def check(cond, msg):
    """Counts and reports (on stderr) a failed condition; the test goes on."""
    global _failures
    if not cond:
        _failures += 1
        print(f"FAIL: {msg}", file=sys.stderr)


def failures():
    """How many checks have failed so far."""
    return _failures

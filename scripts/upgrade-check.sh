#!/usr/bin/env bash
# What would a refresh of requirements.lock break? Builds a throwaway environment with
# the newest versions pyproject.toml's floors allow (the lock is ignored), then runs
# lint and the unit tests there. Not part of `make test`.
#
#   scripts/upgrade-check.sh        (make upgrade-check)
#
# Prints which installed versions differ from the lock, then the checks' output.
# Exit status: that of the first check that failed (0: a refresh is safe to try).
set -uo pipefail
say() { printf '[wflo] %s\n' "$*"; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV="${UV:-.venv/bin/uv}"
WORK="$(mktemp -d /tmp/wflo-upgrade-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

say "throwaway environment: $WORK/venv (newest versions allowed by pyproject.toml)"
"$UV" venv -q --python "${PYTHON:-python3}" "$WORK/venv" || exit 1
"$UV" pip install -q --python "$WORK/venv/bin/python" --upgrade -e '.[local,dev]' || exit 1
PY="$WORK/venv/bin/python"

say "versions that differ from requirements.lock:"
"$PY" - <<'PYCODE'
import sys
sys.path.insert(0, "scripts")
from check_lock import check_environment, installed_versions, read_lock
moved = [p for p in check_environment(read_lock(), installed_versions()) if " the lock says " in p]
print("\n".join(f"  {p}" for p in moved) or "  none")
PYCODE

status=0
run() {
    say "\$ $*"
    "$@" || { local rc=$?; ((status)) || status=$rc; say "FAILED ($rc): $*"; }
}
run "$WORK/venv/bin/ruff" check wflo_jupyter tests scripts bench
run "$WORK/venv/bin/ruff" format --check wflo_jupyter tests scripts bench
run "$WORK/venv/bin/mypy"
run "$PY" -m pytest -q -p no:cacheprovider tests/unit \
    --deselect tests/unit/test_lock.py::test_this_environment_is_the_lock
if ((status)); then
    say "a lock refresh would break the checks above; fix them before 'make lock'"
else
    say "lint and unit tests pass on the newest versions: 'make lock' then 'make test'"
fi
exit "$status"

#!/usr/bin/env bash
# THE test command: set up the machine (idempotent), then run pytest.
# Arguments pass through to pytest, e.g.  scripts/test.sh tests/interop -x -k nginx
# When the arguments name no test path (the whole suite, as CI runs it), a second pass runs
# the WSGI integration tests once more on the pure-Python codec (PYMASTER_PURE_PYTHON=1), so
# that the compiled codec and its fallback both serve real requests in every run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"

FALLBACK_TESTS=(
    tests/integration/test_wsgi_conformance.py
    tests/integration/test_connections.py
    tests/integration/test_write_errors.py
    tests/integration/test_logging.py
    tests/integration/test_mount.py
)

named_paths=0
for arg in "$@"; do
    if [[ "$arg" != -* && -e "$arg" ]]; then
        named_paths=1
    fi
done

"$PY" -m pytest -q "$@"
if ((named_paths)) || [[ -n "${PYMASTER_PURE_PYTHON:-}" ]]; then
    exit 0
fi
echo "test: the WSGI integration tests once more on the pure-Python codec (PYMASTER_PURE_PYTHON=1)"
PYMASTER_PURE_PYTHON=1 exec "$PY" -m pytest -q "$@" -k "not psgi" "${FALLBACK_TESTS[@]}"

#!/usr/bin/env bash
# THE test command: set up the machine (idempotent), then run pytest.
# Arguments pass through to pytest, e.g.  scripts/test.sh tests/interop -x -k nginx
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -q "$@"

#!/usr/bin/env bash
# Side-by-side benchmarks on one interpreter: Debian's /usr/bin/python3 is the Python that
# uWSGI's python3 plugin embeds, so pymaster and gunicorn run on it too (a venv with the
# system site-packages: the same jinja2 for everyone). Arguments go to benchmarks/run.py.
#   bash scripts/bench.sh --only http,nginx,psgi,fastrouter,reload --duration 10
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
VENV="$ROOT/.venv-bench"
if [[ ! -x "$VENV/bin/python" ]]; then
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e "$ROOT[bench]" >/dev/null
cd "$ROOT"
exec "$VENV/bin/python" benchmarks/run.py "$@"

#!/usr/bin/env bash
# The code checks CI runs before the tests: ruff (lint + format) and mypy, at the versions
# pinned in pyproject.toml's `dev` extra. Non-zero on any finding.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
"$BIN/ruff" check pymaster tests benchmarks
"$BIN/ruff" format --check pymaster
"$BIN/mypy"

#!/usr/bin/env bash
# Idempotent set-up of a development / CI machine (fresh Debian 12, run as root):
#   1. Debian packages: nginx, uWSGI (+ python3, psgi plugins), Plack, Starman, wrk, ...
#   2. .venv with `pip install -e '.[test,bench,dev]'` (which builds the compiled codec in place).
# Quiet when things go well; on failure prints the captured output and exits non-zero.
# Re-running is cheap: apt is only touched when a package is missing, pip only when
# pyproject.toml changed (or the venv is missing).
#
# Environment: PYTHON (default python3) picks the interpreter for a new venv;
#              PYMASTER_SKIP_APT=1 skips the Debian part (e.g. a non-root developer box).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEB_PACKAGES=(
    nginx-light
    uwsgi-core uwsgi-plugin-python3 uwsgi-plugin-psgi
    python3-jinja2  # uWSGI's python3 plugin embeds Debian's python3, not the venv: app.wsgi needs jinja2 there
    libplack-perl libtext-xslate-perl libfile-map-perl starman
    # Perl frameworks, WebSocket and Server::Starter interop (tests/integration/test_psgi_*.py)
    libcatalyst-perl libdancer2-perl libmojolicious-perl libprotocol-websocket-perl
    libserver-starter-perl
    wrk procps curl ca-certificates python3-venv
    media-types  # /etc/mime.types: the static files' MIME table (pymaster/apps/static.py)
    iproute2  # `ip netns` for tests/integration/test_netns.py (a backend host lost)
    chromium  # headless browser for tests/integration/test_demo_browser.py (Playwright drives it; no browser download)
    systemd strace  # systemd-analyze verify/security and the unit's syscall filter (tests/integration/test_deploy.py)
    tmux  # uwsgitop on a terminal (tests/interop/test_stats_tools.py)
    gcc libc6-dev python3-dev  # the compiled codec (pymaster/protocols/_codec.c), built by pip
)

LOG="$(mktemp -t pymaster-bootstrap.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

step() {  # step "what" cmd args...: run quietly, dump the log and fail loudly on error
    local what="$1"; shift
    if ! "$@" >"$LOG" 2>&1; then
        echo "bootstrap: FAILED: $what" >&2
        echo "---- output of: $* ----" >&2
        tail -n 80 "$LOG" >&2
        exit 1
    fi
}

missing_debs() {
    local pkg
    for pkg in "${DEB_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
    done
}

if [[ "${PYMASTER_SKIP_APT:-0}" != 1 ]]; then
    mapfile -t MISSING < <(missing_debs)
    if ((${#MISSING[@]})); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "bootstrap: missing Debian packages (${MISSING[*]}); run as root or install them" >&2
            exit 1
        fi
        echo "bootstrap: installing Debian packages: ${MISSING[*]}"
        export DEBIAN_FRONTEND=noninteractive
        step "apt-get update" apt-get update -q
        step "apt-get install" apt-get install -y -q --no-install-recommends "${MISSING[@]}"
        # nginx-light's package starts a system nginx on :80; the tests run their own.
        if command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then
            systemctl stop nginx >/dev/null 2>&1 || true
        fi
    fi
fi

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.pymaster-bootstrap"
# pip again when the build inputs change: the metadata, or the C source of the compiled codec
# (an editable install builds the extension into the source tree, pymaster/protocols/*.so)
WANT="$(cat pyproject.toml pymaster/protocols/_codec.c | sha256sum | cut -d' ' -f1)"
codec_missing() {  # a compiler is there but the compiled codec does not import
    command -v cc >/dev/null && ! "$VENV/bin/python" -c 'import pymaster.protocols._codec' 2>/dev/null
}

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating $VENV with $PYTHON"
    step "python venv" "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]] || ! "$VENV/bin/python" -c 'import pymaster' 2>/dev/null || codec_missing; then
    echo "bootstrap: pip install -e '.[test,bench,dev]'"
    step "pip upgrade" "$VENV/bin/python" -m pip install -q --upgrade pip
    step "pip install" "$VENV/bin/python" -m pip install -q -e '.[test,bench,dev]'
    echo "$WANT" >"$STAMP"
fi

if codec_missing; then
    echo "bootstrap: the compiled codec did not build (pymaster runs on the pure-Python one)" >&2
    exit 1
fi

# Fail loudly now rather than in the middle of a test run.
for tool in nginx uwsgi plackup starman wrk; do
    command -v "$tool" >/dev/null || { echo "bootstrap: '$tool' not found after install" >&2; exit 1; }
done

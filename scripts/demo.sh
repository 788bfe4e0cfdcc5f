#!/usr/bin/env bash
# The seed's cluster demo from one command (docs/demo.md). Ctrl-C stops everything.
#
#   bash scripts/demo.sh            pymaster --emperor etc/demo: one vassal per etc/demo/*.ini
#       frontend (HTTP 127.0.0.1:8080: landing page, /static, and /psgi, /wsgi through
#       pymaster.apps.uwsgi_pass) -> fastrouter :4000 (subscriptions on UDP :4001)
#       -> 3 PSGI backends :4002-4004 (key psgi_cluster, modifier1 5)
#       -> 3 WSGI backends :4005-4007 (key wsgi_cluster)
#
#   bash scripts/demo.sh --plackup  the seed's own command lines (shared seed demo/commands.sh),
#       pymaster in place of ./uwsgi, run from examples/: `plackup -Ilib frontend.psgi`
#       (HTTP :5000, Plack::App::uWSGI from examples/lib) in front of the same fastrouter
#       and backends, each started by hand with the seed's options.
#
# Both run scripts/bootstrap.sh first. Logs: $DEMO_LOGS (default /tmp/pymaster-demo/*.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MODE=emperor
case "${1:-}" in
    "") ;;
    --plackup) MODE=plackup ;;
    -h|--help)
        sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    *)
        echo "demo: unknown argument '$1': expected nothing (the Emperor) or --plackup" >&2
        exit 2 ;;
esac

bash "$ROOT/scripts/bootstrap.sh"

PYMASTER="${PYMASTER:-$ROOT/.venv/bin/pymaster}"
LOGS="${DEMO_LOGS:-/tmp/pymaster-demo}"
mkdir -p "$LOGS"

PIDS=()
running() {  # running PID: alive and not a zombie (kill -0 succeeds on unreaped children)
    local stat
    stat="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$stat" && "$stat" != Z* ]]
}
cleanup() {
    trap - INT TERM EXIT
    ((${#PIDS[@]})) || return 0
    echo
    echo "demo: stopping ${#PIDS[@]} process(es)"
    # TERM, not INT: bash starts background jobs with SIGINT ignored (plackup keeps that).
    # The Emperor's SIGTERM is a graceful Ragnarok: every vassal shuts down, then it exits.
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 150); do
        alive=0
        for pid in "${PIDS[@]}"; do running "$pid" && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    # Vassals die with the Emperor (PR_SET_PDEATHSIG), so KILL leaves no orphan either.
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

start() {  # start NAME CMD...: run in the background, log to $LOGS/NAME.log
    local name="$1"; shift
    "$@" >"$LOGS/$name.log" 2>&1 &
    PIDS+=($!)
}

port_taken() {  # port_taken PORT: something accepts TCP connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports() {  # check_ports PORT...: refuse to start over a running demo or anything else
    local port taken=()
    for port in "$@"; do port_taken "$port" && taken+=("$port"); done
    if ((${#taken[@]})); then
        echo "demo: 127.0.0.1 port(s) ${taken[*]} already in use (another demo running?);" \
             "the demo needs ports $*" >&2
        exit 1
    fi
}

wait_tcp() {  # wait_tcp PORT NAME: fail with the log if nothing listens within 30 s
    local port="$1" name="$2"
    for _ in $(seq 300); do
        port_taken "$port" && return 0
        for pid in "${PIDS[@]}"; do
            running "$pid" || { echo "demo: a process exited early; its log ($LOGS/$name.log):" >&2
                                tail -n 40 "$LOGS/$name.log" >&2; exit 1; }
        done
        sleep 0.1
    done
    echo "demo: $name did not listen on :$port; its log ($LOGS/$name.log):" >&2
    tail -n 40 "$LOGS/$name.log" >&2
    exit 1
}

BACKENDS=(4002 4003 4004 4005 4006 4007)

if [[ "$MODE" == emperor ]]; then
    check_ports 8080 4000 "${BACKENDS[@]}"
    cd "$ROOT"
    # One Emperor, one vassal master per etc/demo/*.ini (their output goes to its log).
    start emperor "$PYMASTER" --emperor etc/demo
    wait_tcp 4000 emperor
    for port in "${BACKENDS[@]}"; do wait_tcp "$port" emperor; done
    wait_tcp 8080 emperor
    cat <<MSG

pymaster demo is up: open http://127.0.0.1:8080/
  http://127.0.0.1:8080/psgi/     PSGI cluster (3 backends; reload to see the PID change)
  http://127.0.0.1:8080/wsgi/     WSGI cluster (3 backends)
  vassals: $ROOT/etc/demo/*.ini (touch one to reload it, move it away to stop it)
  log: $LOGS/emperor.log
Press Ctrl-C to stop.
MSG
else
    check_ports 5000 4000 "${BACKENDS[@]}"
    cd "$ROOT/examples"
    if ! perl -Ilib -MPlack::App::uWSGI -e1 2>/dev/null; then
        echo "demo: frontend.psgi needs Plack::App::uWSGI (examples/lib/Plack/App/uWSGI.pm), not found" >&2
        exit 1
    fi
    # 1. HTTP frontend (Plack, :5000 is plackup's default port) speaking uwsgi to the
    #    fastrouter. Plack::App::uWSGI is our own, in examples/lib (hence the seed's -Ilib).
    start frontend plackup -Ilib frontend.psgi
    # 2. fastrouter on :4000 with its subscription server on :4001
    start fastrouter "$PYMASTER" --plugins fastrouter --fastrouter :4000 --fastrouter-subscription-server :4001
    # 3. three PSGI backends, subscribing as psgi_cluster with modifier1 5
    for port in 4002 4003 4004; do
        start "psgi-$port" "$PYMASTER" --plugins psgi -s ":$port" --psgi app.psgi -M \
            --subscribe-to 127.0.0.1:4001:psgi_cluster:5
    done
    # 4. three WSGI backends, subscribing as wsgi_cluster
    for port in 4005 4006 4007; do
        start "wsgi-$port" "$PYMASTER" --plugins python -s ":$port" --file app.wsgi -M \
            --subscribe-to 127.0.0.1:4001:wsgi_cluster
    done

    wait_tcp 4000 fastrouter
    for port in 4002 4003 4004; do wait_tcp "$port" "psgi-$port"; done
    for port in 4005 4006 4007; do wait_tcp "$port" "wsgi-$port"; done
    wait_tcp 5000 frontend
    cat <<MSG

pymaster demo (the seed's plackup frontend) is up (logs in $LOGS):
  http://127.0.0.1:5000/psgi/     PSGI cluster (3 backends, reload to see the PIDs rotate)
  http://127.0.0.1:5000/wsgi/     WSGI cluster (3 backends)
  http://127.0.0.1:5000/static/hokkaidopm.gif   static files (a directory listing at /static/)
Press Ctrl-C to stop.
MSG
fi

# Exit (and clean up) as soon as any part of the cluster dies, or on Ctrl-C.
wait -n "${PIDS[@]}" || true
echo "demo: a process exited; see $LOGS" >&2
exit 1

#!/usr/bin/env bash
# The seed demo, with pymaster in place of ./uwsgi (see shared seed demo/commands.sh):
#   plackup frontend (HTTP :5000) -> fastrouter :4000 (subscriptions on UDP :4001)
#   -> 3 PSGI backends :4002-4004 (key psgi_cluster, modifier1 5)
#   -> 3 WSGI backends :4005-4007 (key wsgi_cluster)
# Runs from examples/ exactly like the seed's command lines. Ctrl-C stops everything.
# Logs: $DEMO_LOGS (default /tmp/pymaster-demo/*.log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"

PYMASTER="${PYMASTER:-$ROOT/.venv/bin/pymaster}"
LOGS="${DEMO_LOGS:-/tmp/pymaster-demo}"
mkdir -p "$LOGS"
cd "$ROOT/examples"

if ! perl -Ilib -MPlack::App::uWSGI -e1 2>/dev/null; then
    echo "demo: frontend.psgi needs Plack::App::uWSGI (examples/lib/Plack/App/uWSGI.pm), not found" >&2
    exit 1
fi

PIDS=()
running() {  # running PID: alive and not a zombie (kill -0 succeeds on unreaped children)
    local stat
    stat="$(ps -o stat= -p "$1" 2>/dev/null)" && [[ -n "$stat" && "$stat" != Z* ]]
}
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "demo: stopping ${#PIDS[@]} processes"
    # TERM, not INT: bash starts background jobs with SIGINT ignored (plackup keeps that).
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do running "$pid" && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
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

wait_tcp() {  # wait_tcp PORT NAME: fail with the log if nothing listens within 15 s
    local port="$1" name="$2"
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: $name did not listen on :$port; its log ($LOGS/$name.log):" >&2
    tail -n 30 "$LOGS/$name.log" >&2
    exit 1
}

# 1. HTTP frontend (Plack, :5000 is plackup's default port) speaking uwsgi to the fastrouter.
#    Plack::App::uWSGI is our own, in examples/lib (hence the seed's -Ilib).
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

pymaster demo is up (logs in $LOGS):
  http://127.0.0.1:5000/psgi/     PSGI cluster (3 backends, reload to see the PIDs rotate)
  http://127.0.0.1:5000/wsgi/     WSGI cluster (3 backends)
  http://127.0.0.1:5000/static/hokkaidopm.gif   static files (a directory listing at /static/)
Press Ctrl-C to stop.
MSG

# Exit (and clean up) as soon as any part of the cluster dies, or on Ctrl-C.
wait -n "${PIDS[@]}" || true
echo "demo: a process exited; see $LOGS" >&2
exit 1

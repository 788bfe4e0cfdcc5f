#!/usr/bin/env python3
"""Where a WSGI worker's CPU goes per request: one single-process pymaster (`-s`, one worker,
no master) behind nginx `uwsgi_pass`, loaded by wrk, measured two ways:

    .venv/bin/python benchmarks/profile_worker.py                 # CPU µs per request
    .venv/bin/python benchmarks/profile_worker.py --cprofile 25   # + cProfile, top 25 lines
    PYMASTER_PURE_PYTHON=1 .venv/bin/python benchmarks/profile_worker.py   # the fallback
    .venv/bin/python benchmarks/profile_worker.py --callgrind 500,2500   # instructions

--callgrind A,B runs the worker under valgrind (callgrind) twice, serving A then B requests
from one sequential uwsgi client (nginx's vars, wrk's headers): (instructions(B) -
instructions(A)) / (B - A) is the worker's instruction count per request, start-up and
shutdown cancelled out. Unlike CPU time it does not move with the load of a shared machine.
--logging keeps the request log on (to the server's log file) instead of --disable-logging.
The server runs from this checkout (cwd), whatever PYTHONPATH says.

CPU per request is the server process's user+system CPU time (psutil) over the measured run
divided by the requests wrk completed; with --cprofile the worker runs under cProfile (which
slows it several times: read the shares, not the absolute times). Run it under the load
lock on a shared machine: `flock /tmp/pymaster-load.lock ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from benchmarks.run import WSGI_APPS, run_wrk  # noqa: E402
from tests.external import (  # noqa: E402
    free_port,
    http_get,
    nginx,
    run_server,
    uwsgi_packet,
    uwsgi_vars,
)

# The worker calls os._exit(): the profile is written just before it.
_WRAPPER = """\
import cProfile, os, sys
prof = cProfile.Profile()
_exit = os._exit
def _dump_and_exit(code):
    prof.disable()
    prof.dump_stats({out!r})
    _exit(code)
os._exit = _dump_and_exit
from pymaster.cli import main
prof.enable()
main(sys.argv[1:])
"""


def profile(app: str, duration: float, connections: int, top: int | None) -> str:
    path, expect = WSGI_APPS[app]
    port = free_port()
    args = ["-s", f"127.0.0.1:{port}", "--wsgi-file", str(path), *QUIET]
    with tempfile.TemporaryDirectory(prefix="pymaster-profile-") as tmp:
        out = os.path.join(tmp, "worker.prof")
        if top:
            cmd = [sys.executable, "-c", _WRAPPER.format(out=out), *args]
        else:
            cmd = [sys.executable, "-m", "pymaster", *args]
        with (
            run_server(
                "pymaster", cmd, wait_ports=[port], stop_signal=signal.SIGHUP, grace=10.0
            ) as srv,
            nginx(f"127.0.0.1:{port}") as front,
        ):
            page = http_get(front.port, "/")
            if page.status != 200 or expect not in page.text:
                raise RuntimeError(f"check request got {page.status}: {page.text[:200]!r}")
            run_wrk(front.port, 1, connections, 1)  # warm-up
            proc = psutil.Process(srv.pid)
            before = proc.cpu_times()
            result = run_wrk(front.port, duration, connections, 1)
            after = proc.cpu_times()
            user = after.user - before.user
            system = after.system - before.system
            n = max(1, result["requests"])
            os.kill(srv.pid, signal.SIGHUP)
            with contextlib.suppress(Exception):
                srv.proc.wait(15)
        lines = [
            f"app {app}, {duration:.0f} s, wrk -c{connections} through nginx uwsgi_pass, "
            f"one single-process worker, "
            f"PYMASTER_PURE_PYTHON={os.environ.get('PYMASTER_PURE_PYTHON', '')!r}"
            f"{' (under cProfile)' if top else ''}",
            f"requests {result['requests']}, {result['rps']:.0f} req/s, errors {result['errors']}",
            f"server CPU per request: {1e6 * (user + system) / n:.1f} µs "
            f"(user {1e6 * user / n:.1f}, system {1e6 * system / n:.1f})",
        ]
        if top:
            for _ in range(50):
                if os.path.exists(out):
                    break
                time.sleep(0.1)
            buf = io.StringIO()
            stats = pstats.Stats(out, stream=buf)
            stats.sort_stats("tottime").print_stats(top)
            text = buf.getvalue()
            text = text[text.find("   ncalls") :] if "   ncalls" in text else text
            lines += [
                "",
                f"cProfile, top {top} by own time (per-call times inflated by cProfile):",
                text.rstrip(),
            ]
        return "\n".join(lines)


# --http: the worker's --http-socket, one request per connection (wrk's request)
HTTP = False
WRK_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n"

# --logging: the request log on (to the server's log file), else --disable-logging
QUIET = ["--disable-logging"]

# what nginx sends for wrk's request (uwsgi_params + the headers wrk sets)
NGINX_VARS = uwsgi_vars(
    "/", host="127.0.0.1", port=8080, REMOTE_PORT="51234", HTTP_CONNECTION="close"
)


def _instructions(app: Path, requests: int) -> int:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pymaster-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "pymaster",
            "--http-socket" if HTTP else "-s",
            f"127.0.0.1:{port}",
            "--wsgi-file",
            str(app),
            *QUIET,
        ]
        packet = WRK_REQUEST if HTTP else uwsgi_packet(NGINX_VARS)
        with run_server(
            "pymaster",
            cmd,
            wait_ports=[port],
            stop_signal=signal.SIGHUP,
            grace=120.0,
            timeout=180.0,
        ) as srv:
            for _ in range(requests):
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    sock.sendall(packet)
                    while sock.recv(65536):
                        pass
            os.kill(srv.pid, signal.SIGHUP)
            srv.proc.wait(120)
        text = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True).stdout
    match = re.search(r"^([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text, re.M)
    if not match:
        raise RuntimeError(f"no PROGRAM TOTALS in callgrind_annotate's output:\n{text[:2000]}")
    return int(match.group(1).replace(",", ""))


def callgrind(app: str, low: int, high: int) -> str:
    path, _expect = WSGI_APPS[app]
    a = _instructions(path, low)
    b = _instructions(path, high)
    return (
        f"app {app}, one single-process worker under callgrind, sequential "
        f"{'HTTP' if HTTP else 'uwsgi'} requests, "
        f"PYMASTER_PURE_PYTHON={os.environ.get('PYMASTER_PURE_PYTHON', '')!r}\n"
        f"instructions: {a} for {low} requests, {b} for {high}: "
        f"{(b - a) / (high - low):.0f} per request"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--app", default="hello", choices=sorted(WSGI_APPS))
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="TOP",
        help="run under cProfile and print the TOP functions by own time",
    )
    p.add_argument(
        "--callgrind",
        default="",
        metavar="A,B",
        help="instructions per request under callgrind, from runs of A and B requests",
    )
    p.add_argument(
        "--logging",
        action="store_true",
        help="with the request log (to the server's log file) instead of --disable-logging",
    )
    p.add_argument(
        "--http",
        action="store_true",
        help="--callgrind over the worker's --http-socket instead of -s",
    )
    opts = p.parse_args(argv)
    global HTTP
    HTTP = opts.http
    if opts.logging:
        QUIET[:] = []
    if opts.callgrind:
        low, high = (int(v) for v in opts.callgrind.split(","))
        print(callgrind(opts.app, low, high))
        return 0
    print(profile(opts.app, opts.duration, opts.connections, opts.cprofile or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Side-by-side load runs: pymaster vs uWSGI vs gunicorn (and Starman for PSGI), on this
machine, in one run, with the same worker count and the same wrk load for every server.

    .venv/bin/python benchmarks/run.py                       # all scenarios, 10 s each
    .venv/bin/python benchmarks/run.py --only http --duration 3 --servers uwsgi,gunicorn

Prints a markdown table (requests/s, p99 latency, errors, memory, ratios) and writes the
full results to benchmarks/results/<timestamp>.json. See benchmarks/README.md.

A scenario is a function registered with @scenario(name) that returns Cases; a Case knows
how to start its server(s) and yields the port wrk hits and the process tree to measure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.external import (  # noqa: E402
    EXAMPLES,
    Server,
    descendants,
    free_port,
    gunicorn,
    http_get,
    nginx,
    pymaster,
    run_server,
    starman,
    tree_memory,
    uwsgi,
    uwsgi_fastrouter,
)

BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
WRK_SCRIPT = BENCH / "wrk_report.lua"
SERVERS = ("pymaster", "uwsgi", "gunicorn", "starman", "uvicorn", "nginx")

# app name -> (file, text the page must contain)
WSGI_APPS = {
    "hello": (BENCH / "apps" / "hello.py", "Hello, World!"),
    "seed": (EXAMPLES / "app.wsgi", "PID:"),
}
PSGI_APPS = {
    "hello": (BENCH / "apps" / "hello.psgi", "Hello, World!"),
    "seed": (BENCH / "apps" / "seed.psgi", "PID:"),     # Text::Xslate, as the seed
}


@dataclass
class Target:
    port: int          # where wrk sends its load
    measured: Server   # the app server whose memory is reported
    front: str = ""    # what sits in front of it ("" = wrk talks to it directly)
    also: dict[str, Server] = field(default_factory=dict)  # e.g. {"router": ...}: RSS reported
    during: Callable[[float], None] | None = None  # run in a thread while wrk measures


@dataclass
class Case:
    scenario: str
    server: str        # pymaster | uwsgi | gunicorn | starman
    app: str
    via: str           # how the load reaches it, e.g. "http", "nginx uwsgi_pass"
    start: Callable[[], ContextManager[Target]] = field(repr=False)
    expect: str = ""
    # the load generator: (port, duration, connections) -> result; None = wrk
    load: Callable[[int, float, int], dict] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.app}/{self.server}"


# --------------------------------------------------------------------------- app servers

# uWSGI 2.0's --http-socket answers without keep-alive and without saying so; wrk then
# counts every response as a read error. "Connection: close" (as uWSGI's docs advise for
# benchmarks) makes wrk reconnect cleanly, so the errors column shows real errors only.
UWSGI_EXTRA = {"http": ["--need-app", "--add-header", "Connection: close"],
               "uwsgi": ["--need-app"]}

# kind -> (option that loads the app, uWSGI plugin, pymaster's extra options, native server)
KINDS = {
    "wsgi": ("--wsgi-file", "python3", [], gunicorn),
    "psgi": ("--psgi", "psgi", ["--plugins", "psgi"], starman),
}


def app_server(kind: str, server: str, proto: str, app: Path, workers: int,
               extra: list[str] = ()) -> ContextManager[Server]:
    """One app server of `kind` ('wsgi' or 'psgi') listening with `proto` ('http' or
    'uwsgi') on a fresh port; `server` is pymaster, uwsgi or the kind's native server."""
    load, plugin, pymaster_extra, native = KINDS[kind]
    port = free_port()
    sock = ["--http-socket" if proto == "http" else "-s", f"127.0.0.1:{port}"]
    common = [*sock, load, str(app), "-M", "-p", str(workers), "--disable-logging", *extra]
    if server == "pymaster":
        return pymaster([*pymaster_extra, *common])
    if server == "uwsgi":
        return uwsgi([*common, *UWSGI_EXTRA[proto]], plugins=[plugin])
    if server == native.__name__ and proto == "http":
        return native(app, workers, port=port)
    raise ValueError(f"{server} cannot serve {kind} over {proto}")


@contextlib.contextmanager
def direct(*args) -> Iterator[Target]:
    with app_server(*args) as srv:
        yield Target(srv.port, srv)


@contextlib.contextmanager
def behind_nginx(*args, mode: str) -> Iterator[Target]:
    with app_server(*args) as srv, nginx(f"127.0.0.1:{srv.port}", mode) as front:
        yield Target(front.port, srv, f"nginx {mode}")


# --------------------------------------------------------------------------- scenarios

SCENARIOS: dict[str, tuple[str, Callable[[argparse.Namespace], list[Case]]]] = {}


def scenario(name: str, description: str):
    def register(fn):
        SCENARIOS[name] = (description, fn)
        return fn
    return register


def direct_cases(name: str, kind: str, apps: dict, servers: tuple, opts) -> list[Case]:
    """wrk straight at each server's HTTP socket, for every app."""
    return [Case(name, server, app, "http",
                 lambda s=server, a=path: direct(kind, s, "http", a, opts.workers), expect)
            for app, (path, expect) in apps.items() for server in servers]


@scenario("http", "HTTP straight to the app server (--http-socket / gunicorn sync)")
def http_cases(opts) -> list[Case]:
    return direct_cases("http", "wsgi", WSGI_APPS, ("pymaster", "uwsgi", "gunicorn"), opts)


THREADS = 4
THREAD_APPS = {
    "hello": WSGI_APPS["hello"],
    "sleep10": (BENCH / "apps" / "sleep10.py", "Hello after 10 ms!"),
}


def threaded_server(server: str, app: Path, workers: int) -> ContextManager[Server]:
    """`--threads 4` on every server: pymaster and uWSGI on --http-socket, gunicorn with
    its gthread worker (`-k gthread --threads 4`)."""
    if server == "gunicorn":
        return gunicorn(app, workers, args=["--worker-class", "gthread",
                                            "--threads", str(THREADS)])
    return app_server("wsgi", server, "http", app, workers, ["--threads", str(THREADS)])


@contextlib.contextmanager
def threaded(server: str, app: Path, workers: int) -> Iterator[Target]:
    with threaded_server(server, app, workers) as srv:
        yield Target(srv.port, srv)


@scenario("threads", f"--threads {THREADS} per worker over HTTP: pymaster vs uWSGI vs gunicorn gthread")
def threads_cases(opts) -> list[Case]:
    return [Case("threads", server, app, f"http, {THREADS} threads",
                 lambda s=server, a=path: threaded(s, a, opts.workers), expect)
            for app, (path, expect) in THREAD_APPS.items()
            for server in ("pymaster", "uwsgi", "gunicorn")]


# kind -> (server, protocol nginx speaks to it, nginx directive); the native server is
# behind proxy_pass, for reference
BEHIND_NGINX = {
    kind: (("pymaster", "uwsgi", "uwsgi_pass"), ("uwsgi", "uwsgi", "uwsgi_pass"),
           (native.__name__, "http", "proxy_pass"))
    for kind, (_load, _plugin, _extra, native) in KINDS.items()
}


def nginx_cases_for(name: str, kind: str, apps: dict, opts) -> list[Case]:
    """nginx in front of each server, for every app."""
    return [Case(name, server, app, f"nginx {mode}",
                 lambda s=server, p=proto, a=path, m=mode:
                 behind_nginx(kind, s, p, a, opts.workers, mode=m), expect)
            for app, (path, expect) in apps.items()
            for server, proto, mode in BEHIND_NGINX[kind]]


@scenario("nginx", "nginx uwsgi_pass -> -s socket (gunicorn: nginx proxy_pass, for reference)")
def nginx_cases(opts) -> list[Case]:
    return nginx_cases_for("nginx", "wsgi", WSGI_APPS, opts)


@scenario("psgi", "PSGI over HTTP: pymaster --psgi vs uWSGI psgi plugin vs Starman")
def psgi_cases(opts) -> list[Case]:
    return direct_cases("psgi", "psgi", PSGI_APPS, ("pymaster", "uwsgi", "starman"), opts)


@scenario("psgi-nginx", "PSGI behind nginx uwsgi_pass: pymaster --psgi -s vs uWSGI --plugin psgi -s "
                        "(Starman: nginx proxy_pass, for reference)")
def psgi_nginx_cases(opts) -> list[Case]:
    return nginx_cases_for("psgi-nginx", "psgi", PSGI_APPS, opts)

ASGI_APPS = {"hello": ("hello_asgi:app", "Hello, World!"),
             "json": ("json_asgi:app", '"message": "Hello, World!"')}
ASGI_WS_APPS = {"echo": ("echo_asgi:app", "WebSocket echo")}
ASGI_SERVERS = ("pymaster", "uvicorn", "gunicorn")
WS_SERVERS = ("pymaster", "uvicorn", "gunicorn")
WS_MESSAGE = 1024   # bytes per WebSocket message
WS_LOAD = BENCH / "ws_load.py"


def asgi_server(server: str, proto: str, target: str, workers: int,
                extra: list[str] = ()) -> ContextManager[Server]:
    """An ASGI app server on a fresh port, `workers` workers, no access log, uvloop: pymaster
    --asgi (`proto` 'http': --http-socket, 'uwsgi': -s), uvicorn --http httptools, or
    gunicorn's native ASGI worker (-k asgi, gunicorn >= 24), all on this interpreter;
    `extra` goes to uvicorn (e.g. --ws wsproto)."""
    port = free_port()
    apps = str(BENCH / "apps")
    if server == "pymaster":
        sock = "--http-socket" if proto == "http" else "-s"
        return pymaster([sock, f"127.0.0.1:{port}", "--asgi", target, "--pythonpath", apps,
                         "-M", "-p", str(workers), "--disable-logging"])
    if proto != "http":
        raise ValueError(f"{server} cannot serve ASGI over {proto}")
    if server == "uvicorn":
        return run_server("uvicorn", [sys.executable, "-m", "uvicorn", "--app-dir", apps, target,
                                      "--host", "127.0.0.1", "--port", str(port), "--workers",
                                      str(workers), "--http", "httptools", "--loop", "uvloop",
                                      "--no-access-log", "--log-level", "warning", *extra],
                          wait_ports=[port], stop_signal=signal.SIGINT)
    if server == "gunicorn":
        return gunicorn(target, workers, port=port,
                        args=["--worker-class", "asgi", "--asgi-loop", "uvloop",
                              "--pythonpath", apps])
    raise ValueError(f"unknown ASGI server {server}")


@contextlib.contextmanager
def asgi_direct(server: str, target: str, workers: int, extra: list[str] = ()) -> Iterator[Target]:
    """pymaster --asgi vs uvicorn (httptools, uvloop) vs gunicorn -k asgi, the same workers."""
    with asgi_server(server, "http", target, workers, extra) as srv:
        yield Target(srv.port, srv)


@scenario("asgi", "ASGI over HTTP keep-alive: pymaster --asgi vs uvicorn --http httptools "
                  "vs gunicorn -k asgi (same workers)")
def asgi_cases(opts) -> list[Case]:
    return [Case("asgi", server, app, "http",
                 lambda s=server, t=target: asgi_direct(s, t, opts.workers), expect)
            for app, (target, expect) in ASGI_APPS.items() for server in ASGI_SERVERS]


NGINX_KEEPALIVE = 32   # idle upstream connections nginx keeps per worker (proxy_pass)


@contextlib.contextmanager
def asgi_behind_nginx(server: str, proto: str, target: str, workers: int) -> Iterator[Target]:
    """nginx (one config for all) in front: proxy_pass to an upstream with keepalive, or
    uwsgi_pass to pymaster's -s socket (one request per connection, as nginx sends it)."""
    mode = "proxy_pass" if proto == "http" else "uwsgi_pass"
    keep = NGINX_KEEPALIVE if mode == "proxy_pass" else 0
    with (asgi_server(server, proto, target, workers) as srv,
          nginx(f"127.0.0.1:{srv.port}", mode, keepalive=keep) as front):
        yield Target(front.port, srv, f"nginx {mode}")


ASGI_NGINX = [(server, "http", "nginx proxy_pass") for server in ASGI_SERVERS]
ASGI_NGINX.append(("pymaster", "uwsgi", "nginx uwsgi_pass"))


@scenario("asgi-nginx", "ASGI behind nginx proxy_pass (keep-alive upstream): pymaster vs uvicorn vs "
                        "gunicorn -k asgi; pymaster -s behind uwsgi_pass as an extra row")
def asgi_nginx_cases(opts) -> list[Case]:
    return [Case("asgi-nginx", server, app, via,
                 lambda s=server, p=proto, t=target: asgi_behind_nginx(s, p, t, opts.workers),
                 expect)
            for app, (target, expect) in ASGI_APPS.items() for server, proto, via in ASGI_NGINX]


def run_ws_load(port: int, duration: float, connections: int) -> dict:
    """One run of benchmarks/ws_load.py: `connections` WebSockets each echoing WS_MESSAGE
    bytes one message at a time; the result has the wrk run's keys (rps = messages/s)."""
    cmd = [sys.executable, str(WS_LOAD), "--port", str(port), "--connections", str(connections),
           "--duration", str(duration), "--size", str(WS_MESSAGE)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    match = re.search(r"^WS_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"ws_load failed ({out.returncode}): {out.stdout[-500:]} "
                           f"{out.stderr[-500:]}")
    raw = json.loads(match.group(1))
    secs = raw["duration_us"] / 1e6
    socket_errors = sum(raw[f"errors_{k}"] for k in ("connect", "closed"))
    return {
        "requests": raw["messages"],
        "rps": raw["messages"] / secs if secs else 0.0,
        "p50_ms": raw["latency_p50_us"] / 1000,
        "p99_ms": raw["latency_p99_us"] / 1000,
        "max_ms": raw["latency_max_us"] / 1000,
        "socket_errors": socket_errors,
        "non_2xx": raw["errors_mismatch"],   # echoes that came back different
        "errors": socket_errors + raw["errors_mismatch"],
        "ws_load": raw,
        "command": " ".join(cmd),
    }


# uvicorn's --ws auto picks `websockets` (its frame masking in C); the extra uvicorn row
# uses wsproto, the library pymaster's worker frames with, to tell server from library
WS_VARIANTS = [(server, "websocket", []) for server in WS_SERVERS]
WS_VARIANTS.append(("uvicorn", "websocket, uvicorn --ws wsproto", ["--ws", "wsproto"]))


@scenario("asgi-ws", f"WebSocket echo, {WS_MESSAGE} B messages one at a time per connection "
                     "(benchmarks/ws_load.py): pymaster --asgi vs uvicorn vs gunicorn -k asgi; "
                     "req/s is messages/s")
def asgi_ws_cases(opts) -> list[Case]:
    return [Case("asgi-ws", server, app, via,
                 lambda s=server, t=target, x=extra: asgi_direct(s, t, opts.workers, x), expect,
                 load=run_ws_load)
            for app, (target, expect) in ASGI_WS_APPS.items()
            for server, via, extra in WS_VARIANTS]


@contextlib.contextmanager
def fastrouter_topology(server: str, app: Path, workers: int, backends: int = 2) -> Iterator[Target]:
    """nginx -> fastrouter (key "bench") -> `backends` backends that subscribe to it (the
    workers split between them); router and backends are all uWSGI or all pymaster."""
    router_port, sub_port = free_port(), free_port()
    router_args = ["--fastrouter", f"127.0.0.1:{router_port}",
                   "--fastrouter-subscription-server", f"127.0.0.1:{sub_port}", "-M"]
    router = (uwsgi_fastrouter(router_port, subscription_port=sub_port) if server == "uwsgi"
              else pymaster(router_args))
    per_backend = max(1, workers // backends)
    with contextlib.ExitStack() as stack:
        rtr = stack.enter_context(router)
        nodes = [stack.enter_context(app_server("wsgi", server, "uwsgi", app, per_backend,
                                                ["--subscribe-to", f"127.0.0.1:{sub_port}:bench"]))
                 for _ in range(backends)]
        front = stack.enter_context(
            nginx(f"127.0.0.1:{router_port}", "uwsgi_pass", {"UWSGI_FASTROUTER_KEY": "bench"}))
        wait_for_status(front.port, 200)
        also = {"router": rtr, **{f"backend{i + 2}": n for i, n in enumerate(nodes[1:])}}
        yield Target(front.port, nodes[0], "nginx -> fastrouter", also)


def wait_for_status(port: int, status: int, timeout: float = 15.0) -> None:
    """Until a subscription arrives, a router answers 5xx or closes: poll for `status`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, "/").status == status:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no {status} on :{port} after {timeout:.0f} s")


@scenario("fastrouter", "nginx -> fastrouter -> subscribed backend (uWSGI router+node vs pymaster's)")
def fastrouter_cases(opts) -> list[Case]:
    return [Case("fastrouter", server, app, "nginx -> fastrouter",
                 lambda s=server, a=path: fastrouter_topology(s, a, opts.workers), expect)
            for app, (path, expect) in WSGI_APPS.items() for server in ("pymaster", "uwsgi")]

@contextlib.contextmanager
def http_router(server: str, app: Path, workers: int) -> Iterator[Target]:
    """wrk -> the instance's HTTP router (`--http`, keep-alive on both) -> its own workers
    over the internal uwsgi socket; the measured tree is the whole instance."""
    port = free_port()
    common = ["--http", f"127.0.0.1:{port}", "--wsgi-file", str(app), "-M", "-p", str(workers),
              "--disable-logging"]
    srv = (uwsgi([*common, "--http-keepalive=1", "--need-app"], plugins=["python3", "http"],
                 ports=[port])
           if server == "uwsgi" else pymaster([*common, "--http-keepalive", "5"], ports=[port]))
    with srv as instance:
        wait_for_status(port, 200)
        yield Target(port, instance, "http router")


@scenario("router", "wrk -> --http router -> the instance's workers (uWSGI's router vs pymaster's)")
def router_cases(opts) -> list[Case]:
    return [Case("router", server, app, "http router",
                 lambda s=server, a=path: http_router(s, a, opts.workers), expect)
            for app, (path, expect) in WSGI_APPS.items() for server in ("pymaster", "uwsgi")]


RELOADS = 2


@contextlib.contextmanager
def reloading(server: str, proto: str, mode: str, app: Path, workers: int) -> Iterator[Target]:
    """Behind nginx, with the master sent SIGHUP (graceful reload) RELOADS times while wrk
    runs: every failed request shows up as an error (nginx 502 or a socket error)."""
    with behind_nginx("wsgi", server, proto, app, workers, mode=mode) as target:
        def reload(duration: float) -> None:
            for _ in range(RELOADS):
                time.sleep(duration / (RELOADS + 1))
                os.kill(target.measured.pid, signal.SIGHUP)
        target.during = reload
        yield target


@scenario("reload", f"nginx in front, {RELOADS} graceful reloads (SIGHUP) during the run: errors must be 0")
def reload_cases(opts) -> list[Case]:
    return [Case("reload", server, app, f"nginx {mode} + SIGHUP",
                 lambda s=server, p=proto, m=mode, a=path: reloading(s, p, m, a, opts.workers),
                 expect)
            for app, (path, expect) in WSGI_APPS.items()
            for server, proto, mode in BEHIND_NGINX["wsgi"]]

STATIC_FILES = {"static1k": 1024, "static1m": 1 << 20}


@contextlib.contextmanager
def static_server(server: str, size: int, workers: int, offload: int = 0) -> Iterator[Target]:
    """A `size`-byte file answered for `/`: pymaster's and uWSGI's `--static-map /=FILE`
    (HTTP socket, the hello app behind it; pymaster optionally with --offload-threads), or
    nginx serving it itself (`try_files`, sendfile on)."""
    with tempfile.TemporaryDirectory(prefix="pm-static-") as tmp:
        path = Path(tmp) / f"f{size}.txt"
        path.write_bytes(b"x" * (size - 1) + b"\n")
        if server == "nginx":
            with nginx("", "static", workers=workers,
                       directives=[f"root {tmp};", f"try_files /{path.name} =404;",
                                   "sendfile on;", "default_type text/plain;"]) as srv:
                yield Target(srv.port, srv)
            return
        extra = ["--static-map", f"/={path}"]
        if offload:
            extra += ["--offload-threads", str(offload)]
        with app_server("wsgi", server, "http", WSGI_APPS["hello"][0], workers, extra) as srv:
            yield Target(srv.port, srv)


@scenario("static", "a 1 KB and a 1 MB file for `/`: --static-map (pymaster, pymaster with "
                    "--offload-threads 2, uWSGI) vs nginx serving it")
def static_cases(opts) -> list[Case]:
    cases = []
    for app, size in STATIC_FILES.items():
        for server, offload in (("pymaster", 0), ("pymaster", 2), ("uwsgi", 0), ("nginx", 0)):
            via = "http, offload-threads 2" if offload else ("nginx static" if server == "nginx"
                                                              else "http static-map")
            cases.append(Case("static", server, app, via,
                              lambda s=server, z=size, o=offload: static_server(s, z, opts.workers, o),
                              "xxx"))
    return cases


DEFAULT_SCENARIOS = ("http", "nginx")


# --------------------------------------------------------------------------- wrk

def eof_framed(page) -> bool:
    """A response whose body ends at connection close (no Content-Length, not chunked)."""
    return ("content-length" not in page.headers
            and "chunked" not in page.headers.get("transfer-encoding", "").lower())


def run_wrk(port: int, duration: float, connections: int, threads: int,
            eof: bool = False) -> dict:
    """One wrk run. With `eof` (responses framed by connection close), wrk counts one
    read error per complete response; those are subtracted, the raw counts stay in 'wrk'."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--latency", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    match = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(match.group(1))
    secs = raw["duration_us"] / 1e6
    read = max(0, raw["errors_read"] - raw["requests"]) if eof else raw["errors_read"]
    socket_errors = read + sum(raw[f"errors_{k}"] for k in ("connect", "write", "timeout"))
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / secs if secs else 0.0,
        "p50_ms": raw["latency_p50_us"] / 1000,
        "p99_ms": raw["latency_p99_us"] / 1000,
        "max_ms": raw["latency_max_us"] / 1000,
        "socket_errors": socket_errors,
        "non_2xx": raw["errors_status"],
        "errors": socket_errors + raw["errors_status"],
        "wrk": raw,
        "command": " ".join(cmd),
    }


def run_case(case: Case, opts) -> dict:
    result = {"scenario": case.scenario, "server": case.server, "app": case.app,
              "via": case.via, "workers": opts.workers}
    try:
        with case.start() as target:
            result["command"] = " ".join(map(str, target.measured.proc.args))
            page = http_get(target.port, "/")
            if page.status != 200 or case.expect not in page.text:
                raise RuntimeError(f"check request got {page.status}: {page.text[:200]!r}")
            result["eof_framed"] = eof = eof_framed(page)
            def load(duration: float) -> dict:
                if case.load is not None:
                    return case.load(target.port, duration, opts.connections)
                return run_wrk(target.port, duration, opts.connections, opts.threads, eof)
            if opts.warmup > 0:
                load(opts.warmup)
            cpu_before = {name: tree_cpu(other.pid) for name, other in target.also.items()}
            server_before = tree_cpu(target.measured.pid) + sum(cpu_before.values())
            wall = time.monotonic()
            action = None
            if target.during:
                action = threading.Thread(target=target.during, args=(opts.duration,), daemon=True)
                action.start()
            result.update(load(opts.duration))
            wall = time.monotonic() - wall
            also_used = 0.0
            for name, other in target.also.items():     # share of the machine's CPU time
                used = tree_cpu(other.pid) - cpu_before[name]
                also_used += used
                result[f"{name}_cpu_share"] = used / (wall * (os.cpu_count() or 1))
            # the server's processes (master, workers, routers, other backends; not nginx
            # nor wrk): CPU per request over the measured run
            server_used = tree_cpu(target.measured.pid) + also_used - server_before
            result["server_cpu_us"] = 1e6 * server_used / max(1, result["requests"])
            result["server_cpu_pct"] = 100 * server_used / wall   # 100 = one core busy
            if action:
                action.join()
                time.sleep(1)  # let the last reload settle before memory is read
            mem = tree_memory(target.measured.pid)
            result["master_rss_mb"] = mem["master_rss"] / 2**20
            helpers = helper_pids(target.measured.pid)
            uss = [v / 2**20 for pid, v in mem["workers_uss"].items() if pid not in helpers]
            result["workers_uss_mb"] = uss
            result["helpers_uss_mb"] = [v / 2**20 for pid, v in mem["workers_uss"].items()
                                        if pid in helpers]
            result["worker_uss_mb_mean"] = sum(uss) / len(uss) if uss else None
            for name, other in target.also.items():
                rss = sum(p.memory_info().rss for p in [psutil.Process(other.pid),
                                                        *descendants(other.pid)])
                result[f"{name}_rss_mb"] = rss / 2**20
    except Exception as exc:  # one broken server must not stop the others
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


# --------------------------------------------------------------------------- report

def _fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _shorten(text: str, keep: int = 6) -> str:
    """First line and the last `keep` lines of an error (the JSON has all of it)."""
    lines = text.splitlines()
    if len(lines) <= keep + 1:
        return "\n    ".join(lines)
    return "\n    ".join([lines[0], "...", *lines[-keep:]])


def add_ratios(results: list[dict]) -> None:
    """rps of pymaster divided by each other server's, within one scenario and app (against
    pymaster's row reached the same way when it has one, e.g. both behind nginx proxy_pass)."""
    ok = [r for r in results if "error" not in r]
    by_key = {(r["scenario"], r["app"], r["server"]): r for r in ok}
    by_via = {(r["scenario"], r["app"], r["server"], r["via"]): r for r in ok}
    for r in results:
        r["ratios"] = {}
        mine = (by_via.get((r["scenario"], r["app"], "pymaster", r["via"]))
                or by_key.get((r["scenario"], r["app"], "pymaster")))
        if r["server"] == "pymaster" or mine is None or "error" in r or not r.get("rps"):
            continue
        r["ratios"][f"pymaster/{r['server']}"] = mine["rps"] / r["rps"]


HELPER_PROCESSES = ("multiprocessing.resource_tracker",)   # uvicorn --workers spawns one


def helper_pids(pid: int) -> set[int]:
    """Descendants that serve no requests (e.g. multiprocessing's resource tracker under
    uvicorn): their memory is reported apart, not averaged in with the workers'."""
    found = set()
    for proc in descendants(pid):
        with contextlib.suppress(psutil.Error):
            if any(h in " ".join(proc.cmdline()) for h in HELPER_PROCESSES):
                found.add(proc.pid)
    return found


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants, with the descendants
    that were reaped already (workers replaced by a reload count too)."""
    total = 0.0
    for i, proc in enumerate([psutil.Process(pid), *descendants(pid)]):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
            if i == 0:
                total += t.children_user + t.children_system
    return total


def markdown(results: list[dict]) -> str:
    lines = ["| scenario | app | server | via | req/s | p99 ms | errors (sock+non2xx) "
             "| server CPU µs/req | master RSS MB | worker USS MB | pymaster/this |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r['app']} | {r['server']} | {r['via']} "
                         f"| failed | | | | | | |")
            continue
        ratio = next(iter(r["ratios"].values()), None)
        lines.append(
            f"| {r['scenario']} | {r['app']} | {r['server']} | {r['via']} | {r['rps']:.0f} "
            f"| {r['p99_ms']:.1f} | {r['socket_errors']}+{r['non_2xx']} "
            f"| {_fmt(r.get('server_cpu_us'), '.0f')} | {r['master_rss_mb']:.1f} | {_fmt(r['worker_uss_mb_mean'], '.1f')} "
            f"| {_fmt(ratio, '.2f')} |")
    shares = [f"- {r['scenario']}/{r['app']}/{r['server']}: router {r['router_cpu_share']:.0%} of the "
              f"machine's CPU, {r['router_rss_mb']:.1f} MB RSS" for r in results
              if "router_cpu_share" in r]
    if shares:
        lines += ["", "Router CPU share during the measured run:", *shares]
    failures = [f"- {r['scenario']}/{r['app']}/{r['server']}: " + _shorten(r["error"])
                for r in results if "error" in r]
    if failures:
        lines += ["", "Failed:", *failures]
    return "\n".join(lines)


def _version(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return "not installed"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"error: {exc}"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


JINJA2_VERSION = "import sys, jinja2; print(jinja2.__version__, sys.version.split()[0])"


def environment() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), "")
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    return {
        "host": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu,
        "python": sys.version.split()[0], "git": git,
        "uwsgi": _version(["uwsgi", "--version"]), "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
        "gunicorn": _version([sys.executable, "-m", "gunicorn", "--version"]),
        "uvicorn": _version([sys.executable, "-m", "uvicorn", "--version"]),
        "websockets": _version([sys.executable, "-c",
                                "import websockets; print(websockets.__version__)"]),
        "starman": _version(["perl", "-MStarman", "-e", "print $Starman::VERSION"]),
        # uWSGI's python3 plugin embeds Debian's Python and its jinja2, not the venv's
        "jinja2_venv": _version([sys.executable, "-c", JINJA2_VERSION]),
        "jinja2_uwsgi": _version(["/usr/bin/python3", "-c", JINJA2_VERSION]),
        "loadavg_at_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------- main

def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="scenarios:\n" + "\n".join(
                                    f"  {k:11} {d}" for k, (d, _) in SCENARIOS.items()))
    p.add_argument("--only", type=csv, default=list(DEFAULT_SCENARIOS),
                   help=f"comma-separated scenarios (default: {','.join(DEFAULT_SCENARIOS)})")
    p.add_argument("--servers", type=csv, default=list(SERVERS),
                   help="comma-separated servers to include (default: all)")
    p.add_argument("--apps", type=csv, default=None, help="comma-separated apps (default: all)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per case (10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first (1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (1)")
    p.add_argument("--workers", type=int, default=2, help="worker processes per server (2)")
    p.add_argument("--output", type=Path, default=None,
                   help="JSON file (default: benchmarks/results/<timestamp>.json)")
    opts = p.parse_args(argv)
    unknown = [s for s in opts.only if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if opts.connections < opts.threads:
        p.error("--connections must be >= --threads")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if not shutil.which("wrk"):
        print("benchmarks: wrk not found (scripts/bootstrap.sh installs it)", file=sys.stderr)
        return 2
    cases = [c for name in opts.only for c in SCENARIOS[name][1](opts)
             if c.server in opts.servers and (opts.apps is None or c.app in opts.apps)]
    if not cases:
        print("benchmarks: nothing selected", file=sys.stderr)
        return 2
    started = dt.datetime.now()
    env = environment()
    results = []
    for case in cases:
        print(f"-- {case.name} via {case.via} ...", file=sys.stderr, flush=True)
        results.append(run_case(case, opts))
        r = results[-1]
        print(f"   {r['error']}" if "error" in r else
              f"   {r['rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, errors {r['errors']}",
              file=sys.stderr, flush=True)
    add_ratios(results)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "environment": env,
        "results": results,
    }
    out = opts.output or RESULTS / f"{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

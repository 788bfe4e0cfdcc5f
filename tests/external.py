"""Helpers shared by the tests and the benchmarks: talk to servers on loopback and run real
external servers (nginx, uWSGI, gunicorn, Starman, pymaster itself) in a throw-away
directory, always cleaning up the whole process tree, even when the test fails.

Every server context manager yields a `Server`: `.port` (the port it was asked to listen
on, if any), `.proc` (the Popen), `.pid`, `.tmp` (its private directory), `.log` (its
stdout+stderr file) and `.logtext()`.

Import from a test with:  sys.path.insert(0, <tests dir>); import external
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.client import (  # noqa: F401  (re-exported: the benchmarks import them from here)
    LOOPBACK,
    Response,
    ServerError,
    exchange,
    free_port,
    http_get,
    parse_http_response,
    pid_in_page,
    port_open,
    uwsgi_packet,
    uwsgi_request,
    uwsgi_vars,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
UWSGI_PLUGIN_DIR = os.environ.get("UWSGI_PLUGIN_DIR", "/usr/lib/uwsgi/plugins")
NGINX_UWSGI_PARAMS = "/etc/nginx/uwsgi_params"

# Options (uWSGI / pymaster spelling) whose value is a TCP address we can wait for.
# UDP ones (subscription servers) and unix sockets are skipped.
TCP_SOCKET_OPTIONS = {"-s", "--socket", "--uwsgi-socket", "--http-socket", "--http",
                      "--fastrouter", "--stats"}



def ports_in_args(args: Iterable[str]) -> list[int]:
    """TCP ports named by socket options in a uWSGI-style command line
    (`-s :4005`, `--http-socket=127.0.0.1:8080`, `--fastrouter :4000`)."""
    ports, args = [], list(args)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name not in TCP_SOCKET_OPTIONS:
            continue
        if not eq:
            if i + 1 >= len(args):
                continue
            value = args[i + 1]
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit() and "/" not in host:
            ports.append(int(port))
    return ports



# --------------------------------------------------------------------------- processes

def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree_memory(pid: int) -> dict:
    """Master RSS and per-child USS (bytes) of a running process tree."""
    master = psutil.Process(pid)
    workers = {}
    for child in master.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            workers[child.pid] = child.memory_full_info().uss
    return {"master_rss": master.memory_info().rss, "workers_uss": workers}


def stop_tree(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """Send `sig` to proc, wait up to `grace` s, then SIGKILL it and every process that
    was or is in its tree (children are snapshotted first, so orphans are found too)."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    tree += [p for p in descendants(proc.pid) if p not in tree]
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    # Whatever is left (orphaned workers, process group members) dies now.
    _, alive = psutil.wait_procs(tree, timeout=0 if proc.returncode is None else 1)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=3)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # started with start_new_session=True


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    tmp: Path
    log: Path
    port: int | None = None
    ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def logtext(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def children(self) -> list[int]:
        return [p.pid for p in descendants(self.pid)]

    def __repr__(self) -> str:
        return f"<Server {self.name} pid={self.pid} port={self.port}>"


@contextlib.contextmanager
def tmpdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"pymaster-{prefix}-"))
    try:
        yield path
    finally:
        if not os.environ.get("PYMASTER_KEEP_TMP"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def run_server(name: str, cmd: list[str], *, wait_ports: Iterable[int] = (),
               port: int | None = None, stop_signal: int = signal.SIGTERM,
               grace: float = 5.0, timeout: float = 15.0, cwd: str | Path | None = None,
               env: Mapping[str, str] | None = None, tmp: Path | None = None) -> Iterator[Server]:
    """Start `cmd` (output to <tmp>/<name>.log), wait for its ports, yield a Server,
    stop it with `stop_signal` then SIGKILL after `grace` seconds."""
    with contextlib.ExitStack() as stack:
        if tmp is None:
            tmp = stack.enter_context(tmpdir(name))
        log = tmp / f"{name}.log"
        full_env = dict(os.environ, **(env or {}))
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd or ROOT, env=full_env,
                                    start_new_session=True)
        ports = list(wait_ports)
        server = Server(name, proc, tmp, log, port if port is not None else
                        (ports[0] if ports else None), ports)
        try:
            for p in ports:
                try:
                    wait_for_port(p, timeout, proc)
                except (TimeoutError, ServerError) as exc:
                    tail = "\n".join(server.logtext().splitlines()[-40:])
                    raise ServerError(f"{name} did not come up: {exc}\n"
                                      f"command: {' '.join(map(str, cmd))}\n--- log ---\n{tail}") from None
            yield server
        finally:
            stop_tree(proc, stop_signal, grace)


# --------------------------------------------------------------------------- servers

def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def uwsgi_plugin_available(plugin: str) -> bool:
    return have("uwsgi") and (Path(UWSGI_PLUGIN_DIR) / f"{plugin}_plugin.so").exists()


@contextlib.contextmanager
def uwsgi(args: list[str], plugins: Iterable[str] = ("python3",), *,
          ports: Iterable[int] | None = None, **kw) -> Iterator[Server]:
    """Real uWSGI 2.0 (Debian's uwsgi-core) with the given plugins, e.g.
    uwsgi(['-s', '127.0.0.1:P', '--wsgi-file', 'app.wsgi', '-M', '-p', '2'])."""
    cmd = ["uwsgi", "--plugin-dir", UWSGI_PLUGIN_DIR]
    for plugin in plugins:
        cmd += ["--plugin", plugin]
    cmd += list(args)
    with run_server("uwsgi", cmd, wait_ports=ports_in_args(args) if ports is None else ports,
                    stop_signal=signal.SIGINT, **kw) as server:
        yield server


def uwsgi_fastrouter(port: int, *, to: int | None = None, subscription_port: int | None = None,
                     args: Iterable[str] = (), **kw) -> ContextManager[Server]:
    """uWSGI's own fastrouter on 127.0.0.1:port, routing statically to 127.0.0.1:`to`
    and/or by key to the nodes that subscribe on UDP 127.0.0.1:`subscription_port`."""
    cmd = ["--master", "--fastrouter", f"{LOOPBACK}:{port}", *args]
    if to:
        cmd += ["--fastrouter-to", f"{LOOPBACK}:{to}"]
    if subscription_port:
        cmd += ["--fastrouter-subscription-server", f"{LOOPBACK}:{subscription_port}"]
    return uwsgi(cmd, plugins=["fastrouter"], **kw)


def pymaster_command() -> list[str]:
    """pymaster under the running interpreter (the benchmark's own venv, or the tests')."""
    return [sys.executable, "-m", "pymaster"]


@contextlib.contextmanager
def pymaster(args: list[str], *, ports: Iterable[int] | None = None, **kw) -> Iterator[Server]:
    """pymaster with uWSGI-style args; waits for its TCP sockets, stops it with SIGINT
    (then SIGKILL after 5 s, and any leftover worker too)."""
    with run_server("pymaster", pymaster_command() + list(args),
                    wait_ports=ports_in_args(args) if ports is None else ports,
                    stop_signal=signal.SIGINT, grace=5.0, **kw) as server:
        yield server


_SHIM = """\
import runpy
application = runpy.run_path({path!r})[{callable!r}]
"""


@contextlib.contextmanager
def gunicorn(app: str | Path, workers: int = 2, *, port: int | None = None,
             args: Iterable[str] = (), callable: str = "application", **kw) -> Iterator[Server]:
    """gunicorn (sync workers) on 127.0.0.1. `app` is 'module:callable' (importable from
    ROOT, or `chdir` via args) or a path to a WSGI file such as examples/app.wsgi."""
    port = port or free_port()
    with tmpdir("gunicorn") as tmp:
        extra = []
        if ":" not in str(app) or Path(app).exists():
            (tmp / "wsgi_file_shim.py").write_text(
                _SHIM.format(path=str(Path(app).resolve()), callable=callable))
            extra, app = ["--pythonpath", str(tmp)], "wsgi_file_shim:application"
        cmd = [sys.executable, "-m", "gunicorn", "--bind", f"{LOOPBACK}:{port}",
               "--workers", str(workers), "--worker-class", "sync", "--log-level", "warning",
               *extra, *args, str(app)]
        with run_server("gunicorn", cmd, wait_ports=[port], stop_signal=signal.SIGINT,
                        tmp=tmp, **kw) as server:
            yield server


@contextlib.contextmanager
def starman(app: str | Path, workers: int = 2, *, port: int | None = None,
            args: Iterable[str] = (), **kw) -> Iterator[Server]:
    """Starman (preforking PSGI server) on 127.0.0.1 serving a .psgi file."""
    port = port or free_port()
    cmd = ["starman", "--listen", f"{LOOPBACK}:{port}", "--workers", str(workers),
           *args, str(Path(app).resolve())]
    with run_server("starman", cmd, wait_ports=[port], stop_signal=signal.SIGTERM, **kw) as server:
        yield server


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
{user}
error_log stderr warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
{upstream}
    server {{
        listen {host}:{port} backlog=4096;
        server_name localhost;
        location / {{
{location}
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstream: str, mode: str = "uwsgi_pass", extra_params: Mapping[str, str] | None = None,
          *, port: int | None = None, workers: int = 1, upgrade: bool = False,
          directives: Iterable[str] = (), keepalive: int = 0, **kw) -> Iterator[Server]:
    """nginx on 127.0.0.1:<port> passing everything to `upstream` ('127.0.0.1:P') with
    `uwsgi_pass` (uwsgi_params from Debian plus `extra_params`, e.g.
    {'UWSGI_FASTROUTER_KEY': 'wsgi_cluster'}) or `proxy_pass` (HTTP; `upgrade`: the
    client's Upgrade and Connection headers are passed on, for WebSockets); `directives`
    go in the location too (e.g. 'client_max_body_size 50m;'). `keepalive` N > 0 (proxy_pass
    only) names the upstream in an `upstream` block keeping up to N idle connections per
    nginx worker open to it, so nginx reuses its HTTP/1.1 connections to the app server."""
    port = port or free_port()
    upstream_block = ""
    if keepalive:
        if mode != "proxy_pass":
            raise ValueError("nginx keepalive upstreams are for proxy_pass only")
        upstream_block = (f"    upstream app_upstream {{ server {upstream}; "
                          f"keepalive {keepalive}; }}")
        upstream = "app_upstream"
    if mode == "uwsgi_pass":
        lines = [*directives, f"include {NGINX_UWSGI_PARAMS};"]
        lines += [f"uwsgi_param {k} {v};" for k, v in (extra_params or {}).items()]
        lines.append(f"uwsgi_pass {upstream};")
    elif mode == "proxy_pass":
        lines = [*directives, "proxy_http_version 1.1;", "proxy_set_header Host $http_host;"]
        lines += (["proxy_set_header Upgrade $http_upgrade;",
                   "proxy_set_header Connection $http_connection;"] if upgrade
                  else ['proxy_set_header Connection "";'])
        lines += [f"proxy_set_header {k} {v};" for k, v in (extra_params or {}).items()]
        lines.append(f"proxy_pass http://{upstream};")
    elif mode == "static":  # nginx serves files itself: `directives` say which (alias/root)
        lines = [*directives]
    else:
        raise ValueError(f"nginx mode must be 'uwsgi_pass', 'proxy_pass' or 'static', not {mode!r}")
    with tmpdir("nginx") as tmp:
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(
            workers=workers, tmp=tmp, host=LOOPBACK, port=port, upstream=upstream_block,
            user="user root;" if os.geteuid() == 0 else "",
            location="\n".join("            " + line for line in lines)))
        cmd = ["nginx", "-p", str(tmp), "-e", "stderr", "-c", str(conf)]
        with run_server("nginx", cmd, wait_ports=[port], stop_signal=signal.SIGTERM,
                        tmp=tmp, **kw) as server:
            yield server

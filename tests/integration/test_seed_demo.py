"""The seed demo end to end: `plackup -Ilib frontend.psgi` (Plack::App::uWSGI from
examples/lib) in front of pymaster, as scripts/demo.sh runs it but on free 127.0.0.1 ports.

(a) the frontend's Plack::App::uWSGI straight to pymaster backends (no router): the seed's
    WSGI and PSGI apps, echo apps for bodies and variables, fake backends for the error
    paths (refused -> 502, no answer -> 502, too slow -> 504, chunked and CGI answers).
(b) the whole seed topology: the seed's own frontend.psgi -> pymaster fastrouter with its
    subscription server -> 3 PSGI + 3 WSGI pymaster backends subscribing with the seed's
    exact `--subscribe-to 127.0.0.1:PORT:psgi_cluster:5` / `:wsgi_cluster` options.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.external import EXAMPLES, descendants, free_port, pid_in_page, run_server
from tests.pm import Pymaster, wait_port


def _perl_has(module: str) -> bool:
    return shutil.which("perl") is not None and subprocess.run(
        ["perl", f"-I{EXAMPLES / 'lib'}", f"-M{module}", "-e1"],
        capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing"),
    pytest.mark.skipif(not _perl_has("Text::Xslate"), reason="Text::Xslate (seed app.psgi) missing"),
    pytest.mark.skipif(not _perl_has("Plack::App::uWSGI"), reason="examples/lib/Plack/App/uWSGI.pm broken"),
]

LOOPBACK = "127.0.0.1"
TIMEOUT = 10.0

ECHO_WSGI = '''\
import hashlib, json, os

def application(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    if environ["PATH_INFO"].endswith("/env"):
        info = {k: v for k, v in environ.items() if isinstance(v, str)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(info).encode()]
    start_response("201 Created", [("Content-Type", "application/octet-stream"),
                                   ("X-Pid", str(os.getpid())), ("X-Len", str(len(body))),
                                   ("X-Sha256", hashlib.sha256(body).hexdigest())])
    return [body]
'''

ECHO_PSGI = '''\
use strict;
use warnings;
sub {
    my $env = shift;
    my $want = $env->{CONTENT_LENGTH} || 0;
    my $body = '';
    while (length $body < $want) {
        my $got = $env->{'psgi.input'}->read(my $buf, $want - length $body) or last;
        $body .= $buf;
    }
    [201, ['Content-Type' => 'application/octet-stream', 'X-Pid' => $$,
           'X-Len' => length $body, 'X-Path' => $env->{PATH_INFO},
           'X-Script' => $env->{SCRIPT_NAME}, 'X-Uri' => $env->{REQUEST_URI}], [$body]];
};
'''

DIRECT_FRONTEND = '''\
use strict;
use warnings;
use Plack::Builder;
use Plack::App::uWSGI;

sub pass_to { Plack::App::uWSGI->new(@_)->to_app }

builder {
    mount '/wsgi'    => pass_to(pass => "127.0.0.1:@wsgi@");
    mount '/psgi'    => pass_to(pass => "127.0.0.1:@psgi@", modifier1 => 5);
    mount '/echo'    => pass_to(pass => "localhost:@echo@",
                                param => {UWSGI_FASTROUTER_KEY => "k", X_FROM_PARAM => "p1"});
    mount '/pecho'   => pass_to(pass => "@pecho_sock@", modifier1 => 5);
    mount '/dead'    => pass_to(pass => "127.0.0.1:@dead@");
    mount '/silent'  => pass_to(pass => "127.0.0.1:@silent@");
    mount '/slow'    => pass_to(pass => "127.0.0.1:@slow@", timeout => 1);
    mount '/chunked' => pass_to(pass => "127.0.0.1:@chunked@");
    mount '/cgi'     => pass_to(pass => "127.0.0.1:@cgi@");
};
'''


# --------------------------------------------------------------------------- helpers

def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_pid(port: int, path: str) -> int:
    status, _, body = request(port, path)
    assert status == 200, (path, status, body[:300])
    return pid_in_page(body.decode("utf-8", "replace"))


@contextlib.contextmanager
def plackup(psgi: Path, port: int, cwd: Path, tmp: Path):
    """`plackup -Ilib PSGI` from `cwd` (whose lib/ holds Plack::App::uWSGI) on 127.0.0.1;
    its log is <tmp>/plackup-<psgi name>.log."""
    cmd = ["plackup", "-Ilib", "--host", LOOPBACK, "--port", str(port), str(psgi)]
    with run_server(f"plackup-{psgi.stem}", cmd, wait_ports=[port], cwd=cwd, tmp=tmp,
                    stop_signal=signal.SIGTERM, grace=3.0, timeout=TIMEOUT) as server:
        yield server


@contextlib.contextmanager
def fake_backend(reply: bytes | None, linger: float = 0.0):
    """A uwsgi 'backend' on a free port that reads the request packet, then answers
    `reply` and closes (None: closes without a byte), after `linger` seconds."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    if stop.wait(linger):
                        return
                    if reply:
                        conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def tree_pids(pm: Pymaster) -> set[int]:
    return {p.pid for p in descendants(pm.pid)}


def owner(pid: int, backends: list[Pymaster]) -> Pymaster | None:
    return next((b for b in backends if pid in tree_pids(b)), None)


def start_all(stack: contextlib.ExitStack, specs: list[list[str]], tmp: Path) -> list[Pymaster]:
    """Start every pymaster at once (cwd examples/, like the seed's command lines)."""
    return [stack.enter_context(Pymaster(args, tmp, cwd=EXAMPLES)) for args in specs]


def wait_listening(pm: Pymaster, target: int | str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pm.proc.poll() is not None:
            raise AssertionError(f"pymaster {pm.args} exited {pm.proc.returncode}:\n{pm.log()}")
        if isinstance(target, str):
            if os.path.exists(target):
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                    s.connect(target)
                    return
        else:
            with contextlib.suppress(TimeoutError):
                return wait_port(target, 0.2)
        time.sleep(0.05)
    raise AssertionError(f"pymaster {pm.args} not listening on {target}:\n{pm.log()}")


# --------------------------------------------------------------------------- (a)

def test_frontend_direct_to_pymaster_backends(tmp_path):
    (tmp_path / "echo.wsgi").write_text(ECHO_WSGI)
    (tmp_path / "echo.psgi").write_text(ECHO_PSGI)
    wsgi, psgi, echo, dead, front = (free_port() for _ in range(5))
    pecho_sock = str(tmp_path / "pecho.sock")
    with contextlib.ExitStack() as stack:
        backends = start_all(stack, [
            ["--plugins", "python", "-s", f"{LOOPBACK}:{wsgi}", "--file", "app.wsgi", "-M"],
            ["--plugins", "psgi", "-s", f"{LOOPBACK}:{psgi}", "--psgi", "app.psgi", "-M"],
            ["-s", f"{LOOPBACK}:{echo}", "--file", tmp_path / "echo.wsgi", "-M", "-p", "2"],
            ["--plugins", "psgi", "-s", pecho_sock, "--psgi", tmp_path / "echo.psgi", "-M"],
        ], tmp_path)
        silent = stack.enter_context(fake_backend(None))
        slow = stack.enter_context(fake_backend(b"HTTP/1.1 200 OK\r\n\r\nlate", linger=4))
        chunked = stack.enter_context(fake_backend(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"))
        cgi = stack.enter_context(fake_backend(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Cgi: yes\r\n\r\nnope"))
        frontend = tmp_path / "frontend.psgi"
        where = dict(wsgi=wsgi, psgi=psgi, echo=echo, pecho_sock=pecho_sock, dead=dead,
                     silent=silent, slow=slow, chunked=chunked, cgi=cgi)
        frontend.write_text(re.sub(r"@(\w+)@", lambda m: str(where[m[1]]), DIRECT_FRONTEND))
        fe = stack.enter_context(plackup(frontend, front, EXAMPLES, tmp_path))
        for pm, target in zip(backends, [wsgi, psgi, echo, pecho_sock]):
            wait_listening(pm, target)

        # GET renders the PID of a worker of the backend behind the mount.
        seed_wsgi, seed_psgi, echo_wsgi, echo_psgi = backends
        for path, pm, img in [("/wsgi/", seed_wsgi, "python.png"),
                              ("/psgi/", seed_psgi, "hokkaidopm.gif")]:
            status, headers, body = request(front, path)
            assert status == 200, (path, body[:300], fe.logtext(), pm.log())
            assert headers["content-type"].lower().startswith("text/html")
            assert f'src="/static/{img}"' in body.decode()
            assert pid_in_page(body.decode()) in pm.workers(), (pm.workers(), body)

        # The uwsgi vars: CGI keys, every HTTP_* header, the mount's SCRIPT_NAME/PATH_INFO,
        # the original REQUEST_URI and the `param`s.
        status, _, body = request(front, "/echo/a/env?x=1&y=%20", headers={
            "X-Custom": "v1", "Cookie": "c=1", "Content-Type": "text/x-test"})
        assert status == 200, body
        env = json.loads(body)
        assert env["REQUEST_METHOD"] == "GET"
        assert env["REQUEST_URI"] == "/echo/a/env?x=1&y=%20"
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/echo", "/a/env")
        assert env["QUERY_STRING"] == "x=1&y=%20"
        assert env["SERVER_NAME"] and env["SERVER_PORT"] == str(front)
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["REMOTE_ADDR"] == LOOPBACK and env["REMOTE_PORT"].isdigit()
        assert env["CONTENT_TYPE"] == "text/x-test"
        assert env["HTTP_X_CUSTOM"] == "v1" and env["HTTP_COOKIE"] == "c=1"
        assert env["HTTP_HOST"] == f"{LOOPBACK}:{front}"
        assert env["UWSGI_FASTROUTER_KEY"] == "k" and env["X_FROM_PARAM"] == "p1"

        # POST bodies pass through both ways, to WSGI (TCP) and PSGI (unix socket) workers.
        big = os.urandom(3 * 1024 * 1024 + 17)
        for path, pm in [("/echo/upload", echo_wsgi), ("/pecho/upload?q=1", echo_psgi)]:
            for payload in (b"a=1&b=2", big):
                status, headers, body = request(front, path, "POST", payload,
                                                {"Content-Type": "application/octet-stream"})
                assert status == 201, (path, body[:300], fe.logtext())
                assert int(headers["x-len"]) == len(payload)
                assert body == payload
                assert int(headers["x-pid"]) in tree_pids(pm)
        assert headers["x-script"] == "/pecho" and headers["x-path"] == "/upload"
        assert headers["x-uri"] == "/pecho/upload?q=1"
        # The seed apps ignore a body; a POST still renders.
        status, _, body = request(front, "/psgi/", "POST", b"x" * 100000)
        assert status == 200 and pid_in_page(body.decode()) in seed_psgi.workers()

        # Error paths: refused and silent backends -> 502, too slow -> 504, and the
        # backend's own answers (chunked, CGI Status:) pass through decoded.
        for path, code in [("/dead/", 502), ("/silent/", 502), ("/slow/", 504)]:
            t0 = time.monotonic()
            status, headers, body = request(front, path)
            assert status == code, (path, status, body)
            assert headers["content-type"].startswith("text/plain")
            assert body.startswith(f"{code} ".encode()) and len(body) < 300
            assert time.monotonic() - t0 < 3.5
        status, headers, body = request(front, "/chunked/")
        assert (status, body) == (200, b"hello, world")
        assert "transfer-encoding" not in headers
        status, headers, body = request(front, "/cgi/")
        assert (status, headers["x-cgi"], body) == (404, "yes", b"nope")

        # A dead backend: 502 once it is gone (the frontend itself keeps serving).
        seed_wsgi.stop()
        status, _, body = request(front, "/wsgi/")
        assert status == 502 and b"Connection refused" in body, body
        assert get_pid(front, "/psgi/") in seed_psgi.workers()


# --------------------------------------------------------------------------- (b)

def test_seed_topology_through_fastrouter(tmp_path):
    router, sub, front = free_port(), free_port(), free_port()
    psgi_ports = [free_port() for _ in range(3)]
    wsgi_ports = [free_port() for _ in range(3)]
    assert len({router, sub, front, *psgi_ports, *wsgi_ports}) == 9

    # The seed's own frontend.psgi, pointed at our router instead of localhost:4000, run
    # from a copy of examples/ (lib/ and static/ linked) exactly as `plackup -Ilib`.
    site = tmp_path / "site"
    site.mkdir()
    for name in ("lib", "static"):
        (site / name).symlink_to(EXAMPLES / name)
    seed = (EXAMPLES / "frontend.psgi").read_text()
    assert seed.count('"localhost:4000"') == 2
    (site / "frontend.psgi").write_text(seed.replace('"localhost:4000"', f'"{LOOPBACK}:{router}"'))

    subscribe = f"{LOOPBACK}:{sub}"
    with contextlib.ExitStack() as stack:
        fr, = start_all(stack, [["--plugins", "fastrouter", "--fastrouter", f"{LOOPBACK}:{router}",
                                  "--fastrouter-subscription-server", subscribe]], tmp_path)
        wait_listening(fr, router)
        psgi = start_all(stack, [
            ["--plugins", "psgi", "-s", f"{LOOPBACK}:{p}", "--psgi", "app.psgi", "-M",
             "--subscribe-to", f"{subscribe}:psgi_cluster:5"] for p in psgi_ports], tmp_path)
        wsgi = start_all(stack, [
            ["--plugins", "python", "-s", f"{LOOPBACK}:{p}", "--file", "app.wsgi", "-M",
             "--subscribe-to", f"{subscribe}:wsgi_cluster"] for p in wsgi_ports], tmp_path)
        fe = stack.enter_context(plackup(site / "frontend.psgi", front, site, tmp_path))
        for pm, port in zip(psgi + wsgi, psgi_ports + wsgi_ports):
            wait_listening(pm, port)
        # Every node announced itself under the bare key (not `psgi_cluster:5`).
        fr.wait_log(r"psgi_cluster => new node", timeout=15, count=3)
        fr.wait_log(r"wsgi_cluster => new node", timeout=15, count=3)
        assert "new pool: psgi_cluster (" in fr.log(), fr.log()
        assert "psgi_cluster:5" not in fr.log()

        for path, backends in [("/psgi/", psgi), ("/wsgi/", wsgi)]:
            pids = [get_pid(front, path) for _ in range(36)]
            owners = [owner(pid, backends) for pid in pids]
            assert None not in owners, (path, pids, [b.workers() for b in backends])
            served = {id(b) for b in owners}
            assert served == {id(b) for b in backends}, (
                f"{path}: {len(served)} of 3 backends served 36 requests; pids {sorted(set(pids))}\n"
                f"--- fastrouter log ---\n{fr.log()[-3000:]}")

        status, headers, body = request(front, "/static/hokkaidopm.gif")
        assert status == 200 and headers["content-type"] == "image/gif"
        assert body == (EXAMPLES / "static" / "hokkaidopm.gif").read_bytes()

        # A key nobody serves: the fastrouter's own 503 passes through the frontend.
        (site / "nokey.psgi").write_text(
            "use Plack::App::uWSGI;\nPlack::App::uWSGI->new(pass => "
            f'"{LOOPBACK}:{router}", param => {{UWSGI_FASTROUTER_KEY => "nobody"}})->to_app;\n')
        nokey_port = free_port()
        stack.enter_context(plackup(site / "nokey.psgi", nokey_port, site, tmp_path))
        status, _, body = request(nokey_port, "/")
        assert status == 503 and b"nobody" in body, (status, body, fe.logtext())

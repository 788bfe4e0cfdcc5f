"""pymaster.apps.uwsgi_pass.UwsgiPass, the WSGI counterpart of Plack::App::uWSGI, run as it
is deployed: a real pymaster frontend (`--http-socket`, `--threads`, `--mount` +
`--manage-script-name`, the app file below) in front of real pymaster backends (WSGI and
PSGI), a real pymaster fastrouter with subscribed nodes, real uWSGI 2.0 with only its psgi
plugin (which serves modifier1 5 and nothing else), the seed's plackup frontend for the
mount semantics side by side, and small fake servers for the broken answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.external import (
    EXAMPLES,
    descendants,
    free_port,
    run_server,
    uwsgi,
    uwsgi_plugin_available,
)
from tests.pm import Pymaster, wait_port

LOOPBACK = "127.0.0.1"
TIMEOUT = 20.0

# The frontend: one UwsgiPass per mountpoint, configured from PASS_CONFIG (JSON), picked
# by SCRIPT_NAME (pymaster loads the file once per --mount).
FRONTEND = """\
import json, os
from pymaster.apps.uwsgi_pass import UwsgiPass

CONFIG = json.loads(os.environ["PASS_CONFIG"])
PASSES = {mount: UwsgiPass(c["pass"], modifier1=c.get("modifier1", 0),
                           vars=c.get("vars"), timeout=c.get("timeout", 30))
          for mount, c in CONFIG.items()}

def application(environ, start_response):
    app = PASSES.get(environ["SCRIPT_NAME"])
    if app is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no mount for " + environ["PATH_INFO"].encode("latin-1")]
    return app(environ, start_response)
"""

# A backend: its environ (/env, or any path with an X-Env header), an echo of the body with its digest, a body read in two
# halves with a marker file between them (/halves), a response in two parts with a marker
# file awaited between them (/stream), and its PID.
ECHO_WSGI = """\
import hashlib, json, os, time

def wait_for(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)

def application(environ, start_response):
    path = environ["PATH_INFO"]
    marks = environ.get("HTTP_X_MARKS", "")
    if path.endswith("/env") or environ.get("HTTP_X_ENV"):
        info = {k: v for k, v in environ.items() if isinstance(v, str)}
        info["body"] = environ["wsgi.input"].read().decode("latin-1")
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(info).encode()]
    if path == "/stream":
        def parts():
            yield b"first part;"
            wait_for(marks + "/go")
            yield b"second part"
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Pid", str(os.getpid()))])
        return parts()
    if path == "/halves":
        length = int(environ["CONTENT_LENGTH"])
        first = environ["wsgi.input"].read(length // 2)
        open(marks + "/got-first-half", "w").close()
        rest = environ["wsgi.input"].read(length - len(first))
        body = first + rest
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())]
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("201 Created", [("Content-Type", "application/octet-stream"),
                                   ("X-Pid", str(os.getpid())), ("X-Len", str(len(body))),
                                   ("X-Sha256", hashlib.sha256(body).hexdigest())])
    return [body]
"""

ECHO_PSGI = """\
use strict;
use warnings;
sub {
    my $env = shift;
    [200, ['Content-Type' => 'text/plain', 'X-Pid' => $$, 'X-Script' => $env->{SCRIPT_NAME},
           'X-Path' => $env->{PATH_INFO}, 'X-Uri' => $env->{REQUEST_URI},
           'X-Key' => ($env->{UWSGI_FASTROUTER_KEY} // '')],
     ["perl $]"]];
};
"""

# The seed's frontend shape with Plack::App::uWSGI, to compare what the backend sees.
PLACK_FRONTEND = """\
use strict;
use warnings;
use Plack::Builder;
use Plack::App::uWSGI;
builder {
    mount '/echo' => Plack::App::uWSGI->new(pass => "127.0.0.1:@port@")->to_app;
};
"""


# --------------------------------------------------------------------------- helpers

def request(port: int, path: str, method: str = "GET", body=None,
            headers: dict | None = None, timeout: float = TIMEOUT):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_listening(pm: Pymaster, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if pm.proc.poll() is not None:
            raise AssertionError(f"pymaster {pm.args} exited {pm.proc.returncode}:\n{pm.log()}")
        with contextlib.suppress(TimeoutError):
            return wait_port(port, 0.2)
    raise AssertionError(f"pymaster {pm.args} not listening on {port}:\n{pm.log()}")


def frontend(stack: contextlib.ExitStack, tmp: Path, config: dict, threads: int = 4) -> tuple:
    """A pymaster HTTP frontend with one UwsgiPass per mountpoint of `config`."""
    app = tmp / "pass.wsgi"
    app.write_text(FRONTEND)
    port = free_port()
    args = ["--http-socket", f"{LOOPBACK}:{port}", "-M", "-p", "1", "--threads", str(threads),
            "--manage-script-name", "--socket-timeout", "30"]
    for mount in config:
        args += ["--mount", f"{mount}={app}"]
    pm = stack.enter_context(Pymaster(args, tmp, env={"PASS_CONFIG": json.dumps(config)}))
    wait_listening(pm, port)
    return pm, port


def backend(stack: contextlib.ExitStack, tmp: Path, *extra: str, port: int | None = None):
    app = tmp / "echo.wsgi"
    app.write_text(ECHO_WSGI)
    port = port or free_port()
    pm = stack.enter_context(Pymaster(["-s", f"{LOOPBACK}:{port}", "--wsgi-file", app, "-M",
                                       *extra], tmp))
    return pm, port


@contextlib.contextmanager
def fake_backend(reply: bytes | None, linger: float = 0.0):
    """A uwsgi 'server' on a free port that reads the request, waits `linger` s, answers
    `reply` (None: nothing) and closes."""
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


def tree(pm: Pymaster) -> set[int]:
    return {p.pid for p in descendants(pm.pid)}


# --------------------------------------------------------------------------- tests

def test_request_vars_and_mount_as_plack(tmp_path):
    """The backend sees the request as under the seed's Plack frontend: SCRIPT_NAME the
    mountpoint, PATH_INFO the rest (decoded), REQUEST_URI raw, every header, the extra vars."""
    with contextlib.ExitStack() as stack:
        be, be_port = backend(stack, tmp_path)
        fe, port = frontend(stack, tmp_path, {
            "/echo": {"pass": f"localhost:{be_port}",
                      "vars": {"UWSGI_FASTROUTER_KEY": "k", "X_FROM_PASS": "p1"}}})
        wait_listening(be, be_port)
        status, headers, body = request(port, "/echo/a%20b/env?x=1&y=%20", headers={
            "X-Custom": "v1", "Cookie": "c=1", "Content-Type": "text/x-test"})
        assert status == 200, (body, fe.log())
        env = json.loads(body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/echo", "/a b/env")
        assert env["REQUEST_URI"] == "/echo/a%20b/env?x=1&y=%20"
        assert env["QUERY_STRING"] == "x=1&y=%20"
        assert env["REQUEST_METHOD"] == "GET" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["SERVER_PORT"] == str(port) and env["REMOTE_ADDR"] == LOOPBACK
        assert env["REQUEST_SCHEME"] == "http" and env["CONTENT_TYPE"] == "text/x-test"
        assert env["HTTP_X_CUSTOM"] == "v1" and env["HTTP_COOKIE"] == "c=1"
        assert env["HTTP_HOST"] == f"{LOOPBACK}:{port}"
        assert env["UWSGI_FASTROUTER_KEY"] == "k" and env["X_FROM_PASS"] == "p1"
        assert "CONTENT_LENGTH" not in env and env["body"] == ""
        # A mountpoint matches on a `/` boundary only, and the bare mountpoint is PATH_INFO ''.
        assert json.loads(request(port, "/echo", headers={"X-Env": "1"})[2])["PATH_INFO"] == ""
        assert request(port, "/echox/env")[0] == 404

        # Side by side with the seed's frontend (plackup + Plack::App::uWSGI under a Plack
        # mount), to a pymaster backend and to uWSGI 2.0's python3 plugin: each backend
        # sees the same request from both frontends.
        if not shutil.which("plackup"):
            pytest.skip("plackup missing: no side-by-side with Plack::App::uWSGI")
        targets = {"pymaster": be_port}
        if uwsgi_plugin_available("python3"):
            u_port = free_port()
            stack.enter_context(uwsgi(["--master", "-s", f"{LOOPBACK}:{u_port}", "--wsgi-file",
                                       str(tmp_path / "echo.wsgi")], tmp=tmp_path))
            targets["uwsgi"] = u_port
        keys = ("SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "QUERY_STRING", "REQUEST_METHOD")
        paths = ("/echo/", "/echo", "/echo/a%20b/c/env?q=%2F", "/echo//x/env")
        for name, target in targets.items():
            fe2, port2 = frontend(stack, tmp_path, {"/echo": {"pass": f"{LOOPBACK}:{target}"}})
            plack = tmp_path / f"plack-{name}.psgi"
            plack.write_text(PLACK_FRONTEND.replace("@port@", str(target)))
            pport = free_port()
            stack.enter_context(run_server(
                f"plackup-{name}", ["plackup", "-Ilib", "--host", LOOPBACK, "--port", str(pport),
                                    plack], wait_ports=[pport], cwd=EXAMPLES, tmp=tmp_path,
                timeout=TIMEOUT))
            for path in paths:
                ours = json.loads(request(port2, path, headers={"X-Env": "1"})[2])
                seed = json.loads(request(pport, path, headers={"X-Env": "1"})[2])
                assert {k: ours[k] for k in keys} == {k: seed[k] for k in keys}, (name, path)
            assert (ours["SCRIPT_NAME"], ours["PATH_INFO"]) == ("/echo", "//x/env"), name


def test_bodies_streamed_both_ways(tmp_path):
    with contextlib.ExitStack() as stack:
        be, be_port = backend(stack, tmp_path, "-p", "2", "--threads", "2")
        fe, port = frontend(stack, tmp_path, {"/b": {"pass": f"{LOOPBACK}:{be_port}"}})
        wait_listening(be, be_port)

        # Bodies with a Content-Length, and a chunked upload (spooled to learn its length).
        big = os.urandom(5 * 1024 * 1024 + 3)
        for payload in (b"a=1&b=2", big):
            status, headers, body = request(port, "/b/up", "POST", payload)
            assert status == 201, (body[:300], fe.log()[-2000:])
            assert int(headers["x-len"]) == len(payload) and body == payload
            assert headers["x-sha256"] == hashlib.sha256(payload).hexdigest()
            assert int(headers["x-pid"]) in tree(be)
        pieces = [os.urandom(100_000) for _ in range(7)]
        status, headers, body = request(port, "/b/up", "POST", iter(pieces))  # chunked
        assert status == 201 and body == b"".join(pieces), (status, body[:200])

        # The request body reaches the backend while the client is still sending it: the
        # backend reads the first half and says so before the client sends the second.
        marks = tmp_path / "marks"
        marks.mkdir()
        half = os.urandom(512 * 1024)
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
        conn.putrequest("POST", "/b/halves")
        conn.putheader("Content-Length", str(2 * len(half)))
        conn.putheader("X-Marks", str(marks))
        conn.endheaders()
        conn.send(half)
        deadline = time.monotonic() + TIMEOUT
        while not (marks / "got-first-half").exists():
            assert time.monotonic() < deadline, "the first half never reached the backend"
            time.sleep(0.02)
        conn.send(half)
        resp = conn.getresponse()
        whole = half + half
        assert resp.read() == b"%d %s" % (len(whole), hashlib.sha256(whole).hexdigest().encode())
        conn.close()

        # The response reaches the client while the backend is still producing it: the
        # first part arrives before the test lets the backend send the second.
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
        conn.request("GET", "/b/stream", headers={"X-Marks": str(marks)})
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("x-pid")) in tree(be)
        assert resp.getheader("transfer-encoding") == "chunked"  # re-framed by the frontend
        got = b""
        while len(got) < len(b"first part;"):
            got += resp.read1(65536)
        assert got == b"first part;"
        (marks / "go").touch()
        assert resp.read() == b"second part"
        conn.close()


def test_errors_are_clear_and_the_frontend_survives(tmp_path):
    dead = free_port()
    truncated = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
                 b"only this")
    chunked = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n")
    cgi = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Cgi: yes\r\n\r\nnope"
    with contextlib.ExitStack() as stack:
        be, be_port = backend(stack, tmp_path)
        ports = {name: stack.enter_context(fake_backend(reply, linger)) for name, reply, linger in [
            ("silent", None, 0), ("slow", b"HTTP/1.1 200 OK\r\n\r\nlate", 5),
            ("truncated", truncated, 0), ("chunked", chunked, 0), ("cgi", cgi, 0),
            ("garbage", b"\x00\x01 not http at all\r\n\r\n", 0)]}
        config = {f"/{name}": {"pass": f"{LOOPBACK}:{p}", "timeout": 1.5}
                  for name, p in ports.items()}
        config["/dead"] = {"pass": f"{LOOPBACK}:{dead}"}
        config["/ok"] = {"pass": f"{LOOPBACK}:{be_port}"}
        fe, port = frontend(stack, tmp_path, config)
        wait_listening(be, be_port)

        for path, code, why in [
            ("/dead/", 502, f"cannot connect to {LOOPBACK}:{dead}: Connection refused"),
            ("/silent/", 502, "empty response from"),
            ("/garbage/", 502, "bad response head from"),
            ("/slow/", 504, "no response from"),
        ]:
            status, headers, body = request(port, path)
            assert status == code, (path, status, body)
            assert headers["content-type"].startswith("text/plain")
            assert body.startswith(f"{code} ".encode()) and why.encode() in body, body
            assert int(headers["content-length"]) == len(body) < 300
        assert f"uwsgi_pass {LOOPBACK}:{dead}: 502 cannot connect" in fe.log()

        assert request(port, "/chunked/")[::2] == (200, b"hello, world")
        status, headers, body = request(port, "/cgi/")
        assert (status, headers["x-cgi"], body) == (404, "yes", b"nope")
        # A body cut short after the head: the client sees the truncation, not a short 200.
        with pytest.raises(http.client.IncompleteRead):
            request(port, "/truncated/")

        # The backend goes away: 502 naming it; the frontend still answers everything else.
        assert request(port, "/ok/x")[0] == 201
        be.stop()
        status, _, body = request(port, "/ok/x")
        assert status == 502 and b"Connection refused" in body, body
        assert request(port, "/chunked/")[0] == 200
        assert fe.proc.poll() is None


def test_through_a_fastrouter(tmp_path):
    router, sub = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        fr = stack.enter_context(Pymaster(
            ["--fastrouter", f"{LOOPBACK}:{router}",
             "--fastrouter-subscription-server", f"{LOOPBACK}:{sub}"], tmp_path))
        backends = [backend(stack, tmp_path, "--subscribe-to", f"{LOOPBACK}:{sub}:k")
                    for _ in range(2)]
        fe, port = frontend(stack, tmp_path, {
            "/k": {"pass": f"{LOOPBACK}:{router}", "vars": {"UWSGI_FASTROUTER_KEY": "k"}},
            "/nobody": {"pass": f"{LOOPBACK}:{router}",
                        "vars": {"UWSGI_FASTROUTER_KEY": "nobody"}}})
        wait_listening(fr, router)
        fr.wait_log(r"k => new node", timeout=TIMEOUT, count=2)

        seen = set()
        payload = os.urandom(300_000)
        for _ in range(12):
            status, headers, body = request(port, "/k/up", "POST", payload)
            assert status == 201 and body == payload, (status, body[:300])
            seen.add(next(i for i, (pm, _) in enumerate(backends)
                          if int(headers["x-pid"]) in tree(pm)))
        assert seen == {0, 1}, "the fastrouter did not spread the requests"
        # The fastrouter's own answer for a key nobody serves passes through.
        status, _, body = request(port, "/nobody/")
        assert status == 503 and b"nobody" in body, (status, body)
        # The fastrouter down: a clear 502.
        fr.stop()
        status, _, body = request(port, "/k/up", "POST", b"x")
        assert status == 502 and f"cannot connect to {LOOPBACK}:{router}".encode() in body


def test_modifier1_5_reaches_psgi_backends(tmp_path):
    """The packet's modifier1 is the one configured: a pymaster PSGI backend and uWSGI 2.0
    with its psgi plugin serve modifier1 5 and refuse 7 (`unavailable modifier requested`)."""
    script = tmp_path / "echo.psgi"
    script.write_text(ECHO_PSGI)
    pm_port = free_port()
    with contextlib.ExitStack() as stack:
        pm = stack.enter_context(Pymaster(
            ["--plugins", "psgi", "-s", f"{LOOPBACK}:{pm_port}", "--psgi", script, "-M"],
            tmp_path))
        config = {
            "/pm5": {"pass": f"{LOOPBACK}:{pm_port}", "modifier1": 5},
            "/pm7": {"pass": f"{LOOPBACK}:{pm_port}", "modifier1": 7},
        }
        real = uwsgi_plugin_available("psgi")
        if real:
            u_port = free_port()
            u = stack.enter_context(uwsgi(["--master", "-s", f"{LOOPBACK}:{u_port}", "--psgi",
                                       str(script)], plugins=["psgi"], tmp=tmp_path))
            config["/u5"] = {"pass": f"{LOOPBACK}:{u_port}", "modifier1": 5}
            config["/u7"] = {"pass": f"{LOOPBACK}:{u_port}", "modifier1": 7}
        fe, port = frontend(stack, tmp_path, config)
        wait_listening(pm, pm_port)

        status, headers, body = request(port, "/pm5/p?q=1")
        assert status == 200 and body.startswith(b"perl "), (status, body, pm.log())
        assert (headers["x-script"], headers["x-path"], headers["x-uri"]) == ("/pm5", "/p", "/pm5/p?q=1")
        assert int(headers["x-pid"]) in tree(pm)
        status, _, body = request(port, "/pm7/")
        assert status == 502 and b"empty response" in body
        assert "unavailable modifier requested: 7" in pm.log()
        if not real:
            pytest.skip("uWSGI's psgi plugin is not installed: checked against pymaster only")
        status, headers, body = request(port, "/u5/p")
        assert status == 200 and body.startswith(b"perl ") and headers["x-script"] == "/u5"
        status, _, body = request(port, "/u7/p")
        assert status == 502 and b"empty response" in body, (status, body)
        assert "unavailable modifier requested: 7" in u.logtext()


def test_bad_configuration_is_refused_at_load():
    from pymaster.apps.uwsgi_pass import UwsgiPass

    for kwargs, word in [({"pass_": "host:99999"}, "port"), ({"pass_": ""}, "empty"),
                         ({"pass_": ":1", "modifier1": 256}, "modifier1"),
                         ({"pass_": ":1", "timeout": 0}, "timeout")]:
        with pytest.raises(ValueError, match=word):
            UwsgiPass(**kwargs)

"""pymaster's HTTP router in front of other servers' workers: real uWSGI 2.0 workers (plain
requests, a WebSocket echo through `--http-websockets` with the `websockets` client), and
pymaster's own PSGI workers behind the internal socket. Loopback only; every process tree
is stopped on exit (tests.external)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import textwrap
import threading

import pytest

from tests.external import free_port, pymaster, tmpdir, uwsgi, uwsgi_plugin_available

WS_APP = textwrap.dedent("""
    import os
    import uwsgi

    def application(environ, start_response):
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            uwsgi.websocket_handshake(environ["HTTP_SEC_WEBSOCKET_KEY"],
                                      environ.get("HTTP_ORIGIN", ""))
            while True:
                try:
                    msg = uwsgi.websocket_recv()
                except OSError:
                    return []
                uwsgi.websocket_send(b"echo:" + msg)
        body = environ["wsgi.input"].read()
        out = b"uwsgi %d %s %d" % (os.getpid(), environ["PATH_INFO"].encode(), len(body))
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(out)))])
        return [out]
""")

PSGI_APP = textwrap.dedent("""
    my $app = sub {
        my $env = shift;
        my $len = $env->{CONTENT_LENGTH} || 0;
        my $body = '';
        $env->{'psgi.input'}->read($body, $len) if $len;
        return [200, ['Content-Type' => 'text/plain'],
                ["psgi $env->{PATH_INFO} $env->{REMOTE_PORT} " . length($body)]];
    };
""")


def request(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@contextlib.contextmanager
def uwsgi_behind_router(*router_args: str):
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tmpdir("http-ws"))
        app = tmp / "ws.py"
        app.write_text(WS_APP)
        node = free_port()
        stack.enter_context(
            uwsgi(
                [
                    "--socket",
                    f"127.0.0.1:{node}",
                    "--wsgi-file",
                    str(app),
                    "--master",
                    "-p",
                    "2",
                    "--need-app",
                ]
            )
        )
        port = free_port()
        server = stack.enter_context(
            pymaster(
                ["--http", f"127.0.0.1:{port}", "--http-to", f"127.0.0.1:{node}", *router_args],
                ports=[port],
            )
        )
        server.port = port
        yield server


needs_uwsgi = pytest.mark.skipif(
    not uwsgi_plugin_available("python3"), reason="uWSGI python3 plugin not installed"
)


@needs_uwsgi
def test_uwsgi_workers_behind_the_router():
    with uwsgi_behind_router() as server:
        answer = request(
            server.port,
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.split(b"\r\n\r\n", 1)[1].endswith(b" /x 3")
        chunked = request(
            server.port,
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
            b"chunked\r\nConnection: close\r\n\r\n"
            b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
        )
        assert chunked.split(b"\r\n\r\n", 1)[1].endswith(b" /c 5")


@needs_uwsgi
def test_websocket_tunnel_to_uwsgi():
    sync_client = pytest.importorskip("websockets.sync.client")
    with uwsgi_behind_router("--http-websockets") as server:
        with sync_client.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=20) as ws:
            for text in ("hi", "again", "x" * 70000):
                ws.send(text.encode())
                assert ws.recv(timeout=20) == "echo:" + text  # uWSGI sends text frames


@pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing")
def test_psgi_workers_behind_the_router():
    with tmpdir("http-psgi") as tmp:
        app = tmp / "app.psgi"
        app.write_text(PSGI_APP)
        port = free_port()
        with pymaster(
            ["--http", f"127.0.0.1:{port}", "--psgi", str(app), "--processes", "2"], ports=[port]
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                local = sock.getsockname()[1]
                sock.sendall(
                    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                    b"Connection: close\r\n\r\nbody"
                )
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert data.split(b"\r\n\r\n", 1)[1] == f"psgi /p {local} 4".encode()


class Dumper:
    """A uwsgi node that records each packet's vars (in wire order) and answers 200."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.packets: list[list[tuple[bytes, bytes]]] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        from pymaster.protocols.uwsgi import decode_vars

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while len(data) < 4 or len(data) < 4 + int.from_bytes(data[1:3], "little"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                size = int.from_bytes(data[1:3], "little")
                self.packets.append(decode_vars(data[4 : 4 + size]))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def close(self):
        self.sock.close()


@pytest.mark.skipif(not uwsgi_plugin_available("http"), reason="uWSGI http plugin missing")
@pytest.mark.parametrize("extra", [[], ["--http-server-name-as-http-host=1"]])
def test_same_vars_as_uwsgis_router(extra):
    dumper = Dumper()
    request = (
        b"POST /p/%41x?q=%20y HTTP/1.1\r\nHost: ex.test\r\nUser-Agent: t\r\n"
        b"X-Forwarded-For: 9.9.9.9\r\nCookie: a=1\r\nCookie: b=2\r\n"
        b"Content-Type: text/x\r\nContent-Length: 3\r\n\r\nabc"
    )
    try:
        got = {}
        for name in ("uwsgi", "pymaster"):
            port = free_port()
            args = [
                "--master",
                "--http",
                f"127.0.0.1:{port}",
                "--http-to",
                f"127.0.0.1:{dumper.port}",
                *extra,
            ]
            server = (
                uwsgi(args, plugins=["http"], ports=[port])
                if name == "uwsgi"
                else pymaster(args, ports=[port])
            )
            with server:
                answer = request_until_close(port, request)
                assert answer.endswith(b"ok\n"), answer
            got[name] = dumper.packets[-1]
    finally:
        dumper.close()
    ours, theirs = (dict(got[n]) for n in ("pymaster", "uwsgi"))
    for key in (b"SERVER_PORT", b"REMOTE_PORT"):  # other ports; REMOTE_PORT byte-swapped there
        ours.pop(key), theirs.pop(key)
    assert len(ours) > 12 and ours == theirs
    # same order, but CONTENT_LENGTH: uWSGI keeps it where the header was, pymaster sends it
    # after the headers (it frames the body itself)
    order = [[k for k, _ in got[n] if k != b"CONTENT_LENGTH"] for n in ("pymaster", "uwsgi")]
    assert order[0] == order[1]


def request_until_close(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        data = b""
        while not data.endswith(b"ok\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data

"""psgix.* extensions of the Perl worker under a real master, compared with Starman where
Starman has them: a WebSocket app that hijacks psgix.io (tests/apps/perl/websocket.psgi,
Protocol::WebSocket) gets a byte-clean stream, cleanup handlers run after the response,
psgix.harakiri.commit replaces the worker, psgix.input.buffered input seeks."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import websocket_client as ws
from tests.external import LOOPBACK, free_port, http_get, pymaster, starman
from tests.integration.test_psgi_master import wait_idle_pids
from tests.pm import Pymaster, exchange, split_response, uwsgi_get, wait_port

APPS = Path(__file__).resolve().parents[1] / "apps" / "perl"
WS_APP = APPS / "websocket.psgi"

pytestmark = [
    pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing"),
    pytest.mark.skipif(
        subprocess.run(["perl", "-MProtocol::WebSocket", "-e1"], capture_output=True).returncode
        != 0,
        reason="Protocol::WebSocket (libprotocol-websocket-perl) missing",
    ),
]


def _no_accept(head: bytes) -> bytes:
    return re.sub(rb"(?im)^sec-websocket-accept:.*\r\n", b"", head)


@pytest.fixture(scope="module")
def servers():
    """pymaster (--http-socket, 2 workers) and Starman on the same app."""
    pm_port = free_port()
    with (
        pymaster(
            ["--http-socket", f"{LOOPBACK}:{pm_port}", "--psgi", str(WS_APP), "-M", "-p", "2"]
        ) as pm,
        starman(WS_APP, workers=2) as sm,
    ):
        yield pm, sm


@pytest.mark.parametrize("path", ["/ws", "/ws?keep=1", "/ws101"])
def test_hijacked_websocket_is_byte_clean_as_on_starman(servers, path):
    pm, sm = servers
    ours = ws.session(pm.port, path)
    theirs = ws.session(sm.port, path)
    for s in (ours, theirs):
        assert s.head.startswith(b"HTTP/1.1 101 "), s.head
        assert s.accept_ok, s.head
        assert s.echo == ws.text_frame(b"hello ws")
        assert s.close == ws.CLOSE_1000
        assert s.trailing == b"", s.trailing  # no 500 after the frames
    if path != "/ws101":  # the app wrote the head itself
        assert _no_accept(ours.head) == _no_accept(theirs.head)
    if path == "/ws?keep=1":
        assert not ours.eof  # the app still holds the socket
    else:
        assert ours.eof  # the app closed it
    log = pm.logtext()
    assert "never called the responder" not in log and "pymaster-perl error" not in log, log
    # the worker carries on: normal requests on new connections
    assert http_get(pm.port, "/pid").status == 200


def test_hijack_then_keep_alive_requests_unaffected(servers):
    """Keep-alive connections after hijacks (the hijacked fds stay out of the select)."""
    pm, _ = servers
    for _ in range(3):
        ws.session(pm.port, "/ws?keep=1", quiet=0.2)
    conn = http.client.HTTPConnection(LOOPBACK, pm.port, timeout=10)
    try:
        for _ in range(20):
            conn.request("GET", "/pid")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read().startswith(b"pid ")
    finally:
        conn.close()


def test_never_calling_the_responder_without_psgix_io_is_still_a_500(tmp_path):
    app = tmp_path / "never.psgi"
    # /die reads every env value first, psgix.io too, as Mojolicious does: still a 500
    app.write_text(
        "sub { my $env = shift; if ($env->{PATH_INFO} eq '/die') {"
        " my @v = values %$env; die qq{died after reading the env\\n} }"
        " return sub { 1 } };\n"
    )
    port = free_port()
    with Pymaster(
        ["--http-socket", f"{LOOPBACK}:{port}", "--psgi", app, "-M", "-p", "1"], tmp_path
    ) as pm:
        wait_port(port, 20)
        assert http_get(port, "/").status == 500
        pm.wait_log(
            r"\[pymaster-perl error\] GET /: the delayed response never called the responder"
        )
        assert http_get(port, "/die").status == 500
        pm.wait_log(r"\[pymaster-perl error\] GET /die: died after reading the env")


def test_cleanup_handlers_run_after_the_response(tmp_path):
    log = tmp_path / "cleanup.log"
    port = free_port()
    with Pymaster(
        [
            "--http-socket",
            f"{LOOPBACK}:{port}",
            "--psgi",
            WS_APP,
            "-M",
            "-p",
            "1",
            "--env",
            f"CLEANUP_LOG={log}",
        ],
        tmp_path,
    ) as pm:
        wait_port(port, 20)
        for _ in range(3):
            resp = http_get(port, "/cleanup")
            assert resp.body == b"cleanup yes\n"
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and len(log.read_text().splitlines() if log.exists() else []) < 3
        ):
            time.sleep(0.05)
        (worker,) = wait_idle_pids(pm, 1)
        assert log.read_text().splitlines() == [f"cleanup {worker} {i}" for i in (1, 2, 3)]


def test_harakiri_commit_restarts_the_worker(tmp_path):
    port = free_port()
    with Pymaster(
        ["--http-socket", f"{LOOPBACK}:{port}", "--psgi", WS_APP, "-M", "-p", "1"], tmp_path
    ) as pm:
        wait_port(port, 20)
        (first,) = wait_idle_pids(pm, 1, timeout=20)
        resp = http_get(port, "/harakiri")
        assert resp.status == 200 and resp.body == f"harakiri {first}\n".encode()
        assert resp.headers.get("connection") == "close"
        (second,) = wait_idle_pids(pm, 1, exclude=[first], timeout=20)
        assert second != first
        pm.wait_log(rf"psgix.harakiri.commit requested: worker 1 \(pid: {first}\) exits")
        assert http_get(port, "/pid").body == f"pid {second}\n".encode()


def test_input_buffered_and_seekable_as_on_starman(servers):
    pm, sm = servers
    body = bytes(range(256)) * 5000  # over 1 MiB: the temp file
    for port in (pm.port, sm.port):
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=20)
        conn.request(
            "POST",
            "/buffered",
            body=body[:1_000_000],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert conn.getresponse().read() == b"buffered same 1000000\n"
        conn.close()
    assert re.search(r"POST /buffered => generated 22 bytes", pm.logtext())


CHUNKED_APP = r"""
my $encoded = "5\r\nhello\r\n7;ext=1\r\n, world\r\n1\r\n\n\r\n0\r\nX-Trailer: t\r\n\r\n";
sub {
    my $env = shift;
    my @pieces = $env->{PATH_INFO} eq '/array' ? ($encoded) : unpack '(a3)*', $encoded;
    my $body = $env->{PATH_INFO} eq '/array' ? [@pieces]
             : Plack::Util::inline_object(getline => sub { shift @pieces }, close => sub {});
    [200, ['Content-Type' => 'text/plain', 'Transfer-Encoding' => 'chunked'], $body];
};
"""


@pytest.mark.parametrize("path", ["/getline", "/array"])
def test_apps_own_chunked_body_on_uwsgi_is_sent_decoded(tmp_path, path):
    """Mojo::Server::PSGI chunk-encodes its streamed bodies itself; nginx does not decode
    chunks from a uwsgi upstream, so on uwsgi sockets the worker sends the payload."""
    app = tmp_path / "chunked.psgi"
    app.write_text("use Plack::Util;\n" + CHUNKED_APP)
    port, http_port = free_port(), free_port()
    with Pymaster(
        [
            "-s",
            f"{LOOPBACK}:{port}",
            "--http-socket",
            f"{LOOPBACK}:{http_port}",
            "--psgi",
            app,
            "-M",
            "-p",
            "1",
        ],
        tmp_path,
    ):
        wait_port(port, 20)
        wait_port(http_port, 20)
        status, headers, body = split_response(uwsgi_get(port, path))
        assert status.startswith("HTTP/1.1 200") and body == b"hello, world\n"
        assert "transfer-encoding" not in headers
        # over HTTP the app's own encoding goes out as it is (as on Starman for HTTP/1.0)
        raw = exchange(http_port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert raw.endswith(
            b"\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n1\r\n\n\r\n0\r\nX-Trailer: t\r\n\r\n"
        )

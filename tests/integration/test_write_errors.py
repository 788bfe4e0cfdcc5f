"""A client that disconnects mid-response (uWSGI 2.0 obs M1): which lines are logged with
`ignore-sigpipe`, `ignore-write-errors`, `disable-write-exception`,
`write-errors-exception-only`, `write-errors-tolerance`, what the app sees, and that the
worker lives on. Both worker kinds, over `--http-socket`."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.client import http_get
from tests.conftest import app_args as make_app_args
from tests.pm import Pymaster, free_port, wait_port

WSGI_APP = r'''
import os

CHUNK = b"x" * 65536


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/pid":
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/big":  # a streamed body (iteration)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (CHUNK for _ in range(4000))
    # /bigwrite: the write() callable
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    errors = environ["wsgi.errors"]
    try:
        for _ in range(4000):
            write(CHUNK)
    except OSError as exc:
        errors.write(f"APP SAW {exc.__class__.__name__}: {exc}\n")
        return []
    errors.write("APP WROTE ALL\n")
    return []
'''

PSGI_APP = r'''
use strict;
use warnings;

sub {
    my $env = shift;
    return [200, ['Content-Length' => length $$], [$$]] if $env->{PATH_INFO} eq '/pid';
    return sub {
        my $w = shift->([200, ['Content-Type' => 'text/plain']]);
        $w->write('x' x 65536) for 1 .. 4000;
        $w->close;
    };
};
'''

SIGPIPE = re.compile(
    r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} - SIGPIPE: writing to a closed pipe/socket/fd "
    r"\(probably the client disconnected\) on request (/big\w*) \(ip 127\.0\.0\.1\) !!!$",
    re.M,
)
WRITER = re.compile(
    r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} - uwsgi_response_write_body_do\(\): "
    r"(Connection reset by peer|Broken pipe) during GET (/big\w*) \(127\.0\.0\.1\)$",
    re.M,
)
EXCEPTION = re.compile(r"^OSError: write error$", re.M)
REQUEST = re.compile(r"^\[pid: \d+\|app: 0\|req: \d+/\d+\] .* GET (/big\w*) => generated (\d+) "
                     r"bytes in \d+ msecs \(HTTP/1\.1 200\)", re.M)


@pytest.fixture
def serve(tmp_path, kind):
    started: list[Pymaster] = []

    def start(*options: str) -> tuple[Pymaster, int]:
        app_args = make_app_args(tmp_path, kind, WSGI_APP, PSGI_APP)
        port = free_port()
        pm = Pymaster(["-M", "-p", "1", "--http-socket", f"127.0.0.1:{port}", *app_args,
                       *options], tmp_path)
        started.append(pm)
        wait_port(port, timeout=20)
        return pm, port

    yield start
    for pm in started:
        pm.stop()


def hang_up(port: int, path: str = "/big") -> None:
    """Read 10 kB of a big streamed response, then close (as obs M1)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 10240:
            data = s.recv(4096)
            assert data
            got += len(data)


def served(pm: Pymaster, port: int, path: str = "/big") -> tuple[str, int]:
    """Hang up on `path`; the log once its request line is written, and the worker's pid
    (which must still be serving)."""
    pid = int(http_get(port, "/pid").body)
    hang_up(port, path)
    pm.wait_log(rf"GET {re.escape(path)} => generated", timeout=20)
    time.sleep(0.2)
    assert int(http_get(port, "/pid").body) == pid  # the same worker lives on
    log = pm.log()
    [(uri, sent)] = REQUEST.findall(log)
    assert uri == path and 10240 <= int(sent) < 4000 * 65536
    return log, pid


def test_default_logs_the_write_error_and_the_exception(serve, kind):
    pm, port = serve()
    log, _ = served(pm, port)
    assert [m[1] for m in WRITER.findall(log)] == ["/big"]
    assert set(SIGPIPE.findall(log)) <= {"/big"}  # EPIPE (not a reset) is timing
    assert len(EXCEPTION.findall(log)) == (1 if kind == "wsgi" else 0)
    assert "Traceback" not in log


def test_ignore_sigpipe_and_ignore_write_errors(serve, kind):
    pm, port = serve("--ignore-sigpipe", "--ignore-write-errors")
    log, _ = served(pm, port)
    assert not SIGPIPE.search(log) and not WRITER.search(log)
    assert len(EXCEPTION.findall(log)) == (1 if kind == "wsgi" else 0)


def test_all_three_leave_only_the_request_line(serve, kind):
    pm, port = serve("--ignore-sigpipe", "--ignore-write-errors", "--disable-write-exception")
    log, _ = served(pm, port)
    assert not SIGPIPE.search(log) and not WRITER.search(log) and not EXCEPTION.search(log)
    if kind == "psgi":
        assert "option --disable-write-exception is not honoured by PSGI workers" in log


def test_exception_only_is_silent_on_the_server_side(serve, kind):
    pm, port = serve("--write-errors-exception-only")
    log, _ = served(pm, port)
    assert not SIGPIPE.search(log) and not WRITER.search(log)
    assert len(EXCEPTION.findall(log)) == (1 if kind == "wsgi" else 0)


def test_the_write_callable_raises_into_the_app(serve, kind):
    if kind == "psgi":
        pytest.skip("the PSGI streaming writer is covered by the other tests")
    pm, port = serve("--ignore-sigpipe")
    log, _ = served(pm, port, "/bigwrite")
    assert "APP SAW WriteError: write error" in log and "APP WROTE ALL" not in log
    assert not EXCEPTION.search(log)  # the app caught it


def test_disable_write_exception_lets_the_app_write_on(serve, kind):
    if kind == "psgi":
        pytest.skip("not honoured by PSGI workers")
    pm, port = serve("--disable-write-exception")
    log, _ = served(pm, port, "/bigwrite")
    assert "APP WROTE ALL" in log and "APP SAW" not in log
    assert len(WRITER.findall(log)) >= 1 and not EXCEPTION.search(log)


def test_tolerance_allows_n_errors_before_giving_up(serve, kind):
    if kind == "psgi":
        pytest.skip("not honoured by PSGI workers")
    pm, port = serve("--write-errors-tolerance", "3", "--ignore-sigpipe")
    log, _ = served(pm, port)
    assert len(WRITER.findall(log)) == 4 and len(EXCEPTION.findall(log)) == 1

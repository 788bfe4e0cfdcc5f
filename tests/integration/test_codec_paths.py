"""The compiled codec and the pure-Python one through real workers: the same requests give
the same environ, the same bytes on the wire and the same log lines, bad packets included;
the start-up log says which codec runs."""

import re
import socket
import struct

import pytest

from tests.pm import Pymaster, exchange, free_port, uwsgi_request, wait_port

pytest.importorskip("pymaster.protocols._codec", reason="the compiled codec is not built")

APP = """
import json

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/environ":
        env = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
        env.pop("REMOTE_PORT", None)
        env.pop("SERVER_PORT", None)
        env.pop("HTTP_HOST", None)
        body = json.dumps(env, sort_keys=True).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("X-Latin", "caf\\xe9"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/bad-header":
        start_response("200 OK", [("X-Bad\\n", "v")])
        return [b"never"]
    if path == "/unicode-header":
        start_response("200 OK", [("X-U", "\\u20ac")])
        return [b"never"]
    if path == "/stream":
        start_response("201 Created", [("Connection", "close"), ("X-A", "1")])
        return iter([b"one", b"two"])
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"nothing here"]
"""

REQUESTS_UWSGI = [
    {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/environ",
        "REQUEST_URI": "/environ?x=1",
        "QUERY_STRING": "x=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_COOKIE": "a=\xff",
        "HTTP_X_ODD": "caf\xe9",
        "HTTPS": "on",
        "CONTENT_LENGTH": "",
    },
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/bad-header", "SERVER_PROTOCOL": "HTTP/1.0"},
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/unicode-header", "SERVER_PROTOCOL": "HTTP/1.1"},
    {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/stream"},
    {"REQUEST_METHOD": "GET", "PATH_INFO": "/nope", "SERVER_PROTOCOL": "HTTP/1.1"},
]
BAD_PACKETS = [
    struct.pack("<BHB", 0, 4, 0) + b"\x00\x00\x01\x00",  # a null key
    struct.pack("<BHB", 0, 5, 0) + b"\x09\x00abcde",  # a key past the block's end
    struct.pack("<BHB", 0, 1, 0) + b"\x01",  # truncated vars
]
REQUESTS_HTTP = [
    b"GET /environ?q=%C3%A9 HTTP/1.1\r\nHost: h\r\nX-Two: a\r\nX-Two: b\r\n"
    b"Connection: close\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n",  # the app says Connection: close
    b"HEAD /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /nope HTTP/1.0\r\n\r\n",
    b"GET /bad-header HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
]


def _send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _normalise_log(text: str) -> list[str]:
    """The log lines that depend on the request, not on pids, ports, times or paths."""
    keep = []
    for line in text.splitlines():
        if (
            line.startswith("[pid: ")
            or "Traceback" in line
            or "Error" in line
            or "uwsgi" in line
            or "HTTP error" in line
        ):
            line = re.sub(r"\[pid: \d+\|", "[pid: N|", line)
            line = re.sub(r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\]", "[TIME]", line)
            line = re.sub(r"in \d+ (msecs|micros)", "in T", line)
            line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:P", line)
            line = re.sub(r'File "[^"]+", line \d+', "File F", line)
            keep.append(line)
    return keep


def _run_one(tmp_path, pure: bool):
    app = tmp_path / "app.py"
    app.write_text(APP)
    up, hp = free_port(), free_port()
    env = {"PYMASTER_PURE_PYTHON": "1" if pure else ""}
    with Pymaster(
        [
            "-s",
            f"127.0.0.1:{up}",
            "--http-socket",
            f"127.0.0.1:{hp}",
            "--wsgi-file",
            app,
            "-p",
            "1",
            "--log-micros",
            "--http-keepalive",
            "1",
        ],
        tmp_path,
        env=env,
    ) as pm:
        wait_port(up)
        wait_port(hp)
        out = [uwsgi_request(up, v) for v in REQUESTS_UWSGI]
        out += [_send_raw(up, p) for p in BAD_PACKETS]
        out += [exchange(hp, r) for r in REQUESTS_HTTP]
        pm.wait_log(r"GET /bad-header", count=2, timeout=20)
        log = pm.log()
    return out, log


def _scrub(data: bytes) -> bytes:
    """Ports differ between the two runs; nothing else may."""
    return re.sub(rb'"(REMOTE_PORT|SERVER_PORT)": "\d+"', b"", data)


def test_both_codecs_give_the_same_bytes_environ_and_log_lines(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "p").mkdir()
    compiled, clog = _run_one(tmp_path / "c", False)
    pure, plog = _run_one(tmp_path / "p", True)
    assert "WSGI request codec: compiled codec" in clog
    assert "WSGI request codec: pure-Python codec (PYMASTER_PURE_PYTHON is set)" in plog
    assert [_scrub(x) for x in compiled] == [_scrub(x) for x in pure]
    assert (
        b'"HTTP_COOKIE": "a=\\u00ff"' in compiled[0]
        and b'"wsgi.url_scheme": "https"' in compiled[0]
    )
    assert compiled[0].count(b"X-Latin: caf\xe9\r\n") == 1
    assert compiled[1].startswith(b"HTTP/1.0 500 ")  # the bad header name is refused
    assert compiled[len(REQUESTS_UWSGI)] == b""  # bad packets: closed without an answer
    assert _normalise_log(clog) == _normalise_log(plog)
    assert any("uwsgi key cannot be null" in line for line in _normalise_log(clog))

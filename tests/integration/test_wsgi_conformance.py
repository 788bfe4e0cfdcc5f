"""PEP 3333 through real pymaster workers, over a uwsgi socket and an HTTP socket.

Every app runs inside wsgiref.validate: a contract violation on either side fails the request.
"""

import http.client
import socket

import pytest

from tests.pm import Pymaster, exchange, free_port, split_response, uwsgi_get, wait_port

APP = "tests/apps/conformance.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wsgi")
    up, hp = free_port(), free_port()
    with Pymaster(["-s", f"127.0.0.1:{up}", "--http-socket", f"127.0.0.1:{hp}",
                   "--wsgi-file", APP, "-M", "-p", "2"], tmp) as pm:
        wait_port(up)
        wait_port(hp)
        pm.wait_workers(2)
        pm.up, pm.hp, pm.tmp = up, hp, tmp
        yield pm


def http_request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_uwsgi_hello_raw_response_then_close(server):
    status, headers, body = split_response(uwsgi_get(server.up, "/hello"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain"
    assert body.startswith(b"hello ") and int(body.split()[1]) in server.workers()


def test_uwsgi_without_server_protocol_answers_http10(server):
    from tests.pm import uwsgi_request
    raw = uwsgi_request(server.up, {"REQUEST_METHOD": "GET", "PATH_INFO": "/204"})
    assert raw.startswith(b"HTTP/1.0 204 No Content\r\n")


@pytest.mark.parametrize("size", [0, 11, 70000])
def test_uwsgi_post_body_bounded_by_content_length(server, size):
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    status, headers, got = split_response(uwsgi_get(server.up, "/echo", "POST", body))
    assert status.endswith("200 OK") and headers["x-len"] == str(size) and got == body


def test_http_post_content_length_and_chunked(server):
    resp, data = http_request(server.hp, "POST", "/echo", body=b"hello world")
    assert resp.status == 200 and data == b"hello world"
    chunks = iter([b"hel", b"lo ", b"chunked"])
    resp, data = http_request(server.hp, "POST", "/echo", body=chunks)   # http.client chunks it
    assert resp.status == 200 and data == b"hello chunked"


@pytest.mark.parametrize("proto", ["uwsgi", "http"])
def test_readline_write_closing_and_exc_info(server, proto, tmp_path):
    marker = tmp_path / "closed"
    cases = {"/lines": (200, b"first=a\nrest=2"), "/write": (200, b"written-returned"),
             f"/closing?m={marker}": (200, b"part1-part2"), "/exc_info": (503, b"recovered")}
    for path, (code, expected) in cases.items():
        if proto == "uwsgi":
            status, _, body = split_response(uwsgi_get(server.up, path, "POST", b"a\nb\nc"))
            assert status.split()[1] == str(code), path
        else:
            resp, body = http_request(server.hp, "POST", path, body=b"a\nb\nc")
            assert resp.status == code, path
        assert body == expected, path
    assert marker.read_text() == "closed"


@pytest.mark.parametrize("proto", ["uwsgi", "http"])
def test_file_wrapper_sends_whole_file(server, proto, tmp_path):
    payload = bytes(range(256)) * 4000
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    for route in ("/file", "/sendfile"):
        if proto == "uwsgi":
            _, _, body = split_response(uwsgi_get(server.up, f"{route}?p={path}"))
        else:
            resp, body = http_request(server.hp, "GET", f"{route}?p={path}")
            if route == "/sendfile":      # the server saw its own wrapper: length known
                assert resp.getheader("Content-Length") == str(len(payload))
        assert body == payload


def test_head_204_304_have_no_body(server):
    resp, data = http_request(server.hp, "HEAD", "/hello")
    assert resp.status == 200 and data == b""
    for path, code in (("/204", 204), ("/304", 304)):
        resp, data = http_request(server.hp, "GET", path)
        assert resp.status == code and data == b""
    status, _, body = split_response(uwsgi_get(server.up, "/hello", "HEAD"))
    assert status.endswith("200 OK") and body == b""


@pytest.mark.parametrize("proto", ["uwsgi", "http"])
def test_app_exception_is_500_logged_and_worker_lives(server, proto):
    before = server.workers()
    if proto == "uwsgi":
        status, _, _ = split_response(uwsgi_get(server.up, "/raise"))
        assert " 500 " in status
    else:
        resp, _ = http_request(server.hp, "GET", "/raise")
        assert resp.status == 500
    server.wait_log(r"RuntimeError: the app failed on purpose")
    assert server.workers() == before


def test_header_injection_is_refused(server):
    resp, data = http_request(server.hp, "GET", "/badheader")
    assert resp.status == 500 and resp.getheader("Set-Cookie") is None
    server.wait_log(r"contains CR, LF or NUL")


def test_environ_from_http_and_uwsgi(server):
    resp, data = http_request(server.hp, "GET", "/environ?a=1&b=%20",
                              headers={"X-Custom": "yes", "Content-Type": "text/x"})
    env = dict(line.split("=", 1) for line in data.decode().splitlines())
    assert env["REQUEST_METHOD"] == "GET" and env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "a=1&b=%20" and env["HTTP_X_CUSTOM"] == "yes"
    assert env["CONTENT_TYPE"] == "text/x" and env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["wsgi.url_scheme"] == "http" and env["REMOTE_ADDR"] == "127.0.0.1"
    _, _, body = split_response(uwsgi_get(server.up, "/environ", HTTPS="on", HTTP_X_CUSTOM="u"))
    env = dict(line.split("=", 1) for line in body.decode().splitlines())
    assert env["wsgi.url_scheme"] == "https" and env["HTTP_X_CUSTOM"] == "u"


def test_http_keepalive_serves_several_requests_on_one_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.hp, timeout=10)
    pids = set()
    for _ in range(5):
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        pids.add(resp.read().split()[1])
        assert resp.getheader("Connection") != "close"
    conn.close()
    assert len(pids) == 1


def test_http_pipelined_requests(server):
    data = exchange(server.hp, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * 2
                    + b"GET /204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200 OK") == 2 and data.count(b"HTTP/1.1 204 No Content") == 1


@pytest.mark.parametrize("raw,code", [
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
])
def test_http_bad_requests_get_4xx_and_worker_lives(server, raw, code):
    before = server.workers()
    with socket.create_connection(("127.0.0.1", server.hp), timeout=10) as s:
        s.sendall(raw)
        reply = s.recv(65536)
    assert reply.startswith(f"HTTP/1.1 {code} ".encode())
    resp, data = http_request(server.hp, "GET", "/hello")
    assert resp.status == 200 and server.workers() == before


def test_malformed_uwsgi_packets_are_logged_and_worker_keeps_serving(server):
    before = server.workers()
    big = {"X" * 2: "y" * 5000, "PATH_INFO": "/hello"}
    from tests.pm import uwsgi_request
    assert uwsgi_request(server.up, big) == b""
    server.wait_log(r"invalid request block size: 50\d\d \(max 4096\)\.\.\.skip")
    for junk in (b"\x00\x10\x00\x00\x00\x00\x01\x00a", b"\x00\x05", b"\x00\x03\x00\x00\x05\x00ab"):
        with socket.create_connection(("127.0.0.1", server.up), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""
    assert uwsgi_request(server.up, {"PATH_INFO": "/hello"}, modifier1=5) == b""
    server.wait_log(r"-- unavailable modifier requested: 5 --")
    _, _, body = split_response(uwsgi_get(server.up, "/hello"))
    assert body.startswith(b"hello") and server.workers() == before


def test_request_log_line_in_uwsgi_format(server):
    uwsgi_get(server.up, "/hello?x=1")
    line = server.wait_log(r"\[pid: \d+\|app: 0\|req: \d+/\d+\] 127\.0\.0\.1 \(\) \{\d+ vars in \d+ bytes\} "
                           r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET /hello\?x=1 => generated "
                           r"\d+ bytes in \d+ msecs \(HTTP/1\.1 200\) 1 headers in \d+ bytes "
                           r"\(1 switches on core 0\)")
    assert line

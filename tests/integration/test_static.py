"""Static files (`--static-map` and friends) over a real instance, against the tables uWSGI
2.0.21 was observed to follow (reference section 2): lookup order, mapping without a `/`
boundary, map2, index, skip-ext, traversal and symlinks (not served: the app answers),
headers exactly and in order, HEAD, 304, ranges, gzip variants, expires, MIME case."""

from __future__ import annotations

import os
import time

import pytest

from tests.client import exchange, parse_http_response, uwsgi_get, uwsgi_request, uwsgi_vars
from tests.pm import Pymaster, free_port, wait_port

APP = '''
def application(environ, start_response):
    body = ("APP %s %s" % (environ["REQUEST_METHOD"], environ.get("PATH_INFO"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''
MTIME = 1577934245  # Thu, 02 Jan 2020 03:04:05 GMT
LM = "Thu, 02 Jan 2020 03:04:05 GMT"


def _tree(root):
    www = root / "www"
    (www / "sub").mkdir(parents=True)
    (www / "emptydir").mkdir()
    files = {
        "a.css": b"body{}\n",
        "b.js": b"var b;\n",
        "UPPER.CSS": b"X",
        "noext": b"N",
        "code.py": b"print()\n",
        "hundred.bin": bytes(range(100)),
        "sub/index.html": b"<p>index</p>",
        "g.txt": b"plain text file",
        "g.txt.gz": b"GZ",
        "g.txt.br": b"BR",
    }
    for name, data in files.items():
        (www / name).write_bytes(data)
        os.utime(www / name, (MTIME, MTIME))
    (root / "secret.txt").write_text("SECRET")
    (root / "www-evil").mkdir()
    (root / "www-evil" / "x.txt").write_text("EVIL")
    (www / "link-out").symlink_to("../secret.txt")
    (www / "link-evil").symlink_to(root / "www-evil" / "x.txt")
    (www / "link-in").symlink_to("a.css")
    (root / "favicon.ico").write_bytes(b"ICO")
    (root / "app.py").write_text(APP)
    return www


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    www = _tree(root)
    port, hport = free_port(), free_port()
    args = [
        "-s", f"127.0.0.1:{port}", "--http-socket", f"127.0.0.1:{hport}",
        "--wsgi-file", root / "app.py", "-p", "1",
        "--static-map", f"/static={www}",
        "--static-map", f"/favicon.ico={root / 'favicon.ico'}",
        "--static-map", f"/missing={root / 'nope'}",
        "--static-map2", f"/www={root}",
        "--static-index", "index.html",
        "--static-skip-ext", ".py",
        "--honour-range",
        "--static-gzip", r"\.txt$",
        "--static-expires", r".*\.js 100",
        "--offload-threads", "2",
    ]
    with Pymaster(args, root) as pm:
        wait_port(port)
        wait_port(hport)
        yield pm, port, hport, root, www


def _get(port, path, method="GET", **extra):
    return uwsgi_get(port, path, method, **extra)


@pytest.mark.parametrize("path, body", [
    ("/static/a.css", b"body{}\n"),
    ("/staticb.js", b"var b;\n"),  # the mount is a plain prefix, as in uWSGI
    ("/static//b.js", b"var b;\n"),
    ("/static/./a.css", b"body{}\n"),
    ("/static/link-in", b"body{}\n"),
    ("/static/sub", b"<p>index</p>"),  # static-index
    ("/static/sub/", b"<p>index</p>"),
    ("/www/a.css", b"body{}\n"),  # static-map2 appends the whole PATH_INFO
    ("/favicon.ico", b"ICO"),
    ("/favicon.ico/extra", b"ICO"),  # a mapped file answers every path under its mount
])
def test_served(inst, path, body):
    _, port, *_ = inst
    r = parse_http_response(_get(port, path))
    assert (r.status, r.body) == (200, body)


@pytest.mark.parametrize("path, method", [
    ("/static/../secret.txt", "GET"),  # what a frontend hands on for /static/%2e%2e/secret.txt
    ("/static/link-out", "GET"),  # symlink out of the docroot
    ("/static/link-evil", "GET"),  # /www-evil shares the prefix: pymaster checks the boundary
    ("/static/nonexist", "GET"),
    ("/static/emptydir", "GET"),  # a directory without index
    ("/static/code.py", "GET"),  # static-skip-ext
    ("/static/a.css", "POST"),
    ("/missing/x", "GET"),  # a missing docroot disables the mapping
    ("/other", "GET"),
])
def test_not_served_goes_to_the_app(inst, path, method):
    _, port, *_ = inst
    r = parse_http_response(_get(port, path, method))
    assert (r.status, r.text) == (200, f"APP {method} {path}")


def test_security_error_logged(inst):
    pm, port, _, root, www = inst
    _get(port, "/static/link-evil")
    pm.wait_log(r"\[uwsgi-fileserve\] security error: "
                f"{root}/www-evil/x.txt is not under {www} or a safe path")


def test_start_lines(inst):
    pm, _, _, root, www = inst
    log = pm.log()
    assert f"[uwsgi-static] added mapping for /static => {www}" in log
    assert f"[uwsgi-static] added mapping for /www => {root}" in log
    assert "building mime-types dictionary from file /etc/mime.types..." in log
    assert "spawned 2 offload threads for uWSGI worker 1" in log


def test_offloaded_log_line(inst):
    pm, port, *_ = inst
    _get(port, "/static/hundred.bin")
    pm.wait_log(r"GET /static/hundred.bin => generated 100 bytes in \d+ msecs via offload\(\) ")


def test_headers_exactly_get_head_304(inst):
    _, port, *_ = inst
    assert _get(port, "/static/a.css") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nContent-Length: 7\r\n"
        b"Last-Modified: " + LM.encode() + b"\r\n\r\nbody{}\n")
    assert _get(port, "/static/a.css", "HEAD") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/css\r\nContent-Length: 7\r\n"
        b"Last-Modified: " + LM.encode() + b"\r\n\r\n")
    assert _get(port, "/static/a.css", HTTP_IF_MODIFIED_SINCE=LM) == (
        b"HTTP/1.1 304 Not Modified\r\n\r\n")
    later = "Fri, 03 Jan 2020 00:00:00 GMT"
    assert _get(port, "/static/a.css", HTTP_IF_MODIFIED_SINCE=later).startswith(b"HTTP/1.1 304")
    for value in ("Wed, 01 Jan 2020 00:00:00 GMT", "2020-01-03", "garbage"):
        assert _get(port, "/static/a.css", HTTP_IF_MODIFIED_SINCE=value).startswith(
            b"HTTP/1.1 200")


def test_mime_case_sensitive_and_unknown(inst):
    _, port, *_ = inst
    for path in ("/static/UPPER.CSS", "/static/noext"):
        r = parse_http_response(_get(port, path))
        assert r.status == 200 and "content-type" not in r.headers
    r = parse_http_response(_get(port, "/static/b.js"))
    assert r.headers["content-type"] in ("text/javascript", "application/javascript")


def test_never_etag_date_accept_ranges(inst):
    _, port, *_ = inst
    r = parse_http_response(_get(port, "/static/a.css"))
    assert not {"etag", "date", "accept-ranges", "cache-control", "vary"} & set(r.headers)


@pytest.mark.parametrize("rng, status, content_range, body", [
    ("bytes=0-9", 206, "bytes 0-9/100", bytes(range(10))),
    ("bytes=-5", 206, "bytes 95-99/100", bytes(range(95, 100))),
    ("bytes=90-200", 206, "bytes 90-99/100", bytes(range(90, 100))),
    ("bytes=0-9,20-29", 206, "bytes 0-9/100", bytes(range(10))),
    ("bytes=0-99", 200, None, bytes(range(100))),
])
def test_ranges(inst, rng, status, content_range, body):
    _, port, *_ = inst
    r = parse_http_response(_get(port, "/static/hundred.bin", HTTP_RANGE=rng))
    assert (r.status, r.headers.get("content-range"), r.body) == (status, content_range, body)
    assert r.headers["content-length"] == str(len(body))


@pytest.mark.parametrize("rng", ["bytes=200-300", "bytes=abc"])
def test_range_unsatisfiable(inst, rng):
    _, port, *_ = inst
    assert _get(port, "/static/hundred.bin", HTTP_RANGE=rng) == (
        b"HTTP/1.1 416 Requested Range Not Satisfiable\r\nContent-Range: bytes */100\r\n\r\n")


def test_if_range_is_ignored(inst):
    _, port, *_ = inst
    raw = _get(port, "/static/hundred.bin", HTTP_RANGE="bytes=0-9",
               HTTP_IF_RANGE="Mon, 01 Jan 2001 00:00:00 GMT")
    assert raw.startswith(b"HTTP/1.1 206 Partial Content\r\n")


@pytest.mark.parametrize("accept, body, encoding", [
    ("gzip, deflate", b"GZ", "gzip"),
    ("br, gzip", b"BR", "br"),
    ("identity", b"plain text file", None),
])
def test_gzip_variants(inst, accept, body, encoding):
    _, port, *_ = inst
    r = parse_http_response(_get(port, "/static/g.txt", HTTP_ACCEPT_ENCODING=accept))
    assert (r.body, r.headers.get("content-encoding")) == (body, encoding)
    assert r.headers["content-type"] == "text/plain" and "vary" not in r.headers
    assert r.headers["content-length"] == str(len(body))
    if encoding:
        raw = _get(port, "/static/g.txt", HTTP_ACCEPT_ENCODING=accept)
        assert raw.split(b"\r\n")[1] == f"Content-Encoding: {encoding}".encode()


def test_expires_by_regex_first_header(inst):
    _, port, *_ = inst
    before = int(time.time())
    raw = _get(port, "/static/b.js")
    first = raw.split(b"\r\n")[1].decode()
    assert first.startswith("Expires: ")
    stamp = time.mktime(time.strptime(first[9:], "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone
    assert before + 99 <= stamp <= time.time() + 101
    assert b"Expires" not in _get(port, "/static/a.css")


def test_http_socket_percent_encoded_traversal(inst):
    _, _, hport, *_ = inst
    for target, expected in (
        ("/static/%2e%2e/secret.txt", b"APP GET /static/../secret.txt"),
        ("/static/%61.css", b"body{}\n"),
    ):
        raw = exchange(hport, f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        r = parse_http_response(raw)
        assert (r.status, r.body) == (200, expected)


def test_mount_manage_script_name_then_static(tmp_path):
    """uWSGI rewrites SCRIPT_NAME first: static-map /s also answers /app/s/a.css (obs S5)."""
    www = _tree(tmp_path)
    (tmp_path / "mod.py").write_text(APP)
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "app.py",
                   "--mount", f"/app={tmp_path / 'mod.py'}", "--manage-script-name",
                   "--static-map", f"/s={www}"], tmp_path):
        wait_port(port)
        assert parse_http_response(_get(port, "/app/s/a.css")).body == b"body{}\n"
        assert parse_http_response(_get(port, "/s/a.css")).body == b"body{}\n"
        env = uwsgi_vars("/app/x", port=port, SCRIPT_NAME="")
        assert parse_http_response(uwsgi_request(port, env)).text == "APP GET /x"


def test_django_ini_and_check_static_safe_expires_type_mimefile(tmp_path):
    """Django's documented `static-map = /static=DIR` INI, plus check-static, static-safe,
    static-expires-type and a custom mimefile (which replaces /etc/mime.types)."""
    www = _tree(tmp_path)
    (tmp_path / "my.mime").write_text("text/x-mine css\napplication/x-b js\n")
    port = free_port()
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(f"""[uwsgi]
chdir = {tmp_path}
wsgi-file = app.py
master = true
processes = 1
socket = 127.0.0.1:{port}
static-map = /static={www}
check-static = {www}
static-safe = {tmp_path}/www-evil
static-expires-type = text/x-mine=60
mimefile = {tmp_path}/my.mime
""")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        r = parse_http_response(_get(port, "/static/a.css"))
        assert r.body == b"body{}\n" and r.headers["content-type"] == "text/x-mine"
        raw = _get(port, "/a.css")  # check-static: DIR + PATH_INFO
        lines = raw.split(b"\r\n")
        assert lines[1] == b"Content-Type: text/x-mine" and lines[2].startswith(b"Expires: ")
        assert parse_http_response(_get(port, "/static/link-evil")).body == b"EVIL"  # safe
        r = parse_http_response(_get(port, "/static/g.txt"))
        assert r.status == 200 and "content-type" not in r.headers  # default table dropped
        assert parse_http_response(_get(port, "/static/link-out")).text.startswith("APP")
        log = pm.log()
        assert f"[uwsgi-static] added check for {www}" in log
        assert f"building mime-types dictionary from file {tmp_path}/my.mime...2 entry found" in log


def test_psgi_refuses_static_options(tmp_path):
    (tmp_path / "app.psgi").write_text("sub { [200, [], ['x']] }\n")
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--psgi", tmp_path / "app.psgi",
                   "--static-map", f"/static={tmp_path}"], tmp_path)
    assert pm.wait(10) != 0
    assert "Plack::Middleware::Static" in pm.log()
    pm.stop()

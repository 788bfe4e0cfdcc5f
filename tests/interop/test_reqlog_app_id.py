"""The request log's `app: ID|req: N/TOTAL` with several `--mount`s, against real uWSGI 2.0.

The same requests go to uWSGI and to pymaster, both started with two mounts,
`--manage-script-name` and a `--static-map`: each line names the app that answered (its index
in load order, the first mount being the default app), that app's own request count, and
`app: -1|req: -1/N` for a static file or, with `--no-default-app`, when no app matched.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.client import LOOPBACK, free_port
from tests.external import pymaster, uwsgi, uwsgi_plugin_available

APP = """\
def application(env, start):
    body = ("%s|%s" % (NAME, env["SCRIPT_NAME"])).encode()
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

LINE_RE = re.compile(r"\|app: (-?\d+)\|req: (-?\d+)/(\d+)\] .* GET (\S+) => .*\((HTTP/1\.\d \d+)\)")

needs_uwsgi = pytest.mark.skipif(
    not uwsgi_plugin_available("python3"), reason="uWSGI with the python3 plugin not installed"
)


def get(port: int, path: str) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def run(server_cls, tmp: Path, paths: list[str], extra: list[str]) -> list[tuple]:
    """(body, app, app requests, total, uri, status) per request, in order."""
    port = free_port()
    args = [
        "--http-socket",
        f"127.0.0.1:{port}",
        "-M",
        "-p",
        "1",
        "--mount",
        f"/a={tmp / 'a.py'}",
        "--mount",
        f"/b={tmp / 'b.py'}",
        "--manage-script-name",
        "--static-map",
        f"/st={tmp / 'www'}",
        *extra,
    ]
    with server_cls(args) as srv:
        bodies = [get(port, path).partition(b"\r\n\r\n")[2] for path in paths]
        deadline = time.monotonic() + 10
        while len(LINE_RE.findall(srv.logtext())) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = LINE_RE.findall(srv.logtext())
    assert len(lines) == len(paths), lines
    return [(body, *line) for body, line in zip(bodies, lines, strict=True)]


@pytest.fixture
def apps(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n" + APP)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "s.txt").write_text("static\n")
    return tmp_path


@needs_uwsgi
def test_app_id_and_app_requests_as_uwsgi(apps):
    paths = ["/a/x", "/b/y", "/b", "/zzz", "/st/s.txt", "/a"]
    ours = run(pymaster, apps, paths, [])
    theirs = run(uwsgi, apps, paths, [])
    assert [row[0] for row in ours] == [b"a|/a", b"b|/b", b"b|/b", b"a|", b"static\n", b"a|/a"]
    assert ours == theirs
    # what uWSGI 2.0 was seen to write: the default app is app 0, a static file no app
    assert [row[1:4] for row in ours] == [
        ("0", "1", "1"),
        ("1", "1", "2"),
        ("1", "2", "3"),
        ("0", "2", "4"),
        ("-1", "-1", "5"),
        ("0", "3", "6"),
    ]


@needs_uwsgi
def test_no_app_matched_is_app_minus_one(apps):
    paths = ["/zzz", "/b"]
    ours = run(pymaster, apps, paths, ["--no-default-app"])
    theirs = run(uwsgi, apps, paths, ["--no-default-app"])
    assert [row[1:] for row in ours] == [row[1:] for row in theirs]
    assert [row[1:4] for row in ours] == [("-1", "-1", "1"), ("1", "1", "2")]
    assert ours[1][0] == theirs[1][0] == b"b|/b"

"""Starting pymaster with an ASGI app from tests/apps for the test_asgi*.py files."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

from tests.pm import Pymaster, free_port, wait_port

APPS = Path(__file__).resolve().parent.parent / "apps"
READY = r"ASGI app 0 \(mountpoint=''\) ready in worker"


class Served:
    def __init__(self, pm: Pymaster, http: int, uwsgi: int, marks: Path):
        self.pm = pm
        self.http = http
        self.uwsgi = uwsgi
        self.marks = marks

    def mark(self, name: str) -> list[str]:
        path = self.marks / name
        return path.read_text().split() if path.exists() else []


@contextlib.contextmanager
def serve(tmp_path, *extra, app="asgi_raw:application", processes=1, env=None, ready=True):
    http, uwsgi = free_port(), free_port()
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    full_env = {
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
        "ASGI_TEST_MARKS": str(marks),
    }
    full_env.update(env or {})
    args = [
        "--master",
        "--http-socket",
        f"127.0.0.1:{http}",
        "--socket",
        f"127.0.0.1:{uwsgi}",
        "--asgi",
        app,
        "--processes",
        str(processes),
        *extra,
    ]
    with Pymaster(args, tmp_path, env=full_env) as pm:
        if ready:
            pm.wait_log(READY, timeout=30, count=processes)
            wait_port(http)
        yield Served(pm, http, uwsgi, marks)


def http_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(port: int, path: str, headers: str = "", timeout: float = 10.0) -> tuple[int, bytes]:
    raw = http_exchange(
        port,
        f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n".encode(),
        timeout,
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split()[1]), body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        data = rest[n + 2 :]
    return out


def scope_of(port: int, path: str, headers: str = "") -> dict:
    status, body = get(port, path, headers)
    assert status == 200, body
    return json.loads(body)


def read_stats(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)

"""`--offload-threads` (issue 10): 100 slow clients downloading a 20 MB static file from a
1-process instance do not stop app requests or small static files, all 100 downloads end
byte-exact, a client leaving mid-download leaves no descriptor behind; without offload
threads the same clients block the worker (the test can fail)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import selectors
import signal
import socket
import threading
import time

import pytest

from tests.client import http_get
from tests.pm import Pymaster, free_port, wait_port

APP = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"APP " + environ["PATH_INFO"].encode()]
"""
BIG = 20 * 1000 * 1000
CLIENTS = 100
PROMPT = 10.0  # seconds: generous, the machine is shared; blocked means minutes here


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("offload")
    www = root / "www"
    www.mkdir()
    data = random.Random(10).randbytes(BIG)
    (www / "big.bin").write_bytes(data)
    (www / "small.txt").write_bytes(b"small file\n")
    (root / "app.py").write_text(APP)
    return root, hashlib.sha256(data).hexdigest()


def _start(root, offload: int):
    port = free_port()
    args = [
        "--http-socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        root / "app.py",
        "--master",
        "-p",
        "1",
        "--static-map",
        f"/s={root / 'www'}",
        "--socket-timeout",
        "120",
        "--listen",
        "256",
    ]
    if offload:
        args += ["--offload-threads", str(offload)]
    pm = Pymaster(args, root)
    wait_port(port)
    return pm, port


def _slow_client(port: int, path: str = "/s/big.bin") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    s.setblocking(False)
    return s


class Trickle:
    """Read a little from every slow client now and then, until stopped."""

    def __init__(self, socks):
        self.socks = socks
        self.got: dict[socket.socket, bytearray] = {s: bytearray() for s in socks}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.3):
            for s in self.socks:
                try:
                    self.got[s] += s.recv(1024)
                except (BlockingIOError, OSError):
                    pass

    def end(self):
        self.stop.set()
        self.thread.join(10)


def _read_all(trickle: Trickle, timeout: float = 300.0) -> dict[socket.socket, bytes]:
    """Read every client to EOF, all at once (the server sends them concurrently)."""
    sel = selectors.DefaultSelector()
    for s in trickle.socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sel.register(s, selectors.EVENT_READ)
    left = len(trickle.socks)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            s = key.fileobj
            try:
                data = s.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                trickle.got[s] += data
            else:
                sel.unregister(s)
                left -= 1
    sel.close()
    return {s: bytes(b) for s, b in trickle.got.items()}


def _body(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int) -> int:
    """The worker's descriptor count once the last test connection's close reached it."""
    n = _fds(pid)
    for _ in range(50):
        time.sleep(0.2)
        m, n = n, _fds(pid)
        if m == n:
            break
    return n


def _no_leak(pid: int, before: int) -> None:
    deadline = time.monotonic() + 10
    while _fds(pid) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _fds(pid) <= before, sorted(os.listdir(f"/proc/{pid}/fd"))


def _prompt(port: int, path: str) -> bytes:
    t0 = time.monotonic()
    r = http_get(port, path, timeout=PROMPT)
    assert r.status == 200, (path, r.status)
    assert time.monotonic() - t0 < PROMPT
    return r.body


def test_slow_downloads_offloaded(tree):
    root, digest = tree
    pm, port = _start(root, offload=2)
    try:
        assert pm.wait_log(r"spawned 2 offload threads for uWSGI worker 1")
        (wpid,) = pm.wait_workers(1)
        _prompt(port, "/warm")  # the app loaded, the first accept done
        before = _settled_fds(wpid)
        socks = [_slow_client(port) for _ in range(CLIENTS)]
        trickle = Trickle(socks)
        try:
            # every download is handed over and logged at once, with its full size
            pm.wait_log(
                r"GET /s/big.bin => generated 20000000 bytes in \d+ msecs via offload\(\) "
                r"\(HTTP/1.1 200\)",
                timeout=60,
                count=CLIENTS,
            )
            for i in range(5):  # the worker is free: app and small static requests answer
                assert _prompt(port, f"/app{i}") == f"APP /app{i}".encode()
                assert _prompt(port, "/s/small.txt") == b"small file\n"
                time.sleep(0.2)
        finally:
            trickle.end()
        out = _read_all(trickle)
        assert len(out) == CLIENTS
        for raw in out.values():
            head, body = _body(raw)
            assert head.startswith("HTTP/1.1 200 OK\r\n"), head
            assert "Content-Length: 20000000" in head and "Connection: close" in head
            assert len(body) == BIG and hashlib.sha256(body).hexdigest() == digest
        for s in socks:
            s.close()
        # every descriptor the transfers held is closed
        _no_leak(wpid, before)
    finally:
        pm.stop()


def test_client_leaving_mid_download(tree):
    root, _ = tree
    pm, port = _start(root, offload=1)
    try:
        (wpid,) = pm.wait_workers(1)
        _prompt(port, "/warm")
        before = _settled_fds(wpid)
        s = _slow_client(port)
        pm.wait_log(r"GET /s/big.bin => generated 20000000 bytes in \d+ msecs via offload\(\)")
        time.sleep(0.3)
        s.setblocking(True)
        assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
        s.close()  # unread bytes: the kernel resets the connection
        (line,) = pm.wait_log(
            r"u_offload_sendfile_do\(\): (?:Connection reset by peer|Broken pipe) "
            r"during GET /s/big.bin \(127.0.0.1\)",
            timeout=20,
        )
        _no_leak(wpid, before)
        assert _prompt(port, "/after") == b"APP /after"
    finally:
        pm.stop()


def test_without_offload_the_worker_is_blocked(tree):
    """The same slow clients without --offload-threads: the worker sends the file itself
    (`via sendfile()`) and an app request waits behind it (what the test above guards)."""
    root, _ = tree
    pm, port = _start(root, offload=0)
    try:
        _prompt(port, "/warm")
        assert "offload threads" not in pm.log()
        socks = [_slow_client(port) for _ in range(CLIENTS)]
        trickle = Trickle(socks)
        try:
            time.sleep(1.0)
            t0 = time.monotonic()
            with pytest.raises(OSError):  # a timeout: the worker is still in the first download
                http_get(port, "/app", timeout=5.0)
            assert time.monotonic() - t0 >= 4.5
        finally:
            trickle.end()
            for s in socks:
                s.close()
        pm.wait_log(
            r"uwsgi_response_sendfile_do\(\): (?:Connection reset by peer|Broken pipe) "
            r"during GET /s/big.bin \(127.0.0.1\)",
            timeout=30,
        )
        # the small static file, sent by the worker, says so in its log line
        assert _prompt(port, "/s/small.txt") == b"small file\n"
        pm.wait_log(
            r"GET /s/small.txt => generated 11 bytes in \d+ msecs via sendfile\(\) "
            r"\(HTTP/1.1 200\)",
            timeout=30,
        )
        assert not re.search(r"via offload\(\)", pm.log())
    finally:
        pm.stop()


FILE_APP = """
def application(environ, start_response):
    if environ["PATH_INFO"] == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(environ["BIG"], "rb"))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"APP"]
"""


def test_app_file_wrapper_with_threads(tree, tmp_path):
    """The app's own wsgi.file_wrapper is offloaded too, from a request thread (--threads);
    HEAD and pipelined requests behind an offloaded answer are handled."""
    root, digest = tree
    app = tmp_path / "fapp.py"
    app.write_text(FILE_APP.replace('environ["BIG"]', repr(str(root / "www" / "big.bin"))))
    port = free_port()
    args = [
        "--http-socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        app,
        "--master",
        "-p",
        "1",
        "--threads",
        "2",
        "--offload-threads",
        "3",
        "--static-map",
        f"/s={root / 'www'}",
    ]
    with Pymaster(args, tmp_path) as pm:
        wait_port(port)
        pm.wait_log(r"spawned 3 offload threads for uWSGI worker 1")
        (wpid,) = pm.wait_workers(1)
        http_get(port, "/warm")
        before = _settled_fds(wpid)
        r = http_get(port, "/file", timeout=60)
        assert r.status == 200 and hashlib.sha256(r.body).hexdigest() == digest
        assert r.headers["connection"] == "close"
        pm.wait_log(r"GET /file => generated 20000000 bytes in \d+ msecs via offload\(\)")
        # HEAD: no body, nothing offloaded, keep-alive kept
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"HEAD /file HTTP/1.1\r\nHost: x\r\n\r\nGET /s/small.txt HTTP/1.1\r\n"
                b"Host: x\r\n\r\nGET /app HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        assert raw.count(b"HTTP/1.1 200 OK") == 2  # HEAD, the offloaded file; then closed
        assert b"Content-Length: 20000000" in raw and raw.endswith(b"small file\n")
        assert b"APP" not in raw
        pm.wait_log(r"HEAD /file => generated 0 bytes in \d+ msecs \(HTTP/1.1 200\)")
        _no_leak(wpid, before)


def test_reload_lets_offloaded_downloads_finish(tree):
    """A graceful reload (SIGHUP): the old worker waits for its transfers under way."""
    root, digest = tree
    pm, port = _start(root, offload=1)
    try:
        (old,) = pm.wait_workers(1)
        s = _slow_client(port)
        pm.wait_log(r"GET /s/big.bin => generated 20000000 bytes in \d+ msecs via offload\(\)")
        trickle = Trickle([s])
        pm.signal(signal.SIGHUP)
        pm.wait_workers(1, timeout=30, exclude=(old,))  # the new worker serves meanwhile
        assert _prompt(port, "/during") == b"APP /during"
        time.sleep(1.0)
        trickle.end()
        (raw,) = _read_all(trickle).values()
        head, body = _body(raw)
        assert len(body) == BIG and hashlib.sha256(body).hexdigest() == digest
        s.close()
    finally:
        pm.stop()

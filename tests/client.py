"""The one helper module for talking to servers from the tests and the benchmarks: free
ports, waiting for a listener, raw exchanges, HTTP requests and one response parser, and
uwsgi requests built by an encoder of its own (never the server's codec, so the code under
test does not build its own input).
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server did not come up (the message carries the tail of its log)."""


# --------------------------------------------------------------------------- sockets

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None,
                  host: str = LOOPBACK) -> None:
    """Wait until something accepts TCP connections on host:port.

    With `proc`, give up as soon as that process exits. Raises TimeoutError / ServerError.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"process {proc.args!r} exited with {proc.returncode} "
                              f"before listening on {host}:{port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.1f} s")


# --------------------------------------------------------------------------- clients

def uwsgi_packet(vars: Mapping[str, str | bytes], body: bytes = b"",
                 modifier1: int = 0, modifier2: int = 0) -> bytes:
    """A uwsgi request: '<BHB' header (modifier1, vars size, modifier2), the vars as
    (u16le len, key, u16le len, value) pairs, then the body."""
    block = bytearray()
    for key, value in vars.items():
        k = key.encode("latin-1") if isinstance(key, str) else key
        v = value.encode("latin-1") if isinstance(value, str) else value
        block += struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
    return struct.pack("<BHB", modifier1, len(block), modifier2) + bytes(block) + body


def uwsgi_vars(path: str = "/", method: str = "GET", host: str = "localhost",
               port: int = 80, **extra: str) -> dict[str, str]:
    """The CGI-style variables a frontend such as nginx sends for a plain request."""
    path_info, _, query = path.partition("?")
    env = {
        "REQUEST_METHOD": method, "REQUEST_URI": path, "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": host,
        "SERVER_PORT": str(port), "REMOTE_ADDR": LOOPBACK, "REMOTE_PORT": "40000",
        "HTTP_HOST": host, "REQUEST_SCHEME": "http", "CONTENT_LENGTH": "",
        "CONTENT_TYPE": "", "DOCUMENT_ROOT": "",
    }
    env.update(extra)
    return env


def uwsgi_request(port: int, vars: Mapping[str, str | bytes], body: bytes = b"",
                  modifier1: int = 0, modifier2: int = 0, timeout: float = 10.0,
                  host: str = LOOPBACK) -> bytes:
    """Send one uwsgi request and return everything the peer sends until it closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(uwsgi_packet(vars, body, modifier1, modifier2))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""
    status_line: str = ""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_http_response(raw: bytes) -> Response:
    """Split a raw HTTP/1.x response (as a uwsgi backend writes it) into a Response."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"not an HTTP response: {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(parts[1]), headers, body, lines[0])


def http_get(port: int, path: str = "/", host: str | None = None, timeout: float = 10.0,
             headers: Mapping[str, str] | None = None) -> Response:
    """GET http://127.0.0.1:port/path (with an optional Host header)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if host:
            hdrs["Host"] = host
        conn.request("GET", path, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


PID_RE = re.compile(r"PID:\s*(\d+)")


def pid_in_page(text: str) -> int:
    """The worker PID printed by the seed apps (`PID: 1234`)."""
    match = PID_RE.search(text)
    if not match:
        raise AssertionError(f"no 'PID: <n>' in page: {text[:300]!r}")
    return int(match.group(1))


def exchange(port: int, data: bytes, timeout: float = 10.0, host: str = LOOPBACK) -> bytes:
    """Send `data` on a new connection and read until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def uwsgi_get(port: int, path: str, method: str = "GET", body: bytes = b"", **extra: str) -> bytes:
    """One uwsgi request for `path` with the vars a frontend sends; the raw answer."""
    env = uwsgi_vars(path, method, port=port, SCRIPT_NAME="", **extra)
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    return uwsgi_request(port, env, body)


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, lower-cased headers, body) of a raw HTTP response."""
    response = parse_http_response(raw)
    return response.status_line, response.headers, response.body

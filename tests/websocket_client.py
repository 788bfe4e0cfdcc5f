"""A raw-socket WebSocket client for the PSGI hijack tests: the handshake, one masked text
frame, its echo, the close handshake, then everything the server still sends (which must be
nothing) until EOF or a quiet timeout. Raw bytes throughout, so a stray byte would show."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame (payload < 126 bytes), masked as RFC 6455 requires."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


@dataclass
class Session:
    head: bytes  # the 101 response head, up to and including the blank line
    accept_ok: bool  # Sec-WebSocket-Accept matches the key sent
    echo: bytes  # the server's frame for our text frame (raw)
    close: bytes  # the server's close frame (raw)
    trailing: bytes  # whatever came after the close frame
    eof: bool  # the server closed the connection (else: quiet until the timeout)


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"EOF after {bytes(buf)!r}, wanted {n} bytes")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_frame(sock: socket.socket, buf: bytearray) -> bytes:
    head = _read_exact(sock, buf, 2)
    size = head[1] & 0x7F
    assert not head[1] & 0x80, "a server frame must not be masked"
    assert size < 126, "test frames are short"
    return head + _read_exact(sock, buf, size)


def session(
    port: int,
    path: str,
    message: bytes = b"hello ws",
    quiet: float = 1.5,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
) -> Session:
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + f"{host}:{port}".encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"EOF before the handshake answer: {bytes(buf)!r}")
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        head = bytes(buf[:end])
        del buf[:end]
        want = base64.b64encode(hashlib.sha1(key + GUID).digest())
        accept_ok = any(
            line.split(b":", 1)[1].strip() == want
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-accept:")
        )
        sock.sendall(masked_frame(0x1, message))
        echo = _read_frame(sock, buf)
        sock.sendall(masked_frame(0x8, struct.pack("!H", 1000)))
        close = _read_frame(sock, buf)
        sock.settimeout(quiet)
        trailing, eof = bytes(buf), False
        try:
            while chunk := sock.recv(65536):
                trailing += chunk
            eof = True
        except TimeoutError:
            pass
        return Session(head, accept_ok, echo, close, trailing, eof)


def text_frame(payload: bytes) -> bytes:
    """The unmasked frame a server sends for a short text message."""
    return bytes([0x81, len(payload)]) + payload


CLOSE_1000 = bytes([0x88, 2]) + struct.pack("!H", 1000)

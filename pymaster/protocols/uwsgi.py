"""The uwsgi packet codec: 4-byte `<BHB` header, u16le-prefixed key/value vars, body after.

Pure functions over bytes plus one incremental reader for a socket; every malformed input
raises `UwsgiError` whose message follows uWSGI 2.0's log wording.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import NamedTuple

from pymaster.protocols import speedups
from pymaster.protocols.body import InputStream

HEADER = struct.Struct("<BHB")
_U16 = struct.Struct("<H")
MAX_DATASIZE = 65535


class UwsgiError(ValueError):
    """A uwsgi packet that cannot be parsed; the message is uWSGI's log wording."""


class Packet(NamedTuple):
    modifier1: int
    modifier2: int
    vars: dict[str, str]
    datasize: int
    nvars: int


_new_packet = tuple.__new__  # Packet(...) without the Python-level __new__ of a NamedTuple


def _b(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("latin-1")


def encode_vars(pairs: Iterable[tuple[bytes | str, bytes | str | int]]) -> bytes:
    """Encode key/value pairs as a uwsgi vars block."""
    out = bytearray()
    for key, value in pairs:
        k, v = _b(key), _b(value)
        if not k:
            raise UwsgiError("uwsgi key cannot be null. skip this var.")
        if len(k) > 0xFFFF or len(v) > 0xFFFF:
            raise UwsgiError(f"uwsgi var too long ({len(k)}/{len(v)} bytes, max 65535)")
        out += _U16.pack(len(k)) + k + _U16.pack(len(v)) + v
    return bytes(out)


def encode_packet(modifier1: int, pairs, modifier2: int = 0) -> bytes:
    """A whole packet: header plus vars block (a body, if any, is sent after it)."""
    block = (
        pairs
        if isinstance(pairs, (bytes, bytearray))
        else encode_vars(pairs.items() if isinstance(pairs, dict) else pairs)
    )
    if len(block) > MAX_DATASIZE:
        raise UwsgiError(f"invalid request block size: {len(block)} (max {MAX_DATASIZE})...skip")
    return HEADER.pack(modifier1, len(block), modifier2) + block


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(modifier1, datasize, modifier2) from the first four bytes."""
    if len(data) < 4:
        raise UwsgiError("uwsgi_proto_uwsgi_parser(): truncated header")
    return HEADER.unpack_from(data, 0)


def iter_vars(block: bytes | memoryview):
    """Yield (key, value) bytes pairs of a vars block, with strict bounds."""
    mv = memoryview(block)
    end = len(mv)
    pos = 0
    unpack = _U16.unpack_from
    while pos < end:
        if pos + 2 > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {end - pos}). skip.")
        (klen,) = unpack(mv, pos)
        pos += 2
        if klen == 0:
            raise UwsgiError("uwsgi key cannot be null. skip this var.")
        if pos + klen + 2 > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {klen}). skip.")
        key = bytes(mv[pos : pos + klen])
        pos += klen
        (vlen,) = unpack(mv, pos)
        pos += 2
        if pos + vlen > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {vlen}). skip.")
        yield key, bytes(mv[pos : pos + vlen])
        pos += vlen


def decode_vars(block: bytes | memoryview) -> list[tuple[bytes, bytes]]:
    """All pairs of a vars block, in wire order (duplicates kept)."""
    return list(iter_vars(block))


def _decode_environ_py(block: bytes | memoryview) -> tuple[dict[str, str], int]:
    """Vars block -> (dict of latin-1 strings, number of vars); a later duplicate wins."""
    env: dict[str, str] = {}
    n = 0
    for key, value in iter_vars(block):
        env[key.decode("latin-1")] = value.decode("latin-1")
        n += 1
    return env, n


def decode_environ(block: bytes | memoryview) -> tuple[dict[str, str], int]:
    """Vars block -> (dict of latin-1 strings, number of vars); a later duplicate wins.
    The compiled codec's when it runs (protocols/speedups.py), else `_decode_environ_py`."""
    return _decode_environ(block)


_decode_environ = _decode_environ_py


def vars_size(env: dict[str, str]) -> int:
    """The size of the vars block `env` (latin-1 strings) would take as a uwsgi packet: a
    u16 length before each key and each value (uWSGI's `{N vars in M bytes}` on any socket)."""
    return 4 * len(env) + sum(map(len, env)) + sum(map(len, env.values()))


def content_length(value: str | None) -> int:
    """CONTENT_LENGTH as uWSGI reads it: the leading ASCII digits, 0 when none."""
    if not value:
        return 0
    digits = 0
    for ch in value:
        if "0" <= ch <= "9":
            digits += 1
        else:
            break
    if digits > 18:  # more than any body could be; int() would also balk
        raise UwsgiError(f"Invalid (too big) CONTENT_LENGTH ({digits} digits). skip.")
    return int(value[:digits]) if digits else 0


def packet_size(buf: bytes | bytearray, buffer_size: int) -> int:
    """How many bytes the packet at the start of `buf` spans (header + vars), 0 while the
    header is incomplete; UwsgiError when the vars block is over `buffer_size`."""
    if len(buf) < 4:
        return 0
    datasize = HEADER.unpack_from(buf, 0)[1]
    if datasize > buffer_size:
        raise UwsgiError(f"invalid request block size: {datasize} (max {buffer_size})...skip")
    return 4 + datasize


def parse_packet(buf: bytes | bytearray, size: int) -> Packet:
    """The packet of `size` bytes (see packet_size) at the start of `buf`."""
    modifier1, datasize, modifier2 = HEADER.unpack_from(buf, 0)
    env, nvars = _decode_environ(memoryview(buf)[4:size])
    return _new_packet(Packet, (modifier1, modifier2, env, datasize, nvars))


def read_packet(recv_into_buf, buffer_size: int) -> tuple[Packet, bytes]:
    """Read one request packet with `recv(n) -> bytes`; return it and the bytes read past it.

    Raises UwsgiError for a block over `buffer_size`, a stream closed early or bad vars.
    """
    buf = bytearray()
    while len(buf) < 4:
        chunk = recv_into_buf(65536)
        if not chunk:
            raise UwsgiError(
                "uwsgi_proto_uwsgi_parser(): Success [proto/uwsgi.c line 40]"
                if not buf
                else "uwsgi_proto_uwsgi_parser(): truncated header"
            )
        buf += chunk
    modifier1, datasize, modifier2 = HEADER.unpack_from(buf, 0)
    if datasize > buffer_size:
        raise UwsgiError(f"invalid request block size: {datasize} (max {buffer_size})...skip")
    need = 4 + datasize
    while len(buf) < need:
        chunk = recv_into_buf(max(65536, need - len(buf)))
        if not chunk:
            raise UwsgiError("uwsgi_proto_uwsgi_parser(): Success [proto/uwsgi.c line 40]")
        buf += chunk
    env, nvars = _decode_environ(memoryview(buf)[4:need])
    return Packet(modifier1, modifier2, env, datasize, nvars), bytes(buf[need:])


class RawFraming:
    """Response framing on a uwsgi socket: `SERVER_PROTOCOL status`, headers, body, close."""

    __slots__ = ("protocol",)

    def __init__(self, protocol: str | None):
        self.protocol = protocol or "HTTP/1.0"

    def head(self, status: str, headers, length, no_body) -> bytes:
        if _raw_head is not None:
            head = _raw_head(self.protocol, status, headers)
            if head is not None:
                return head
        return self._head_py(status, headers)

    def _head_py(self, status: str, headers) -> bytes:
        parts = [f"{self.protocol} {status}\r\n"]
        parts += [f"{name}: {value}\r\n" for name, value in headers]
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    @staticmethod
    def chunk(data) -> bytes:
        return bytes(data)

    @staticmethod
    def finish() -> bytes:
        return b""


class BodyReader(InputStream):
    """A request body of known length read from a socket on demand: the WSGI input stream."""

    def __init__(self, recv, length: int, already: bytes = b""):
        super().__init__(already[:length])
        self._recv = recv
        self._left = length - len(self._buf)

    @property
    def complete(self) -> bool:
        return self._left <= 0

    def _more(self, want: int) -> bool:
        if self._left <= 0 or self.closed:
            return False
        chunk = self._recv(min(max(want, 65536), self._left, 1 << 20))
        if not chunk:
            raise UwsgiError(f"client closed the connection with {self._left} body bytes missing")
        self._left -= len(chunk)
        self._buf += chunk
        return True


_raw_head = None
if speedups.codec is not None:
    speedups.codec.setup(UwsgiError)
    _decode_environ = speedups.codec.decode_environ
    _raw_head = speedups.codec.raw_head

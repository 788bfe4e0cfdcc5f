"""Forward a WSGI request to a uwsgi server and stream its answer back: the Python
counterpart of Plack::App::uWSGI (examples/lib/Plack/App/uWSGI.pm), as nginx's `uwsgi_pass`.

    app = UwsgiPass("127.0.0.1:4000", modifier1=5,
                    vars={"UWSGI_FASTROUTER_KEY": "psgi_cluster"}, timeout=30)

Per request, one uwsgi packet (pymaster.protocols.uwsgi) carries the CGI variables of the
environ and every `HTTP_*` header, then the extra `vars`; the request body follows it, read
from `wsgi.input` and sent in pieces as it arrives (a chunked upload is spooled first to
learn its length, which the uwsgi protocol needs). SCRIPT_NAME and PATH_INFO go as the
environ has them: under a mount (pymaster's `--mount` + `--manage-script-name`, as Plack's
`mount` under plackup) the backend sees SCRIPT_NAME = the mountpoint and PATH_INFO = the
rest, REQUEST_URI the original; a backend app under uWSGI or pymaster gets them as sent.

The answer (`HTTP/1.x NNN reason` or a CGI `Status:` head, then the body until the server
closes) becomes the WSGI response: headers as sent minus the hop-by-hop ones (the WSGI
server frames its own response), a chunked body decoded, the body yielded as it arrives.
Errors, each a short text/plain answer naming the server and the cause (and one line on
wsgi.errors): cannot connect or no valid head → 502, no answer within `timeout` seconds
(per connect, send or read wait) → 504, vars over 64 KiB → 500. Anything the server itself
answers (a fastrouter's 503 for a key without nodes) passes through. A body cut short
after the head raises `UpstreamError`, so the WSGI server closes the connection instead of
ending the response as if it were complete.
"""

from __future__ import annotations

import http
import re
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote

from pymaster.protocols import address
from pymaster.protocols.uwsgi import UwsgiError, content_length, encode_packet

READ_SIZE = 65536
MAX_HEAD = 1 << 20  # the response head, as Plack::App::uWSGI allows
SPOOL_MEMORY = 1 << 20  # a chunked upload past this goes to a temporary file

# environ keys sent besides every HTTP_* header (REQUEST_SCHEME and HTTPS are derived)
CGI_KEYS = (
    "REQUEST_METHOD",
    "REQUEST_URI",
    "PATH_INFO",
    "QUERY_STRING",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "REMOTE_USER",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "DOCUMENT_ROOT",
)
# response headers about the connection to the server, not the resource (RFC 9110 7.6.1)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "status",
    }
)
_STATUS_LINE = re.compile(r"^HTTP/\d+(?:\.\d+)?[ \t]+(\d{3})(?:[ \t]+(.*))?$")
_HEADER = re.compile(r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*:[ \t]*(.*?)[ \t]*$")
_BAD_VALUE = re.compile(r"[\r\n\0]")
_REASONS = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}

StartResponse = Callable[..., Any]


class UpstreamError(OSError):
    """The server's answer broke off after its head was relayed."""


class _Failed(Exception):
    """A request that gets an error answer of our own (code, message)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _latin1(value: str) -> bytes:
    """A WSGI environ string as the bytes it stands for (PEP 3333: latin-1); text that is
    not latin-1 (set by an app, not read off the wire) goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class UwsgiPass:
    """A WSGI app forwarding every request to the uwsgi server at `pass_` (`host:port`,
    `[v6]:port`, a unix path or `@abstract`), with `modifier1`/`modifier2` in the packet
    header and `vars` added to (or replacing) the request's variables."""

    def __init__(
        self,
        pass_: str,
        *,
        modifier1: int = 0,
        modifier2: int = 0,
        vars: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ):
        self.address = address.parse(pass_, "uwsgi_pass server")
        for name, value in (("modifier1", modifier1), ("modifier2", modifier2)):
            if not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"UwsgiPass {name} {value!r}: expected an integer 0-255")
        if not timeout > 0:
            raise ValueError(f"UwsgiPass timeout {timeout!r}: expected seconds > 0")
        self.modifier1 = modifier1
        self.modifier2 = modifier2
        self.vars = {str(k): str(v) for k, v in (vars or {}).items()}
        for key in self.vars:
            if not key:
                raise ValueError("UwsgiPass vars: a variable name cannot be empty")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"UwsgiPass({self.address.text!r}, modifier1={self.modifier1})"

    # -- the request ----------------------------------------------------------------
    def request_vars(self, environ: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
        """The uwsgi variables for `environ`, in a stable order."""
        out: dict[str, str] = {}
        for key in CGI_KEYS:
            value = environ.get(key)
            if isinstance(value, str) and (value or key not in ("CONTENT_TYPE", "CONTENT_LENGTH")):
                out[key] = value
        for key in sorted(environ):
            value = environ[key]
            if key.startswith("HTTP_") and isinstance(value, str):
                out[key] = value
        for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING"):
            out.setdefault(key, "")
        if "REQUEST_URI" not in out:
            uri = quote(_latin1(out["SCRIPT_NAME"] + out["PATH_INFO"]), safe="/;=,~!$&'()*+:@")
            out["REQUEST_URI"] = uri + ("?" + out["QUERY_STRING"] if out["QUERY_STRING"] else "")
        scheme = environ.get("wsgi.url_scheme") or "http"
        out["REQUEST_SCHEME"] = scheme
        if scheme == "https":
            out["HTTPS"] = "on"
        out.update(self.vars)
        return [(_latin1(k), _latin1(v)) for k, v in out.items()]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse):
        sock = None
        body: IO[bytes] | None = None
        try:
            pairs = self.request_vars(environ)
            body, length, spooled = self._body(environ)
            if spooled:  # the spooled upload goes with its length, no longer chunked
                drop = (b"CONTENT_LENGTH", b"HTTP_TRANSFER_ENCODING")
                pairs = [(k, v) for k, v in pairs if k not in drop]
                pairs.append((b"CONTENT_LENGTH", str(length).encode()))
            try:
                packet = encode_packet(self.modifier1, pairs, self.modifier2)
            except UwsgiError as exc:
                raise _Failed(500, f"cannot build the uwsgi request: {exc}") from None
            sock = self._connect()
            if self._send(sock, packet) and body is not None:
                self._send_body(sock, body, length)
            status, headers, rest = self._head(sock)
        except _Failed as exc:
            if sock is not None:
                sock.close()
            return self._error(environ, start_response, exc.code, str(exc))
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            if body is not None and body is not environ.get("wsgi.input"):
                body.close()  # the spool
        chunked = any(
            n.lower() == "transfer-encoding" and "chunked" in v.lower() for n, v in headers
        )
        relay = _Relay(self, sock, rest, chunked, self._declared_length(headers, chunked))
        start_response(status, self._forwarded(headers, chunked))
        return relay

    @staticmethod
    def _body(environ: Mapping[str, Any]) -> tuple[IO[bytes] | None, int, bool]:
        """(stream, length, spooled): CONTENT_LENGTH bytes of `wsgi.input`, or a chunked
        upload (no CONTENT_LENGTH) read into a spool to learn its length (spooled True)."""
        stream = environ.get("wsgi.input")
        if stream is None:
            return None, 0, False
        declared = environ.get("CONTENT_LENGTH")
        if declared:
            try:
                length = content_length(declared)
            except UwsgiError as exc:
                raise _Failed(500, f"cannot build the uwsgi request: {exc}") from None
            return (stream if length else None), length, False
        if "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return None, 0, False
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        total = 0
        while chunk := stream.read(READ_SIZE):
            spool.write(chunk)
            total += len(chunk)
        spool.seek(0)
        return spool, total, True

    # -- the connection -------------------------------------------------------------
    def _connect(self) -> socket.socket:
        where = self.address.text
        try:
            family, sockaddr = self.address.resolve()
        except address.AddressError as exc:
            raise _Failed(502, str(exc)) from None
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            raise _Failed(
                504, f"cannot connect to {where}: timed out after {self.timeout:g} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise _Failed(502, f"cannot connect to {where}: {exc.strerror or exc}") from None
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        """True when all of `data` went out, False when the server stopped reading (its
        answer, if any, is still the one to relay)."""
        try:
            sock.sendall(data)
        except TimeoutError:
            raise _Failed(
                504, f"timed out after {self.timeout:g} s sending to {self.address.text}"
            ) from None
        except OSError:
            return False
        return True

    def _send_body(self, sock: socket.socket, body: IO[bytes], length: int) -> None:
        """`length` bytes of `body` to the server, piece by piece as they are read."""
        left = length
        while left > 0:
            chunk = body.read(min(READ_SIZE, left))
            if not chunk:
                return  # the client sent less than announced: the server sees it too
            left -= len(chunk)
            if not self._send(sock, chunk):
                return

    def _recv(self, sock: socket.socket) -> bytes:
        try:
            return sock.recv(READ_SIZE)
        except TimeoutError:
            raise _Failed(
                504, f"no response from {self.address.text} within {self.timeout:g} s"
            ) from None
        except OSError as exc:
            raise _Failed(502, f"reading from {self.address.text}: {exc.strerror or exc}") from None

    def _head(self, sock: socket.socket) -> tuple[str, list[tuple[str, str]], bytes]:
        """(status, headers, body bytes read past the head), interim 1xx answers skipped."""
        where = self.address.text
        buf = b""
        while True:
            end = _head_end(buf)
            if end is not None:
                head, buf = buf[: end[0]], buf[end[1] :]
                status, headers = _parse_head(head.decode("latin-1"), where)
                code = int(status[:3])
                if code == 101:
                    raise _Failed(502, f"{where} switched protocols (101): not relayable over WSGI")
                if 100 <= code < 200:
                    continue
                return status, headers, buf
            if len(buf) > MAX_HEAD:
                raise _Failed(502, f"response head from {where} over {MAX_HEAD} bytes")
            chunk = self._recv(sock)
            if not chunk:
                if buf:
                    raise _Failed(502, f"incomplete response head from {where}: {_excerpt(buf)}")
                raise _Failed(502, f"empty response from {where}")
            buf += chunk

    # -- the answer -----------------------------------------------------------------
    @staticmethod
    def _declared_length(headers: list[tuple[str, str]], chunked: bool) -> int | None:
        if chunked:
            return None
        for name, value in headers:
            if name.lower() == "content-length" and value.isdigit():
                return int(value)
        return None

    @staticmethod
    def _forwarded(headers: list[tuple[str, str]], chunked: bool) -> list[tuple[str, str]]:
        drop = set(HOP_BY_HOP)
        for name, value in headers:
            if name.lower() == "connection":
                drop.update(t.strip().lower() for t in value.split(",") if t.strip())
        if chunked:
            drop.add("content-length")
        return [(n, v) for n, v in headers if n.lower() not in drop]

    def _error(self, environ, start_response: StartResponse, code: int, message: str):
        errors = environ.get("wsgi.errors")
        if errors is not None:
            uri = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
            errors.write(f"uwsgi_pass {self.address.text}: {code} {message} [{uri}]\n")
        body = f"{code} {_REASONS[code]}: {message}\n".encode()
        start_response(
            f"{code} {_REASONS[code]}",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]


def _head_end(buf: bytes) -> tuple[int, int] | None:
    """(end of the head, start of the body) once a blank line is in `buf`."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None
    if lf < 0 or 0 <= crlf < lf:
        return crlf, crlf + 4
    return lf, lf + 2


def _parse_head(head: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """`HTTP/1.1 200 OK` + headers, or CGI headers with `Status: 200 OK` (200 when only
    Content-Type or Location says there is an answer)."""
    lines = head.replace("\r\n", "\n").split("\n")
    status = None
    match = _STATUS_LINE.match(lines[0]) if lines else None
    if match:
        status = _status(int(match[1]), match[2])
        lines = lines[1:]
    headers: list[tuple[str, str]] = []
    content = False
    for line in lines:
        if line[:1] in (" ", "\t") and headers:  # an obsolete folded continuation
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        found = _HEADER.match(line)
        if not found or _BAD_VALUE.search(found[2]):
            raise _Failed(
                502, f"bad response head from {where}: {_excerpt(head.encode('latin-1'))}"
            )
        name, value = found[1], found[2]
        lname = name.lower()
        if status is None and lname == "status":
            code = re.match(r"^(\d{3})(?:[ \t]+(.*))?$", value)
            if code:
                status = _status(int(code[1]), code[2])
        content = content or lname in ("content-type", "location")
        headers.append((name, value))
    if status is None:
        if not content:
            raise _Failed(
                502, f"bad response head from {where}: {_excerpt(head.encode('latin-1'))}"
            )
        status = "200 OK"
    return status, headers


def _status(code: int, reason: str | None) -> str:
    if not 100 <= code <= 999:
        raise _Failed(502, f"bad status {code}")
    if not reason or not reason.strip():
        try:
            reason = http.HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
    return f"{code} {reason.strip()}"


def _excerpt(data: bytes) -> str:
    text = data[:200].decode("latin-1")
    text = re.sub(r"[^\x20-\x7e]", lambda m: f"\\x{ord(m[0]):02x}", text)
    return text + ("..." if len(data) > 200 else "")


class _Relay:
    """The response body: the server's bytes as they arrive (dechunked when chunked);
    `close()` closes the connection (the WSGI server calls it at the end or on abort)."""

    def __init__(
        self,
        owner: UwsgiPass,
        sock: socket.socket,
        rest: bytes,
        chunked: bool,
        length: int | None,
    ):
        self.owner = owner
        self.sock: socket.socket | None = sock
        self.rest = rest
        self.chunked = chunked
        self.length = length

    def _raw(self) -> Iterator[bytes]:
        where = self.owner.address.text
        if self.rest:
            yield self.rest
            self.rest = b""
        while self.sock is not None:
            try:
                chunk = self.sock.recv(READ_SIZE)
            except TimeoutError:
                raise UpstreamError(
                    f"uwsgi_pass {where}: no more of the body within {self.owner.timeout:g} s"
                ) from None
            except OSError as exc:
                raise UpstreamError(f"uwsgi_pass {where}: reading the body: {exc}") from None
            if not chunk:
                return
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        where = self.owner.address.text
        if self.chunked:
            yield from _dechunk(self._raw(), where)
            return
        got = 0
        for chunk in self._raw():
            if self.length is not None and got + len(chunk) > self.length:
                chunk = chunk[: self.length - got]
            got += len(chunk)
            if chunk:
                yield chunk
            if self.length is not None and got >= self.length:
                return
        if self.length is not None and got < self.length:
            raise UpstreamError(
                f"uwsgi_pass {where}: the body ended after {got} of {self.length} bytes"
            )

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _dechunk(raw: Iterator[bytes], where: str) -> Iterator[bytes]:
    """The data of a chunked body (extensions and trailers dropped); UpstreamError when it
    ends before the last chunk or is malformed."""
    buf = bytearray()
    source = iter(raw)

    def more() -> None:
        chunk = next(source, None)
        if chunk is None:
            raise UpstreamError(f"uwsgi_pass {where}: the chunked body ended before its last chunk")
        buf.extend(chunk)

    while True:
        while (eol := buf.find(b"\n")) < 0:
            if len(buf) > 4096:
                raise UpstreamError(f"uwsgi_pass {where}: bad chunk size line")
            more()
        line = bytes(buf[:eol]).split(b";", 1)[0].strip()
        del buf[: eol + 1]
        try:
            size = int(line, 16)
        except ValueError:
            raise UpstreamError(f"uwsgi_pass {where}: bad chunk size {line[:20]!r}") from None
        if size == 0:
            return  # trailers, if any, are not relayed
        while len(buf) < size + 2:
            if len(buf) >= size and buf[size : size + 1] == b"\n":
                break
            more()
        yield bytes(buf[:size])
        del buf[:size]
        if buf[:2] == b"\r\n":
            del buf[:2]
        elif buf[:1] == b"\n":
            del buf[:1]

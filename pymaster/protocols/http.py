"""HTTP/1.1 request parsing (httptools) and response head writing for `--http-socket`.

`RequestParser` is fed bytes and yields complete requests (method, target, version, headers,
body spooled to a file, keep-alive); limits raise `HttpError` carrying the status to answer
(400 bad request, 413 body too large, 431 headers too large).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

import httptools

REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
SPOOL_IN_MEMORY = 1 << 20


class HttpError(Exception):
    """A request that must be refused with `status`; `reason` names what was wrong."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {REASONS.get(status, '')}: {reason}")
        self.status = status
        self.reason = reason


@dataclass
class Request:
    method: str = ""
    target: str = ""
    version: str = "1.1"
    headers: list = field(default_factory=list)  # [(name bytes, value bytes)]
    head_size: int = 0
    body: tempfile.SpooledTemporaryFile | None = None
    body_size: int = 0
    keep_alive: bool = True
    expect_continue: bool = False


class RequestParser:
    """Incremental parser for one connection; `feed()` returns finished requests."""

    def __init__(self, max_head: int = 8192, max_body: int = 0):
        self.max_head = max_head
        self.max_body = max_body
        self._parser = httptools.HttpRequestParser(self)
        self._current: Request | None = None
        self._done: list[Request] = []
        self._head_bytes = 0
        self._url = b""
        self.headers_complete = False
        self.error: HttpError | None = None  # set when requests before it completed

    # httptools callbacks ------------------------------------------------------------
    def on_message_begin(self):
        self._current = Request()
        self._url = b""
        self._head_bytes = 0
        self.headers_complete = False

    def on_url(self, url: bytes):
        self._url += url
        self._count(len(url))

    def _req(self) -> Request:
        """The request being parsed (httptools calls back only between begin and complete)."""
        assert self._current is not None, "httptools callback outside a message"
        return self._current

    def on_header(self, name: bytes, value: bytes):
        self._req().headers.append((name, value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self):
        req = self._req()
        p = self._parser
        req.method = p.get_method().decode("latin-1")
        req.target = self._url.decode("latin-1")
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        req.head_size = self._head_bytes
        length = None
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"expect" and value.lower() == b"100-continue":
                req.expect_continue = True
            elif lname == b"content-length":
                length = int(value) if value.isdigit() else None
        if self.max_body and length is not None and length > self.max_body:
            raise HttpError(413, f"Content-Length {length} over the limit of {self.max_body}")
        self.headers_complete = True

    def on_body(self, body: bytes):
        req = self._req()
        if req.body is None:
            req.body = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)
        req.body.write(body)
        req.body_size += len(body)
        if self.max_body and req.body_size > self.max_body:
            raise HttpError(413, f"request body over the limit of {self.max_body} bytes")

    def on_message_complete(self):
        req = self._req()
        if req.body is not None:
            req.body.seek(0)
        self._done.append(req)
        self._current = None

    # API -----------------------------------------------------------------------------
    def _count(self, n: int):
        self._head_bytes += n
        if self._head_bytes > self.max_head:
            raise HttpError(431, f"request head over {self.max_head} bytes (--buffer-size)")

    def feed(self, data: bytes) -> list[Request]:
        """Finished requests; a malformed one raises HttpError, or, when requests before it
        in the same bytes completed, is kept in `self.error` for after they are served."""
        try:
            self._parser.feed_data(data)
        except (HttpError, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            error = _as_http_error(exc)
            if not self._done:
                raise error from None
            self.error = error
        done, self._done = self._done, []
        return done

    @property
    def in_message(self) -> bool:
        return self._current is not None


def _as_http_error(exc: Exception) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, httptools.HttpParserUpgrade):
        return HttpError(501, "protocol upgrade is not supported")
    if isinstance(exc.__context__, HttpError):
        return exc.__context__
    return HttpError(400, str(exc) or "malformed request")


def error_response(status: int, detail: str = "") -> bytes:
    """A complete small HTTP/1.1 response that closes the connection."""
    reason = REASONS.get(status, "Error")
    body = (
        f"{status} {reason}\n{detail}\n".encode("latin-1", "replace")
        if detail
        else f"{status} {reason}\n".encode()
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class HttpFraming:
    """Response framing on an HTTP socket: HTTP/1.1 keep-alive, chunked when length unknown."""

    __slots__ = ("version", "keep_alive", "chunked")

    def __init__(self, version: str, keep_alive: bool):
        self.version = version
        self.keep_alive = keep_alive
        self.chunked = False

    def head(self, status: str, headers, length, no_body) -> bytes:
        parts = [f"HTTP/{self.version} {status}\r\n"]
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname == "content-length":
                has_length = True
            elif lname == "connection":
                if value.lower() == "close":
                    self.keep_alive = False
                continue  # hop-by-hop: the server says it below
            elif lname == "transfer-encoding":
                continue  # hop-by-hop: the server frames the body
            parts.append(f"{name}: {value}\r\n")
        if not has_length and not no_body:
            if length is not None:
                parts.append(f"Content-Length: {length}\r\n")
            elif self.version == "1.1" and self.keep_alive:
                self.chunked = True
                parts.append("Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False
        elif (
            not has_length and no_body and length is not None and int(status[:3]) not in (204, 304)
        ):
            parts.append(f"Content-Length: {length}\r\n")
        if self.version == "1.1":
            if not self.keep_alive:
                parts.append("Connection: close\r\n")
        elif self.keep_alive:
            parts.append("Connection: keep-alive\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    def chunk(self, data) -> bytes:
        if self.chunked:
            return b"%x\r\n%s\r\n" % (len(data), bytes(data))
        return bytes(data)

    def finish(self) -> bytes:
        return b"0\r\n\r\n" if self.chunked else b""

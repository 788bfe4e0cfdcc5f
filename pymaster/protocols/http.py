"""HTTP/1.1 request parsing (httptools) and response head writing for `--http-socket`.

`RequestParser` is fed bytes and returns the requests whose heads are complete (method,
target, version, headers, keep-alive); each request's body is an `HttpInput` that the same
parser keeps filling as more bytes are fed, so a body is read only as the app reads it.
Limits raise `HttpError` carrying the status to answer (400 bad request, 413 body too
large, 431 headers too large).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from pymaster.protocols import speedups
from pymaster.protocols.body import BodyError, InputStream

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
DRAIN_BYTES = 1 << 20  # unread body bytes a server reads away to keep a connection
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpError(Exception):
    """A request that must be refused with `status`; `reason` names what was wrong."""

    def __init__(self, status: int, reason: str):
        super().__init__(f"{status} {REASONS.get(status, '')}: {reason}")
        self.status = status
        self.reason = reason


class HttpInput(InputStream):
    """One request's body. The parser pushes what it decodes (Content-Length or chunked);
    when the app wants more, `fill()` (set by the server) reads the socket and feeds the
    parser. Without `fill` (bytes fed by hand) a read ends where the bytes end."""

    def __init__(self, length: int | None, expect_continue: bool = False):
        super().__init__()
        self.length = length  # None: chunked
        self.received = 0
        self.complete = False
        self.error: HttpError | None = None
        self.expect_continue = expect_continue
        self.continued = False  # 100 Continue sent
        self.fill: Callable[[], None] | None = None

    def push(self, data: bytes) -> None:
        self.received += len(data)
        if not self.closed:
            self._buf += data

    def _more(self, want: int) -> bool:
        if self.error is not None:
            raise BodyError(f"request body: {self.error.reason}", self.error.status)
        if self.complete or self.closed or self.fill is None:
            return False
        self.fill()
        if self.error is not None:
            raise BodyError(f"request body: {self.error.reason}", self.error.status)
        return True

    def unread(self) -> int | None:
        """Body bytes still to come: None when unknown (chunked)."""
        if self.complete:
            return 0
        return None if self.length is None else self.length - self.received

    def drainable(self, budget: int = DRAIN_BYTES) -> bool:
        """Can the rest be read away after the response so that the connection is kept?"""
        if self.complete:
            return True
        if self.error is not None or (self.expect_continue and not self.continued):
            return False  # broken, or the client waits for a 100 Continue that never came
        left = self.unread()
        return left is None or left <= budget


@dataclass
class Request:
    method: str = ""
    target: str = ""
    version: str = "1.1"
    headers: list = field(default_factory=list)  # [(name bytes, value bytes)]
    head_size: int = 0
    body: HttpInput | None = None
    keep_alive: bool = True
    expect_continue: bool = False
    upgrade: bool = False

    @property
    def body_size(self) -> int:
        return self.body.received if self.body is not None else 0


class RequestParser:
    """Incremental parser for one connection; `feed()` returns requests whose heads completed.

    The request whose body is still arriving keeps being filled by later `feed()` calls.
    After a parse error or a protocol upgrade nothing more is parsed (`broken`): the
    connection ends after the requests already returned. An error in the body of a request
    already handed out goes to that body (its reader raises BodyError); an error after
    complete requests of the same bytes waits in `self.error` until they are served.
    """

    def __init__(self, max_head: int = 8192, max_body: int = 0):
        self.max_head = max_head
        self.max_body = max_body
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._current: Request | None = None
        self._done: list[Request] = []
        self._head_bytes = 0
        self._url = b""
        self.headers_complete = False
        self.error: HttpError | None = None  # set when requests before it completed
        self.broken = False
        self.upgraded = b""  # after an upgrade request: the bytes that followed its head

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
        assert p is not None
        req.method = p.get_method().decode("latin-1")
        req.target = self._url.decode("latin-1")
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        req.head_size = self._head_bytes
        length = None
        chunked = False
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"expect" and value.lower() == b"100-continue":
                req.expect_continue = True
            elif lname == b"content-length":
                length = int(value) if value.isdigit() else None
            elif lname == b"transfer-encoding":
                chunked = True
        if self.max_body and length is not None and length > self.max_body:
            raise HttpError(413, f"Content-Length {length} over the limit of {self.max_body}")
        if p.should_upgrade():  # answered once, then the connection closes (never upgraded)
            req.upgrade = True
            req.keep_alive = False
        elif chunked or length:
            req.body = HttpInput(None if chunked else length, req.expect_continue)
        self._done.append(req)
        self.headers_complete = True

    def on_body(self, body: bytes):
        req = self._req()
        if req.body is None:  # an upgrade request's "body" is the next protocol: ignored
            return
        req.body.push(body)
        if self.max_body and req.body.received > self.max_body:
            raise HttpError(413, f"request body over the limit of {self.max_body} bytes")

    def on_message_complete(self):
        req = self._req()
        if req.body is not None:
            req.body.complete = True
        self._current = None

    # API -----------------------------------------------------------------------------
    def _count(self, n: int):
        self._head_bytes += n
        if self._head_bytes > self.max_head:
            raise HttpError(431, f"request head over {self.max_head} bytes (--buffer-size)")

    def feed(self, data: bytes) -> list[Request]:
        """Requests whose heads completed in these bytes. A malformed request raises
        HttpError, or, when requests before it in the same bytes completed, is kept in
        `self.error` for after they are served."""
        if self.broken or self._parser is None:
            return []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:  # the bytes after the head: the new protocol
            self.broken = True
            self.upgraded = data[exc.args[0] :] if exc.args else b""
        except (HttpError, httptools.HttpParserError) as exc:
            self.broken = True
            error: HttpError | None = _as_http_error(exc)
            cur = self._current
            if cur is not None and cur.body is not None:
                if cur in self._done:  # not handed out yet: never served
                    self._done.remove(cur)
                else:  # the app reading this body gets the error
                    cur.body.error = error
                    error = None
            if error is not None:
                if not self._done:
                    raise error from None
                self.error = error
        done, self._done = self._done, []
        return done

    @property
    def in_message(self) -> bool:
        return self._current is not None

    @property
    def partial_head(self) -> bool:
        """Bytes of a request head arrived, the head is not complete yet."""
        return self._current is not None and not self.headers_complete

    def close(self) -> None:
        """The connection ended: the body in progress is dropped and the parser released."""
        cur = self._current
        if cur is not None and cur.body is not None:
            cur.body.close()
        self._current = None
        self._done = []
        self._parser = None
        self.broken = True


def _as_http_error(exc: Exception) -> HttpError:
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, httptools.HttpParserUpgrade):
        return HttpError(501, "protocol upgrade is not supported")
    if isinstance(exc.__context__, HttpError):
        return exc.__context__
    return HttpError(400, str(exc) or "malformed request")


def headers_to_environ(env: dict, headers) -> None:
    """A request's header fields [(name bytes, value bytes)] into a WSGI environ: HTTP_NAME
    (upper case, "-" as "_"), CONTENT_TYPE and CONTENT_LENGTH as they are; a name with "_"
    is dropped (X_Forwarded_For would shadow X-Forwarded-For); repeated fields are joined
    with "," ("; " for Cookie). The compiled codec's when it runs (protocols/speedups.py)."""
    if _headers_environ is not None and _headers_environ(env, headers):
        return
    _headers_to_environ_py(env, headers)


def _headers_to_environ_py(env: dict, headers) -> None:
    for name, value in headers:
        if b"_" in name:
            continue
        key = name.decode("latin-1").upper().replace("-", "_")
        val = value.decode("latin-1")
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            env[key] = val
            continue
        key = "HTTP_" + key
        if key in env:
            env[key] += ("; " if key == "HTTP_COOKIE" else ",") + val
        else:
            env[key] = val


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

    __slots__ = ("version", "keep_alive", "chunked", "body")

    def __init__(self, version: str, keep_alive: bool, body: HttpInput | None = None):
        self.version = version
        self.keep_alive = keep_alive
        self.chunked = False
        self.body = body  # the request's body: a rest too big to read away means close

    def usable(self) -> bool:
        """Can the connection carry another request after this response?"""
        return self.keep_alive and (self.body is None or self.body.drainable())

    def head(self, status: str, headers, length, no_body) -> bytes:
        if self.keep_alive and not self.usable():
            self.keep_alive = False
        if _http_head is not None:
            done = _http_head(self.version, status, headers, length, no_body, self.keep_alive)
            if done is not None:
                head, self.keep_alive, self.chunked = done
                return head
        return self._head_py(status, headers, length, no_body)

    def _head_py(self, status: str, headers, length, no_body) -> bytes:
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


# the compiled framing (protocols/speedups.py); None: the Python one above
_http_head = speedups.codec.http_head if speedups.codec is not None else None
_headers_environ = speedups.codec.headers_environ if speedups.codec is not None else None

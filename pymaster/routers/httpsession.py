"""One client connection of the HTTP router: HTTP/1.1 in (httptools), uwsgi packets out.

The client side is an asyncio Protocol feeding httptools (strict llhttp: Content-Length
with Transfer-Encoding, duplicate Content-Lengths, bad chunk sizes, obs-fold and bad header
bytes are parse errors, answered 400 and closed). A coroutine per connection serves the
parsed requests in order (keep-alive, pipelining): it picks a node (the router's pools or
static nodes), connects (next node on failure, 502 when all refuse, 503 with no node, 504
when connects time out), sends the uwsgi vars uWSGI's HTTP router sends, then the body:

* Content-Length bodies are streamed as they arrive, with flow control both ways (a full
  backend buffer pauses reading the client and the reverse), so RSS stays flat;
* chunked bodies are de-chunked into an anonymous temp file (up to --http-chunked-limit,
  else 413) and sent with CONTENT_LENGTH once complete: a uwsgi backend needs the length.

The backend's HTTP-like answer is relayed as it comes: its head is parsed (httptools) to
decide keep-alive (length, chunked, `Connection`), `Transfer-Encoding: chunked` is added
and the body re-framed for a keep-alive answer with no length (--http-auto-chunked), else
`Connection: close` is added and the connection closed after it. A 101 to a WebSocket
upgrade (--http-websockets) turns the session into a raw tunnel.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from pymaster.log import log
from pymaster.protocols.address import Address
from pymaster.protocols.address import parse as parse_address
from pymaster.protocols.http import REASONS
from pymaster.protocols.uwsgi import HEADER, MAX_DATASIZE
from pymaster.routers.corerouter import open_node

if TYPE_CHECKING:
    from pymaster.routers.httprouter import HttpRouter
    from pymaster.routers.pools import Node

MAX_RETRIES = 3
BODY_BUFFER = 256 * 1024  # body bytes buffered before the client is paused
MAX_RESPONSE_HEAD = 65536
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
SPOOL_CHUNK = 65536
_REASONS = {405: "Method Not Allowed", 413: "Request Entity Too Large", 504: "Gateway Timeout"}


class HttpFailure(Exception):
    """A request the router answers itself: status and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_answer(status: int, text: str) -> bytes:
    """The router's own answer (closes the connection): status line and a one-line body."""
    reason = _REASONS.get(status) or REASONS.get(status, "Error")
    body = f"{status} {reason}: {text}\n".encode("latin-1", "replace")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body


class Request:
    """A parsed request head and its body as it arrives."""

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "length",
        "chunked",
        "expect",
        "upgrade",
        "close",
        "chunks",
        "buffered",
        "received",
        "complete",
        "sink",
        "host",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunked = False
        self.expect = False
        self.upgrade = False
        self.close = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0
        self.complete = False
        self.sink: Callable[[bytes], None] | None = None  # where the body goes once served
        self.host = b""


class _Parser:
    """httptools callbacks for one connection; complete heads go to `session.heads`."""

    def __init__(self, session: HttpSession):
        self.session = session
        self.current: Request | None = None
        self.head_bytes = 0
        self.max_head = session.router.max_head
        self.max_headers = session.router.max_headers

    def on_message_begin(self) -> None:
        self.current = Request()
        self.head_bytes = 0
        self.session.head_started()

    def _count(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > self.max_head:
            raise HttpFailure(431, f"request head over {self.max_head} bytes")

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        self._count(len(name) + len(value) + 4)
        if len(req.headers) >= self.max_headers:
            raise HttpFailure(431, f"more than {self.max_headers} header lines")
        req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        p = self.session.parser
        req.method = p.get_method().decode("latin-1")
        req.version = p.get_http_version()
        req.close = not p.should_keep_alive()
        if req.version not in ("1.0", "1.1"):
            raise HttpFailure(400, f"unsupported protocol version HTTP/{req.version}")
        lengths = set()
        for name, value in req.headers:
            lname = name.lower()
            if lname == b"content-length":
                lengths.add(value)
            elif lname == b"transfer-encoding":
                req.chunked = True
            elif lname == b"expect" and value.lower() == b"100-continue":
                req.expect = True
            elif lname == b"host":
                if req.host:
                    raise HttpFailure(400, "more than one Host header")
                req.host = value
        # llhttp refuses these already; checked again because the vars depend on them
        if len(lengths) > 1:
            raise HttpFailure(400, "different Content-Length headers")
        if lengths and req.chunked:
            raise HttpFailure(400, "Content-Length together with Transfer-Encoding")
        if lengths:
            value = lengths.pop()
            if not value.isdigit():
                raise HttpFailure(400, "invalid Content-Length")
            req.length = int(value)
        if len(req.host) > 255:
            raise HttpFailure(400, "Host header over 255 bytes")
        s = self.session
        s.heads.append(req)
        if len(s.heads) > 1 or s.phase in ("backend", "response"):
            s.pause_client("pipeline")  # pipelined: read on once it is its turn
        s.wake()

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        req.received += len(body)
        if req.sink is not None:
            req.sink(body)
            return
        req.chunks.append(body)
        req.buffered += len(body)
        if req.buffered > BODY_BUFFER:
            self.session.pause_client("body")

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        req.complete = True
        self.current = None
        self.session.wake()


class BackendSide(asyncio.Protocol):
    """The connection to the chosen node."""

    transport: asyncio.Transport

    def __init__(self, session: HttpSession, node: Node):
        self.session = session
        self.node = node
        self.paused = False
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.node.rx += len(data)
        self.session.backend_data(data)

    def eof_received(self) -> bool:
        self.session.backend_done(None)
        return False

    def connection_lost(self, exc) -> None:
        self.session.backend_done(exc)
        self._release()

    def pause_writing(self) -> None:  # the node does not keep up: stop reading the client
        self.paused = True
        self.session.pause_client("backend")

    def resume_writing(self) -> None:
        self.paused = False
        self.session.last = self.session.loop.time()  # progress: not idle
        self.session.resume_client("backend")
        self._release()

    def _release(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    async def drain(self) -> None:
        if self.paused and not self.transport.is_closing():
            self.drained = self.session.loop.create_future()
            await self.drained

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():  # a node that answered early may be gone
            self.node.tx += len(data)
            self.transport.write(data)


class HttpSession(asyncio.Protocol):
    """A client connection on an --http / --https socket."""

    transport: asyncio.Transport

    def __init__(self, router: HttpRouter, port: str, https: bool, redirect: str | None):
        self.router = router
        self.redirect_port = redirect
        self.loop = router.loop
        self.server_port = port
        self.https = https
        self.parser_state = _Parser(self)
        self.parser = httptools.HttpRequestParser(self.parser_state)
        self.heads: deque[Request] = deque()
        self.error: HttpFailure | None = None
        self.eof = False
        self.lost = False
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.pauses: set[str] = set()
        self.last = 0.0
        self.phase = "head"  # head | backend | response | tunnel | idle (keep-alive)
        self.idle_limit = router.headers_timeout
        self.key = ""
        self.backend: BackendSide | None = None
        self.node: Node | None = None
        self.tunnel = False
        self.client_paused = False
        self.requests = 0
        # the current response
        self.resp: _Response | None = None
        self.client_drained: asyncio.Future[None] | None = None
        self.client_full = False
        self.remote_addr = ""
        self.remote_port = ""
        self.router_stopping = False
        self.current: Request | None = None

    # -- client transport events ----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.remote_addr, self.remote_port = str(peer[0]), str(peer[1])
        self.last = self.loop.time()
        self.router.opened(self)
        self.task = self.loop.create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        if self.phase != "head":  # the head has --http-headers-timeout from its start
            self.last = self.loop.time()
        if self.tunnel:
            if self.backend is not None:
                self.backend.write(data)
            return
        if self.error is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # the head is complete; what follows belongs to the next protocol
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            req = self.heads[-1] if self.heads else None
            if req is not None:
                req.complete = True
                if _is_websocket(req):
                    req.upgrade = True
                    req.chunks.append(data[offset:])
                else:  # h2c and the like: served as HTTP/1.1, then closed
                    req.close = True
            self.pause_client("upgrade")
            self.wake()
        except HttpFailure as exc:
            self.error = exc
            self.wake()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpFailure):
                self.error = cause
            else:
                self.error = HttpFailure(400, str(exc) or "malformed request")
            self.wake()

    def eof_received(self) -> bool:
        self.eof = True
        if self.tunnel and self.backend is not None and self.backend.transport.can_write_eof():
            self.backend.transport.write_eof()
        self.wake()
        return True  # keep the transport: a response may still be written

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.backend is not None:
            self.backend.transport.abort()
        self.wake()
        if self.client_drained is not None and not self.client_drained.done():
            self.client_drained.set_result(None)
        self.router.closed(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.release_node()

    def pause_writing(self) -> None:  # the client does not keep up: stop reading the node
        self.client_full = True
        if self.backend is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client_full = False
        self.last = self.loop.time()  # a slow reader that reads is not idle
        if self.backend is not None:
            self.backend.transport.resume_reading()
        if self.client_drained is not None and not self.client_drained.done():
            self.client_drained.set_result(None)
        self.client_drained = None

    # -- flow control --------------------------------------------------------------------
    def pause_client(self, why: str) -> None:
        if not self.pauses:
            self.transport.pause_reading()
        self.pauses.add(why)

    def resume_client(self, why: str) -> None:
        if why in self.pauses:
            self.pauses.discard(why)
            if not self.pauses and not self.transport.is_closing():
                self.transport.resume_reading()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def head_started(self) -> None:
        if self.phase == "idle":
            self.phase = "head"
            self.idle_limit = self.router.headers_timeout
            self.last = self.loop.time()

    # -- timeouts (the router's ticker) ---------------------------------------------------
    def timed_out(self) -> None:
        phase = self.phase
        if phase == "head" and self.parser_state.current is None:
            self.abort()  # nothing of a request arrived: close quietly
        elif phase == "head":
            log(
                f"[uwsgi-http] client {self.remote_addr}:{self.remote_port}: request head "
                f"not complete after {self.router.headers_timeout:g} s: 408"
            )
            self.fail_and_close(HttpFailure(408, "request head not received in time"))
        elif phase == "backend" and self.current is not None and not self.current.complete:
            log(
                f"[uwsgi-http] client {self.remote_addr}:{self.remote_port}: request body "
                f"not received in {self.router.timeout:g} s: 408"
            )
            self.fail_and_close(HttpFailure(408, "request body not received in time"))
        elif phase == "backend" and (self.resp is None or not self.resp.head_sent):
            log(
                f'[uwsgi-http] node "{self.node.name if self.node else "?"}" for key '
                f'"{self.key}" did not answer in {self.router.timeout:g} s: 504'
            )
            self.fail_and_close(HttpFailure(504, f'no answer from the node for "{self.key}"'))
        elif phase == "idle":
            self.abort()  # keep-alive idle timeout: nothing pending
        else:
            log(f'[uwsgi-http] timeout on a session for key "{self.key}"')
            self.abort()

    def abort(self) -> None:
        if self.backend is not None:
            self.backend.transport.abort()
        self.transport.abort()

    def stopping(self) -> None:
        """The router stops gracefully: a keep-alive connection waiting for its next
        request closes now; one in a request ends after its answer."""
        if self.phase == "idle" or (self.phase == "head" and self.parser_state.current is None):
            self.close()
        self.router_stopping = True

    def fail_and_close(self, failure: HttpFailure) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.backend is not None:
            self.backend.transport.abort()
        if not self.transport.is_closing():
            self.transport.write(error_answer(failure.status, failure.reason))
            self.transport.close()

    # -- serving --------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            while True:
                req = await self.next_request()
                if req is None:
                    break
                keep = await self.handle(req)
                self.requests += 1
                if not keep or self.lost or self.router_stopping:
                    break
                self.phase = "idle"
                self.idle_limit = self.router.keepalive_timeout
                self.last = self.loop.time()
                self.resume_client("pipeline")
            self.close()
        except HttpFailure as exc:
            log(
                f"[uwsgi-http] client {self.remote_addr}:{self.remote_port}: "
                f"{exc.status} {exc.reason}"
            )
            if not self.transport.is_closing():
                self.transport.write(error_answer(exc.status, exc.reason))
            self.close()
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a session never takes the router down
            log(f"[uwsgi-http] session error: {exc!r}")
            self.transport.abort()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.transport.close()
        if not self.transport.is_closing():
            self.transport.close()

    async def next_request(self) -> Request | None:
        while True:
            if self.heads:
                req = self.heads.popleft()
                if self.heads:  # pipelined requests wait their turn
                    self.pause_client("pipeline")
                return req
            if self.error is not None:
                raise self.error
            if self.eof or self.lost:
                return None
            await self.wait()

    async def handle(self, req: Request) -> bool:
        """Serve one request; True when the connection may carry the next one."""
        router = self.router
        self.current = req
        self.phase = "backend"
        self.idle_limit = router.timeout
        self.last = self.loop.time()
        if self.redirect_port is not None:
            return self.redirect(req)
        if req.upgrade and not router.websockets:
            raise HttpFailure(400, "WebSocket upgrade refused (see --http-websockets)")
        if req.method == "CONNECT":
            raise HttpFailure(405, "CONNECT is not supported")
        limit = router.manage_expect
        if req.expect and limit:
            if limit > 1 and req.length is not None and req.length > limit:
                raise HttpFailure(413, f"Content-Length {req.length} over {limit}")
            self.transport.write(CONTINUE)
        spool = None
        if req.chunked:
            spool = await self.spool(req)
        try:
            self.key = (req.host or router.hostname.encode()).decode("latin-1")
            packet = self.packet(req, spool)
            side = await self.connect()
            self.resp = _Response(self, req)
            side.write(packet)
            body_done = await self.send_body(req, side, spool)
        finally:
            if spool is not None:
                spool.close()  # never left to the garbage collector
        # the answer is relayed by the backend callbacks; wait for its end
        resp = self.resp
        while not resp.finished and not self.lost:
            await self.wait()
        if not resp.head_sent and not self.lost:
            log(
                f'[uwsgi-http] node "{side.node.name}" for key "{self.key}" closed without an answer: 502'
            )
            self.transport.write(error_answer(502, f'the node for "{self.key}" sent no answer'))
            return False
        return resp.keep and body_done and not req.close

    def redirect(self, req: Request) -> bool:
        host = req.host.decode("latin-1").rsplit(":", 1)[0] if req.host else self.router.hostname
        port = self.redirect_port
        where = f"https://{host}{':' + port if port else ''}{req.target.decode('latin-1')}"
        self.transport.write(
            f"HTTP/1.1 301 Moved Permanently\r\nLocation: {where}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        return False

    async def spool(self, req: Request):
        """De-chunk the body into an anonymous temp file (413 over the limit)."""
        limit = self.router.chunked_limit
        spool = tempfile.TemporaryFile(dir=os.environ.get("TMPDIR"))  # noqa: SIM115
        size = 0

        def sink(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size <= limit:
                spool.write(data)

        try:
            while req.chunks:
                sink(req.chunks.popleft())
            req.buffered = 0
            self.resume_client("body")
            req.sink = sink
            while not req.complete:
                if self.lost or self.eof or self.error is not None:
                    raise HttpFailure(400, "chunked body not complete")
                if size > limit:
                    raise HttpFailure(
                        413, f"chunked body over {limit} bytes (--http-chunked-limit)"
                    )
                self.last = self.loop.time()
                await self.wait()
            if size > limit:
                raise HttpFailure(413, f"chunked body over {limit} bytes (--http-chunked-limit)")
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        req.length = size
        return spool

    def packet(self, req: Request, spool) -> bytes:
        router = self.router
        target = req.target
        raw_path, _, query = target.partition(b"?")
        if not raw_path.startswith(b"/"):
            if raw_path == b"*":
                pass
            else:
                try:
                    url = httptools.parse_url(target)
                except httptools.HttpParserInvalidURLError:
                    raise HttpFailure(400, "invalid request target") from None
                raw_path = url.path or b"/"
                query = url.query or b""
        path = urllib.parse.unquote_to_bytes(normalize_path(raw_path))
        pairs: list[tuple[bytes, bytes]] = [(b"REQUEST_METHOD", req.method.encode())]
        if b"?" in target:
            pairs += [(b"PATH_INFO", path), (b"REQUEST_URI", target)]
        else:
            pairs += [(b"REQUEST_URI", target), (b"PATH_INFO", path)]
        pairs += [
            (b"QUERY_STRING", query),
            (b"SERVER_PROTOCOL", f"HTTP/{req.version}".encode()),
            (b"SCRIPT_NAME", b""),
            *router.server_name,
            (b"SERVER_PORT", self.server_port.encode()),
            (b"UWSGI_ROUTER", b"http"),
            (b"REMOTE_ADDR", self.remote_addr.encode()),
            (b"REMOTE_PORT", self.remote_port.encode()),
        ]
        if self.https:
            pairs.append((b"HTTPS", b"on"))
        seen: dict[bytes, int] = {}
        for name, value in req.headers:
            if b"_" in name:  # X_Foo would pass for X-Foo (and Content_Length for the length)
                continue
            lname = name.lower()
            if lname == b"host" and not router.server_name:
                pairs.append((b"SERVER_NAME", value))  # --http-server-name-as-http-host
            if lname in (b"content-length", b"transfer-encoding"):
                continue  # the router frames the body: CONTENT_LENGTH is set below
            key = name.upper().replace(b"-", b"_")
            if key != b"CONTENT_TYPE":
                key = b"HTTP_" + key
            at = seen.get(key)
            if at is not None:
                pairs[at] = (key, pairs[at][1] + b", " + value)
            else:
                seen[key] = len(pairs)
                pairs.append((key, value))
        if not req.host and not router.server_name:
            pairs.append((b"SERVER_NAME", router.hostname.encode()))
        if req.length is not None:
            pairs.append((b"CONTENT_LENGTH", str(req.length).encode()))
        pairs += router.extra_vars
        return _encode(router.modifier1, pairs, router.modifier2)

    async def connect(self) -> BackendSide:
        router = self.router
        failures = timeouts = 0
        for attempt in range(MAX_RETRIES + 1):
            node = router.choose(self.key)
            if node is None:
                break
            try:
                async with asyncio.timeout(router.connect_timeout):
                    side = await self._connect(node)
            except (OSError, TimeoutError, ValueError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else _reason(exc)
                log(
                    f'[uwsgi-http] unable to connect() to node "{node.name}" '
                    f"({attempt} retries): {reason}"
                )
                failures += 1
                timeouts += isinstance(exc, TimeoutError)
                router.failed(self.key, node)
                self.last = self.loop.time()
                continue
            except asyncio.CancelledError:
                router.failed(self.key, node)
                raise
            if self.lost:
                side.transport.close()
                router.release(self.key, node)
                raise asyncio.CancelledError
            router.connected(node)
            self.node, self.backend = node, side
            if self.client_full:
                side.transport.pause_reading()
            return side
        if failures:
            status = 504 if timeouts == failures else 502
            raise HttpFailure(status, f'no node for key "{self.key}" accepted the connection')
        if router.use_subscriptions:
            raise HttpFailure(503, f'no node available for host "{self.key}"')
        raise HttpFailure(503, "no backend node available")

    async def _connect(self, node: Node) -> BackendSide:
        _t, side = await open_node(self.loop, _address(node.name), lambda: BackendSide(self, node))
        return side

    async def send_body(self, req: Request, side: BackendSide, spool) -> bool:
        """Stream the body to the node; True when all of it went (the connection may then
        carry another request)."""
        if req.upgrade:
            self.tunnel = True  # bytes after the head go raw once the node said 101
            while req.chunks:
                side.write(req.chunks.popleft())
            self.resume_client("upgrade")
            return False
        if spool is not None:
            with spool:
                while True:
                    data = spool.read(SPOOL_CHUNK)
                    if not data:
                        return True
                    if side.transport.is_closing() or self.lost:
                        return False
                    side.write(data)
                    self.last = self.loop.time()
                    await side.drain()
        if not req.length:
            return req.complete
        while req.chunks:
            side.write(req.chunks.popleft())
        req.buffered = 0
        req.sink = side.write
        self.resume_client("body")
        while not req.complete:
            if self.lost or self.eof or self.error is not None or side.transport.is_closing():
                return False
            if self.resp is not None and self.resp.finished:
                return False  # answered before the body was read: close after
            await self.wait()
        return True

    # -- the node's answer ---------------------------------------------------------------
    def backend_data(self, data: bytes) -> None:
        self.last = self.loop.time()
        if self.resp is not None:
            self.resp.feed(data)

    def backend_done(self, exc) -> None:
        if self.resp is not None:
            self.resp.end()
        self.wake()

    def release_node(self) -> None:
        if self.node is not None:
            self.router.release(self.key, self.node)
            self.node = None

    def write_client(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


class _Response:
    """The node's answer to one request, relayed as it comes."""

    def __init__(self, session: HttpSession, req: Request):
        self.s = session
        self.req = req
        self.buf = bytearray()
        self.head_sent = False
        self.finished = False
        self.keep = False
        self.remaining: int | None = None  # body bytes by Content-Length
        self.chunk_parser: httptools.HttpResponseParser | None = None
        self.chunk_info: _ResponseHead | None = None
        self.auto_chunk = False
        self.until_eof = False
        self.complete = False

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        if self.head_sent:
            self.body(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_RESPONSE_HEAD:
                self.fail("response head too large")
            return
        head, rest = bytes(self.buf[: end + 4]), bytes(self.buf[end + 4 :])
        self.buf = bytearray()
        self.head(head, rest)

    def fail(self, why: str) -> None:
        s = self.s
        log(f'[uwsgi-http] invalid answer from node for key "{s.key}": {why}: 502')
        s.write_client(error_answer(502, f'invalid answer from the node for "{s.key}"'))
        self.head_sent = True  # an answer went out
        self.keep = False
        self.finish()
        if s.backend is not None:
            s.backend.transport.abort()

    def head(self, head: bytes, rest: bytes) -> None:
        s, req = self.s, self.req
        info = _ResponseHead()
        parser = httptools.HttpResponseParser(info)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            self.fail(str(exc))
            return
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            s.write_client(head)  # interim answer; the real head follows
            if rest:
                self.feed(rest)
            return
        version = parser.get_http_version()
        router = s.router
        no_body = req.method == "HEAD" or status in (204, 304)
        if status == 101:
            if req.upgrade:
                s.write_client(head)
                self.head_sent = True
                s.phase = "tunnel"
                s.idle_limit = router.timeout
                if rest:
                    s.write_client(rest)
                self.until_eof = True
                return
            self.fail("101 without an upgrade request")
            return
        keep = (
            bool(router.keepalive_timeout)
            and req.version == "1.1"
            and version == "1.1"
            and not req.close
            and not req.upgrade
            and not info.close
            and not info.trailers
        )
        insert = b""
        if no_body:
            self.complete = True
        elif info.length is not None:
            self.remaining = info.length
        elif info.chunked:
            self.chunk_parser = parser  # continues to find the last chunk
            self.chunk_info = info
        elif keep and router.auto_chunked:
            self.auto_chunk = True
            insert = b"Transfer-Encoding: chunked\r\n"
        else:
            keep = False
            self.until_eof = True
        if not keep and not info.connection and req.version == "1.1":
            insert += b"Connection: close\r\n"
        self.keep = keep
        out = head[:-2] + insert + b"\r\n" if insert else head
        self.head_sent = True
        s.phase = "response"
        if self.complete:
            s.write_client(out)
            self.finish()
        elif rest and self.remaining is not None and len(rest) >= self.remaining:
            self.body(out + rest, len(out))  # head and body in one write
        else:
            s.write_client(out)
            if rest:
                self.body(rest)

    def body(self, data: bytes, extra: int = 0) -> None:
        """Relay body bytes (`extra` leading bytes of `data` are the head, not counted)."""
        s = self.s
        if self.s.phase == "tunnel":
            s.write_client(data)
            return
        if self.remaining is not None:
            if len(data) - extra >= self.remaining:
                data = data[: extra + self.remaining]  # anything after is not ours
                self.remaining = 0
                s.write_client(data)
                self.complete = True
                self.finish()
                return
            self.remaining -= len(data)
            s.write_client(data)
            return
        if self.chunk_parser is not None:
            s.write_client(data)
            try:
                self.chunk_parser.feed_data(data)
            except httptools.HttpParserError:
                self.keep = False
                self.finish()
                s.close()
                return
            if self.chunk_info is not None and self.chunk_info.done:
                self.complete = True
                self.finish()
            return
        if self.auto_chunk:
            if data:
                s.write_client(b"%X\r\n%b\r\n" % (len(data), data))
            return
        s.write_client(data)

    def end(self) -> None:
        """The node closed its side."""
        if self.finished:
            return
        if self.auto_chunk:
            self.s.write_client(b"0\r\n\r\n")
            self.complete = True
        elif self.until_eof:
            self.complete = True
        if not self.complete:
            self.keep = False  # cut short: the client must not take it for complete
            if self.head_sent:
                self.s.transport.abort()
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        s = self.s
        if s.backend is not None:
            s.backend.transport.close()
            s.backend = None
        s.release_node()
        s.tunnel = False
        s.wake()


class _ResponseHead:
    """httptools callbacks for a node's answer: what keep-alive depends on."""

    def __init__(self) -> None:
        self.length: int | None = None
        self.chunked = False
        self.close = False
        self.connection = False
        self.trailers = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length" and value.strip().isdigit():
            self.length = int(value)
        elif lname == b"transfer-encoding":
            self.chunked = value.strip().lower().endswith(b"chunked")
        elif lname == b"connection":
            self.connection = True
            self.close = b"close" in value.lower()
        elif lname in (b"trailer", b"trailers"):
            self.trailers = True

    def on_message_complete(self) -> None:
        self.done = True


_LEN = struct.Struct("<H").pack


def _encode(modifier1: int, pairs: list[tuple[bytes, bytes]], modifier2: int) -> bytes:
    """The uwsgi packet (header and vars); 431 when a var or the block is too long."""
    parts: list[bytes] = []
    for key, value in pairs:
        if len(value) > 0xFFFF or len(key) > 0xFFFF:
            raise HttpFailure(431, f"request var {key[:40]!r} over 65535 bytes")
        parts += (_LEN(len(key)), key, _LEN(len(value)), value)
    block = b"".join(parts)
    if len(block) > MAX_DATASIZE:
        raise HttpFailure(431, f"request vars over {MAX_DATASIZE} bytes")
    return HEADER.pack(modifier1, len(block), modifier2) + block


def normalize_path(path: bytes) -> bytes:
    """uWSGI's PATH_INFO clean-up on the raw path: `#` ends it, `//` and `/./` go,
    `/../` removes the previous segment (decoding comes after, so `%2e%2e` survives)."""
    path = path.split(b"#", 1)[0]
    out: list[bytes] = []
    segments = path.split(b"/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b"" and not last and i > 0:
            continue
        if seg == b".":
            if last:
                out.append(b"")
            continue
        if seg == b"..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append(b"")
            continue
        out.append(seg)
    result = b"/".join(out)
    return result if result.startswith(b"/") or not path.startswith(b"/") else b"/" + result


def _is_websocket(req: Request) -> bool:
    names = {n.lower(): v.lower() for n, v in req.headers}
    return (
        names.get(b"upgrade") == b"websocket"
        and b"sec-websocket-key" in names
        and b"sec-websocket-version" in names
    )


_ADDRESSES: dict[str, Address] = {}


def _address(name: str) -> Address:
    where = _ADDRESSES.get(name)
    if where is None:
        if len(_ADDRESSES) > 4096:
            _ADDRESSES.clear()
        where = _ADDRESSES[name] = parse_address(name, "node address")
    return where


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or exc.__class__.__name__

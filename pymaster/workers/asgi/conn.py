"""The connection protocols of the ASGI worker: HTTP/1.1 (keep-alive, pipelining, upgrade to
a WebSocket) and uwsgi (one request per connection, as nginx sends it).

A connection reads while its request's body is wanted and stops (`pause_reading`) while
`cycle.BODY_HIGH` bytes wait unread or pipelined requests pile up; it writes through the
transport and waits (`drain`) while the transport's buffer is full. An idle keep-alive
connection is closed after --http-keepalive seconds, a head that does not arrive in
--header-timeout is answered 408. After its last answer a connection is half-closed and
read to its end (at most `LINGER_SECONDS`), so the kernel never resets the answer away.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pymaster.log import log
from pymaster.protocols import http, uwsgi
from pymaster.workers.asgi import scope as scopes
from pymaster.workers.asgi.cycle import BODY_HIGH, Cycle
from pymaster.workers.wsgi.conns import LINGER_SECONDS, STOP_GRACE

if TYPE_CHECKING:
    from pymaster.workers.asgi.websocket import WebSocket
    from pymaster.workers.asgi.worker import AsgiWorker

PIPELINE_HIGH = 16  # pipelined requests queued before the connection stops reading
VARS_OF_LOG_ENVIRON = -1  # a `pktsize` for HTTP requests: the log computes the vars block


class Connection(asyncio.Protocol):
    """What both protocols share: transport, flow control, timers, the closing dance."""

    kind = ""

    def __init__(self, worker: AsgiWorker, lst):
        self.worker = worker
        self.lst = lst
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.closing = False  # half-closed (or closed): nothing more is served
        self.keep = True  # may carry another request
        self.paused = False  # reading paused (flow control)
        self.write_paused = False
        self.drained: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cycle: Cycle | None = None
        self.websocket: WebSocket | None = None
        self.remote = ""
        self.client: scopes.Address = None
        self.server: scopes.Address = None
        self.since = time.monotonic()

    # -- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = scopes.sock_address(peer)
        self.server = scopes.sock_address(transport.get_extra_info("sockname"))
        self.remote = self.client[0] if self.client else ""
        self.worker.conns.add(self)
        self.arm(self.worker.cfg.header_timeout, self.on_head_timeout)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.closing = True
        self.disarm()
        self.worker.conns.discard(self)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if self.cycle is not None:
            self.cycle.wake.set()
        if self.websocket is not None:
            self.websocket.connection_lost()
        self.worker.check_stopped()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def eof_received(self) -> bool:
        """The client closed its side: it is gone (an app waiting in receive() hears
        `http.disconnect`); the transport closes."""
        self.keep = False
        return False

    # -- helpers ----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the transport's buffer is over its high-water mark (one future for
        every writer of the connection: a WebSocket app may send from several tasks)."""
        if self.write_paused and not self.lost:
            if self.drained is None or self.drained.done():
                self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def pause_reading(self) -> None:
        if not self.paused and not self.lost and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and not self.lost and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def arm(self, seconds: float, callback) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, callback)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def closing_soon(self) -> bool:
        """The answer being written is the last on this connection."""
        return not self.keep or self.worker.stopping or self.worker.last_request()

    def close(self) -> None:
        self.closing = True
        self.disarm()
        if self.transport is not None:
            self.transport.close()

    def linger(self) -> None:
        """Half-close after the last answer; read away what the client still sends."""
        if self.lost or self.transport is None:
            return
        self.closing = True
        self.resume_reading()
        if self.transport.can_write_eof():
            try:
                self.transport.write_eof()
            except OSError:
                self.close()
                return
            self.arm(LINGER_SECONDS, self.close)
        else:
            self.close()

    def refuse(self, error: http.HttpError) -> None:
        log(f"HTTP error from {self.remote}: {error}")
        self.write(http.error_response(error.status, error.reason))
        self.linger()

    def on_head_timeout(self) -> None:
        self.timer = None
        if self.cycle is None and self.websocket is None and not self.closing:
            self.timed_out()

    def timed_out(self) -> None:
        self.close()

    def stop(self) -> None:
        """The worker stops: an idle connection goes after STOP_GRACE (a request already
        on its way is still answered, with `Connection: close`)."""
        self.keep = False
        if self.cycle is None and self.websocket is None and not self.closing:
            self.arm(STOP_GRACE, self.close)

    def start(self, cycle: Cycle, log_env) -> None:
        self.disarm()
        self.cycle = cycle
        self.worker.start_cycle(self, cycle, log_env)

    def cycle_done(self, cycle: Cycle) -> None:
        self.cycle = None


class HttpConnection(Connection):
    """`--http-socket`: HTTP/1.1 with keep-alive and pipelining, upgrades to WebSockets."""

    kind = "http"

    def __init__(self, worker: AsgiWorker, lst):
        super().__init__(worker, lst)
        cfg = worker.cfg
        self.parser = http.RequestParser(cfg.buffer_size, cfg.limit_post)
        self.queue: list[http.Request] = []
        self.head_armed = True  # the first head's timer is armed at connection_made

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # half-closed: read away
        if self.websocket is not None:
            self.websocket.data_received(data)
            return
        try:
            self.queue.extend(self.parser.feed(data))
        except http.HttpError as exc:
            if self.cycle is None:
                self.refuse(exc)
            else:
                self.parser.error = exc
            return
        cycle = self.cycle
        if cycle is not None:
            cycle.wake.set()
            body = cycle.body
            if (body is not None and body.buffered > BODY_HIGH) or len(self.queue) > PIPELINE_HIGH:
                self.pause_reading()
        elif self.parser.partial_head and not self.head_armed:
            self.head_armed = True  # --header-timeout counts from the head's first bytes
            self.arm(self.worker.cfg.header_timeout, self.on_head_timeout)
        self.next()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        self.parser.close()

    def timed_out(self) -> None:
        if self.parser.partial_head:
            timeout = self.worker.cfg.header_timeout
            self.refuse(http.HttpError(408, f"no complete request in {timeout} s"))
        else:
            self.close()

    def next(self) -> None:
        """Serve the next request on the connection, if it is here and none runs."""
        if self.cycle is not None or self.websocket is not None or self.closing:
            return
        if not self.queue:
            if self.parser.error is not None:
                self.refuse(self.parser.error)
            elif self.parser.broken:
                self.linger()
            elif self.parser.partial_head:
                self.head_armed = True
                self.arm(self.worker.cfg.header_timeout, self.on_head_timeout)
            elif self.worker.stopping:
                self.arm(STOP_GRACE, self.close)
            else:
                self.since = time.monotonic()
                self.arm(self.worker.cfg.http_keepalive, self.close)
            return
        req = self.queue.pop(0)
        self.head_armed = False
        if self.paused and len(self.queue) <= PIPELINE_HIGH:
            self.resume_reading()
        if req.body is not None and req.body.error is not None:  # the app never ran
            self.refuse(req.body.error)
            return
        if req.upgrade and _is_websocket(req):
            from pymaster.workers.asgi.websocket import WebSocket

            if self.worker.stopping:  # it would be closed with 1012 at once
                self.refuse(http.HttpError(503, "the worker is restarting"))
                return

            self.disarm()
            self.websocket = WebSocket(self, req)
            self.worker.start_websocket(self, self.websocket)
            return
        if not self.worker.cfg.http_keepalive and req.version == "1.1":
            req.keep_alive = False
        if self.closing_soon():
            req.keep_alive = False
        framing = http.HttpFraming(req.version, req.keep_alive, req.body)
        scope = scopes.from_request(req, self.client, self.server, self.worker.state, False)
        cycle = Cycle(self, scope, req.body, framing)
        cycle.head_size = VARS_OF_LOG_ENVIRON  # the log counts the vars block, as uwsgi sockets do
        cycle.nvars = len(req.headers) + 9
        self.start(cycle, lambda: scopes.log_environ(req, self.client, self.server))

    def cycle_done(self, cycle: Cycle) -> None:
        super().cycle_done(cycle)
        body = cycle.body
        framing = cycle.framing
        usable = self.keep and framing.keep_alive and not self.lost
        if body is not None:
            if usable and not body.drainable():
                usable = False
            body.close()  # what still comes of it is read and dropped by the parser
        if not usable:
            if not self.lost:
                self.linger()
            return
        self.resume_reading()
        self.next()

    def websocket_done(self) -> None:
        self.websocket = None
        self.close()


def _is_websocket(req: http.Request) -> bool:
    for name, value in req.headers:
        if name.lower() == b"upgrade" and value.lower() == b"websocket":
            return req.method == "GET"
    return False


class UwsgiConnection(Connection):
    """`-s`: one uwsgi packet, its body, one answer, then the connection closes."""

    kind = "uwsgi"

    def __init__(self, worker: AsgiWorker, lst):
        super().__init__(worker, lst)
        self.buf = bytearray()
        self.body: http.HttpInput | None = None
        self.parsed = False

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.parsed:
            self._push(data)
            return
        self.buf += data
        try:
            size = uwsgi.packet_size(self.buf, self.worker.cfg.buffer_size)
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            self.close()
            return
        if size and len(self.buf) >= size:
            self.parsed = True
            self._serve(size)

    def timed_out(self) -> None:
        log(f"uwsgi_proto_uwsgi_parser(): timeout [worker {self.worker.wid}] ({self.remote})")
        self.close()

    def _push(self, data: bytes) -> None:
        body = self.body
        if body is None or body.complete:
            return
        assert body.length is not None
        data = data[: body.length - body.received]
        body.push(data)
        if body.received >= body.length:
            body.complete = True
        cycle = self.cycle
        if cycle is not None:
            cycle.wake.set()
        if body.buffered > BODY_HIGH:
            self.pause_reading()

    def _serve(self, size: int) -> None:
        try:
            packet = uwsgi.parse_packet(self.buf, size)
            length = uwsgi.content_length(packet.vars.get("CONTENT_LENGTH"))
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            self.close()
            return
        rest = bytes(self.buf[size:])
        self.buf = bytearray()
        env = packet.vars
        if packet.modifier1 not in (0, 30):
            log(f"-- unavailable modifier requested: {packet.modifier1} --")
            self.close()
            return
        limit = self.worker.cfg.limit_post
        if limit and length > limit:
            self.refuse(http.HttpError(413, f"Content-Length {length} over the limit of {limit}"))
            return
        if self.client is not None:
            env.setdefault("REMOTE_ADDR", self.client[0])
            env.setdefault("REMOTE_PORT", str(self.client[1]))
        if self.server is not None:
            env.setdefault("SERVER_NAME", self.server[0])
            env.setdefault("SERVER_PORT", str(self.server[1]))
        self.remote = env.get("REMOTE_ADDR", self.remote)
        if length:
            self.body = http.HttpInput(length)
            self._push(rest)
        scope = scopes.from_uwsgi(env, self.worker.state)
        cycle = Cycle(self, scope, self.body, uwsgi.RawFraming(env.get("SERVER_PROTOCOL")))
        cycle.head_size = packet.datasize
        cycle.nvars = packet.nvars
        self.keep = False
        self.start(cycle, lambda: env)

    def cycle_done(self, cycle: Cycle) -> None:
        super().cycle_done(cycle)
        body = self.body
        if body is None or body.complete:
            self.close()
        else:
            body.close()
            self.linger()

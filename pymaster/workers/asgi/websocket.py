"""One WebSocket over an HTTP/1.1 upgrade: the ASGI `websocket` scope's receive and send,
the frames done by wsproto (fragmentation, ping/pong, close codes, permessage-deflate).

The handshake is answered when the app sends `websocket.accept` (101) or refused when it
closes first (403), or sends a `websocket.http.response` (the denial extension). A message
over --websockets-max-size KiB closes the socket with 1009. The app's unread messages are
bounded: past `QUEUE_HIGH` the connection stops reading. When the worker stops the socket
is closed with 1012 (service restart) once the reload mercy is nearly over.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING, Any

from wsproto import ConnectionType
from wsproto import connection as wsconn
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError, generate_accept_token, split_comma_header

from pymaster.log import log
from pymaster.protocols import http
from pymaster.workers.asgi import scope as scopes
from pymaster.workers.asgi.cycle import status_line
from pymaster.workers.wsgi.conns import LINGER_SECONDS

if TYPE_CHECKING:
    from pymaster.workers.asgi.conn import HttpConnection

QUEUE_HIGH = 16  # messages the app has not received before the connection stops reading
SERVICE_RESTART = 1012


class Disconnected(OSError):
    """`send` on a WebSocket that is closed (as the ASGI spec asks: an OSError)."""


class WebSocket:
    def __init__(self, conn: HttpConnection, req: http.Request):
        self.conn = conn
        self.req = req
        worker = conn.worker
        self.scope = scopes.from_request(req, conn.client, conn.server, worker.state, True)
        self.scope["extensions"] = {"websocket.http.response": {}}
        self.max_size = worker.cfg.websockets_max_size * 1024
        self.state = "connecting"  # open, closing, closed
        self.ws: wsconn.Connection | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.connect_sent = False
        self.final: dict[str, Any] | None = None  # the disconnect the app got
        self.parts: list = []
        self.size = 0
        self.pending = bytearray()  # bytes before the handshake is answered
        self.status = 101
        self.tx = 0
        self.failed = False
        self.denial: tuple[int, list] | None = None
        self.ping: asyncio.TimerHandle | None = None
        self.closer: asyncio.TimerHandle | None = None
        self.head_bytes = 0
        self.header_count = 0

    @property
    def key(self) -> bytes | None:
        for name, value in self.req.headers:
            if name.lower() == b"sec-websocket-key":
                return value
        return None

    # -- from the connection ----------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.ws is None:
            self.pending += data
            return
        if self.state == "closed":
            return
        try:
            self.ws.receive_data(data)
        except LocalProtocolError:
            return
        self._events()

    def connection_lost(self) -> None:
        self._cancel_timers()
        if self.state != "closed":
            self.state = "closed"
            self._disconnect(1006, "")

    def _events(self) -> None:
        ws = self.ws
        assert ws is not None
        for event in ws.events():
            if isinstance(event, Message):
                if self.state != "open":
                    continue
                self.parts.append(event.data)
                self.size += len(event.data)
                if self.size > self.max_size:
                    self._close(1009, f"message over {self.max_size} bytes")
                    return
                if event.message_finished:
                    msg: dict[str, Any]
                    if isinstance(event, TextMessage):
                        msg = {"type": "websocket.receive", "text": "".join(self.parts)}
                    else:
                        msg = {"type": "websocket.receive", "bytes": b"".join(self.parts)}
                    self.parts = []
                    self.size = 0
                    self.queue.put_nowait(msg)
                    if self.queue.qsize() > QUEUE_HIGH:
                        self.conn.pause_reading()
            elif isinstance(event, Ping):
                self._write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.state == "open":
                    self._write(ws.send(event.response()))
                    self._disconnect(event.code, event.reason or "")
                self.state = "closed"
                self.conn.close()
                return

    def _disconnect(self, code: int, reason: str) -> None:
        if self.final is None:
            self.final = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.queue.put_nowait(self.final)

    def _write(self, data: bytes) -> None:
        self.tx += len(data)
        self.conn.write(data)

    def _close(self, code: int, reason: str) -> None:
        """Close from this side: the close frame now, the socket when the client answers it
        (or after LINGER_SECONDS); the app hears `code`."""
        if self.state != "open" or self.ws is None:
            return
        self.state = "closing"
        self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self._disconnect(code, reason)
        loop = asyncio.get_running_loop()
        self.closer = loop.call_later(LINGER_SECONDS, self.conn.close)

    def server_close(self) -> None:
        """The worker stops: 1012 (service restart); before the handshake, 503."""
        if self.state == "open":
            self._close(SERVICE_RESTART, "service restart")
        elif self.state == "connecting" and self.ws is None:
            self.denial = (503, [])
            self._answer(503, [(b"content-type", b"text/plain")], b"restarting\n")

    def _cancel_timers(self) -> None:
        for timer in (self.ping, self.closer):
            if timer is not None:
                timer.cancel()

    def _ping(self) -> None:
        if self.state == "open" and self.ws is not None:
            self._write(self.ws.send(Ping(payload=b"pymaster")))
            freq = self.conn.worker.cfg.websockets_ping_freq
            self.ping = asyncio.get_running_loop().call_later(freq, self._ping)

    # -- ASGI -------------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        if self.final is not None and self.queue.empty():
            return self.final
        msg = await self.queue.get()
        if self.queue.qsize() < QUEUE_HIGH // 2:
            self.conn.resume_reading()
        return msg

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            if self.state != "connecting" or self.denial is not None:
                raise RuntimeError("ASGI: websocket.accept on a WebSocket not connecting")
            self._accept(message)
        elif kind == "websocket.send":
            if self.state != "open" or self.ws is None:
                raise Disconnected("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                self._write(self.ws.send(TextMessage(data=text)))
            else:
                self._write(self.ws.send(BytesMessage(data=bytes(message.get("bytes") or b""))))
            await self.conn.drain()
        elif kind == "websocket.close":
            if self.state == "connecting":
                self.status = 403
                self._answer(403, [(b"content-type", b"text/plain")], b"403 Forbidden\n")
            elif self.state == "open":
                self._close(int(message.get("code") or 1000), message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            if self.state != "connecting" or self.denial is not None:
                raise RuntimeError("ASGI: a denial response after the handshake")
            self.denial = (int(message["status"]), list(message.get("headers", ())))
            self.parts = []
        elif kind == "websocket.http.response.body":
            if self.denial is None or self.state != "connecting":
                raise RuntimeError("ASGI: websocket.http.response.body without its start")
            self.parts.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.status = self.denial[0]
                self._answer(self.denial[0], self.denial[1], b"".join(self.parts))
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} in a websocket scope")

    def _accept(self, message: dict[str, Any]) -> None:
        key = self.key
        if key is None:
            self.status = 400
            self._answer(400, [], b"400 Bad Request\nno Sec-WebSocket-Key\n")
            return
        requested: list[str] = []
        for name, value in self.req.headers:
            if name.lower() == b"sec-websocket-extensions":
                requested += split_comma_header(value)
        deflate = PerMessageDeflate()
        accepted = server_extensions_handshake(requested, [deflate]) if requested else None
        headers = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {generate_accept_token(key).decode()}",
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        if accepted:
            headers.append(f"Sec-WebSocket-Extensions: {accepted.decode('latin-1')}")
        for name, value in message.get("headers", ()):
            headers.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        self.head_bytes = len(head)
        self.header_count = len(headers) - 1
        self.conn.write(head)
        self.state = "open"
        self.ws = wsconn.Connection(ConnectionType.SERVER, [deflate] if accepted else [])
        freq = self.conn.worker.cfg.websockets_ping_freq
        if freq:
            self.ping = asyncio.get_running_loop().call_later(freq, self._ping)
        rest = bytes(self.conn.parser.upgraded) + bytes(self.pending)
        self.pending = bytearray()
        if rest:
            self.data_received(rest)

    def _answer(self, status: int, headers: list, body: bytes) -> None:
        """An HTTP answer instead of the handshake; the connection then closes."""
        lines = [f"HTTP/1.1 {status_line(status)}"]
        lines += [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in headers]
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.head_bytes = len(head)
        self.header_count = len(lines) - 1
        self.conn.write(head + body)
        self.tx += len(body)
        self.state = "closed"
        self._disconnect(1000, "")
        self.conn.linger()

    async def run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception as exc:
            if not isinstance(exc, Disconnected):
                self.failed = True
                log(
                    f"Traceback of the exception in WebSocket {self.req.target}:\n"
                    f"{traceback.format_exc().rstrip()}"
                )
        except asyncio.CancelledError:
            self.failed = True
        if self.state == "connecting":
            self.status = 500
            self._answer(500, [(b"content-type", b"text/plain")], b"Internal Server Error")
        elif self.state == "open":
            self._close(1011 if self.failed else 1000, "")
        self._cancel_timers() if self.state == "closed" else None

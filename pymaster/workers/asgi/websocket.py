"""One WebSocket over an HTTP/1.1 upgrade: the ASGI `websocket` scope's receive and send,
the frames done by the `websockets` library's sans-I/O `ServerProtocol` (fragmentation,
ping/pong, close codes, permessage-deflate; its frame masking is in C).

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

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidState, ProtocolError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.utils import accept_key

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
        self.ws: ServerProtocol | None = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.connect_sent = False
        self.final: dict[str, Any] | None = None  # the disconnect the app got
        self.parts: list = []
        self.text = False  # the message being received is text
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
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if events:
            self._events(events)
        self._flush()

    def connection_lost(self) -> None:
        self._cancel_timers()
        if self.state != "closed":
            self.state = "closed"
            self._disconnect(1006, "")

    def _events(self, events: list) -> None:
        for frame in events:
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self.text = opcode is Opcode.TEXT
                if frame.fin:
                    self._message(frame.data)
                else:
                    self.parts = [frame.data]
            elif opcode is Opcode.CONT:
                self.parts.append(frame.data)
                if frame.fin:
                    parts, self.parts = self.parts, []
                    self._message(b"".join(parts))
            elif opcode is Opcode.CLOSE:
                # the protocol has answered it (and asks for the socket to be closed)
                close = self.ws.close_rcvd if self.ws is not None else None
                if self.state == "open" and close is not None:
                    self._disconnect(close.code, close.reason)
                    self.state = "closing"
                return
            # pings are answered by the protocol; pongs need nothing

    def _message(self, data: bytes) -> None:
        if self.state != "open":
            return
        msg: dict[str, Any]
        if self.text:
            try:
                msg = {"type": "websocket.receive", "text": bytes(data).decode("utf-8")}
            except UnicodeDecodeError as exc:
                assert self.ws is not None
                reason = f"invalid UTF-8: {exc.reason} at position {exc.start}"
                self.ws.fail(1007, reason)
                self._disconnect(1007, reason)
                self.state = "closing"
                return
        else:
            msg = {"type": "websocket.receive", "bytes": bytes(data)}
        self.queue.put_nowait(msg)
        if self.queue.qsize() > QUEUE_HIGH:
            self.conn.pause_reading()

    def _flush(self) -> None:
        """Write what the protocol has to send; when it asks for the end of the stream
        (after the closing handshake, or a failure: 1002, 1007, 1009) the socket closes."""
        ws = self.ws
        assert ws is not None
        eof = False
        for chunk in ws.data_to_send():
            if chunk:
                self._write(chunk)
            else:
                eof = True
        if ws.state is not OPEN and self.state == "open":
            # the protocol failed the connection (a bad frame, a message over max_size)
            sent = ws.close_sent
            self._disconnect(sent.code if sent else 1006, sent.reason if sent else "")
            self.state = "closing"
        if eof and self.state != "closed":
            self.state = "closed"
            self._cancel_timers()
            if ws.close_rcvd is not None:
                self.conn.close()
            else:
                self.conn.linger()

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
        try:
            self.ws.send_close(code, reason)
        except ProtocolError as exc:
            raise ValueError(f"ASGI: websocket.close with close code {code!r}: {exc}") from None
        self.state = "closing"
        self._disconnect(code, reason)
        self._flush()
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
            self.ws.send_ping(b"pymaster")
            self._flush()
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
            try:
                if text is not None:
                    self.ws.send_text(text.encode("utf-8"))
                else:
                    self.ws.send_binary(bytes(message.get("bytes") or b""))
            except InvalidState:
                raise Disconnected("the WebSocket is closed") from None
            for chunk in self.ws.data_to_send():
                self._write(chunk)
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
        ws = ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory()],
            state=OPEN,
            max_size=self.max_size,
        )
        request_headers = Headers()
        for name, value in self.req.headers:
            request_headers[name.decode("latin-1")] = value.decode("latin-1")
        try:
            accepted, ws.extensions = ws.process_extensions(request_headers)
        except InvalidHandshake as exc:
            self.status = 400
            self._answer(400, [], f"400 Bad Request\nSec-WebSocket-Extensions: {exc}\n".encode())
            return
        headers = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept_key(key.decode('latin-1'))}",
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            headers.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        if accepted:
            headers.append(f"Sec-WebSocket-Extensions: {accepted}")
        for name, value in message.get("headers", ()):
            headers.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        self.head_bytes = len(head)
        self.header_count = len(headers) - 1
        self.conn.write(head)
        self.state = "open"
        self.ws = ws
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

"""One HTTP request/response cycle: the ASGI `receive` and `send` of an `http` scope.

The request body arrives in the parser's `HttpInput` (HTTP) or one fed by hand (uwsgi) and
is handed to the app as it comes: the connection stops reading while `BODY_HIGH` bytes wait
unread, so an upload never sits in memory whole. The response head is written with the
framing of the socket (`protocols.http.HttpFraming`, `protocols.uwsgi.RawFraming`) when the
first body message comes: a one-message body gets a Content-Length, a streamed one is
chunked on HTTP/1.1. `http.disconnect` is what `receive` returns once the client is gone
or the response is complete.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from pymaster.log import log
from pymaster.protocols import http
from pymaster.protocols.body import BodyError

if TYPE_CHECKING:
    from pymaster.workers.asgi.conn import Connection

BODY_HIGH = 256 * 1024  # unread body bytes that make the connection stop reading
_BODY_500 = b"Internal Server Error"
_DISCONNECT = {"type": "http.disconnect"}


def status_line(status: int) -> str:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = http.REASONS.get(status, "Unknown")
    return f"{status} {http.REASONS.get(status, reason)}"


class Cycle:
    """One request; `run(app)` calls the app and answers for it whatever it does."""

    def __init__(self, conn: Connection, scope: dict, body: http.HttpInput | None, framing):
        self.conn = conn
        self.scope = scope
        self.body = body
        self.framing = framing
        self.method = scope["method"]
        self.no_body = self.method == "HEAD"
        self.wake = asyncio.Event()
        self.start = time.time()
        self.request_sent = False  # the last http.request message went out
        self.started = False  # http.response.start seen
        self.head_sent = False
        self.finished = False  # the whole response is written
        self.status = 500
        self.headers: list = []
        self.tx = 0
        self.head_bytes = 0
        self.header_count = 0
        self.failed = False
        self.body_error: BodyError | None = None
        self.timeout = conn.worker.cfg.socket_timeout
        self.head_size = 0  # request head bytes (the log's `pktsize`)
        self.nvars = 0  # request variables (the log's `vars`)

    # -- receive ----------------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        body = self.body
        while True:
            if self.finished or conn.lost or self.body_error is not None:
                if not self.finished and not conn.lost:
                    await self._wait()  # a broken body: wait for the app's answer or the end
                    continue
                return _DISCONNECT
            if self.request_sent:
                await self._wait()
                continue
            if body is None:
                self.request_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            try:
                data = body.read()  # what arrived (no fill: never blocks)
            except BodyError as exc:
                self._broken_body(exc)
                continue
            if data or body.complete:
                conn.resume_reading()
                if body.complete:
                    self.request_sent = True
                return {"type": "http.request", "body": data, "more_body": not body.complete}
            if body.expect_continue and not body.continued:
                body.continued = True
                conn.write(http.CONTINUE)
            conn.resume_reading()
            if not await self._wait(self.timeout):
                self._broken_body(BodyError("timeout reading the request body", 408))

    async def _wait(self, timeout: float | None = None) -> bool:
        self.wake.clear()
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _broken_body(self, exc: BodyError) -> None:
        self.body_error = exc
        log(f"HTTP error from {self.conn.remote}: {exc} [{self.method} {self.uri}]")

    @property
    def uri(self) -> str:
        scope = self.scope
        raw = scope["raw_path"].decode("latin-1")
        query = scope["query_string"]
        return f"{raw}?{query.decode('latin-1')}" if query else raw

    # -- send -------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            self.started = True
            self.status = int(message["status"])
            self.headers = list(message.get("headers", ()))
            if self.status in (204, 304) or self.status < 200:
                self.no_body = True
            return
        if kind != "http.response.body":
            raise RuntimeError(f"ASGI: unexpected message {kind!r} in an http scope")
        if not self.started:
            raise RuntimeError("ASGI: http.response.body before http.response.start")
        if self.finished:
            raise RuntimeError("ASGI: http.response.body after the response ended")
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        conn = self.conn
        if conn.lost:
            return  # the client left: the app hears it from receive(), not from here
        out = b""
        if not self.head_sent:
            length = None if more or (self.no_body and not data) else len(data)
            out = self._head(length)
        if data and not self.no_body:
            out += self.framing.chunk(data)
            self.tx += len(data)
        if not more:
            if not self.no_body:
                out += self.framing.finish()
            self.finished = True
        if out:
            conn.write(out)
        if more:
            await conn.drain()
        else:
            self.wake.set()

    def _head(self, length: int | None) -> bytes:
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.headers]
        if self.conn.closing_soon() and isinstance(self.framing, http.HttpFraming):
            self.framing.keep_alive = False  # the framing says `Connection: close`
        head = self.framing.head(status_line(self.status), headers, length, self.no_body)
        self.head_sent = True
        self.head_bytes = len(head)
        self.header_count = len(headers)
        return head

    # -- the app ----------------------------------------------------------------------
    async def run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            self.failed = True
            log(
                f"Traceback of the exception in {self.method} {self.uri}:\n"
                f"{traceback.format_exc().rstrip()}"
            )
        except asyncio.CancelledError:
            self.failed = True
        if self.finished:
            return
        conn = self.conn
        if self.body_error is not None and not self.head_sent and not conn.lost:
            self.status = self.body_error.status
            answer = http.error_response(self.status, str(self.body_error))
            self.head_bytes, self.header_count = answer.index(b"\r\n\r\n") + 4, 3
            conn.write(answer)
            conn.keep = False
        elif not self.head_sent and not conn.lost:
            if not self.failed:
                log(f"ASGI app returned without a response for {self.method} {self.uri}")
                self.failed = True
            self.status = 500
            self.headers = [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(_BODY_500)).encode()),
            ]
            self.no_body = self.method == "HEAD"
            conn.write(self._head(len(_BODY_500)) + (b"" if self.no_body else _BODY_500))
            self.tx = 0 if self.no_body else len(_BODY_500)
            conn.keep = False
        else:  # the response was cut short: the client must see it is incomplete
            conn.keep = False
            if not self.failed and not conn.lost:
                log(f"ASGI app returned before the end of its response to {self.method} {self.uri}")
                self.failed = True
        self.finished = True

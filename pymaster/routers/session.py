"""One routed uwsgi connection as a pair of asyncio Protocols: client side and node side.

The client side reads the uwsgi header and vars, asks the router for a node (retrying the
next node on a failed or timed-out connect, --fastrouter-connect-timeout), rewrites header bytes 0 and 3 to the node's modifiers and
from then on forwards bytes as they come, both ways, with transport-level flow control
(a full write buffer pauses reading on the other side). No task per chunk, no buffering of
bodies; idle sessions are cut by the router's ticker after `--fastrouter-timeout`. Node
addresses are parsed by `pymaster.protocols.address`; asyncio resolves names.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
from typing import TYPE_CHECKING

from pymaster.log import log
from pymaster.protocols.address import Address
from pymaster.protocols.address import parse as parse_address
from pymaster.protocols.uwsgi import HEADER, UwsgiError
from pymaster.routers.corerouter import open_node

if TYPE_CHECKING:
    from pymaster.routers.fastrouter import Router
    from pymaster.routers.pools import Node

MAX_RETRIES = 3
KEY_VARS = (b"UWSGI_FASTROUTER_KEY", b"HTTP_HOST", b"SERVER_NAME")


_U16 = struct.Struct("<H").unpack_from
_WANTED = {k: i for i, k in enumerate(KEY_VARS)}


def route_key(block) -> str:
    """UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME, from a vars block (one tight pass with
    the codec's bounds; malformed vars raise UwsgiError)."""
    mv = memoryview(block)
    end = len(mv)
    pos = 0
    best, rank = b"", len(KEY_VARS)
    while pos < end:
        if pos + 2 > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {end - pos}). skip.")
        klen = _U16(mv, pos)[0]
        kstart = pos + 2
        if klen == 0:
            raise UwsgiError("uwsgi key cannot be null. skip this var.")
        if kstart + klen + 2 > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {klen}). skip.")
        vlen = _U16(mv, kstart + klen)[0]
        vstart = kstart + klen + 2
        if vstart + vlen > end:
            raise UwsgiError(f"invalid uwsgi request (current strsize: {vlen}). skip.")
        if klen in (9, 11, 20):  # the only lengths of the three names
            r = _WANTED.get(bytes(mv[kstart : kstart + klen]))
            if r is not None and r < rank and 0 < vlen <= 255:
                best, rank = bytes(mv[vstart : vstart + vlen]), r
        pos = vstart + vlen
    return best.decode("latin-1")


class NodeSide(asyncio.Protocol):
    """The connection to the chosen node: its bytes go straight to the client."""

    __slots__ = ("session", "transport", "node")

    transport: asyncio.Transport

    def __init__(self, session: ClientSession, node: Node):
        self.session = session
        self.node = node

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        s = self.session
        s.last = s.loop.time()
        self.node.rx += len(data)
        s.transport.write(data)

    def eof_received(self) -> bool:
        self.session.transport.close()  # flushes what is buffered first
        return False

    def connection_lost(self, exc) -> None:
        self.session.transport.close()
        self.session.finish()

    def pause_writing(self) -> None:  # the node does not keep up: stop reading the client
        self.session.transport.pause_reading()

    def resume_writing(self) -> None:
        self.session.transport.resume_reading()


class ClientSession(asyncio.Protocol):
    """A client connection on a --fastrouter socket."""

    transport: asyncio.Transport

    def __init__(self, router: Router):
        self.router = router
        self.loop = router.loop
        self.buf = bytearray()  # header and vars until a node is connected
        self.pending: list[bytes] = []  # body bytes that arrive while connecting
        self.node: Node | None = None
        self.node_side: NodeSide | None = None
        self.key = ""
        self.routing = False
        self.finished = False
        self.last = 0.0
        self.task: asyncio.Task[None] | None = None
        self.paused = False

    # -- client transport events ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.last = self.loop.time()
        self.router.opened(self)

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        side = self.node_side
        if side is not None:
            side.node.tx += len(data)
            side.transport.write(data)
            return
        if self.routing:  # body bytes while we connect: keep them, but stop
            self.pending.append(data)  # reading more until a node is there
            self.transport.pause_reading()
            self.paused = True
            return
        self.buf += data
        if len(self.buf) < 4:
            return
        size = HEADER.unpack_from(self.buf)[1]
        if len(self.buf) < 4 + size:
            return  # at most 4 + 65535 bytes: size is 16-bit
        try:
            self.key = route_key(memoryview(self.buf)[4 : 4 + size])
        except UwsgiError as exc:
            log(f"[uwsgi-fastrouter] {exc}")
            self.transport.close()
            return
        self.routing = True
        self.task = self.loop.create_task(self.route())

    def eof_received(self) -> bool:
        # once a request is routed a client EOF is not passed on (keep answering); before
        # that there is nothing to answer: close
        return self.routing

    def pause_writing(self) -> None:  # the client does not keep up: stop reading the node
        if self.node_side is not None:
            self.node_side.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.node_side is not None:
            self.node_side.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        if self.node_side is not None:
            self.node_side.transport.close()
        self.finish()
        self.router.closed(self)

    # -- routing ------------------------------------------------------------------------
    async def route(self) -> None:
        router = self.router
        failures = 0
        for attempt in range(MAX_RETRIES + 1):
            node = router.choose(self.key)
            if node is None:
                break
            try:
                async with asyncio.timeout(router.connect_timeout):
                    side = await self._connect(node)
            except asyncio.CancelledError:  # cut by the ticker: the session timed out
                log(
                    f'[uwsgi-fastrouter] unable to connect() to node "{node.name}" '
                    f"({attempt} retries): timeout"
                )
                router.failed(self.key, node)
                raise
            except (OSError, TimeoutError, ValueError) as exc:
                log(
                    f'[uwsgi-fastrouter] unable to connect() to node "{node.name}" '
                    f"({attempt} retries): {_reason(exc)}"
                )
                failures += 1
                router.failed(self.key, node)
                self.last = self.loop.time()  # the next node gets a full timeout too
                continue
            if self.transport.is_closing():  # the client went away meanwhile
                side.transport.close()
                router.release(self.key, node)
                return
            router.connected(node)
            self.node, self.node_side = node, side
            self.buf[0], self.buf[3] = node.modifier1, node.modifier2
            first = bytes(self.buf) + b"".join(self.pending)
            self.buf, self.pending = bytearray(), []  # from now on bytes go straight through
            node.tx += len(first)
            side.transport.write(first)
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            return
        if failures:
            log(
                f'[uwsgi-fastrouter] no node for key "{self.key}" accepted the connection '
                f"after {failures} attempt(s)"
            )
            self.transport.write(router.bad_gateway(self.key))
        else:
            log(f'[uwsgi-fastrouter] no node available for key "{self.key}"')
            self.transport.write(router.unavailable(self.key))
        self.transport.close()

    async def _connect(self, node: Node) -> NodeSide:
        """Bounded by the caller (--fastrouter-connect-timeout: the node is marked failed
        and the next one tried); a session that makes no progress for --fastrouter-timeout
        is aborted by the router's ticker, which cancels this too."""
        _t, side = await open_node(self.loop, _address(node.name), lambda: NodeSide(self, node))
        return side

    def finish(self) -> None:
        """Once per session: give the node back to the pool's accounting."""
        if self.finished:
            return
        self.finished = True
        if self.node is not None:
            self.router.release(self.key, self.node)

    def timed_out(self) -> None:
        """No traffic for --fastrouter-timeout seconds (the router's ticker)."""
        log(f'[uwsgi-fastrouter] timeout on a session for key "{self.key}"')
        self.abort()

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()  # still connecting: the node is marked failed
        self.transport.abort()
        if self.node_side is not None:
            self.node_side.transport.abort()


@functools.lru_cache(maxsize=4096)
def _address(name: str) -> Address:
    """A node's address (as announced or given to --fastrouter-to), parsed once."""
    return parse_address(name, "node address")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or exc.__class__.__name__

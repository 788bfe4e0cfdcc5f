"""The connections a Python worker holds between requests, and the socket settings for them.

A `Conn` sits in the worker's poller while no app runs for it: a new connection whose
request head is still arriving, a keep-alive connection waiting for its next request, or
one half-closed after its last response, read to the end before its close (so that the
kernel never answers unread bytes with a reset that would destroy the response).
"""

from __future__ import annotations

import resource
import socket

from pymaster.protocols import http

LINGER_SECONDS = 1.0  # a half-closed connection is read this long at most, then closed
DRAIN_SECONDS = 1.0  # after the app: time to read away a body the app left unread
# Shutting down, a worker keeps taking connections from the backlog until none came for this
# long: a handshake that completed just before the master held new ones (its request still on
# the way, or waiting out TCP_DEFER_ACCEPT) is served, not reset by the final close.
DRAIN_QUIET = 0.3
STOP_GRACE = 1.0  # a stopping worker waits this long for requests on idle connections
CHUNKED_INLINE = 65536  # chunked bodies up to this size are read before the app runs


class Conn:
    """One connection in the poller (see the module doc)."""

    __slots__ = (
        "sock",
        "lst",
        "remote",
        "port",
        "parser",
        "buf",
        "queue",
        "deadline",
        "since",
        "idle",
        "closing",
        "keep",
        "registered",
    )

    def __init__(self, sock: socket.socket, lst, addr, now: float, head_timeout: float, keep):
        self.sock = sock
        self.lst = lst
        self.remote = addr[0] if isinstance(addr, tuple) else ""
        self.port = str(addr[1]) if isinstance(addr, tuple) else ""
        self.parser: http.RequestParser | None = None  # HTTP sockets
        self.buf = bytearray()  # uwsgi sockets: the packet so far
        self.queue: list[http.Request] = []  # HTTP requests whose heads are complete
        self.deadline = now + head_timeout
        self.since = now  # when it last became idle
        self.idle = True  # no byte of a request is waiting (evictable)
        self.closing = False  # half-closed: read until EOF, then closed
        self.keep = keep  # keep-alive allowed
        self.registered = False

    @property
    def is_http(self) -> bool:
        return self.parser is not None


def defer_accept(sock: socket.socket, seconds: int) -> None:
    """TCP_DEFER_ACCEPT as uWSGI sets it (its value is --socket-timeout): the kernel hands a
    TCP connection to accept() only once its first bytes arrived, so silent connections do
    not even wake a worker. Harmless to repeat; no-op on UNIX sockets."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_DEFER_ACCEPT"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds)
        except OSError:
            pass


def idle_limit(configured: int) -> int:
    """--max-idle-connections, or from RLIMIT_NOFILE: the limit less a quarter (at least
    16 descriptors) left for the app, its files and the worker's own."""
    if configured:
        return configured
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 65536
    return max(4, soft - max(16, soft // 4))

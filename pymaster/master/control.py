"""Talking to a running master: the master FIFO (uWSGI's one-letter commands) and the
stats server (uWSGI's JSON layout, so uwsgitop and Prometheus exporters work unchanged).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
from typing import TYPE_CHECKING

import psutil

from pymaster import __version__
from pymaster.log import log
from pymaster.master import metrics, sockets, vacuum
from pymaster.protocols.address import AddressError
from pymaster.protocols.address import parse as parse_text
from pymaster.workers import scoreboard as sb

if TYPE_CHECKING:
    from pymaster.master.arbiter import Arbiter, Child

FIFO_COMMANDS = {
    "r": "graceful_reload",
    "R": "brutal_reload",
    "w": "reload_workers",
    "W": "brutal_reload_workers",
    "c": "chain_reload",
    "q": "graceful_shutdown",
    "Q": "brutal_shutdown",
    "+": "add_worker",
    "-": "remove_worker",
    "s": "stats_to_log",
    "l": "reopen_log",
    "p": "pause_toggle",
    "S": "subscriptions_toggle",
}


class FifoError(sockets.SocketError):
    """A `--master-fifo` path that cannot be used; the message names it. (A SocketError, so
    the command line reports it like a socket that cannot be bound: one line, exit 1.)"""


FILE_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_fifo_path(path: str) -> bool:
    """True when `path` is a FIFO (left by a previous run: it is replaced), False when
    nothing is there; FifoError for anything else, which is never removed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FifoError(f"--master-fifo {path}: cannot stat it: {exc.strerror}") from None
    if stat.S_ISFIFO(mode):
        return True
    kind = next((name for test, name in FILE_KINDS if test(mode)), "not a FIFO")
    raise FifoError(
        f"--master-fifo {path}: the path is {kind}, expected a FIFO or no file at all; "
        f"refusing to replace it (check the path)"
    )


class MasterFifo:
    """`--master-fifo PATH` (repeatable: slots 0..9, switched with the digits).

    Every path is checked at start: one that exists and is not a FIFO stops the master
    (FifoError) and is left alone. A FIFO from a previous run is replaced.
    """

    def __init__(self, paths: list[str], arbiter: Arbiter):
        self.paths = paths
        self.arbiter = arbiter
        self.active = 0
        self.fd = -1
        self._keep = -1
        for path in paths:
            check_fifo_path(path)
        self.open()

    def open(self) -> None:
        path = self.paths[self.active]
        if check_fifo_path(path):
            os.unlink(path)
        try:
            os.mkfifo(path, 0o600)
        except OSError as exc:
            raise FifoError(f"--master-fifo {path}: cannot create it: {exc.strerror}") from None
        os.chmod(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # hold a writer ourselves so a client closing its end never gives us EOF storms
        self._keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.arbiter.add_reader(self.fd, self.readable)

    def close(self) -> None:
        if self.fd >= 0:
            self.arbiter.remove_reader(self.fd)
            os.close(self.fd)
            os.close(self._keep)
            self.fd = self._keep = -1

    def switch(self, slot: int) -> None:
        """Make slot N the active fifo; a path that became something else is refused."""
        try:
            check_fifo_path(self.paths[slot])
        except FifoError as exc:
            log(f"pymaster: {exc}; the active master fifo stays {self.paths[self.active]}")
            return
        self.close()
        self.active = slot
        self.open()
        log(f"active master fifo is now {self.paths[slot]}")

    def readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        for ch in data.decode("latin-1"):
            if ch.isdigit():
                slot = int(ch)
                if slot < len(self.paths) and slot != self.active:
                    self.switch(slot)
                continue
            action = FIFO_COMMANDS.get(ch)
            if action is not None:
                getattr(self.arbiter, "cmd_" + action)()


def _worker_stats(arbiter: Arbiter, child: Child, now: float) -> dict:
    info = arbiter.scoreboard.slot(child.number - 1).read()
    rss = vsz = 0
    if child.pid:
        try:
            mem = psutil.Process(child.pid).memory_info()
            rss, vsz = mem.rss, mem.vms
        except psutil.Error:
            pass
    if not child.pid:
        status = "cheap"
    elif arbiter.paused:
        status = "pause"
    else:
        status = "busy" if info["state"] == sb.BUSY else "idle"
    requests = info["requests"]
    busy = info["state"] == sb.BUSY
    return {
        "id": child.number,
        "pid": child.pid,
        "accepting": int(info["state"] in (sb.IDLE, sb.BUSY)),
        "requests": requests,
        "delta_requests": requests,
        "exceptions": info["exceptions"],
        "harakiri_count": child.harakiri_count,
        "signals": 0,
        "signal_queue": 0,
        "status": status,
        "rss": rss,
        "vsz": vsz,
        "running_time": int(info["running_time"] * 1e6),
        "last_spawn": int(child.spawned_at),
        "respawn_count": child.respawns,
        "tx": info["tx"],
        "avg_rt": int(info["avg_rt"] * 1e6),
        "apps": [
            {
                "id": 0,
                "modifier1": 0,
                "mountpoint": "",
                "startup_time": 0,
                "requests": requests,
                "exceptions": info["exceptions"],
                "chdir": "",
            }
        ],
        "cores": _cores(arbiter, child, requests, busy, info),
    }


def _cores(arbiter: Arbiter, child: Child, requests: int, busy: bool, info: dict) -> list[dict]:
    """uWSGI's `cores` array: one entry per request thread (--threads), else one."""
    cores = arbiter.scoreboard.read_cores(child.number - 1, child.pid)
    if cores is None or not child.pid:
        cores = [{"requests": requests, "req_start": info["req_start"] if busy else 0.0}]
    return [
        {
            "id": k,
            "requests": core["requests"],
            "static_requests": 0,
            "routed_requests": 0,
            "offloaded_requests": 0,
            "write_errors": 0,
            "read_errors": 0,
            "in_request": int(bool(core["req_start"])),
            "vars": [],
            "req_info": {"request_start": int(core["req_start"])} if core["req_start"] else {},
        }
        for k, core in enumerate(cores)
    ]


def listen_queue(listeners: list[sockets.Listener]) -> list[tuple[sockets.Listener, int]]:
    """Per listener: the number of connections waiting in its backlog (Linux, TCP)."""
    out = []
    for lst in listeners:
        queue = 0
        tcp = lst.family in (socket.AF_INET, socket.AF_INET6) and not lst.datagram
        if tcp and lst.sock is not None:
            try:
                info = lst.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                queue = int.from_bytes(info[24:28], "little")  # tcpi_unacked = backlog
            except OSError:
                queue = 0
        out.append((lst, queue))
    return out


def stats_document(arbiter: Arbiter) -> dict:
    now = time.time()
    queues = listen_queue(arbiter.app_listeners())
    return {
        "version": __version__,
        "listen_queue": sum(q for _, q in queues),
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": sum(q for _, q in queues),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "locks": [
            {"user 0": 0},
            {"signal": 0},
            {"filemon": 0},
            {"timer": 0},
            {"rbtimer": 0},
            {"cron": 0},
            {"rpc": 0},
            {"snmp": 0},
        ],
        "sockets": [
            {
                "name": lst.name,
                "proto": lst.kind,
                "queue": q,
                "max_queue": arbiter.cfg.listen,
                "shared": 0,
                "can_offload": 0,
            }
            for lst, q in queues
        ],
        "workers": [_worker_stats(arbiter, c, now) for c in arbiter.slots if c.kind == "worker"],
    }


MAX_HEAD = 8192  # bytes of an HTTP request head the stats server reads
HEAD_WAIT = 3.0  # seconds a --stats-http client may take to send its request
MAX_PENDING = 64  # stats connections waiting for their request or for the router
ROUTER_WAIT = 1.0  # seconds the router's stats may take for a /metrics scrape


class Pending:
    """A --stats-http connection: its request head, then (for /metrics with a fastrouter)
    the router's stats document arriving on `router`."""

    __slots__ = ("conn", "buf", "deadline", "router", "rbuf", "openmetrics", "head")

    def __init__(self, conn: socket.socket, deadline: float):
        self.conn = conn
        self.buf = b""
        self.deadline = deadline
        self.router: socket.socket | None = None
        self.rbuf = b""
        self.openmetrics = False
        self.head = False


def parse_head(head: bytes) -> tuple[str, str, str]:
    """(method, path, Accept) of an HTTP request head; empty strings where unparsable."""
    lines = head.split(b"\n")
    parts = lines[0].split()
    method = parts[0].decode("latin-1") if parts else ""
    target = parts[1].decode("latin-1") if len(parts) > 1 else ""
    accept = ""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"accept":
            accept = value.strip().decode("latin-1")
    return method, target.split("?", 1)[0], accept


class StatsServer:
    """`--stats ADDR`: accept, write one JSON document, close. With `--stats-http` the
    request is read first (in the master loop, never waiting): `GET /metrics` answers the
    Prometheus metrics, any other request the JSON (uWSGI ignores the request); a client
    that sends nothing within HEAD_WAIT seconds gets the JSON, as uWSGI writes it at once."""

    def __init__(self, address: str, arbiter: Arbiter):
        self.arbiter = arbiter
        self.listener = sockets.Listener(address, "stats", *sockets.parse_address(address, "stats"))
        self.listener.bind(arbiter.cfg.listen)
        self.owned = vacuum.Owned.at_start([self.listener])
        assert self.listener.sock is not None
        self.sock = self.listener.sock
        self.sock.set_inheritable(False)
        self.sock.setblocking(False)
        self.pending: dict[int, Pending] = {}
        self.started = _start_time()
        arbiter.add_reader(self.listener.fd, self.readable)
        if arbiter.cfg.stats_http:
            arbiter.on_tick.append(self.expire)
        log(f"*** Stats server enabled on {address} fd: {self.listener.fd} ***")

    def readable(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        if not self.arbiter.cfg.stats_http:
            with conn:
                self._send(conn, self._json())
            return
        conn.setblocking(False)
        if len(self.pending) >= MAX_PENDING:  # the oldest waiting client makes room
            oldest = min(self.pending.values(), key=lambda p: p.deadline)
            self._finish(oldest, None)
        pend = Pending(conn, time.monotonic() + HEAD_WAIT)
        self.pending[conn.fileno()] = pend
        self.arbiter.add_reader(conn.fileno(), lambda: self._head(pend))

    def _json(self) -> bytes:
        cfg = self.arbiter.cfg
        body = json.dumps(
            stats_document(self.arbiter),
            separators=(",", ":") if cfg.stats_minified else None,
            indent=None if cfg.stats_minified else 1,
        )
        return body.encode()

    def _head(self, pend: Pending) -> None:
        try:
            data = pend.conn.recv(MAX_HEAD)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        pend.buf += data
        if data and b"\r\n\r\n" not in pend.buf and b"\n\n" not in pend.buf:
            if len(pend.buf) < MAX_HEAD:
                return
        self.arbiter.remove_reader(pend.conn.fileno())
        method, path, accept = parse_head(pend.buf)
        if path != "/metrics":
            self._finish(pend, (b"application/json", self._json()))
            return
        pend.head = method == "HEAD"
        pend.openmetrics = metrics.wants_openmetrics(accept)
        router = self._router_socket()
        if router is None:
            self._finish(pend, self._metrics(pend, None))
            return
        pend.router = router
        pend.deadline = time.monotonic() + ROUTER_WAIT
        self.arbiter.add_reader(router.fileno(), lambda: self._router_read(pend))

    def _router_socket(self) -> socket.socket | None:
        """A connection under way to the fastrouter's stats socket (router 1 serves it),
        None when no fastrouter runs or it cannot be reached at once."""
        cfg = self.arbiter.cfg
        if not cfg.fastrouter or cfg.fastrouter_stats is None:
            return None
        try:
            family, addr = parse_text(cfg.fastrouter_stats, "fastrouter-stats socket").resolve()
        except AddressError:
            return None
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            sock.close()
            return None
        return sock

    def _router_read(self, pend: Pending) -> None:
        assert pend.router is not None
        try:
            data = pend.router.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish(pend, self._metrics(pend, None))
            return
        if data:
            pend.rbuf += data
            return
        try:
            router = json.loads(pend.rbuf)
        except ValueError:
            router = None
        self._finish(pend, self._metrics(pend, router if isinstance(router, dict) else None))

    def _metrics(self, pend: Pending, router: dict | None) -> tuple[bytes, bytes]:
        arbiter = self.arbiter
        master = {
            "state": metrics.MASTER_STATES[arbiter.scoreboard.master_state]
            if arbiter.scoreboard.master_state < len(metrics.MASTER_STATES)
            else "running",
            "start_time": self.started,
            "processes": sum(1 for c in arbiter.slots if c.kind == "worker"),
            "paused": arbiter.paused,
        }
        cfg = arbiter.cfg
        body = metrics.render(
            stats_document(arbiter),
            master,
            router,
            with_router=bool(cfg.fastrouter and cfg.fastrouter_stats is not None),
            openmetrics=pend.openmetrics,
        )
        kind = metrics.OPENMETRICS_TYPE if pend.openmetrics else metrics.TEXT_TYPE
        return kind.encode(), body

    def _finish(self, pend: Pending, answer: tuple[bytes, bytes] | None) -> None:
        """Send `answer` (content type, body) to the client, or just close (None)."""
        fd = pend.conn.fileno()
        self.pending.pop(fd, None)
        self.arbiter.remove_reader(fd)
        if pend.router is not None:
            self.arbiter.remove_reader(pend.router.fileno())
            pend.router.close()
            pend.router = None
        with pend.conn:
            if answer is not None:
                kind, body = answer
                head = (
                    b"HTTP/1.0 200 OK\r\nContent-Type: %s\r\n"
                    b"Access-Control-Allow-Origin: *\r\nContent-Length: %d\r\n\r\n"
                    % (kind, len(body))
                )
                self._send(pend.conn, head if pend.head else head + body)

    def expire(self, now: float) -> None:
        """Tick: a client that sent no request gets the JSON; a router that did not answer
        leaves the metrics without its pools (`pymaster_fastrouter_up 0`)."""
        mono = time.monotonic()
        for pend in [p for p in self.pending.values() if p.deadline <= mono]:
            if pend.router is not None:
                self._finish(pend, self._metrics(pend, None))
            else:
                self._finish(pend, (b"application/json", self._json()))

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        conn.setblocking(False)  # the master hardly waits on a stats reader:
        try:  # what the socket buffer takes at once, then
            sent = conn.send(data)  # at most 0.2 s for a large document
            if sent < len(data):
                conn.settimeout(0.2)
                conn.sendall(data[sent:])
        except OSError:
            pass

    def close(self) -> None:
        for pend in list(self.pending.values()):
            self._finish(pend, None)
        self.arbiter.remove_reader(self.listener.fd)
        self.sock.close()
        self.owned.remove_sockets()  # if still ours


def _start_time() -> float:
    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return time.time()

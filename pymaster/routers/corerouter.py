"""What every router process shares (uWSGI's corerouter): lifecycle and signals, the
subscription server and its table, sharing the table with sibling processes over relay
sockets, persistence in the state directory, static nodes, idle cuts, the stats server and
the run() wrapper that never returns into the master's code.

A router flavour (routers/fastrouter.py, routers/http.py) subclasses `CoreRouter`, fills a
`Settings` from its own options and supplies the protocol factory of its client sessions;
everything else is here, so the fastrouter and the HTTP router behave alike (log prefix
`[uwsgi-fastrouter]` / `[uwsgi-http]`, state directory `pymaster-<name>-...`).

Sharing one table across router processes: every process reads the (inherited) subscription
socket; whoever receives a datagram applies it and relays the raw bytes to its siblings over
unix datagram sockets (`relay-N.sock`) in a private 0700 state directory. The master makes
the directory (`state_dir`) and binds the relay sockets before it forks the routers, so a
datagram relayed to a sibling that is not running yet (start, respawn) waits in its queue.
The same directory holds the table snapshot (`table.json`) that lets pools, and the last-seen
signature timestamps that refuse replays, survive a reload or respawn of the router; the
master removes the directory when the instance stops for good. See docs/subscriptions.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from pymaster.config import Config
from pymaster.log import log
from pymaster.protocols.address import AddressError, sockaddr_text
from pymaster.protocols.subscription import SubscriptionError, read_secret
from pymaster.routers.pools import Node, StaticNodes, Table, parse_allow

if TYPE_CHECKING:
    import ssl

CHUNK = 65536


@dataclass
class Settings:
    """A router flavour's options, read once from its own Config fields."""

    name: str  # "fastrouter" | "http": log prefix, stats key, state directory
    timeout: float
    connect_timeout: float
    processes: int
    to: list[str] = field(default_factory=list)
    backlog: int = 100


def socket_name(sock: socket.socket) -> str:
    return sockaddr_text(sock.getsockname())


def relay_path(directory: str, router_id: int) -> str:
    """The relay socket of router `router_id` in the state directory."""
    return os.path.join(directory, f"relay-{router_id}.sock")


def state_dir(subscription_socks: list[socket.socket], name: str = "fastrouter") -> str | None:
    """Private per-router directory for the relay sockets and the table snapshot, keyed by
    the subscription addresses, under $PYMASTER_RUNTIME_DIR, else $XDG_RUNTIME_DIR, else the
    temp dir; None when it cannot be made safe. Made by the master (master/gateways.py)."""
    base = (
        os.environ.get("PYMASTER_RUNTIME_DIR")
        or os.environ.get("XDG_RUNTIME_DIR")
        or tempfile.gettempdir()
    )
    names = sorted(socket_name(s) for s in subscription_socks)
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    path = os.path.join(base, f"pymaster-{name}-{os.getuid()}-{digest}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            log(
                f"[uwsgi-{name}] state directory {path} is not a private directory of "
                f"uid {os.getuid()}: pools are neither shared nor persisted"
            )
            return None
    except OSError as exc:
        log(f"[uwsgi-{name}] cannot create state directory {path}: {exc.strerror}")
        return None
    return path


async def open_node(loop: asyncio.AbstractEventLoop, where, factory):
    """Connect to a node address (`protocols.address.Address`): TCP through asyncio's
    resolver, unix sockets (filesystem and abstract `@name`) with a socket of our own,
    since the loops take no abstract name as a path. Returns (transport, protocol)."""
    if not where.unix:
        return await loop.create_connection(factory, where.connect_host, where.port)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, where.path)
        return await loop.create_unix_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise


def check_subscriptions(cfg: Config) -> None:
    """The signing secret and `--subscription-allow` (shared by every router): raise
    SubscriptionError or OSError when they cannot work."""
    if cfg.subscriptions_sign_secret is not None:
        read_secret(cfg.subscriptions_sign_secret)
    parse_allow(cfg.subscription_allow)


class CoreRouter:
    """One router process: its sockets (inherited, bound by the master: listening,
    subscription, stats for router 1, its own relay socket when there are siblings), the
    state directory, the subscription table and the static nodes."""

    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[int]

    def __init__(
        self,
        cfg: Config,
        settings: Settings,
        listen_socks: list[socket.socket],
        subscription_socks: list[socket.socket],
        stats_sock: socket.socket | None,
        router_id: int,
        directory: str | None = None,
        relay_sock: socket.socket | None = None,
    ):
        self.cfg = cfg
        self.settings = settings
        self.name = settings.name
        self.id = router_id
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.listen_socks = list(listen_socks)
        self.sub_socks = list(subscription_socks)
        self.stats_sock = stats_sock
        self.timeout = settings.timeout
        self.connect_timeout = settings.connect_timeout
        self.processes = settings.processes
        secret_file = cfg.subscriptions_sign_secret
        secret = read_secret(secret_file) if secret_file is not None else None
        self.table = Table(
            cfg.subscription_tolerance,
            secret,
            parse_allow(cfg.subscription_allow),
            self.pid,
            log,
            self._notify,
        )
        self.table.label = self.name
        self.use_subscriptions = bool(self.sub_socks)
        self.static = StaticNodes(settings.to)
        self.active = 0
        self.sessions: set[Any] = set()
        self.stopping = False
        self.servers: list[asyncio.Server] = []
        self.dir = directory
        self.relay_sock = relay_sock
        self.last_dump = 0.0

    # ------------------------------------------------------------------ flavour hooks
    def protocol_factory(self, sock: socket.socket) -> Callable[[], asyncio.Protocol]:
        raise NotImplementedError

    def ssl_context(self, sock: socket.socket) -> ssl.SSLContext | None:
        return None

    # ------------------------------------------------------------------ lifecycle
    async def main(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self.stop, False)
        loop.add_signal_handler(signal.SIGHUP, self.stop, True)
        self._restore()
        for sock in self.sub_socks:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._on_datagrams, sock, True)
        self._open_relay(loop)
        for sock in self.listen_socks:
            sock.setblocking(False)
            # create_server listens again: keep the master's --listen backlog
            self.servers.append(
                await loop.create_server(
                    self.protocol_factory(sock),
                    sock=sock,
                    backlog=self.settings.backlog,
                    ssl=self.ssl_context(sock),
                )
            )
        if self.stats_sock is not None:
            self.stats_sock.setblocking(False)
            self.servers.append(await asyncio.start_server(self.send_stats, sock=self.stats_sock))
        ticker = asyncio.ensure_future(self._ticker())
        try:
            return await self.done
        finally:
            ticker.cancel()
            self._dump(force=True)

    def stop(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            hook = getattr(session, "stopping", None)
            if hook is not None:  # idle keep-alive connections go at once
                hook()
        if not graceful or self.active == 0:
            if not self.done.done():
                self.done.set_result(0)
        else:
            log(
                f"[uwsgi-{self.name}] router {self.id} (pid {self.pid}) stops accepting, "
                f"waiting for {self.active} session(s)"
            )
            asyncio.get_running_loop().call_later(self.timeout + 1, self.stop, False)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            self.table.expire(now)
            self.cut_idle()
            self._dump(now=now)
            if os.getppid() != self.ppid:
                log(
                    f"[uwsgi-{self.name}] router {self.id} (pid {self.pid}): master is gone, "
                    "exiting"
                )
                self.stop(False)

    # ------------------------------------------------------------------ subscriptions
    def _on_datagrams(self, sock: socket.socket, external: bool) -> None:
        now = time.time()
        try:
            self._read_datagrams(sock, external, now)
        finally:
            if self.table.urgent:  # a signed join or leave: on disk before a crash loses it
                self._dump(now, force=True)

    def _read_datagrams(self, sock: socket.socket, external: bool, now: float) -> None:
        for _ in range(256):
            try:
                data, source = sock.recvfrom(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                    log(f"[uwsgi-{self.name}] subscription socket: {exc.strerror}")
                return
            if external:
                if self.table.handle_datagram(data, source, now) is not None:
                    self._relay(data)
            else:
                self.table.handle_datagram(data, None, now, check_source=False)

    def _open_relay(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read what siblings relay; the socket (and its path) stay the master's."""
        if self.relay_sock is not None:
            self.relay_sock.setblocking(False)
            loop.add_reader(self.relay_sock.fileno(), self._on_datagrams, self.relay_sock, False)

    def _relay(self, data: bytes) -> None:
        if self.relay_sock is None or self.dir is None:
            return
        for rid in range(1, self.processes + 1):
            if rid != self.id:  # a full queue (a sibling stopped for long) drops the copy
                with contextlib.suppress(OSError):
                    self.relay_sock.sendto(data, relay_path(self.dir, rid))

    def _notify(self, path: str, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(data, path)

    # ------------------------------------------------------------------ persistence
    def _table_file(self) -> str | None:
        return os.path.join(self.dir, "table.json") if self.dir else None

    def _restore(self) -> None:
        """Load the snapshot: the last-seen signature timestamps always (so a restarted
        router still refuses replays), the nodes when the file is younger than the
        tolerance."""
        path = self._table_file()
        if path is None:
            return
        try:
            age = time.time() - os.stat(path).st_mtime
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return
        stamps = self.table.restore_replay(doc) if self.table.secret is not None else 0
        count = self.table.restore(doc) if age <= self.table.tolerance else 0
        if count:
            log(
                f"[uwsgi-subscription for pid {self.pid}] restored {count} node(s) in "
                f"{len(self.table.pools)} pool(s) from {path}"
            )
        if stamps:
            log(
                f"[uwsgi-subscription for pid {self.pid}] restored {stamps} last-seen "
                f"signature timestamp(s) from {path} (replays stay refused)"
            )

    def _dump(self, now: float | None = None, force: bool = False) -> None:
        path = self._table_file()
        if path is None:
            return
        now = time.time() if now is None else now
        if not force and (
            not self.table.dirty and now - self.last_dump < 5 or now - self.last_dump < 1
        ):
            return
        tmp = f"{path}.{self.pid}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.table.dump(now), fh)
            os.replace(tmp, path)
        except OSError as exc:
            log(f"[uwsgi-{self.name}] cannot save the subscription table to {path}: {exc.strerror}")
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.table.dirty = self.table.urgent = False
        self.last_dump = now

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        names = [socket_name(s) for s in self.listen_socks + self.sub_socks]
        doc = {
            "version": _version(),
            "pid": self.pid,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "cwd": os.getcwd(),
            "active_sessions": self.active,
            self.name: names,
        }
        if self.static.nodes:
            doc["static_nodes"] = self.static.snapshot()
        if self.use_subscriptions:
            doc["subscriptions"] = self.table.snapshot()
        doc["cheap"] = 0
        return doc

    async def send_stats(self, reader, writer) -> None:
        try:
            self.table.expire()
            writer.write(json.dumps(self.stats(), indent="\t").encode() + b"\n")
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    # ------------------------------------------------------------------ sessions
    def opened(self, session) -> None:
        self.sessions.add(session)
        self.active += 1

    def closed(self, session) -> None:
        self.sessions.discard(session)
        self.active -= 1
        if self.stopping and self.active == 0 and not self.done.done():
            self.done.set_result(0)

    def cut_idle(self) -> None:
        """Sessions with no traffic for their timeout are aborted (`session.idle_limit`,
        else the router's timeout)."""
        now = self.loop.time()
        for session in list(self.sessions):
            limit = getattr(session, "idle_limit", self.timeout)
            if session.last < now - limit:
                session.timed_out()

    def choose(self, key: str) -> Node | None:
        if self.use_subscriptions:
            return self.table.pick(key) if key else None
        return self.static.pick() if self.static.nodes else None

    def connected(self, node: Node) -> None:
        if self.use_subscriptions:
            self.table.connected(node)

    def failed(self, key: str, node: Node) -> None:
        if self.use_subscriptions:
            self.table.fail(key, node)
            self.table.release(key, node)
        else:
            if node.grace_until <= time.time():
                log(f"[uwsgi-{self.name}] {key} => marking {node.name} as failed")
            self.static.fail(node)
            node.ref = max(0, node.ref - 1)

    def release(self, key: str, node: Node) -> None:
        if self.use_subscriptions:
            self.table.release(key, node)
        else:
            node.ref = max(0, node.ref - 1)
            node.requests += 1


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"pymaster-{version('pymaster')}"
    except Exception:
        return "pymaster"


try:  # at import (before the master drops privileges), not in the router child
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]


def _new_loop():
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(name: str, router_id: int, make: Callable[[], CoreRouter]) -> NoReturn:
    """Run the router `make()` builds (in a forked child of the master); never returns
    (exits 0 on SIGINT/SIGTERM/SIGQUIT, and on SIGHUP once in-flight sessions end). Death
    with the master is the caller's (master/gateways.py)."""
    code = 1
    try:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)
        router = make()
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(router.main())
    except (OSError, SubscriptionError, AddressError, ValueError) as exc:
        log(f"[uwsgi-{name}] router {router_id} cannot run: {exc}")
        code = 1
    except BaseException as exc:  # never return into the master's code
        with contextlib.suppress(Exception):
            log(f"[uwsgi-{name}] router {router_id} crashed: {exc!r}")
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

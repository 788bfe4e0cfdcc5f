"""The fastrouter: a uwsgi-protocol load balancer (asyncio, uvloop when importable).

The master binds the sockets and calls `run()` in a forked child, once per router process
(`--fastrouter-processes N`). Per client connection: read the uwsgi header and vars, pick
the key (UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME), pick a node (subscription pools
with uWSGI's wrr, else static `--fastrouter-to` round robin), connect, rewrite header bytes
0 and 3 to the node's modifier1/modifier2, and stream both ways until the node closes.

Sharing one table across router processes: every process reads the (inherited) subscription
socket; whoever receives a datagram applies it and relays the raw bytes to its siblings over
unix datagram sockets in a private 0700 state directory. The same directory holds the table
snapshot (`table.json`) that lets pools survive a reload of the router. See
docs/subscriptions.md.

Dev entry point (tests use it): `python -m pymaster.routers.fastrouter --fastrouter ADDR
[--fastrouter-subscription-server ADDR] [--fastrouter-to ADDR] [--fastrouter-processes N]
[--fastrouter-stats ADDR] [--subscription-tolerance N] ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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
from typing import NoReturn

from pymaster.log import log
from pymaster.protocols.subscription import SubscriptionError, read_secret, split_address
from pymaster.routers.pools import DEFAULT_TOLERANCE, StaticNodes, Table, parse_allow
from pymaster.routers.session import ClientSession

CHUNK = 65536


def _opt(cfg, name, default=None):
    value = getattr(cfg, name, None)
    return default if value is None else value


# --------------------------------------------------------------------------- addresses


def _bind(addr: str, kind: int) -> socket.socket:
    family, where = split_address(addr)
    if family != socket.AF_UNIX and where[0] in ("", "*"):
        where = ("0.0.0.0", where[1])
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_UNIX:
            if (
                not where.startswith("\0")
                and os.path.exists(where)
                and stat.S_ISSOCK(os.stat(where).st_mode)
            ):
                os.unlink(where)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind '{addr}': {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def bind_subscription_server(addr: str) -> socket.socket:
    """The subscription socket: UDP for `host:port` (`:port` = all addresses), unix
    datagram for a path."""
    return _bind(addr, socket.SOCK_DGRAM)


def bind_listener(addr: str) -> socket.socket:
    """A stream listening socket (`--fastrouter`, `--fastrouter-stats`)."""
    return _bind(addr, socket.SOCK_STREAM)


def socket_name(sock: socket.socket) -> str:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return f"{name[0]}:{name[1]}"
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return "@" + name[1:] if name.startswith("\0") else name


def state_dir(cfg, subscription_socks) -> str | None:
    """Private per-router directory for the relay sockets and the table snapshot, keyed by
    the subscription addresses; None when it cannot be made safe."""
    base = (
        _opt(cfg, "runtime_dir")
        or os.environ.get("PYMASTER_RUNTIME_DIR")
        or os.environ.get("XDG_RUNTIME_DIR")
        or tempfile.gettempdir()
    )
    names = sorted(socket_name(s) for s in subscription_socks)
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]
    path = os.path.join(base, f"pymaster-fastrouter-{os.getuid()}-{digest}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            log(
                f"[uwsgi-fastrouter] state directory {path} is not a private directory of "
                f"uid {os.getuid()}: pools are neither shared nor persisted"
            )
            return None
    except OSError as exc:
        log(f"[uwsgi-fastrouter] cannot create state directory {path}: {exc.strerror}")
        return None
    return path


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


# --------------------------------------------------------------------------- the router


def _503(key: str) -> bytes:
    body = f'503 Service Unavailable: no node available for key "{key}"\n'.encode(
        "latin-1", "replace"
    )
    return (
        b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


def _502(key: str) -> bytes:
    body = f'502 Bad Gateway: no node for key "{key}" accepted the connection\n'.encode(
        "latin-1", "replace"
    )
    return (
        b"HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body


class Router:
    def __init__(self, cfg, listen_socks, subscription_socks, stats_sock, router_id: int):
        self.cfg = cfg
        self.id = router_id
        self.pid = os.getpid()
        self.ppid = os.getppid()
        self.listen_socks = list(listen_socks)
        self.sub_socks = list(subscription_socks)
        self.stats_sock = stats_sock
        self.timeout = float(_opt(cfg, "fastrouter_timeout", 60) or 60)
        self.processes = max(1, int(_opt(cfg, "fastrouter_processes", 1) or 1))
        tolerance = float(
            _opt(cfg, "subscription_tolerance", DEFAULT_TOLERANCE) or DEFAULT_TOLERANCE
        )
        secret_file = _opt(cfg, "subscriptions_sign_secret")
        secret = read_secret(secret_file) if secret_file else None
        self.table = Table(
            tolerance,
            secret,
            parse_allow(_opt(cfg, "subscription_allow", [])),
            self.pid,
            log,
            self._notify,
        )
        self.use_subscriptions = bool(self.sub_socks)
        self.static = StaticNodes(_opt(cfg, "fastrouter_to", []) or [])
        self.active = 0
        self.sessions: set[ClientSession] = set()
        self.loop = None
        self.stopping = False
        self.servers: list = []
        self.done: asyncio.Future | None = None
        self.dir = state_dir(cfg, self.sub_socks) if self.sub_socks else None
        self.relay_sock: socket.socket | None = None
        self.last_dump = 0.0

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
                    lambda: ClientSession(self),
                    sock=sock,
                    backlog=int(_opt(self.cfg, "listen", 100) or 100),
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
            self._close_relay()

    def stop(self, graceful: bool) -> None:
        if self.stopping and graceful:
            return
        self.stopping = True
        for server in self.servers:
            server.close()
        if not graceful or self.active == 0:
            if not self.done.done():
                self.done.set_result(0)
        else:
            log(
                f"[uwsgi-fastrouter] router {self.id} (pid {self.pid}) stops accepting, "
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
                    f"[uwsgi-fastrouter] router {self.id} (pid {self.pid}): master is gone, exiting"
                )
                self.stop(False)

    # ------------------------------------------------------------------ subscriptions
    def _on_datagrams(self, sock: socket.socket, external: bool) -> None:
        now = time.time()
        for _ in range(256):
            try:
                data, source = sock.recvfrom(CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                    log(f"[uwsgi-fastrouter] subscription socket: {exc.strerror}")
                return
            if external:
                if self.table.handle_datagram(data, source, now) is not None:
                    self._relay(data)
            else:
                self.table.handle_datagram(data, None, now, check_source=False)

    def _relay_path(self, rid: int) -> str:
        return os.path.join(self.dir, f"relay-{rid}.sock")

    def _open_relay(self, loop) -> None:
        if self.dir is None or self.processes < 2:
            return
        path = self._relay_path(self.id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.setblocking(False)
        except OSError as exc:
            log(f"[uwsgi-fastrouter] cannot bind relay socket {path}: {exc.strerror}")
            return
        self.relay_sock = sock
        loop.add_reader(sock.fileno(), self._on_datagrams, sock, False)

    def _close_relay(self) -> None:
        if self.relay_sock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._relay_path(self.id))
            self.relay_sock.close()
            self.relay_sock = None

    def _relay(self, data: bytes) -> None:
        if self.relay_sock is None:
            return
        for rid in range(1, self.processes + 1):
            if rid != self.id:
                with contextlib.suppress(OSError):
                    self.relay_sock.sendto(data, self._relay_path(rid))

    def _notify(self, path: str, data: bytes) -> None:
        with contextlib.suppress(OSError, ValueError):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(data, path)

    # ------------------------------------------------------------------ persistence
    def _table_file(self) -> str | None:
        return os.path.join(self.dir, "table.json") if self.dir else None

    def _restore(self) -> None:
        path = self._table_file()
        if path is None:
            return
        try:
            if time.time() - os.stat(path).st_mtime > self.table.tolerance:
                return
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return
        count = self.table.restore(doc)
        if count:
            log(
                f"[uwsgi-subscription for pid {self.pid}] restored {count} node(s) in "
                f"{len(self.table.pools)} pool(s) from {path}"
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
            log(f"[uwsgi-fastrouter] cannot save the subscription table to {path}: {exc.strerror}")
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.table.dirty = False
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
            "fastrouter": names,
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
    # ------------------------------------------------------------------ sessions
    def opened(self, session: ClientSession) -> None:
        self.sessions.add(session)
        self.active += 1

    def closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        self.active -= 1
        if self.stopping and self.active == 0 and not self.done.done():
            self.done.set_result(0)

    def cut_idle(self) -> None:
        """Sessions with no traffic for --fastrouter-timeout seconds are aborted."""
        limit = self.loop.time() - self.timeout
        for session in [s for s in self.sessions if s.last < limit]:
            log(f'[uwsgi-fastrouter] timeout on a session for key "{session.key}"')
            session.abort()

    @staticmethod
    def unavailable(key: str) -> bytes:
        return _503(key)

    @staticmethod
    def bad_gateway(key: str) -> bytes:
        return _502(key)

    def choose(self, key: str):
        if self.use_subscriptions:
            return self.table.pick(key) if key else None
        return self.static.pick() if self.static.nodes else None

    def connected(self, node) -> None:
        if self.use_subscriptions:
            self.table.connected(node)

    def failed(self, key: str, node) -> None:
        if self.use_subscriptions:
            self.table.fail(key, node)
            self.table.release(key, node)
        else:
            self.static.fail(node)
            node.ref = max(0, node.ref - 1)

    def release(self, key: str, node) -> None:
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


def _new_loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(
    cfg,
    listen_socks: list[socket.socket],
    subscription_socks: list[socket.socket],
    stats_sock: socket.socket | None,
    router_id: int,
) -> NoReturn:
    """Run router process `router_id` (1-based) on already bound, inherited sockets; never
    returns (exits 0 on SIGINT/SIGTERM/SIGQUIT, and on SIGHUP once in-flight sessions end)."""
    code = 1
    try:
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)
        _die_with_parent()
        if stats_sock is None and router_id == 1 and _opt(cfg, "fastrouter_stats"):
            stats_sock = bind_listener(cfg.fastrouter_stats)
        elif router_id != 1 and stats_sock is not None:
            stats_sock = None  # served by the first router only
        router = Router(cfg, listen_socks, subscription_socks, stats_sock, router_id)
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(router.main())
    except (OSError, SubscriptionError, ValueError) as exc:
        log(f"[uwsgi-fastrouter] router {router_id} cannot run: {exc}")
        code = 1
    except BaseException as exc:  # never return into the master's code
        with contextlib.suppress(Exception):
            log(f"[uwsgi-fastrouter] router {router_id} crashed: {exc!r}")
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# --------------------------------------------------------------------------- dev entry point


def _dev_args(argv):
    import argparse
    from types import SimpleNamespace

    p = argparse.ArgumentParser(
        prog="python -m pymaster.routers.fastrouter",
        description="run a fastrouter without a pymaster master",
    )
    p.add_argument("--fastrouter", action="append", required=True)
    p.add_argument("--fastrouter-subscription-server", action="append", default=[])
    p.add_argument("--fastrouter-to", action="append", default=[])
    p.add_argument("--fastrouter-processes", type=int, default=1)
    p.add_argument("--fastrouter-timeout", type=int, default=60)
    p.add_argument("--fastrouter-stats")
    p.add_argument("--subscription-tolerance", type=int, default=DEFAULT_TOLERANCE)
    p.add_argument("--subscriptions-sign-secret")
    p.add_argument("--subscription-allow", action="append", default=[])
    p.add_argument("--runtime-dir")
    return SimpleNamespace(**vars(p.parse_args(argv)))


def main(argv=None) -> int:
    """A tiny supervisor: bind, fork the routers, forward signals. SIGHUP restarts the
    routers on the same sockets (as a master reload would); SIGINT/SIGTERM stop them."""
    cfg = _dev_args(sys.argv[1:] if argv is None else argv)
    listen = [bind_listener(a) for a in cfg.fastrouter]
    subs = [bind_subscription_server(a) for a in cfg.fastrouter_subscription_server]
    stats = bind_listener(cfg.fastrouter_stats) if cfg.fastrouter_stats else None
    for sock in listen + subs:
        log(f"pymaster fastrouter bound on {socket_name(sock)} fd {sock.fileno()}")
    children: dict[int, int] = {}
    events: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: events.append(s))

    def spawn(rid: int) -> None:
        pid = os.fork()
        if pid == 0:
            run(cfg, listen, subs, stats if rid == 1 else None, rid)
        children[pid] = rid
        log(f"spawned pymaster fastrouter {rid} (pid: {pid})")

    for rid in range(1, cfg.fastrouter_processes + 1):
        spawn(rid)
    stopping = False
    while children:
        while events:
            sig = events.pop(0)
            stopping = stopping or sig != signal.SIGHUP
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
            continue
        rid = children.pop(pid, None)
        if rid is not None and not stopping:
            spawn(rid)
    return 0


if __name__ == "__main__":
    sys.exit(main())

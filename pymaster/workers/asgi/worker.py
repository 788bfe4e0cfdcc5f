"""The ASGI worker process: an asyncio event loop (uvloop when it imports) on the sockets
the master bound, many requests in flight, keeping the worker contract.

- Accepting: each listening socket is a reader of the loop; at --asgi-concurrency requests
  (and WebSockets) in flight the worker stops accepting, so new connections wait in the
  listen queue for another worker (backpressure), and starts again below it.
- Scoreboard: BUSY while any request is in flight, `request` naming them (the oldest first,
  with their number), counters at each request's end. `req_start` is the loop's heartbeat:
  the loop stamps it every `HEARTBEAT` seconds while a request is in flight, so the
  master's harakiri check (`now - req_start > --harakiri`) fires when the loop has not
  turned for that long (an app blocking it), never for a request that is merely long.
- Lifespan: startup before the first accept (failure: exit 22 with one line saying why),
  shutdown on every graceful exit.
- SIGHUP, recycling (max-requests, reload-on-rss), the master gone: stop accepting, let
  what is in flight finish; open WebSockets get until shortly before --worker-reload-mercy,
  then are closed with 1012; then exit 0. SIGINT/SIGQUIT/SIGTERM end the process at once.
"""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import os
import signal
import socket
import sys
import time
import traceback
from functools import partial
from itertools import islice

from pymaster.log import log
from pymaster.protocols import uwsgi
from pymaster.workers import scoreboard as sb
from pymaster.workers.asgi import app as asgi_app
from pymaster.workers.asgi.conn import (
    VARS_OF_LOG_ENVIRON,
    Connection,
    HttpConnection,
    UwsgiConnection,
)
from pymaster.workers.asgi.cycle import Cycle
from pymaster.workers.asgi.lifespan import Lifespan, LifespanFailed
from pymaster.workers.asgi.websocket import WebSocket
from pymaster.workers.contract import (
    EXIT_FAILED_APP,
    EXIT_MASTER_GONE,
    EXIT_OK,
    Recycling,
    die_with_master,
)
from pymaster.workers.wsgi.conns import DRAIN_QUIET
from pymaster.workers.wsgi.reqlog import Record, RequestLog

HEARTBEAT = 0.25  # seconds between the loop's stamps in the scoreboard
ACCEPT_BATCH = 32  # connections taken per readiness of a listening socket
SHOWN = 6  # requests in flight named in the scoreboard's `request`


def new_loop(kind: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """The event loop for --asgi-loop; ImportError when uvloop is asked for and missing."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


class AsgiWorker:
    """One worker process; `run()` never returns."""

    def __init__(self, wid, cfg, listeners, app, scoreboard, master_pid):
        self.wid = wid
        self.cfg = cfg
        self.listeners = listeners
        self.app = app
        self.scoreboard = scoreboard
        self.slot = scoreboard.slot(wid - 1)
        self.master_pid = master_pid
        self.pid = os.getpid()
        self.spawned = time.time()
        self.recycling = Recycling.for_worker(cfg, wid)
        self.reqlog = RequestLog(cfg)
        self.cap = cfg.asgi_concurrency
        self.state: dict = {}  # the lifespan state, copied into every scope
        self.conns: set[Connection] = set()
        self.inflight: dict[object, bytes] = {}  # cycle or WebSocket -> b"METHOD URI"
        self.websockets: set[WebSocket] = set()
        self.tasks: set[asyncio.Task] = set()
        self.requests = 0
        self.stopping = False
        self.stop_started = 0.0
        self.listening = False
        self.quiet_until = 0.0  # shutting down: draining the backlog until then
        self.connecting = 0  # accepted sockets whose transport is being set up
        self.what = b""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.finished: asyncio.Event | None = None
        self.lifespan: Lifespan | None = None

    # -- lifecycle --------------------------------------------------------------------
    @staticmethod
    def _on_end(signum, frame):
        os._exit(EXIT_MASTER_GONE)

    def run(self):
        if self.master_pid is not None:
            die_with_master()
            if os.getppid() != self.master_pid:
                os._exit(EXIT_MASTER_GONE)
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
            signal.signal(sig, self._on_end)
        for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
        self.slot.reset(self.pid, self.spawned)
        if self.app is None:
            try:
                self.app = asgi_app.load_app(self.cfg)
            except asgi_app.AppLoadError as exc:
                self._no_app(str(exc))
        try:
            loop, name = new_loop(self.cfg.asgi_loop)
        except ImportError:
            self._no_app("--asgi-loop uvloop: the uvloop module does not import")
        self.loop = loop
        asyncio.set_event_loop(loop)
        code = EXIT_OK
        try:
            code = loop.run_until_complete(self.main(name))
        except Exception:
            log(f"worker {self.wid} internal error:\n{traceback.format_exc()}")
            code = 1
        finally:
            sys.stdout.flush() if sys.stdout else None
        os._exit(code)

    def _no_app(self, why: str):
        log(why)
        log(f"*** no app loaded in worker {self.wid} (pid: {self.pid}) ***")
        os._exit(EXIT_FAILED_APP)

    async def main(self, loop_name: str) -> int:
        loop = asyncio.get_running_loop()
        self.finished = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.begin_stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the master held them until now
        self.lifespan = Lifespan(self.app, self.cfg.asgi_lifespan, self.state)
        try:
            await self.lifespan.startup()
        except LifespanFailed as exc:
            self._no_app(f"ASGI lifespan startup failed in worker {self.wid}: {exc}")
        for lst in self.listeners:
            lst.sock.setblocking(False)
        self._listen(True)
        self.slot.set_state(sb.IDLE)
        log(
            f"ASGI app 0 (mountpoint='') ready in worker {self.wid} (pid: {self.pid}, "
            f"loop: {loop_name}, concurrency: {self.cap})"
        )
        self._beat()
        await self.finished.wait()
        left = self.cfg.worker_reload_mercy - (time.monotonic() - self.stop_started)
        await self.lifespan.shutdown(max(1.0, left))
        return EXIT_OK

    def begin_stop(self) -> None:
        """Finish without losing a request (see the module doc)."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_started = time.monotonic()
        if not self.inflight:
            self.slot.set_state(sb.STOPPING)
        self._listen(False)
        for conn in list(self.conns):
            conn.stop()
        if self.scoreboard.master_state == sb.MASTER_STOPPING:
            self.quiet_until = time.monotonic() + DRAIN_QUIET
            self._drain_backlog()
        mercy = self.cfg.worker_reload_mercy
        grace = max(0.0, mercy - min(2.0, mercy / 4))
        assert self.loop is not None
        self.loop.call_later(grace, self._close_websockets)
        self.check_stopped()

    def _drain_backlog(self) -> None:
        """Shutting down: serve what already waits in the backlog (the master refuses new
        handshakes, so the queue is finite) until none came for DRAIN_QUIET seconds."""
        for lst in self.listeners:
            for _ in range(10 * max(1, self.cfg.listen)):
                try:
                    sock, _addr = lst.sock.accept()
                except OSError:
                    break
                self.quiet_until = time.monotonic() + DRAIN_QUIET
                self._connect(lst, sock)
        if time.monotonic() < self.quiet_until:
            assert self.loop is not None
            self.loop.call_later(0.05, self._drain_backlog)
        else:
            self.quiet_until = 0.0
            self.check_stopped()

    def _close_websockets(self) -> None:
        for ws in list(self.websockets):
            ws.server_close()

    def check_stopped(self) -> None:
        if (
            self.stopping
            and not self.inflight
            and not self.conns
            and not self.quiet_until
            and not self.connecting
            and self.finished
        ):
            self.finished.set()

    def last_request(self) -> bool:
        """The next request is the last one (--max-requests): its answer closes."""
        r = self.recycling
        return (
            r.max_requests > 0
            and self.requests + len(self.inflight) >= r.max_requests
            and time.time() - self.spawned >= r.min_lifetime
        )

    # -- accepting --------------------------------------------------------------------
    def _listen(self, on: bool) -> None:
        if on == self.listening:
            return
        loop = self.loop
        assert loop is not None
        for lst in self.listeners:
            if on:
                loop.add_reader(lst.sock.fileno(), self._accept, lst)
            else:
                loop.remove_reader(lst.sock.fileno())
        self.listening = on

    def _resume(self) -> None:
        if not self.stopping and len(self.inflight) < self.cap:
            self._listen(True)

    def _accept(self, lst) -> None:
        loop = self.loop
        assert loop is not None
        for _ in range(ACCEPT_BATCH):
            if len(self.inflight) >= self.cap or self.stopping:
                self._listen(False)
                return
            try:
                sock, _addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                log(f"accept(): {exc.strerror} [worker {self.wid}]")
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._listen(False)
                    loop.call_later(1.0, self._resume)
                return
            self._connect(lst, sock)

    def _connect(self, lst, sock: socket.socket) -> None:
        assert self.loop is not None
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        factory = partial(HttpConnection if lst.kind == "http" else UwsgiConnection, self, lst)
        self.connecting += 1
        self._spawn(self.loop.connect_accepted_socket(factory, sock)).add_done_callback(
            self._connected
        )

    def _connected(self, task: asyncio.Task) -> None:
        self.connecting -= 1
        if not task.cancelled() and task.exception() is not None:
            log(f"worker {self.wid}: a connection could not be set up: {task.exception()}")
        self.check_stopped()

    def _spawn(self, coro) -> asyncio.Task:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- requests ---------------------------------------------------------------------
    def start_cycle(self, conn: Connection, cycle: Cycle, log_env) -> None:
        what = f"{cycle.method} {cycle.uri}".encode("latin-1", "replace")
        self._begin(cycle, what)
        self._spawn(self._run_cycle(conn, cycle, log_env))

    async def _run_cycle(self, conn: Connection, cycle: Cycle, log_env) -> None:
        try:
            await cycle.run(self.app)
        finally:
            conn.cycle_done(cycle)
            self._end(
                cycle,
                cycle.start,
                cycle.status,
                cycle.tx,
                cycle.failed,
                log_env,
                cycle.header_count,
                cycle.head_bytes,
                cycle.nvars,
                cycle.head_size,
            )

    def start_websocket(self, conn: HttpConnection, ws: WebSocket) -> None:
        what = f"WS {ws.req.target}".encode("latin-1", "replace")
        self.websockets.add(ws)
        self._begin(ws, what)
        self._spawn(self._run_websocket(conn, ws))

    async def _run_websocket(self, conn: HttpConnection, ws: WebSocket) -> None:
        from pymaster.workers.asgi import scope as scopes

        start = time.time()
        try:
            await ws.run(self.app)
        finally:
            self.websockets.discard(ws)
            self._end(
                ws,
                start,
                ws.status,
                ws.tx,
                ws.failed,
                lambda: scopes.log_environ(ws.req, conn.client, conn.server),
                ws.header_count,
                ws.head_bytes,
                len(ws.req.headers) + 9,
                VARS_OF_LOG_ENVIRON,
            )

    def _begin(self, key: object, what: bytes) -> None:
        self.inflight[key] = what
        self._board()
        if len(self.inflight) >= self.cap:
            self._listen(False)

    def _board(self) -> None:
        """The scoreboard slot: BUSY naming what is in flight, the heartbeat stamp now."""
        n = len(self.inflight)
        if n == 1:
            self.what = next(iter(self.inflight.values()))
        else:
            shown = list(islice(self.inflight.values(), SHOWN))  # not all of them: per request
            self.what = b"%d in flight: " % n + b", ".join(shown)
        self.slot.begin(time.time(), self.what)

    def _end(self, key, start, status, tx, failed, log_env, headers, hsize, nvars, pktsize):
        self.inflight.pop(key, None)
        now = time.time()
        elapsed = now - start
        idle = sb.STOPPING if self.stopping else sb.IDLE
        # uWSGI's tx: head + body
        self.slot.end(elapsed, tx + hsize, failed, sb.BUSY if self.inflight else idle)
        if self.inflight:
            self._board()
        self.requests += 1
        if self.reqlog.wanted(status, elapsed):
            env = log_env()
            if pktsize == VARS_OF_LOG_ENVIRON:  # HTTP: the vars block uwsgi would send
                nvars, pktsize = len(env), uwsgi.vars_size(env)
            self.reqlog.emit(
                Record(
                    env=env,
                    start=start,
                    elapsed=elapsed,
                    status=status,
                    tx=tx,
                    headers=headers,
                    hsize=hsize,
                    nvars=nvars,
                    pktsize=pktsize,
                    protocol=env.get("SERVER_PROTOCOL", ""),
                    requests=self.requests,
                    total=self._instance_requests(),
                    pid=self.pid,
                    wid=self.wid,
                )
            )
        if not self.stopping:
            reason = self.recycling.reason(
                self.requests, now - self.spawned, _rss, self.pid, self.wid
            )
            if reason:
                log(reason)
                self.begin_stop()
            else:
                self._resume()
        self.check_stopped()

    def _instance_requests(self) -> int:
        total = 0
        mm = self.scoreboard.mm
        for i in range(self.scoreboard.highest or self.scoreboard.slots):
            total += sb.HEAD.unpack_from(mm, i * sb.SLOT_SIZE)[2]
        return total

    def _beat(self) -> None:
        """The heartbeat (see the module doc), and the master check."""
        if self.inflight:
            self.slot.begin(time.time(), self.what)
        if self.master_pid is not None and os.getppid() != self.master_pid:
            self.begin_stop()
        assert self.loop is not None
        self.loop.call_later(HEARTBEAT, self._beat)


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

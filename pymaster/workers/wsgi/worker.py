"""The Python worker: accept on the shared sockets, parse one request at a time, run the app.

One selector holds the listening sockets, idle HTTP keep-alive connections and a wakeup pipe
for signals. Signal handlers only set flags (SIGHUP: finish and exit 0); SIGINT, SIGQUIT and
SIGTERM end the process at once, as the worker contract says.

With --threads N > 1 the loop stays in the main thread and hands each connection whose
request is complete to a pool of N request threads (the cores); a thread serves it (and
what is pipelined behind it) and hands the connection back to the loop, which holds it for
its next request. While every core is busy the listeners are not polled, so new connections
wait in the listen queue for another worker. With N = 1 the loop runs the app itself.
"""

from __future__ import annotations

import errno
import faulthandler
import io
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from functools import partial
from queue import SimpleQueue
from urllib.parse import unquote_to_bytes

from pymaster.apps import wsgi
from pymaster.log import log
from pymaster.protocols import http, uwsgi
from pymaster.protocols.body import BodyError
from pymaster.workers import scoreboard as sb
from pymaster.workers.contract import (
    EXIT_FAILED_APP,
    EXIT_MASTER_GONE,
    EXIT_OK,
    Recycling,
    die_with_master,
)
from pymaster.workers.wsgi import conns, offload
from pymaster.workers.wsgi.conns import Conn
from pymaster.workers.wsgi.poller import Poller
from pymaster.workers.wsgi.reqlog import Record, RequestLog

EXIT_END = EXIT_MASTER_GONE
_EMPTY = b""
_BODY_500 = b"Internal Server Error"
# the scoreboard's request counter: the u64 at byte 8 of a slot (sb.HEAD's third field)
_REQUESTS_WORD = 1
_LITTLE_ENDIAN = sys.byteorder == "little" and sb.HEAD.format.startswith("<IIQ")
# connections accepted per epoll wake-up at most, while the backlog is not empty
ACCEPT_BATCH = int(os.environ.get("PYMASTER_ACCEPT_BATCH", "16"))


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


class Worker:
    """One worker process; `run()` never returns."""

    def __init__(self, wid, cfg, listeners, app, scoreboard, master_pid):
        self.wid = wid
        self.cfg = cfg
        self.listeners = listeners
        self.app = app
        self.slot = scoreboard.slot(wid - 1)
        self.scoreboard = scoreboard
        self.master_pid = master_pid
        self.pid = os.getpid()
        self.stopping = False
        self.requests = 0
        self.spawned = time.time()
        self.buffer_size = cfg.buffer_size
        self.reqlog = RequestLog(cfg)
        self.timeout = _timeval(cfg.socket_timeout)
        self.keepalive = cfg.http_keepalive
        self.recycling = Recycling.for_worker(cfg, wid)
        r = self.recycling  # no limit at all: no question to ask after each request
        self.recycles = bool(r.max_requests or r.rss_limit or r.as_limit)
        self._raw_framing: dict[str | None, uwsgi.RawFraming] = {}  # stateless: one each
        self.head_timeout = cfg.header_timeout
        self.max_idle = conns.idle_limit(cfg.max_idle_connections)
        self.conns: set[Conn] = set()  # held in the poller: no app runs for them
        self.paused = False  # listeners not polled (idle limit, no descriptors, stopping)
        self.resume_at = 0.0
        self.stop_hard: float | None = None  # set when stopping began: the latest exit
        self.quiet_until = 0.0  # shutting down: keep draining the backlog until then
        self.fd_errors = 0
        self.fd_log_at = 0.0
        self.sel = Poller()
        # --threads: the pool (see the module doc); None/0 when the loop runs the app itself
        self.threads = max(1, cfg.threads)
        self.multithread = self.threads > 1
        self._tls: threading.local | None = None
        self._serve = self._guard  # how the loop has a complete request served
        self.busy = 0  # connections handed to the pool and not back yet (loop thread only)
        self.full = False  # every core busy: the listeners are not polled
        self.app_busy = 0  # cores running the app (under self.lock)
        self.lock = threading.Lock()
        self.jobs: SimpleQueue = SimpleQueue()
        self.back: deque = deque()  # connections the cores hand back to the loop
        self.offloader: offload.Offloader | None = None  # --offload-threads
        self._wsgi_env = {
            "wsgi.version": (1, 0),
            "wsgi.errors": wsgi.ERRORS,
            "wsgi.multithread": self.multithread,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": wsgi.FileWrapper,
            "wsgi.input_terminated": True,
        }

    # -- lifecycle --------------------------------------------------------------------
    def _on_hup(self, signum, frame):
        self.stopping = True

    @staticmethod
    def _on_end(signum, frame):
        os._exit(EXIT_END)

    def _setup_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = rfd
        self._wake_w = wfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        signal.signal(signal.SIGHUP, self._on_hup)
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
            signal.signal(sig, self._on_end)
        for sig in (
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGTSTP,
            signal.SIGUSR1,
            signal.SIGWINCH,
        ):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # what is this worker doing now: the stack, written by C code (async-signal-safe)
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the master held them until now

    def run(self):
        if self.master_pid is not None:
            die_with_master()
            if os.getppid() != self.master_pid:
                os._exit(EXIT_END)
        self._setup_signals()
        self.slot.reset(self.pid, self.spawned)
        if self.app is None:
            try:
                self.app = wsgi.load_app(self.cfg)
                log(f"WSGI app 0 (mountpoint='') ready in worker {self.wid} (pid: {self.pid})")
            except wsgi.AppLoadError as exc:
                log(str(exc))
                log(f"*** no app loaded in worker {self.wid} (pid: {self.pid}) ***")
                os._exit(EXIT_FAILED_APP)
        code = EXIT_OK
        try:
            if self.multithread:
                self._start_pool()
            self.offloader = offload.start(self.cfg, self.wid)
            self.loop()
            if self.offloader is not None:  # downloads under way finish, within the mercy
                self.offloader.wait_idle(self.cfg.worker_reload_mercy)
        except Exception:
            log(f"worker {self.wid} internal error:\n{traceback.format_exc()}")
            code = 1
        finally:
            sys.stdout.flush() if sys.stdout else None
        os._exit(code)

    # -- request threads (--threads N > 1) ------------------------------------------
    def _start_pool(self) -> None:
        kib = self.cfg.thread_stacksize
        if kib:
            try:
                threading.stack_size(kib * 1024)
                log(f"threads stack size set to {kib}k")
            except (ValueError, RuntimeError):
                log("!!! unable to set requested threads stacksize !!!")
        self._tls = threading.local()
        self._serve = self._submit
        for k in range(self.threads):
            core = self.scoreboard.core(self.wid - 1, k)
            core.reset(self.pid)
            t = threading.Thread(
                target=self._core_main, args=(k, core), name=f"uWSGIWorker{self.wid}Core{k}"
            )
            t.daemon = True
            t.start()

    def _core_main(self, k: int, core: sb.CoreSlot) -> None:
        """One core: serve what the loop hands over, hand the connection back."""
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # the loop's
        tls = self._tls
        assert tls is not None
        tls.core = core
        tls.k = k
        jobs, back, wake = self.jobs, self.back, self._wake_w
        while True:
            c, fn, args = jobs.get()
            tls.park = None
            self._guard(c, fn, *args)
            back.append(tls.park)
            try:
                os.write(wake, b"\0")
            except OSError:  # the pipe is full: the loop is awake anyway
                pass

    def _submit(self, c: Conn, fn, *args) -> None:
        """Threaded: hand a connection whose request is complete to a core."""
        if c.registered:
            self.sel.unregister(c.sock)
            c.registered = False
            self.conns.discard(c)
        self.busy += 1
        self.jobs.put((c, fn, args))
        if self.busy >= self.threads and not self.full:
            self.full = True
            if not self.paused:
                self._listen(False)

    def _take_back(self) -> None:
        """Connections the cores are done with: held for their next request."""
        back = self.back
        while back:
            c = back.popleft()
            self.busy -= 1
            if c is not None and c.sock.fileno() >= 0:
                if self.stop_hard is not None:
                    c.keep = False
                    if c.idle and not c.closing:
                        c.deadline = min(c.deadline, time.monotonic() + conns.STOP_GRACE)
                self._park(c)
        if self.full and self.busy < self.threads:
            self.full = False
            self._resume(time.monotonic())

    def _resume(self, now: float) -> None:
        if (
            self.paused
            and not self.full
            and self.stop_hard is None
            and now >= self.resume_at
            and len(self.conns) < self.max_idle
        ):
            self._listen(True)

    def loop(self) -> None:
        sel = self.sel
        for lst in self.listeners:
            lst.sock.setblocking(False)
            # accepted sockets inherit these: no setsockopt per connection
            lst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.timeout)
            lst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.timeout)
            conns.defer_accept(lst.sock, self.cfg.socket_timeout)
        self._listen(True)
        sel.register(self._wake, None)
        self.slot.set_state(sb.IDLE)
        next_check = 0.0
        while True:
            if self.stopping and self.stop_hard is None:
                self._begin_stop()
            now = time.monotonic()
            if self.stop_hard is not None and now < self.stop_hard and self.quiet_until:
                self._drain_backlog()  # handshakes that completed after the first drain
            if (
                self.stop_hard is not None
                and (not self.conns or now >= self.stop_hard)
                and not self.busy  # every request in a core is finished
                and (now >= self.quiet_until or now >= self.stop_hard)
            ):
                break
            if self.conns or self.stop_hard is not None:
                tick = 0.1 if self.stop_hard is not None else 0.5
            else:
                tick = 1.0
            for _fileobj, data in sel.poll(max(0.0, min(tick, next_check - now))):
                if data is None:
                    self._drain_wake()
                    if self.back:
                        self._take_back()
                elif type(data) is Conn:
                    self._readable(data)
                elif not self.paused:
                    self._accept(data)
                if self.stopping and self.stop_hard is None:
                    break
            now = time.monotonic()
            if now >= next_check:
                next_check = now + tick
                self._periodic(now)
        for c in list(self.conns):
            self._drop(c)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake, 512):
                pass
        except BlockingIOError:
            pass

    def _listen(self, on: bool) -> None:
        """Poll the listening sockets, or stop (at the idle limit, short of descriptors,
        stopping): new connections then wait in the listen queue for another worker."""
        for lst in self.listeners:
            if on:
                self.sel.register(lst.sock, lst, exclusive=True)
            else:
                self.sel.unregister(lst.sock)
        self.paused = not on

    def _pause(self, seconds: float) -> None:
        if not self.paused:
            self._listen(False)
        self.resume_at = time.monotonic() + seconds

    def _periodic(self, now: float) -> None:
        if self.master_pid is not None and os.getppid() != self.master_pid:
            self.stopping = True
        for c in [c for c in self.conns if c.deadline <= now]:
            self._expire(c, now)
        self._resume(now)

    def _expire(self, c: Conn, now: float) -> None:
        """A deadline passed: a half-closed connection is closed, an idle one half-closed,
        one whose head did not arrive in time answered 408 (HTTP) and half-closed."""
        if c.closing:
            self._drop(c)
        elif c.idle:
            self._linger(c)
        elif c.is_http:
            self._refuse(c, http.HttpError(408, f"no complete request in {self.head_timeout} s"))
        else:
            log(f"uwsgi_proto_uwsgi_parser(): timeout [worker {self.wid}] ({c.remote})")
            self._drop(c)

    def _begin_stop(self) -> None:
        """Finish without losing a request: no new connections; a request already on its
        way on a held connection is answered with `Connection: close`; idle connections are
        half-closed after STOP_GRACE, so their clients retry on a new connection."""
        self.slot.set_state(sb.STOPPING)
        now = time.monotonic()
        self.stop_hard = now + max(self.head_timeout, conns.STOP_GRACE) + conns.LINGER_SECONDS
        if not self.paused:
            self._listen(False)
        if self.scoreboard.master_state == sb.MASTER_STOPPING:
            self.quiet_until = now + conns.DRAIN_QUIET
            self._drain_backlog()
        grace = time.monotonic() + conns.STOP_GRACE
        for c in self.conns:
            c.keep = False
            if c.idle and not c.closing:
                c.deadline = min(c.deadline, grace)

    def _drain_backlog(self) -> None:
        """Shutting down: take what already waits in the backlog (the master has stopped
        new handshakes, so the queue is finite; still bounded in count and time)."""
        budget = 10 * max(1, self.cfg.listen)
        deadline = time.monotonic() + 10.0
        for lst in self.listeners:
            while budget > 0 and time.monotonic() < deadline:
                try:
                    sock, addr = lst.sock.accept()
                except OSError:
                    break
                budget -= 1
                self.quiet_until = time.monotonic() + conns.DRAIN_QUIET
                self._new_conn(sock, addr, lst, keep=False)

    def _after_request(self) -> None:
        self.requests += 1
        if self.stopping or not self.recycles:
            return
        reason = self.recycling.reason(
            self.requests, time.time() - self.spawned, _rss, self.pid, self.wid
        )
        if reason:
            log(reason)
            self.stopping = True

    def _last_request(self) -> bool:
        """The next request is the last one (--max-requests): its answer closes."""
        r = self.recycling
        return (
            r.max_requests > 0
            and self.requests + 1 >= r.max_requests
            and time.time() - self.spawned >= r.min_lifetime
        )

    # -- connections ------------------------------------------------------------------
    def _accept(self, lst) -> None:
        """New connections, each served at once when its request is there (TCP_DEFER_ACCEPT);
        accepted again, up to ACCEPT_BATCH, while the backlog holds more: one epoll wake-up
        for a burst of connections."""
        ls = lst.sock
        accept = ls._accept  # socket.accept() without its per-call family/type look-ups
        family, kind, proto = ls.family, ls.type, ls.proto
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._short_of_fds(exc)
                else:
                    log(f"accept(): {exc.strerror} [worker {self.wid}]")
                return
            self._new_conn(socket.socket(family, kind, proto, fd), addr, lst, keep=True)
            if len(self.conns) >= self.max_idle:
                self._make_room()
            if self.paused or self.stopping:
                return

    def _new_conn(self, sock, addr, lst, keep: bool) -> None:
        c = Conn(sock, lst, addr, time.monotonic(), self.head_timeout, keep)
        if lst.kind == "http":
            c.parser = http.RequestParser(self.buffer_size, self.cfg.limit_post)
        self._readable(c)  # with TCP_DEFER_ACCEPT the head is usually there already

    def _short_of_fds(self, exc: OSError) -> None:
        """accept() failed for want of descriptors: close the longest idle connections to
        make room, or stop polling the listeners for a second; logged once per 10 s."""
        now = time.monotonic()
        self.fd_errors += 1
        if now >= self.fd_log_at:
            more = f" ({self.fd_errors} times in the last 10 s)" if self.fd_errors > 1 else ""
            log(
                f"accept(): {exc.strerror} [worker {self.wid}]{more}: "
                f"{len(self.conns)} connections held, closing idle ones"
            )
            self.fd_log_at = now + 10.0
            self.fd_errors = 0
        if not self._evict(max(1, len(self.conns) // 8)):
            self._pause(1.0)

    def _make_room(self) -> None:
        """At --max-idle-connections: the longest idle connections go; when none is idle,
        new connections wait in the listen queue until some leave."""
        self._evict(len(self.conns) - self.max_idle + 1)
        if len(self.conns) >= self.max_idle:
            self._pause(0.5)

    def _evict(self, n: int) -> int:
        idle = sorted((c for c in self.conns if c.idle and not c.closing), key=_since)
        for c in idle[:n]:
            self._drop(c)
        return min(n, len(idle))

    def _park(self, c: Conn) -> None:
        tls = self._tls
        if tls is not None and hasattr(tls, "core"):  # a core: the loop holds it, later
            tls.park = c
            return
        if not c.registered:
            self.sel.register(c.sock, c)
            c.registered = True
            self.conns.add(c)

    def _drop(self, c: Conn) -> None:
        if c.registered:
            self.sel.unregister(c.sock)
            c.registered = False
            self.conns.discard(c)
        if c.parser is not None:
            c.parser.close()
        for req in c.queue:
            if req.body is not None:
                req.body.close()
        c.queue = []
        c.sock.close()

    def _linger(self, c: Conn) -> None:
        """Half-close: the client reads every byte sent, then EOF; what it still sends is
        read away until its EOF or LINGER_SECONDS, and only then the socket is closed."""
        if c.sock in offload.HANDED:  # an offload thread sends on it: close ours only
            self._drop(c)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(c)
            return
        if c.parser is not None:
            c.parser.close()
        c.closing = True
        c.idle = False
        c.deadline = time.monotonic() + conns.LINGER_SECONDS
        self._park(c)

    def _readable(self, c: Conn) -> None:
        """Bytes (or EOF) on a held connection, read without blocking."""
        try:
            data = c.sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if not c.closing:
                self._park(c)
            return
        except OSError:
            data = _EMPTY
        if c.closing or not data:
            if not data:
                self._drop(c)
            return
        if c.idle:
            c.idle = False
            c.deadline = time.monotonic() + self.head_timeout
        if c.parser is not None:
            try:
                c.queue.extend(c.parser.feed(data))
            except http.HttpError as exc:
                self._refuse(c, exc)
                return
            if c.queue and self._body_ready(c):
                self._serve(c, self._serve_http, c)
            else:
                self._park(c)
            return
        c.buf += data
        try:
            size = uwsgi.packet_size(c.buf, self.buffer_size)
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            self._drop(c)
            return
        if size and len(c.buf) >= size:
            self._serve(c, self._serve_uwsgi, c, size)
        else:
            self._park(c)

    def _body_ready(self, c: Conn) -> bool:
        """A small chunked body is read here, by the loop, so the app gets CONTENT_LENGTH;
        a big one streams. The client waiting for `100 Continue` gets it first."""
        body = c.queue[0].body
        if (
            body is None
            or body.complete
            or body.error is not None
            or body.length is not None
            or body.received > conns.CHUNKED_INLINE
            or self.cfg.post_buffering
            or c.parser is None
            or c.parser.broken
        ):
            return True
        if body.expect_continue and not body.continued:
            body.continued = True
            self._send_quiet(c.sock, http.CONTINUE)
        return False

    def _guard(self, c: Conn, fn, *args) -> None:
        """Serve through `fn`; whatever goes wrong with one connection, the worker goes on."""
        try:
            fn(*args)
        except Exception:
            log(
                f"worker {self.wid}: error on a connection (closed):\n"
                f"{traceback.format_exc().rstrip()}"
            )
            self._drop(c)

    def _serve_uwsgi(self, c: Conn, size: int) -> None:
        start = time.time()
        if c.registered:  # one request per connection: it leaves the poller for good
            self.sel.unregister(c.sock)
            c.registered = False
            self.conns.discard(c)
        try:
            packet = uwsgi.parse_packet(c.buf, size)
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            self._drop(c)
            return
        rest = bytes(c.buf[size:])
        c.buf = bytearray()
        env = packet.vars
        if packet.modifier1 not in (0, 30):
            log(f"-- unavailable modifier requested: {packet.modifier1} --")
            self._drop(c)
            return
        protocol = env.get("SERVER_PROTOCOL")
        env.setdefault("REMOTE_ADDR", c.remote)
        env.setdefault("REMOTE_PORT", c.port)
        if "SERVER_NAME" not in env:
            env["SERVER_NAME"] = self._server_name(c.lst)
        if "SERVER_PORT" not in env:
            env["SERVER_PORT"] = self._server_port(c.lst)
        try:
            declared = env.get("CONTENT_LENGTH")
            length = uwsgi.content_length(declared) if declared else 0
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            self._drop(c)
            return
        limit = self.cfg.limit_post
        if limit and length > limit:  # answered as on HTTP sockets
            self._refuse(
                c, http.HttpError(413, f"Content-Length {length} over the limit of {limit}")
            )
            return
        reader = uwsgi.BodyReader(c.sock.recv, length, rest) if length else None
        body: object = reader if reader is not None else io.BytesIO()
        if reader is not None and self.cfg.post_buffering:
            try:
                body = self._post_buffer(reader, length)
            except (OSError, uwsgi.UwsgiError) as exc:
                log(f"uwsgi_postbuffer_do(): {exc} [{env.get('REQUEST_URI', '')}]")
                self._drop(c)
                return
            env["CONTENT_LENGTH"] = str(length)
        if packet.modifier1 == 30:
            script = env.get("SCRIPT_NAME", "")
            path = env.get("PATH_INFO", "")
            if script and path.startswith(script):
                env["PATH_INFO"] = path[len(script) :]
        self._dispatch(
            c.sock,
            env,
            body,
            self._raw_framing.get(protocol) or self._new_raw_framing(protocol),
            start,
            packet.nvars,
            packet.datasize,
            protocol,
        )
        if (reader is None or reader.complete) and not rest[length:]:
            self._drop(c)
        else:  # the body was left unread: no reset that would eat the answer
            self._linger(c)

    def _new_raw_framing(self, protocol: str | None) -> uwsgi.RawFraming:
        framing = uwsgi.RawFraming(protocol)
        if len(self._raw_framing) < 16:  # SERVER_PROTOCOL comes from the client
            self._raw_framing[protocol] = framing
        return framing

    def _post_buffer(self, stream, length: int | None):
        """--post-buffering: the whole body now, in memory below the threshold, else in a
        temporary file (closed with its request, whatever way the request ends)."""
        if length is not None and length < self.cfg.post_buffering:
            data = stream.read()
            if len(data) < length:
                raise BodyError("client closed the connection before the end of the body")
            return io.BytesIO(data)
        spool = tempfile.TemporaryFile()
        try:
            while True:
                chunk = stream.read(1 << 20)
                if not chunk:
                    break
                spool.write(chunk)
            if length is not None and spool.tell() < length:
                raise BodyError("client closed the connection before the end of the body")
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def _serve_http(self, c: Conn) -> None:
        """Serve the requests whose heads (and small chunked bodies) arrived on `c`, then
        hold `c` for its next request, or half-close it."""
        parser = c.parser
        assert parser is not None
        while c.queue:
            if not self._body_ready(c):  # a small chunked body still arriving
                c.deadline = time.monotonic() + self.head_timeout
                self._park(c)
                return
            req = c.queue.pop(0)
            if req.body is not None and req.body.error is not None:  # the app never ran
                self._refuse(c, req.body.error)
                return
            if (
                not c.keep
                or not self.keepalive
                or self.stopping
                or self._last_request()
                or (parser.broken and not c.queue and parser.error is None)
            ):
                req.keep_alive = False
            if not self._serve_http_request(c, req):
                self._close_after_response(c)
                return
        if parser.error is not None:  # a bad request after good ones in the same bytes
            self._refuse(c, parser.error)
            return
        if parser.broken:
            self._linger(c)
            return
        now = time.monotonic()
        if parser.in_message:  # part of the next head is here: it has head-timeout
            c.deadline = now + self.head_timeout
        else:
            c.idle = True
            c.since = now
            c.deadline = now + self.keepalive
            if self.stop_hard is not None:
                c.deadline = min(c.deadline, now + conns.STOP_GRACE)
        self._park(c)

    def _close_after_response(self, c: Conn) -> None:
        """The last answer is sent: when the client has nothing more on its way (no byte
        unread, no request begun) a plain close is a clean FIN; otherwise half-close."""
        pending = c.queue or (c.parser is not None and c.parser.in_message)
        if not pending:
            try:
                data = c.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self._drop(c)
                return
            except OSError:
                data = _EMPTY
            if not data:
                self._drop(c)
                return
        self._linger(c)

    def _refuse(self, c: Conn, error) -> None:
        """Answer a bad request, then half-close so that the answer is read, not reset."""
        log(f"HTTP error from {c.remote}: {error}")
        self._send_quiet(c.sock, http.error_response(error.status, error.reason))
        self._linger(c)

    def _fill(self, c: Conn, body: http.HttpInput) -> None:
        """The app wants more of the body: one blocking read (bounded by --socket-timeout),
        fed to the parser (which fills `body`, and queues pipelined requests)."""
        parser = c.parser
        assert parser is not None
        if body.expect_continue and not body.continued:
            body.continued = True
            self._send_quiet(c.sock, http.CONTINUE)
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            raise BodyError("timeout reading the request body", 408) from None
        except OSError as exc:
            raise BodyError(f"reading the request body: {exc.strerror}") from None
        if not data:
            raise BodyError("client closed the connection before the end of the body")
        try:
            c.queue.extend(parser.feed(data))
        except http.HttpError as exc:  # a bad request after this body: answered after it
            parser.error = exc

    def _drain(self, c: Conn, body: http.HttpInput) -> bool:
        """After the app: read away the body it left, within a byte and time budget."""
        parser = c.parser
        assert parser is not None
        deadline = time.monotonic() + conns.DRAIN_SECONDS
        start = body.received
        while not body.complete:
            left = deadline - time.monotonic()
            if body.error is not None or body.received - start > http.DRAIN_BYTES or left <= 0:
                return False
            if not _wait_readable(c.sock, left):
                return False
            try:
                data = c.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return False
            if not data:
                return False
            try:
                c.queue.extend(parser.feed(data))
            except http.HttpError as exc:
                parser.error = exc
        return True

    def _serve_http_request(self, c: Conn, req: http.Request) -> bool:
        """Run the app for one request; True when the connection can carry another."""
        start = time.time()
        lst = c.lst
        target = req.target
        path, _, query = target.partition("?")
        env = {
            "REQUEST_METHOD": req.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "REMOTE_ADDR": c.remote,
            "REMOTE_PORT": c.port,
            "SERVER_NAME": self._server_name(lst),
            "SERVER_PORT": self._server_port(lst),
        }
        http.headers_to_environ(env, req.headers)
        host = env.get("HTTP_HOST")
        if host:
            env["SERVER_NAME"] = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        body = req.body
        wsgi_input: object = io.BytesIO()
        if body is not None:
            body.fill = partial(self._fill, c, body)
            wsgi_input = body
            if body.complete and body.length is None:  # a small chunked body, read whole
                env["CONTENT_LENGTH"] = str(body.received)
            elif self.cfg.post_buffering:
                try:
                    wsgi_input = self._post_buffer(body, body.length)
                except OSError as exc:
                    body.fill = None
                    log(f"HTTP error from {c.remote}: {exc} [{req.method} {target}]")
                    status = getattr(exc, "status", 400)
                    if body.error is not None:
                        self._send_quiet(c.sock, http.error_response(status, str(exc)))
                    return False
                env["CONTENT_LENGTH"] = str(body.received)
        framing = http.HttpFraming(req.version, req.keep_alive, body)
        ok = self._dispatch(
            c.sock,
            env,
            wsgi_input,
            framing,
            start,
            len(env),
            uwsgi.vars_size(env),  # the log's {N vars in M bytes}, as on uwsgi sockets
            env["SERVER_PROTOCOL"],
        )
        usable = ok and framing.keep_alive
        if body is not None:
            body.close()
            if usable and not body.complete:
                usable = self._drain(c, body)
            body.fill = None  # no cycle left between the body and the connection
        return usable

    @staticmethod
    def _server_name(lst) -> str:
        return lst.address[0] if isinstance(lst.address, tuple) else "localhost"

    @staticmethod
    def _server_port(lst) -> str:
        return str(lst.address[1]) if isinstance(lst.address, tuple) else ""

    # -- the app ----------------------------------------------------------------------
    def _dispatch(self, conn, env, body, framing, start, nvars, pktsize, protocol) -> bool:
        """Run the app for one request; True when the connection is still usable."""
        env["wsgi.url_scheme"] = (
            "https"
            if env.get("HTTPS", "").lower() in ("on", "1") or env.get("UWSGI_SCHEME") == "https"
            else "http"
        )
        env["wsgi.input"] = body
        env.update(self._wsgi_env)  # the keys that are the same for every request
        for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING"):
            if key not in env:
                env[key] = ""
        method = env.setdefault("REQUEST_METHOD", "GET")
        uri = env.get("REQUEST_URI") or env["PATH_INFO"]
        what = f"{method} {uri}".encode("latin-1", "replace")
        tls = self._tls
        core = None
        if tls is None:
            self.slot.begin(start, what)
        else:
            core = tls.core
            env["uwsgi.core"] = tls.k
            core.begin(start, what)
            with self.lock:
                self.app_busy += 1
                self.slot.begin(start, what)
        call = wsgi.Call(conn, framing, method, self.cfg.socket_timeout)
        status = 500
        failed = False
        usable = True
        try:
            status = call.run(self.app, env)
        except BaseException as exc:  # the app's failure must never kill the worker
            failed = True
            usable = False
            if isinstance(exc, BodyError):  # the body could not be read: the client's fault
                log(f"{exc} [{method} {uri}]")
            elif isinstance(exc, OSError) and call.head_sent:
                log(
                    f"uwsgi_response_write_body_do(): {exc.strerror or exc} "
                    f"[{method} {uri}] (client gone)"
                )
            else:
                log(
                    f"Traceback of the exception in {method} {uri}:\n"
                    f"{traceback.format_exc().rstrip()}"
                )
            if not call.head_sent and isinstance(exc, BodyError):
                status = exc.status
                answer = http.error_response(status, str(exc))
                self._send_quiet(conn, answer)
                call.head_bytes, call.header_count = answer.index(b"\r\n\r\n") + 4, 3
            elif not call.head_sent:
                status = 500
                head = framing.head(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(_BODY_500)))],
                    len(_BODY_500),
                    False,
                )
                self._send_quiet(conn, head + _BODY_500)
                call.head_bytes, call.header_count = len(head), 2
                call.tx = len(_BODY_500)
        finally:
            close = getattr(body, "close", None)
            if close is not None:  # the body (and any file behind it) ends with its request
                close()
        elapsed = time.time() - start
        if core is None:
            self.slot.end(elapsed, call.tx + call.head_bytes, failed)  # uWSGI's tx: head + body
            self._after_request()
            requests = self.requests
        else:
            core.end()
            with self.lock:
                self.app_busy -= 1
                tx = call.tx + call.head_bytes
                self.slot.end(elapsed, tx, failed, sb.BUSY if self.app_busy else sb.IDLE)
                self._after_request()
                requests = self.requests
        if self.reqlog.wanted(status, elapsed):
            self.reqlog.emit(
                Record(
                    env=env,
                    start=start,
                    elapsed=elapsed,
                    status=status,
                    tx=call.tx,
                    headers=call.header_count,
                    hsize=call.head_bytes,
                    nvars=nvars,
                    pktsize=pktsize,
                    protocol=protocol,
                    requests=requests,
                    total=self._instance_requests(),
                    pid=self.pid,
                    wid=self.wid,
                    core=0 if tls is None else tls.k,
                    via=call.via,
                )
            )
        return usable

    def _instance_requests(self) -> int:
        """Requests served by every worker of the instance (the log line's `req: n/TOTAL`)."""
        mm = self.scoreboard.mm
        n = self.scoreboard.highest or self.scoreboard.slots
        if _LITTLE_ENDIAN:  # each slot's u64 request count, summed in C: no loop in Python
            with memoryview(mm) as whole, whole[: n * sb.SLOT_SIZE] as part:
                with part.cast("Q") as words:
                    return sum(words[_REQUESTS_WORD :: sb.SLOT_SIZE // 8])
        total = 0
        for i in range(n):
            total += sb.HEAD.unpack_from(mm, i * sb.SLOT_SIZE)[2]
        return total

    @staticmethod
    def _send_quiet(conn, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError:
            pass


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    """poll(2), not select(2): descriptors above 1024 are common with many connections."""
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def _since(c: Conn) -> float:
    return c.since


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

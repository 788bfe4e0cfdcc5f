"""The Python worker: accept on the shared sockets, parse one request at a time, run the app.

One selector holds the listening sockets, idle HTTP keep-alive connections and a wakeup pipe
for signals. Signal handlers only set flags (SIGHUP: finish and exit 0); SIGINT, SIGQUIT and
SIGTERM end the process at once, as the worker contract says.
"""

from __future__ import annotations

import faulthandler
import io
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from urllib.parse import unquote_to_bytes

from pymaster.apps import wsgi
from pymaster.log import log
from pymaster.protocols import http, uwsgi
from pymaster.workers import scoreboard as sb
from pymaster.workers.contract import (
    EXIT_FAILED_APP,
    EXIT_MASTER_GONE,
    EXIT_OK,
    Recycling,
    die_with_master,
)
from pymaster.workers.wsgi.poller import Poller
from pymaster.workers.wsgi.reqlog import Record, RequestLog

EXIT_END = EXIT_MASTER_GONE
_EMPTY = b""
_BODY_500 = b"Internal Server Error"


def _timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))


class Idle:
    """An HTTP keep-alive connection parked in the selector between requests."""

    __slots__ = ("parser", "lst", "remote", "port", "since")

    def __init__(self, parser, lst, remote, port, since):
        self.parser, self.lst, self.remote, self.port, self.since = parser, lst, remote, port, since


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
        self.idle: dict[socket.socket, Idle] = {}
        self.sel = Poller()

    # -- lifecycle --------------------------------------------------------------------
    def _on_hup(self, signum, frame):
        self.stopping = True

    @staticmethod
    def _on_end(signum, frame):
        os._exit(EXIT_END)

    def _setup_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = rfd
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
            self.loop()
        except Exception:
            log(f"worker {self.wid} internal error:\n{traceback.format_exc()}")
            code = 1
        finally:
            sys.stdout.flush() if sys.stdout else None
        os._exit(code)

    def loop(self) -> None:
        sel = self.sel
        for lst in self.listeners:
            lst.sock.setblocking(False)
            # accepted sockets inherit these: no setsockopt per connection
            lst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self.timeout)
            lst.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self.timeout)
            sel.register(lst.sock, lst, exclusive=True)
        sel.register(self._wake, None)
        self.slot.set_state(sb.IDLE)
        next_check = 0.0
        while not self.stopping:
            timeout = 1.0
            if self.idle:
                timeout = min(timeout, self.keepalive / 2 or 0.5)
            for fileobj, data in sel.poll(timeout):
                if data is None:
                    self._drain_wake()
                elif type(data) is Idle:
                    self._resume_keepalive(fileobj, data)
                else:
                    self._accept(data)
                if self.stopping:
                    break
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                self._periodic(now)
        self.slot.set_state(sb.STOPPING)
        for conn, idle in list(self.idle.items()):
            self._finish_idle(conn, idle)
        if self.scoreboard.master_state == sb.MASTER_STOPPING:
            self._drain_backlog()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake, 512):
                pass
        except BlockingIOError:
            pass

    def _periodic(self, now: float) -> None:
        if self.master_pid is not None and os.getppid() != self.master_pid:
            self.stopping = True
            return
        if self.keepalive:
            deadline = now - self.keepalive
            for conn, idle in list(self.idle.items()):
                if idle.since < deadline:
                    self._close_idle(conn)

    def _finish_idle(self, conn, idle) -> None:
        """Stopping: a request already sent on an idle connection is served, then closed."""
        readable = select_ready(conn)
        self._close_idle(conn, close=not readable)
        if readable:
            conn.setblocking(True)
            self._serve_http(conn, idle.parser, idle.remote, idle.port, idle.lst, keep=False)

    def _close_idle(self, conn, close: bool = True) -> None:
        self.idle.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        if close:
            conn.close()

    def _after_request(self) -> None:
        self.requests += 1
        reason = self.recycling.reason(
            self.requests, time.time() - self.spawned, _rss, self.pid, self.wid
        )
        if reason:
            log(reason)
            self.stopping = True

    def _drain_backlog(self) -> None:
        """Shutting down: serve what already waits in the backlog (the master has stopped
        new handshakes, so the queue is finite; still bounded in count and time)."""
        budget = 10 * max(1, self.cfg.listen)
        deadline = time.monotonic() + 10.0
        for lst in self.listeners:
            while budget > 0 and time.monotonic() < deadline:
                try:
                    conn, addr = lst.sock.accept()
                except OSError:
                    break
                budget -= 1
                self._serve_accepted(conn, addr, lst, keep=False)

    # -- connections ------------------------------------------------------------------
    def _accept(self, lst) -> None:
        try:
            conn, addr = lst.sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            log(f"accept(): {exc.strerror} [worker {self.wid}]")
            return
        self._serve_accepted(conn, addr, lst, keep=True)

    def _serve_accepted(self, conn, addr, lst, keep: bool) -> None:
        self._guard(conn, self._serve_connection, conn, addr, lst, keep)

    def _guard(self, conn, fn, *args) -> None:
        """Serve through `fn`; whatever goes wrong with one connection, the worker goes on."""
        try:
            fn(*args)
        except Exception:
            log(
                f"worker {self.wid}: error on a connection (closed):\n"
                f"{traceback.format_exc().rstrip()}"
            )
            self.idle.pop(conn, None)
            self.sel.unregister(conn)
            conn.close()

    def _serve_connection(self, conn, addr, lst, keep: bool) -> None:
        """`conn` is blocking (accept4 without SOCK_NONBLOCK) with the listener's timeouts."""
        remote = addr[0] if isinstance(addr, tuple) else ""
        port = str(addr[1]) if isinstance(addr, tuple) else ""
        if lst.kind == "http":
            self._serve_http(
                conn,
                http.RequestParser(self.buffer_size, self.cfg.limit_post),
                remote,
                port,
                lst,
                keep,
            )
        else:
            try:
                self._serve_uwsgi(conn, remote, port, lst)
            finally:
                conn.close()

    def _serve_uwsgi(self, conn, remote: str, port: str, lst) -> None:
        start = time.time()
        try:
            packet, rest = uwsgi.read_packet(conn.recv, self.buffer_size)
        except uwsgi.UwsgiError as exc:
            log(str(exc))
            return
        except OSError as exc:
            log(f"uwsgi_proto_uwsgi_parser(): {exc.strerror or 'timeout'}")
            return
        env = packet.vars
        if packet.modifier1 not in (0, 30):
            log(f"-- unavailable modifier requested: {packet.modifier1} --")
            return
        protocol = env.get("SERVER_PROTOCOL")
        env.setdefault("REMOTE_ADDR", remote)
        env.setdefault("REMOTE_PORT", port)
        if "SERVER_NAME" not in env:
            env["SERVER_NAME"] = self._server_name(lst)
        if "SERVER_PORT" not in env:
            env["SERVER_PORT"] = self._server_port(lst)
        length = uwsgi.content_length(env.get("CONTENT_LENGTH"))
        body = uwsgi.BodyReader(conn.recv, length, rest) if length or rest else io.BytesIO()
        if packet.modifier1 == 30:
            script = env.get("SCRIPT_NAME", "")
            path = env.get("PATH_INFO", "")
            if script and path.startswith(script):
                env["PATH_INFO"] = path[len(script) :]
        self._dispatch(
            conn,
            env,
            body,
            uwsgi.RawFraming(protocol),
            start,
            packet.nvars,
            packet.datasize,
            protocol,
        )

    def _serve_http(self, conn, parser, remote, port, lst, keep: bool = True) -> None:
        """Serve requests on `conn` until it goes idle (kept) or must close."""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = _EMPTY
            if not data:
                conn.close()
                return
            try:
                requests = parser.feed(data)
            except http.HttpError as exc:
                self._refuse(conn, remote, exc)
                return
            if not requests and parser.headers_complete and parser.in_message:
                self._maybe_continue(conn, parser)
            for req in requests:
                if not keep or self.stopping or parser.error:
                    req.keep_alive = False
                if not self._serve_http_request(conn, req, remote, port, lst) or not req.keep_alive:
                    break
            if parser.error:  # a bad request after good ones in the same bytes
                self._refuse(conn, remote, parser.error)
                return
            if any(not r.keep_alive for r in requests):
                conn.close()
                return
            if requests and not parser.in_message:
                if self.keepalive and not self.stopping and keep:
                    idle = Idle(parser, lst, remote, port, time.monotonic())
                    self.idle[conn] = idle
                    conn.setblocking(False)
                    self.sel.register(conn, idle)
                    return
                conn.close()
                return

    def _refuse(self, conn, remote: str, error) -> None:
        """Answer a bad request, then close so that the answer is read, not reset: stop
        writing, and drain what the client still sends for a short while."""
        log(f"HTTP error from {remote}: {error}")
        self._send_quiet(conn, http.error_response(error.status, error.reason))
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.2)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()

    def _maybe_continue(self, conn, parser) -> None:
        req = parser._current
        if req is not None and req.expect_continue and not getattr(req, "continued", False):
            req.continued = True
            self._send_quiet(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _resume_keepalive(self, conn, idle) -> None:
        self.sel.unregister(conn)
        self.idle.pop(conn, None)
        conn.setblocking(True)
        self._guard(conn, self._serve_http, conn, idle.parser, idle.remote, idle.port, idle.lst)

    def _serve_http_request(self, conn, req, remote, port, lst) -> bool:
        start = time.time()
        target = req.target
        path, _, query = target.partition("?")
        env = {
            "REQUEST_METHOD": req.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "REMOTE_ADDR": remote,
            "REMOTE_PORT": port,
            "SERVER_NAME": self._server_name(lst),
            "SERVER_PORT": self._server_port(lst),
        }
        for name, value in req.headers:
            if b"_" in name:  # X_Forwarded_For would shadow X-Forwarded-For: dropped
                continue
            key = name.decode("latin-1").upper().replace("-", "_")
            val = value.decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                env[key] = val
                continue
            key = "HTTP_" + key
            if key in env:
                env[key] += ("; " if key == "HTTP_COOKIE" else ",") + val
            else:
                env[key] = val
        if req.body is not None:
            env["CONTENT_LENGTH"] = str(req.body_size)
            body = req.body
        else:
            body = io.BytesIO()
        host = env.get("HTTP_HOST")
        if host:
            env["SERVER_NAME"] = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        framing = http.HttpFraming(req.version, req.keep_alive)
        ok = self._dispatch(
            conn, env, body, framing, start, len(env), req.head_size, env["SERVER_PROTOCOL"]
        )
        return ok and framing.keep_alive

    @staticmethod
    def _server_name(lst) -> str:
        return lst.address[0] if isinstance(lst.address, tuple) else "localhost"

    @staticmethod
    def _server_port(lst) -> str:
        return str(lst.address[1]) if isinstance(lst.address, tuple) else ""

    # -- the app ----------------------------------------------------------------------
    def _dispatch(self, conn, env, body, framing, start, nvars, pktsize, protocol) -> bool:
        """Run the app for one request; True when the connection is still usable."""
        env["wsgi.version"] = (1, 0)
        env["wsgi.url_scheme"] = (
            "https"
            if env.get("HTTPS", "").lower() in ("on", "1") or env.get("UWSGI_SCHEME") == "https"
            else "http"
        )
        env["wsgi.input"] = body
        env["wsgi.errors"] = wsgi.ERRORS
        env["wsgi.multithread"] = False
        env["wsgi.multiprocess"] = True
        env["wsgi.run_once"] = False
        env["wsgi.file_wrapper"] = wsgi.FileWrapper
        env["wsgi.input_terminated"] = True
        for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING"):
            if key not in env:
                env[key] = ""
        method = env.setdefault("REQUEST_METHOD", "GET")
        uri = env.get("REQUEST_URI") or env["PATH_INFO"]
        self.slot.begin(start, f"{method} {uri}".encode("latin-1", "replace"))
        call = wsgi.Call(conn, framing, method, self.cfg.socket_timeout)
        status = 500
        failed = False
        usable = True
        try:
            status = call.run(self.app, env)
        except BaseException as exc:  # the app's failure must never kill the worker
            failed = True
            usable = False
            if isinstance(exc, OSError) and call.head_sent:
                log(
                    f"uwsgi_response_write_body_do(): {exc.strerror or exc} "
                    f"[{method} {uri}] (client gone)"
                )
            else:
                log(
                    f"Traceback of the exception in {method} {uri}:\n"
                    f"{traceback.format_exc().rstrip()}"
                )
            if not call.head_sent:
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
        elapsed = time.time() - start
        self.slot.end(elapsed, call.tx, failed)
        self._after_request()
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
                    requests=self.requests,
                    total=self._instance_requests(),
                    pid=self.pid,
                    wid=self.wid,
                )
            )
        return usable

    def _instance_requests(self) -> int:
        total = 0
        mm = self.scoreboard.mm
        for i in range(self.scoreboard.highest or self.scoreboard.slots):
            total += sb.HEAD.unpack_from(mm, i * sb.SLOT_SIZE)[2]
        return total

    @staticmethod
    def _send_quiet(conn, data: bytes) -> None:
        try:
            conn.sendall(data)
        except OSError:
            pass


def select_ready(conn) -> bool:
    """True when `conn` has bytes (or EOF) waiting to be read."""
    try:
        return bool(select.select([conn], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def _rss() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

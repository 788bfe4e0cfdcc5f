"""`--offload-threads N`: N threads per worker that send file bodies, so that a slow client
downloading a big file never holds the worker (or its request thread).

When a response body is a `wsgi.file_wrapper` over a regular file (static files and the app's
own file_wrapper alike, as uWSGI's writer offloads both), the request thread writes the head
(with `Connection: close`) and hands a dup of the connection's descriptor, a dup of the file's,
the offset and the length to the next offload thread (round robin). The request is finished
for the worker at once: it logs the line (the full length, `via offload()`), closes its own
descriptor and serves the next request.

Each offload thread has its own epoll loop: non-blocking `os.sendfile()` whenever the socket
is writable; a client that takes no byte for `--socket-timeout` seconds is dropped; at the
end the socket is half-closed, read away until the client's EOF (at most LINGER_SECONDS, so
no unread byte turns the close into a reset that would destroy the tail), then closed. Every
descriptor a job holds is closed on every path (end, error, timeout).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
import weakref
from collections import deque

from pymaster.apps import wsgi
from pymaster.config import Config
from pymaster.log import log
from pymaster.workers.wsgi import conns

_OUT = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
_IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_CHUNK = 1 << 30  # sendfile() count per call: the kernel sends what the socket takes

# sockets whose response went to an offload thread: the worker must close its descriptor,
# never shutdown() it (that would end the transfer); the worker thread that handed it checks
HANDED: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class Job:
    """One file transfer in an offload thread."""

    __slots__ = ("sock", "file", "offset", "left", "deadline", "lingering", "what")

    def __init__(self, sock: socket.socket, file_fd: int, offset: int, count: int, what: str):
        self.sock = sock
        self.file = file_fd
        self.offset = offset
        self.left = count
        self.deadline = 0.0
        self.lingering = False
        self.what = what  # "GET /uri (addr)" for the error lines

    def close(self) -> None:
        if self.file >= 0:
            os.close(self.file)
            self.file = -1
        self.sock.close()


class OffloadThread:
    """One offload thread: its queue of new jobs, an eventfd to wake it, its epoll."""

    def __init__(self, wid: int, k: int, timeout: float):
        self.timeout = timeout
        self.incoming: deque[Job] = deque()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep = select.epoll()
        self.ep.register(self.wake, select.EPOLLIN)
        self.jobs: dict[int, Job] = {}
        self.done = 0  # transfers ended (any way), for wait_idle()
        self.taken = 0
        self.thread = threading.Thread(target=self._main, name=f"uWSGIWorker{wid}Offload{k}")
        self.thread.daemon = True

    def submit(self, job: Job) -> None:
        self.taken += 1
        self.incoming.append(job)
        os.eventfd_write(self.wake, 1)

    @property
    def busy(self) -> int:
        return self.taken - self.done

    def _main(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # the loop's
        while True:
            soonest = min((j.deadline for j in self.jobs.values()), default=0.0)
            wait = max(0.0, min(1.0, soonest - time.monotonic())) if soonest else 1.0
            try:
                events = self.ep.poll(wait)
            except InterruptedError:
                continue
            for fd, _ev in events:
                if fd == self.wake:
                    try:
                        os.eventfd_read(self.wake)
                    except BlockingIOError:
                        pass
                    while self.incoming:
                        self._start(self.incoming.popleft())
                    continue
                job = self.jobs.get(fd)
                if job is not None:
                    self._step(fd, job)
            now = time.monotonic()
            for fd, job in [(fd, j) for fd, j in self.jobs.items() if j.deadline <= now]:
                if not job.lingering:
                    log(f"u_offload_sendfile_do() TIMEOUT !!! during {job.what}")
                self._end(fd, job)

    def _start(self, job: Job) -> None:
        fd = job.sock.fileno()
        job.sock.setblocking(False)
        job.deadline = time.monotonic() + self.timeout
        self.jobs[fd] = job
        self.ep.register(fd, _OUT)
        self._step(fd, job)  # the socket buffer is usually free: no wait for the first bytes

    def _step(self, fd: int, job: Job) -> None:
        if job.lingering:
            self._read_away(fd, job)
            return
        sent = False
        try:
            while job.left > 0:
                n = os.sendfile(fd, job.file, job.offset, min(job.left, _CHUNK))
                if n == 0:  # the file is shorter than it was: nothing more to send
                    log(f"u_offload_sendfile_do(): file truncated during {job.what}")
                    job.left = 0
                    break
                job.offset += n
                job.left -= n
                sent = True
        except (BlockingIOError, InterruptedError):
            if sent:
                job.deadline = time.monotonic() + self.timeout
            return
        except OSError as exc:
            log(f"u_offload_sendfile_do(): {exc.strerror or exc} during {job.what}")
            self._end(fd, job)
            return
        # all sent: half-close, read until the client's EOF, then close
        os.close(job.file)
        job.file = -1
        try:
            job.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._end(fd, job)
            return
        job.lingering = True
        job.deadline = time.monotonic() + conns.LINGER_SECONDS
        self.ep.modify(fd, _IN)
        self._read_away(fd, job)

    def _read_away(self, fd: int, job: Job) -> None:
        try:
            while True:
                data = job.sock.recv(65536)
                if not data:
                    break
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end(fd, job)

    def _end(self, fd: int, job: Job) -> None:
        self.jobs.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        job.close()
        self.done += 1


def start(cfg: Config, wid: int) -> Offloader | None:
    """The worker's offload threads (none without --offload-threads), started, and made the
    way every `wsgi.file_wrapper` body over a regular file is sent in this process."""
    if cfg.offload_threads <= 0:
        return None
    off = Offloader(wid, cfg.offload_threads, cfg.socket_timeout)
    off.start(wid)
    wsgi.OFFLOAD = off
    return off


class Offloader:
    """A worker's offload threads; `send()` is called by whichever thread ran the app."""

    def __init__(self, wid: int, n: int, timeout: float):
        self.threads = [OffloadThread(wid, k, timeout) for k in range(n)]
        self.next = 0
        self.lock = threading.Lock()
        self.offloaded = 0  # responses handed over

    def start(self, wid: int) -> None:
        for t in self.threads:
            t.thread.start()
        log(f"spawned {len(self.threads)} offload threads for uWSGI worker {wid}")

    def send(self, sock: socket.socket, fd: int, offset: int, count: int, what: str) -> bool:
        """Hand the rest of a response (the head is sent) to an offload thread; False when
        the descriptors could not be duplicated (the caller sends it itself)."""
        try:
            conn_fd = os.dup(sock.fileno())
        except OSError:
            return False
        try:
            file_fd = os.dup(fd)
        except OSError:
            os.close(conn_fd)
            return False
        try:
            dup = socket.socket(sock.family, sock.type, sock.proto, conn_fd)
        except OSError:
            os.close(conn_fd)
            os.close(file_fd)
            return False
        job = Job(dup, file_fd, offset, count, what)
        with self.lock:
            t = self.threads[self.next]
            self.next = (self.next + 1) % len(self.threads)
            self.offloaded += 1
        HANDED.add(sock)
        t.submit(job)
        return True

    def busy(self) -> int:
        return sum(t.busy for t in self.threads)

    def wait_idle(self, seconds: float) -> None:
        """The worker is stopping: let transfers under way finish, within `seconds`."""
        end = time.monotonic() + seconds
        while self.busy() and time.monotonic() < end:
            time.sleep(0.05)

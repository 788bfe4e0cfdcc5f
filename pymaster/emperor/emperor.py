"""The Emperor loop: signal queue, scans, reaping, vassal readiness, Ragnarok.

Single-threaded, like the master loop: signal handlers append to a deque (with
`signal.set_wakeup_fd` waking `select`); each pass drains the queue, reads the vassals'
notify datagrams, answers a stats connection, reaps, then scans when `--emperor-freq`
seconds have passed (SIGWINCH scans at once). Log lines are uWSGI's, with pymaster for uWSGI.

| signal | action |
|---|---|
| SIGHUP | every vassal gets SIGHUP (its graceful reload) |
| SIGTERM | Ragnarok, graceful: every vassal gets SIGTERM (requests finish), then exit 0 |
| SIGINT, SIGQUIT | Ragnarok: every vassal gets SIGINT (stops at once; SIGTERM with --emperor-graceful-shutdown) |
| SIGUSR1 | one status line per vassal |
| SIGURG | empty the blacklist |
| SIGWINCH | scan now |

A vassal that outlives `--reload-mercy` (30 s unless set) after it was asked to stop is
killed (`NO MERCY`).
"""

from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
from collections import deque
from collections.abc import Callable

from pymaster import procname
from pymaster.config import Config
from pymaster.config.table import EMPEROR, OPTIONS
from pymaster.emperor import stats, vassal
from pymaster.emperor.blacklist import Blacklist
from pymaster.emperor.monitor import Found, Monitor, MonitorError
from pymaster.emperor.vassal import Vassal
from pymaster.log import log
from pymaster.master.notify import Notifier
from pymaster.master.sockets import SocketError

try:
    from setproctitle import setproctitle
except ImportError:  # pragma: no cover - a declared dependency

    def setproctitle(title: str) -> None:
        pass


HANDLED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGURG,
    signal.SIGWINCH,
    signal.SIGCHLD,
)
RAGNAROK_MERCY = 30  # seconds, when --reload-mercy is not set (uWSGI)
EXILE_CODE = 26  # a vassal exiting with it is not respawned until its file changes (uWSGI)
# Options that configure an instance: an Emperor with one of them is refused.
INSTANCE_OPTIONS = (
    "socket",
    "http-socket",
    "http11-socket",
    "fastrouter",
    "wsgi-file",
    "module",
    "psgi",
    "mount",
)
# Options the Emperor itself reads (with its own section).
HONOURED = frozenset(
    {o.name for o in EMPEROR}
    | {
        "ini",
        "set",
        "set-placeholder",
        "strict",
        "show-config",
        "help",
        "version",
        "logto",
        "log-date",
        "log-truncate",
        "daemonize",
        "auto-procname",
        "procname",
        "procname-prefix",
        "procname-prefix-spaced",
        "procname-append",
        "reload-mercy",
        "env",
        "chdir",
        "master",
    }
)
_UCRED = struct.Struct("iII")  # pid_t, uid_t, gid_t


class EmperorError(Exception):
    """The Emperor cannot start; the message says why."""


def check(cfg: Config) -> list[str]:
    """Refuse instance options; the lines naming options the Emperor ignores."""
    for name in INSTANCE_OPTIONS:
        if cfg.is_set(name):
            raise EmperorError(
                f"--emperor runs only the Emperor; --{name} configures an instance: put it in a "
                "vassal file (or in every vassal with --vassals-inherit / --vassal-set)"
            )
    if cfg.emperor_tyrant and os.getuid() != 0:
        raise EmperorError(
            "--emperor-tyrant runs each vassal with its file's uid and gid: the Emperor must "
            f"run as root (it runs as uid {os.getuid()})"
        )
    ignored = [o.name for o in OPTIONS if o.name not in HONOURED and cfg.is_set(o.name)]
    if not ignored:
        return []
    flags = ", ".join(f"--{name}" for name in ignored)
    return [
        f"*** the Emperor ignores {flags}: instance options belong in the vassal files "
        "(or --vassals-inherit / --vassal-set) ***"
    ]


class Emperor:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.monitors = [
            Monitor(spec, cfg.emperor_nofollow, cfg.emperor_tyrant_nofollow) for spec in cfg.emperor
        ]
        self.blacklist = Blacklist(
            cfg.emperor_throttle, cfg.emperor_max_throttle, not cfg.emperor_no_blacklist
        )
        self.vassals: dict[str, Vassal] = {}
        self.first_runs: dict[str, float] = {}
        self.exiled: dict[str, int] = {}  # key -> the file's mtime when it was exiled
        self.refused: dict[str, tuple[int, int, int]] = {}  # tyrant refusals already logged
        self.queue: deque[int] = deque()
        self.mercy = cfg.reload_mercy if cfg.is_set("reload-mercy") else RAGNAROK_MERCY
        self.ragnarok_deadline: float | None = None
        self.ragnarok_graceful = False
        self.next_scan = 0.0
        self.governed = -1
        self.notifier = Notifier()
        self.stats: stats.StatsServer | None = None
        self.wake_r = -1
        self.notify_sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        )
        self.notify_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"pymaster-emperor-{os.getpid()}-{secrets.token_hex(4)}"
        self.notify_sock.bind("\0" + name)
        self.notify_address = "@" + name

    # -- start and stop -------------------------------------------------------------------
    def install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._enqueue)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # what arrived during start-up, now

    def _enqueue(self, sig: int, frame: object) -> None:
        self.queue.append(sig)

    def run(self) -> int:
        if self.cfg.emperor_stats:
            self.stats = stats.StatsServer(self.cfg.emperor_stats, self.stats_document)
        self.install_signals()
        self.scan(time.monotonic())
        self.notifier.ready(self.governing())
        while True:
            self.cycle()
            if self.ragnarok_deadline is not None and not self.vassals:
                break
        log("The Emperor is buried.")
        self.notifier.status("The Emperor is buried.")
        if self.stats is not None:
            self.stats.close()
        return 0

    def cycle(self) -> None:
        now = time.monotonic()
        waits = self._deadlines(now)
        if self.ragnarok_deadline is None:  # no scan during Ragnarok
            waits.append(self.next_scan - now)
        timeout = max(0.0, min(1.0, *waits))
        readers = [self.wake_r, self.notify_sock.fileno()]
        if self.stats is not None:
            readers.append(self.stats.fileno())
        try:
            ready, _, _ = select.select(readers, [], [], timeout)
        except InterruptedError:
            ready = []
        if self.wake_r in ready:
            try:
                while os.read(self.wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while self.queue:
            self.on_signal(self.queue.popleft())
        if self.notify_sock.fileno() in ready:
            self.read_notify()
        if self.stats is not None and self.stats.fileno() in ready:
            self.stats.readable()
        self.reap()
        now = time.monotonic()
        if self.ragnarok_deadline is None and now >= self.next_scan:
            self.scan(now)
        self.no_mercy(now)
        self.notifier.tick(now)
        text = self.governing()
        if len(self.vassals) != self.governed:
            self.governed = len(self.vassals)
            self.notifier.status(text)

    def governing(self) -> str:
        return f"The Emperor is governing {len(self.vassals)} vassals"

    def _deadlines(self, now: float) -> list[float]:
        return [
            v.stop_deadline - now
            for v in self.vassals.values()
            if v.status == "stopping" and not v.no_mercy
        ]

    # -- signals --------------------------------------------------------------------------
    def on_signal(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            if self.ragnarok_deadline is None:
                for v in list(self.vassals.values()):
                    if v.status == "running":
                        self.reload(v, time.time_ns())
        elif sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
            self.ragnarok(sig == signal.SIGTERM or self.cfg.emperor_graceful_shutdown)
        elif sig == signal.SIGUSR1:
            for v in self.vassals.values():
                log(
                    f"vassal instance {v.name} (last modified {v.last_mod_ns // 1_000_000_000}) "
                    f"status {0 if v.status == 'running' else 1} loyal {int(v.loyal)} zerg 0"
                )
        elif sig == signal.SIGURG:
            log("[emperor] cleaning up blacklist ...")
            self.blacklist.clear()
        elif sig == signal.SIGWINCH:
            self.next_scan = 0.0

    def ragnarok(self, graceful: bool) -> None:
        now = time.monotonic()
        if self.ragnarok_deadline is not None:
            left = max(0, int(self.ragnarok_deadline - now))
            log(f"[emperor] *** RAGNAROK ALREADY EVOKED (mercyless in {left} seconds)***")
            if self.ragnarok_graceful and not graceful:  # SIGINT after SIGTERM: at once now
                self.ragnarok_graceful = False
                for v in self.vassals.values():
                    v.signal(signal.SIGINT)
            return
        log("[emperor] *** RAGNAROK EVOKED ***")
        self.notifier.stopping()
        self.ragnarok_deadline = now + self.mercy
        self.ragnarok_graceful = graceful
        for v in list(self.vassals.values()):
            if v.status == "running":
                self.stop(v, signal.SIGTERM if graceful else signal.SIGINT, now)
            else:
                v.stop_deadline = min(v.stop_deadline, self.ragnarok_deadline)
                if not graceful:
                    v.signal(signal.SIGINT)

    # -- vassal commands ------------------------------------------------------------------
    def reload(self, v: Vassal, mtime_ns: int) -> None:
        v.signal(signal.SIGHUP)
        v.respawns += 1
        v.last_mod_ns = mtime_ns
        log(f"[emperor] reload the pymaster instance {v.name}")

    def stop(self, v: Vassal, sig: int, now: float) -> None:
        v.signal(sig)
        v.status = "stopping"
        v.ready = False
        v.stop_deadline = now + self.mercy
        log(f"[emperor] stop the pymaster instance {v.name}")

    def removal_signal(self) -> int:
        return signal.SIGTERM if self.cfg.emperor_graceful_shutdown else signal.SIGINT

    def no_mercy(self, now: float) -> None:
        for v in self.vassals.values():
            if v.status == "stopping" and not v.no_mercy and now >= v.stop_deadline:
                log(f"[emperor] NO MERCY for vassal {v.name} !!!")
                v.no_mercy = True
                v.signal(signal.SIGKILL)

    # -- scanning -------------------------------------------------------------------------
    def scan(self, now: float) -> None:
        self.next_scan = now + self.cfg.emperor_freq
        wall = time.time()
        seen: set[str] = set()
        for monitor in self.monitors:
            found, notes = monitor.scan()
            for line in notes:
                log(line)
            for f in found:
                if f.key in seen:
                    continue
                seen.add(f.key)
                self.scanned(f, now, wall)
        for v in list(self.vassals.values()):
            if v.found.key not in seen and v.status == "running":
                self.stop(v, self.removal_signal(), now)
        for key in [k for k in self.exiled if k not in seen]:
            del self.exiled[key]
        for key in [k for k in self.refused if k not in seen]:
            del self.refused[key]

    def scanned(self, f: Found, now: float, wall: float) -> None:
        v = self.vassals.get(f.key)
        if v is not None:
            if v.status != "running":
                return
            if self.cfg.emperor_tyrant and (f.uid, f.gid) != (v.found.uid, v.found.gid):
                log(f"!!! permissions of file {f.name} changed. stopping the instance... !!!")
                self.stop(v, self.removal_signal(), now)
            elif f.mtime_ns > v.last_mod_ns:
                self.reload(v, f.mtime_ns)
            return
        if f.key in self.exiled:
            if self.exiled[f.key] == f.mtime_ns:
                return
            del self.exiled[f.key]
        if not self.blacklist.allows(f.name, wall):
            return
        self.start(f, now, wall)

    def start(self, f: Found, now: float, wall: float) -> None:
        ids = None
        if self.cfg.emperor_tyrant:
            if f.uid == 0 or f.gid == 0:
                if self.refused.get(f.key) != (f.uid, f.gid, f.mtime_ns):
                    self.refused[f.key] = (f.uid, f.gid, f.mtime_ns)
                    log(f"[emperor-tyrant] invalid permissions for vassal {f.name}")
                return
            self.refused.pop(f.key, None)
            ids = (f.uid, f.gid)
            log(f"[emperor-tyrant] dropping privileges to {f.uid} {f.gid} for instance {f.name}")
        argv = vassal.command(self.cfg, f)
        env = vassal.environment(os.environ, self.notify_address, os.getpid())
        try:
            proc = vassal.spawn(argv, env, f.cwd, ids)
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"[emperor] cannot start vassal {f.name}: {exc}")
            self.exiled[f.key] = f.mtime_ns
            return
        first = self.first_runs.setdefault(f.key, wall)
        self.vassals[f.key] = Vassal(f, proc, wall, first, f.mtime_ns)
        log(f"[emperor] vassal {f.name} has been spawned")

    # -- children -------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            v = next((v for v in self.vassals.values() if v.pid == pid), None)
            if v is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            v.proc.returncode = code
            del self.vassals[v.found.key]
            if v.status == "running":
                log(f"[emperor] curse the pymaster instance {v.name} (pid: {pid})")
            log(f"[emperor] removed pymaster instance {v.name}")
            if not v.loyal:
                for line in self.blacklist.add(v.name, time.time()):
                    log(line)
            if code == EXILE_CODE:
                try:
                    self.exiled[v.found.key] = os.stat(v.found.key).st_mtime_ns
                except OSError:
                    pass

    def read_notify(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self.notify_sock.recvmsg(
                    4096, socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            fields = dict(
                line.split("=", 1)
                for line in data.decode(errors="replace").splitlines()
                if "=" in line
            )
            v = next((v for v in self.vassals.values() if v.pid == pid), None)
            if v is None and fields.get("MAINPID", "").isdigit():
                main = int(fields["MAINPID"])
                v = next((v for v in self.vassals.values() if v.pid == main), None)
            if v is not None:
                self.notified(v, fields)

    def notified(self, v: Vassal, fields: dict[str, str]) -> None:
        wall = time.time()
        if fields.get("READY") == "1" and v.status == "running":
            v.ready = True
            v.last_ready = wall
            log(f"[emperor] vassal {v.name} is ready to accept requests")
            if not v.loyal:
                v.loyal = True
                v.last_loyal = wall
                self.blacklist.remove(v.name)
                log(f"[emperor] vassal {v.name} is now loyal")
        if fields.get("RELOADING") == "1" or fields.get("STOPPING") == "1":
            v.ready = False

    def stats_document(self) -> dict:
        return stats.document(
            list(self.cfg.emperor),
            self.cfg.emperor_tyrant,
            [v.as_stats() for v in self.vassals.values()],
            [item.as_stats() for item in self.blacklist.items.values()],
        )


def run(cfg: Config, apply_environment: Callable[[Config], None]) -> int:
    """`pymaster --emperor ...`: the exit code (0 once every vassal is gone after Ragnarok).
    `apply_environment` is the instance's own `--env` / `--chdir` step (cli.py's), run after
    the checks and before the vassal directories are resolved; what it raises is a start-up
    error, worded by it."""
    try:
        for line in check(cfg):
            log(line)
        try:
            apply_environment(cfg)
        except Exception as exc:  # noqa: BLE001 - the caller's own start-up error
            raise EmperorError(str(exc)) from None
        emperor = Emperor(cfg)
    except (EmperorError, MonitorError) as exc:
        log(f"pymaster: {exc}")
        return 1
    log("*** starting pymaster Emperor ***")
    setproctitle(cfg.emperor_procname or procname.title_for(cfg, "emperor"))
    pidfile = cfg.emperor_pidfile
    if pidfile:
        with open(pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    try:
        return emperor.run()
    except SocketError as exc:
        log(f"pymaster: {exc}")
        return 1
    finally:
        if pidfile:
            _remove_pidfile(pidfile)


def _remove_pidfile(path: str) -> None:
    try:
        with open(path) as fh:
            if fh.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass

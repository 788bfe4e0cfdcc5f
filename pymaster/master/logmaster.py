"""uWSGI's log master: every process's log output goes through the master, which routes,
encodes and writes it (`--log-master`, implied by `--logger`, `--log-route`, `--log-encoder`,
`--log-maxsize` ... as in uWSGI).

- Each child gets its own pipe as fd 1 and 2 (`child_pipe`/`in_child`/`in_parent`, called
  by the arbiter around fork). The master reassembles whole lines per child, so lines of
  different processes never interleave, whatever the size or buffering of the writes.
- Request lines: with a request logger (`--req-logger`, or `--log-req-route`) every worker
  writes its request lines to one extra descriptor (a SOCK_SEQPACKET socketpair, one line a
  message; `pymaster.log.request_fd`, `PYMASTER_REQ_LOG_FD` for the Perl worker): they take
  the request loggers, routes and encoders; without one they are ordinary lines.
- A line (the unit here; uWSGI uses one write) first meets `--log-drain`/`--log-filter`,
  then the routes: every matching route sends it to its named logger; a line no route took
  goes to every unnamed logger, or, with none, to the instance log (fd 2: `--logto`,
  `--daemonize` or the inherited stderr). The encoders run in order on the way to a logger;
  one scoped `ENCODER:NAME` runs only for the logger of that name.
- `--log-maxsize` rotates the instance log (to `--log-backupname`, else `FILE.<unix time>`)
  after the write that takes it past the size; the master being the only writer, no line is
  lost or split. `file:logfile=P,maxsize=N[,backupname=B]` rotates that logger the same way.
- The master's own lines take the same way (`pymaster.log.set_sink`); before writing one it
  reads what the children wrote, so a worker's last words come before its exit line.
"""

from __future__ import annotations

import fcntl
import json as _json
import os
import re
import socket
import stat
import syslog
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pymaster import log as logmod
from pymaster.log import log

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.arbiter import Arbiter

PLUGINS = ("file", "fd", "stdio", "syslog")
ENCODERS = ("prefix", "suffix", "nl", "format", "json")
VARIABLES = ("msg", "msgnl", "unix", "micros", "millis", "strftime:FORMAT")
NOT_HERE = {
    "socket": "send to a local syslog with `logger = syslog` (it forwards), or `file:`",
    "rsyslog": "use `logger = syslog[:IDENT[,FACILITY]]`: the local syslog daemon forwards",
    "systemd": "under systemd the instance log (stderr) already reaches the journal: "
    "`logger = stdio`",
}
READ_SIZE = 65536
READS_PER_WAKE = 16  # per readable pipe in one master cycle (fair between children)
MAX_LINE = 256 * 1024  # a longer unterminated line is cut here (never interleaved)
PIPE_SIZE = 256 * 1024
REQ_MESSAGE = 256 * 1024
_ENCODER_VAR = re.compile(r"\$\{([^}]*)\}")
_FACILITIES = {
    name: getattr(syslog, "LOG_" + name.upper())
    for name in (
        "auth authpriv cron daemon ftp kern lpr mail news syslog user uucp "
        "local0 local1 local2 local3 local4 local5 local6 local7"
    ).split()
    if hasattr(syslog, "LOG_" + name.upper())
}
_FACILITIES["security"] = syslog.LOG_AUTH


class LogConfigError(Exception):
    """A logger, route or encoder that cannot work: the start stops with this message."""


def needed(cfg: Config) -> bool:
    """Whether the master writes the log: `--log-master` or any option that implies it."""
    return bool(
        cfg.log_master
        or cfg.logger
        or cfg.req_logger
        or cfg.log_route
        or cfg.log_req_route
        or cfg.log_encoder
        or cfg.log_req_encoder
        or cfg.log_drain
        or cfg.log_filter
        or cfg.log_maxsize
        or cfg.log_syslog is not None
        or cfg.touch_logrotate
        or cfg.touch_logreopen
    )


# -- where lines end up ------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return


def rotate_file(path: str, backup: str | None, fd: int) -> None:
    """uWSGI's rotation: a note in the old file, rename it to `backup` (else `PATH.<unix>`),
    open PATH afresh onto `fd`. When the rename fails the old file is kept."""
    target = backup or f"{path}.{int(time.time())}"
    size = os.lseek(fd, 0, os.SEEK_CUR)
    _write_all(
        fd, f"{time.ctime()} - logsize: {size}, triggering rotation to {target}...\n".encode()
    )
    try:
        os.rename(path, target)
    except OSError as exc:
        _write_all(fd, f"unable to rotate log: rename(): {exc.strerror}\n".encode())
        return
    try:
        new = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o640)
    except OSError as exc:
        _write_all(fd, f"unable to reopen {path} after rotation: {exc.strerror}\n".encode())
        return
    os.dup2(new, fd, inheritable=fd in (1, 2))
    os.close(new)


class Sink:
    """A destination: takes whole lines, several at once."""

    def write(self, chunks: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FdSink(Sink):
    """A descriptor; with `path` and `maxsize`, rotated past that size (uWSGI's rotation)."""

    def __init__(
        self, fd: int, path: str | None = None, maxsize: int = 0, backup: str | None = None
    ):
        self.fd = fd
        self.path = path
        self.maxsize = maxsize if path else 0
        self.backup = backup

    def write(self, chunks: list[bytes]) -> None:
        _write_all(self.fd, b"".join(chunks))
        if self.maxsize:
            self.check_size()

    def check_size(self) -> None:
        try:
            size = os.lseek(self.fd, 0, os.SEEK_CUR)
        except OSError:  # a pipe or a terminal: nothing to rotate
            self.maxsize = 0
            return
        if size > self.maxsize:
            self.rotate()

    def rotate(self) -> None:
        if self.path and stat.S_ISREG(os.fstat(self.fd).st_mode):
            rotate_file(self.path, self.backup, self.fd)


class FileSink(FdSink):
    """`file:PATH`, or `file:logfile=PATH,maxsize=N,backupname=B` (uWSGI's logfile plugin)."""

    def __init__(self, arg: str):
        options = {"logfile": arg}
        if "=" in arg:
            options = {}
            for item in arg.split(","):
                key, sep, value = item.partition("=")
                if not sep or key not in ("logfile", "maxsize", "backupname"):
                    raise LogConfigError(
                        f"[uwsgi-logfile] invalid keyval syntax '{arg}': "
                        "use logfile=PATH[,maxsize=BYTES][,backupname=PATH]"
                    )
                options[key] = value
        path = options.get("logfile")
        if not path:
            raise LogConfigError(f"[uwsgi-logfile] missing logfile key in 'file:{arg}'")
        maxsize = options.get("maxsize", "0")
        if not maxsize.isdigit():
            raise LogConfigError(f"[uwsgi-logfile] maxsize '{maxsize}' is not a number of bytes")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise LogConfigError(f"logger file:{arg}: cannot open {path}: {exc.strerror}") from None
        super().__init__(fd, path, int(maxsize), options.get("backupname"))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class SyslogSink(Sink):
    """`syslog[:IDENT[,FACILITY]]`: LOG_INFO, ident `uwsgi` and facility daemon by default."""

    current: tuple[str, int] | None = None  # what openlog() was last given (process-wide)

    def __init__(self, arg: str | None):
        ident, _, facility = (arg or "uwsgi").partition(",")
        self.ident = ident or "uwsgi"
        self.facility = _FACILITIES.get(facility, syslog.LOG_DAEMON)

    def write(self, chunks: list[bytes]) -> None:
        if SyslogSink.current != (self.ident, self.facility):
            syslog.openlog(self.ident, 0, self.facility)
            SyslogSink.current = (self.ident, self.facility)
        for chunk in chunks:
            for line in chunk.decode("utf-8", "backslashreplace").splitlines():
                syslog.syslog(syslog.LOG_INFO, line)


@dataclass(eq=False)
class Logger:
    """One `--logger`/`--req-logger`: an optional name (`NAME PLUGIN:ARGS`) and its sink."""

    name: str
    plugin: str
    sink: Sink


def parse_logger(spec: str, main: FdSink, option: str = "logger") -> Logger:
    """`[NAME] PLUGIN[:ARGS]`, as uWSGI splits it: NAME is a leading alphanumeric word
    followed by a space; ARGS is everything after the first colon."""
    name, rest = "", spec.strip()
    head, sep, tail = rest.partition(" ")
    if sep and head.isalnum():
        name, rest = head, tail.strip()
    plugin, _, arg = rest.partition(":")
    if plugin == "file":
        if not arg:
            raise LogConfigError(f"--{option} {spec}: file needs a path (file:PATH)")
        sink: Sink = FileSink(arg)
    elif plugin == "fd":
        if not arg.isdigit():
            raise LogConfigError(f"--{option} {spec}: fd needs a descriptor number (fd:N)")
        sink = FdSink(int(arg))
    elif plugin == "stdio":
        sink = main
    elif plugin == "syslog":
        sink = SyslogSink(arg or None)
    else:
        instead = NOT_HERE.get(plugin, "")
        raise LogConfigError(
            f"unable to find logger '{plugin}' (--{option} {spec}): pymaster has "
            f"{', '.join(PLUGINS)}" + (f"; {instead}" if instead else "")
        )
    return Logger(name, plugin, sink)


# -- encoders -----------------------------------------------------------------------------------


@dataclass
class Encoder:
    """One `--log-encoder ENCODER[:NAME] [ARGS]` of uWSGI's chain (prefix, suffix, nl,
    format, json). `${msg}` is the line without its newline, `${msgnl}` with it; `${unix}`,
    `${micros}`, `${millis}` the time now; `${strftime:FMT}` the local time."""

    kind: str
    use_for: str | None
    args: str
    parts: list[tuple[bool, str]] = field(default_factory=list)  # (is a variable, text)

    def __post_init__(self) -> None:
        pos = 0
        for match in _ENCODER_VAR.finditer(self.args):
            if match.start() > pos:
                self.parts.append((False, self.args[pos : match.start()]))
            self.parts.append((True, match.group(1)))
            pos = match.end()
        if pos < len(self.args):
            self.parts.append((False, self.args[pos:]))
        self.raw = self.args.encode("utf-8", "surrogateescape")

    def unknown_variables(self) -> list[str]:
        if self.kind not in ("format", "json"):
            return []
        known = ("msg", "msgnl", "unix", "micros", "millis")
        return [
            text
            for is_var, text in self.parts
            if is_var and text not in known and not text.startswith("strftime:")
        ]

    def applies(self, logger: Logger | None) -> bool:
        return self.use_for is None or (logger is not None and logger.name == self.use_for)

    def __call__(self, msg: bytes) -> bytes:
        if self.kind == "nl":
            return msg + b"\n"
        if self.kind == "prefix":
            return self.raw + msg
        if self.kind == "suffix":
            return msg + self.raw
        json = self.kind == "json"
        out = []
        for is_var, text in self.parts:
            if not is_var:
                out.append(text.encode("utf-8", "surrogateescape"))
            elif text in ("msg", "msgnl"):
                body = msg[:-1] if text == "msg" and msg.endswith(b"\n") else msg
                out.append(escape_json(body) if json else body)
            elif text == "unix":
                out.append(str(int(time.time())).encode())
            elif text == "micros":
                out.append(str(time.time_ns() // 1000).encode())
            elif text == "millis":
                out.append(str(time.time_ns() // 1_000_000).encode())
            elif text.startswith("strftime:"):
                now = time.strftime(text[9:]).encode("utf-8", "backslashreplace")
                out.append(escape_json(now) if json else now)
        return b"".join(out)


def escape_json(data: bytes) -> bytes:
    """uWSGI's escape_json (tab, newline, return, quote, backslash), plus what it leaves out
    and a JSON reader refuses: other control characters (\\u00XX, \\b, \\f), and bytes that
    are not UTF-8 as the text `\\xNN`."""
    text = data.decode("utf-8", "backslashreplace")
    return _json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")


def parse_encoder(spec: str, option: str = "log-encoder") -> Encoder:
    """`ENCODER[:NAME] [ARGS]`: the name is what comes before the first space, the scope
    after a colon in it (uWSGI's parsing)."""
    head, _, args = spec.partition(" ")
    kind, sep, use_for = head.partition(":")
    if kind not in ENCODERS:
        raise LogConfigError(
            f'log encoder "{kind}" not found (--{option} {spec}): pymaster has '
            f"{', '.join(ENCODERS)}"
        )
    return Encoder(kind, use_for if sep else None, args)


# -- routing -------------------------------------------------------------------------------------


@dataclass
class Route:
    """`--log-route NAME REGEX`: lines the regex finds go to the logger NAME."""

    name: str
    pattern: re.Pattern[bytes]
    target: Logger | None = None


def parse_route(spec: str, option: str = "log-route") -> Route:
    name, sep, regex = spec.strip().partition(" ")
    if not sep or not regex:
        raise LogConfigError(f"--{option} {spec}: expected NAME REGEX")
    return Route(name, compile_regex(regex, option))


def compile_regex(regex: str, option: str) -> re.Pattern[bytes]:
    try:
        return re.compile(regex.encode("utf-8", "surrogateescape"))
    except re.error as exc:
        raise LogConfigError(f"--{option}: invalid regex '{regex}': {exc}") from None


class Stream:
    """The way of one kind of line (the log, or the request lines) to its loggers."""

    def __init__(
        self,
        loggers: list[Logger],
        routes: list[Route],
        encoders: list[Encoder],
        main: Sink,
        drains: Iterable[re.Pattern[bytes]] = (),
        filters: Iterable[re.Pattern[bytes]] = (),
    ):
        self.routes = routes
        self.encoders = encoders
        self.unnamed = [lg for lg in loggers if not lg.name]
        self.main = main
        self.drains = list(drains)
        self.filters = list(filters)

    def encode(self, line: bytes, logger: Logger | None) -> bytes:
        for encoder in self.encoders:
            if encoder.applies(logger):
                line = encoder(line)
        return line

    def targets(self, line: bytes) -> list[tuple[Sink, bytes]]:
        """Where one line goes, encoded for each logger (empty when drained/filtered)."""
        if any(rx.search(line) for rx in self.drains):
            return []
        if self.filters and not any(rx.search(line) for rx in self.filters):
            return []
        routed = [
            (r.target.sink, self.encode(line, r.target))
            for r in self.routes
            if r.target is not None and r.pattern.search(line)
        ]
        if routed:
            return routed
        if self.unnamed:
            return [(lg.sink, self.encode(line, lg)) for lg in self.unnamed]
        return [(self.main, self.encode(line, None))]

    def dispatch(self, lines: Iterable[bytes]) -> None:
        batches: dict[Sink, list[bytes]] = {}
        for line in lines:
            for sink, data in self.targets(line):
                batches.setdefault(sink, []).append(data)
        for sink, chunks in batches.items():
            sink.write(chunks)


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their newline (only b"\\n" ends a line); a last unterminated piece gets one."""
    lines = data.split(b"\n")
    last = lines.pop()
    out = [line + b"\n" for line in lines]
    if last:
        out.append(last + b"\n")
    return out


# -- the master's side ----------------------------------------------------------------------------


class LogMaster:
    """The master's log reader and writer (one per master image)."""

    def __init__(self, general: Stream, requests: Stream | None, main: FdSink, sinks: list[Sink]):
        self.general = general
        self.requests = requests
        self.main = main
        self.sinks = sinks
        self.buffers: dict[int, bytearray] = {}  # child pipe (read end) -> unfinished line
        self.remove_reader: Callable[[int], None] = lambda fd: None
        self.req_sock: socket.socket | None = None
        self.req_write = -1
        if requests is not None:
            self.req_sock, wsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.req_write = wsock.detach()  # blocking: a busy master slows, never drops
        self.busy = False

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        if self.req_sock is not None:
            self.req_sock.close()
            os.close(self.req_write)

    # the master's own lines
    def own(self, data: bytes) -> None:
        self.drain()
        self.general.dispatch(split_lines(data))

    # around fork
    def child_pipe(self) -> tuple[int, int]:
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except (OSError, AttributeError):
            pass
        return read, write

    def in_child(self, pipe: tuple[int, int]) -> None:
        read, write = pipe
        os.dup2(write, 1)
        os.dup2(write, 2)
        for fd in (read, write, *self.buffers):
            if fd > 2:
                os.close(fd)
        self.buffers.clear()
        if self.req_sock is not None:
            self.req_sock.close()
        logmod.set_sink(None)
        logmod.set_request_fd(self.req_write if self.req_write >= 0 else None)
        for sink in self.sinks:
            sink.close()
        set_active(None)

    def in_parent(self, pipe: tuple[int, int], arbiter: Arbiter) -> None:
        read, write = pipe
        os.close(write)
        os.set_blocking(read, False)
        self.buffers[read] = bytearray()
        self.remove_reader = arbiter.remove_reader
        arbiter.add_reader(read, lambda: self.read_pipe(read))

    def attach(self, arbiter: Arbiter) -> None:
        self.remove_reader = arbiter.remove_reader
        if self.req_sock is not None:
            arbiter.add_reader(self.req_sock.fileno(), self.read_requests)

    # reading
    def read_pipe(self, fd: int, reads: int = READS_PER_WAKE) -> None:
        buf = self.buffers.get(fd)
        if buf is None:
            return
        lines: list[bytes] = []
        eof = False
        for _ in range(reads):
            try:
                chunk = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                eof = True
                break
            buf += chunk
            end = buf.rfind(b"\n") + 1
            if end:
                lines += split_lines(bytes(buf[:end]))
                del buf[:end]
            while len(buf) >= MAX_LINE:
                lines.append(bytes(buf[:MAX_LINE]) + b"\n")
                del buf[:MAX_LINE]
        if eof:
            if buf:
                lines.append(bytes(buf) + b"\n")
            del self.buffers[fd]
            self.remove_reader(fd)
            os.close(fd)
        if lines:
            self.general.dispatch(lines)

    def read_requests(self) -> None:
        if self.requests is None or self.req_sock is None:
            return
        lines: list[bytes] = []
        for _ in range(READS_PER_WAKE * 4):
            try:
                message = self.req_sock.recv(REQ_MESSAGE, socket.MSG_DONTWAIT)
            except OSError:  # EAGAIN: all read
                break
            if not message:
                break
            lines += split_lines(message)
        if lines:
            self.requests.dispatch(lines)

    def drain(self) -> None:
        """Everything the children wrote so far, before a line of the master's own."""
        if self.busy:
            return
        self.busy = True
        try:
            for fd in list(self.buffers):
                self.read_pipe(fd, reads=1024)
            self.read_requests()
        finally:
            self.busy = False

    # rotation and reopening of the instance log
    def rotate(self) -> None:
        self.drain()
        self.main.rotate()

    def reopen(self) -> None:
        """uWSGI's log-reopen (touch-logreopen): a note in the old file, PATH opened again."""
        path = self.main.path
        if not path:
            return
        self.drain()
        size = os.lseek(2, 0, os.SEEK_CUR) if stat.S_ISREG(os.fstat(2).st_mode) else 0
        _write_all(2, f"[{int(time.time())}] logsize: {size}, triggering log-reopen...\n".encode())
        try:
            logmod.setup(path)
        except OSError as exc:
            _write_all(2, f"cannot reopen the log {path}: {exc.strerror}\n".encode())
            return
        _write_all(2, f"[{int(time.time())}] {path} reopened.\n".encode())


_active: LogMaster | None = None


def set_active(master: LogMaster | None) -> None:
    global _active
    _active = master
    logmod.set_sink(master.own if master is not None else None)


def active() -> LogMaster | None:
    return _active


def configure(cfg: Config, activate: bool = True) -> LogMaster | None:
    """Build the log master the options ask for (None when none) and make it take the log;
    LogConfigError names what cannot work. Opens the `file:` loggers now, so a path that
    cannot be written stops the start instead of losing lines later. `activate=False` (the
    reload check) only checks: everything is closed again."""
    if not needed(cfg):
        return None
    logfile = cfg.logto or cfg.daemonize
    main = FdSink(2, logfile, cfg.log_maxsize, cfg.log_backupname)
    sinks: list[Sink] = []
    try:
        specs = list(cfg.logger)
        if cfg.log_syslog is not None:
            specs.append("syslog" + (f":{cfg.log_syslog}" if cfg.log_syslog else ""))
        loggers = [parse_logger(spec, main) for spec in specs]
        req_loggers = [parse_logger(spec, main, "req-logger") for spec in cfg.req_logger]
        sinks = [lg.sink for lg in loggers + req_loggers if lg.sink is not main]
        encoders = [parse_encoder(spec) for spec in cfg.log_encoder]
        req_encoders = [parse_encoder(spec, "log-req-encoder") for spec in cfg.log_req_encoder]
        routes = [parse_route(spec) for spec in cfg.log_route]
        req_routes = [parse_route(spec, "log-req-route") for spec in cfg.log_req_route]
        drains = [compile_regex(rx, "log-drain") for rx in cfg.log_drain]
        filters = [compile_regex(rx, "log-filter") for rx in cfg.log_filter]
    except LogConfigError:
        for sink in sinks:
            sink.close()
        raise
    notes: list[str] = []
    by_name = {lg.name: lg for lg in loggers if lg.name}
    req_by_name = {lg.name: lg for lg in req_loggers if lg.name}
    for route in routes:
        route.target = by_name.get(route.name)
    for route in req_routes:  # uWSGI looks among the loggers only; request loggers first here
        route.target = req_by_name.get(route.name) or by_name.get(route.name)
    for option, items in (("log-route", routes), ("log-req-route", req_routes)):
        for route in items:
            if route.target is None:
                notes.append(
                    f"--{option} {route.name} {route.pattern.pattern.decode(errors='replace')}: "
                    f"no logger is named '{route.name}', the route is ignored (as in uWSGI)"
                )
    for option, specs, chain in (
        ("log-encoder", cfg.log_encoder, encoders),
        ("log-req-encoder", cfg.log_req_encoder, req_encoders),
    ):
        for spec, encoder in zip(specs, chain, strict=True):
            notes.append(f"[{option}] registered {spec}")
            for name in encoder.unknown_variables():
                notes.append(f"[{option}] unknown variable ${{{name}}}: it writes nothing")
    with_requests = bool(cfg.req_logger or cfg.log_req_route)
    if cfg.log_req_encoder and not with_requests:
        notes.append(
            "--log-req-encoder has no effect without --req-logger or --log-req-route: request "
            "lines are ordinary log lines then (as in uWSGI)"
        )
    if cfg.log_maxsize and not logfile:
        notes.append(
            "--log-maxsize rotates the --logto/--daemonize file and there is none: use "
            "`logger = file:logfile=PATH,maxsize=BYTES` for a logger's file"
        )
    general = Stream(loggers, routes, encoders, main, drains, filters)
    requests = Stream(req_loggers, req_routes, req_encoders, main) if with_requests else None
    master = LogMaster(general, requests, main, sinks)
    if not activate:
        master.close()
        return None
    set_active(master)
    for note in notes:
        log(note)
    return master


# -- the arbiter's hooks (no-ops without a log master) ---------------------------------------------


def child_pipe() -> tuple[int, int] | None:
    return _active.child_pipe() if _active is not None else None


def in_child(pipe: tuple[int, int] | None) -> None:
    if _active is not None and pipe is not None:
        _active.in_child(pipe)


def in_parent(pipe: tuple[int, int] | None, arbiter: Arbiter) -> None:
    if _active is not None and pipe is not None:
        _active.in_parent(pipe, arbiter)

"""WSGI (PEP 3333): load the callable, run it for one request, write its response.

`load_app(cfg)` imports the app from `--wsgi-file`/`--file` or `--module`/`-w` (+ `--callable`).
`Call` runs one request: start_response with exc_info, write(), iterables with close(),
wsgi.file_wrapper served with sendfile, header validation, HEAD/204/304 without a body.
How the head is framed (raw uwsgi answer or HTTP/1.1 keep-alive) is the `framing` object's job.
"""

from __future__ import annotations

import errno
import glob
import importlib
import importlib.machinery
import importlib.util
import os
import re
import site
import socket
import stat
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from pymaster import log as _log
from pymaster.apps import mount, static
from pymaster.config import Config
from pymaster.protocols import speedups

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # fullmatch: no trailing "\n"
_STATUS = re.compile(r"^[1-9][0-9][0-9] ")
_BAD_VALUE = re.compile(r"[\r\n\0]")
# the head of a file answer waits for the file's first bytes: one segment, not a small one
# that Nagle's algorithm then holds against the client's delayed ACK (40 ms per answer)
_MORE = getattr(socket, "MSG_MORE", 0)
_head_ok = speedups.codec.head_ok if speedups.codec is not None else None


class AppLoadError(Exception):
    """The app could not be loaded; the message says what and why."""


class WsgiError(Exception):
    """The app broke the WSGI contract (bad status, header, or call order)."""


class WriteError(OSError):
    """uWSGI's `OSError: write error`: the client is gone. Raised into the app's write()
    (unless --disable-write-exception); ends the iteration of the app's body."""

    def __init__(self) -> None:
        super().__init__(errno.EIO, "write error")

    def __str__(self) -> str:
        return "write error"


@dataclass(frozen=True, slots=True)
class Responses:
    """How every response is written: the write-error options (`ignore-sigpipe`,
    `ignore-write-errors`, `disable-write-exception`, `write-errors-exception-only`,
    `write-errors-tolerance`). Set once per process by `configure()` (from `load_app`)."""

    sigpipe_line: bool = True  # log uWSGI's SIGPIPE line on EPIPE
    error_line: bool = True  # log the `uwsgi_response_write_body_do(): ...` line
    exception: bool = True  # raise/log `OSError: write error`
    exception_only: bool = False  # raise at the first error, whatever the tolerance
    tolerance: int = 0  # write errors allowed before the response is given up
    extra_headers: tuple[tuple[str, str], ...] = ()  # --add-header, after the app's
    file_wrapper: bool = True  # wsgi.file_wrapper in the environ

    @classmethod
    def from_config(cls, cfg: Config) -> Responses:
        only = cfg.write_errors_exception_only
        return cls(
            sigpipe_line=not (cfg.ignore_sigpipe or only),
            error_line=not (cfg.ignore_write_errors or only),
            exception=not cfg.disable_write_exception,
            exception_only=only,
            tolerance=cfg.write_errors_tolerance,
            extra_headers=tuple(split_header(h) for h in cfg.add_header),
            file_wrapper=not cfg.wsgi_disable_file_wrapper,
        )


def split_header(text: str) -> tuple[str, str]:
    """`Name: value` (--add-header) as a header pair; ValueError naming a malformed one."""
    name, colon, value = text.partition(":")
    name = name.strip()
    if (
        not colon
        or not _TOKEN.fullmatch(name.encode("latin-1", "replace"))
        or _BAD_VALUE.search(value)
    ):
        raise ValueError(f"--add-header '{text}': expected `Name: value`")
    return name, value.strip()


RESPONSES = Responses()
# --offload-threads: the worker's offloader (workers/wsgi/offload.py), set once per process;
# its send(sock, fd, offset, count, what) -> bool takes a file body off the request thread
OFFLOAD: Any = None


def configure(cfg: Config) -> None:
    """The response options of `cfg` for every later `Call` in this process."""
    global RESPONSES
    RESPONSES = Responses.from_config(cfg)


def _load_file(path: str):
    if not os.path.isfile(path):
        raise AppLoadError(f"unable to load WSGI file '{path}': no such file")
    name = "uwsgi_file_" + re.sub(r"\W", "_", os.path.splitext(os.path.abspath(path))[0])
    # any extension (app.wsgi, app.py): the file is Python source whatever it is called
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise AppLoadError(f"unable to load WSGI file '{path}': not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


def _use_virtualenv(home: str) -> None:
    """--home/--virtualenv: the environment's site-packages come first on sys.path."""
    pattern = os.path.join(home, "lib", "python*", "site-packages")
    found = sorted(glob.glob(pattern))
    if not found:
        raise AppLoadError(
            f"--home '{home}': no lib/python*/site-packages in it, expected a virtualenv"
        )
    for path in found:
        site.addsitedir(path)
        sys.path.remove(path)
        sys.path.insert(0, path)


def load_app(cfg: Config):
    """Import and return the WSGI callable (a `Mounts` dispatcher when `--mount` is given,
    inside a `static.Static` layer when a static option is set); AppLoadError with the cause
    on any failure."""
    app = _load_apps(cfg)
    if static.any_set(cfg):
        try:
            return static.Static(app, cfg)
        except static.StaticConfigError as exc:
            raise AppLoadError(str(exc)) from None
    return app


def _load_apps(cfg: Config):
    if cfg.home:
        _use_virtualenv(cfg.home)
    for path in reversed(cfg.pythonpath):
        if path not in sys.path:
            sys.path.insert(0, path)
    callable_name = cfg.callable or "application"
    target = cfg.wsgi_file or cfg.module
    if not target and not cfg.mount:
        raise AppLoadError(
            "no app configured: use --wsgi-file FILE, --module MOD[:CALLABLE] or --psgi FILE"
        )
    try:
        configure(cfg)
    except ValueError as exc:
        raise AppLoadError(str(exc)) from None
    start = time.time()
    main = load_target(target, callable_name, bool(cfg.wsgi_file)) if target else None
    if not cfg.mount:
        assert main is not None
        return main
    apps: list[tuple[str, Any]] = []
    if main is not None:
        _ready(0, "", start)
        apps.append(("", main))
    for spec in cfg.mount:
        try:
            mountpoint, where = mount.split_mount(spec)
        except ValueError as exc:
            raise AppLoadError(str(exc)) from None
        _log.log(f"mounting {where} on {mountpoint}")
        start = time.time()
        app = load_target(where, callable_name, where.endswith((".py", ".wsgi")))
        _ready(len(apps), mountpoint, start)
        apps.append((mountpoint, app))
    return mount.Mounts(apps, cfg.manage_script_name, not cfg.no_default_app)


def _ready(number: int, mountpoint: str, start: float) -> None:
    """uWSGI's line for a loaded app (app 0 is the default app)."""
    default = " (default app)" if number == 0 else ""
    _log.log(
        f"WSGI app {number} (mountpoint='{mountpoint}') ready in {int(time.time() - start)} "
        f"seconds on interpreter pid: {os.getpid()}{default}"
    )


def load_target(target: str, callable_name: str, is_file: bool):
    """The callable of one app: a Python file (any extension), or `module[:callable]`."""
    try:
        if is_file:
            module = _load_file(target)
        else:
            modname, _, attr = target.partition(":")
            if modname.endswith(".py") and os.path.isfile(modname):
                module = _load_file(modname)
            else:
                if "" not in sys.path and os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
                module = importlib.import_module(modname)
            callable_name = attr or callable_name
    except AppLoadError:
        raise
    except BaseException as exc:  # the app's own import error, SyntaxError, SystemExit...
        tb = traceback.format_exc()
        raise AppLoadError(
            f"unable to load app from '{target}': {exc.__class__.__name__}: {exc}\n{tb}"
        ) from exc
    app = getattr(module, callable_name, None)
    if app is None:
        raise AppLoadError(f"unable to find callable '{callable_name}' in '{target}'")
    if not callable(app):
        raise AppLoadError(f"'{callable_name}' in '{target}' is not callable")
    return app


class FileWrapper:
    """wsgi.file_wrapper: iterable over a file; the worker sends it with sendfile() (or
    its offload threads do, with --offload-threads)."""

    def __init__(self, filelike, blksize: int = 65536):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def fileno_span(self):
        """(fd, offset, count) when the wrapped object is a regular file, else None."""
        try:
            fd = self.filelike.fileno()
            st = os.fstat(fd)
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return fd, offset, max(0, st.st_size - offset)


class ErrorStream:
    """wsgi.errors: lines go to the log."""

    def write(self, s):
        _log.log(
            s.rstrip("\n") if isinstance(s, str) else s.decode("utf-8", "replace").rstrip("\n")
        )

    def writelines(self, seq):
        for s in seq:
            self.write(s)

    def flush(self):
        pass


ERRORS = ErrorStream()


def validate_head(status, headers):
    """Check status and headers as PEP 3333 asks; WsgiError naming the bad part."""
    if _head_ok is not None and _head_ok(status, headers):
        return  # the compiled check: True only for what the checks below accept
    _validate_head_py(status, headers)


def _validate_head_py(status, headers):
    if type(status) is not str or not _STATUS.match(status) or _BAD_VALUE.search(status):
        raise WsgiError(f"invalid status {status!r}: expected a str like '200 OK'")
    if type(headers) is not list:
        raise WsgiError(f"response headers must be a list, got {type(headers).__name__}")
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise WsgiError(f"response header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise WsgiError(f"response header {item!r} must be a pair of str")
        if not _TOKEN.fullmatch(name.encode("latin-1", "replace")):
            raise WsgiError(f"invalid response header name {name!r}")
        if _BAD_VALUE.search(value):
            raise WsgiError(f"response header {name!r} value contains CR, LF or NUL")


class Call:
    """One request through the app. `framing` decides the head's bytes and body framing.

    framing.head(status, headers, body_length|None) -> bytes, and framing.chunk(data) ->
    bytes / framing.finish() -> bytes wrap body pieces (chunked encoding or identity).
    """

    __slots__ = (
        "sock",
        "framing",
        "no_body",
        "status",
        "headers",
        "head_sent",
        "tx",
        "head_bytes",
        "header_count",
        "declared",
        "timeout",
        "opts",
        "environ",
        "write_errors",
        "gone",
        "via",
    )

    def __init__(self, sock, framing, method: str, timeout: float = 4.0):
        self.sock = sock
        self.framing = framing
        self.no_body = method == "HEAD"
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self.head_sent = False
        self.tx = 0
        self.head_bytes = 0
        self.header_count = 0
        self.declared: int | None = None  # the app's own Content-Length, enforced
        self.timeout = timeout
        self.opts = RESPONSES
        self.environ: dict = {}
        self.write_errors = 0
        self.gone = False  # the response was given up: nothing more is sent
        self.via = ""  # the log line's ` via sendfile()` / ` via offload()`

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise WsgiError("start_response() called twice without exc_info")
        if _head_ok is None or not _head_ok(status, headers):
            _validate_head_py(status, headers)
        self.status = status
        self.headers = headers
        self.declared = None
        for name, value in headers:
            if name.lower() == "content-length":
                if not value.isdigit():
                    raise WsgiError(f"invalid Content-Length {value!r} from the app")
                self.declared = int(value)
        return self.write

    def _status_code(self) -> int:
        if self.status is None or self.headers is None:
            raise WsgiError("the app returned or wrote a body before calling start_response()")
        return int(self.status[:3])

    def _head(self, length):
        code = self._status_code()
        assert self.status is not None and self.headers is not None
        if code in (204, 304) or code < 200:
            length = None
            self.no_body = True
        headers = self.headers
        if self.opts.extra_headers:
            headers = headers + list(self.opts.extra_headers)
        head = self.framing.head(self.status, headers, length, self.no_body)
        self.head_sent = True
        self.head_bytes = len(head)
        self.header_count = len(headers)
        return head

    def write(self, data):
        """The app's write() callable: `OSError: write error` is raised into the app when
        the client is gone (unless --disable-write-exception)."""
        try:
            if self.gone:
                raise WriteError()
            self._write(data)
        except WriteError:
            if self.opts.exception:
                raise

    def _write(self, data):
        if type(data) not in (bytes, bytearray, memoryview):
            raise WsgiError(f"write() takes bytes, got {type(data).__name__}")
        out = b"" if self.head_sent else self._head(None)
        if data and not self.no_body:
            if self.declared is not None and self.tx + len(data) > self.declared:
                data = data[: self.declared - self.tx]  # never more than the app announced
            if data:
                out += self.framing.chunk(data)
                if self._send(out):
                    self.tx += len(data)
                return
        if out:
            self._send(out)

    def _send(self, data, flags: int = 0) -> bool:
        """sendall(); on a write error, uWSGI's lines and WriteError once the errors are over
        the tolerance (False when the error is tolerated: the bytes are lost)."""
        if self.gone:
            return False
        try:
            self.sock.sendall(data, flags)
            return True
        except OSError as exc:
            self._write_failed(exc)
            return False

    def _write_failed(self, exc: OSError, what: str = "uwsgi_response_write_body_do") -> None:
        opts = self.opts
        self.write_errors += 1
        self._no_reuse()
        env = self.environ
        uri = env.get("REQUEST_URI") or env.get("PATH_INFO", "")
        addr = env.get("REMOTE_ADDR", "")
        if opts.sigpipe_line and exc.errno == errno.EPIPE:  # SIGPIPE in uWSGI
            _log.log_verbose(
                "SIGPIPE: writing to a closed pipe/socket/fd (probably the client "
                f"disconnected) on request {uri} (ip {addr}) !!!"
            )
        if opts.error_line:
            if isinstance(exc, TimeoutError) or exc.errno in (errno.EAGAIN, errno.ETIMEDOUT):
                reason = f"{what}() TIMEOUT !!!"
            else:
                reason = f"{what}(): {exc.strerror or exc}"
            _log.log_verbose(f"{reason} during {env.get('REQUEST_METHOD', '')} {uri} ({addr})")
        if opts.exception_only or self.write_errors > opts.tolerance:
            self.gone = True
            raise WriteError()

    def _no_reuse(self) -> None:
        try:
            self.framing.keep_alive = False
        except AttributeError:  # raw uwsgi framing: the connection closes anyway
            pass

    def run(self, app, environ) -> int:
        """Run the app and send everything; returns the status code. A client gone
        mid-response ends it here (logged as uWSGI does), not as the app's failure."""
        self.environ = environ
        if not self.opts.file_wrapper:
            environ.pop("wsgi.file_wrapper", None)
        try:
            return self._run(app, environ)
        except WriteError:
            if not self.write_errors:  # the app's own, not ours
                raise
            if self.opts.exception:
                _log.log("OSError: write error")
            return self._status_code()

    def _run(self, app, environ) -> int:
        result = app(environ, self.start_response)
        try:
            if isinstance(result, FileWrapper) and not self.head_sent:
                span = result.fileno_span()
                if span is not None:
                    self._send_file(span)
                    return self._status_code()
            if type(result) is list and not self.head_sent and self.status is not None:
                self._send_list(result)
                return self._status_code()
            for data in result:
                if data or self.head_sent:  # no head before the first non-empty chunk
                    self._write(data)
                elif type(data) not in (bytes, bytearray):
                    raise WsgiError(f"the app's body must yield bytes, got {type(data).__name__}")
            if not self.head_sent:  # an empty body (HEAD: length unknown)
                self._send(self._head(None if self.no_body else 0))
            elif not self.no_body:
                tail = self.framing.finish()
                if tail:
                    self._send(tail)
            self._check_length()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return self._status_code()

    def _check_length(self) -> None:
        """An app that sent less than its Content-Length: the connection cannot be reused."""
        if self.declared is not None and self.tx < self.declared and not self.no_body:
            self._no_reuse()

    def _send_list(self, chunks):
        for data in chunks:
            if type(data) not in (bytes, bytearray):
                raise WsgiError(f"the app's body must yield bytes, got {type(data).__name__}")
        body = b"".join(chunks)
        if self.declared is not None:
            body = body[: self.declared]
        out = self._head(len(body))
        if not self.no_body:
            out += body
        if self._send(out) and not self.no_body:
            self.tx = len(body)
        if self.declared is not None and self.tx < self.declared and not self.no_body:
            self._no_reuse()  # as _check_length(), inline on the common path

    def _offload(self, offload, fd: int, offset: int, count: int) -> None:
        """The head here, the body by an offload thread; the connection closes after it."""
        self._no_reuse()
        if not self._send(self._head(count), _MORE):
            return
        env = self.environ
        what = (
            f"{env.get('REQUEST_METHOD', '')} {env.get('REQUEST_URI') or env.get('PATH_INFO', '')}"
            f" ({env.get('REMOTE_ADDR', '')})"
        )
        if offload.send(self.sock, fd, offset, count, what):
            self.via = "offload"
            self.tx = count  # as uWSGI: the full size, whatever the client then takes
            return
        self.via = "sendfile"
        self._sendfile(fd, offset, count)

    def _send_file(self, span):
        fd, offset, count = span
        if self.declared is not None:
            count = min(count, self.declared)
        code = self._status_code()
        body = bool(count) and not self.no_body and code >= 200 and code not in (204, 304)
        if body and OFFLOAD is not None:
            self._offload(OFFLOAD, fd, offset, count)
            return
        more = _MORE if body else 0
        if not self._send(self._head(count), more) or self.no_body or not count:
            return
        self.via = "sendfile"
        self._sendfile(fd, offset, count)

    def _sendfile(self, fd: int, offset: int, count: int) -> None:
        self.sock.settimeout(self.timeout)  # sendfile() waits on EAGAIN: bound it
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                self.tx = self.sock.sendfile(f, offset, count)
        except OSError as exc:
            self._write_failed(exc, "uwsgi_response_sendfile_do")
        finally:
            self.sock.settimeout(None)
        self._check_length()

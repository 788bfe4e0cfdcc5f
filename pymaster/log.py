"""The process-wide log sink: uWSGI-style lines to stderr or the --logto file.

`log(msg)` writes one line as is; `log_verbose(msg)` prefixes it with the ctime stamp uWSGI
uses for master events (`Thu Nov 26 19:27:40 2026 - chain reload starting...`). Writes are a
single os.write of the whole line so that lines from several processes never interleave.
Never call these from a signal handler.

With `--log-date` every `log()` line gets uWSGI's date prefix (`set_date`); request lines
(`log_request`) never do, as in uWSGI. With a request logger the master hands every process
a descriptor for request lines (`set_request_fd`); without one they go where `log()` goes.
In the master under `--log-master` a sink installed with `set_sink` takes every line instead
of fd 2 (pymaster/master/logmaster.py routes and encodes them).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

TRUE_WORDS = ("true", "1", "on", "yes")
FALSE_WORDS = ("false", "0", "off", "no")

_fd = 2
_req_fd: int | None = None
_date: str | None = None  # None: no prefix; "": ctime; else a strftime format
_sink: Callable[[bytes], None] | None = None


def setup(logto: str | None = None, truncate: bool = False) -> None:
    """Send the log to `logto` (appended, created 0640) or keep stderr; call once per image."""
    global _fd
    if logto:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(logto, flags | (os.O_TRUNC if truncate else 0), 0o640)
        os.dup2(fd, 2)  # so tracebacks and child processes follow the log too
        os.close(fd)
    _fd = 2
    sys.stderr.flush()


def quiet() -> None:
    """Drop every line from now on (the reload check reports only its verdict, on stderr)."""
    global _fd, _sink
    _fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    _sink = None


def date_format(value: str | None) -> str | None:
    """uWSGI's `--log-date [FORMAT]`: None (off), "" (ctime, for true/1/on/yes) or a strftime
    format. A false word turns it off (uWSGI would take it as a format)."""
    if value is None or value.lower() in FALSE_WORDS:
        return None
    return "" if value.lower() in TRUE_WORDS else value


def set_date(value: str | None) -> None:
    global _date
    _date = date_format(value)


def stamp(fmt: str | None = None) -> str:
    """The date uWSGI puts before ` - `: ctime, or `fmt` through strftime."""
    return time.strftime(fmt) if fmt else time.ctime()


def set_request_fd(fd: int | None) -> None:
    global _req_fd
    _req_fd = fd


def request_fd() -> int | None:
    return _req_fd


def set_sink(sink: Callable[[bytes], None] | None) -> None:
    global _sink
    _sink = sink


def _encode(msg: str) -> bytes:
    return (msg if msg.endswith("\n") else msg + "\n").encode("utf-8", "backslashreplace")


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


def _emit(data: bytes) -> None:
    if _sink is not None:
        _sink(data)
    else:
        _write(_fd, data)


def log(msg: str) -> None:
    if _date is not None:
        msg = f"{stamp(_date)} - {msg}"
    _emit(_encode(msg))


def log_verbose(msg: str) -> None:
    """A stamped line (strftime'd with a `--log-date FORMAT`); never stamped twice."""
    _emit(_encode(f"{stamp(_date)} - {msg}"))


def log_request(msg: str) -> None:
    """A request log line: to the request-log descriptor when there is one, never dated."""
    data = _encode(msg)
    if _req_fd is not None:
        _write(_req_fd, data)
    else:
        _emit(data)

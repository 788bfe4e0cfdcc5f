"""The process-wide log sink: uWSGI-style lines to stderr or the --logto file.

`log(msg)` writes one line as is; `log_verbose(msg)` prefixes it with the ctime stamp uWSGI
uses for master events (`Thu Nov 26 19:27:40 2026 - chain reload starting...`). Writes are a
single os.write of the whole line so that lines from several processes never interleave.
Never call these from a signal handler.
"""

from __future__ import annotations

import os
import sys
import time

_fd = 2


def setup(logto: str | None = None) -> None:
    """Send the log to `logto` (appended, created 0640) or keep stderr; call once per image."""
    global _fd
    if logto:
        fd = os.open(logto, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.dup2(fd, 2)  # so tracebacks and child processes follow the log too
        os.close(fd)
    _fd = 2
    sys.stderr.flush()


def quiet() -> None:
    """Drop every line from now on (the reload check reports only its verdict, on stderr)."""
    global _fd
    _fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def log(msg: str) -> None:
    data = (msg if msg.endswith("\n") else msg + "\n").encode("utf-8", "backslashreplace")
    try:
        os.write(_fd, data)
    except OSError:
        pass


def log_verbose(msg: str) -> None:
    log(f"{time.ctime()} - {msg}")

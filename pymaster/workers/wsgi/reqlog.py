"""The request log line: uWSGI's default format, or `--logformat` with its `%(var)` fields.

`RequestLog.emit()` is called once per request by a worker. Whether a line is written
follows `--disable-logging` with its exceptions (`--log-4xx`, `--log-5xx`, `--log-slow MS`);
`--log-micros`, `--log-x-forwarded-for` and `--memory-report` change what it says. It goes
out through `log_request` (the request-log descriptor with `--req-logger`), never dated.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from pymaster import log as logmod
from pymaster.apps.mount import APP
from pymaster.config import Config
from pymaster.log import log_request
from pymaster.workers.routes import Silencer

_FIELD = re.compile(r"%\(([^)]+)\)")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_VIA = {"": "", "sendfile": " via sendfile()", "offload": " via offload()"}


def _memory() -> tuple[int, int]:
    """(address space, rss) in bytes, from /proc/self/statm (one small read)."""
    with open("/proc/self/statm", "rb") as fh:
        size, rss = fh.read().split()[:2]
    return int(size) * _PAGE, int(rss) * _PAGE


@dataclass(slots=True)
class Record:
    """What one request did, as the log line needs it."""

    env: dict[str, Any]
    start: float  # wall-clock time the request started
    elapsed: float  # seconds
    status: int
    tx: int  # body bytes sent
    headers: int  # response header count
    hsize: int  # response head bytes
    nvars: int
    pktsize: int
    protocol: str
    requests: int  # this worker's
    total: int  # the instance's
    pid: int
    wid: int
    core: int = 0  # the request thread (--threads), 0 without
    via: str = ""  # how the body went: "sendfile", "offload" or "" (written by the core)


class RequestLog:
    def __init__(self, cfg: Config):
        self.enabled = not cfg.disable_logging
        self.log_4xx = cfg.log_4xx
        self.log_5xx = cfg.log_5xx
        self.slow_ms = cfg.log_slow
        self.micros = cfg.log_micros
        self.forwarded = cfg.log_x_forwarded_for
        self.memory = cfg.memory_report
        self.format = cfg.logformat or None  # an empty format is no format
        date = logmod.date_format(cfg.log_date)
        self.ftime = date if cfg.log_format_strftime and date else None  # %(ftime)
        self.silencer = Silencer(cfg)  # route = REGEX donotlog:

    def wanted(self, status: int, elapsed: float) -> bool:
        if self.enabled:
            return True
        return (
            (self.log_4xx and 400 <= status < 500)
            or (self.log_5xx and status >= 500)
            or bool(self.slow_ms and elapsed * 1000 > self.slow_ms)
        )

    def emit(self, r: Record) -> None:
        if self.silencer and self.silencer.silenced(r.env):
            return
        log_request(self.custom(r) if self.format else self.default(r))

    def _addr(self, env) -> str:
        if self.forwarded and env.get("HTTP_X_FORWARDED_FOR"):
            return env["HTTP_X_FORWARDED_FOR"]
        return env.get("REMOTE_ADDR", "")

    def _time(self, elapsed: float) -> str:
        return f"{int(elapsed * 1e6)} micros" if self.micros else f"{int(elapsed * 1000)} msecs"

    def default(self, r: Record) -> str:
        env = r.env
        prefix = ""
        if self.memory:
            vsz, rss = _memory()
            prefix = f"{{address space usage: {vsz} bytes/{vsz >> 20}MB}} {{rss usage: {rss} bytes/{rss >> 20}MB}} "
        app, requests = env.get(APP) or (0, r.requests)  # set by --mount / a static file
        return (
            f"{prefix}[pid: {r.pid}|app: {app}|req: {requests}/{r.total}] {self._addr(env)} "
            f"({env.get('REMOTE_USER', '')}) {{{r.nvars * 2} vars in {r.pktsize} bytes}} "
            f"[{time.ctime(r.start)}] {env.get('REQUEST_METHOD', '')} "
            f"{env.get('REQUEST_URI') or env.get('PATH_INFO', '')} => generated {r.tx} bytes "
            f"in {self._time(r.elapsed)}{_VIA[r.via]} ({r.protocol or ''} {r.status}) "
            f"{r.headers} headers "
            f"in {r.hsize} bytes (1 switches on core {r.core})"
        )

    def custom(self, r: Record) -> str:
        env = r.env

        def field(match) -> str:
            name = match.group(1)
            if name.startswith("var."):
                return str(env.get(name[4:], "-"))
            value = self._field(name, r, env)
            return "-" if value is None else str(value)

        return _FIELD.sub(field, self.format or "")

    def _field(self, name: str, r: Record, env):
        simple = {
            "uri": env.get("REQUEST_URI") or env.get("PATH_INFO", ""),
            "method": env.get("REQUEST_METHOD", ""),
            "user": env.get("REMOTE_USER", "-"),
            "addr": self._addr(env),
            "host": env.get("HTTP_HOST", ""),
            "proto": env.get("SERVER_PROTOCOL", ""),
            "uagent": env.get("HTTP_USER_AGENT", ""),
            "referer": env.get("HTTP_REFERER", ""),
            "status": r.status,
            "rsize": r.tx,
            "hsize": r.hsize,
            "size": r.tx + r.hsize,
            "cl": env.get("CONTENT_LENGTH", "0") or "0",
            "micros": int(r.elapsed * 1e6),
            "msecs": int(r.elapsed * 1000),
            "secs": f"{r.elapsed:.6f}",
            "time": int(r.start),
            "epoch": int(time.time()),
            "ctime": time.ctime(r.start),
            "ltime": time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(r.start)),
            "ftime": time.strftime(self.ftime or "%d/%b/%Y:%H:%M:%S %z", time.localtime(r.start)),
            "pid": r.pid,
            "wid": r.wid,
            "switches": 1,
            "vars": r.nvars * 2,
            "core": r.core,
            "pktsize": r.pktsize,
            "headers": r.headers,
        }
        if name in simple:
            return simple[name]
        if name in ("rss", "vsz", "rssM", "vszM"):
            vsz, rss = _memory()
            value = rss if name.startswith("rss") else vsz
            return value >> 20 if name.endswith("M") else value
        return None

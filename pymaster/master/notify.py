"""sd_notify: READY / RELOADING / STOPPING / STATUS / WATCHDOG to systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends datagrams to $NOTIFY_SOCKET; silent no-op when not under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        wpid = environ.get("WATCHDOG_PID", "")
        self.watchdog = (
            int(usec) / 1e6 / 2 if usec.isdigit() and wpid in ("", str(os.getpid())) else 0
        )
        self.last_watchdog = 0.0

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(("\n".join(fields) + "\n").encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send(f"STATUS={status}", "READY=1", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        self.send(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
            "STATUS=reloading",
        )

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def tick(self, now: float) -> None:
        if self.watchdog and now - self.last_watchdog >= self.watchdog:
            self.last_watchdog = now
            self.send("WATCHDOG=1")

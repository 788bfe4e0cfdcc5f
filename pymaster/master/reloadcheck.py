"""The reload check: does the new code start, before the workers that serve the old one go?

A reload re-execs the master; with the app preloaded (the default) the new image imports it
before any worker exists, so a broken deploy used to end the instance. Before a reload
retires anyone, the arbiter runs `python -m pymaster <same argv>` with `CHECK_ENV` set, in
the directory and environment the re-exec would have: it parses the configuration, applies
it, and imports the app (with `--lazy-apps` too, and the PSGI preflight for `--psgi`), then
exits 0, or 1 with the reason on its output. Nothing is bound, nothing is served. Only when
it passed does the reload go on; otherwise its output is logged once and the workers keep
serving the code they have. A `ReloadCheck` is one such run as the arbiter holds it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from pymaster.master import sockets

CHECK_ENV = "PYMASTER_RELOAD_CHECK"  # set: this image only checks that it would start
TIMEOUT = 60.0  # seconds a check may take; then it is killed and the reload aborted
MAX_OUTPUT = 64 * 1024  # what of a check's output is kept for the log (its tail)
RELOADS_ENV = "UWSGI_RELOADS"


def command(
    argv: list[str], environ: dict[str, str], listeners: list[sockets.Listener], master_pid: int
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a check: those of the re-exec. The listening fds are not
    passed; LISTEN_FDS/LISTEN_FDNAMES still say what the re-exec gets (socket activation
    without a configured socket is then no error), under the master's LISTEN_PID, so
    nothing in the check would adopt an fd."""
    env = dict(environ)
    env["LISTEN_PID"] = str(master_pid)
    env["LISTEN_FDS"] = str(len(listeners))
    env["LISTEN_FDNAMES"] = ":".join(
        sockets.ACTIVATED * lst.activated + lst.kind for lst in listeners
    )
    env[RELOADS_ENV] = str(int(env.get(RELOADS_ENV, "0")) + 1)  # `if-reload` sees a reload
    env[CHECK_ENV] = "1"
    return [sys.executable, "-m", "pymaster", *argv], env


@dataclass(eq=False)
class ReloadCheck:
    """One check in progress: its pid, the read end of its output, what it said."""

    pid: int
    fd: int
    graceful: bool  # the reload it guards
    started: float  # monotonic
    output: bytearray = field(default_factory=bytearray)
    status: int | None = None  # waitpid status once reaped
    again: bool = False  # a reload was asked while it ran: check anew before reloading
    timed_out: bool = False

    def read(self) -> None:
        """Drain what the check wrote so far (its pipe never fills)."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            self.output += data
            del self.output[:-MAX_OUTPUT]

    def close(self) -> None:
        self.read()
        try:
            os.close(self.fd)
        except OSError:
            pass

    @property
    def passed(self) -> bool:
        return self.status == 0 and not self.timed_out

    def failure(self) -> str:
        """The log entry of a failed check: why, then what it printed."""
        status = self.status or 0
        if self.timed_out:
            how = f"did not finish within {int(TIMEOUT)} seconds"
        elif os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with code {os.WEXITSTATUS(status)}"
        text = self.output.decode("utf-8", "replace").rstrip()
        return f"reload check failed (pid: {self.pid}, {how}):" + (f"\n{text}" if text else "")

"""`--py-autoreload N`: a thread in each Python worker checks the files of the loaded modules
every N seconds; on a change it logs uWSGI's line and asks the master for a graceful reload of
the whole instance (SIGHUP), as uWSGI's python plugin does. For development, not production.

Modules imported after the thread starts (the app under `--lazy-apps`) are picked up on the
next scan; a file's first mtime seen is its baseline.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from pymaster.log import log


class AutoReloader(threading.Thread):
    def __init__(self, interval: int, master_pid: int):
        super().__init__(name="pymaster-autoreloader", daemon=True)
        self.interval = interval
        self.master_pid = master_pid
        self.mtimes: dict[str, float] = {}

    def changed(self) -> str | None:
        """The first module file whose mtime moved since it was first seen, else None."""
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if not path:
                continue
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            seen = self.mtimes.setdefault(path, mtime)
            if mtime != seen:
                return path
        return None

    def run(self) -> None:
        self.changed()  # the baseline
        while True:
            threading.Event().wait(self.interval)
            path = self.changed()
            if path is not None:
                log(f"[uwsgi-python-reloader] module/file {path} has been modified")
                try:
                    os.kill(self.master_pid, signal.SIGHUP)
                except OSError:
                    pass
                return


def start(interval: int, master_pid: int, worker_id: int) -> None:
    if interval <= 0:
        return
    if worker_id == 1:
        log("Python auto-reloader enabled")
    AutoReloader(interval, master_pid).start()

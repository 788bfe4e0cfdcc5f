"""Test-side driver for real pymaster processes: start, wait, read the log, signal, stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.client import (  # noqa: F401  (re-exported for the tests)
    exchange,
    free_port,
    split_response,
    uwsgi_get,
    uwsgi_request,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, timeout: float = 10.0) -> None:
    wait_for_port(port, timeout)


class Pymaster:
    """A real `python -m pymaster` process with its log in a file."""

    def __init__(self, args, tmp_path, env=None, cwd=None, prefix=()):
        """`prefix`: a command the interpreter runs under (e.g. setpriv to another user)."""
        self.args = [str(a) for a in args]
        self.logpath = Path(tmp_path) / f"pymaster-{time.monotonic_ns()}.log"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        full_env.update(env or {})
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "pymaster", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=cwd or ROOT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"log has no {count}x {pattern!r} after {timeout}s:\n{self.log()}")

    def workers(self) -> list[int]:
        try:
            return sorted(c.pid for c in psutil.Process(self.pid).children()
                          if c.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return []

    def wait_workers(self, n: int, timeout: float = 10.0, exclude=()) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in self.workers() if p not in exclude]
            if len(pids) == n:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"expected {n} workers, have {self.workers()}:\n{self.log()}")

    def signal(self, sig) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            kids = []
            try:
                kids = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            for kid in kids:
                try:
                    kid.kill()
                except psutil.NoSuchProcess:
                    pass
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Background:
    """Run `fn(*args)` in a thread (a request held open while a test signals the server);
    `join()` returns its result, or raises what it raised."""

    def __init__(self, fn, *args):
        import threading
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args):
        try:
            self.result = fn(*args)
        except Exception as exc:  # handed to join()
            self.error = exc

    def join(self, timeout: float = 30.0):
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result

"""The master's periodic checks, run once a tick: harakiri, memory, lifetimes, touch files.

Each check reads the scoreboard (no syscall per request) or a worker's RSS (through the
arbiter's `System`), and acts through the arbiter: SIGKILL for harakiri and
evil-reload-on-rss, SIGHUP for max-worker-lifetime. A limit of 0 disables its check.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pymaster.log import log, log_verbose
from pymaster.workers import scoreboard as sb

if TYPE_CHECKING:
    from pymaster.master.arbiter import Arbiter


HARAKIRI_DUMP_WAIT = 0.1  # seconds a threaded worker gets to write its stacks before SIGKILL


def harakiri(arbiter: Arbiter, now: float) -> None:
    limit = arbiter.cfg.harakiri
    if not limit:
        return
    for child in list(arbiter.children.values()):
        if child.kind != "worker":
            continue
        info = arbiter.scoreboard.slot(child.number - 1).read()
        if info["pid"] != child.pid or info["state"] != sb.BUSY:
            continue
        cores = arbiter.scoreboard.read_cores(child.number - 1, child.pid)
        if cores is None:  # one request at a time: the worker's own slot
            cores = [info] if info["req_start"] else []
        # --threads: each core's request has its own deadline; every request running on
        # the worker is named, the ones over the limit marked
        late = [
            k
            for k, core in enumerate(cores)
            if core["req_start"]
            and now - core["req_start"] - arbiter.paused_since(core["req_start"]) > limit
        ]
        if not late:
            continue
        child.harakiri_count += 1
        log_verbose(
            f"*** HARAKIRI ON WORKER {child.number} (pid: {child.pid}, "
            f"try: {child.harakiri_count}) ***"
        )
        log(f"HARAKIRI !!! worker {child.number} status !!!")
        for k, core in enumerate(cores):
            if core["req_start"]:
                log(f"HARAKIRI [core {k}] {core['request']} since {int(core['req_start'])}")
        log(f"HARAKIRI !!! end of worker {child.number} status !!!")
        if arbiter.scoreboard.cores > 1:  # several requests: show where each thread is
            arbiter.kill(child.pid, signal.SIGUSR2)  # faulthandler: every thread's stack
            time.sleep(HARAKIRI_DUMP_WAIT)
        arbiter.harakiri_pids.add(child.pid)
        arbiter.kill(child.pid, signal.SIGKILL)


def evil_rss(arbiter: Arbiter, now: float) -> None:
    limit = arbiter.cfg.evil_reload_on_rss * 1024 * 1024
    if not limit:
        return
    for child in list(arbiter.children.values()):
        if child.kind != "worker":
            continue
        rss = arbiter.system.rss(child.pid)
        if rss is not None and rss > limit:
            log_verbose(
                f"*** EVIL RELOAD ON WORKER {child.number} RSS: {rss} (pid: {child.pid}) ***"
            )
            child.cursed_at = child.cursed_at or now
            arbiter.kill(child.pid, signal.SIGKILL)


def lifetime(arbiter: Arbiter, now: float) -> None:
    longest = arbiter.cfg.max_worker_lifetime
    if not longest or arbiter.state.mode != "running":
        return
    delta = arbiter.cfg.max_worker_lifetime_delta
    for child in list(arbiter.children.values()):
        if child.kind != "worker" or child.cursed_at:
            continue
        allowed = longest + delta * child.number
        lived = now - child.spawned_at
        if lived >= allowed:
            log(
                f"worker {child.number} lifetime reached, it was running for {int(lived)} second(s)"
            )
            child.cursed_at = now
            arbiter.kill(child.pid, signal.SIGHUP)


class TouchWatcher:
    """--touch-reload and friends: act when a file's mtime changes, appears or goes away."""

    def __init__(self, paths: list[str], action: Callable[[], None], what: str):
        self.action = action
        self.what = what
        self.mtimes: dict[str, int | None] = {}
        for path in paths:
            self.mtimes[path] = self._mtime(path)
            if self.mtimes[path] is None:
                log(
                    f"unable to stat() {path}, events will be triggered as soon as the file is created"
                )

    @staticmethod
    def _mtime(path: str) -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    def __call__(self, now: float) -> None:
        for path, old in self.mtimes.items():
            new = self._mtime(path)
            if new != old:
                self.mtimes[path] = new
                log(f"*** {path} has been touched... {self.what} !!! ***")
                self.action()
                return

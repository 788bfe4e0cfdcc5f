"""The master loop: signals -> queue -> handlers; spawn, reap and respawn workers.

Signal handlers only append the signal number to a queue (plus the wakeup fd); the loop
drains it and dispatches `on_SIGHUP` and friends. A 1 s tick runs the periodic checks.
Workers and gateways are both `Child` records; what a child runs is a callable given by
the caller, so Python workers, Perl workers and routers are supervised the same way.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from pymaster.log import log, log_verbose
from pymaster.master import scoreboard as sb
from pymaster.master import sockets

HANDLED = ("SIGHUP", "SIGTERM", "SIGINT", "SIGQUIT", "SIGCHLD", "SIGTTIN", "SIGTTOU",
           "SIGUSR1", "SIGUSR2", "SIGTSTP", "SIGWINCH")
EXIT_FAILED_APP = 22
RELOADS_ENV = "UWSGI_RELOADS"          # as uWSGI: how many times this master re-exec'd


@dataclass
class Child:
    """A supervised process slot: a worker (kind 'worker') or a gateway."""

    kind: str
    number: int
    target: Callable[["Child"], None]        # runs in the forked child, must not return
    pid: int = 0
    spawned_at: float = 0.0
    respawns: int = 0
    cursed_at: float = 0.0                   # when we asked it to stop (mercy clock)
    retiring: bool = False                   # stop it, do not respawn (scale down)
    next_spawn: float = 0.0                  # respawn delayed by the fork-bomb guard
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or f"{self.kind} {self.number}"


@dataclass
class State:
    """What the master is doing: serving, reloading or shutting down."""

    mode: str = "running"                    # running | reloading | stopping
    graceful: bool = True
    since: float = 0.0
    exit_code: int = 0
    hooks: list = field(default_factory=list)


class Arbiter:
    """Supervises children; subclasses or callers add ticks via `on_tick`."""

    def __init__(self, cfg, listeners, scoreboard: sb.Scoreboard, title: Callable[[str], None]):
        self.cfg = cfg
        self.listeners = listeners
        self.scoreboard = scoreboard
        self.set_title = title
        self.pid = os.getpid()
        self.children: dict[int, Child] = {}           # pid -> child
        self.slots: list[Child] = []                   # every child slot, running or not
        self.queue: collections.deque[int] = collections.deque()
        self.state = State()
        self.on_tick: list[Callable[[float], None]] = []
        self.on_stop: list[Callable[[bool], None]] = []
        self.respawn_times: collections.deque[float] = collections.deque(maxlen=64)
        self.forkbomb_until = 0.0
        self.mercy = cfg.worker_reload_mercy or 60

    # -- signals ----------------------------------------------------------------------
    def _enqueue(self, signum, frame) -> None:
        self.queue.append(signum)

    def install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for name in HANDLED:
            signal.signal(getattr(signal, name), self._enqueue)

    def reset_child_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for name in HANDLED:
            signal.signal(getattr(signal, name), signal.SIG_DFL)

    # -- children ---------------------------------------------------------------------
    def add(self, kind: str, target, label: str = "") -> Child:
        number = 1 + sum(1 for c in self.slots if c.kind == kind)
        child = Child(kind, number, target, label=label)
        self.slots.append(child)
        return child

    def spawn(self, child: Child) -> None:
        child.respawns += 1
        child.cursed_at = 0.0
        child.next_spawn = 0.0
        pid = os.fork()
        if pid == 0:
            try:
                self.reset_child_signals()
                os.close(self.wake_r)
                child.target(child)
            except BaseException:
                import traceback
                log(traceback.format_exc())
            finally:
                os._exit(1)
        child.pid = pid
        child.spawned_at = time.time()
        self.children[pid] = child
        if child.respawns == 1:
            log(f"spawned pymaster {child.title} (pid: {pid}, cores: 1)")
        else:
            log(f"Respawned pymaster {child.title} (new pid: {pid})")

    def workers(self) -> list[Child]:
        return [c for c in self.slots if c.kind == "worker" and not c.retiring]

    def signal_children(self, sig: int, kinds=("worker",)) -> None:
        now = time.time()
        for child in list(self.children.values()):
            if child.kind in kinds:
                child.cursed_at = child.cursed_at or now
                self._kill(child.pid, sig)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        """Spawn every slot and supervise until shutdown; returns the exit code."""
        for child in self.slots:
            self.spawn(child)
        next_tick = time.monotonic() + 1.0
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                select.select([self.wake_r], [], [], timeout)
            except InterruptedError:
                pass
            self._drain_wake()
            while self.queue:
                self.dispatch(self.queue.popleft())
            self.reap()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + (self.cfg.check_interval or 1)
                self.tick(time.time())
            if self.state.mode != "running" and not self.children:
                return self.finish()

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name
        handler = getattr(self, "on_" + name, None)
        if handler is not None:
            handler()

    def tick(self, now: float) -> None:
        self.check_mercy(now)
        self.respawn_due(now)
        for hook in self.on_tick:
            hook(now)

    # -- reaping ----------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                if os.WIFSIGNALED(status):
                    log(f"subprocess {pid} exited by signal {os.WTERMSIG(status)}")
                elif self.pid != 1:
                    log(f"subprocess {pid} exited with code {os.WEXITSTATUS(status)}")
                continue
            self.child_exited(child, status)

    def child_exited(self, child: Child, status: int) -> None:
        now = time.time()
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        pid, child.pid = child.pid, 0
        if self.state.mode != "running":
            log(f"{child.title} buried after {max(1, int(now - child.cursed_at or now))} seconds"
                if child.cursed_at else f"{child.title} buried after 1 seconds")
            return
        if code == EXIT_FAILED_APP:
            log(f"OOPS ! failed loading app in {child.title} (pid {pid}) :( trying again...")
            if self.cfg.need_app:
                log("need-app requested, destroying the instance...")
                self.shutdown(graceful=False, code=EXIT_FAILED_APP)
                return
        elif child.cursed_at or code == 0:
            log(f"{child.title} killed successfully (pid: {pid})")
        elif sig is not None:
            log(f"DAMN ! {child.title} (pid: {pid}) died, killed by signal {sig} :( trying respawn ...")
        else:
            log(f"DAMN ! {child.title} (pid: {pid}) died :( trying respawn ...")
        if child.retiring:
            self.slots.remove(child)
            log(f"pymaster {child.title} retired.")
            return
        self.schedule_respawn(child, now, quick=bool(child.cursed_at or code == 0))

    def schedule_respawn(self, child: Child, now: float, quick: bool) -> None:
        """Respawn now, or later when children die too fast (the fork-bomb guard)."""
        delay = self.cfg.forkbomb_delay if self.cfg.forkbomb_delay is not None else 2
        recent = [t for t in self.respawn_times if now - t < 1.0]
        if not quick and delay and len(recent) > max(1, len(self.workers())):
            child.next_spawn = max(now, self.forkbomb_until) + delay
            self.forkbomb_until = child.next_spawn
            log(f"worker respawning too fast !!! i have to sleep a bit ({delay} seconds)...")
            return
        self.respawn_times.append(now)
        self.spawn(child)

    def respawn_due(self, now: float) -> None:
        if self.state.mode != "running":
            return
        for child in self.slots:
            if not child.pid and child.next_spawn and child.next_spawn <= now:
                self.respawn_times.append(now)
                self.spawn(child)

    def check_mercy(self, now: float) -> None:
        for child in list(self.children.values()):
            if child.cursed_at and now - child.cursed_at > self.mercy:
                log(f"{child.title} (pid: {child.pid}) is taking too much time to die...NO MERCY !!!")
                self._kill(child.pid, signal.SIGKILL)

    # -- signal handlers (run from the loop, never from the signal) ----------------------
    def on_SIGCHLD(self) -> None:
        pass                                   # the loop reaps after every wakeup

    def on_SIGHUP(self) -> None:
        self.reload(graceful=True)

    def on_SIGTERM(self) -> None:
        self.shutdown(graceful=True)

    def on_SIGINT(self) -> None:
        self.shutdown(graceful=False)

    on_SIGQUIT = on_SIGINT

    def on_SIGTTIN(self) -> None:
        if self.state.mode != "running":
            return
        limit = getattr(self.cfg, "max_processes", 0) or 0
        if limit and len(self.workers()) >= limit:
            log(f"cannot add a worker: already at {limit}")
            return
        child = self.add("worker", self.worker_target)
        log(f"SIGTTIN received: adding {child.title}")
        self.spawn(child)

    def on_SIGTTOU(self) -> None:
        if self.state.mode != "running":
            return
        live = self.workers()
        if len(live) <= 1:
            log("SIGTTOU received: already at 1 worker, not going lower")
            return
        child = live[-1]
        child.retiring = True
        log(f"SIGTTOU received: retiring {child.title}")
        if child.pid:
            child.cursed_at = time.time()
            self._kill(child.pid, signal.SIGHUP)
        else:
            self.slots.remove(child)

    def on_SIGUSR1(self) -> None:
        total = 0
        lines = []
        for child in self.workers():
            info = self.scoreboard.slot(child.number - 1).read()
            total += info["requests"]
            lines.append(f"{child.title} app 0 [] requests: {info['requests']} "
                         f"exceptions: {info['exceptions']}")
        log(f"workers total requests: {total}")
        for line in lines:
            log(line)

    worker_target: Callable = None

    # -- reload and shutdown --------------------------------------------------------------
    def reload(self, graceful: bool) -> None:
        if self.state.mode != "running":
            return
        self.state = State("reloading", graceful, time.time())
        log("...gracefully killing workers..." if graceful else "...brutally killing workers...")
        for hook in self.on_stop:
            hook(True)
        for child in self.children.values():
            if graceful and child.kind == "worker":
                log(f"Gracefully killing {child.title} (pid: {child.pid})...")
        self.signal_children(signal.SIGHUP if graceful else signal.SIGINT)
        self.signal_children(signal.SIGHUP if graceful else signal.SIGKILL,
                             kinds=tuple({c.kind for c in self.slots} - {"worker"}))

    def shutdown(self, graceful: bool, code: int = 0) -> None:
        if self.state.mode == "stopping" and (graceful or not self.state.graceful):
            return
        self.state = State("stopping", graceful, time.time(), exit_code=code)
        if graceful:
            log_verbose("graceful shutdown triggered...")
        else:
            log("SIGINT/SIGTERM received...killing workers...")
        for hook in self.on_stop:
            hook(False)
        self.signal_children(signal.SIGHUP if graceful else signal.SIGINT,
                             kinds=tuple({c.kind for c in self.slots}))

    def finish(self) -> int:
        if self.state.mode == "reloading":
            self.reexec()
        log("goodbye to pymaster.")
        return self.state.exit_code

    def reexec(self) -> None:
        log("binary reloading pymaster...")
        cwd = getattr(self, "start_cwd", None) or os.getcwd()
        log(f"chdir() to {cwd}")
        os.chdir(cwd)
        env = dict(os.environ)
        sockets.pass_to_exec(self.listeners, env)
        for i, lst in enumerate(self.listeners):
            log(f"found fd {sockets.SD_LISTEN_FDS_START + i} mapped to socket {i} ({lst.name})")
        env[RELOADS_ENV] = str(int(env.get(RELOADS_ENV, "0")) + 1)
        argv = [sys.executable, "-m", "pymaster"] + list(self.cfg.argv)
        log(f"running {sys.executable} -m pymaster")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)

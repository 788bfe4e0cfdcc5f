"""The master loop: signals -> queue -> handlers; spawn, reap and respawn children.

Signal handlers only append the signal number to a queue (plus the wakeup fd); the loop
drains it and dispatches `on_SIGHUP` and friends. A tick (1 s) runs the periodic checks.
Workers and gateways are both `Child` records; what a child runs is a callable given by the
caller, so Python workers, Perl workers and routers are supervised the same way. Commands
from the master FIFO arrive as `cmd_*` calls on the same loop. A chain reload in progress
is a `ChainReload` (master/chain.py) the arbiter holds.

Everything the master asks of the operating system (fork, kill, waitpid, the clocks, a
worker's RSS, a listen queue, exec) goes through `System`; unit tests pass a fake one.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

import psutil

from pymaster import log as logmod
from pymaster.log import log, log_verbose
from pymaster.master import cheaper, checks, control, logmaster, reloadcheck, sockets
from pymaster.master.chain import ChainReload
from pymaster.master.notify import Notifier
from pymaster.master.reloadcheck import ReloadCheck
from pymaster.workers import scoreboard as sb
from pymaster.workers.contract import EXIT_FAILED_APP

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.subscriber import Subscriber

HANDLED = (
    "SIGHUP",
    "SIGTERM",
    "SIGINT",
    "SIGQUIT",
    "SIGCHLD",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUSR1",
    "SIGUSR2",
    "SIGTSTP",
    "SIGWINCH",
)
HANDLED_SIGNALS = [getattr(signal, name) for name in HANDLED]


def hold_signals() -> None:
    """Block the master's signals until its handlers are in place: a SIGHUP or SIGTERM that
    arrives during start-up (or across the re-exec, which keeps the mask) waits, instead of
    killing the process with the default action."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)


def release_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


RELOADS_ENV = reloadcheck.RELOADS_ENV  # as uWSGI: how many times this master re-exec'd


class System:
    """The operating system as the master uses it. The real one; tests pass a fake."""

    def fork(self) -> int:
        return os.fork()

    def kill(self, pid: int, sig: int) -> None:
        os.kill(pid, sig)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        return os.waitpid(pid, options)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def getpid(self) -> int:
        return os.getpid()

    def is_child(self, pid: int) -> bool:
        """Whether `pid` is a child of this process (alive, or a zombie not reaped yet)."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        fields = stat[stat.rfind(b")") + 2 :].split()
        return len(fields) > 1 and int(fields[1]) == os.getpid()

    def rss(self, pid: int) -> int | None:
        """Resident set size in bytes; None when the process cannot be read."""
        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return None

    def listen_queue(self, listeners: list[sockets.Listener]) -> int:
        """Connections waiting in the backlogs of `listeners`."""
        return sum(q for _, q in control.listen_queue(listeners))

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def execve(self, path: str, argv: list[str], env: dict[str, str]) -> NoReturn:
        os.execve(path, argv, env)

    def spawn_check(self, argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, int]:
        """Run `argv` in `cwd` with stdout and stderr on a pipe and no other fd (the
        listening sockets stay with us); (pid, non-blocking read end). Reaped by `waitpid`
        like every child."""
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        hold_signals()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                for sig in HANDLED_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(wfd, 1)
                os.dup2(wfd, 2)
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2:
                        try:
                            os.set_inheritable(int(name), False)
                        except OSError:
                            pass
                os.chdir(cwd)
                release_signals()
                os.execve(argv[0], argv, env)
            except BaseException:
                os.write(2, traceback.format_exc().encode())
            finally:
                os._exit(127)
        release_signals()
        os.close(wfd)
        os.set_blocking(rfd, False)
        return pid, rfd


def _no_worker_target(child: Child) -> None:
    raise RuntimeError("the arbiter has no worker target")


@dataclass(eq=False)
class Child:
    """A supervised process slot: a worker (kind 'worker') or a gateway."""

    kind: str
    number: int
    target: Callable[[Child], None]  # runs in the forked child, must not return
    pid: int = 0
    spawned_at: float = 0.0
    respawns: int = 0
    cursed_at: float = 0.0  # when we asked it to stop (mercy clock)
    retiring: bool = False  # stop it, then drop the slot (scale down)
    cheaped: bool = False  # stopped by the cheaper: no respawn until needed
    next_spawn: float = 0.0  # respawn delayed by the fork-bomb guard
    harakiri_count: int = 0
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or f"{self.kind} {self.number}"


class State:
    """What the master is doing: running, reloading or stopping."""

    def __init__(self, mode: str = "running", graceful: bool = True, code: int = 0):
        self.mode = mode
        self.graceful = graceful
        self.exit_code = code


# -- how an exit is logged (uWSGI's wording) ------------------------------------------------
def exit_code(status: int) -> int | None:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else None


def exit_signal(status: int) -> int | None:
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


def buried_message(child: Child, now: float) -> str:
    """A child gone while the master reloads or stops."""
    return f"{child.title} buried after {max(1, round(now - (child.cursed_at or now)))} seconds"


def exit_message(
    child: Child, pid: int, code: int | None, sig: int | None, harakiri: bool, cursed: bool
) -> str:
    """A child gone while the master runs (it will be respawned, or its slot dropped)."""
    if code == EXIT_FAILED_APP:
        return f"OOPS ! failed loading app in {child.title} (pid {pid}) :( trying again..."
    if harakiri:
        return (
            f"DAMN ! {child.title} (pid: {pid}) died, killed by signal {sig} :( trying respawn ..."
        )
    if cursed or code == 0:
        return f"{child.title} killed successfully (pid: {pid})"
    if sig is not None:
        return (
            f"DAMN ! {child.title} (pid: {pid}) died, killed by signal {sig} :( trying respawn ..."
        )
    return f"DAMN ! {child.title} (pid: {pid}) died :( trying respawn ..."


def stranger_message(pid: int, status: int) -> str:
    sig = exit_signal(status)
    how = f"by signal {sig}" if sig is not None else f"with code {exit_code(status)}"
    return f"subprocess {pid} exited {how}"


class Arbiter:
    """Supervises children; callers add periodic work via `on_tick` and stop hooks."""

    def __init__(
        self,
        cfg: Config,
        listeners: list[sockets.Listener],
        scoreboard: sb.Scoreboard,
        system: System | None = None,
    ):
        self.cfg = cfg
        self.listeners = listeners
        self.scoreboard = scoreboard
        self.system = System() if system is None else system
        self.pid = self.system.getpid()
        self.children: dict[int, Child] = {}  # pid -> running child
        self.slots: list[Child] = []  # every child slot, running or not
        self.queue: collections.deque[int] = collections.deque()
        self.readers: dict[int, Callable[[], None]] = {}
        self.state = State()
        self.on_tick: list[Callable[[float], None]] = []
        self.on_stop: list[Callable[[bool], None]] = []  # arg: True for a graceful reload
        self.on_pause: list[Callable[[bool], None]] = []  # arg: True when pausing
        self.closers: list[Callable[[], None]] = []  # run once the loop is over
        self.on_start: list[Callable[[], None]] = []  # once, when the loop starts
        # a pid that is not a child slot: True when the callback owns it (daemons, cron)
        self.reapers: list[Callable[[int, int], bool]] = []
        # while one says True, a reload or shutdown waits (daemons still stopping)
        self.holds: list[Callable[[], bool]] = []
        self.before_exec: list[Callable[[dict[str, str]], None]] = []  # add to the new env
        self.respawn_times: collections.deque[float] = collections.deque(maxlen=64)
        self.forkbomb_until = 0.0
        # as uWSGI, 0 is no mercy at all: a cursed worker is killed at the next check
        self.mercy = cfg.worker_reload_mercy
        self.paused = False
        self.paused_at = 0.0
        self.pauses: collections.deque[tuple[float, float]] = collections.deque(maxlen=16)
        self.harakiri_pids: set[int] = set()
        self.chain: ChainReload | None = None
        self.reload_check: ReloadCheck | None = None
        self.dropped_checks: set[int] = set()  # killed at shutdown: reaped quietly
        self.notifier = Notifier()
        self.ready_sent = False
        self.subscriber: Subscriber | None = None
        self.start_cwd = os.getcwd()
        self.worker_target: Callable[[Child], None] = _no_worker_target
        self.cheaper = cheaper.Cheaper(cfg)
        self.wake_r = -1
        self.next_tick = 0.0

    # -- plumbing -----------------------------------------------------------------------
    def _enqueue(self, signum: int, frame: object) -> None:
        self.queue.append(signum)

    def install_signals(self) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r = rfd
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._enqueue)
        release_signals()  # what arrived during start-up is handled now

    def reset_child_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def kill(self, pid: int, sig: int) -> None:
        if pid:
            try:
                self.system.kill(pid, sig)
            except ProcessLookupError:
                pass

    def app_listeners(self) -> list[sockets.Listener]:
        """The sockets the workers serve (their backlog is the instance's load)."""
        return [lst for lst in self.listeners if lst.kind in ("uwsgi", "http")]

    # -- children -------------------------------------------------------------------------
    def add(self, kind: str, target: Callable[[Child], None], label: str = "") -> Child | None:
        """A new slot with the lowest free number of its kind (worker N uses scoreboard N-1);
        None when a worker would not fit in the scoreboard."""
        used = {c.number for c in self.slots if c.kind == kind}
        number = next(n for n in range(1, len(used) + 2) if n not in used)
        if kind == "worker" and number > self.scoreboard.slots:
            log(f"cannot add a worker: the scoreboard holds {self.scoreboard.slots}")
            return None
        child = Child(kind, number, target, label=label)
        self.slots.append(child)
        if kind == "worker":
            self.scoreboard.highest = max(self.scoreboard.highest, number)
        return child

    def add_worker(self) -> Child | None:
        return self.add("worker", self.worker_target)

    def spawn(self, child: Child) -> None:
        child.respawns += 1
        child.cursed_at = 0.0
        child.next_spawn = 0.0
        child.cheaped = False
        if child.kind == "worker":
            self.scoreboard.slot(child.number - 1).reset(0, self.system.time())
        hold_signals()  # a signal for the child between fork and its own handlers waits
        pipe = logmaster.child_pipe()  # its fd 1 and 2 under --log-master, else None
        pid = self.system.fork()
        if pid == 0:
            try:
                logmaster.in_child(pipe)
                self.reset_child_signals()
                if self.wake_r >= 0:
                    os.close(self.wake_r)
                child.target(child)  # the target unblocks once it handles them
            except BaseException:
                log(traceback.format_exc())
            finally:
                os._exit(1)
        release_signals()
        logmaster.in_parent(pipe, self)
        child.pid = pid
        child.spawned_at = self.system.time()
        self.children[pid] = child
        if self.paused and child.kind == "worker":
            self.kill(pid, signal.SIGSTOP)  # paused means every worker, new ones too
        if child.respawns == 1:
            cores = self.scoreboard.cores if child.kind == "worker" else 1
            log(f"spawned pymaster {child.title} (pid: {pid}, cores: {cores})")
        else:
            log(f"Respawned pymaster {child.title} (new pid: {pid})")

    def workers(self) -> list[Child]:
        """Worker slots that count toward capacity (not leaving, maybe cheaped)."""
        return [c for c in self.slots if c.kind == "worker" and not c.retiring]

    def accepting(self, child: Child) -> bool:
        info = self.scoreboard.slot(child.number - 1).read()
        return bool(child.pid) and info["pid"] == child.pid and info["state"] in (sb.IDLE, sb.BUSY)

    def curse(self, child: Child, sig: int) -> None:
        """Ask a child to stop (SIGHUP: gracefully); the mercy clock starts."""
        child.cursed_at = child.cursed_at or self.system.time()
        self.kill(child.pid, sig)

    def retire(self, child: Child, announce: bool = False) -> None:
        """Stop a child for good: SIGHUP it, its slot goes when it exits (now if not running)."""
        child.retiring = True
        if child.pid:
            if announce:
                log(f"Gracefully killing {child.title} (pid: {child.pid})...")
            self.curse(child, signal.SIGHUP)
        elif child in self.slots:  # between an exit and its respawn
            self.slots.remove(child)

    def signal_children(self, sig: int, kinds: tuple[str, ...] = ("worker",)) -> None:
        for child in list(self.children.values()):
            if child.kind in kinds:
                self.curse(child, sig)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        """Spawn every slot and supervise until shutdown; returns the exit code."""
        for child in self.slots:
            if not child.cheaped:
                self.spawn(child)
        for hook in self.on_start:
            self.guarded(hook)
        self.cheaper.start(self.system.monotonic())
        self.next_tick = self.system.monotonic() + 1.0
        while True:
            self.wait_events()
            code = self.cycle()
            if code is not None:
                return code

    def wait_events(self) -> None:
        """Sleep until a signal, a reader or the next tick (sooner while starting up or
        chain reloading), then serve the readers."""
        timeout = max(
            0.0,
            min(
                self.next_tick - self.system.monotonic(),
                0.1 if self.chain is not None or not self.ready_sent else 1.0,
            ),
        )
        try:
            ready, _, _ = select.select([self.wake_r, *self.readers], [], [], timeout)
        except InterruptedError:
            ready = []
        for fd in ready:
            if fd == self.wake_r:
                self._drain_wake()
            elif fd in self.readers:
                self.guarded(self.readers[fd])

    def cycle(self) -> int | None:
        """One pass of the loop after a wakeup; the exit code once the master is done."""
        while self.queue:
            self.guarded(self.dispatch, self.queue.popleft())
        self.reap()
        self.reload_check_step()
        self.chain_step()
        self.check_ready()
        now = self.system.monotonic()
        if now >= self.next_tick:
            # uWSGI too runs its checks every second when --check-interval is 0
            self.next_tick = now + max(1, self.cfg.check_interval)
            self.guarded(self.tick, self.system.time())
        if self.state.mode != "running" and not self.children and not self.held():
            return self.finish()
        return None

    def held(self) -> bool:
        return any(hold() for hold in self.holds)

    @staticmethod
    def guarded(fn: Callable[..., object], *args: object) -> None:
        """A failing command, hook or check is logged; it never takes the master down."""
        try:
            fn(*args)
        except Exception:
            log(
                f"pymaster master: error in {getattr(fn, '__qualname__', fn)}:\n"
                f"{traceback.format_exc().rstrip()}"
            )

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def dispatch(self, signum: int) -> None:
        handler = getattr(self, "on_" + signal.Signals(signum).name, None)
        if handler is not None:
            handler()

    def paused_since(self, since: float) -> float:
        """Seconds the workers spent stopped (SIGTSTP) after `since`."""
        return sum(max(0.0, end - max(start, since)) for start, end in self.pauses)

    def tick(self, now: float) -> None:
        self.respawn_due(now)
        self.reload_check_timeout()
        if not self.paused:
            self.check_mercy(now)
            checks.harakiri(self, now)
            checks.lifetime(self, now)
        checks.evil_rss(self, now)
        if self.state.mode == "running" and not self.paused and self.chain is None:
            self.cheaper.step(self, now)
        self.notifier.tick(now)
        for hook in self.on_tick:
            self.guarded(hook, now)

    def check_ready(self) -> None:
        if self.ready_sent or self.state.mode != "running":
            return
        live = [c for c in self.workers() if not c.cheaped]
        if all(self.accepting(c) for c in live):
            self.ready_sent = True
            self.notifier.ready(f"pymaster is ready: {len(live)} workers")

    # -- reaping ------------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = self.system.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self.child_exited(child, pid, status)
            elif self.reload_check is not None and pid == self.reload_check.pid:
                self.reload_check.status = status
            elif pid in self.dropped_checks:
                self.dropped_checks.discard(pid)
            elif any(reaper(pid, status) for reaper in self.reapers):
                pass
            elif self.pid != 1:  # as PID 1 we reap strangers quietly
                log(stranger_message(pid, status))

    def child_exited(self, child: Child, pid: int, status: int) -> None:
        """Log the exit, then the need-app policy, the chain's bookkeeping, the slot's fate."""
        now = self.system.time()
        code, sig = exit_code(status), exit_signal(status)
        cursed = bool(child.cursed_at)
        harakiri = pid in self.harakiri_pids
        self.harakiri_pids.discard(pid)
        child.pid = 0
        if self.state.mode != "running":
            log(buried_message(child, now))
            return
        log(exit_message(child, pid, code, sig, harakiri, cursed))
        if self.need_app_stops(code):
            return
        if self.chain is not None:
            dropped = self.chain.on_exit(child, code, cursed)
            self._forget_finished_chain()
            if dropped:
                return
        self.settle(child, now, quick=cursed or code == 0)

    def need_app_stops(self, code: int | None) -> bool:
        """Exit 22 (no app) with --need-app destroys the instance, as uWSGI; True if it did."""
        if code != EXIT_FAILED_APP or not self.cfg.need_app:
            return False
        log("need-app requested, destroying the instance...")
        self.shutdown(graceful=False, code=EXIT_FAILED_APP)
        return True

    def settle(self, child: Child, now: float, quick: bool) -> None:
        """An exited slot: dropped (scaled down), left empty (cheaped) or respawned."""
        if child.retiring:
            if child in self.slots:
                self.slots.remove(child)
            return
        if child.cheaped:
            log(f"pymaster {child.title} cheaped.")
            return
        self.schedule_respawn(child, now, quick)

    def schedule_respawn(self, child: Child, now: float, quick: bool) -> None:
        """Respawn now, or later when children die too fast (the fork-bomb guard).

        The guard never sleeps: the slot gets a due time and the loop goes on.
        `--forkbomb-delay 0` disables it, as in uWSGI.
        """
        delay = self.cfg.forkbomb_delay
        recent = [t for t in self.respawn_times if now - t < 1.0]
        if not quick and delay and len(recent) >= max(1, len(self.workers())):
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
                log(
                    f"{child.title} (pid: {child.pid}) is taking too much time to die...NO MERCY !!!"
                )
                self.kill(child.pid, signal.SIGKILL)

    # -- signals (dispatched from the loop, never run inside the handler) ----------------
    def on_SIGCHLD(self) -> None:
        pass  # the loop reaps after every wakeup

    def on_SIGHUP(self) -> None:
        self.reload(graceful=True)

    def on_SIGTERM(self) -> None:
        # Graceful stop, not uWSGI's brutal reload (a departure, docs/architecture.md). It is
        # also what Server::Starter's hot deploy needs: start_server starts a new generation
        # on the same sockets, then TERMs the old one, as with Starman; shared sockets get no
        # drop filter (sockets.refuse_new_connections).
        self.shutdown(graceful=True)

    def on_SIGINT(self) -> None:
        self.shutdown(graceful=False)

    def on_SIGQUIT(self) -> None:
        # uWSGI's brutal shutdown, except under Server::Starter: there QUIT is graceful, as
        # on Starman, whose docs have start_server send it (`--signal-on-hup=QUIT`)
        self.shutdown(graceful=any(lst.shared for lst in self.listeners))

    def on_SIGTTIN(self) -> None:
        if self.state.mode != "running":
            return
        if self.cheaper.enabled:
            self.cheaper.manual(self, +1)
            return
        child = self.add_worker()
        if child is None:
            return
        self.cheaper.maximum += 1
        log(f"adding {child.title} (now {len(self.workers())} workers)")
        self.spawn(child)

    def on_SIGTTOU(self) -> None:
        if self.state.mode != "running":
            return
        if self.cheaper.enabled:
            self.cheaper.manual(self, -1)
            return
        live = self.workers()
        floor = max(1, self.cheaper.minimum)
        if len(live) <= floor:
            log(
                f"not removing a worker: already at {len(live)} worker{'s' if len(live) > 1 else ''}"
                f" (minimum {floor})"
            )
            return
        pair = self.chain.pair if self.chain is not None else ()
        candidates = [c for c in live if c not in pair] or live
        child = max(candidates, key=lambda c: c.number)
        if self.chain is not None:
            self.chain.on_scale_down(child)
            self._forget_finished_chain()
        self.cheaper.maximum = max(floor, self.cheaper.maximum - 1)
        log(f"removing {child.title} (now {len(live) - 1} workers)")
        self.retire(child)

    def on_SIGUSR1(self) -> None:
        total = 0
        lines = []
        for child in self.workers():
            info = self.scoreboard.slot(child.number - 1).read()
            total += info["requests"]
            doing = f" busy with {info['request']}" if info["state"] == sb.BUSY else ""
            lines.append(
                f"{child.title} app 0 [] requests: {info['requests']} "
                f"exceptions: {info['exceptions']}{doing}"
            )
        log(f"workers total requests: {total}")
        for line in lines:
            log(line)

    def on_SIGTSTP(self) -> None:
        if self.state.mode != "running":
            return
        self.paused = not self.paused
        now = self.system.time()
        if self.paused:
            self.paused_at = now
        else:  # stopped time does not count against harakiri
            self.pauses.append((self.paused_at, now))
        sig = signal.SIGSTOP if self.paused else signal.SIGCONT
        if self.paused:
            log_verbose(
                "*** PAUSE (press start to resume, if you do not have a joypad send SIGTSTP) ***"
            )
        else:
            log_verbose("*** (SIGTSTP received) resuming workers ***")
        for hook in self.on_pause:
            hook(self.paused)
        for child in self.workers():
            if child.pid:
                self.kill(child.pid, sig)
                log(f"*** {child.title} {'suspended' if self.paused else 'resumed'} ***")

    # -- FIFO commands ------------------------------------------------------------------------
    def cmd_graceful_reload(self) -> None:
        self.reload(graceful=True)

    def cmd_brutal_reload(self) -> None:
        self.reload(graceful=False)

    def cmd_reload_workers(self) -> None:
        log("...gracefully reloading workers...")
        for child in self.workers():
            if child.pid:
                log(f"Gracefully killing {child.title} (pid: {child.pid})...")
                self.curse(child, signal.SIGHUP)

    def cmd_brutal_reload_workers(self) -> None:
        for child in self.workers():
            if child.pid:
                log(f"killing {child.title} (pid: {child.pid})")
                self.curse(child, signal.SIGINT)

    def cmd_graceful_shutdown(self) -> None:
        self.shutdown(graceful=True)

    def cmd_brutal_shutdown(self) -> None:
        self.shutdown(graceful=False)

    def cmd_add_worker(self) -> None:
        self.on_SIGTTIN()

    def cmd_remove_worker(self) -> None:
        self.on_SIGTTOU()

    def cmd_stats_to_log(self) -> None:
        self.on_SIGUSR1()

    def cmd_reopen_log(self) -> None:
        path = self.cfg.logto or self.cfg.daemonize
        try:
            logmod.setup(path)
        except OSError as exc:
            log(f"cannot reopen the log {path}: {exc.strerror}; keeping the old one")
            return
        log("log reopened")

    def cmd_pause_toggle(self) -> None:
        self.on_SIGTSTP()

    def cmd_subscriptions_toggle(self) -> None:
        if self.subscriber is not None:
            self.subscriber.toggle()

    # -- chain reload (master/chain.py decides, the arbiter acts) ------------------------------
    def cmd_chain_reload(self) -> None:
        if self.chain is not None or self.state.mode != "running":
            return
        self.chain = ChainReload.start(self.workers(), self.retire)

    def chain_step(self) -> None:
        if self.chain is None:
            return
        if self.state.mode != "running":
            self.chain = None
            return
        self.chain.step(self.accepting, self.add_worker, self.spawn)
        self._forget_finished_chain()

    def _forget_finished_chain(self) -> None:
        if self.chain is not None and self.chain.done:
            self.chain = None

    # -- reload and shutdown --------------------------------------------------------------------
    def reload(self, graceful: bool) -> None:
        """SIGHUP, fifo r/R, touch: check that the new code loads, then reload (or not)."""
        if self.state.mode != "running":
            return
        check = self.reload_check
        if check is not None:  # the newest request wins: what runs may check older code
            check.again, check.graceful = True, graceful
            log(
                f"reload requested while the reload check (pid: {check.pid}) runs: "
                "checking again once it is done"
            )
            return
        if self.cfg.no_reload_check:
            self.begin_reload(graceful)
            return
        self.start_reload_check(graceful)

    def start_reload_check(self, graceful: bool) -> None:
        argv, env = reloadcheck.command(self.cfg.argv, dict(os.environ), self.listeners, self.pid)
        try:
            pid, fd = self.system.spawn_check(argv, env, self.start_cwd)
        except OSError as exc:
            log(f"*** reload aborted: cannot start the reload check: {exc.strerror} ***")
            return
        self.reload_check = ReloadCheck(pid, fd, graceful, self.system.monotonic())
        self.add_reader(fd, self.reload_check.read)
        log(f"reload requested: checking that the new configuration and app load (pid: {pid})...")

    def reload_check_step(self) -> None:
        """A finished check: reload, check again, or log why not and keep the workers."""
        check = self.reload_check
        if check is None or check.status is None:
            return
        self.reload_check = None
        self.remove_reader(check.fd)
        check.close()
        if self.state.mode != "running":
            return
        if check.again:
            self.start_reload_check(check.graceful)
            return
        if check.passed:
            log("reload check passed")
            self.begin_reload(check.graceful)
            return
        log(check.failure())
        log(
            "*** reload aborted: the workers keep serving the code they loaded; "
            "fix the app or configuration and reload again ***"
        )
        self.notifier.status("reload failed: still serving the previous code")

    def reload_check_timeout(self) -> None:
        check = self.reload_check
        if check is None or check.timed_out:
            return
        if self.system.monotonic() - check.started > reloadcheck.TIMEOUT:
            check.timed_out = True
            self.kill(check.pid, signal.SIGKILL)

    def drop_reload_check(self) -> None:
        """Shutdown: a check still running is killed and forgotten."""
        check = self.reload_check
        if check is None:
            return
        self.reload_check = None
        self.remove_reader(check.fd)
        check.close()
        self.kill(check.pid, signal.SIGKILL)
        self.dropped_checks.add(check.pid)

    def begin_reload(self, graceful: bool) -> None:
        if self.paused:
            self.on_SIGTSTP()
        self.chain = None
        self.state = State("reloading", graceful)
        self.scoreboard.master_state = sb.MASTER_RELOADING
        self.notifier.reloading()
        log("...gracefully killing workers..." if graceful else "...brutally killing workers...")
        for hook in self.on_stop:
            hook(graceful)
        for child in list(self.children.values()):
            if child.kind == "worker" and graceful:
                log(f"Gracefully killing {child.title} (pid: {child.pid})...")
        self.signal_children(signal.SIGHUP if graceful else signal.SIGINT)
        self.signal_children(
            signal.SIGHUP if graceful else signal.SIGKILL,
            kinds=tuple({c.kind for c in self.slots} - {"worker"}),
        )

    def shutdown(self, graceful: bool, code: int = 0) -> None:
        if self.state.mode == "stopping" and (graceful or not self.state.graceful):
            return
        if self.paused:
            self.on_SIGTSTP()
        self.chain = None
        self.drop_reload_check()
        self.state = State("stopping", graceful, code)
        self.scoreboard.master_state = sb.MASTER_STOPPING
        self.notifier.stopping()
        if graceful:
            log_verbose("graceful shutdown triggered...")
        else:
            log("SIGINT/SIGTERM received...killing workers...")
        for hook in self.on_stop:
            hook(False)
        if graceful:
            sockets.refuse_new_connections(self.listeners)
        for lst in self.listeners:  # workers keep theirs to drain the backlog
            if lst.sock is not None:
                lst.sock.close()
        self.signal_children(
            signal.SIGHUP if graceful else signal.SIGINT, kinds=tuple({c.kind for c in self.slots})
        )

    def finish(self) -> int:
        if self.state.mode == "reloading":
            self.reexec()
        log("goodbye to pymaster.")
        return self.state.exit_code

    def reexec(self) -> None:
        log("binary reloading pymaster...")
        log(f"chdir() to {self.start_cwd}")
        self.system.chdir(self.start_cwd)
        env = dict(os.environ)
        sockets.pass_to_exec(self.listeners, env)
        for i, lst in enumerate(self.listeners):
            log(f"found fd {sockets.SD_LISTEN_FDS_START + i} mapped to socket {i} ({lst.name})")
        env[RELOADS_ENV] = str(int(env.get(RELOADS_ENV, "0")) + 1)
        for hook in self.before_exec:
            hook(env)
        argv = [sys.executable, "-m", "pymaster", *self.cfg.argv]
        log(f"running {sys.executable} -m pymaster")
        hold_signals()  # the mask survives exec: nothing is lost
        self.system.execve(sys.executable, argv, env)

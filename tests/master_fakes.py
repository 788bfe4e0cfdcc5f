"""Fakes for unit tests of the master: an injected `System` and helpers around an Arbiter.

The arbiter under test is the real one, with a real Config (parsed from options) and a real
scoreboard (an in-process memfd); only the operating system is fake: `fork` hands out pids
and never forks, `kill` and `execve` are recorded, `waitpid` returns the exits a test
queued, the clock is whatever the test sets. A reload check (`spawn_check`) gets a pid and
a real pipe: the test writes its output to `check_out` and queues its exit like any other.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal

from pymaster.config import parse
from pymaster.master.arbiter import Arbiter, Child
from pymaster.workers import scoreboard as sb

START = 1_000_000.0  # the fake epoch


class Reexec(Exception):
    """Raised by FakeSystem.execve: the real one never returns."""


class FakeSystem:
    def __init__(self) -> None:
        self.now = START
        self.pids = itertools.count(1000)
        self.forked: list[int] = []
        self.sent: list[tuple[int, int]] = []  # (pid, signal) in order
        self.exits: collections.deque[tuple[int, int]] = collections.deque()
        self.rss_of: dict[int, int] = {}
        self.queued = 0  # connections waiting in the listen queues
        self.gone: set[int] = set()  # kill() raises ProcessLookupError for these
        self.pid = 4242
        self.execs: list[tuple[str, list[str], dict[str, str]]] = []
        self.chdirs: list[str] = []
        self.checks: list[tuple[int, list[str], dict[str, str], str]] = []  # pid, argv, env, cwd
        self.check_out = -1  # write end of the newest check's output pipe

    def fork(self) -> int:
        pid = next(self.pids)
        self.forked.append(pid)
        return pid

    def kill(self, pid: int, sig: int) -> None:
        if pid in self.gone:
            raise ProcessLookupError(pid)
        self.sent.append((pid, sig))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        return self.exits.popleft() if self.exits else (0, 0)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def getpid(self) -> int:
        return self.pid

    def is_child(self, pid: int) -> bool:
        """Forked here (or by the image before a re-exec: `self.forked` is kept) and not
        yet reaped or gone."""
        return pid in self.forked and pid not in self.gone

    def rss(self, pid: int) -> int | None:
        return self.rss_of.get(pid)

    def listen_queue(self, listeners: list) -> int:
        return self.queued

    def chdir(self, path: str) -> None:
        self.chdirs.append(path)

    def execve(self, path: str, argv: list[str], env: dict[str, str]):
        self.execs.append((path, argv, env))
        raise Reexec()

    def spawn_check(self, argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, int]:
        pid = next(self.pids)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.check_out >= 0:
            os.close(self.check_out)
        self.check_out = wfd
        self.checks.append((pid, argv, env, cwd))
        return pid, rfd

    def signals_to(self, pid: int) -> list[int]:
        return [s for p, s in self.sent if p == pid]


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str) -> None:
        self.sent.append(f"READY {status}")

    def reloading(self) -> None:
        self.sent.append("RELOADING")

    def stopping(self) -> None:
        self.sent.append("STOPPING")

    def status(self, text: str) -> None:
        self.sent.append(f"STATUS {text}")

    def tick(self, now: float) -> None:
        pass


def exited(code: int) -> int:
    """A waitpid status: exited with `code`."""
    return code << 8


def killed(sig: int) -> int:
    """A waitpid status: killed by `sig`."""
    return int(sig)


def make_arbiter(*options: str, processes: int | None = None, start: bool = True):
    """(arbiter, system) as cli.py builds a master: worker slots (cheaped beyond the
    cheaper's initial count), spawned unless `start` is False."""
    args = list(options)
    if processes is not None:
        args += ["--processes", str(processes)]
    cfg = parse(args, {})
    system = FakeSystem()
    arbiter = Arbiter(cfg, [], sb.Scoreboard(16), system=system)
    arbiter.notifier = FakeNotifier()  # type: ignore[assignment]
    arbiter.worker_target = lambda child: None
    for i in range(max(1, cfg.processes)):
        child = arbiter.add_worker()
        assert child is not None
        child.cheaped = i >= arbiter.cheaper.initial
    if start:
        for child in arbiter.slots:
            if not child.cheaped:
                arbiter.spawn(child)
        arbiter.cheaper.start(system.now)  # as run() does once the workers are spawned
    return arbiter, system


def worker(arbiter: Arbiter, number: int) -> Child:
    return next(c for c in arbiter.slots if c.kind == "worker" and c.number == number)


def accept(arbiter: Arbiter, child: Child) -> None:
    """The worker reports itself idle (accepting) in its scoreboard slot."""
    slot = arbiter.scoreboard.slot(child.number - 1)
    slot.reset(child.pid, arbiter.system.time())
    slot.set_state(sb.IDLE)


def busy(arbiter: Arbiter, child: Child, since: float, what: bytes = b"GET /slow") -> None:
    """The worker is in a request that started at `since`."""
    slot = arbiter.scoreboard.slot(child.number - 1)
    if slot.read()["pid"] != child.pid:
        slot.reset(child.pid, since)
    slot.begin(since, what)


def exit_child(arbiter: Arbiter, system: FakeSystem, child: Child, status: int) -> int:
    """The child exits with `status`; the arbiter reaps it. Returns the old pid."""
    pid = child.pid
    system.exits.append((pid, status))
    arbiter.reap()
    return pid


def tick(arbiter: Arbiter, system: FakeSystem, seconds: float = 1.0) -> None:
    """Let `seconds` pass, then run the periodic checks."""
    system.now += seconds
    arbiter.tick(system.now)


def lines(capfd) -> list[str]:
    """The log lines written since the last call."""
    return capfd.readouterr().err.splitlines()


SIGHUP, SIGINT, SIGKILL, SIGTERM = signal.SIGHUP, signal.SIGINT, signal.SIGKILL, signal.SIGTERM


def finish_check(
    arbiter: Arbiter, system: FakeSystem, status: int = 0, output: bytes = b""
) -> None:
    """The running reload check writes `output`, exits with `status`; one loop pass."""
    check = arbiter.reload_check
    assert check is not None, "no reload check is running"
    if output:
        os.write(system.check_out, output)
    os.close(system.check_out)
    system.check_out = -1
    check.read()  # what wait_events does when the pipe is readable
    system.exits.append((check.pid, status))
    arbiter.cycle()


def reload_now(arbiter: Arbiter, system: FakeSystem, graceful: bool = True) -> None:
    """Ask for a reload and let its check pass: the reload itself begins."""
    arbiter.reload(graceful)
    finish_check(arbiter, system, exited(0))

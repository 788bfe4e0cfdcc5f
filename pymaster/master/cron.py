"""Commands run by the master on a schedule (uWSGI's `cron`, `unique-cron`, `cron2`).

`MIN HOUR DAY MONTH WEEKDAY CMD`: a field matches its value; -1 matches any, -N every N
(the field's value divisible by N: `-15` minutes is :00, :15, :30, :45). As in uWSGI, day and
weekday are ORed when both are given, weekday 7 is Sunday, and a task runs at most once in 60
seconds. The master checks when its loop starts and on every tick (local time), so a
`-1 -1 -1 -1 -1` task runs at start and then every minute. A `unique-cron` task is not
started while its previous run is alive. CMD runs as `/bin/sh -c CMD`, a child of the master
(own session, stdin on /dev/null, the sockets closed); it is not waited for nor stopped at reload or
shutdown, as in uWSGI. `--cron-harakiri N` (or `harakiri=N` in cron2) kills a run after N s.

A reload re-execs the master, and a run still going is still its child: the old image hands
each task's pid, start time and last run to the new one in the environment (keyed by the
task's definition), so a `unique-cron` is not started twice, the exit of a run begun before
the reload is logged as the cron's, its harakiri still applies, and a task does not run again
in the same minute because of the reload.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymaster.log import log, log_verbose
from pymaster.master.arbiter import hold_signals, release_signals

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.arbiter import Arbiter

ANY = -1
CARRY_ENV = "PYMASTER_CRON_STATE"  # {definition: [pid, started_at, last_job]} across a re-exec


class CronError(ValueError):
    pass


@dataclass(eq=False)
class Cron:
    minute: int
    hour: int
    day: int
    month: int
    week: int
    command: str
    unique: bool = False
    harakiri: int = 0  # seconds a run may take (0: off); -1: off even with --cron-harakiri
    pid: int = 0
    started_at: float = 0.0
    last_job: float = 0.0
    deadline: float = 0.0

    @property
    def key(self) -> str:
        """What identifies the task across a reload (the config may have changed)."""
        when = (self.minute, self.hour, self.day, self.month, self.week)
        return f"{int(self.unique)} {self.harakiri} {when} {self.command}"


def parse(value: str, unique: bool = False) -> Cron:
    parts = value.split(None, 5)
    try:
        numbers = [int(p) for p in parts[:5]]
    except ValueError:
        numbers = []
    if len(numbers) != 5 or len(parts) < 6 or not parts[5].strip():
        raise CronError(f"invalid cron syntax: {value} (expected MIN HOUR DAY MONTH WEEKDAY CMD)")
    minute, hour, day, month, week = numbers
    return Cron(minute, hour, day, month, week, parts[5].strip(), unique)


CRON2_KEYS = ("minute", "hour", "day", "month", "week", "unique", "harakiri")


def parse2(value: str) -> Cron:
    """`key=val,... CMD` (minute, hour, day, month, week, unique, harakiri; -1 when left out)."""
    head, sep, command = value.strip().partition(" ")
    if not sep or "=" not in head:
        if "=" in value:
            raise CronError(f"unable to parse cron definition: {value}")
        head, command = "", value.strip()
    fields: dict[str, int] = {}
    for item in filter(None, head.split(",")):
        key, eq, val = item.partition("=")
        if key == "legion":
            raise CronError(f"--cron2: '{key}' is not supported (pymaster has no legions)")
        if not eq or key not in CRON2_KEYS:
            raise CronError(f"unable to parse cron definition: {value}")
        try:
            fields[key] = int(val)
        except ValueError:
            raise CronError(f"--cron2: {key}={val!r} is not a number") from None
    if not command.strip():
        raise CronError(f"[uwsgi-cron] invalid command in cron definition: {value}")
    cron = Cron(
        fields.get("minute", ANY),
        fields.get("hour", ANY),
        fields.get("day", ANY),
        fields.get("month", ANY),
        fields.get("week", ANY),
        command.strip(),
        bool(fields.get("unique", 0)),
    )
    if "harakiri" in fields:
        cron.harakiri = fields["harakiri"] if fields["harakiri"] > 0 else -1
    return cron


def configured(cfg: Config) -> list[Cron]:
    crons = [parse(v) for v in cfg.cron]
    crons += [parse(v, unique=True) for v in cfg.unique_cron]
    crons += [parse2(v) for v in cfg.cron2]
    return crons


def matches(cron: Cron, tm: time.struct_time) -> bool:
    """uWSGI's uwsgi_cron_task_needs_execution, on local time `tm`."""
    wday = (tm.tm_wday + 1) % 7  # C's tm_wday: Sunday is 0 (Python's Monday is 0)
    now = {
        "minute": tm.tm_min,
        "hour": tm.tm_hour,
        "day": tm.tm_mday,
        "month": tm.tm_mon,
        "week": wday,
    }
    want = {
        "minute": cron.minute,
        "hour": cron.hour,
        "day": cron.day,
        "month": cron.month,
        "week": 0 if cron.week == 7 else cron.week,
    }
    for field, value in want.items():
        if value < 0 and now[field] % abs(value) == 0:
            want[field] = now[field]
    same = {field: want[field] == now[field] for field in now}
    common = same["minute"] and same["hour"] and same["month"]
    if cron.day >= 0 and cron.week >= 0:
        return common and (same["day"] or same["week"])
    return common and same["day"] and same["week"]


class Crons:
    def __init__(self, arbiter: Arbiter, crons: list[Cron]):
        self.arbiter = arbiter
        self.system = arbiter.system
        self.crons = crons
        self.default_harakiri = arbiter.cfg.cron_harakiri

    def attach(self) -> None:
        for cron in self.crons:
            log(f'[uwsgi-cron] command "{cron.command}" registered as cron task')
        self.arbiter.on_start.append(lambda: self.check(self.system.time()))
        self.arbiter.on_tick.append(self.tick)
        self.arbiter.reapers.append(self.reaped)
        self.arbiter.before_exec.append(self.to_environ)

    def to_environ(self, environ: dict[str, str]) -> None:
        """Hand the runs in progress and the last run times to the next image."""
        state = {c.key: [c.pid, c.started_at, c.last_job] for c in self.crons}
        environ[CARRY_ENV] = json.dumps(state)

    def adopt(self, raw: str) -> None:
        """Take back what the image before this one handed over (`to_environ`): a run is
        adopted only if that pid is still a child of this process."""
        try:
            state = json.loads(raw)
            carried = {str(k): (int(v[0]), float(v[1]), float(v[2])) for k, v in state.items()}
        except (ValueError, TypeError, IndexError, AttributeError):
            return
        for cron in self.crons:
            if cron.key not in carried:
                continue
            pid, started_at, last_job = carried[cron.key]
            cron.last_job = last_job
            if pid and self.system.is_child(pid):
                cron.pid, cron.started_at = pid, started_at
                limit = cron.harakiri if cron.harakiri else self.default_harakiri
                cron.deadline = started_at + limit if limit > 0 else 0.0
                log(f'[uwsgi-cron] command "{cron.command}" still running with pid {pid}')

    def tick(self, now: float) -> None:
        self.harakiri(now)
        if self.arbiter.state.mode == "running":
            self.check(now)

    def check(self, now: float) -> None:
        tm = time.localtime(now)
        for cron in self.crons:
            if cron.unique and cron.pid:
                continue
            if matches(cron, tm) and now - cron.last_job >= 60:
                self.run(cron, now)
                cron.last_job = now

    def run(self, cron: Cron, now: float) -> None:
        hold_signals()
        try:
            pid = self.system.fork()
        except OSError as exc:
            release_signals()
            log(f'[uwsgi-cron] cannot fork for "{cron.command}": {exc.strerror}')
            return
        if pid == 0:
            try:
                self.arbiter.reset_child_signals()
                release_signals()
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.setsid()  # a group of its own: harakiri kills the whole run
                os.execv("/bin/sh", ["/bin/sh", "-c", cron.command])
            finally:
                os._exit(127)
        release_signals()
        cron.pid = pid
        cron.started_at = now
        log_verbose(f'[uwsgi-cron] running "{cron.command}" (pid {pid})')
        limit = cron.harakiri if cron.harakiri else self.default_harakiri
        cron.deadline = now + limit if limit > 0 else 0.0

    def reaped(self, pid: int, status: int) -> bool:
        for cron in self.crons:
            if cron.pid == pid:
                took = int(self.system.time() - cron.started_at)
                log(
                    f'[uwsgi-cron] command "{cron.command}" running with pid {pid} '
                    f"exited after {took} second(s)"
                )
                cron.pid = 0
                cron.started_at = 0.0
                cron.deadline = 0.0
                return True
        return False

    def harakiri(self, now: float) -> None:
        for cron in self.crons:
            if cron.pid and cron.deadline and cron.deadline < now:
                log(f'*** HARAKIRI ON CRON "{cron.command}" (pid: {cron.pid}) ***')
                self.arbiter.kill(-cron.pid, signal.SIGKILL)
                cron.deadline = 0.0


def attach(arbiter: Arbiter, cfg: Config) -> Crons | None:
    carried = os.environ.pop(CARRY_ENV, None)  # the workers and later images need not see it
    crons = configured(cfg)
    if not crons:
        return None
    manager = Crons(arbiter, crons)
    if carried:
        manager.adopt(carried)
    manager.attach()
    return manager

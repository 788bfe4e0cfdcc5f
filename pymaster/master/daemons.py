"""External daemons the master runs beside its workers (uWSGI's attach-daemon family).

* `--attach-daemon CMD` (and `--attach-control-daemon`, `--attach-daemon2 cmd=...`): a
  "dumb" daemon, `/bin/sh -c CMD` forked by the master in its own session, killed by the
  kernel if the master dies (PDEATHSIG). When it exits while the master runs it is spawned
  again, throttled when it keeps dying (`throttle`). On reload and shutdown it gets its stop
  signal (to its process group) every second, and SIGKILL after `--reload-mercy` (3 s);
  the master waits for it before it re-execs or exits, and a reload starts it again.
* `--smart-attach-daemon PIDFILE CMD`: CMD daemonizes itself and writes PIDFILE; the
  master checks the pid in PIDFILE every second and spawns CMD again when it is gone. A
  reload keeps it (the new image finds the pidfile), a shutdown leaves it running, as uWSGI
  does. `--smart-attach-daemon2` daemonizes CMD and writes PIDFILE itself.

The log lines are uWSGI's (`[uwsgi-daemons] spawning "CMD" (uid: U gid: G)`, `throttling`,
`respawning`, `stopping daemon`, `found valid/active pidfile`). The master never sleeps for a
daemon: a throttled spawn sleeps in the forked child before it execs, as in uWSGI.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymaster.log import log, log_verbose
from pymaster.master.arbiter import hold_signals, release_signals
from pymaster.workers.contract import die_with_master

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.arbiter import Arbiter

MAX_THROTTLE = 300  # uWSGI's cap when no max_throttle is given (5 minutes)
DAEMON2_KEYS = {
    "command": "command",
    "cmd": "command",
    "exec": "command",
    "freq": "freq",
    "pidfile": "pidfile",
    "control": "control",
    "daemonize": "daemonize",
    "daemon": "daemonize",
    "stopsignal": "stop_signal",
    "stop_signal": "stop_signal",
    "reloadsignal": "reload_signal",
    "reload_signal": "reload_signal",
    "stdin": "honour_stdin",
    "chdir": "chdir",
    "max_throttle": "max_throttle",
    "notifypid": "notifypid",
}
DAEMON2_REFUSED = {
    "uid": "run the master as that user (--uid) or wrap CMD with setpriv",
    "gid": "run the master as that group (--gid) or wrap CMD with setpriv",
    "legion": "pymaster has no legions",
    "ns_pid": "wrap CMD with `unshare --pid --fork`",
    "touch": "use --touch-reload on the instance",
}


class DaemonError(ValueError):
    """A daemon option that cannot be parsed: the message names the option and the value."""


@dataclass(eq=False)
class Daemon:
    command: str
    pidfile: str = ""  # smart daemon: tracked by the pid in this file
    daemonize: bool = False  # the master daemonizes CMD and writes pidfile (smart2)
    freq: int = 10  # smart: checks without a valid pidfile before spawning again
    stop_signal: int = signal.SIGTERM
    reload_signal: int = 0  # 0: the stop signal
    control: bool = False  # its exit shuts the instance down
    honour_stdin: bool = False
    chdir: str = ""
    max_throttle: int = 0  # 0: MAX_THROTTLE
    notifypid: bool = False  # smart: signalled on reload and shutdown
    # state
    pid: int = 0
    status: int = 0  # 0 never started, 1 just started, 2 smart and monitored
    respawns: int = 0
    last_spawn: int = 0
    pidfile_checks: int = 0
    has_daemonized: bool = False
    registered: bool = True  # False once stopped: not spawned again in this image
    stopping_since: float = 0.0


# -- parsing ---------------------------------------------------------------------------------
def _int(option: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DaemonError(f"--{option}: {key}={value!r} is not a number") from None


def parse_smart(value: str, option: str = "smart-attach-daemon") -> Daemon:
    """`PIDFILE[,FREQ] CMD`."""
    pidfile, sep, command = value.strip().partition(" ")
    if not sep or not command.strip():
        raise DaemonError(f"invalid {option} syntax: {value} (expected PIDFILE CMD)")
    pidfile, comma, freq = pidfile.partition(",")
    daemon = Daemon(command.strip(), pidfile=pidfile, daemonize=option == "smart-attach-daemon2")
    if comma:
        daemon.freq = _int(option, "freq", freq)
    return daemon


def parse_daemon2(value: str) -> Daemon:
    """`key=val,key=val`: uWSGI's keys (see DAEMON2_KEYS); those pymaster cannot honour are
    refused with what to do instead."""
    fields: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep:
            raise DaemonError(f"invalid --attach-daemon2 keyval syntax: {value}")
        if key in DAEMON2_REFUSED:
            raise DaemonError(f"--attach-daemon2: '{key}' is not supported; {DAEMON2_REFUSED[key]}")
        if key not in DAEMON2_KEYS:
            raise DaemonError(
                f"--attach-daemon2: unknown key '{key}' (known: {', '.join(sorted(DAEMON2_KEYS))})"
            )
        fields[DAEMON2_KEYS[key]] = val
    if not fields.get("command", "").strip():
        raise DaemonError("--attach-daemon2: you need to specify a 'command' key")
    daemon = Daemon(fields["command"].strip(), pidfile=fields.get("pidfile", ""))
    for name in ("freq", "stop_signal", "reload_signal", "max_throttle"):
        if name in fields:
            setattr(daemon, name, _int("attach-daemon2", name, fields[name]))
    for name in ("control", "daemonize", "honour_stdin", "notifypid"):
        if name in fields:  # uWSGI: the key's presence turns it on
            setattr(daemon, name, True)
    daemon.chdir = fields.get("chdir", "")
    if daemon.daemonize and not daemon.pidfile:
        raise DaemonError("--attach-daemon2: daemonize needs a pidfile")
    return daemon


def configured(cfg: Config) -> list[Daemon]:
    """Every daemon of the configuration, in uWSGI's order; DaemonError if one is invalid."""
    daemons = [Daemon(c.strip()) for c in cfg.attach_daemon if c.strip()]
    daemons += [Daemon(c.strip(), control=True) for c in cfg.attach_control_daemon if c.strip()]
    daemons += [parse_smart(v) for v in cfg.smart_attach_daemon]
    daemons += [parse_smart(v, "smart-attach-daemon2") for v in cfg.smart_attach_daemon2]
    daemons += [parse_daemon2(v) for v in cfg.attach_daemon2]
    if cfg.daemons_honour_stdin:
        for daemon in daemons:
            daemon.honour_stdin = True
    return daemons


# -- decisions -------------------------------------------------------------------------------
def throttle(now: int, last_spawn: int, respawns: int, max_throttle: int = 0) -> int:
    """Seconds a (re)spawn waits, as uWSGI: none when the last spawn is more than 3 s ago,
    else `respawns - seconds since it` (at least 1), capped by max_throttle (or 300)."""
    since = now - last_spawn
    if since > 3:
        return 0
    delay = max(1, respawns - since)
    return min(delay, max_throttle if max_throttle > 0 else MAX_THROTTLE)


def shell_line(command: str) -> str:
    """What `/bin/sh -c` runs: a simple command is prefixed with `exec`, so the daemon is the
    process the master watches and signals, and dies with the master (dash would keep a shell
    between them, and PDEATHSIG would reach only the shell). A compound one runs as given."""
    if any(ch in command for ch in ";&|<>()`\n") or command.lstrip().startswith("exec "):
        return command
    first = command.split(None, 1)[0] if command.split() else ""
    if "=" in first or first in ("if", "for", "while", "case", "until", "{", "!"):
        return command
    return f"exec {command}"


def read_pidfile(path: str, alive) -> int:
    """The live pid in `path`, or -1 (missing, unreadable, not a pid, or not running)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        log(f'open("{path}"): {exc.strerror}')
        return -1
    digits = ""
    for ch in text.strip():
        if not ch.isdigit():
            break
        digits += ch
    pid = int(digits) if digits else 0
    if pid <= 0:
        return -1
    return pid if alive(pid) else -1


class Daemons:
    """The daemons of one master image, driven by the arbiter's hooks."""

    def __init__(self, arbiter: Arbiter, daemons: list[Daemon]):
        self.arbiter = arbiter
        self.system = arbiter.system
        self.daemons = daemons
        self.mercy = arbiter.cfg.reload_mercy  # never 0: the table maps 0 to 3

    def attach(self) -> None:
        arbiter = self.arbiter
        arbiter.on_start.append(self.spawn_all)
        arbiter.on_tick.append(self.tick)
        arbiter.on_stop.append(lambda _graceful: self.stop())
        arbiter.reapers.append(self.reaped)
        arbiter.holds.append(self.stopping)

    # -- spawning -------------------------------------------------------------------------
    def _alive(self, pid: int) -> bool:
        try:
            self.system.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def spawn_all(self) -> None:
        for daemon in self.daemons:
            if daemon.pidfile:
                pid = read_pidfile(daemon.pidfile, self._alive)
                if pid > 0:
                    daemon.pid = pid
                    log(
                        f'[uwsgi-daemons] found valid/active pidfile for "{daemon.command}" '
                        f"(pid: {pid})"
                    )
                    continue
            self.spawn(daemon)

    def spawn(self, daemon: Daemon) -> None:
        if not daemon.registered:
            return
        now = int(self.system.time())
        delay = throttle(now, daemon.last_spawn, daemon.respawns, daemon.max_throttle)
        respawning = daemon.respawns > 0
        hold_signals()
        try:
            pid = self.system.fork()
        except OSError as exc:
            release_signals()
            log(f'[uwsgi-daemons] cannot fork for "{daemon.command}": {exc.strerror}')
            return
        if pid == 0:
            self._child(daemon, delay, respawning)
        release_signals()
        daemon.has_daemonized = False
        daemon.pid = pid
        daemon.status = 1
        daemon.pidfile_checks = 0
        daemon.respawns += 1
        daemon.last_spawn = now

    def _child(self, daemon: Daemon, delay: int, respawning: bool) -> None:
        """In the forked child: detach, wait out the throttle, exec `/bin/sh -c CMD`."""
        try:
            self.arbiter.reset_child_signals()
            release_signals()
            if daemon.chdir:
                os.chdir(daemon.chdir)
            if daemon.daemonize:
                if os.fork():
                    os._exit(0)
                with open(daemon.pidfile, "w") as fh:
                    fh.write(f"{os.getpid()}\n")
            if not daemon.honour_stdin:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
            os.setsid()
            if not daemon.pidfile:
                die_with_master(signal.SIGKILL)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the sockets stay with the master
            if delay:
                log(f'[uwsgi-daemons] throttling "{daemon.command}" for {delay} seconds')
                time.sleep(delay)
            log(
                f'[uwsgi-daemons] {"re" if respawning else ""}spawning "{daemon.command}" '
                f"(uid: {os.getuid()} gid: {os.getgid()})"
            )
            os.execv("/bin/sh", ["/bin/sh", "-c", shell_line(daemon.command)])
        except BaseException:
            log(traceback.format_exc().rstrip())
            log(f'[uwsgi-daemons] unable to spawn "{daemon.command}"')
        finally:
            os._exit(1)

    # -- supervision ------------------------------------------------------------------------
    def reaped(self, pid: int, status: int) -> bool:
        """A child that is not a slot: True if it was one of ours."""
        for daemon in self.daemons:
            if daemon.pid != pid:
                continue
            if daemon.pidfile:  # the smart daemon's launcher: it daemonized
                daemon.has_daemonized = True
                if daemon.stopping_since:
                    daemon.pid = 0
                return True
            daemon.pid = 0
            # what the daemon left in its session (a shell's children) goes with it
            self.arbiter.kill(-pid, signal.SIGKILL)
            if self.arbiter.state.mode != "running" or not daemon.registered:
                return True
            if daemon.control:
                log(f'[uwsgi-daemons] control daemon "{daemon.command}" exited: shutting down')
                self.arbiter.shutdown(graceful=True)
                return True
            self.spawn(daemon)
            return True
        return False

    def tick(self, now: float) -> None:
        if self.arbiter.state.mode == "running":
            self.smart_check()
        else:
            self.stop_step(now)

    def smart_check(self) -> None:
        """Once a second, as uWSGI: a smart daemon whose pidfile has no live pid is spawned
        again (after `freq` checks for one that was just started)."""
        for daemon in self.daemons:
            if not daemon.pidfile or not daemon.registered:
                continue
            pid = read_pidfile(daemon.pidfile, self._alive)
            if pid <= 0:
                if daemon.status == 2:
                    self.spawn(daemon)
                    continue
                daemon.pidfile_checks += 1
                if daemon.pidfile_checks >= daemon.freq:
                    if not daemon.has_daemonized:
                        log_verbose(
                            f'[uwsgi-daemons] "{daemon.command}" (pid: {daemon.pid}) '
                            "did not daemonize !!!"
                        )
                        daemon.pidfile_checks = 0
                    else:
                        log(
                            f'[uwsgi-daemons] found changed pidfile for "{daemon.command}" '
                            f"(old_pid: {daemon.pid} new_pid: {pid})"
                        )
                        self.spawn(daemon)
            elif pid != daemon.pid:
                log(
                    f'[uwsgi-daemons] found changed pid for "{daemon.command}" '
                    f"(old_pid: {daemon.pid} new_pid: {pid})"
                )
                daemon.pid = pid
            else:
                daemon.status = 2

    # -- reload and shutdown ----------------------------------------------------------------
    def _stop_signal(self, daemon: Daemon) -> int:
        if self.arbiter.state.mode == "reloading" and daemon.reload_signal > 0:
            return daemon.reload_signal
        return daemon.stop_signal

    def stop(self) -> None:
        """The master reloads or stops: dumb daemons get their stop signal (process group);
        smart ones are left alone, unless notifypid asks for a signal."""
        now = self.system.time()
        for daemon in self.daemons:
            if daemon.pid <= 0:
                continue
            if not daemon.pidfile:
                log(f"[uwsgi-daemons] stopping daemon (pid: {daemon.pid}): {daemon.command}")
                daemon.registered = False
                daemon.stopping_since = now
                self.arbiter.kill(-daemon.pid, self._stop_signal(daemon))
            elif daemon.notifypid:
                reloading = self.arbiter.state.mode == "reloading"
                sig = (daemon.reload_signal or signal.SIGHUP) if reloading else daemon.stop_signal
                self.arbiter.kill(-daemon.pid, sig)

    def stop_step(self, now: float) -> None:
        """Every second while stopping: the stop signal again, SIGKILL after the mercy."""
        for daemon in self.daemons:
            if daemon.pidfile or daemon.pid <= 0 or not daemon.stopping_since:
                continue
            if now - daemon.stopping_since >= self.mercy:
                log(
                    "[uwsgi-daemons] daemon did not die in time, killing "
                    f"(pid: {daemon.pid}): {daemon.command}"
                )
                self.arbiter.kill(-daemon.pid, signal.SIGKILL)
            else:
                self.arbiter.kill(-daemon.pid, self._stop_signal(daemon))

    def stopping(self) -> bool:
        """True while a dumb daemon we signalled has not been reaped."""
        return any(d.pid > 0 and d.stopping_since and not d.pidfile for d in self.daemons)


def attach(arbiter: Arbiter, cfg: Config) -> Daemons | None:
    """Attach the configured daemons to `arbiter` (DaemonError if one is invalid)."""
    daemons = configured(cfg)
    if not daemons:
        return None
    manager = Daemons(arbiter, daemons)
    manager.attach()
    return manager

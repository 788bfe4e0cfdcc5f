"""One vassal: its command line and environment, its start, and its death with the Emperor.

A vassal is `python -m pymaster` (the Emperor's interpreter) with, in uWSGI's order of
effect: `--ini` each --vassals-include-before file, `--set` each --vassal-set pair, `--ini`
the vassal file itself, `--ini` each --vassals-include file, then each --vassals-inherit-before
and --vassals-inherit file (uWSGI applies inherited files last, so their values win), and
`--master` (a vassal always has one, as in uWSGI).

Its environment is the Emperor's with `UWSGI_VASSAL_X` renamed `UWSGI_X` (and
`PYMASTER_VASSAL_X` → `PYMASTER_X`), no Emperor option variables (a vassal is not an
Emperor unless its own file says so), no systemd variables (LISTEN_*, WATCHDOG_*), the
Emperor's own NOTIFY_SOCKET, and `PYMASTER_EMPEROR_PID`. In the child, before the exec, the
tyrant's uid/gid are set and the kernel is asked to send SIGINT (stop at once) to the vassal
master if the Emperor dies; a vassal that drops privileges itself asks again afterwards
(`keep_with_emperor`), as a change of credentials clears that request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from pymaster.config import Config
from pymaster.config.table import EMPEROR
from pymaster.emperor.monitor import Found
from pymaster.workers.contract import die_with_master

EMPEROR_PID_ENV = "PYMASTER_EMPEROR_PID"
DEATH_SIGNAL = signal.SIGINT  # what a vassal master gets when the Emperor dies
COMMANDS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)  # Emperor → vassal
_DROPPED = (
    "UWSGI_RELOADS",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
)


def command(cfg: Config, found: Found) -> list[str]:
    argv = [sys.executable, "-m", "pymaster"]
    for path in cfg.vassals_include_before:
        argv += ["--ini", os.path.abspath(path)]
    for pair in cfg.vassal_set:
        argv += ["--set", pair]
    argv += ["--ini", found.name]
    for path in (*cfg.vassals_include, *cfg.vassals_inherit_before, *cfg.vassals_inherit):
        argv += ["--ini", os.path.abspath(path)]
    argv.append("--master")
    return argv


def _emperor_variables() -> set[str]:
    names = set()
    for option in EMPEROR:
        for key in option.long_names:
            for prefix in ("UWSGI_", "PYMASTER_"):
                names.add(prefix + key.upper().replace("-", "_"))
    return names


EMPEROR_VARIABLES = frozenset(_emperor_variables())


def environment(environ: Mapping[str, str], notify_socket: str, emperor_pid: int) -> dict[str, str]:
    env = {}
    renamed = {}
    for key, value in environ.items():
        if key in _DROPPED or key in EMPEROR_VARIABLES or key == "NOTIFY_SOCKET":
            continue
        for prefix in ("UWSGI_", "PYMASTER_"):
            if key.startswith(prefix + "VASSAL_"):
                renamed[prefix + key[len(prefix) + 7 :]] = value
                break
        else:
            env[key] = value
    env.update(renamed)
    env["NOTIFY_SOCKET"] = notify_socket
    env[EMPEROR_PID_ENV] = str(emperor_pid)
    return env


def _child_setup(emperor_pid: int) -> None:
    """In the child, after the tyrant's setuid and before the exec. The Emperor's commands
    stay blocked across the exec until the vassal master has its handlers (a pymaster image
    holds them too, from its first line): a SIGHUP sent to a vassal still importing pymaster
    is a reload once it can act on it, never the default action's death."""
    signal.pthread_sigmask(signal.SIG_SETMASK, COMMANDS)
    die_with_master(DEATH_SIGNAL)
    if os.getppid() != emperor_pid:  # the Emperor died before the request took hold
        os._exit(1)


def spawn(
    argv: list[str], env: dict[str, str], cwd: str | None, ids: tuple[int, int] | None
) -> subprocess.Popen:
    """Start a vassal; OSError when it cannot be started."""
    emperor_pid = os.getpid()
    extra: dict = {}
    if ids is not None:
        extra = {"user": ids[0], "group": ids[1], "extra_groups": []}
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        close_fds=True,
        preexec_fn=lambda: _child_setup(emperor_pid),
        **extra,
    )


def keep_with_emperor(environ: Mapping[str, str]) -> None:
    """In a vassal master, after it dropped privileges: ask again for SIGINT on the Emperor's
    death (a change of credentials cleared the request); exit if the Emperor is gone."""
    pid = environ.get(EMPEROR_PID_ENV, "")
    if not pid.isdigit():
        return
    die_with_master(DEATH_SIGNAL)
    if os.getppid() != int(pid):
        os.kill(os.getpid(), DEATH_SIGNAL)


@dataclass
class Vassal:
    """A running vassal (uWSGI's `struct uwsgi_instance`)."""

    found: Found
    proc: subprocess.Popen
    born: float
    first_run: float
    last_mod_ns: int
    status: str = "running"  # "running" | "stopping"
    loyal: bool = False
    ready: bool = False
    last_loyal: float = 0.0
    last_ready: float = 0.0
    respawns: int = 0
    stop_deadline: float = 0.0
    no_mercy: bool = False
    stop_signal: int = 0

    @property
    def name(self) -> str:
        return self.found.name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def as_stats(self) -> dict:
        ready = 1 if self.ready else 0
        return {
            "id": self.name,
            "pid": self.pid,
            "born": int(self.born),
            "last_mod": self.last_mod_ns // 1_000_000_000,
            "last_heartbeat": 0,
            "loyal": 1 if self.loyal else 0,
            "ready": ready,
            "accepting": ready,
            "last_loyal": int(self.last_loyal),
            "last_ready": int(self.last_ready),
            "last_accepting": int(self.last_ready),
            "first_run": int(self.first_run),
            "last_run": int(self.born),
            "cursed": 0,
            "zerg": 0,
            "on_demand": "",
            "uid": self.found.uid,
            "gid": self.found.gid,
            "monitor": self.found.monitor,
            "respawns": self.respawns,
        }

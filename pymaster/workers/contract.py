"""The contract between the master and every kind of worker, written once.

- Exit codes: 0 = finished (SIGHUP, recycling), 22 = the app cannot be loaded (the master
  stops respawning it), 30 = the worker noticed its master is gone.
- Death with the master: the kernel signals the child when its parent dies
  (`PR_SET_PDEATHSIG`), and the worker also checks `getppid()` on its ticks.
- Inherited descriptors (for a worker that execs, such as the Perl one): the listening
  sockets and the scoreboard memfd, named in the environment (`PYMASTER_LISTEN_FDS`,
  `PYMASTER_SCOREBOARD_FD`); a forked Python worker simply keeps them.
- The options a worker reads are flagged `worker=True` in the option table: a forked worker
  reads its Config, an exec'd one gets them as `PYMASTER_OPT_<NAME>` (`option_environment`).
- Recycling (max-requests, min lifetime, RSS) is decided by `Recycling`, for every kind.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from pymaster.config import Config
from pymaster.config.table import OPTIONS

EXIT_OK = 0
EXIT_FAILED_APP = 22
EXIT_MASTER_GONE = 30
PR_SET_PDEATHSIG = 1


def die_with_master(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent (the master) dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- options


def option_environment(cfg: Config) -> dict[str, str]:
    """The options every worker kind reads (`worker=True` in the table), as environment
    variables for a worker that execs: `PYMASTER_OPT_<NAME>`. Booleans are `1`/`0`, lists
    are joined with newlines, an unset value is the empty string."""
    env = {}
    for option in OPTIONS:
        if option.worker:
            env[option.env_name] = _env_text(cfg.get(option.name))
    return env


def _env_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    return str(value)


# --------------------------------------------------------------------------- recycling


@dataclass(frozen=True)
class Recycling:
    """When a worker finishes by itself, decided here for every worker kind.

    After each request a worker recycles (finishes its request, exits 0, is respawned) when
    it has served `max_requests` (uWSGI's `--max-requests` plus worker id times
    `--max-requests-delta`; 0 = never), or its RSS is above `rss_limit` bytes
    (`--reload-on-rss` MB; 0 = never), or its address space above `as_limit` bytes
    (`--reload-on-as` MB; 0 = never) -- but never before it has lived `min_lifetime`
    seconds (`--min-worker-lifetime`). The Perl worker gets these numbers in its
    environment (`PYMASTER_RECYCLE_*`) and applies the same rule, with the same log lines.
    """

    max_requests: int
    rss_limit: int
    min_lifetime: float
    as_limit: int = 0

    @classmethod
    def for_worker(cls, cfg: Config, worker_id: int) -> Recycling:
        limit = cfg.max_requests + cfg.max_requests_delta * worker_id if cfg.max_requests else 0
        return cls(
            limit,
            cfg.reload_on_rss * 1024 * 1024,
            float(cfg.min_worker_lifetime),
            cfg.reload_on_as * 1024 * 1024,
        )

    def environment(self) -> dict[str, str]:
        return {
            "PYMASTER_RECYCLE_MAX_REQUESTS": str(self.max_requests),
            "PYMASTER_RECYCLE_RSS": str(self.rss_limit),
            "PYMASTER_RECYCLE_MIN_LIFETIME": str(self.min_lifetime),
            "PYMASTER_RECYCLE_AS": str(self.as_limit),
        }

    def reason(
        self,
        requests: int,
        age: float,
        rss: Callable[[], int],
        pid: int,
        worker_id: int,
        address_space: Callable[[], int] | None = None,
    ) -> str | None:
        """The log line announcing the recycling, or None to keep serving. `rss` (and
        `address_space`, by default this process's) is only called when its limit is set
        and the worker is old enough."""
        if age < self.min_lifetime:
            return None
        if self.max_requests and requests >= self.max_requests:
            return f"...The work of process {pid} is done. Seeya!"
        if self.rss_limit:
            used = rss()
            if used > self.rss_limit:
                return (
                    f"worker {worker_id} (pid: {pid}) RSS {used} bytes over reload-on-rss "
                    f"{self.rss_limit} bytes, recycling"
                )
        if self.as_limit:
            used = (address_space or _address_space)()
            if used > self.as_limit:
                return (
                    f"worker {worker_id} (pid: {pid}) address space {used} bytes over "
                    f"reload-on-as {self.as_limit} bytes, recycling"
                )
        return None


def _address_space() -> int:
    """This process's address space in bytes (/proc/self/statm, first field)."""
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

"""The contract between the master and every kind of worker, written once.

- Exit codes: 0 = finished (SIGHUP, recycling), 22 = the app cannot be loaded (the master
  stops respawning it), 30 = the worker noticed its master is gone.
- Death with the master: the kernel signals the child when its parent dies
  (`PR_SET_PDEATHSIG`), and the worker also checks `getppid()` on its ticks.
- Inherited descriptors (for a worker that execs, such as the Perl one): the listening
  sockets and the scoreboard memfd, named in the environment (`PYMASTER_LISTEN_FDS`,
  `PYMASTER_SCOREBOARD_FD`); a forked Python worker simply keeps them.
"""

from __future__ import annotations

import ctypes
import signal

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

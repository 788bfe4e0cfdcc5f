"""--vacuum: remove at exit only what is still ours.

Another instance may have taken a path since we bound it (it unlinks and rebinds the unix
socket, it rewrites the pidfile); removing it then would break that instance. As uWSGI, the
inode of each unix socket path is recorded right after the bind and the path is removed only
if it still names that inode (pymaster compares the device too). The record survives a
reload: it goes to the next image in `INODES_ENV`, since a re-exec'd master inherits its
sockets without binding them. The pidfile is removed only if it still holds our pid.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

from pymaster.log import log
from pymaster.master.sockets import Listener

INODES_ENV = "PYMASTER_UNIX_INODES"  # {path: [st_dev, st_ino]} across a re-exec


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def filesystem_path(lst: Listener) -> str | None:
    """The path of a unix socket in the filesystem (not an abstract `@name`), else None."""
    if lst.family != socket.AF_UNIX or not isinstance(lst.address, str):
        return None
    return None if lst.address.startswith("\0") else lst.address


def inherited_record() -> dict[str, tuple[int, int]]:
    """What the image before this one recorded, taken out of the environment (the workers
    need not see it)."""
    raw = os.environ.pop(INODES_ENV, "{}")
    try:
        data = json.loads(raw)
        return {str(p): (int(i[0]), int(i[1])) for p, i in data.items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return {}


@dataclass
class Owned:
    """The unix socket paths this master bound, with the (device, inode) each had then."""

    inodes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def at_start(
        cls, listeners: list[Listener], before: dict[str, tuple[int, int]] | None = None
    ) -> Owned:
        """Sockets just bound are recorded now; inherited ones as the image before us
        recorded them (`before`; nothing for sockets systemd passed: those are systemd's)."""
        before = before or {}
        owned = cls()
        for lst in listeners:
            path = filesystem_path(lst)
            if path is None:
                continue
            if not lst.inherited:
                found = _identity(path)
                if found is not None:
                    owned.inodes[path] = found
            elif path in before:
                owned.inodes[path] = before[path]
        return owned

    def to_environ(self, environ: dict[str, str]) -> None:
        """Hand the record to the next image (called just before the re-exec)."""
        environ[INODES_ENV] = json.dumps({p: list(i) for p, i in self.inodes.items()})

    def remove_sockets(self) -> None:
        for path, identity in self.inodes.items():
            remove_socket(path, identity)


def remove_socket(path: str, identity: tuple[int, int] | None) -> None:
    """Unlink `path` if it is still the socket file recorded as `identity`."""
    now = _identity(path)
    if now is None:
        return
    if identity is None or now != identity:
        log(f"VACUUM WARNING: unix socket {path} changed inode. Skip removal")
        return
    try:
        os.unlink(path)
    except OSError as exc:
        log(f"VACUUM: cannot remove unix socket {path}: {exc.strerror}")
        return
    log(f"VACUUM: unix socket {path} removed.")


def remove_pidfile(path: str, pid: int) -> None:
    """Unlink the pidfile if it still holds `pid` (another master may have rewritten it)."""
    try:
        with open(path) as fh:
            held = fh.read().strip()
    except OSError:
        return
    if held != str(pid):
        log(f"VACUUM WARNING: pidfile {path} now holds pid {held or '(nothing)'}. Skip removal")
        return
    try:
        os.unlink(path)
    except OSError as exc:
        log(f"VACUUM: cannot remove pidfile {path}: {exc.strerror}")
        return
    log("VACUUM: pidfile removed.")

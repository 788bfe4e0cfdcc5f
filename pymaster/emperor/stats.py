"""`--emperor-stats ADDR`: uWSGI's Emperor stats JSON, one document per connection, then close.

Keys as uWSGI 2.0 writes them: `version`, `pid`, `uid`, `gid`, `cwd`, `emperor` (the
monitors), `emperor_tyrant`, `throttle_level` (always 0), `vassals` (per vassal: `id`, `pid`,
`born`, `last_mod`, `loyal`, `ready`, `accepting`, ..., `monitor`, `respawns`) and
`blacklist` (`id`, `throttle_level` in ms, `attempt`, `first_attempt`, `last_attempt`).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable

from pymaster import __version__
from pymaster.log import log
from pymaster.master.sockets import Listener, parse_address


def document(monitors: list[str], tyrant: bool, vassals: list[dict], blacklist: list[dict]) -> dict:
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": _cwd(),
        "emperor": monitors,
        "emperor_tyrant": 1 if tyrant else 0,
        "throttle_level": 0,
        "vassals": vassals,
        "blacklist": blacklist,
    }


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed under us
        return ""


class StatsServer:
    """The listening socket; `readable()` answers one connection."""

    def __init__(self, address: str, build: Callable[[], dict], backlog: int = 100):
        self.build = build
        self.listener = Listener(address, "stats", *parse_address(address, "stats"))
        self.listener.bind(backlog)
        self.sock = self.listener.bound
        self.sock.set_inheritable(False)
        self.sock.setblocking(False)
        self.path = self.listener.path
        self.inode = None
        if self.path is not None:
            st = os.stat(self.path)
            self.inode = (st.st_dev, st.st_ino)
        log(f"*** Emperor stats server enabled on {address} fd: {self.sock.fileno()} ***")

    def fileno(self) -> int:
        return self.sock.fileno()

    def readable(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            data = json.dumps(self.build(), separators=(",", ":")).encode()
            conn.settimeout(0.5)  # a reader that does not read loses its document
            try:
                conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        if self.inode is not None and self.path is not None:
            try:
                st = os.stat(self.path)
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self.inode:
                    os.unlink(self.path)
            except OSError:
                pass

"""Which files are vassals: the `--emperor` directory and glob scans, as uWSGI's monitors.

A directory `DIR` watches `DIR/*.ini`: the vassal is named by its bare file name (`a.ini`)
and runs in DIR. Anything else is a glob pattern: the vassal is named by the matched path and
runs in the Emperor's working directory. Only regular files ending in `.ini` (names under 255
bytes) are vassals; files with uWSGI's other config extensions are reported once, others
ignored silently.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass

VASSAL_EXTENSION = ".ini"
OTHER_UWSGI_EXTENSIONS = (".xml", ".yml", ".yaml", ".js", ".json")
MAX_NAME = 255


class MonitorError(ValueError):
    """An `--emperor` value that cannot be watched; the message names it."""


@dataclass(frozen=True)
class Found:
    """One vassal file as a scan saw it."""

    key: str  # the absolute path: a vassal's identity
    name: str  # uWSGI's name: `a.ini` (directory) or the matched path (glob)
    cwd: str | None  # where the vassal runs: the directory, or None (the Emperor's cwd)
    monitor: str  # the --emperor value that found it
    mtime_ns: int
    uid: int
    gid: int

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000


class Monitor:
    """One `--emperor` value."""

    def __init__(self, spec: str, nofollow: bool = False, owner_nofollow: bool = False):
        if "://" in spec:
            raise MonitorError(
                f"--emperor '{spec}': uWSGI's {spec.split('://')[0]}:// monitors are not part of "
                "pymaster; give a directory of vassal INI files or a glob pattern"
            )
        self.spec = spec
        self.nofollow = nofollow
        self.owner_nofollow = owner_nofollow
        self.directory = os.path.abspath(spec) if os.path.isdir(spec) else None
        if self.directory is None and not glob.has_magic(spec) and not os.path.isfile(spec):
            raise MonitorError(
                f"--emperor '{spec}': no such directory or file (expected a directory of vassal "
                "INI files or a glob pattern such as '/etc/pymaster/vassals/*.ini')"
            )
        self.noted: set[str] = set()  # non-INI config files already reported

    @property
    def kind(self) -> str:
        return "dir" if self.directory else "glob"

    def candidates(self) -> list[tuple[str, str]]:
        """(name, path) of every file the monitor sees, vassal or not."""
        if self.directory is not None:
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                return []
            return [(n, os.path.join(self.directory, n)) for n in names]
        return [(p, p) for p in sorted(glob.glob(self.spec))]

    def scan(self) -> tuple[list[Found], list[str]]:
        """The vassal files now, and the lines to log once (config files pymaster cannot read)."""
        found: list[Found] = []
        notes: list[str] = []
        for name, path in self.candidates():
            base = os.path.basename(name)
            if not base.endswith(VASSAL_EXTENSION) or len(base) >= MAX_NAME:
                if base.endswith(OTHER_UWSGI_EXTENSIONS) and path not in self.noted:
                    self.noted.add(path)
                    notes.append(
                        f"[emperor] {name} is not an INI file: pymaster's vassals are *.ini "
                        "files, it is ignored"
                    )
                continue
            try:
                st = os.stat(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                link = os.lstat(path) if (self.nofollow or self.owner_nofollow) else st
            except OSError:
                continue
            when = link if self.nofollow else st
            owner = link if self.owner_nofollow else st
            found.append(
                Found(
                    key=os.path.abspath(path),
                    name=name,
                    cwd=self.directory,
                    monitor=self.spec,
                    mtime_ns=when.st_mtime_ns,
                    uid=owner.st_uid,
                    gid=owner.st_gid,
                )
            )
        return found, notes

"""Read uWSGI-style INI files: `FILE[:SECTION]` specs, sections, comments, bare keys, magic `%X` vars."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import sys
import time
from dataclasses import dataclass, field

from pymaster import __version__

DEFAULT_SECTIONS = ("uwsgi", "pymaster")


class ConfigError(Exception):
    """Bad configuration input; the message names the thing and what was expected."""


@dataclass
class IniResult:
    """What one INI load produced: ordered (key, value) pairs, its absolute path, warnings."""

    path: str
    pairs: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_spec(spec: str) -> tuple[str, str | None]:
    """`FILE[:SECTION]` -> (FILE, SECTION or None); the colon is searched after the last '/'."""
    slash = spec.rfind("/")
    colon = spec.find(":", slash + 1)
    if colon < 0:
        return spec, None
    return spec[:colon], spec[colon + 1 :]


def djb33x(text: str) -> int:
    """uWSGI's djb33x hash over the UTF-8 bytes (bytes are signed chars, as in C)."""
    value = 5381
    for byte in text.encode():
        signed = byte - 256 if byte > 127 else byte
        value = ((value * 33) ^ signed) & 0xFFFFFFFF
    return value


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def file_magic(path: str, given: str, section: str) -> dict[str, str]:
    """The per-file magic variables (`%p %d %s %n %e %c %o %x %0-%9 %j %i`) of `path`."""
    directory = os.path.dirname(path)
    name = os.path.basename(path)
    stem, dot, ext = name.rpartition(".")
    table = {
        "p": path,
        "d": directory.rstrip("/") + "/",
        "s": name,
        "n": stem if dot else name,
        "e": ext if dot else "",
        "c": os.path.basename(directory),
        "o": given,
        "x": section,
        "j": f"{djb33x(path):08X}",
        "i": str(os.stat(path).st_ino),
    }
    parts = [part for part in directory.split("/") if part]
    table.update({str(n): (parts[n] if n < len(parts) else "") for n in range(10)})
    return table


def instance_magic() -> dict[str, str]:
    """The instance-wide magic variables (`%h %v %V %t %T %k %u %U %g %G %b %[`)."""
    now = time.time()
    return {
        "h": socket.gethostname(),
        "v": os.getcwd(),
        "V": __version__,
        "t": str(int(now)),
        "T": str(int(now * 1_000_000)),
        "k": str(os.cpu_count() or 1),
        "u": str(os.getuid()),
        "U": _user_name(os.getuid()),
        "g": str(os.getgid()),
        "G": _group_name(os.getgid()),
        "b": os.path.abspath(sys.argv[0]),
        "[": "\x1b",
    }


def magic_sub(text: str, table: dict[str, str]) -> str:
    """Replace `%` + char from `table`; `%%` is '%', `%(` is kept, any other `%`+char is deleted."""
    out = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "%":
            out.append("%")
        elif nxt == "(":
            out.append("%(")
        else:
            out.append(table.get(nxt, ""))
        i += 2
    return "".join(out)


class MagicContext:
    """Remembers the first INI file (for the upper-case `%P %D ...` vars) and the last one read."""

    UPPER = "opsdencxij"

    def __init__(self):
        self.first: dict[str, str] | None = None
        self.last_path: str | None = None
        self.instance = instance_magic()

    def table_for(self, path: str, given: str, section: str) -> dict[str, str]:
        own = file_magic(path, given, section)
        if self.first is None:
            self.first = own
        table = dict(self.instance)
        table.update(own)
        table.update({key.upper(): self.first[key] for key in self.UPPER})
        return table


def _parse_lines(text: str, label: str, wanted: tuple[str, ...]) -> tuple[str | None, list]:
    """Pairs of the first section of `wanted` found in `text` (a bad line in it is an error)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{label} line {number}: expected '[section]', got '{line}'")
            current = line[1:-1].strip()
            sections.setdefault(current, [])
            continue
        if current not in wanted:
            continue
        key, _, value = line.partition("=")
        key = key.strip(" \t")
        if not key:
            raise ConfigError(
                f"{label} line {number}: expected 'key = value' or '[section]', got '{line}'"
            )
        sections[current].append((key, value.strip(" \t\r")))
    found = next((name for name in wanted if name in sections), None)
    return found, sections.get(found, []) if found is not None else []


def read_ini(spec: str, context: MagicContext) -> IniResult:
    """Load `FILE[:SECTION]` (`:SECTION` reuses the last file read) into ordered pairs."""
    given, section = split_spec(spec)
    if not given:
        if context.last_path is None:
            raise ConfigError(f"INI '{spec}' names only a section, and no INI file was read before")
        given = context.last_path
    path = os.path.abspath(given)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"INI file '{given}' not found") from None
    except OSError as exc:
        raise ConfigError(f"INI file '{given}' cannot be read: {exc.strerror}") from None
    context.last_path = path
    text = magic_sub(raw, context.table_for(path, given, section or ""))
    wanted = (section,) if section is not None else DEFAULT_SECTIONS
    found, pairs = _parse_lines(text, given, wanted)
    result = IniResult(path, pairs)
    if found is None:
        result.warnings.append(
            f'*** WARNING: Can\'t find section "{wanted[0]}" in INI configuration file {path} ***'
        )
    return result

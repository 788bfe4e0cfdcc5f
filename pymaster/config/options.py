"""Parse uWSGI-style options (environment, command line, INI files) into one Config.

As uWSGI does, every source appends (option, value) pairs to one ordered list: `UWSGI_*` and
`PYMASTER_*` variables first, then the command line, with `--ini` files expanded in place and
bare `FILE.ini` arguments after the options. Then the `$(ENV)`, `@(file)` and `%(placeholder)`
passes run over every value, and the pairs are applied in order: lists accumulate, the last
scalar wins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from pymaster.config import placeholders
from pymaster.config.collect import COMMAND_LINE, Collector, Entry, add_command_line
from pymaster.config.docs import format_help, markdown
from pymaster.config.fields import Options
from pymaster.config.ini import ConfigError
from pymaster.config.table import BY_FLAG, BY_KEY, DIRECTIVES, OPTIONS, PLUGINS, Option

__all__ = ["parse", "Config", "ConfigError", "OPTIONS", "Option", "format_help", "markdown"]

FALSE_WORDS = ("false", "off", "no", "0")
MAX_BUFFER_SIZE = 65535
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"(\d+)([kmg]?)b?", re.IGNORECASE)
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")
_ATOI = re.compile(r"\s*([+-]?[0-9]+)")
_REFERENCE = re.compile(r"%\(([^)\s]+)\)")


def _where(entry: Entry) -> str:
    return "" if entry.origin == COMMAND_LINE else f" (in {entry.origin})"


def _option(entry: Entry) -> Option:
    """The option of an entry known to name one (placeholders never reach conversion)."""
    if entry.option is None:
        raise ConfigError(f"'{entry.key}' is not an option{_where(entry)}")
    return entry.option


def _to_int(entry: Entry, text: str) -> int:
    if not _INT.fullmatch(text) and entry.origin != COMMAND_LINE:
        return _in_range(entry, _atoi(entry, text), text)
    if not _INT.fullmatch(text):
        raise ConfigError(
            f"option '{_option(entry).flag}' expects an integer, got '{text}'{_where(entry)}"
        )
    return _in_range(entry, int(text), text)


def _where_origin(origin: str) -> str:
    return "" if origin == COMMAND_LINE else f" in {origin}"


def _atoi(entry: Entry, text: str) -> int:
    """A number in a config file or variable read as uWSGI reads it (C's atoi: leading digits,
    the rest ignored, no digits = 0), with a warning: `harakiri = 60 ; comment` is 60, and
    `cheaper = true` is 0, which is rarely what its author meant."""
    match = _ATOI.match(text)
    number = int(match.group(1)) if match else 0
    entry.warnings.append(
        f"option '{_option(entry).name}' = '{text}'{_where(entry)} is not a number: "
        f"read as {number}, as uWSGI does"
    )
    return number


def _in_range(entry: Entry, number: int, text: str) -> int:
    """Check `number` against the option's declared range; 0 becomes the option's `zero`
    value where uWSGI maps 0 to a default."""
    option = _option(entry)
    if number < option.minimum:
        raise ConfigError(
            f"option '{option.flag}' must be >= {option.minimum}, got '{text}'{_where(entry)}"
        )
    if option.maximum is not None and number > option.maximum:
        raise ConfigError(
            f"option '{option.flag}' must be <= {option.maximum}, got '{text}'{_where(entry)}"
        )
    if number == 0 and option.zero is not None:
        return option.zero
    return number


def _to_size(entry: Entry, text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match and entry.origin != COMMAND_LINE:
        return _in_range(entry, _atoi(entry, text), text)  # uWSGI reads sizes with atoi too
    if not match:
        raise ConfigError(
            f"option '{_option(entry).flag}' expects a size in bytes "
            f"(e.g. 4096, 64k, 1M), got '{text}'{_where(entry)}"
        )
    return _in_range(entry, int(match.group(1)) * SIZE_UNITS[match.group(2).lower()], text)


def _plugin_names(entry: Entry, text: str) -> list[str]:
    """Built-in plugin names; a path to a shared object (uWSGI's C plugin, e.g. a logging
    plugin a project builds) is skipped with uWSGI's own line for a plugin it cannot load,
    as uWSGI goes on without it; any other name is an error."""
    names = []
    for name in (name.strip() for name in text.split(",")):
        if not name:
            continue
        if "/" in name or name.endswith(".so"):
            entry.warnings.append(
                f"!!! UNABLE to load uWSGI plugin: {name} !!! (option 'plugin'{_where(entry)}: "
                "pymaster does not load uWSGI's C plugins; the options and log variables "
                "it adds are not available)"
            )
            continue
        names.append(name)
        if name not in PLUGINS:
            raise ConfigError(
                f"unknown plugin '{name}'{_where(entry)}: known plugins are {', '.join(PLUGINS)}"
            )
    return names


def convert(entry: Entry):
    """The typed value of an option entry (a list for list options: the items it adds)."""
    option = _option(entry)
    text = entry.value if entry.value else option.bare
    if option.kind == "bool":
        return text.lower() not in FALSE_WORDS if text else True
    if option.kind in ("int", "size") and not text:
        return 1
    if option.kind == "int":
        return _to_int(entry, text)
    if option.kind == "size":
        return _to_size(entry, text)
    if option.choices and text not in option.choices:
        raise ConfigError(
            f"option '{option.flag}' expects one of "
            f"{', '.join(option.choices)}, got '{text}'{_where(entry)}"
        )
    if option.name == "plugins":
        return _plugin_names(entry, text)
    return [text] if option.kind == "list" else text


def _run_passes(entries: list[Entry], environ: Mapping[str, str]) -> None:
    """The `$(ENV)`, `@(file)` and `%(placeholder)` passes, in that order, over every value."""

    def first_value(name: str) -> str | None:
        option = BY_KEY.get(name)
        for entry in entries:
            if entry.key == name or (option is not None and entry.option is option):
                return entry.value or ""
        return None

    for symbol, resolve in (
        ("$", environ.get),
        ("@", placeholders.read_file_value),
        ("%", placeholders.placeholder_resolver(first_value)),
    ):
        for entry in entries:
            if entry.value:
                entry.value = placeholders.substitute(entry.value, symbol, resolve)


# --- the result --------------------------------------------------------------------------------


class Config(Options):
    """The effective configuration: one typed attribute per option ('-' -> '_', declared in
    `fields.py`, generated from the table), plus bookkeeping."""

    def __init__(self, argv: list[str] | None = None):
        super().__init__()
        self.argv = list(argv or [])
        self.placeholders: dict[str, str] = {}
        self.master_reasons: list[str] = []
        self.ini_files: list[str] = []
        self.warnings: list[str] = []
        self._order: list[str] = []

    def _assign(self, entry: Entry) -> None:
        option = _option(entry)
        value = convert(entry)
        if option.name not in self._order:
            self._order.append(option.name)
        if option.force_master and option.name not in self.master_reasons:
            self.master_reasons.append(option.name)
        if option.kind == "list":
            getattr(self, option.attr).extend(value)
        else:
            setattr(self, option.attr, value)

    def _finish(self) -> None:
        if self.buffer_size > MAX_BUFFER_SIZE:
            self.warnings.append(
                f"buffer-size {self.buffer_size} is above the maximum, using {MAX_BUFFER_SIZE}"
            )
            self.buffer_size = MAX_BUFFER_SIZE
        self.master = bool(self.master or self.master_reasons)

    def is_set(self, name: str) -> bool:
        """True when the option (any name or alias) was given by any source."""
        option = _lookup(name)
        return option is not None and option.name in self._order

    def get(self, name: str, default=None):
        """The value of an option (by name, alias or flag), else of a placeholder."""
        option = _lookup(name)
        if option is None:
            return self.placeholders.get(name, default)
        return getattr(self, option.attr)

    def dump_ini(self) -> str:
        """The effective options as INI, between uWSGI's show-config markers."""
        lines = [";pymaster instance configuration", "[uwsgi]"]
        for name in self._order:
            if name in DIRECTIVES:
                continue
            value = self.get(name)
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{name} = {_ini_text(item)}")
        lines += [f"set-placeholder = {k}={v}" for k, v in self.placeholders.items()]
        lines.append(";end of configuration")
        return "\n".join(lines)


def _ini_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(name: str) -> Option | None:
    if name.startswith("-"):
        return BY_FLAG.get(name)
    return BY_KEY.get(name) or BY_KEY.get(name.replace("_", "-"))


def _strict(entries: list[Entry]) -> bool:
    values = [convert(e) for e in entries if e.option and e.option.name == "strict"]
    return bool(values) and values[-1]


def _apply(cfg: Config, entries: list[Entry], referenced: set[str]) -> None:
    strict = _strict(entries)
    for entry in entries:
        if entry.option is not None:
            cfg._assign(entry)
            cfg.warnings.extend(entry.warnings)
            continue
        if strict and not entry.placeholder:
            raise ConfigError(f"[strict-mode] unknown config directive: {entry.key}")
        if not entry.placeholder and entry.key not in referenced:
            cfg.warnings.append(
                f"unknown option '{entry.key}'{_where(entry)}: not a pymaster option, ignored "
                f"(kept as a placeholder; docs/options.md lists the options)"
            )
        cfg.placeholders.setdefault(entry.key, entry.value or "")


def _referenced(entries: list[Entry]) -> set[str]:
    """Names used as `%(name)` anywhere: unknown keys that are placeholders on purpose."""
    names: set[str] = set()
    for entry in entries:
        names.update(_REFERENCE.findall(entry.value or ""))
    return names


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse `argv` (without the program name) and `environ` into a Config; ConfigError if bad."""
    environ = os.environ if environ is None else environ
    collector = Collector(environ)
    collector.add_environ(environ)
    add_command_line(collector, list(argv))
    if collector.logic is not None:
        kind, arg, origin = collector.logic
        collector.warnings.append(
            f"the '{kind}' block ({kind} = {arg}{_where_origin(origin)}) is never closed: "
            f"every option after it depends on it (close it with endif/endfor)"
        )
    referenced = _referenced(collector.entries)
    _run_passes(collector.entries, environ)
    cfg = Config(argv)
    cfg.ini_files = collector.ini_files
    cfg.warnings = collector.warnings
    _apply(cfg, collector.entries, referenced)
    cfg._finish()
    return cfg

"""Parse uWSGI-style options (environment, command line, INI files) into one Config.

As uWSGI does, every source appends (option, value) pairs to one ordered list: `UWSGI_*` and
`PYMASTER_*` variables first, then the command line, with `--ini` files expanded in place and
bare `FILE.ini` arguments after the options. Then the `$(ENV)`, `@(file)` and `%(placeholder)`
passes run over every value, and the pairs are applied in order: lists accumulate, the last
scalar wins.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import configargparse

from pymaster import placeholders
from pymaster.ini import ConfigError, MagicContext, read_ini
from pymaster.option_docs import format_help, markdown
from pymaster.option_table import BY_FLAG, BY_KEY, DIRECTIVES, OPTIONS, PLUGINS, Option

__all__ = ["parse", "Config", "ConfigError", "OPTIONS", "Option", "format_help", "markdown"]

ENV_PREFIXES = ("UWSGI_", "PYMASTER_")
INTERNAL_ENV = frozenset({
    "UWSGI_RELOADS", "UWSGI_VASSALS_DIR", "UWSGI_EMPEROR_FD", "UWSGI_BROODLORD_NUM",
    "UWSGI_EMPEROR_FD_CONFIG", "UWSGI_EMPEROR_PROXY", "UWSGI_JAIL_PID",
    "UWSGI_ORIGINAL_PROC_NAME",
})
FALSE_WORDS = ("false", "off", "no", "0")
MAX_BUFFER_SIZE = 65535
MAX_INI_DEPTH = 32
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_SIZE = re.compile(r"(\d+)([kmg]?)b?", re.IGNORECASE)
_INI_ARG = re.compile(r".*\.ini(:[^/]*)?")
COMMAND_LINE = "command line"


@dataclass
class Entry:
    """One collected pair. `option` is None for a placeholder or an unknown key."""

    key: str
    option: Option | None
    value: str | None
    origin: str
    placeholder: bool = False       # from --set-placeholder: never an unknown directive


def _flag(option: Option) -> str:
    return f"--{option.name}"


def _split_assignment(value: str | None, option: Option) -> tuple[str, str]:
    key, sep, rest = (value or "").partition("=")
    if not sep or not key:
        raise ConfigError(f"invalid {_flag(option)} value '{value}': expected KEY=VALUE")
    return key, rest


class Collector:
    """Builds the ordered pair list; expands `ini`, `set` and `set-placeholder` as they come."""

    def __init__(self):
        self.entries: list[Entry] = []
        self.ini_files: list[str] = []
        self.warnings: list[str] = []
        self.magic = MagicContext()
        self.depth = 0

    def add_option(self, option: Option, value: str | None, origin: str, key: str = "") -> None:
        self.entries.append(Entry(key or option.name, option, value, origin))
        if option.name == "ini":
            self.load_ini(value or "")
        elif option.name == "set":
            self.add_key(*_split_assignment(value, option), origin)
        elif option.name == "set-placeholder":
            name, text = _split_assignment(value, option)
            if name in BY_KEY:
                raise ConfigError(f"you cannot use {name} as a placeholder, "
                                  "it is already available as an option")
            self.entries.append(Entry(name, None, text, origin, placeholder=True))

    def add_key(self, key: str, value: str | None, origin: str) -> None:
        """A key from an INI file, `--set` or the environment: an option, else a placeholder."""
        option = BY_KEY.get(key)
        if option is None:
            self.entries.append(Entry(key, None, value, origin))
        else:
            self.add_option(option, value, origin, key)

    def load_ini(self, spec: str) -> None:
        if self.depth >= MAX_INI_DEPTH:
            raise ConfigError(f"INI '{spec}' is nested {MAX_INI_DEPTH} levels deep: "
                              "does a file include itself?")
        result = read_ini(spec, self.magic)
        self.ini_files.append(result.path)
        self.warnings.extend(result.warnings)
        self.depth += 1
        try:
            for key, value in result.pairs:
                self.add_key(key, value, result.path)
        finally:
            self.depth -= 1

    def add_environ(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            prefix = next((p for p in ENV_PREFIXES if name.startswith(p)), None)
            if prefix and name not in INTERNAL_ENV and len(name) > len(prefix):
                key = name[len(prefix):].lower().replace("_", "-")
                self.add_key(key, value, f"environment variable {name}")


# --- command line -------------------------------------------------------------------------

class _Record(argparse.Action):
    """Appends (option, value) to the collector kept in the namespace, in command-line order."""

    def __init__(self, option_strings, dest, option: Option, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.option = option

    def __call__(self, parser, namespace, values, option_string=None):
        value = None if values == [] else values
        namespace.collector.add_option(self.option, value, COMMAND_LINE)


def _nargs(option: Option):
    if option.optional:
        return "?"
    return 0 if option.kind == "bool" else None


@lru_cache(maxsize=1)
def _parser() -> configargparse.ArgumentParser:
    parser = configargparse.ArgumentParser(prog="pymaster", add_help=False, allow_abbrev=False,
                                           exit_on_error=False)
    for option in OPTIONS:
        parser.add_argument(*option.flags, action=_Record, option=option, nargs=_nargs(option),
                            dest=option.attr, default=argparse.SUPPRESS)
    return parser


def _suggest(flag: str) -> str:
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, list(BY_FLAG), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown option '{name}'{hint}"


def _argparse_error(exc: argparse.ArgumentError) -> ConfigError:
    flag = (exc.argument_name or "").split("/")[0]
    if "expected one argument" in exc.message:
        return ConfigError(f"option '{flag}' expects a value")
    if exc.message.startswith("ignored explicit argument"):
        value = exc.message.split(" ", 3)[-1]
        return ConfigError(f"option '{flag}' takes no value on the command line, got {value}")
    return ConfigError(f"option '{flag}': {exc.message}")


def _add_command_line(collector: Collector, argv: list[str]) -> None:
    namespace = argparse.Namespace(collector=collector)
    try:
        _, extras = _parser().parse_known_args(argv, namespace=namespace, env_vars={})
    except argparse.ArgumentError as exc:
        raise _argparse_error(exc) from None
    for arg in extras:
        if arg.startswith("-") and arg != "-":
            raise ConfigError(_suggest(arg))
        if not _INI_ARG.fullmatch(arg):
            raise ConfigError(f"unexpected argument '{arg}': expected an option or a FILE.ini")
        collector.load_ini(arg)


# --- values ----------------------------------------------------------------------------------

def _where(entry: Entry) -> str:
    return "" if entry.origin == COMMAND_LINE else f" (in {entry.origin})"


def _to_int(entry: Entry, text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ConfigError(f"option '{_flag(entry.option)}' expects an integer, "
                          f"got '{text}'{_where(entry)}") from None
    if number < 0:
        raise ConfigError(f"option '{_flag(entry.option)}' must be >= 0, "
                          f"got '{text}'{_where(entry)}")
    return number


def _to_size(entry: Entry, text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"option '{_flag(entry.option)}' expects a size in bytes "
                          f"(e.g. 4096, 64k, 1M), got '{text}'{_where(entry)}")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).lower()]


def _plugin_names(entry: Entry, text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in PLUGINS:
            raise ConfigError(f"unknown plugin '{name}'{_where(entry)}: "
                              f"known plugins are {', '.join(PLUGINS)}")
    return names


def convert(entry: Entry):
    """The typed value of an option entry (a list for list options: the items it adds)."""
    option = entry.option
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
        raise ConfigError(f"option '{_flag(option)}' expects one of "
                          f"{', '.join(option.choices)}, got '{text}'{_where(entry)}")
    if option.name == "plugins":
        return _plugin_names(entry, text)
    return [text] if option.kind == "list" else text


def _run_passes(entries: list[Entry], environ: Mapping[str, str]) -> None:
    """The `$(ENV)`, `@(file)` and `%(placeholder)` passes, in that order, over every value."""
    def first_value(name: str) -> str | None:
        for entry in entries:
            if entry.key == name or (entry.option and entry.option.name == name):
                return entry.value or ""
        return None

    for symbol, resolve in (("$", environ.get), ("@", placeholders.read_file_value),
                            ("%", placeholders.placeholder_resolver(first_value))):
        for entry in entries:
            if entry.value:
                entry.value = placeholders.substitute(entry.value, symbol, resolve)


# --- the result --------------------------------------------------------------------------------

class _ShowConfig:
    """`cfg.show_config` is both the option (truthy when set) and the dump: `cfg.show_config()`."""

    def __init__(self, cfg: "Config", enabled: bool):
        self.cfg, self.enabled = cfg, enabled

    def __bool__(self) -> bool:
        return self.enabled

    def __call__(self) -> str:
        return self.cfg.dump_ini()


class Config:
    """The effective configuration: one attribute per option ('-' -> '_'), plus bookkeeping."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)
        self.placeholders: dict[str, str] = {}
        self.master_reasons: list[str] = []
        self.ini_files: list[str] = []
        self.warnings: list[str] = []
        self._order: list[str] = []
        for option in OPTIONS:
            default = list(option.default) if option.kind == "list" else option.default
            setattr(self, option.attr, default)

    def _assign(self, entry: Entry) -> None:
        option = entry.option
        value = convert(entry)
        if option.name not in self._order:
            self._order.append(option.name)
        if option.force_master and option.name not in self.master_reasons:
            self.master_reasons.append(option.name)
        if option.kind == "list":
            getattr(self, option.attr).extend(value)
        else:
            setattr(self, option.attr, value)

    def finish(self) -> None:
        if self.buffer_size > MAX_BUFFER_SIZE:
            self.warnings.append(f"buffer-size {self.buffer_size} is above the maximum, "
                                 f"using {MAX_BUFFER_SIZE}")
            self.buffer_size = MAX_BUFFER_SIZE
        self.master = bool(self.master or self.master_reasons)
        self.show_config = _ShowConfig(self, bool(self.show_config))

    def is_set(self, name: str) -> bool:
        """True when the option (any name or alias) was given by any source."""
        option = _lookup(name)
        return option is not None and option.name in self._order

    def get(self, name: str, default=None):
        """The value of an option (by name, alias or flag), else of a placeholder."""
        option = _lookup(name)
        if option is None:
            return self.placeholders.get(name, default)
        value = getattr(self, option.attr)
        return bool(value) if isinstance(value, _ShowConfig) else value

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
    if isinstance(value, bool) or value is None:
        return "true" if value else "false"
    return str(value)


def _lookup(name: str) -> Option | None:
    if name.startswith("-"):
        return BY_FLAG.get(name)
    return BY_KEY.get(name) or BY_KEY.get(name.replace("_", "-"))


def _strict(entries: list[Entry]) -> bool:
    values = [convert(e) for e in entries if e.option and e.option.name == "strict"]
    return bool(values) and values[-1]


def _apply(cfg: Config, entries: list[Entry]) -> None:
    strict = _strict(entries)
    for entry in entries:
        if entry.option is not None:
            cfg._assign(entry)
            continue
        if strict and not entry.placeholder:
            raise ConfigError(f"[strict-mode] unknown config directive: {entry.key}")
        cfg.placeholders.setdefault(entry.key, entry.value or "")


def parse(argv: list[str], environ: Mapping[str, str] | None = None) -> Config:
    """Parse `argv` (without the program name) and `environ` into a Config; ConfigError if bad."""
    environ = os.environ if environ is None else environ
    collector = Collector()
    collector.add_environ(environ)
    _add_command_line(collector, list(argv))
    _run_passes(collector.entries, environ)
    cfg = Config(argv)
    cfg.ini_files = collector.ini_files
    cfg.warnings = collector.warnings
    _apply(cfg, collector.entries)
    cfg.finish()
    return cfg


def _main(args: list[str]) -> int:
    """`python -m pymaster.options --markdown` prints docs/options.md; no argument, the help."""
    print(markdown() if args == ["--markdown"] else format_help())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

"""Gather (option, value) pairs in uWSGI's order: environment, command line, INI files in place."""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import configargparse

from pymaster.config.ini import ConfigError, MagicContext, read_ini
from pymaster.config.table import BY_FLAG, BY_KEY, OPTIONS, Option

ENV_PREFIXES = ("UWSGI_", "PYMASTER_")
INTERNAL_ENV = frozenset(
    {
        "UWSGI_RELOADS",
        "UWSGI_VASSALS_DIR",
        "UWSGI_EMPEROR_FD",
        "UWSGI_BROODLORD_NUM",
        "UWSGI_EMPEROR_FD_CONFIG",
        "UWSGI_EMPEROR_PROXY",
        "UWSGI_JAIL_PID",
        "UWSGI_ORIGINAL_PROC_NAME",
    }
)
MAX_INI_DEPTH = 32
_INI_ARG = re.compile(r".*\.ini(:[^/]*)?")
COMMAND_LINE = "command line"


@dataclass
class Entry:
    """One collected pair. `option` is None for a placeholder or an unknown key."""

    key: str
    option: Option | None
    value: str | None
    origin: str
    placeholder: bool = False  # from --set-placeholder: never an unknown directive


def _split_assignment(value: str | None, option: Option) -> tuple[str, str]:
    key, sep, rest = (value or "").partition("=")
    if not sep or not key:
        raise ConfigError(f"invalid {option.flag} value '{value}': expected KEY=VALUE")
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
                raise ConfigError(
                    f"you cannot use {name} as a placeholder, it is already available as an option"
                )
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
            raise ConfigError(
                f"INI '{spec}' is nested {MAX_INI_DEPTH} levels deep: does a file include itself?"
            )
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
                key = name[len(prefix) :].lower().replace("_", "-")
                if prefix == "PYMASTER_" and key not in BY_KEY:
                    continue  # the worker contract's own variables, not options
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
    parser = configargparse.ArgumentParser(
        prog="pymaster", add_help=False, allow_abbrev=False, exit_on_error=False
    )
    for option in OPTIONS:
        parser.add_argument(
            *option.flags,
            action=_Record,
            option=option,
            nargs=_nargs(option),
            dest=option.attr,
            default=argparse.SUPPRESS,
        )
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


def add_command_line(collector: Collector, argv: list[str]) -> None:
    """Tokenize `argv` with configargparse; bare FILE.ini arguments are read after the options."""
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

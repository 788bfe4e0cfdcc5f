"""Gather (option, value) pairs in uWSGI's order: environment, command line, INI files in place."""

from __future__ import annotations

import argparse
import difflib
import glob
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    warnings: list[str] = field(default_factory=list)  # found while converting its value


def _at(origin: str) -> str:
    return "" if origin == COMMAND_LINE else f" in {origin}"


def _split_assignment(value: str | None, option: Option) -> tuple[str, str]:
    key, sep, rest = (value or "").partition("=")
    if not sep or not key:
        raise ConfigError(f"invalid {option.flag} value '{value}': expected KEY=VALUE")
    return key, rest


# uWSGI's option logic (core/config.c): a key of LOGIC opens a block; every following key up to
# one of LOGIC_END is collected only if the condition holds (once per item for the loops), with
# `%(_)` replaced by the tested value or the item. `else` applies its block when the previous
# condition failed. Blocks do not nest.
LOGIC = frozenset(
    {
        "if-env", "ifenv", "if-not-env", "if-exists", "ifexists", "if-not-exists",
        "if-file", "if-not-file", "if-dir", "ifdir", "if-directory", "if-not-dir",
        "if-opt", "if-not-opt", "if-reload", "if-not-reload", "if-hostname", "if-not-hostname",
        "for", "for-glob", "for-times", "for-readline", "else",
    }
)  # fmt: skip
LOGIC_END = frozenset({"end", "endif", "end-if", "endfor", "end-for"})
LOGIC_HELP = {
    "if-env": "keys up to endif only if environment variable NAME is set (`NAME=VALUE`: to VALUE)",
    "if-not-env": "keys up to endif only if NAME is not set (or not to VALUE)",
    "if-exists": "keys up to endif only if PATH exists (`%(_)` is the path)",
    "if-not-exists": "keys up to endif only if PATH does not exist",
    "if-file": "keys up to endif only if PATH is a file",
    "if-not-file": "keys up to endif only if PATH is not a file",
    "if-dir": "keys up to endif only if PATH is a directory",
    "if-not-dir": "keys up to endif only if PATH is not a directory",
    "if-opt": "keys up to endif only if option KEY was given before (`KEY=VALUE`: with VALUE)",
    "if-not-opt": "keys up to endif only if option KEY was not given before",
    "if-reload": "keys up to endif only in a reloaded master",
    "if-not-reload": "keys up to endif only at the first start",
    "if-hostname": "keys up to endif only on host NAME",
    "if-not-hostname": "keys up to endif only on other hosts than NAME",
    "else": "keys up to endif only if the previous condition failed",
    "for": "repeat the keys up to endfor once per space-separated item (`%(_)`)",
    "for-glob": "repeat the keys up to endfor once per path matching PATTERN",
    "for-times": "repeat the keys up to endfor N times (`%(_)` = 1..N)",
    "for-readline": "repeat the keys up to endfor once per line of FILE",
    "endif": "close an if-* or else block (also end, end-if)",
    "endfor": "close a for* block (also end, end-for)",
}
CURRENT = "%(_)"


class Collector:
    """Builds the ordered pair list; expands `ini`, `set` and `set-placeholder` as they come,
    and runs uWSGI's option logic (`if-*`, `for*`, `else`, `endif`) while collecting."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.entries: list[Entry] = []
        self.ini_files: list[str] = []
        self.warnings: list[str] = []
        self.magic = MagicContext()
        self.depth = 0
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.logic: tuple[str, str, str] | None = None  # (key, argument, origin) of the block
        self.logic_failed = False

    def add_option(self, option: Option, value: str | None, origin: str, key: str = "") -> None:
        if self.logic is not None:
            self._in_block(key or option.name, value, origin)
            return
        self._add_option(option, value, origin, key)

    def _add_option(self, option: Option, value: str | None, origin: str, key: str = "") -> None:
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
        if key in LOGIC_END:
            self.logic, self.logic_failed = None, False
            return
        if key in LOGIC:
            self._open_block(key, value, origin)
            return
        if self.logic is not None:
            self._in_block(key, value, origin)
            return
        self._store(key, value, origin)

    def _store(self, key: str, value: str | None, origin: str) -> None:
        option = BY_KEY.get(key)
        if option is None:
            self.entries.append(Entry(key, None, value, origin))
        else:
            self._add_option(option, value, origin, key)

    # -- option logic ---------------------------------------------------------------------
    def _open_block(self, key: str, value: str | None, origin: str) -> None:
        if key == "else":
            self.logic = None  # like endif, but the failed state of the `if` is kept
        elif self.logic is not None:
            raise ConfigError(
                f"recursive logic in options is not supported (option = {key}{_at(origin)}): "
                f"close the '{self.logic[0]}' block with endif/endfor first"
            )
        else:
            self.logic_failed = False
        self.logic = (key, value or "", origin)

    def _in_block(self, key: str, value: str | None, origin: str) -> None:
        assert self.logic is not None
        kind, arg, where = self.logic
        items = self._logic_items(kind, arg, where)
        if kind != "else":
            self.logic_failed = items is None
        for item in items or ():
            self._store(key, None if value is None else value.replace(CURRENT, item), origin)

    def _logic_items(self, kind: str, arg: str, origin: str) -> list[str] | None:
        """The values `%(_)` takes for one key of the block (one for a condition that holds,
        one per item for a loop), or None when the condition fails."""
        name, eq, want = arg.partition("=")
        if kind in ("if-env", "ifenv", "if-not-env"):
            got = self.environ.get(name)
            holds = got is not None and (not eq or got == want)
            if kind == "if-not-env":
                return [got or ""] if not holds else None
            return [got] if holds and got is not None else None
        if kind in ("if-opt", "if-not-opt"):
            found = next((e.value or "" for e in self.entries if e.key == name), None)
            holds = found is not None and (not eq or found == want)
            if kind == "if-not-opt":
                return [found or ""] if not holds else None
            return [found] if holds and found is not None else None
        tests = {
            "exists": os.path.exists, "file": os.path.isfile, "dir": os.path.isdir,
            "directory": os.path.isdir,
        }  # fmt: skip
        test = kind.removeprefix("if-not-").removeprefix("if-").removeprefix("if")
        if test in tests:
            return [arg] if tests[test](arg) != kind.startswith("if-not-") else None
        if kind in ("if-reload", "if-not-reload"):
            reloaded = "UWSGI_RELOADS" in os.environ
            return [""] if reloaded != (kind == "if-not-reload") else None
        if kind in ("if-hostname", "if-not-hostname"):
            same = socket.gethostname() == arg
            return [arg] if same != (kind == "if-not-hostname") else None
        if kind == "else":
            return [CURRENT] if self.logic_failed else None
        return self._loop_items(kind, arg, origin)

    def _loop_items(self, kind: str, arg: str, origin: str) -> list[str]:
        if kind == "for":
            return arg.split()
        if kind == "for-glob":  # as glob(3) with GLOB_MARK | GLOB_NOCHECK
            found = sorted(glob.glob(arg))
            return [p + "/" if os.path.isdir(p) else p for p in found] or [arg]
        if kind == "for-times":
            count = int(arg) if arg.strip().isdigit() else 0
            return [str(n) for n in range(1, count + 1)]
        try:  # for-readline
            with open(arg, encoding="utf-8", errors="surrogateescape") as fh:
                return [line.rstrip("\r\n") for line in fh]
        except OSError as exc:
            raise ConfigError(
                f"for-readline = {arg}{_at(origin)}: cannot read the file: {exc.strerror}"
            ) from None

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


class _Logic(argparse.Action):
    """An option-logic key on the command line: the same path as in an INI file."""

    def __call__(self, parser, namespace, values, option_string=None):
        key = (option_string or "").lstrip("-")
        value = values if isinstance(values, str) else None  # nargs=0 gives []
        namespace.collector.add_key(key, value, COMMAND_LINE)


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
    takes_no_value = LOGIC_END | {"if-reload", "if-not-reload", "else"}
    for key in sorted(LOGIC | LOGIC_END):
        parser.add_argument(
            f"--{key}",
            action=_Logic,
            nargs=0 if key in takes_no_value else None,
            dest="logic_" + key,
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

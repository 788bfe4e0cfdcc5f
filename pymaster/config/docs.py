"""Render the option table as `pymaster --help` text and as docs/options.md."""

from __future__ import annotations

import textwrap
from itertools import groupby

from pymaster.config.table import OPTIONS, Option

METAVARS = {"int": "N", "size": "BYTES", "str": "VALUE", "list": "VALUE", "bool": ""}
HELP_COLUMN = 34

USAGE = """\
usage: pymaster [OPTIONS] [FILE.ini ...]

Options take uWSGI's names. Each one also works as an INI key (`name = value`) and as an
environment variable (UWSGI_NAME or PYMASTER_NAME). Repeatable options accumulate; for the
others the last value wins."""

MARKDOWN_INTRO = """\
# pymaster options

Generated from the option table (`pymaster/config/table.py`) by
`python -m pymaster.config --markdown`; do not edit by hand.

## How options are read

pymaster reads uWSGI's options the way uWSGI 2.0 does:

* Every source appends `(option, value)` pairs to one ordered list: first the `UWSGI_*` and
  `PYMASTER_*` environment variables (`UWSGI_SOCKET=:9` is `--socket :9`), then the command
  line. `--ini FILE` is expanded in place where it appears; a bare `FILE.ini` argument is read
  after all command-line options (as uWSGI's getopt leaves it at the end).
* Then three passes run over every value: `$(NAME)` becomes the environment variable (left as
  is when unset), `@(PATH)` the contents of a file (relative to the current directory, one
  trailing newline removed), `%(NAME)` the **first** value of the option or placeholder NAME
  (left as is when unknown). `%(a + 1)` does integer math: tokens separated by spaces,
  left to right, `+ - * /`, `++`/`--`; tokens without an operator are concatenated.
* Then the pairs are applied in order: repeatable options accumulate, for the others the
  **last** value wins (`processes = 2` in an INI then `--processes 3` gives 3). A boolean
  given without a value, or with anything but `false`/`off`/`no`/`0`, is true. An integer
  given without a value is 1; a negative integer is an error.
* Options marked **master** turn the master process on; pymaster logs which ones did.
* An unknown command-line option is an error naming the closest known one. An unknown INI key
  becomes a placeholder (usable as `%(key)`), unless `--strict` is given; pymaster logs it at
  start by name (`unknown option 'KEY' (in FILE): not a pymaster option, ignored`), unless
  the key is used as `%(KEY)` somewhere (a placeholder on purpose).
* A number in an INI file or a `UWSGI_*` variable is read as uWSGI reads it (C's `atoi`):
  leading digits, the rest ignored, no digits = 0; pymaster logs a warning naming the option
  (`harakiri = 60 ; comment` is 60; `cheaper = true` is 0, rarely what was meant). On the
  command line such a value is an error. Declared ranges are then checked: an option that
  cannot be 0 refuses it, and where uWSGI reads 0 as its default, so does pymaster (the
  tables below say so per option).
* `--set KEY=VALUE` sets an option or a placeholder; `--set-placeholder KEY=VALUE` only a
  placeholder (an option name is an error).

## INI files

`--ini FILE[:SECTION]` reads section `[uwsgi]` (or `[pymaster]` when there is no `[uwsgi]`)
or the named one; `:SECTION` alone reads another section of the last file read, also from
inside a file (`ini = :other`). Lines are `key = value` (both sides trimmed, values not
unquoted); a key alone means true; lines starting with `;` or `#` are comments (no inline
comments, as in uWSGI). A line is split at its first `=`: `static-map /static=./x` is the
unknown key `static-map /static` (logged), as uWSGI reads it. A missing section is a warning,
a missing file an error.

uWSGI's option logic works in INI files and `UWSGI_*` variables: `if-env = NAME[=VALUE]`,
`if-not-env`, `if-exists = PATH`, `if-not-exists`, `if-file`, `if-not-file`, `if-dir`,
`if-not-dir`, `if-opt = KEY[=VALUE]` (a key collected before), `if-not-opt`, `if-reload`,
`if-not-reload`, `if-hostname`, `if-not-hostname` open a block; the keys up to `endif` (or
`end`, `end-if`) are taken only when the condition holds, with `%(_)` replaced by the value
tested; `else` after a block takes its keys when the condition failed. `for = a b c`,
`for-glob = PATTERN` (no match: the pattern itself; directories get a trailing `/`),
`for-times = N` and `for-readline = FILE` repeat each key of the block up to `endfor` (or
`end-for`) once per item, as `%(_)`. Blocks do not nest (an error, as in uWSGI); a block left
open is a warning.

Magic variables are replaced while a file is read: `%p` its absolute path, `%d` its directory
(with a trailing `/`), `%s` its name, `%n` the name without extension, `%e` the extension,
`%c` the directory's name, `%o` the path as given, `%x` the section as given, `%0`..`%9` the
directory's components, `%j` the djb33x hash of the path, `%i` the inode; the upper-case
`%P %D %S %N %E %C %O %X %J %I` are the same for the first INI file read. Instance-wide:
`%h` hostname, `%v` current directory, `%V` version, `%t`/`%T` start time in s/µs, `%k` CPU
count, `%u`/`%U` uid/user, `%g`/`%G` gid/group, `%b` program path, `%[` ESC, `%%` a `%`.
`%(` is kept for the placeholder pass; any other `%` and the character after it are deleted.

`--show-config` logs the effective options as INI between `;pymaster instance configuration`
and `;end of configuration`.
"""


def _metavar(option: Option) -> str:
    text = option.metavar or METAVARS[option.kind]
    return f"[{text}]" if option.optional and text else text


def _default(option: Option) -> str:
    """The default as text, or '' when there is none worth showing (unset, false, empty)."""
    if option.default is None or option.default is False or option.default == ():
        return ""
    return str(option.default)


def _notes(option: Option) -> str:
    notes = []
    if option.kind == "list":
        notes.append("repeatable")
    if option.force_master:
        notes.append("enables the master")
    if option.choices:
        notes.append("one of " + ", ".join(option.choices))
    notes.extend(_range_notes(option))
    if _default(option):
        notes.append(f"default {_default(option)}")
    return f" ({'; '.join(notes)})" if notes else ""


def _range_notes(option: Option) -> list[str]:
    """What the table says about legal values and what 0 means."""
    notes = []
    if option.kind in ("int", "size"):
        if option.minimum > 0:
            notes.append(f"at least {option.minimum}")
        if option.maximum is not None:
            notes.append(f"at most {option.maximum}")
        if option.zero is not None:
            notes.append(f"0 means {option.zero}, as in uWSGI")
    if option.worker:
        notes.append("read by every worker kind")
    if option.inert:
        notes.append(f"no effect in pymaster: {option.inert}")
    if option.refused:
        notes.append(f"refused by pymaster: {option.refused}")
    return notes


def _help_entry(option: Option) -> str:
    left = f"  {', '.join(option.flags)} {_metavar(option)}".rstrip()
    body = textwrap.wrap(option.help + _notes(option), 100 - HELP_COLUMN)
    if len(left) >= HELP_COLUMN:
        return "\n".join([left] + [" " * HELP_COLUMN + line for line in body])
    first = left.ljust(HELP_COLUMN) + body[0]
    return "\n".join([first] + [" " * HELP_COLUMN + line for line in body[1:]])


def format_help() -> str:
    """The `pymaster --help` text, grouped by section; then uWSGI's option logic."""
    from pymaster.config.collect import LOGIC_HELP

    parts = [USAGE]
    for section, options in groupby(OPTIONS, key=lambda o: o.section):
        parts.append(f"\n{section}:")
        parts.extend(_help_entry(option) for option in options)
    parts.append("\nOption logic (INI files, UWSGI_* variables and the command line):")
    for key, text in LOGIC_HELP.items():
        bare = key.startswith(("end", "else")) or key.endswith("reload")
        left = f"  --{key}{'' if bare else ' VALUE'}".ljust(HELP_COLUMN)
        parts.append(left + text)
    return "\n".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_row(option: Option) -> str:
    aliases = ", ".join(f"`{flag}`" for flag in option.flags[1:])
    default = f"`{_default(option)}`" if _default(option) else ""
    kind = option.kind + (" **master**" if option.force_master else "")
    extra = ([f"one of {', '.join(option.choices)}"] if option.choices else []) + _range_notes(
        option
    )
    help_text = option.help + (f" ({'; '.join(extra)})" if extra else "")
    return f"| `--{option.name}` | {aliases} | {kind} | {default} | {_cell(help_text)} |"


def markdown() -> str:
    """docs/options.md: how options are read, then one table per section."""
    parts = [MARKDOWN_INTRO]
    for section, options in groupby(OPTIONS, key=lambda o: o.section):
        parts.append(f"## {section}\n")
        parts.append("| option | aliases | type | default | description |")
        parts.append("|---|---|---|---|---|")
        parts.extend(_markdown_row(option) for option in options)
        parts.append("")
    return "\n".join(parts)


FIELD_TYPES = {"str": "str", "int": "int", "size": "int", "bool": "bool", "list": "list[str]"}


def field_type(option: Option) -> str:
    """The Python type of the Config attribute for `option`."""
    base = FIELD_TYPES[option.kind]
    return (
        f"{base} | None" if option.default is None and option.kind not in ("bool", "list") else base
    )


def fields_source() -> str:
    """pymaster/config/fields.py: one typed attribute per option, with its table default."""
    lines = [
        '"""The typed options of a Config: one attribute per option of the table.',
        "",
        "Generated from `pymaster/config/table.py` by `python -m pymaster.config --fields` (into a temporary file, then moved here);",
        "do not edit by hand (a test checks that it is current).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from dataclasses import dataclass, field",
        "",
        "",
        "@dataclass",
        "class Options:",
        '    """Every option, with the type and default the table declares."""',
        "",
    ]
    for option in OPTIONS:
        if option.kind == "list":
            default = "field(default_factory=list)"
        else:
            default = repr(option.default).replace("'", '"')  # as ruff formats it
        lines.append(f"    {option.attr}: {field_type(option)} = {default}")
    return "\n".join(lines) + "\n"

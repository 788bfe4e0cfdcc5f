"""`python -m pymaster.deploy list | show NAME | unit [-o DIR] [--ini-dir DIR]`.

`unit` writes `pymaster@.service` (and `pymaster@.socket`) with ExecStart naming the
pymaster of the interpreter that runs this (a venv's console script, or `python -m
pymaster`), so the unit works wherever pip put it; everything else is the shipped unit.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

SHIPPED_EXEC = "ExecStart=/usr/bin/env pymaster "
UNIT = "pymaster@.service"
SOCKET = "pymaster@.socket"
EMPEROR = "pymaster-emperor.service"


def files() -> dict[str, str]:
    """Name -> text of every shipped file."""
    root = resources.files("pymaster.deploy") / "files"
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in sorted(root.iterdir(), key=lambda e: e.name)
        if entry.is_file()
    }


def command() -> str:
    """How systemd should start this installation's pymaster (absolute paths)."""
    script = Path(sys.executable).with_name("pymaster")
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m pymaster"


def service(ini_dir: str = "/etc/pymaster", name: str = UNIT) -> str:
    """Shipped unit `name` with this installation's command, and its INI directory (the
    instances' INI files, or the Emperor's `vassals/` under it)."""
    text = files()[name]
    ini_dir = ini_dir.rstrip("/") or "/"
    lines = []
    for line in text.splitlines():
        if line.startswith(SHIPPED_EXEC):
            if name == UNIT:
                line = f"ExecStart={command()} --ini {ini_dir}/%i.ini"
            else:
                line = f"ExecStart={command()} --emperor {ini_dir}/vassals"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pymaster.deploy",
        description="example configurations and systemd units shipped with pymaster",
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("list", help="the shipped files")
    show = sub.add_parser("show", help="print one shipped file")
    show.add_argument("name")
    unit = sub.add_parser(
        "unit",
        help="print the instance unit, or write every systemd unit (-o) for this installation",
    )
    unit.add_argument("-o", "--output", metavar="DIR", help="directory (default: print)")
    unit.add_argument("--ini-dir", default="/etc/pymaster", help="where the INI files are")
    args = parser.parse_args(argv)
    shipped = files()
    if args.what == "list":
        for name in shipped:
            print(name)
        return 0
    if args.what == "show":
        if args.name not in shipped:
            print(
                f"python -m pymaster.deploy: no shipped file {args.name!r}; "
                f"expected one of: {', '.join(shipped)}",
                file=sys.stderr,
            )
            return 2
        sys.stdout.write(shipped[args.name])
        return 0
    text = service(args.ini_dir)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    units = {UNIT: text, SOCKET: shipped[SOCKET], EMPEROR: service(args.ini_dir, EMPEROR)}
    try:
        for name, body in units.items():
            (out / name).write_text(body, encoding="utf-8")
    except OSError as exc:
        print(f"python -m pymaster.deploy: cannot write to {out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(out / n) for n in units)} (ExecStart={command()} ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

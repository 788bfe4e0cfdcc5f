"""`python -m pymaster.config --markdown` prints docs/options.md, `--fields` prints
pymaster/config/fields.py; without an argument, the help text."""

import sys

from pymaster.config.docs import fields_source, format_help, markdown


def main(args: list[str]) -> int:
    if args == ["--markdown"]:
        print(markdown())
    elif args == ["--fields"]:
        print(fields_source(), end="")
    else:
        print(format_help())
    return 0


sys.exit(main(sys.argv[1:]))

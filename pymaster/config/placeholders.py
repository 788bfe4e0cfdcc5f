"""The `$(ENV)`, `@(file)` and `%(placeholder)` passes over option values, with placeholder math."""

from __future__ import annotations

import re
from collections.abc import Callable

from pymaster.config.ini import ConfigError

Lookup = Callable[[str], "str | None"]
_C_INT = re.compile(r"\s*[+-]?\d+")


def _closing(text: str, start: int) -> int:
    """Index of the ')' matching the '(' at `start`, or -1 (nested parentheses are tracked)."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    return -1


def substitute(text: str, symbol: str, resolve: Lookup) -> str:
    """Replace every `SYMBOL(inner)` with resolve(inner); None leaves the text unchanged."""
    opener = symbol + "("
    out = []
    pos = 0
    while (start := text.find(opener, pos)) >= 0:
        end = _closing(text, start + 1)
        if end < 0:
            break
        value = resolve(text[start + 2 : end])
        out.append(text[pos:start])
        out.append(text[start : end + 1] if value is None else value)
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


def read_file_value(path: str) -> str:
    """`@(PATH)`: the file's contents without one trailing newline; unreadable is an error."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read '@({path})': {exc.strerror}") from None
    return data[:-1] if data.endswith(("\n", "\r")) else data


def _c_int(text: str) -> int:
    """strtoll(): the leading decimal integer of `text`, 0 when there is none."""
    match = _C_INT.match(text)
    return int(match.group()) if match else 0


def _apply(op: str, left: str | None, right: str, expr: str) -> str:
    if op == "":
        return (left or "") + right
    a, b = _c_int(left or ""), _c_int(right)
    if op == "+":
        return str(a + b)
    if op == "-":
        return str(a - b)
    if op == "*":
        return str(a * b)
    if b == 0:
        raise ConfigError(f"division by zero in placeholder '%({expr})'")
    quotient = abs(a) // abs(b)
    return str(quotient if (a < 0) == (b < 0) else -quotient)


def evaluate_math(expr: str, lookup: Lookup) -> str:
    """`%(a + 1)`: space-separated tokens, left to right; `+ - * /`, `++`/`--`; no operator concatenates."""
    current: str | None = None
    op = ""
    for token in expr.split():
        if token in ("+", "-", "*", "/"):
            op = token
            continue
        if token in ("++", "--"):
            if current is not None:
                current = str(_c_int(current) + (1 if token == "++" else -1))
            op = ""
            continue
        value = token if token.isdigit() else (lookup(token) or "")
        current = _apply(op, current, value, expr)
        op = ""
    return current or ""


def placeholder_resolver(lookup: Lookup) -> Lookup:
    """`%(NAME)`: the first value named NAME (None keeps it verbatim); with spaces, math."""

    def resolve(inner: str) -> str | None:
        if " " in inner:
            return evaluate_math(inner, lookup)
        return lookup(inner)

    return resolve

"""Which per-request codec runs: the compiled one (`_codec.c`, built by `pip install` where a
C compiler is found) or the pure-Python one, the reference, which always stays.

`PYMASTER_PURE_PYTHON=1` (any value but empty or 0) forces the pure-Python codec; a build
without the extension (no compiler: setuptools skips the optional extension) falls back to it
by itself. The choice is made once per process, at import; `describe()` says which runs, for
the start-up log. The compiled functions are drop-ins for Python ones with the same results,
bytes and exceptions (tests/unit/test_speedups.py holds the two against each other).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

PURE_ENV = "PYMASTER_PURE_PYTHON"


def _wanted() -> bool:
    return os.environ.get(PURE_ENV, "").strip() in ("", "0")


def _load() -> tuple[ModuleType | None, str]:
    if not _wanted():
        return None, f"pure-Python codec ({PURE_ENV} is set)"
    try:
        compiled = importlib.import_module("pymaster.protocols._codec")
    except ImportError as exc:
        return None, f"pure-Python codec (no compiled codec: {exc})"
    return compiled, "compiled codec (pymaster.protocols._codec)"


codec, _why = _load()


def describe() -> str:
    """One phrase for the start-up log: which codec this process runs, and why."""
    return _why

"""Fixtures and helpers shared by the whole suite.

- `config_with(**options)`: a real `Config` (the table's defaults) with some options set, as
  parsing would leave them; a typo in an option name fails at once.
- `kind`: `wsgi` then `psgi` (skipped without plackup), for tests that run the same checks
  against both worker kinds; `app_args(directory, kind, wsgi_source, psgi_source)` writes the
  app of that kind and returns the options that load it.
- `conformance_app`: the path of the shared WSGI test app (tests/apps/conformance.py).
- every test gets its own `PYMASTER_RUNTIME_DIR` (autouse), so routers started by a test keep
  their state directories in the test's tmp_path, never in /tmp.

Talking to servers lives in tests/client.py, launching pymaster in tests/pm.py, launching
uWSGI/nginx/gunicorn/Starman in tests/external.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pymaster.config import Config

CONFORMANCE_APP = Path(__file__).resolve().parent / "apps" / "conformance.py"


def config_with(**options: object) -> Config:
    cfg = Config()
    for name, value in options.items():
        if not hasattr(cfg, name):
            raise AttributeError(f"no option {name!r} in the table")
        setattr(cfg, name, value)
    return cfg


@pytest.fixture(params=["wsgi", "psgi"])
def kind(request) -> str:
    if request.param == "psgi" and not shutil.which("plackup"):
        pytest.skip("plackup (libplack-perl) missing")
    return request.param


def app_args(directory: Path, kind: str, wsgi_source: str, psgi_source: str) -> list[str]:
    if kind == "wsgi":
        app = directory / "app.py"
        app.write_text(wsgi_source)
        return ["--wsgi-file", str(app)]
    app = directory / "app.psgi"
    app.write_text(psgi_source)
    return ["--psgi", str(app)]


@pytest.fixture
def conformance_app() -> Path:
    return CONFORMANCE_APP


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PYMASTER_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))

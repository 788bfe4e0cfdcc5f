"""Loading the ASGI app: `--asgi MODULE:CALLABLE`, with --pythonpath and --home as for WSGI."""

from __future__ import annotations

import inspect
import sys

from pymaster.apps import wsgi
from pymaster.apps.wsgi import AppLoadError
from pymaster.config import Config

__all__ = ["AppLoadError", "load_app"]


def load_app(cfg: Config):
    """Import and return the ASGI 3.0 callable; AppLoadError with the cause on failure."""
    target = cfg.asgi
    if not target:
        raise AppLoadError("no ASGI app configured: use --asgi MODULE:CALLABLE")
    if cfg.home:
        wsgi._use_virtualenv(cfg.home)
    for path in reversed(cfg.pythonpath):
        if path not in sys.path:
            sys.path.insert(0, path)
    app = wsgi.load_target(target, cfg.callable or "application", False)
    if inspect.isclass(app):
        raise AppLoadError(
            f"'{target}' is a class (an ASGI 2 app?): --asgi wants an ASGI 3.0 callable "
            "`async def app(scope, receive, send)`"
        )
    return app

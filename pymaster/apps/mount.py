"""Several WSGI apps in one worker, chosen per request by mountpoint (uWSGI's `--mount`).

`--mount /prefix=TARGET` loads TARGET (a `.py`/`.wsgi` file, or `module[:callable]`) under
`/prefix`. Per request, as uWSGI 2.0 does (core/protocol.c, core/utils.c uwsgi_get_app_id):
with `--manage-script-name` the longest mountpoint that prefixes PATH_INFO on a `/` boundary
(a trailing `/` of the mountpoint ignored) becomes SCRIPT_NAME and is cut from PATH_INFO;
then the app whose mountpoint equals `UWSGI_APPID` (if sent) or SCRIPT_NAME answers; else the
default app (the `--wsgi-file`/`--module` app, or the first mount); with `--no-default-app`
there is none, and the request gets a 500 with uWSGI's log line.

The chosen app is left in `environ[APP]` as `(id, requests)`: its index in load order (the
`--wsgi-file`/`--module` app first, then the mounts) and how many requests it has had in this
process, or `(-1, -1)` when none answers, for the request log's `app: ID|req: N/...`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pymaster.log import log

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
APP = "pymaster.app"  # environ key: (app id, that app's requests), read by the request log
NO_APP = "--- no python application found, check your startup logs for errors ---"


def split_mount(spec: str) -> tuple[str, str]:
    """`/prefix=TARGET` -> ('/prefix', 'TARGET'); ValueError naming what was expected."""
    mountpoint, sep, target = spec.partition("=")
    if not sep or not target:
        raise ValueError(f"invalid --mount '{spec}': expected MOUNTPOINT=APP (e.g. /app=app.py)")
    return mountpoint, target


class Mounts:
    """A WSGI callable dispatching to the apps by mountpoint."""

    def __init__(
        self,
        apps: list[tuple[str, WsgiApp]],
        manage_script_name: bool,
        default_app: bool,
    ):
        self.apps = apps
        self.by_mountpoint: dict[str, int] = {}  # mountpoint -> app id (the first one loaded)
        for number, (mountpoint, _) in enumerate(apps):
            self.by_mountpoint.setdefault(mountpoint, number)
        self.requests = [0] * len(apps)  # per app, in this process (uWSGI's app requests)
        self.manage_script_name = manage_script_name
        self.default = 0 if apps and default_app else None
        # longest first, trailing '/' ignored for matching (not in SCRIPT_NAME's value)
        self.prefixes = sorted(
            ((mp.rstrip("/"), mp) for mp, _ in apps if mp.rstrip("/")),
            key=lambda pair: len(pair[0]),
            reverse=True,
        )

    def rewrite(self, environ: dict[str, Any]) -> None:
        """`--manage-script-name`: SCRIPT_NAME from the longest `/`-bounded prefix."""
        path = environ.get("PATH_INFO", "")
        for bare, mountpoint in self.prefixes:
            if path.startswith(bare) and (len(path) == len(bare) or path[len(bare)] == "/"):
                environ["SCRIPT_NAME"] = mountpoint
                environ["PATH_INFO"] = path[len(mountpoint) :]
                return

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if self.manage_script_name:
            self.rewrite(environ)
        return self.dispatch(environ, start_response)

    def dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        """The app for the (already rewritten) request; the static layer calls this after
        doing the rewrite itself, as uWSGI serves statics between the two."""
        key = environ.get("UWSGI_APPID") or environ.get("SCRIPT_NAME", "")
        number = self.by_mountpoint.get(key, self.default)
        if number is None:
            environ[APP] = (-1, -1)
            log(NO_APP)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"Internal Server Error"]
        self.requests[number] += 1
        environ[APP] = (number, self.requests[number])
        return self.apps[number][1](environ, start_response)

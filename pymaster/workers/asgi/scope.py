"""The ASGI connection scopes (`http` and `websocket`), exactly as the ASGI spec lays them
out, from an HTTP/1.1 request or from the vars of a uwsgi packet."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from pymaster.protocols import http

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

Address = tuple[str, int] | None


def sock_address(addr: object) -> Address:
    """(host, port) of a TCP peer or listener; None for a UNIX socket (as the spec allows)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


def from_request(
    req: http.Request,
    client: Address,
    server: Address,
    state: dict,
    websocket: bool,
) -> dict:
    """The scope of a request read from an HTTP socket."""
    target = req.target
    if target.startswith(("http://", "https://")):  # absolute-form: the path is what counts
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    raw, _, query = target.partition("?")
    scope: dict[str, Any] = {
        "type": "websocket" if websocket else "http",
        "asgi": ASGI_VERSION,
        "http_version": req.version,
        "scheme": "ws" if websocket else "http",
        "path": unquote(raw),
        "raw_path": raw.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in req.headers],
        "client": client,
        "server": server,
        "state": dict(state),
    }
    if websocket:
        scope["subprotocols"] = subprotocols(scope["headers"])
    else:
        scope["method"] = req.method
    return scope


def subprotocols(headers) -> list[str]:
    out: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            out += [p.strip() for p in value.decode("latin-1").split(",") if p.strip()]
    return out


def _utf8(value: str) -> str:
    """A uwsgi var is bytes (held as latin-1 text): the spec wants the UTF-8 characters."""
    return value.encode("latin-1").decode("utf-8", "replace")


def _port(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def from_uwsgi(env: dict[str, str], state: dict) -> dict:
    """The `http` scope of a request read from a uwsgi socket (as nginx's uwsgi_pass sends
    it): the path is SCRIPT_NAME + PATH_INFO (unless PATH_INFO already starts with it, as
    with modifier1 30), root_path is SCRIPT_NAME."""
    script = env.get("SCRIPT_NAME", "").rstrip("/")
    path_info = env.get("PATH_INFO", "")
    if script and not (path_info == script or path_info.startswith(script + "/")):
        path_info = script + path_info
    uri = env.get("REQUEST_URI", "")
    raw = uri.partition("?")[0] if uri else path_info
    headers = []
    for key, value in env.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-")
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if not value:
                continue
            name = key.lower().replace("_", "-")
        else:
            continue
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    https = env.get("HTTPS", "").lower() in ("on", "1") or env.get("UWSGI_SCHEME") == "https"
    protocol = env.get("SERVER_PROTOCOL", "HTTP/1.0")
    version = protocol.partition("/")[2] or "1.0"
    if version == "2.0":
        version = "2"
    remote = env.get("REMOTE_ADDR")
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": version,
        "method": env.get("REQUEST_METHOD", "GET"),
        "scheme": "https" if https else "http",
        "path": _utf8(path_info),
        "raw_path": raw.encode("latin-1"),
        "query_string": env.get("QUERY_STRING", "").encode("latin-1"),
        "root_path": _utf8(script),
        "headers": headers,
        "client": (remote, _port(env.get("REMOTE_PORT"))) if remote else None,
        "server": (env.get("SERVER_NAME", ""), _port(env.get("SERVER_PORT"))),
        "state": dict(state),
    }


def log_environ(req: http.Request, client: Address, server: Address) -> dict[str, str]:
    """The CGI-style variables the request log line reads (as the WSGI worker's environ)."""
    env = {
        "REQUEST_METHOD": req.method,
        "REQUEST_URI": req.target,
        "PATH_INFO": unquote(req.target.partition("?")[0], "latin-1"),
        "QUERY_STRING": req.target.partition("?")[2],
        "SERVER_PROTOCOL": f"HTTP/{req.version}",
        "REMOTE_ADDR": client[0] if client else "",
        "REMOTE_PORT": str(client[1]) if client else "",
        "SERVER_NAME": server[0] if server else "localhost",
        "SERVER_PORT": str(server[1]) if server else "",
    }
    for name, value in req.headers:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        env[key] = value.decode("latin-1")
    return env

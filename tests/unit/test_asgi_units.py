"""The ASGI worker's pure parts: scopes from HTTP requests and uwsgi vars, the lifespan
protocol driven by real small apps, status lines."""

from __future__ import annotations

import asyncio

import pytest

from pymaster.protocols import http
from pymaster.workers.asgi import scope as scopes
from pymaster.workers.asgi.cycle import status_line
from pymaster.workers.asgi.lifespan import Lifespan, LifespanFailed


def _request(raw: bytes) -> http.Request:
    (req,) = http.RequestParser().feed(raw)
    return req


def test_http_scope_from_a_request():
    req = _request(b"GET /a%2Fb/%E2%82%AC?x=%20 HTTP/1.0\r\nHost: h\r\nX-Y: Z\r\n\r\n")
    scope = scopes.from_request(req, ("10.0.0.1", 5), ("127.0.0.1", 80), {"k": 1}, False)
    assert scope["path"] == "/a/b/€" and scope["raw_path"] == b"/a%2Fb/%E2%82%AC"
    assert scope["query_string"] == b"x=%20" and scope["http_version"] == "1.0"
    assert scope["headers"] == [(b"host", b"h"), (b"x-y", b"Z")]
    assert scope["client"] == ("10.0.0.1", 5) and scope["server"] == ("127.0.0.1", 80)
    assert scope["state"] == {"k": 1}


def test_the_state_is_a_copy_per_scope():
    state = {"k": 1}
    req = _request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    scope = scopes.from_request(req, None, None, state, False)
    scope["state"]["k"] = 2
    assert state == {"k": 1}


def test_absolute_form_target_and_websocket_scope():
    req = _request(
        b"GET http://example.com/chat?room=1 HTTP/1.1\r\nHost: example.com\r\n"
        b"Sec-WebSocket-Protocol: a, b\r\n\r\n"
    )
    scope = scopes.from_request(req, None, None, {}, True)
    assert scope["type"] == "websocket" and scope["scheme"] == "ws"
    assert scope["path"] == "/chat" and scope["query_string"] == b"room=1"
    assert scope["subprotocols"] == ["a", "b"] and "method" not in scope


@pytest.mark.parametrize(
    "env, path, root",
    [
        ({"SCRIPT_NAME": "/app", "PATH_INFO": "/app/x"}, "/app/x", "/app"),
        ({"SCRIPT_NAME": "/app", "PATH_INFO": "/x"}, "/app/x", "/app"),
        ({"SCRIPT_NAME": "/app/", "PATH_INFO": "/application"}, "/app/application", "/app"),
        ({"PATH_INFO": "/caf\xc3\xa9"}, "/café", ""),
    ],
)
def test_uwsgi_scope_paths(env, path, root):
    scope = scopes.from_uwsgi(env, {})
    assert scope["path"] == path and scope["root_path"] == root


def test_uwsgi_scope_fields():
    env = {
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": "/p%20q?z=1",
        "PATH_INFO": "/p q",
        "QUERY_STRING": "z=1",
        "SERVER_PROTOCOL": "HTTP/2.0",
        "HTTPS": "on",
        "HTTP_X_FORWARDED_FOR": "1.2.3.4",
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "4000",
        "SERVER_NAME": "srv",
        "SERVER_PORT": "443",
    }
    scope = scopes.from_uwsgi(env, {})
    assert scope["method"] == "POST" and scope["scheme"] == "https"
    assert scope["http_version"] == "2" and scope["raw_path"] == b"/p%20q"
    assert (b"x-forwarded-for", b"1.2.3.4") in scope["headers"]
    assert (b"content-type", b"text/plain") in scope["headers"]
    assert not any(name == b"content-length" for name, _ in scope["headers"])
    assert scope["client"] == ("127.0.0.1", 4000) and scope["server"] == ("srv", 443)


def test_status_lines():
    assert status_line(200) == "200 OK"
    assert status_line(413) == "413 Content Too Large"
    assert status_line(418) == "418 I'm a Teapot"  # the stdlib's phrase
    assert status_line(599) == "599 Unknown"


async def _speaking(scope, receive, send):
    assert (await receive())["type"] == "lifespan.startup"
    scope["state"]["ready"] = True
    await send({"type": "lifespan.startup.complete"})
    assert (await receive())["type"] == "lifespan.shutdown"
    scope["state"]["stopped"] = True
    await send({"type": "lifespan.shutdown.complete"})


async def _failing(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


async def _mute(scope, receive, send):
    raise ValueError("only http here")


def _run(app, mode):
    state: dict = {}

    async def main():
        life = Lifespan(app, mode, state)
        await life.startup()
        await life.shutdown(5)
        return life

    return asyncio.run(main()), state


def test_lifespan_startup_and_shutdown_share_the_state():
    life, state = _run(_speaking, "auto")
    assert life.supported and state == {"ready": True, "stopped": True}


def test_lifespan_failure_is_raised_in_every_mode_but_off():
    for mode in ("auto", "on"):
        with pytest.raises(LifespanFailed, match="no database"):
            _run(_failing, mode)
    life, _ = _run(_failing, "off")
    assert not life.supported


def test_an_app_without_lifespan_runs_in_auto_and_fails_in_on():
    life, _ = _run(_mute, "auto")
    assert not life.supported
    with pytest.raises(LifespanFailed, match="ValueError: only http here"):
        _run(_mute, "on")

"""A raw ASGI 3.0 app for the ASGI worker tests (no framework): each path is one behaviour."""

import asyncio
import json
import os
import time

MARKS = os.environ.get("ASGI_TEST_MARKS", "")  # a directory the app leaves files in
_HELD: list = []


def _mark(name: str, text: str = "") -> None:
    if MARKS:
        with open(os.path.join(MARKS, name), "a") as fh:
            fh.write(text + "\n")


async def _lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if os.environ.get("ASGI_FAIL_STARTUP"):
                await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
                return
            scope["state"]["started_pid"] = os.getpid()
            scope["state"]["greeting"] = "hello from lifespan"
            await send({"type": "lifespan.startup.complete"})
        else:
            _mark("shutdown", str(os.getpid()))
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _websocket(scope, receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    if scope["path"] == "/ws/deny":
        await send({"type": "websocket.close"})
        return
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            _mark("ws-closed", str(message["code"]))
            return
        await send(
            {"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")}
        )


def _plain(scope):
    out = {}
    for key, value in scope.items():
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        elif key == "headers":
            value = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in value]
        out[key] = value
    return out


async def _respond(send, body: bytes, status: int = 200, ctype: bytes = b"text/plain"):
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]}
    )
    await send({"type": "http.response.body", "body": body})


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(scope, receive, send)
    if scope["type"] == "websocket":
        return await _websocket(scope, receive, send)
    path = scope["path"]
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if path == "/count":  # the body as it comes, never held whole
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        return await _respond(send, str(total).encode())
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        return await _respond(send, body)
    if path == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(int(query.get("n", "5"))):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return None
    if path == "/wait-disconnect":  # a long poll whose client leaves
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"waiting\n", "more_body": True})
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        _mark("disconnected", path)
        return None
    if path == "/slow":
        await asyncio.sleep(float(query.get("s", "1")))
        return await _respond(send, b"slow done %d" % os.getpid())
    if path == "/block":  # blocks the event loop: harakiri's business
        time.sleep(float(query.get("s", "10")))
        return await _respond(send, b"unblocked")
    if path == "/boom":
        raise RuntimeError("the app failed on purpose")
    if path == "/none":
        return None
    if path == "/grow":  # memory the worker keeps: --reload-on-rss recycles it
        _HELD.append(bytearray(int(query.get("mb", "64")) * 1024 * 1024))
        return await _respond(send, b"grown")
    if path == "/pid":
        return await _respond(send, str(os.getpid()).encode())
    return await _respond(send, json.dumps(_plain(scope)).encode(), ctype=b"application/json")

"""ASGI JSON endpoint for the benchmarks: a small document built and encoded per request
(json.dumps of a dict with a few fields taken from the scope), fixed Content-Length."""

import itertools
import json
import time

COUNTER = itertools.count(1)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps(
        {
            "message": "Hello, World!",
            "method": scope["method"],
            "path": scope["path"],
            "query": scope["query_string"].decode("latin-1"),
            "request": next(COUNTER),
            "time": time.time(),
            "tags": ["asgi", "json", "bench"],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

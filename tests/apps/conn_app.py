"""The app for tests/integration/test_connections.py: bodies read (or not) in several ways."""

import os
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    inp = environ["wsgi.input"]
    extra = []
    if path == "/echo":  # reads CONTENT_LENGTH bytes, however many that is
        body = inp.read(int(environ.get("CONTENT_LENGTH") or 0))
    elif path == "/stream":  # reads to the end in small pieces, as wsgi.input_terminated allows
        parts = []
        while True:
            piece = inp.read(8192)
            if not piece:
                break
            parts.append(piece)
        body = b"".join(parts)
        assert inp.read(10) == b"" and inp.readline() == b""  # past the end: b""
        extra.append(("X-Content-Length", environ.get("CONTENT_LENGTH", "-")))
    elif path == "/when":  # when was the app called (post-buffering calls it after the body)
        called = time.time()
        body = inp.read(int(environ.get("CONTENT_LENGTH") or 0))
        extra.append(("X-Called", repr(called)))
    elif path == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 0.05))
        body = b"slow"
    else:  # never reads the body
        body = b"hello %d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Len", str(len(body)))] + extra)
    return [body]

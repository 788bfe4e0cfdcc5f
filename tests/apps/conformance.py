"""WSGI apps for the conformance tests; each is wrapped in wsgiref.validate by `application`."""

import os
import sys
import time
from wsgiref.validate import validator


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello ", str(os.getpid()).encode()]


def _echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("X-Len", str(len(body)))])
    return [body]


def _lines(environ, start_response):
    inp = environ["wsgi.input"]
    first = inp.readline()
    rest = inp.readlines()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"first=" + first, b"rest=%d" % len(rest)]


def _write(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written-")
    return [b"returned"]


class _ClosingIter:
    closed_marker = "/tmp/pymaster-close-marker"

    def __init__(self, path):
        self.path = path

    def __iter__(self):
        yield b"part1-"
        yield b"part2"

    def close(self):
        with open(self.path, "w") as fh:
            fh.write("closed")


def _closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _ClosingIter(environ["QUERY_STRING"].split("=", 1)[1])


def _file(environ, start_response):
    path = environ["QUERY_STRING"].split("=", 1)[1]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)


def _exc_info(environ, start_response):
    try:
        raise ValueError("boom before the head")
    except ValueError:
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"recovered"]


def _raise(environ, start_response):
    raise RuntimeError("the app failed on purpose")


def _nocontent(environ, start_response):
    start_response("204 No Content", [])
    return []


def _notmodified(environ, start_response):
    start_response("304 Not Modified", [("ETag", '"x"')])
    return []


def _environ(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
            "CONTENT_TYPE", "HTTP_X_CUSTOM", "wsgi.url_scheme", "REMOTE_ADDR")
    return ["\n".join(f"{k}={environ.get(k, '')}" for k in keys).encode("latin-1")]


def _sleep(environ, start_response):
    seconds = float(environ["QUERY_STRING"].split("=", 1)[1] or "1")
    time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept %s" % str(seconds).encode()]


ROUTES = {"/hello": _hello, "/echo": _echo, "/lines": _lines, "/write": _write,
          "/closing": _closing, "/file": _file, "/exc_info": _exc_info, "/raise": _raise,
          "/204": _nocontent, "/304": _notmodified, "/environ": _environ, "/sleep": _sleep}


def _badheader(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
    return [b"never"]


def _router(environ, start_response):
    app = ROUTES.get(environ["PATH_INFO"])
    if app is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    return validator(app)(environ, start_response)


def application(environ, start_response):
    if environ["PATH_INFO"] == "/badheader":     # outside the validator: it would assert first
        return _badheader(environ, start_response)
    if environ["PATH_INFO"] == "/sendfile":      # unwrapped, so the server sees its FileWrapper
        return _file(environ, start_response)
    return _router(environ, start_response)

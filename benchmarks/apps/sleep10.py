"""WSGI app that waits 10 ms (a database or API call) and answers: the --threads rows'
second app, where threads keep a worker busy while a request waits."""

import time

BODY = b"Hello after 10 ms!\n"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    time.sleep(0.010)
    start_response("200 OK", HEADERS)
    return [BODY]

"""The Python WSGI worker: its epoll loop, the uwsgi and HTTP/1.1 connection handling, and
the request log line."""

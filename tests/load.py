"""A bounded concurrent load generator for lifecycle tests: threads, real sockets, loopback.

Each thread sends one uwsgi (or HTTP/1.0-style) request per connection, as nginx does, and
records every failure with its reason. Bounded by a request budget and a deadline.
"""

from __future__ import annotations

import threading
import time

from tests.client import uwsgi_request, uwsgi_vars


def one_uwsgi(port: int, path: str = "/", timeout: float = 15.0) -> bytes:
    data = uwsgi_request(port, uwsgi_vars(path, port=port), timeout=timeout)
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"bad response {data[:80]!r}")
    return data


class Load:
    """`with Load(port) as load: ...` then `load.ok`, `load.failures`."""

    def __init__(self, port: int, threads: int = 8, budget: int = 20000, seconds: float = 60.0,
                 path: str = "/", request=one_uwsgi):
        self.port = port
        self.threads = threads
        self.budget = budget
        self.deadline = time.monotonic() + seconds
        self.path = path
        self.request = request
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _take(self) -> bool:
        with self._lock:
            if self.budget <= 0:
                return False
            self.budget -= 1
            return True

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self.deadline and self._take():
            try:
                data = self.request(self.port, self.path)
                with self._lock:
                    self.ok += 1
                    self.bodies.add(data.rpartition(b"\r\n\r\n")[2])
            except Exception as exc:  # recorded, the assertion comes later
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")

    def wait_ok(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.ok
        while self.ok - start < n and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self):
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._workers:
            t.join(30)

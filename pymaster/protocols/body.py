"""A request body read on demand: the `wsgi.input` stream both protocols hand to the app.

`InputStream` keeps what arrived in a buffer and asks its subclass for more (`_more()`)
only when the app reads past it, so nothing is read before the app wants it. PEP 3333
semantics: `read(n)`, `read()`, `readline(n)`, `readlines()`, iteration; at the end of the
body every read returns b"". `close()` drops the buffer: the request that owns the stream
calls it when it ends, whatever way it ends.
"""

from __future__ import annotations


class BodyError(OSError):
    """The body could not be read (client gone, timeout, bad framing, over the limit).

    `status` is the answer owed to the client when the app has not answered yet."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class InputStream:
    """Buffer + `_more()`: subclasses append to `self._buf` and return False at the end."""

    def __init__(self, already: bytes = b""):
        self._buf = bytearray(already)
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes arrived and not read yet."""
        return len(self._buf)

    def _more(self, want: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _take(self, size: int) -> bytes:
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._more(1 << 20):
                pass
            size = len(self._buf)
        while len(self._buf) < size and self._more(size - len(self._buf)):
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        start = 0
        while True:
            pos = self._buf.find(b"\n", start)
            if pos >= 0 and (limit is None or pos < limit):
                return self._take(pos + 1)
            if limit is not None and limit <= len(self._buf):
                return self._take(limit)
            start = len(self._buf)
            if not self._more(65536):
                return self._take(len(self._buf))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        self.closed = True
        self._buf = bytearray()

"""A small epoll wrapper for workers: listening sockets are registered with EPOLLEXCLUSIVE so
that one new connection wakes one idle worker, not all of them (no thundering herd)."""

from __future__ import annotations

import select

EXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 1 << 28)


class Poller:
    def __init__(self):
        self.ep = select.epoll()
        self.items: dict[int, tuple[object, object]] = {}  # fd -> (fileobj, data)

    def register(self, fileobj, data, exclusive: bool = False) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        mask = select.EPOLLIN | (EXCLUSIVE if exclusive else 0)
        try:
            self.ep.register(fd, mask)
        except OSError:  # kernels before 4.5: plain registration
            self.ep.register(fd, select.EPOLLIN)
        self.items[fd] = (fileobj, data)

    def unregister(self, fileobj) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if self.items.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def poll(self, timeout: float) -> list[tuple[object, object]]:
        try:
            events = self.ep.poll(timeout)
        except InterruptedError:
            return []
        items = self.items
        return [items[fd] for fd, _ in events if fd in items]

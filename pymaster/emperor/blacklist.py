"""uWSGI's blacklist: a vassal that dies (or is stopped) before it was ever ready waits longer
before each new start.

The first death lets it start again at the next scan; each further one adds
`--emperor-throttle` ms to the wait, up to `--emperor-max-throttle` (past it the wait is
halved, as uWSGI does). At the third death uWSGI's `unloyal bad behaving vassal found` line is
logged. A vassal that becomes ready leaves the blacklist; SIGURG empties it.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_WAIT_US = 1000  # uWSGI compares the first level (--emperor-throttle) as microseconds


@dataclass
class Item:
    name: str
    first_attempt: float
    last_attempt: float
    throttle_us: int
    attempt: int = 0

    def as_stats(self) -> dict:
        return {
            "id": self.name,
            "throttle_level": self.throttle_us // 1000,
            "attempt": self.attempt,
            "first_attempt": int(self.first_attempt),
            "last_attempt": int(self.last_attempt),
        }


class Blacklist:
    def __init__(self, throttle_ms: int, max_throttle_ms: int, enabled: bool = True):
        self.step_us = throttle_ms * 1000
        self.max_us = max_throttle_ms * 1000
        self.enabled = enabled
        self.items: dict[str, Item] = {}

    def add(self, name: str, now: float) -> list[str]:
        """A death before readiness; the lines to log."""
        if not self.enabled:
            return []
        item = self.items.get(name)
        if item is None:
            self.items[name] = Item(name, now, now, FIRST_WAIT_US)
            return []
        lines = []
        item.last_attempt = now
        if item.throttle_us < self.max_us:
            item.throttle_us += self.step_us
        else:
            lines.append(f"[emperor] maximum throttle level for vassal {name} reached !!!")
            item.throttle_us //= 2
        item.attempt += 1
        if item.attempt == 2:
            lines.append(f"[emperor] unloyal bad behaving vassal found: {name} throttling it...")
        return lines

    def allows(self, name: str, now: float) -> bool:
        item = self.items.get(name)
        return item is None or now >= item.last_attempt + item.throttle_us / 1e6

    def remove(self, name: str) -> None:
        self.items.pop(name, None)

    def clear(self) -> None:
        self.items.clear()

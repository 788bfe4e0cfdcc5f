"""Chain reload: workers are replaced one at a time, the successor first.

For each old worker a successor is spawned in a new slot; only when the successor is
accepting (its scoreboard slot says idle or busy, or it served and recycled itself) is the
old worker asked to finish, and the next one is chosen. Whatever goes wrong with a successor
(it cannot load the app, it exits before accepting, no slot is free, a scale-down removes
it) aborts the chain: the successor leaves and the old workers keep serving.

`ChainReload` owns that state and decides; the arbiter acts for it through the callables
it passes (spawn a worker, stop one and drop its slot) and drops the chain once `done`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pymaster.log import log_verbose
from pymaster.workers.contract import EXIT_FAILED_APP

if TYPE_CHECKING:
    from pymaster.master.arbiter import Child

Retire = Callable[["Child", bool], None]  # stop a worker and drop its slot; True: log it


class ChainReload:
    """One chain reload in progress: the victims still to replace and the current pair."""

    def __init__(self, victims: list[Child], retire: Retire):
        self.queue = list(victims)  # old workers not replaced yet, in order
        self.old: Child | None = None  # the worker being replaced ...
        self.new: Child | None = None  # ... and its successor
        self.served = False  # the successor recycled itself after serving: it accepted
        self.done = False  # complete or aborted
        self.retire = retire

    @classmethod
    def start(cls, workers: list[Child], retire: Retire) -> ChainReload:
        """A chain over the running `workers`."""
        log_verbose("chain reload starting...")
        return cls([c for c in workers if c.pid], retire)

    @property
    def pair(self) -> tuple[Child, ...]:
        """The worker being replaced and its successor, when a replacement is under way."""
        return tuple(c for c in (self.new, self.old) if c is not None)

    def step(
        self,
        accepting: Callable[[Child], bool],
        new_slot: Callable[[], Child | None],
        spawn: Callable[[Child], None],
    ) -> None:
        """Advance: retire the old worker once its successor accepts, then start the next.

        `new_slot` adds a worker slot (None when the scoreboard is full), `spawn` forks it.
        """
        if self.new is not None:
            if not (self.served or accepting(self.new)):
                return
            self._successor_accepts()
        if not self.queue:
            self.done = True
            log_verbose("chain reloading complete")
            return
        old = self.queue.pop(0)
        if not old.pid or old.retiring:  # died, or removed since the chain started
            return
        new = new_slot()
        if new is None:
            self.abort("no free scoreboard slot for a successor")
            return
        log_verbose(f"chain next victim is {old.title}")
        self.old, self.new = old, new
        spawn(new)

    def _successor_accepts(self) -> None:
        assert self.new is not None and self.old is not None
        log_verbose(f"chain: {self.new.title} (pid: {self.new.pid}) is accepting")
        self.retire(self.old, True)
        self.old = self.new = None
        self.served = False

    def on_exit(self, child: Child, code: int | None, cursed: bool) -> bool:
        """A child exited while the master runs. True when it was the successor and the
        chain is aborted for it: its slot is gone, it must not be respawned."""
        if child is not self.new:
            return False
        if code == EXIT_FAILED_APP:
            self.abort(f"the new {child.title} failed to load the app")
            return True
        if code == 0 and not cursed:
            self.served = True  # it served and recycled itself: it accepted
            return False
        self.abort(f"the new {child.title} exited before accepting")
        return True

    def on_scale_down(self, child: Child) -> None:
        """`child` is being removed (SIGTTOU, fifo `-`): if it is one of the pair, stop."""
        if child is self.old:
            self.new = None  # its successor simply stays as a worker
        elif child is not self.new:
            return
        self.abort(f"{child.title} was removed by a scale-down")

    def abort(self, why: str) -> None:
        """Stop the chain; a successor still around leaves like a scaled-down worker."""
        log_verbose(f"chain reload aborted: {why}; the old workers keep serving")
        if self.new is not None:
            self.retire(self.new, False)
        self.queue.clear()
        self.old = self.new = None
        self.served = False
        self.done = True

"""Adaptive worker count (uWSGI's cheaper): spare, busyness, backlog and manual algorithms.

`--cheaper N` is the floor, `--processes` the ceiling, `--cheaper-initial` the start. Each
tick the algorithm reads the scoreboard and returns +n (wake up to n cheaped slots) or -1
(cheap the idle worker with the highest number). Cheaped slots keep their number.

Zero values follow uWSGI 2.0: `--cheaper 0` disables the cheaper, `--cheaper-initial 0`
starts `--cheaper` workers; `--cheaper-step 0` (acts as 1 in uWSGI's spawn loops),
`--cheaper-busyness-max 0` and `--cheaper-busyness-min 0` (their defaults) are mapped by the
option table (`zero=`) at parse time; `--cheaper-overload 0` is honoured (uWSGI divides by it
in spare and busyness; see the algorithms for what it does to each here).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from pymaster.log import log
from pymaster.workers import scoreboard as sb

if TYPE_CHECKING:
    from pymaster.config import Config
    from pymaster.master.arbiter import Arbiter, Child

BUSYNESS_MULTIPLIER = 10  # uWSGI's --cheaper-busyness-multiplier default


class Cheaper:
    def __init__(self, cfg: Config):
        self.enabled = cfg.cheaper > 0
        self.minimum = cfg.cheaper
        self.maximum = max(1, cfg.processes)
        # unset or 0: start with --cheaper workers (uWSGI core/init.c sanitize_args)
        initial = cfg.cheaper_initial if cfg.cheaper_initial else self.minimum
        self.initial = (
            min(max(initial, self.minimum), self.maximum) if self.enabled else self.maximum
        )
        self.step_size = cfg.cheaper_step  # never 0: the table maps 0 to 1, as uWSGI acts
        self.overload = cfg.cheaper_overload
        self.algo = cfg.cheaper_algo if self.enabled else "none"
        self.busy_max = cfg.cheaper_busyness_max  # 0 -> 50 and 0 -> 25 by the table
        self.busy_min = cfg.cheaper_busyness_min
        self.overload_cycles = 0
        self.idle_cycles = 0
        self.last_running: dict[int, float] = {}
        self.last_sample = 0.0
        self.algorithms: dict[str, Callable[[Arbiter, list[Child], float], int]] = {
            "spare": self._spare,
            "busyness": self._busyness,
            "backlog": self._backlog,
        }

    def validate(self) -> str | None:
        if self.enabled and self.minimum >= self.maximum:
            return "invalid cheaper value: must be lower than processes"
        return None

    def step(self, arbiter: Arbiter, now: float) -> None:
        algorithm = self.algorithms.get(self.algo)
        if algorithm is None:  # none, manual
            return
        live = [c for c in arbiter.workers() if c.pid]
        if not live:
            return
        decision = algorithm(arbiter, live, now)
        if decision > 0:
            self.wake(arbiter, decision)
        elif decision < 0 and len(live) > self.minimum:
            self.cheap_one(arbiter, live)

    # -- algorithms -----------------------------------------------------------------------
    def _spare(self, arbiter: Arbiter, live: list[Child], now: float) -> int:
        """Spawn after more than `overload` ticks with every worker busy; cheap one every
        `overload` ticks with two or more idle (with 0: every such tick, where uWSGI's
        `idle_count % cheaper_overload` divides by zero)."""
        states = [arbiter.scoreboard.slot(c.number - 1).read()["state"] for c in live]
        idle = sum(1 for s in states if s == sb.IDLE)
        if idle == 0:
            self.idle_cycles = 0
            self.overload_cycles += 1
            if self.overload_cycles > self.overload:
                self.overload_cycles = 0
                return self.step_size
            return 0
        self.overload_cycles = 0
        if idle == 1:
            self.idle_cycles = 0
            return 0
        self.idle_cycles += 1
        if self.idle_cycles >= self.overload:
            self.idle_cycles = 0
            return -1
        return 0

    def _backlog(self, arbiter: Arbiter, live: list[Child], now: float) -> int:
        """Spawn while more than `overload` connections wait; cheap one after `overload`
        ticks in a row with none waiting. uWSGI cheaps only below `overload`: with 0, never."""
        queue = arbiter.system.listen_queue(arbiter.app_listeners())
        if queue > self.overload:
            return self.step_size
        if queue == 0 and self.overload > 0:
            self.idle_cycles += 1
            if self.idle_cycles >= self.overload:
                self.idle_cycles = 0
                return -1
        else:
            self.idle_cycles = 0
        return 0

    def _busyness(self, arbiter: Arbiter, live: list[Child], now: float) -> int:
        """Every `overload` seconds (every tick with 0), the average share of time the
        workers spent in requests: above busy_max spawn, below busy_min for
        BUSYNESS_MULTIPLIER * overload seconds cheap one."""
        if now - self.last_sample < self.overload:
            return 0
        elapsed = now - self.last_sample if self.last_sample else self.overload
        self.last_sample = now
        running = {
            c.pid: arbiter.scoreboard.slot(c.number - 1).read()["running_time"] for c in live
        }
        before = {pid: self.last_running.get(pid, spent) for pid, spent in running.items()}
        self.last_running.update(running)
        if elapsed <= 0:  # first sample with --cheaper-overload 0: nothing to compare yet
            return 0
        busy = [100.0 * (running[pid] - before[pid]) / elapsed for pid in running]
        average = sum(busy) / len(busy)
        if average > self.busy_max:
            self.idle_cycles = 0
            return self.step_size
        if average < self.busy_min:
            self.idle_cycles += 1
            if self.idle_cycles * self.overload >= BUSYNESS_MULTIPLIER * self.overload:
                self.idle_cycles = 0
                return -1
        else:
            self.idle_cycles = 0
        return 0

    # -- actions --------------------------------------------------------------------------
    def wake(self, arbiter: Arbiter, n: int) -> None:
        for child in arbiter.workers():
            if n <= 0:
                return
            if child.cheaped and not child.pid:
                arbiter.spawn(child)
                n -= 1

    def cheap_one(self, arbiter: Arbiter, live: list[Child]) -> None:
        for child in sorted(live, key=lambda c: -c.number):
            info = arbiter.scoreboard.slot(child.number - 1).read()
            if info["state"] == sb.IDLE:
                child.cheaped = True
                arbiter.curse(child, signal.SIGHUP)
                return

    def manual(self, arbiter: Arbiter, delta: int) -> None:
        """fifo + / -: one more or one fewer running worker within the bounds."""
        live = [c for c in arbiter.workers() if c.pid]
        if delta > 0:
            if len(live) >= self.maximum:
                log(f"cheaper: already at the maximum of {self.maximum} workers")
                return
            self.wake(arbiter, 1)
        elif len(live) > max(1, self.minimum):
            self.cheap_one(arbiter, live)

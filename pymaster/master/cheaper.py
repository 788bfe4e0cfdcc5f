"""Adaptive worker count (uWSGI's cheaper): spare, busyness, backlog and manual algorithms.

`--cheaper N` is the floor, `--processes` the ceiling, `--cheaper-initial` the start. Each
tick the algorithm reads the scoreboard and returns +n (wake up to n cheaped slots) or -1
(cheap the idle worker with the highest number). Cheaped slots keep their number.
"""

from __future__ import annotations

import signal

from pymaster.log import log
from pymaster.master import control
from pymaster.workers import scoreboard as sb


class Cheaper:
    def __init__(self, cfg):
        self.cfg = cfg
        self.enabled = bool(getattr(cfg, "cheaper", 0))
        self.minimum = getattr(cfg, "cheaper", 0) or 0
        self.maximum = max(1, cfg.processes or 1)
        initial = getattr(cfg, "cheaper_initial", None) or self.minimum
        self.initial = (
            min(max(initial, self.minimum), self.maximum) if self.enabled else self.maximum
        )
        self.step_size = max(1, getattr(cfg, "cheaper_step", 1) or 1)
        self.overload = getattr(cfg, "cheaper_overload", 3) or 3
        self.algo = (getattr(cfg, "cheaper_algo", None) or "spare") if self.enabled else "none"
        self.busy_max = getattr(cfg, "cheaper_busyness_max", 50) or 50
        self.busy_min = getattr(cfg, "cheaper_busyness_min", 25) or 25
        self.overload_cycles = 0
        self.idle_cycles = 0
        self.last_running = {}
        self.last_sample = 0.0

    def validate(self) -> str | None:
        if self.enabled and self.minimum >= self.maximum:
            return "invalid cheaper value: must be lower than processes"
        return None

    def step(self, arbiter, now: float) -> None:
        if self.algo in ("none", "manual"):
            return
        live = [c for c in arbiter.workers() if c.pid]
        if not live:
            return
        decision = getattr(self, "_" + self.algo)(arbiter, live, now)
        if decision > 0:
            self.wake(arbiter, decision)
        elif decision < 0 and len(live) > self.minimum:
            self.cheap_one(arbiter, live)

    # -- algorithms -----------------------------------------------------------------------
    def _spare(self, arbiter, live, now) -> int:
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

    def _backlog(self, arbiter, live, now) -> int:
        queue = sum(
            q
            for _, q in control.listen_queue(
                [lst for lst in arbiter.listeners if lst.kind in ("uwsgi", "http")]
            )
        )
        if queue > self.overload:
            return self.step_size
        if queue == 0:
            self.idle_cycles += 1
            if self.idle_cycles >= self.overload:
                self.idle_cycles = 0
                return -1
        else:
            self.idle_cycles = 0
        return 0

    def _busyness(self, arbiter, live, now) -> int:
        if now - self.last_sample < self.overload:
            return 0
        elapsed = now - self.last_sample if self.last_sample else self.overload
        self.last_sample = now
        busy = []
        for c in live:
            running = arbiter.scoreboard.slot(c.number - 1).read()["running_time"]
            before = self.last_running.get(c.pid, running)
            self.last_running[c.pid] = running
            busy.append(100.0 * (running - before) / elapsed)
        average = sum(busy) / len(busy)
        if average > self.busy_max:
            self.idle_cycles = 0
            return self.step_size
        if average < self.busy_min:
            self.idle_cycles += 1
            if self.idle_cycles * self.overload >= 10 * self.overload:  # multiplier 10
                self.idle_cycles = 0
                return -1
        else:
            self.idle_cycles = 0
        return 0

    # -- actions --------------------------------------------------------------------------
    def wake(self, arbiter, n: int) -> None:
        for child in arbiter.workers():
            if n <= 0:
                return
            if child.cheaped and not child.pid:
                arbiter.spawn(child)
                n -= 1

    def cheap_one(self, arbiter, live) -> None:
        for child in sorted(live, key=lambda c: -c.number):
            info = arbiter.scoreboard.slot(child.number - 1).read()
            if info["state"] == sb.IDLE:
                child.cheaped = True
                arbiter.curse(child, signal.SIGHUP)
                return

    def manual(self, arbiter, delta: int) -> None:
        """fifo + / -: one more or one fewer running worker within the bounds."""
        live = [c for c in arbiter.workers() if c.pid]
        if delta > 0:
            if len(live) >= self.maximum:
                log(f"cheaper: already at the maximum of {self.maximum} workers")
                return
            self.wake(arbiter, 1)
        elif len(live) > max(1, self.minimum):
            self.cheap_one(arbiter, live)

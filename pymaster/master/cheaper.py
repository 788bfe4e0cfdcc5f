"""Adaptive worker count (uWSGI's cheaper): spare, busyness, backlog and manual algorithms.

`--cheaper N` is the floor, `--processes` the ceiling, `--cheaper-initial` the start. Each
tick the algorithm reads the scoreboard and returns +n (wake up to n cheaped slots) or -1
(cheap the idle worker with the highest number). Cheaped slots keep their number.

Zero values follow uWSGI 2.0: `--cheaper 0` disables the cheaper, `--cheaper-initial 0`
starts `--cheaper` workers; `--cheaper-step 0` (acts as 1 in uWSGI's spawn loops),
`--cheaper-busyness-max 0` and `--cheaper-busyness-min 0` (their defaults) are mapped by the
option table (`zero=`) at parse time; `--cheaper-overload 0` is honoured (uWSGI divides by it
in spare and busyness; see the algorithms for what it does to each here).

`--cheaper-algo busyness` is uWSGI's plugins/cheaper_busyness (see `Busyness`); its
`cheaper-busyness-*` options map 0 to their defaults as the plugin's init does.
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
        self.busyness = Busyness(cfg, self)
        self.algorithms: dict[str, Callable[[Arbiter, list[Child], float], int]] = {
            "spare": self._spare,
            "busyness": self.busyness.decide,
            "backlog": self._backlog,
        }

    def validate(self) -> str | None:
        if self.enabled and self.minimum >= self.maximum:
            return "invalid cheaper value: must be lower than processes"
        return None

    def start(self, now: float) -> None:
        """The master is up: the busyness algorithm logs its settings, starts its timers."""
        if self.algo == "busyness":
            self.busyness.start(now)

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


class Busyness:
    """uWSGI's busyness algorithm (plugins/cheaper_busyness), called once per master tick.

    Every `overload` seconds it samples each running worker's share of the cycle spent in
    requests (capped at 100 %; a worker seen busy during the cycle that finished nothing
    counts 100 %). Above `busy_max` it spawns `--cheaper-step` workers; when that follows the
    last cheap within `multiplier` cycles the multiplier grows by the penalty, otherwise it
    shrinks by one towards its initial value. Below `busy_min` it cheaps one worker once
    `next_cheap` has passed (`overload * multiplier` seconds after the last action,
    `overload * backlog-multiplier` while emergency workers run). Between the two, three
    cycles in a row reset the cheap timer and fewer push it back by one cycle. On every tick
    more than `backlog-alert` queued connections, or a non-empty queue for `backlog-nonzero`
    seconds, spawn `backlog-step` emergency workers.

    `--cheaper-overload 0` (uWSGI divides by it): a sample on every tick, the percentages
    taken over the time since the previous sample; the cheap timer is 0 seconds (cheap as
    soon as the workers are idle) and no respawn counts as too fast.
    """

    def __init__(self, cfg: Config, cheaper: Cheaper):
        self.cheaper = cheaper
        self.busy_max = cfg.cheaper_busyness_max
        self.busy_min = cfg.cheaper_busyness_min
        self.min_multi = cfg.cheaper_busyness_multiplier  # 0 -> 10 by the table
        self.multi = self.min_multi
        self.penalty = cfg.cheaper_busyness_penalty
        self.verbose = cfg.cheaper_busyness_verbose
        self.backlog_alert = cfg.cheaper_busyness_backlog_alert
        self.backlog_multi = cfg.cheaper_busyness_backlog_multiplier
        self.backlog_step = cfg.cheaper_busyness_backlog_step
        self.backlog_nonzero_alert = cfg.cheaper_busyness_backlog_nonzero
        self.started = False
        self.tcheck = 0.0  # time of the last sample
        self.next_cheap = 0.0  # no cheap before this
        self.last_cheaped: float | None = None
        self.last_action = 0  # 1 spawned, 2 cheaped
        self.tolerance = 0  # non-idle cycles in a row between min and max
        self.emergency = 0  # emergency workers running
        self.backlog_since: float | None = None  # the queue is non-empty since then
        self.last_running: dict[int, float] = {}  # pid -> running_time at the last sample
        self.was_busy: dict[int, int] = {}  # pid -> ticks seen busy in this cycle
        self.percent: dict[int, int] = {}  # worker number -> busyness at the last sample
        self.average = 0

    @property
    def overload(self) -> int:
        return self.cheaper.overload

    def say(self, msg: str) -> None:
        log(f"[busyness] {msg}")

    def verbose_say(self, msg: str) -> None:
        if self.verbose:
            self.say(msg)

    def start(self, now: float) -> None:
        if self.started:
            return
        self.started = True
        self.say(
            f"settings: min={self.busy_min}%, max={self.busy_max}%, overload={self.overload}, "
            f"multiplier={self.multi}, respawn penalty={self.penalty}"
        )
        self.say(
            f"backlog alert is set to {self.backlog_alert} request(s), step is {self.backlog_step}"
        )
        self.say(f"backlog non-zero alert is set to {self.backlog_nonzero_alert} second(s)")
        self.tcheck = now
        self.set_next_cheap(now)

    def set_next_cheap(self, now: float) -> None:
        if self.emergency > 0:
            seconds = self.overload * self.backlog_multi
            self.verbose_say(
                f"{self.emergency} emergency worker(s) running, "
                f"using {seconds} seconds cheaper timer"
            )
        else:
            seconds = self.overload * self.multi
        self.next_cheap = now + seconds

    def decrease_multi(self) -> None:
        if self.multi > self.min_multi:
            self.multi -= 1
            self.say(f"decreasing cheaper multiplier to {self.multi}")

    @staticmethod
    def free_slots(arbiter: Arbiter, limit: int) -> int:
        """Cheaped slots that could be woken, at most `limit` (and at least one looked at)."""
        free = 0
        for child in arbiter.workers():
            if child.cheaped and not child.pid:
                free += 1
                if free >= limit:
                    break
        return free

    def spawn_emergency(self, arbiter: Arbiter, backlog: int, now: float) -> int:
        self.multi = self.min_multi  # this may have been a short spike: cheap sooner
        self.last_action = 1
        woken = self.free_slots(arbiter, self.backlog_step)
        self.set_next_cheap(now)
        if woken > 0:
            self.emergency += woken
            self.say(
                f"{backlog} requests in listen queue, spawning {woken} emergency worker(s) "
                f"({self.emergency})!"
            )
        else:
            self.say(
                f"{backlog} requests in listen queue but we are already started maximum "
                f"number of workers ({self.cheaper.maximum})"
            )
        return woken

    def decide(self, arbiter: Arbiter, live: list[Child], now: float) -> int:
        self.start(now)
        active = [c for c in live if not c.cheaped]
        pids = {c.pid for c in active}
        for pid in list(self.was_busy):
            if pid not in pids:
                del self.was_busy[pid]
        infos = {c.pid: arbiter.scoreboard.slot(c.number - 1).read() for c in active}
        for pid, info in infos.items():
            self.was_busy[pid] = self.was_busy.get(pid, 0) + (info["state"] == sb.BUSY)
        backlog = arbiter.system.listen_queue(arbiter.app_listeners())
        room = len(active) < self.cheaper.maximum
        elapsed = now - self.tcheck
        if elapsed >= self.overload and (self.overload > 0 or elapsed > 0):
            self.tcheck = now
            return self.sample(arbiter, active, infos, backlog, room, elapsed, now)
        if backlog > self.backlog_alert and room:
            return self.spawn_emergency(arbiter, backlog, now)
        if backlog > 0:
            if self.backlog_since is None:
                self.verbose_say(f"backlog is starting to fill ({backlog})")
                self.backlog_since = now
            elif now - self.backlog_since >= self.backlog_nonzero_alert:
                self.say(
                    f"backlog was non-zero for {int(now - self.backlog_since)} second(s), "
                    "spawning new worker(s)"
                )
                self.backlog_since = now
                return self.spawn_emergency(arbiter, backlog, now)
        elif self.backlog_since is not None:
            self.verbose_say("backlog is now empty")
            self.backlog_since = None
        return 0

    def sample(
        self,
        arbiter: Arbiter,
        active: list[Child],
        infos: dict[int, dict],
        backlog: int,
        room: bool,
        elapsed: float,
        now: float,
    ) -> int:
        cycle = self.overload if self.overload > 0 else elapsed
        running = {  # a slot its new worker has not claimed yet holds the old one's time
            pid: info["running_time"] if info["pid"] == pid else 0.0 for pid, info in infos.items()
        }
        o = self.overload
        total = 0
        self.percent = {}
        for child in active:
            spent = running[child.pid]
            delta = spent - self.last_running.get(child.pid, 0.0)  # a new worker starts at 0
            percent = int(delta * 100 / cycle)
            if percent > 100:
                percent = 100
            elif delta == 0 and self.was_busy.get(child.pid, 0) > 0:
                self.verbose_say(
                    f"worker {child.number} was busy {self.was_busy[child.pid]} time(s) in last "
                    "cycle but no request was completed during this time, marking as 100% busy"
                )
                percent = 100
            self.was_busy[child.pid] = 0
            total += percent
            self.percent[child.number] = percent
            if len(active) > 1:
                self.verbose_say(f"worker nr {child.number} {o}s average busyness is at {percent}%")
        self.last_running = running
        average = total // len(active) if active else 0
        self.average = average
        self.verbose_say(f"{o}s average busyness of {len(active)} worker(s) is at {average}%")

        if average > self.busy_max:
            self.tolerance = 0
            woken = self.free_slots(arbiter, self.cheaper.step_size)
            if woken > 0:
                self.last_action = 1
                if self.too_fast(now):
                    self.multi += self.penalty
                    self.say(
                        f"worker(s) respawned to fast, increasing cheaper multiplier to "
                        f"{self.multi} (+{self.penalty})"
                    )
                else:
                    self.decrease_multi()
                self.set_next_cheap(now)
                self.say(
                    f"{o}s average busyness is at {average}%, will spawn {woken} new worker(s)"
                )
            else:
                self.say(
                    f"{o}s average busyness is at {average}% but we already started maximum "
                    f"number of workers available with current limits ({len(active)})"
                )
            return woken
        if backlog > self.backlog_alert and room:
            return self.spawn_emergency(arbiter, backlog, now)
        if average < self.busy_min:
            if len(active) == 1:
                return 0
            self.tolerance = 0
            if len(active) > self.cheaper.minimum:
                if now >= self.next_cheap:
                    if self.last_action == 2:
                        self.decrease_multi()
                    self.set_next_cheap(now)
                    self.say(
                        f"{o}s average busyness is at {average}%, cheap one of "
                        f"{len(active)} running workers"
                    )
                    self.last_cheaped = now
                    self.last_action = 2
                    if self.emergency > 0:
                        self.emergency -= 1
                    return -1
                self.verbose_say(
                    f"need to wait {int(self.next_cheap - now)} more second(s) to cheap worker"
                )
            return 0
        if len(active) == 1:
            return 0
        if self.emergency > 0:
            self.emergency -= 1
        self.tolerance += 1
        if self.tolerance >= 3:
            self.verbose_say(
                f"{o}s average busyness is at {average}%, {self.tolerance} non-idle cycle(s), "
                "resetting cheaper timer"
            )
            self.set_next_cheap(now)
        else:
            self.verbose_say(
                f"{o}s average busyness is at {average}%, {self.tolerance} non-idle cycle(s), "
                "adjusting cheaper timer"
            )
            self.next_cheap += o
        return 0

    def too_fast(self, now: float) -> bool:
        """Spawning again within `multiplier` whole cycles of the last cheap."""
        if self.last_cheaped is None or self.overload <= 0:
            return False
        return (now - self.last_cheaped) // self.overload <= self.multi

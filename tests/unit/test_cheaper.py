"""The cheaper's decisions (spare, busyness, backlog, manual) and its zero values, on an
arbiter with a fake operating system and a real scoreboard."""

import signal

import pytest

from pymaster.config import parse
from pymaster.master.cheaper import Cheaper
from pymaster.workers import scoreboard as sb
from tests.master_fakes import (
    accept,
    busy,
    exit_child,
    exited,
    lines,
    make_arbiter,
    tick,
    worker,
)


def cheaper(*options):
    return Cheaper(parse(list(options), {}))


def running(arbiter):
    return [c.number for c in arbiter.workers() if c.pid]


def cheaped(arbiter, system):
    """Workers the cheaper asked to go (SIGHUP, marked cheaped)."""
    return [
        c.number
        for c in arbiter.workers()
        if c.cheaped and signal.SIGHUP in system.signals_to(c.pid)
    ]


# -- options ---------------------------------------------------------------------------------
def test_disabled_by_default_and_with_cheaper_0():
    for c in (cheaper("-p", "4"), cheaper("-p", "4", "--cheaper", "0")):
        assert not c.enabled and c.algo == "none" and c.initial == 4 and c.validate() is None


@pytest.mark.parametrize("initial, expected", [(None, 1), ("0", 1), ("3", 3), ("9", 4)])
def test_initial_defaults_to_cheaper_and_is_clamped(initial, expected):
    extra = [] if initial is None else ["--cheaper-initial", initial]
    assert cheaper("-p", "4", "--cheaper", "1", *extra).initial == expected


def test_cheaper_must_be_below_processes():
    assert cheaper("-p", "2", "--cheaper", "2").validate() == (
        "invalid cheaper value: must be lower than processes"
    )


def test_zero_values_mean_what_uwsgi_means():
    zeros = (
        "--cheaper-step 0 --cheaper-overload 0 --cheaper-busyness-max 0 --cheaper-busyness-min 0"
    )
    c = cheaper("-p", "4", "--cheaper", "1", *zeros.split())
    assert c.step_size == 1  # uWSGI's spawn loop stops at the first slot
    assert c.overload == 0  # honoured
    assert (c.busy_max, c.busy_min) == (50, 25)  # the busyness plugin's defaults
    given = (
        "--cheaper-step 2 --cheaper-overload 5 --cheaper-busyness-max 80 --cheaper-busyness-min 5"
    )
    c = cheaper("-p", "4", "--cheaper", "1", *given.split())
    assert (c.step_size, c.overload, c.busy_max, c.busy_min) == (2, 5, 80, 5)


# -- spare -----------------------------------------------------------------------------------
def spare(*options, processes=4):
    arbiter, system = make_arbiter(
        "--cheaper", "1", "--cheaper-initial", "2", *options, processes=processes
    )
    for c in arbiter.workers():
        if c.pid:
            accept(arbiter, c)
    return arbiter, system


def test_spare_wakes_step_workers_after_overload_busy_ticks():
    arbiter, system = spare("--cheaper-overload", "2", "--cheaper-step", "2")
    for number in running(arbiter):
        busy(arbiter, worker(arbiter, number), system.now)
    tick(arbiter, system)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2]  # two busy ticks are not more than 2
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3, 4]


def test_spare_with_overload_0_wakes_on_the_first_busy_tick():
    arbiter, system = spare("--cheaper-overload", "0")
    for number in running(arbiter):
        busy(arbiter, worker(arbiter, number), system.now)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]  # cheaper-step 1


def test_spare_keeps_one_idle_worker(capfd):
    arbiter, system = spare("--cheaper-overload", "1")
    busy(arbiter, worker(arbiter, 1), system.now)
    for _ in range(5):
        tick(arbiter, system)
    assert running(arbiter) == [1, 2] and cheaped(arbiter, system) == []


def test_spare_cheaps_the_highest_idle_worker_every_overload_idle_ticks(capfd):
    arbiter, system = spare("--cheaper-overload", "3", "--cheaper-initial", "3")
    tick(arbiter, system)
    tick(arbiter, system)
    assert cheaped(arbiter, system) == []
    tick(arbiter, system)
    assert cheaped(arbiter, system) == [3]
    lines(capfd)
    exit_child(arbiter, system, worker(arbiter, 3), exited(0))
    assert lines(capfd) == [
        "worker 3 killed successfully (pid: 1002)",
        "pymaster worker 3 cheaped.",
    ]
    assert worker(arbiter, 3).pid == 0 and worker(arbiter, 3) in arbiter.slots  # slot kept
    for _ in range(3):
        tick(arbiter, system)
    assert cheaped(arbiter, system) == [2]
    exit_child(arbiter, system, worker(arbiter, 2), exited(0))
    for _ in range(10):  # one idle worker left: never below --cheaper
        tick(arbiter, system)
    assert running(arbiter) == [1]


def test_spare_with_overload_0_cheaps_on_every_idle_tick():
    arbiter, system = spare("--cheaper-overload", "0", "--cheaper-initial", "3")
    tick(arbiter, system)
    assert cheaped(arbiter, system) == [3]


def test_a_busy_worker_is_never_cheaped():
    arbiter, system = spare("--cheaper-overload", "1", "--cheaper-initial", "3")
    busy(arbiter, worker(arbiter, 3), system.now)
    tick(arbiter, system)
    assert cheaped(arbiter, system) == [2]


def test_cheaper_waits_while_paused_or_stopping():
    arbiter, system = spare("--cheaper-overload", "0", "--cheaper-initial", "3")
    arbiter.on_SIGTSTP()
    tick(arbiter, system)
    arbiter.on_SIGTSTP()
    arbiter.on_SIGTERM()
    tick(arbiter, system)
    assert cheaped(arbiter, system) == []


# -- backlog ---------------------------------------------------------------------------------
def test_backlog_wakes_when_more_than_overload_wait():
    arbiter, system = spare("--cheaper-algo", "backlog", "--cheaper-overload", "3")
    system.queued = 3
    tick(arbiter, system)
    assert running(arbiter) == [1, 2]
    system.queued = 4
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]


def test_backlog_cheaps_after_overload_ticks_with_an_empty_queue():
    arbiter, system = spare("--cheaper-algo", "backlog", "--cheaper-overload", "2")
    tick(arbiter, system)
    system.queued = 1  # not empty: the count starts again
    tick(arbiter, system)
    system.queued = 0
    tick(arbiter, system)
    assert cheaped(arbiter, system) == []
    tick(arbiter, system)
    assert cheaped(arbiter, system) == [2]


def test_backlog_with_overload_0_wakes_on_any_queue_and_never_cheaps():
    arbiter, system = spare("--cheaper-algo", "backlog", "--cheaper-overload", "0")
    for _ in range(5):
        tick(arbiter, system)
    assert cheaped(arbiter, system) == []  # uWSGI cheaps below the overload: never below 0
    system.queued = 1
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]


# -- busyness --------------------------------------------------------------------------------
def served(arbiter, number, seconds):
    """Worker `number` spent `seconds` in requests since the last sample."""
    slot = arbiter.scoreboard.slot(number - 1)
    slot.begin(0.0, b"GET /")
    slot.end(seconds, 0, False)


def busyness(*options):
    return spare("--cheaper-algo", "busyness", "--cheaper-overload", "3", *options)


def test_busyness_samples_every_overload_seconds_and_wakes_above_max():
    arbiter, system = busyness("--cheaper-busyness-max", "50")
    tick(arbiter, system)  # the first sample: nothing served yet, 0 %
    served(arbiter, 1, 3.0)  # 100 % ...
    served(arbiter, 2, 0.3)  # ... and 10 %: 55 % on average
    tick(arbiter, system)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2]  # only 2 s since the last sample
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]


def test_busyness_between_min_and_max_does_nothing():
    arbiter, system = busyness()
    for _ in range(40):
        served(arbiter, 1, 0.5)  # 50 % ...
        served(arbiter, 2, 0.3)  # ... and 30 %: 40 % on average
        tick(arbiter, system)
    assert running(arbiter) == [1, 2] and cheaped(arbiter, system) == []
    assert arbiter.cheaper.idle_cycles == 0


def test_busyness_cheaps_after_multiplier_samples_below_min():
    arbiter, system = busyness("--cheaper-busyness-min", "25")
    tick(arbiter, system)  # the first idle sample
    for _ in range(8 * 3):
        tick(arbiter, system)
    assert cheaped(arbiter, system) == []  # 9 idle samples: 27 s of the 30 needed
    for _ in range(3):
        tick(arbiter, system)
    assert cheaped(arbiter, system) == [2]


def test_busyness_0_thresholds_are_the_defaults():
    arbiter, system = busyness("--cheaper-busyness-max", "0", "--cheaper-busyness-min", "0")
    tick(arbiter, system)
    served(arbiter, 1, 1.2)  # 40 % and 0 %: 20 %, above a literal max 0, below min 25
    tick(arbiter, system)
    tick(arbiter, system)
    tick(arbiter, system)
    assert arbiter.cheaper.idle_cycles == 2 and running(arbiter) == [1, 2]


def test_busyness_with_overload_0_samples_every_tick_without_dividing_by_zero(capfd):
    arbiter, system = spare("--cheaper-algo", "busyness", "--cheaper-overload", "0")
    arbiter.cheaper.step(arbiter, system.now)  # the first sample, no elapsed time
    assert running(arbiter) == [1, 2]
    served(arbiter, 1, 1.0)
    served(arbiter, 2, 1.0)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]
    tick(arbiter, system)  # idle now: cheaped at once (multiplier * 0 seconds) ...
    assert cheaped(arbiter, system) == [2]  # ... the highest idle one: 3 is still starting
    assert "error" not in capfd.readouterr().err


# -- manual ----------------------------------------------------------------------------------
def test_manual_never_decides_and_follows_ttin_ttou(capfd):
    arbiter, system = spare("--cheaper-algo", "manual", "--cheaper-overload", "0")
    for _ in range(5):
        tick(arbiter, system)
    assert running(arbiter) == [1, 2] and cheaped(arbiter, system) == []
    arbiter.on_SIGTTIN()
    arbiter.on_SIGTTIN()
    assert running(arbiter) == [1, 2, 3, 4]
    lines(capfd)
    arbiter.on_SIGTTIN()
    assert lines(capfd) == ["cheaper: already at the maximum of 4 workers"]
    for n in (4, 3):
        accept(arbiter, worker(arbiter, n))
    arbiter.on_SIGTTOU()
    assert cheaped(arbiter, system) == [4]
    exit_child(arbiter, system, worker(arbiter, 4), exited(0))
    for _ in range(5):
        arbiter.on_SIGTTOU()
        for c in arbiter.workers():
            if c.cheaped and c.pid:
                exit_child(arbiter, system, c, exited(0))
    assert running(arbiter) == [1]  # never below max(1, --cheaper)


def test_fifo_plus_and_minus_are_the_manual_steps_for_every_algorithm():
    arbiter, system = spare("--cheaper-overload", "9")
    arbiter.cmd_add_worker()
    assert running(arbiter) == [1, 2, 3]
    accept(arbiter, worker(arbiter, 3))
    arbiter.cmd_remove_worker()
    assert cheaped(arbiter, system) == [3]
    assert arbiter.scoreboard.slot(2).read()["state"] == sb.IDLE

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


def sample(arbiter, system, seconds=3):
    """Let `seconds` pass one tick at a time (with overload 3: up to the next sample)."""
    for _ in range(seconds):
        tick(arbiter, system)


def state(arbiter):
    return arbiter.cheaper.busyness


def test_busyness_logs_its_settings_and_maps_0_to_the_defaults(capfd):
    zeros = [
        f"--cheaper-busyness-{name}=0"
        for name in (
            "max min multiplier penalty backlog-alert backlog-multiplier backlog-step "
            "backlog-nonzero"
        ).split()
    ]
    busyness(*zeros)
    assert [line for line in lines(capfd) if line.startswith("[busyness]")] == [
        "[busyness] settings: min=25%, max=50%, overload=3, multiplier=10, respawn penalty=2",
        "[busyness] backlog alert is set to 33 request(s), step is 1",
        "[busyness] backlog non-zero alert is set to 60 second(s)",
    ]
    given = (
        "--cheaper-busyness-multiplier 30 --cheaper-busyness-penalty 5 "
        "--cheaper-busyness-backlog-alert 16 --cheaper-busyness-backlog-multiplier 4 "
        "--cheaper-busyness-backlog-step 2 --cheaper-busyness-backlog-nonzero 7"
    )
    b = state(busyness(*given.split())[0])
    assert (b.multi, b.min_multi, b.penalty) == (30, 30, 5)
    assert (b.backlog_alert, b.backlog_multi, b.backlog_step, b.backlog_nonzero_alert) == (
        16,
        4,
        2,
        7,
    )
    assert "[busyness] backlog alert is set to 16 request(s), step is 2" in lines(capfd)


def test_busyness_samples_every_overload_seconds_and_wakes_above_max(capfd):
    arbiter, system = busyness("--cheaper-busyness-max", "50")
    served(arbiter, 1, 3.0)  # 100 % ...
    served(arbiter, 2, 0.3)  # ... and 10 %: 55 % on average
    tick(arbiter, system)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2]  # only 2 s since the start
    lines(capfd)
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3]
    assert state(arbiter).percent == {1: 100, 2: 10}
    assert "[busyness] 3s average busyness is at 55%, will spawn 1 new worker(s)" in lines(capfd)


def test_busyness_caps_at_100_and_counts_a_long_request_as_100(capfd):
    arbiter, system = busyness("--cheaper-busyness-verbose", "--cheaper-initial", "3")
    served(arbiter, 1, 7.5)  # more than the cycle: 100 %, not 250 %
    busy(arbiter, worker(arbiter, 2), system.now)  # busy all along, nothing finished
    lines(capfd)
    sample(arbiter, system)
    assert state(arbiter).percent == {1: 100, 2: 100, 3: 0}
    out = lines(capfd)
    assert (
        "[busyness] worker 2 was busy 3 time(s) in last cycle but no request was completed "
        "during this time, marking as 100% busy"
    ) in out
    assert "[busyness] worker nr 1 3s average busyness is at 100%" in out
    assert "[busyness] 3s average busyness of 3 worker(s) is at 66%" in out


def test_busyness_verbose_lines_only_with_verbose(capfd):
    arbiter, system = busyness()
    busy(arbiter, worker(arbiter, 2), system.now)
    lines(capfd)
    sample(arbiter, system, 6)
    assert not any(line.startswith("[busyness]") for line in lines(capfd))  # 50 %: no action


def test_busyness_cheaps_below_min_once_next_cheap_has_passed(capfd):
    arbiter, system = busyness("--cheaper-busyness-verbose")
    assert state(arbiter).next_cheap == system.now + 3 * 10  # overload * multiplier
    sample(arbiter, system, 27)  # nine idle samples
    assert cheaped(arbiter, system) == []
    assert "[busyness] need to wait 3 more second(s) to cheap worker" in lines(capfd)
    sample(arbiter, system)
    assert cheaped(arbiter, system) == [2]
    assert "[busyness] 3s average busyness is at 0%, cheap one of 2 running workers" in lines(capfd)


def test_busyness_penalises_a_respawn_too_fast_and_decreases_back(capfd):
    arbiter, system = busyness()
    sample(arbiter, system, 30)
    assert cheaped(arbiter, system) == [2]
    exit_child(arbiter, system, worker(arbiter, 2), exited(0))
    served(arbiter, 1, 3.0)
    lines(capfd)
    sample(arbiter, system)  # 3 s after the cheap: within 10 cycles
    assert running(arbiter) == [1, 2]
    accept(arbiter, worker(arbiter, 2))  # the new worker 2 starts
    assert lines(capfd)[0] == (
        "[busyness] worker(s) respawned to fast, increasing cheaper multiplier to 12 (+2)"
    )
    b = state(arbiter)
    assert b.next_cheap == system.now + 3 * 12
    for _ in range(20):  # 60 s between min and max
        served(arbiter, 1, 1.2)
        served(arbiter, 2, 1.2)
        sample(arbiter, system)
    served(arbiter, 1, 3.0)
    served(arbiter, 2, 3.0)
    lines(capfd)
    sample(arbiter, system)  # 66 s after the cheap: more than 12 cycles
    assert running(arbiter) == [1, 2, 3]
    assert lines(capfd)[0] == "[busyness] decreasing cheaper multiplier to 11"
    assert b.multi == 11 and b.min_multi == 10


def test_busyness_mid_cycles_push_the_cheap_timer_and_three_reset_it():
    arbiter, system = busyness()
    b = state(arbiter)
    start = system.now
    sample(arbiter, system, 24)  # idle
    for _ in range(2):  # two cycles between min and max: one cycle later each
        served(arbiter, 1, 1.2)
        served(arbiter, 2, 1.2)
        sample(arbiter, system)
    assert b.tolerance == 2 and b.next_cheap == start + 30 + 6
    served(arbiter, 1, 1.2)
    served(arbiter, 2, 1.2)
    sample(arbiter, system)  # the third: the timer starts again
    assert b.tolerance == 3 and b.next_cheap == system.now + 30
    sample(arbiter, system)  # idle again: the count starts again
    assert b.tolerance == 0 and cheaped(arbiter, system) == []
    sample(arbiter, system, 27)
    assert cheaped(arbiter, system) == [2]


def test_busyness_backlog_alert_spawns_emergency_workers_on_any_tick(capfd):
    arbiter, system = busyness("--cheaper-busyness-backlog-step", "2")
    system.queued = 33
    tick(arbiter, system)
    assert running(arbiter) == [1, 2]  # not more than the alert
    system.queued = 34
    lines(capfd)
    tick(arbiter, system)  # 2 s: no sample, checked anyway
    assert running(arbiter) == [1, 2, 3, 4]
    assert ("[busyness] 34 requests in listen queue, spawning 2 emergency worker(s) (2)!") in lines(
        capfd
    )
    tick(arbiter, system)  # at the maximum: nothing more to do
    assert state(arbiter).emergency == 2


def test_busyness_emergency_workers_use_the_backlog_multiplier(capfd):
    arbiter, system = busyness("--cheaper-busyness-verbose")
    b = state(arbiter)
    system.queued = 40
    tick(arbiter, system)
    assert running(arbiter) == [1, 2, 3] and b.emergency == 1
    # as in uWSGI, the timer is set before the emergency worker is counted
    assert b.next_cheap == system.now + 3 * 10
    system.queued = 0
    accept(arbiter, worker(arbiter, 3))
    lines(capfd)
    sample(arbiter, system, 32)  # the first sample after 30 s
    assert cheaped(arbiter, system) == [3] and b.emergency == 0
    assert "[busyness] 1 emergency worker(s) running, using 9 seconds cheaper timer" in lines(capfd)
    assert b.next_cheap == system.now + 3 * 3
    exit_child(arbiter, system, worker(arbiter, 3), exited(0))
    sample(arbiter, system, 6)
    assert running(arbiter) == [1, 2] and cheaped(arbiter, system) == []
    sample(arbiter, system, 3)  # 9 s later, not 30
    assert cheaped(arbiter, system) == [2]


def test_busyness_backlog_nonzero_for_too_long_spawns(capfd):
    arbiter, system = busyness(
        "--cheaper-busyness-verbose", "--cheaper-busyness-backlog-nonzero", "7"
    )
    system.queued = 1
    lines(capfd)
    tick(arbiter, system)
    assert "[busyness] backlog is starting to fill (1)" in lines(capfd)
    system.queued = 0
    tick(arbiter, system)
    assert "[busyness] backlog is now empty" in lines(capfd)
    system.queued = 2
    tick(arbiter, system)  # 3 s: a sample, which skips this check
    tick(arbiter, system)  # 4 s: filling again since now
    sample(arbiter, system, 6)
    assert running(arbiter) == [1, 2]
    tick(arbiter, system)  # 11 s: non-zero for 7 s
    assert running(arbiter) == [1, 2, 3]
    out = lines(capfd)
    assert "[busyness] backlog was non-zero for 7 second(s), spawning new worker(s)" in out
    assert "[busyness] 2 requests in listen queue, spawning 1 emergency worker(s) (1)!" in out


def test_busyness_with_overload_0_samples_every_tick_without_dividing_by_zero(capfd):
    arbiter, system = spare("--cheaper-algo", "busyness", "--cheaper-overload", "0")
    arbiter.cheaper.step(arbiter, system.now)  # no time since the start: no sample
    assert running(arbiter) == [1, 2] and state(arbiter).percent == {}
    served(arbiter, 1, 1.0)
    served(arbiter, 2, 1.0)
    tick(arbiter, system)  # percentages of the 1 s since the start
    assert running(arbiter) == [1, 2, 3] and state(arbiter).percent == {1: 100, 2: 100}
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

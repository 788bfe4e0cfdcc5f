"""The periodic checks (harakiri, evil-reload-on-rss, max-worker-lifetime, touch files) on an
arbiter with a fake operating system and a real scoreboard."""

import os
import signal

from pymaster.master.checks import TouchWatcher
from tests.master_fakes import (
    START,
    accept,
    busy,
    exit_child,
    killed,
    lines,
    make_arbiter,
    tick,
    worker,
)

MB = 1024 * 1024


# -- harakiri --------------------------------------------------------------------------------
def test_harakiri_kills_a_request_over_the_limit_and_logs_uwsgis_dump(capfd):
    arbiter, system = make_arbiter("--harakiri", "3", processes=2)
    one = worker(arbiter, 1)
    busy(arbiter, one, START, b"GET /slow?x=1")
    accept(arbiter, worker(arbiter, 2))
    lines(capfd)
    tick(arbiter, system, 3.0)
    assert system.sent == []  # 3 s is not over the limit
    tick(arbiter, system, 1.0)
    log = lines(capfd)
    assert log[0].endswith(" - *** HARAKIRI ON WORKER 1 (pid: 1000, try: 1) ***")
    assert log[1:] == [
        "HARAKIRI !!! worker 1 status !!!",
        f"HARAKIRI [core 0] GET /slow?x=1 since {int(START)}",
        "HARAKIRI !!! end of worker 1 status !!!",
    ]
    assert system.sent == [(1000, signal.SIGKILL)] and one.harakiri_count == 1
    exit_child(arbiter, system, one, killed(signal.SIGKILL))
    assert lines(capfd) == [
        "DAMN ! worker 1 (pid: 1000) died, killed by signal 9 :( trying respawn ...",
        "Respawned pymaster worker 1 (new pid: 1002)",
    ]
    assert arbiter.harakiri_pids == set()


def test_harakiri_0_is_off_and_idle_workers_are_never_killed():
    arbiter, system = make_arbiter(processes=2)
    busy(arbiter, worker(arbiter, 1), START)
    tick(arbiter, system, 100.0)
    arbiter, system = make_arbiter("--harakiri", "1", processes=1)
    accept(arbiter, worker(arbiter, 1))
    tick(arbiter, system, 100.0)
    assert system.sent == []


def test_harakiri_ignores_a_slot_left_by_a_previous_process():
    arbiter, system = make_arbiter("--harakiri", "1", processes=1)
    one = worker(arbiter, 1)
    busy(arbiter, one, START)
    exit_child(arbiter, system, one, killed(9))  # respawned; the slot still says busy
    arbiter.scoreboard.slot(0).begin(START, b"GET /old")
    tick(arbiter, system, 10.0)
    assert system.sent == []


def test_time_paused_does_not_count_against_harakiri():
    arbiter, system = make_arbiter("--harakiri", "2", processes=1)
    busy(arbiter, worker(arbiter, 1), START)
    system.now += 1
    arbiter.on_SIGTSTP()
    tick(arbiter, system, 5.0)  # paused: no check at all
    arbiter.on_SIGTSTP()
    tick(arbiter, system, 0.5)  # 6.5 s since the start, 5 of them paused
    assert signal.SIGKILL not in system.signals_to(1000)
    tick(arbiter, system, 1.0)
    assert system.signals_to(1000)[-1] == signal.SIGKILL


# -- evil-reload-on-rss ----------------------------------------------------------------------
def test_evil_reload_on_rss_kills_a_worker_over_the_limit(capfd):
    arbiter, system = make_arbiter("--evil-reload-on-rss", "100", processes=2)
    system.rss_of = {1000: 100 * MB, 1001: 100 * MB + 1}
    lines(capfd)
    tick(arbiter, system)
    assert system.sent == [(1001, signal.SIGKILL)]
    assert lines(capfd)[0].endswith(
        f" - *** EVIL RELOAD ON WORKER 2 RSS: {100 * MB + 1} (pid: 1001) ***"
    )
    assert worker(arbiter, 2).cursed_at == system.now and worker(arbiter, 1).cursed_at == 0


def test_evil_reload_on_rss_skips_unreadable_workers_and_0_is_off():
    arbiter, system = make_arbiter("--evil-reload-on-rss", "1", processes=1)
    tick(arbiter, system)  # no RSS (the process is gone): nothing
    arbiter, other = make_arbiter(processes=1)
    other.rss_of = {1000: 10**12}
    tick(arbiter, other)
    assert system.sent == [] and other.sent == []


def test_evil_reload_on_rss_runs_while_paused():
    arbiter, system = make_arbiter("--evil-reload-on-rss", "1", processes=1)
    arbiter.on_SIGTSTP()
    system.rss_of = {1000: 2 * MB}
    tick(arbiter, system)
    assert system.signals_to(1000) == [signal.SIGSTOP, signal.SIGKILL]


# -- max-worker-lifetime ---------------------------------------------------------------------
def test_max_worker_lifetime_recycles_gracefully(capfd):
    arbiter, system = make_arbiter("--max-worker-lifetime", "10", processes=1)
    lines(capfd)
    tick(arbiter, system, 9.0)
    assert system.sent == []
    tick(arbiter, system, 1.0)
    assert lines(capfd) == ["worker 1 lifetime reached, it was running for 10 second(s)"]
    assert system.sent == [(1000, signal.SIGHUP)] and worker(arbiter, 1).cursed_at == system.now
    tick(arbiter, system, 1.0)
    assert system.sent == [(1000, signal.SIGHUP)]  # asked once


def test_max_worker_lifetime_delta_staggers_by_worker_number():
    arbiter, system = make_arbiter(
        "--max-worker-lifetime", "10", "--max-worker-lifetime-delta", "5", processes=3
    )
    tick(arbiter, system, 15.0)
    assert [p for p, _ in system.sent] == [1000]  # 10 + 5 * 1
    tick(arbiter, system, 5.0)
    assert [p for p, _ in system.sent] == [1000, 1001]  # 10 + 5 * 2
    tick(arbiter, system, 5.0)
    assert [p for p, _ in system.sent] == [1000, 1001, 1002]


def test_max_worker_lifetime_0_is_off_and_waits_while_reloading():
    arbiter, system = make_arbiter(processes=1)
    tick(arbiter, system, 10**6)
    assert system.sent == []
    arbiter, system = make_arbiter("--max-worker-lifetime", "10", processes=2)
    gateway = arbiter.add("fastrouter", lambda child: None)
    assert gateway is not None
    arbiter.spawn(gateway)
    tick(arbiter, system, 100.0)
    assert gateway.pid not in [p for p, _ in system.sent]  # workers only
    arbiter, system = make_arbiter("--max-worker-lifetime", "10", processes=1)
    arbiter.state.mode = "stopping"
    tick(arbiter, system, 100.0)
    assert system.sent == []


# -- touch files -----------------------------------------------------------------------------
def test_touch_watcher_acts_on_a_change_a_creation_and_a_removal(tmp_path, capfd):
    path = tmp_path / "reload.touch"
    calls = []
    watch = TouchWatcher([str(path)], lambda: calls.append(1), "grace them all")
    assert lines(capfd) == [
        f"unable to stat() {path}, events will be triggered as soon as the file is created"
    ]
    watch(0.0)
    assert calls == []
    path.write_text("x")
    watch(0.0)
    assert calls == [1]
    assert lines(capfd) == [f"*** {path} has been touched... grace them all !!! ***"]
    watch(0.0)
    assert calls == [1]
    os.utime(path, ns=(1, 1))
    watch(0.0)
    path.unlink()
    watch(0.0)
    assert calls == [1, 1, 1]

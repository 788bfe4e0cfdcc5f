"""cron / unique-cron / cron2 (master/cron.py): uWSGI's schedule matching on an injected
clock, the once-a-minute rule, unique runs, harakiri, over the fake System."""

from __future__ import annotations

import time

import pytest

from pymaster.master import cron as cm
from tests.master_fakes import SIGKILL, exited, lines, make_arbiter


def at(stamp: str) -> time.struct_time:
    return time.strptime(stamp, "%Y-%m-%d %H:%M")  # 2026-12-02 is a Wednesday


def test_parse_and_syntax_errors():
    c = cm.parse("-15 -1 -1 -1 -1 ./manage.py runjobs quarter_hourly")
    assert (c.minute, c.hour, c.day, c.month, c.week) == (-15, -1, -1, -1, -1)
    assert c.command == "./manage.py runjobs quarter_hourly" and not c.unique
    for bad in ("-1 -1 -1 -1 cmd", "x -1 -1 -1 -1 cmd", "-1 -1 -1 -1 -1"):
        with pytest.raises(cm.CronError):
            cm.parse(bad)
    c2 = cm.parse2("minute=30,hour=2,unique=1,harakiri=60 backup.sh --all")
    assert (c2.minute, c2.hour, c2.day, c2.unique, c2.harakiri) == (30, 2, -1, True, 60)
    assert c2.command == "backup.sh --all"
    assert cm.parse2("plain command").minute == -1
    with pytest.raises(cm.CronError):
        cm.parse2("minute=5")


@pytest.mark.parametrize(
    "spec,stamp,expected",
    [
        ("-1 -1 -1 -1 -1", "2026-12-02 13:07", True),
        ("-15 -1 -1 -1 -1", "2026-12-02 13:45", True),
        ("-15 -1 -1 -1 -1", "2026-12-02 13:07", False),
        ("0 -2 -1 -1 -1", "2026-12-02 14:00", True),
        ("0 -2 -1 -1 -1", "2026-12-02 13:00", False),
        ("30 2 -1 -1 -1", "2026-12-02 02:30", True),
        ("30 2 -1 -1 -1", "2026-12-02 03:30", False),
        ("0 0 -1 -1 3", "2026-12-02 00:00", True),  # Wednesday is 3
        ("0 0 -1 -1 0", "2026-12-06 00:00", True),  # Sunday is 0 ...
        ("0 0 -1 -1 7", "2026-12-06 00:00", True),  # ... and 7
        ("0 0 -1 -1 1", "2026-12-02 00:00", False),
        ("0 0 1 -1 1", "2026-12-07 00:00", True),  # day and weekday ORed: a Monday
        ("0 0 1 -1 1", "2026-12-01 00:00", True),  # the 1st
        ("0 0 1 -1 1", "2026-12-02 00:00", False),
        ("0 0 1 12 -1", "2026-12-01 00:00", True),  # month is 1-12
        ("0 0 1 -3 -1", "2026-12-01 00:00", True),  # every third month: 3, 6, 9, 12
        ("0 0 1 -3 -1", "2026-11-01 00:00", False),
    ],
)
def test_schedule_matching_follows_uwsgi(spec, stamp, expected):
    assert cm.matches(cm.parse(spec + " cmd"), at(stamp)) is expected


def attached(*options: str):
    arbiter, system = make_arbiter("-M", *options)
    manager = cm.attach(arbiter, arbiter.cfg)
    assert manager is not None
    return arbiter, system, manager


def test_every_minute_runs_at_start_then_once_a_minute(capfd):
    arbiter, system, manager = attached("--cron", "-1 -1 -1 -1 -1 date")
    assert '[uwsgi-cron] command "date" registered as cron task' in lines(capfd)
    for hook in arbiter.on_start:
        hook()
    (job,) = manager.crons
    first = job.pid
    assert first and f'[uwsgi-cron] running "date" (pid {first})' in lines(capfd)[-1]
    system.now += 2
    system.exits.append((first, exited(0)))
    arbiter.reap()
    assert lines(capfd)[-1] == (
        f'[uwsgi-cron] command "date" running with pid {first} exited after 2 second(s)'
    )
    for _ in range(57):
        system.now += 1
        arbiter.tick(system.now)
    assert job.pid == 0  # not yet: 59 s since the run
    system.now += 1
    arbiter.tick(system.now)
    assert job.pid not in (0, first)


def test_unique_cron_is_not_started_while_the_previous_run_lives():
    arbiter, system, manager = attached(
        "--unique-cron", "-1 -1 -1 -1 -1 slow", "--cron", "-1 -1 -1 -1 -1 fast"
    )
    fast, slow = manager.crons  # --cron first, then --unique-cron
    manager.check(system.now)
    first_slow, first_fast = slow.pid, fast.pid
    system.now += 60
    manager.check(system.now)
    assert slow.pid == first_slow  # still running: skipped
    assert fast.pid != first_fast  # plain cron: started again anyway
    system.exits.append((first_slow, exited(0)))
    arbiter.reap()
    system.now += 1
    manager.check(system.now)  # gone, and its last start is over 60 s ago: runs again
    assert slow.pid not in (0, first_slow)


def test_cron_harakiri_kills_the_run(capfd):
    arbiter, system, manager = attached("--cron2", "harakiri=5 stuck.sh")
    manager.check(system.now)
    (job,) = manager.crons
    system.now += 6
    manager.tick(system.now)
    assert (-job.pid, SIGKILL) in system.sent
    assert f'*** HARAKIRI ON CRON "stuck.sh" (pid: {job.pid}) ***' in lines(capfd)


def test_a_reload_hands_the_running_unique_cron_to_the_next_image(monkeypatch, capfd):
    options = ("--unique-cron", "-1 -1 -1 -1 -1 slow", "--cron", "-1 -1 -1 -1 -1 fast")
    arbiter, system, manager = attached(*options)
    fast, slow = manager.crons
    manager.check(system.now)
    running, finished = slow.pid, fast.pid
    system.now += 3
    system.exits.append((finished, exited(0)))
    arbiter.reap()
    env: dict[str, str] = {}
    for hook in arbiter.before_exec:  # what reexec() does just before execve
        hook(env)
    assert cm.CARRY_ENV in env

    # the new image: same process, so the run still going is still its child
    monkeypatch.setenv(cm.CARRY_ENV, env[cm.CARRY_ENV])
    arbiter2, system2 = make_arbiter("-M", *options)
    system2.forked, system2.pids, system2.now = list(system.forked), system.pids, system.now
    manager2 = cm.attach(arbiter2, arbiter2.cfg)
    assert manager2 is not None and cm.CARRY_ENV not in __import__("os").environ
    fast2, slow2 = manager2.crons
    assert slow2.pid == running and fast2.pid == 0
    assert f'[uwsgi-cron] command "slow" still running with pid {running}' in lines(capfd)
    manager2.check(system2.now)  # at start: neither runs again within the minute
    assert slow2.pid == running and fast2.pid == 0
    system2.now += 60
    manager2.check(system2.now)
    assert slow2.pid == running  # unique: still alive, not started a second time
    assert fast2.pid not in (0, finished)
    system2.now += 2
    system2.exits.append((running, exited(0)))
    arbiter2.reap()
    assert lines(capfd)[-1] == (
        f'[uwsgi-cron] command "slow" running with pid {running} exited after 65 second(s)'
    )
    system2.now += 1
    manager2.check(system2.now)
    assert slow2.pid not in (0, running)


def test_a_carried_pid_that_is_not_our_child_is_not_adopted(monkeypatch):
    state = '{"1 0 (-1, -1, -1, -1, -1) slow": [999999, 1.0, 1.0], "x": "garbage"}'
    monkeypatch.setenv(cm.CARRY_ENV, state)
    arbiter, system = make_arbiter("-M", "--unique-cron", "-1 -1 -1 -1 -1 slow")
    manager = cm.attach(arbiter, arbiter.cfg)
    assert manager is not None and manager.crons[0].pid == 0
    monkeypatch.setenv(cm.CARRY_ENV, '{"1 0 (-1, -1, -1, -1, -1) slow": [999999, 1.0, 1.0]}')
    arbiter, system = make_arbiter("-M", "--unique-cron", "-1 -1 -1 -1 -1 slow")
    manager = cm.attach(arbiter, arbiter.cfg)
    assert manager is not None
    (job,) = manager.crons
    assert job.pid == 0 and job.last_job == 1.0

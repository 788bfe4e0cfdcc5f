"""Attached daemons (master/daemons.py) over the fake System: parsing, the throttle, respawn,
stop on reload and shutdown with the mercy, smart daemons tracked by their pidfile."""

from __future__ import annotations

import pytest

from pymaster.master import daemons as dm
from tests.master_fakes import SIGKILL, SIGTERM, exited, killed, lines, make_arbiter, tick


def attached(*options: str):
    arbiter, system = make_arbiter("-M", *options)
    manager = dm.attach(arbiter, arbiter.cfg)
    assert manager is not None
    for hook in arbiter.on_start:
        hook()
    return arbiter, system, manager


def die(arbiter, system, pid: int, status: int = killed(9)) -> None:
    system.exits.append((pid, status))
    arbiter.reap()


# -- parsing --------------------------------------------------------------------------------
def test_attach_daemon2_keys_and_refusals():
    d = dm.parse_daemon2("cmd=./run.sh,stopsignal=2,reloadsignal=1,freq=3,control=1,stdin=1")
    assert (d.command, d.stop_signal, d.reload_signal, d.freq) == ("./run.sh", 2, 1, 3)
    assert d.control and d.honour_stdin and not d.pidfile
    assert dm.parse_daemon2("exec=x,pidfile=/p,daemonize=1").daemonize
    with pytest.raises(dm.DaemonError, match="'command' key"):
        dm.parse_daemon2("freq=3")
    with pytest.raises(dm.DaemonError, match="'uid' is not supported"):
        dm.parse_daemon2("cmd=x,uid=33")
    with pytest.raises(dm.DaemonError, match="unknown key 'colour'"):
        dm.parse_daemon2("cmd=x,colour=red")
    with pytest.raises(dm.DaemonError, match="not a number"):
        dm.parse_daemon2("cmd=x,freq=often")


def test_smart_attach_daemon_syntax():
    d = dm.parse_smart("/run/x.pid,5 memcached -d -P /run/x.pid")
    assert (d.pidfile, d.freq, d.command, d.daemonize) == (
        "/run/x.pid",
        5,
        "memcached -d -P /run/x.pid",
        False,
    )
    assert dm.parse_smart("/p cmd", "smart-attach-daemon2").daemonize
    with pytest.raises(dm.DaemonError, match="PIDFILE CMD"):
        dm.parse_smart("/only/a/pidfile")


def test_simple_commands_are_execed_compound_ones_are_not():
    assert dm.shell_line("./manage.py qcluster") == "exec ./manage.py qcluster"
    assert dm.shell_line("sleep 1000") == "exec sleep 1000"
    for cmd in ("a && b", "a; b", "a | b", "x > log", "A=1 run", "exec run", "(a)"):
        assert dm.shell_line(cmd) == cmd


# -- the throttle ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "now,last,respawns,cap,expected",
    [
        (1000, 0, 0, 0, 0),  # first spawn
        (1000, 996, 5, 0, 0),  # more than 3 s since the last spawn: none
        (1000, 997, 1, 0, 1),  # 1 - 3 < 0: at least 1
        (1000, 1000, 1, 0, 1),
        (1000, 1000, 7, 0, 7),  # dying at once: one more second per respawn
        (1000, 998, 7, 0, 5),
        (1000, 1000, 900, 0, 300),  # uWSGI's cap
        (1000, 1000, 900, 20, 20),  # max_throttle
    ],
)
def test_throttle_follows_uwsgi(now, last, respawns, cap, expected):
    assert dm.throttle(now, last, respawns, cap) == expected


# -- dumb daemons ------------------------------------------------------------------------------
def test_started_with_the_master_and_respawned_when_it_dies(capfd):
    arbiter, system, manager = attached("--attach-daemon", "sleep 1000")
    (daemon,) = manager.daemons
    first = daemon.pid
    assert first in system.forked and daemon.respawns == 1
    die(arbiter, system, first)
    assert daemon.pid not in (0, first) and daemon.respawns == 2
    assert (-first, SIGKILL) in system.sent  # leftovers of its session go with it
    assert not any("subprocess" in line for line in lines(capfd))  # not a stranger


def test_a_daemon_dying_at_once_is_throttled_more_each_time():
    arbiter, system, manager = attached("--attach-daemon", "false")
    (daemon,) = manager.daemons
    delays = []
    for _ in range(4):
        delays.append(dm.throttle(int(system.now), daemon.last_spawn, daemon.respawns))
        die(arbiter, system, daemon.pid, exited(1))
    assert delays == [1, 2, 3, 4]  # what each child sleeps before it execs
    system.now += 10
    assert dm.throttle(int(system.now), daemon.last_spawn, daemon.respawns) == 0


def test_shutdown_stops_the_group_then_kills_after_the_mercy_and_waits(capfd):
    arbiter, system, manager = attached("--attach-daemon", "sleep 1000", "--reload-mercy", "2")
    (daemon,) = manager.daemons
    pid = daemon.pid
    lines(capfd)
    arbiter.shutdown(graceful=True)
    assert (-pid, SIGTERM) in system.sent
    assert f"[uwsgi-daemons] stopping daemon (pid: {pid}): sleep 1000" in lines(capfd)
    assert arbiter.held()  # the master waits for it
    tick(arbiter, system)
    assert system.sent[-1] == (-pid, SIGTERM)  # again every second
    tick(arbiter, system)
    assert system.sent[-1] == (-pid, SIGKILL)
    assert "daemon did not die in time" in lines(capfd)[-1]
    die(arbiter, system, pid)
    assert not arbiter.held() and daemon.pid == 0
    assert len([p for p in system.forked if p > pid]) == 0  # not respawned


def test_reload_uses_the_reload_signal_and_does_not_respawn():
    arbiter, system, manager = attached(
        "--attach-daemon2", "cmd=worker.sh,stopsignal=2,reloadsignal=10"
    )
    (daemon,) = manager.daemons
    pid = daemon.pid
    arbiter.begin_reload(graceful=True)
    assert system.signals_to(-pid) == [10]
    forked = len(system.forked)
    die(arbiter, system, pid, exited(0))
    assert len(system.forked) == forked and not arbiter.held()


def test_a_control_daemon_exiting_shuts_the_instance_down():
    arbiter, system, manager = attached("--attach-control-daemon", "watchdog")
    die(arbiter, system, manager.daemons[0].pid, exited(0))
    assert arbiter.state.mode == "stopping" and arbiter.state.graceful


# -- smart daemons ----------------------------------------------------------------------------
def test_smart_daemon_found_running_is_adopted(tmp_path, capfd):
    pidfile = tmp_path / "d.pid"
    pidfile.write_text("777\n")
    arbiter, system, manager = attached("--smart-attach-daemon", f"{pidfile} mydaemon")
    (daemon,) = manager.daemons
    assert daemon.pid == 777 and system.forked[-1] != daemon.pid
    assert '[uwsgi-daemons] found valid/active pidfile for "mydaemon" (pid: 777)' in lines(capfd)
    tick(arbiter, system)
    assert daemon.status == 2  # monitored
    system.gone.add(777)  # it died
    forked = len(system.forked)
    tick(arbiter, system)
    assert len(system.forked) == forked + 1  # spawned again


def test_smart_daemon_spawned_then_its_daemonized_pid_tracked(tmp_path, capfd):
    pidfile = tmp_path / "d.pid"
    arbiter, system, manager = attached("--smart-attach-daemon", f"{pidfile} mydaemon")
    (daemon,) = manager.daemons
    launcher = daemon.pid
    die(arbiter, system, launcher, exited(0))  # it daemonized
    assert daemon.has_daemonized
    pidfile.write_text("4321")
    tick(arbiter, system)
    assert daemon.pid == 4321
    assert f"(old_pid: {launcher} new_pid: 4321)" in lines(capfd)[-1]
    arbiter.shutdown(graceful=True)  # left running, not waited for
    assert system.signals_to(-4321) == [] and not arbiter.held()

"""Attached daemons over real processes: started with the master, respawned after kill -9,
stopped and started again on SIGHUP, stopped with the master (no orphan), killed when the
master is; a smart daemon tracked by its pidfile and left running at shutdown."""

from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil

from tests.pm import Pymaster, free_port, wait_port

APP = textwrap.dedent("""
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
""")


def start(tmp_path, *extra):
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "app.py", *extra],
                  tmp_path, cwd=tmp_path)
    wait_port(port)
    return pm


def daemon_pids(pm, marker: str) -> list[int]:
    try:
        kids = psutil.Process(pm.pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for kid in kids:
        try:
            if marker in " ".join(kid.cmdline()) and kid.status() != psutil.STATUS_ZOMBIE:
                found.append(kid.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_daemon(pm, marker: str, exclude=(), timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in daemon_pids(pm, marker) if p not in exclude]
        if pids:
            return pids[0]
        time.sleep(0.05)
    raise AssertionError(f"no daemon {marker!r} (excluding {exclude}):\n{pm.log()}")


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_attach_daemon_lifecycle(tmp_path):
    with start(tmp_path, "--attach-daemon", "sleep 1001") as pm:
        first = wait_daemon(pm, "sleep 1001")
        pm.wait_log(r'\[uwsgi-daemons\] spawning "sleep 1001" \(uid: \d+ gid: \d+\)')
        assert psutil.Process(first).cmdline() == ["sleep", "1001"]  # exec'd by the shell
        assert os.getsid(first) == first  # its own session
        os.kill(first, signal.SIGKILL)
        second = wait_daemon(pm, "sleep 1001", exclude=[first])
        pm.wait_log(r'\[uwsgi-daemons\] throttling "sleep 1001" for 1 seconds')
        pm.wait_log(r'\[uwsgi-daemons\] respawning "sleep 1001"')
        pm.signal(signal.SIGHUP)
        pm.wait_log(rf"\[uwsgi-daemons\] stopping daemon \(pid: {second}\): sleep 1001")
        assert gone(second)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
        third = wait_daemon(pm, "sleep 1001", exclude=[first, second])
        pm.signal(signal.SIGTERM)
        assert pm.wait(15) == 0
        assert gone(third, timeout=1)  # no orphan: the master waited for it


def test_a_stubborn_daemon_is_killed_after_the_reload_mercy(tmp_path):
    cmd = "trap '' TERM; sleep 1002; true"  # compound: the shell stays, ignoring SIGTERM
    with start(tmp_path, "--attach-daemon", cmd, "--reload-mercy", "1") as pm:
        daemon = wait_daemon(pm, "sleep 1002")
        time.sleep(0.5)
        sleeper = [c.pid for c in psutil.Process(daemon).children()]
        pm.signal(signal.SIGINT)
        assert pm.wait(15) == 0
        pm.wait_log(r"daemon did not die in time, killing")
        assert gone(daemon, 1) and all(gone(p, 1) for p in sleeper)


def test_plain_daemons_die_with_a_killed_master(tmp_path):
    with start(tmp_path, "--attach-daemon", "sleep 1003") as pm:
        daemon = wait_daemon(pm, "sleep 1003")
        pm.proc.kill()
        pm.wait()
        assert gone(daemon)


def test_smart_daemon_tracked_by_its_pidfile_and_left_running(tmp_path):
    pidfile = tmp_path / "smart.pid"
    cmd = f"sh -c 'sleep 1004 & echo $! > {pidfile}'"
    survivor = 0
    try:
        with start(tmp_path, "--smart-attach-daemon", f"{pidfile} {cmd}") as pm:
            pm.wait_log(r"found changed pid for .* new_pid: (\d+)")
            first = int(pidfile.read_text())
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = pidfile.read_text().strip()
                if text and int(text) != first and psutil.pid_exists(int(text)):
                    break
                time.sleep(0.1)
            survivor = int(pidfile.read_text())
            assert survivor != first, pm.log()
            pm.signal(signal.SIGTERM)
            assert pm.wait(15) == 0
            assert psutil.pid_exists(survivor)  # as uWSGI: left running at shutdown
    finally:
        if survivor:
            try:
                os.kill(survivor, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_bad_daemon_options_stop_the_start(tmp_path):
    pm = Pymaster(["-s", "127.0.0.1:1", "-M", "--attach-daemon2", "pidfile=/x"], tmp_path)
    assert pm.wait() == 1
    assert "--attach-daemon2: you need to specify a 'command' key" in pm.log()


def test_every_minute_cron_runs_at_start(tmp_path):
    marker = tmp_path / "ran"
    with start(tmp_path, "--cron", f"-1 -1 -1 -1 -1 echo run >> {marker}",
               "--unique-cron", "-1 -1 -1 -1 -1 true") as pm:
        pm.wait_log(rf'\[uwsgi-cron\] command "echo run >> {marker}" registered as cron task')
        pm.wait_log(r'\[uwsgi-cron\] running "echo run >> .*" \(pid \d+\)')
        pm.wait_log(r'\[uwsgi-cron\] command "true" running with pid \d+ exited after 0 second')
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "run\n"
        assert "subprocess" not in pm.log()  # reaped as the cron's, not as a stranger


def test_a_unique_cron_still_running_survives_a_reload_without_a_second_run(tmp_path):
    """SIGHUP re-execs the master while the unique cron's first run sleeps: the new image
    takes that run over (same pid, reaped and logged as the cron's) and starts no second."""
    marker = tmp_path / "runs"
    command = f"echo $$ >> {marker}; exec sleep 60"
    with start(tmp_path, "-M", "--unique-cron", f"-1 -1 -1 -1 -1 {command}") as pm:
        pm.wait_log(r'\[uwsgi-cron\] running "echo ')
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (first,) = marker.read_text().split()
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
        pm.wait_log(rf'\[uwsgi-cron\] command "echo .*" still running with pid {first}')
        time.sleep(1.5)  # the new image's loop has started and checked its crons
        assert marker.read_text().split() == [first]
        os.kill(int(first), signal.SIGKILL)
        pm.wait_log(rf'\[uwsgi-cron\] command "echo .*" running with pid {first} exited after')
        assert "subprocess" not in pm.log()  # not reaped as a stranger
        assert marker.read_text().split() == [first]  # and not re-run within the minute


def test_hooks_run_in_their_phases_and_unknown_actions_stop_the_start(tmp_path):
    with start(tmp_path, "--hook-asap", f"mkdir:{tmp_path}/h", "--hook-post-app", "print:app in",
               "--hook-master-start", "unix_signal:15 gracefully_kill_them_all") as pm:
        pm.wait_log(r'running "unix_signal:15 gracefully_kill_them_all" \(master-start\)')
        assert 'running "print:app in" (post app)...\napp in' in pm.log()
        assert (tmp_path / "h").is_dir()
        pm.signal(signal.SIGTERM)
        assert pm.wait(15) == 0
        assert "graceful shutdown triggered" in pm.log()
    bad = Pymaster(["-s", "127.0.0.1:1", "-M", "--hook-asap", "mount:proc none /proc"], tmp_path)
    assert bad.wait() == 1
    assert "hook action not found: mount" in bad.log()

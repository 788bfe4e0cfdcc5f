"""Reload and scale under concurrent load with zero failed requests; harakiri; recycling."""

import json
import os
import signal
import socket
import textwrap
import time

import pytest

from tests.load import Load, one_uwsgi
from tests.pm import Pymaster, free_port, wait_port

APP = textwrap.dedent('''
    import os, time
    def application(environ, start_response):
        if environ["PATH_INFO"] == "/sleep":
            time.sleep(float(environ.get("QUERY_STRING") or 30))
        else:
            time.sleep(0.002)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("%s " + str(os.getpid())).encode()]
''')


def app_file(tmp_path, version="v1"):
    path = tmp_path / "app.py"
    path.write_text(APP % version)
    return path


def start(tmp_path, *extra, processes=2):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app_file(tmp_path), "-M",
                   "-p", str(processes), *extra], tmp_path)
    wait_port(port)
    pm.wait_workers(processes)
    pm.port = port
    return pm


def test_three_sighups_under_load_fail_nothing(tmp_path):
    with start(tmp_path) as pm:
        with Load(pm.port, threads=8) as load:
            for i in range(3):
                load.wait_ok(100)
                before = pm.workers()
                pm.signal(signal.SIGHUP)
                pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", count=i + 1, timeout=20)
                pm.wait_workers(2, exclude=before, timeout=20)
            load.wait_ok(100)
        assert load.failures == [] and load.ok > 300
        assert pm.proc.poll() is None


def test_chain_reload_under_load_fails_nothing_and_keeps_capacity(tmp_path):
    fifo = tmp_path / "fifo"
    with start(tmp_path, "--master-fifo", fifo, "--lazy-apps") as pm:
        pm.wait_log(r"ready in worker", count=2)
        old = pm.workers()
        app_file(tmp_path, "v2")
        with Load(pm.port, threads=8) as load:
            load.wait_ok(100)
            fifo.write_bytes(b"c")
            pm.wait_log(r"chain reloading complete", timeout=30)
            pm.wait_workers(2, exclude=old, timeout=20)
            load.wait_ok(100)
        assert load.failures == []
        assert any(b.startswith(b"v2 ") for b in load.bodies)
        log = pm.log()
        # every victim was asked to go only after its successor accepted
        assert log.index("is accepting") < log.index("Gracefully killing")


def test_chain_reload_with_broken_new_code_keeps_old_workers(tmp_path):
    fifo = tmp_path / "fifo"
    with start(tmp_path, "--master-fifo", fifo, "--lazy-apps") as pm:
        pm.wait_log(r"ready in worker", count=2)
        old = pm.workers()
        (tmp_path / "app.py").write_text("raise ImportError('broken deploy')\n")
        fifo.write_bytes(b"c")
        pm.wait_log(r"chain reload aborted", timeout=20)
        assert sorted(pm.workers()) == sorted(old)
        assert one_uwsgi(pm.port).startswith(b"HTTP/1.1 200")


def test_ttin_ttou_under_load_fail_nothing(tmp_path):
    with start(tmp_path) as pm:
        with Load(pm.port, threads=8) as load:
            load.wait_ok(50)
            pm.signal(signal.SIGTTIN)
            pm.wait_workers(3)
            pm.signal(signal.SIGTTIN)
            pm.wait_workers(4)
            load.wait_ok(100)
            pm.signal(signal.SIGTTOU)
            pm.wait_workers(3)
            pm.signal(signal.SIGTTOU)
            pm.wait_workers(2)
            load.wait_ok(100)
        assert load.failures == []


def test_max_requests_recycling_under_load_fails_nothing(tmp_path):
    with start(tmp_path, "--max-requests", "50", "--min-worker-lifetime", "0") as pm:
        with Load(pm.port, threads=6, budget=600) as load:
            load.wait_ok(600, timeout=60)
        assert load.failures == [] and load.ok == 600
        assert pm.log().count("The work of process") >= 8
        pm.wait_log(r"Respawned pymaster worker \d \(new pid: \d+\)", count=8)


def test_sigterm_shutdown_under_load_completes_accepted_requests(tmp_path):
    with start(tmp_path) as pm:
        with Load(pm.port, threads=8, seconds=10) as load:
            load.wait_ok(100)
            pm.signal(signal.SIGTERM)
            assert pm.wait(20) == 0
        # after the socket closed, new connections are refused; nothing else may fail
        others = [f for f in load.failures if "ConnectionRefused" not in f]
        assert others == []


def test_kill9_of_a_worker_under_load_loses_at_most_its_request(tmp_path):
    with start(tmp_path) as pm:
        with Load(pm.port, threads=8) as load:
            load.wait_ok(100)
            victim = pm.workers()[0]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            pm.wait_workers(2, exclude=[victim], timeout=5)
            assert time.monotonic() - t0 < 1.0
            load.wait_ok(100)
        assert len(load.failures) <= 1


def test_harakiri_kills_a_stuck_request_within_n_plus_1(tmp_path):
    with start(tmp_path, "--harakiri", "2", processes=1) as pm:
        victim = pm.workers()[0]
        t0 = time.monotonic()
        with pytest.raises(Exception):
            one_uwsgi(pm.port, "/sleep", timeout=10)
        elapsed = time.monotonic() - t0
        assert elapsed <= 3.5
        pm.wait_log(r"\*\*\* HARAKIRI ON WORKER 1 \(pid: %d, try: 1\) \*\*\*" % victim)
        pm.wait_log(r"HARAKIRI \[core 0\] GET /sleep since \d+")
        pm.wait_workers(1, exclude=[victim])
        assert one_uwsgi(pm.port).startswith(b"HTTP/1.1 200")


def read_stats(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)


def test_stats_json_carries_uwsgi_keys(tmp_path):
    sport = free_port()
    with start(tmp_path, "--stats", f"127.0.0.1:{sport}") as pm:
        wait_port(sport)
        for _ in range(5):
            one_uwsgi(pm.port)
        doc = read_stats(sport)
        for key in ("version", "listen_queue", "load", "pid", "uid", "gid", "cwd", "sockets", "workers"):
            assert key in doc
        assert doc["pid"] == pm.pid and len(doc["workers"]) == 2
        w = doc["workers"][0]
        for key in ("id", "pid", "accepting", "requests", "exceptions", "harakiri_count", "status",
                    "rss", "vsz", "running_time", "last_spawn", "respawn_count", "tx", "avg_rt",
                    "apps", "cores"):
            assert key in w
        assert sum(x["requests"] for x in doc["workers"]) == 5
        assert sum(x["tx"] for x in doc["workers"]) > 0


def test_master_fifo_commands_and_pidfile_helpers(tmp_path):
    fifo = tmp_path / "fifo"
    pidfile = tmp_path / "pid"
    with start(tmp_path, "--master-fifo", fifo, "--pidfile", pidfile) as pm:
        assert oct(os.stat(fifo).st_mode & 0o777) == "0o600"
        old = pm.workers()
        fifo.write_bytes(b"w\n")
        pm.wait_workers(2, exclude=old)
        fifo.write_bytes(b"s")
        pm.wait_log(r"workers total requests: \d+")
        fifo.write_bytes(b"r")
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process")
        pm.wait_workers(2)
        from pymaster import cli
        assert cli.main(["--stop", str(pidfile)]) == 0
        assert pm.wait(10) == 0


def test_respawn_guard_delays_a_crashing_worker_without_blocking_the_master(tmp_path):
    bad = tmp_path / "crash.py"
    bad.write_text("import os\nos._exit(3)\n")
    port, sport = free_port(), free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", bad, "--lazy-apps", "-M", "-p", "2",
                   "--stats", f"127.0.0.1:{sport}"], tmp_path) as pm:
        pm.wait_log(r"worker respawning too fast !!! i have to sleep a bit \(2 seconds\)\.\.\.")
        t0 = time.monotonic()
        doc = read_stats(sport)          # the loop still answers during the delay
        assert time.monotonic() - t0 < 1.0 and doc["pid"] == pm.pid

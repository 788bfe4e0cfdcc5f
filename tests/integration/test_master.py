"""The master, first cut: prefork, respawn, stop paths, exit codes, titles, pidfile, reload."""

import os
import signal
import textwrap
import time

import psutil
import pytest

from tests.pm import Background, Pymaster, free_port, split_response, uwsgi_get, wait_port

APP_SRC = textwrap.dedent('''
    import os
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s " + str(os.getpid()).encode()]
''')


def write_app(tmp_path, version="v1"):
    path = tmp_path / "app.py"
    path.write_text(APP_SRC % version)
    return path


def get(port, path="/"):
    status, _, body = split_response(uwsgi_get(port, path))
    return status, body.decode()


def test_preforks_shared_socket_and_respawns_killed_worker(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "3"],
                  tmp_path) as pm:
        wait_port(port)
        pids = pm.wait_workers(3)
        pm.wait_log(r"WSGI app 0 \(mountpoint=''\) ready in \d+ seconds on interpreter pid: %d" % pm.pid)
        pm.wait_log(r"spawned pymaster worker 3 \(pid: \d+, cores: 1\)")
        os.kill(pids[0], signal.SIGKILL)
        pm.wait_log(r"DAMN ! worker \d \(pid: %d\) died, killed by signal 9 :\( trying respawn \.\.\." % pids[0])
        pm.wait_log(r"Respawned pymaster worker \d \(new pid: \d+\)")
        new = pm.wait_workers(3, exclude=[pids[0]])
        assert pids[0] not in new
        seen = {get(port)[1].split()[1] for _ in range(30)}
        assert seen <= {str(p) for p in new}


def test_titles_and_pidfile_with_vacuum(tmp_path):
    port = free_port()
    pidfile = tmp_path / "pm.pid"
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "2",
                   "--pidfile", pidfile, "--vacuum", "--procname-prefix-spaced", "pmtest"], tmp_path) as pm:
        wait_port(port)
        pids = pm.wait_workers(2)
        assert pidfile.read_text() == f"{pm.pid}\n"
        titles = {" ".join(psutil.Process(p).cmdline()).strip() for p in pids}
        assert titles == {"pmtest pymaster worker 1", "pmtest pymaster worker 2"}
        assert " ".join(psutil.Process(pm.pid).cmdline()).strip() == "pmtest pymaster master"
        pm.signal(signal.SIGINT)
        assert pm.wait() == 0
        assert "VACUUM: pidfile removed." in pm.log()
        assert not pidfile.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_brutal_shutdown_exits_zero_and_buries_workers(tmp_path, sig):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "2"],
                  tmp_path) as pm:
        wait_port(port)
        pids = pm.wait_workers(2)
        pm.signal(sig)
        assert pm.wait() == 0
        log = pm.log()
        assert "SIGINT/SIGTERM received...killing workers..." in log
        assert log.count("buried after") == 2 and "goodbye to pymaster." in log
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in pids)


def test_sigterm_is_graceful_request_in_flight_completes(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", "tests/apps/conformance.py", "-M",
                   "-p", "1"], tmp_path) as pm:
        wait_port(port)
        pm.wait_workers(1)
        request = Background(uwsgi_get, port, "/sleep?s=1.5")
        time.sleep(0.4)
        pm.signal(signal.SIGTERM)
        assert split_response(request.join(10))[2] == b"slept 1.5"
        assert pm.wait() == 0
        assert "graceful shutdown triggered..." in pm.log()


def test_sighup_reexecs_same_pid_keeps_socket_and_loads_new_code(tmp_path):
    port = free_port()
    app = write_app(tmp_path, "v1")
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "2"], tmp_path) as pm:
        wait_port(port)
        old = pm.wait_workers(2)
        assert get(port)[1].startswith("v1 ")
        app.write_text(APP_SRC % "v2")
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process \(pid: %d\)" % pm.pid)
        pm.wait_log(r"uwsgi socket 0 inherited TCP address 127\.0\.0\.1:%d fd 3" % port)
        new = pm.wait_workers(2, exclude=old)
        assert not set(new) & set(old)
        assert get(port)[1].startswith("v2 ")
        assert pm.proc.poll() is None


def test_single_process_without_master(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path)], tmp_path) as pm:
        wait_port(port)
        assert get(port)[1] == f"v1 {pm.pid}"
        assert "*** Operational MODE: single process ***" in pm.log()
        assert pm.workers() == []


def test_processes_without_m_turns_master_on_and_says_so(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-p", "2"],
                  tmp_path) as pm:
        wait_port(port)
        pm.wait_workers(2)
        pm.wait_log(r"the master process is enabled because of: processes")


def test_lazy_apps_loads_in_each_worker(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "2",
                   "--lazy-apps"], tmp_path) as pm:
        wait_port(port)
        pids = pm.wait_workers(2)
        lines = pm.wait_log(r"WSGI app 0 \(mountpoint=''\) ready in worker \d \(pid: (\d+)\)", count=2)
        assert sorted(int(p) for p in lines) == pids


def test_app_that_fails_to_load_gives_one_clear_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_here\n")
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", bad, "-M", "-p", "2"], tmp_path)
    assert pm.wait() == 1
    log = pm.log()
    assert "unable to load app from" in log and "No module named 'no_such_module_here'" in log
    assert "spawned pymaster worker" not in log
    pm.stop()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", bad, "-M", "--need-app"], tmp_path)
    assert pm.wait() == 22
    assert "*** no app loaded. GAME OVER ***" in pm.log()
    pm.stop()


def test_lazy_app_failure_with_need_app_exits_22(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('nope')\n")
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", bad, "-M", "-p", "2", "--lazy-apps",
                   "--need-app"], tmp_path)
    assert pm.wait(15) == 22
    assert "need-app requested, destroying the instance..." in pm.log()
    pm.stop()


def test_missing_app_file_and_missing_socket_are_clear_errors(tmp_path):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "nope.py"], tmp_path)
    assert pm.wait() == 1
    assert f"unable to load WSGI file '{tmp_path / 'nope.py'}': no such file" in pm.log()
    pm.stop()
    pm = Pymaster(["--wsgi-file", write_app(tmp_path)], tmp_path)
    assert pm.wait() == 1
    assert "The -s/--socket option is missing" in pm.log()
    pm.stop()


def test_ttin_ttou_scale_workers(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "1"],
                  tmp_path) as pm:
        wait_port(port)
        pm.wait_workers(1)
        pm.signal(signal.SIGTTIN)
        pm.wait_workers(2)
        pm.signal(signal.SIGTTIN)
        pm.wait_workers(3)
        pm.signal(signal.SIGTTOU)
        pm.wait_workers(2)
        pm.signal(signal.SIGTTOU)
        pm.wait_workers(1)
        pm.signal(signal.SIGTTOU)        # one more would go below 1: refused
        pm.wait_log(r"already at 1 worker")
        assert len(pm.wait_workers(1)) == 1
        assert get(port)[0].endswith("200 OK")


def test_workers_die_with_a_killed_master(tmp_path):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", write_app(tmp_path), "-M", "-p", "2"],
                  tmp_path)
    wait_port(port)
    pids = pm.wait_workers(2)
    pm.proc.kill()
    pm.wait()
    deadline = time.monotonic() + 1.0          # the bound: within 1 s

    def alive(pid):                            # a zombie waiting for init to reap it is dead
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    pm.stop()


def test_seed_app_wsgi_file_with_wsgi_extension(tmp_path):
    port = free_port()
    with Pymaster(["--plugins", "python", "-s", f"127.0.0.1:{port}", "--file", "examples/app.wsgi",
                   "-M", "--processes", "2"], tmp_path) as pm:
        wait_port(port)
        pids = pm.wait_workers(2)
        status, body = get(port)
        assert status.endswith("200 OK")
        assert any(f"PID: {p}" in body for p in pids) and '<img src="/static/python.png">' in body

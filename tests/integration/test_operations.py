"""Operator features of the master: cheaper, pause, touch files, memory and lifetime limits,
mercy, stats over HTTP, stats to the log, stack dumps, log reopening, CLI conveniences."""

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.load import one_uwsgi
from tests.pm import ROOT, Background, Pymaster, free_port, wait_port

APP = "tests/apps/conformance.py"


def start(tmp_path, *extra, processes=2, wait=None):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", str(processes),
                   *extra], tmp_path)
    wait_port(port)
    pm.wait_workers(processes if wait is None else wait)
    pm.port = port
    return pm


def test_cheaper_spare_starts_with_initial_and_cheaps_idle_workers(tmp_path):
    with start(tmp_path, "--cheaper", "1", "--cheaper-initial", "3", "--cheaper-overload", "1",
               processes=4, wait=3) as pm:
        pm.wait_log(r"pymaster worker \d cheaped\.", count=2, timeout=15)
        assert len(pm.wait_workers(1, timeout=10)) == 1
        assert one_uwsgi(pm.port, "/hello").startswith(b"HTTP/1.1 200")


def test_cheaper_below_processes_is_required(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", APP, "-M", "-p", "2",
                   "--cheaper", "2"], tmp_path)
    assert pm.wait(10) == 1
    assert "invalid cheaper value: must be lower than processes" in pm.log()
    pm.stop()


def test_pause_holds_requests_and_resume_serves_them(tmp_path):
    with start(tmp_path) as pm:
        pm.signal(signal.SIGTSTP)
        pm.wait_log(r"\*\*\* PAUSE")
        request = Background(one_uwsgi, pm.port, "/hello")
        time.sleep(1.0)
        assert request.result is None and request.thread.is_alive()
        pm.signal(signal.SIGTSTP)
        assert request.join(10).startswith(b"HTTP/1.1 200")
        pm.wait_log(r"resuming workers")


def test_touch_reload_and_touch_workers_reload(tmp_path):
    touch, wtouch = tmp_path / "reload.touch", tmp_path / "workers.touch"
    wtouch.write_text("x")
    with start(tmp_path, "--touch-reload", touch, "--touch-workers-reload", wtouch) as pm:
        pm.wait_log(r"unable to stat\(\) .*reload\.touch, events will be triggered")
        old = pm.workers()
        time.sleep(0.05)
        os.utime(wtouch, (time.time() + 5, time.time() + 5))
        pm.wait_workers(2, exclude=old, timeout=10)
        assert pm.proc.poll() is None and "binary reloading" not in pm.log()
        touch.write_text("now")
        pm.wait_log(r"has been touched\.\.\. grace them all !!!")
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process")


def test_reload_on_rss_recycles_a_fat_worker(tmp_path):
    with start(tmp_path, "--reload-on-rss", "1", "--min-worker-lifetime", "0", processes=1) as pm:
        old = pm.workers()
        one_uwsgi(pm.port, "/hello")
        pm.wait_log(r"over reload-on-rss")
        pm.wait_workers(1, exclude=old)


def test_evil_reload_on_rss_kills_from_the_master(tmp_path):
    with start(tmp_path, "--evil-reload-on-rss", "1", processes=1) as pm:
        pm.wait_log(r"\*\*\* EVIL RELOAD ON WORKER 1 RSS: \d+ \(pid: \d+\) \*\*\*")
        pm.wait_log(r"Respawned pymaster worker 1")


def test_max_worker_lifetime(tmp_path):
    with start(tmp_path, "--max-worker-lifetime", "1", processes=1) as pm:
        old = pm.workers()
        pm.wait_log(r"worker 1 lifetime reached, it was running for \d+ second\(s\)")
        pm.wait_workers(1, exclude=old)


def test_worker_reload_mercy_then_no_mercy(tmp_path):
    with start(tmp_path, "--worker-reload-mercy", "1", processes=1) as pm:
        Background(one_uwsgi, pm.port, "/sleep?s=20")      # cut by the NO MERCY kill
        time.sleep(0.5)
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"worker 1 \(pid: \d+\) is taking too much time to die\.\.\.NO MERCY !!!", timeout=10)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=10)


def test_stats_http_and_sigusr1_and_sigusr2(tmp_path):
    sport = free_port()
    with start(tmp_path, "--stats", f"127.0.0.1:{sport}", "--stats-http", processes=1) as pm:
        wait_port(sport)
        conn = http.client.HTTPConnection("127.0.0.1", sport, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and b'"workers"' in resp.read()
        one_uwsgi(pm.port, "/hello")
        pm.signal(signal.SIGUSR1)
        pm.wait_log(r"workers total requests: 1")
        pm.wait_log(r"worker 1 app 0 \[\] requests: 1 exceptions: 0")
        request = Background(one_uwsgi, pm.port, "/sleep?s=1.5")
        time.sleep(0.5)
        os.kill(pm.workers()[0], signal.SIGUSR2)
        pm.wait_log(r"in _sleep")
        request.join(10)


def test_logto_and_fifo_reopen(tmp_path):
    logfile = tmp_path / "app.log"
    fifo = tmp_path / "fifo"
    with start(tmp_path, "--logto", logfile, "--master-fifo", fifo, processes=1) as pm:
        one_uwsgi(pm.port, "/hello")
        deadline = time.monotonic() + 5
        while "GET /hello" not in logfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logfile.rename(tmp_path / "app.log.1")
        fifo.write_bytes(b"l")
        deadline = time.monotonic() + 5
        while not logfile.exists() or "log reopened" not in logfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pymaster", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_cli_version_help_unknown_option_and_show_config(tmp_path):
    from pymaster import __version__
    assert run_cli("--version").stdout.strip() == __version__
    out = run_cli("--help").stdout
    assert "--socket" in out and "--harakiri" in out
    bad = run_cli("--proceses", "2")
    assert bad.returncode == 1 and "--processes" in bad.stderr
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "--show-config", "--need-app"],
                  tmp_path)
    wait_port(port)
    log = pm.log()
    assert ";end of configuration" in log and f"socket = 127.0.0.1:{port}" in log
    pm.stop()


def test_ini_file_drives_the_server(tmp_path):
    port = free_port()
    ini = tmp_path / "app.ini"
    ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{port}\nwsgi-file = {ROOT / APP}\nmaster\n"
                   "processes = 2\n")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        pm.wait_workers(2)
        pm.wait_log(r"getting INI configuration from .*app\.ini")
        assert one_uwsgi(port, "/hello").startswith(b"HTTP/1.1 200")


def _python_usable_by_nobody() -> bool:
    def become_nobody():
        os.setgid(65534)
        os.setuid(65534)
    try:
        return subprocess.run([sys.executable, "-c", "import wsgiref.validate, psutil"],
                              preexec_fn=become_nobody, capture_output=True, timeout=30,
                              cwd="/").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_uid_gid_drop_after_binding(tmp_path):
    import tempfile
    from pathlib import Path

    import psutil
    shared = Path(tempfile.mkdtemp(prefix="pymaster-uid-"))   # pytest's tmp is root-only
    shared.chmod(0o755)
    app = shared / "whoami.py"          # imports nothing new: the interpreter's own files may
    app.write_text(                       # sit where nobody cannot read (e.g. under /root)
        "import os\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'uid=%d' % os.geteuid()]\n")
    app.chmod(0o644)
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "1",
                   "--uid", "nobody", "--gid", "nogroup"], tmp_path) as pm:
        wait_port(port)
        workers = pm.wait_workers(1)
        assert psutil.Process(pm.pid).uids().real == 65534
        assert psutil.Process(workers[0]).gids().effective == 65534
        assert one_uwsgi(port, "/").endswith(b"uid=65534")
        pm.wait_log(r"setgid\(\) to 65534")
        pm.wait_log(r"setuid\(\) to 65534")
        if _python_usable_by_nobody():     # a reload re-execs the interpreter as nobody
            pm.signal(signal.SIGHUP)
            pm.wait_log(r"gracefully \(RE\)spawned pymaster master process")
            pm.wait_workers(1, exclude=workers)
            assert one_uwsgi(port, "/").endswith(b"uid=65534")
    shutil.rmtree(shared)


def test_unknown_uid_is_a_clear_error(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", APP, "--uid", "no-such-user-x"],
                  tmp_path)
    assert pm.wait(10) == 1
    if os.geteuid() == 0:
        assert "unknown user 'no-such-user-x' (--uid)" in pm.log()
    pm.stop()


def test_listen_over_somaxconn_is_refused(tmp_path):
    limit = int(open("/proc/sys/net/core/somaxconn").read())
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", APP, "-l", str(limit + 1)],
                  tmp_path)
    assert pm.wait(10) == 1
    assert "greater than the system max net.core.somaxconn" in pm.log()
    pm.stop()


def test_module_pythonpath_callable_env_chdir_and_disable_logging(tmp_path):
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "mymod.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [(os.environ['GREETING'] + ' ' + os.getcwd()).encode()]\n")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--module", "mymod", "--callable", "app",
                   "--pythonpath", pkg, "--env", "GREETING=hi", "--chdir", tmp_path, "-L"],
                  tmp_path) as pm:
        wait_port(port)
        assert one_uwsgi(port, "/").endswith(f"hi {tmp_path}".encode())
        time.sleep(0.2)
        assert "GET /" not in pm.log()


def test_touch_chain_reload_and_reload_pidfile(tmp_path):
    touch, pidfile = tmp_path / "chain.touch", tmp_path / "pid"
    touch.write_text("x")
    with start(tmp_path, "--touch-chain-reload", touch, "--pidfile", pidfile) as pm:
        old = pm.workers()
        os.utime(touch, (time.time() + 5, time.time() + 5))
        pm.wait_log(r"chain reloading complete")
        pm.wait_workers(2, exclude=old)
        from pymaster import cli
        assert cli.main(["--reload", str(pidfile)]) == 0
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process")


def test_http_limit_post_413_and_expect_continue(tmp_path):
    import socket
    hport = free_port()
    with Pymaster(["--http-socket", f"127.0.0.1:{hport}", "--wsgi-file", APP, "--limit-post", "100"],
                  tmp_path):
        wait_port(hport)
        conn = http.client.HTTPConnection("127.0.0.1", hport, timeout=5)
        conn.request("POST", "/echo", body=b"x" * 500)
        assert conn.getresponse().status == 413
        with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"hello")
            data = b""
            while b"hello" not in data:
                data += s.recv(1000)
            assert data.startswith(b"HTTP/1.1 200 OK")


REAPER_APP = '''
import os, time
def application(environ, start_response):
    child = os.fork()
    if child == 0:                  # a child that leaves an orphan behind for PID 1
        if os.fork() == 0:
            time.sleep(0.3)
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"forked"]
'''


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_as_pid1_the_master_reaps_orphans_quietly(tmp_path):
    app = tmp_path / "reaper.py"
    app.write_text(REAPER_APP)
    port = free_port()
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "pymaster",
                             "-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port)
        for _ in range(3):
            assert one_uwsgi(port, "/").endswith(b"forked")
        time.sleep(1.5)
        import psutil
        zombies = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                   if p.status() == psutil.STATUS_ZOMBIE]
        assert zombies == []
        text = (tmp_path / "log").read_text()
        assert "spawned pymaster master process (pid: 1)" in text
        assert "subprocess" not in text
    finally:
        proc.kill()                 # --kill-child takes the whole namespace down with it
        proc.wait(10)
        log.close()


def test_full_reload_with_broken_code_keeps_serving_with_a_clear_error(tmp_path):
    # issue 13: a broken deploy no longer ends the instance (tests/integration/test_reload_failure.py)
    app = tmp_path / "app.py"
    app.write_text("def application(e, s):\n    s('200 OK', [])\n    return [b'ok']\n")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "1"], tmp_path) as pm:
        wait_port(port)
        old = pm.wait_workers(1)
        app.write_text("def broken(:\n")
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"\*\*\* reload aborted", timeout=20)  # one clear error, no crash loop
        log = pm.log()
        assert "SyntaxError" in log and log.count("unable to load app from") == 1
        assert "binary reloading pymaster" not in log
        assert pm.proc.poll() is None and pm.workers() == old
        assert one_uwsgi(port, "/").startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("algo", ["spare", "busyness", "backlog"])
def test_cheaper_algorithms_scale_up_under_load(tmp_path, algo):
    with start(tmp_path, "--cheaper", "1", "--cheaper-algo", algo, "--cheaper-overload", "1",
               "--cheaper-busyness-max", "10", processes=3, wait=1) as pm:
        requests = [Background(one_uwsgi, pm.port, "/sleep?s=0.5") for _ in range(16)]
        pm.wait_workers(2, timeout=10)
        for request in requests:
            request.join(30)


def test_fastrouter_processes_under_the_master_share_one_table_and_serve_stats(tmp_path):
    import json
    import socket
    fport, sport, stats = free_port(), free_port(), free_port()
    bport = free_port()
    with Pymaster(["--fastrouter", f"127.0.0.1:{fport}", "--fastrouter-subscription-server",
                   f"127.0.0.1:{sport}", "--fastrouter-processes", "2", "--fastrouter-stats",
                   f"127.0.0.1:{stats}"], tmp_path) as router:
        wait_port(fport)
        router.wait_log(r"the master process is enabled because of: fastrouter")
        assert len(router.wait_workers(2)) == 2
        with Pymaster(["-s", f"127.0.0.1:{bport}", "--wsgi-file", APP, "-M", "--subscribe-to",
                       f"127.0.0.1:{sport}:example.com"], tmp_path):
            wait_port(bport)
            router.wait_log(r"example\.com => new node: 127\.0\.0\.1:%d" % bport, count=2)
            env = {"HTTP_HOST": "example.com", "PATH_INFO": "/hello", "REQUEST_METHOD": "GET",
                   "SERVER_PROTOCOL": "HTTP/1.1"}
            from tests.pm import uwsgi_request
            for _ in range(10):
                assert uwsgi_request(fport, env).startswith(b"HTTP/1.1 200 OK")
            wait_port(stats)
            with socket.create_connection(("127.0.0.1", stats), timeout=5) as s:
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            doc = json.loads(data[data.find(b"{"):])
            subs = doc["subscriptions"]
            assert subs[0]["key"] == "example.com"
            assert subs[0]["nodes"][0]["name"] == f"127.0.0.1:{bport}"


def test_unix_socket_chmod_and_vacuum(tmp_path):
    import stat as stat_mod
    path = tmp_path / "app.sock"
    with Pymaster(["-s", path, "--wsgi-file", APP, "-M", "--chmod-socket=660", "--vacuum"],
                  tmp_path) as pm:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pm.wait_workers(1)
        assert stat_mod.S_IMODE(os.stat(path).st_mode) == 0o660
        import socket as socket_mod
        with socket_mod.socket(socket_mod.AF_UNIX) as s:
            s.connect(str(path))
            from pymaster.protocols import uwsgi as codec
            s.sendall(codec.encode_packet(0, {"PATH_INFO": "/hello", "REQUEST_METHOD": "GET",
                                              "SERVER_PROTOCOL": "HTTP/1.1"}))
            assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
        pm.signal(signal.SIGINT)
        assert pm.wait(10) == 0
        assert not path.exists() and "VACUUM: unix socket" in pm.log()


def test_logging_options(tmp_path):
    port = free_port()
    fmt = "CUSTOM %(method) %(uri) %(status) %(addr) %(var.HTTP_X_TAG) %(micros)us"
    with start(tmp_path, "--logformat", fmt, "--log-x-forwarded-for", processes=1) as pm:
        from tests.pm import uwsgi_get
        uwsgi_get(pm.port, "/hello", HTTP_X_FORWARDED_FOR="9.9.9.9", HTTP_X_TAG="t1")
        pm.wait_log(r"CUSTOM GET /hello 200 9\.9\.9\.9 t1 \d+us")
    with start(tmp_path, "-L", "--log-4xx", "--log-slow", "300", "--log-micros", processes=1) as pm:
        one_uwsgi(pm.port, "/hello")
        from tests.pm import uwsgi_get
        uwsgi_get(pm.port, "/nope")
        one_uwsgi(pm.port, "/sleep?s=0.5")
        pm.wait_log(r"GET /nope => generated \d+ bytes in \d+ micros \(HTTP/1\.1 404\)")
        pm.wait_log(r"GET /sleep\?s=0\.5 => generated")
        assert "GET /hello " not in pm.log()
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "--memory-report"], tmp_path) as pm:
        wait_port(port)
        one_uwsgi(port, "/hello")
        pm.wait_log(r"\{address space usage: \d+ bytes/\d+MB\} \{rss usage: \d+ bytes/\d+MB\} \[pid")


def test_virtualenv_home_and_unsupported_options(tmp_path):
    import venv
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(home)
    site_dirs = list(home.glob("lib/python*/site-packages"))
    (site_dirs[0] / "venvmod.py").write_text("VALUE = b'from the venv'\n")
    (tmp_path / "vapp.py").write_text(
        "import venvmod\n"
        "def application(e, s):\n    s('200 OK', [])\n    return [venvmod.VALUE]\n")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "vapp.py", "-H", home,
                   "--thunder-lock"], tmp_path) as pm:
        wait_port(port)
        assert one_uwsgi(port, "/").endswith(b"from the venv")
        assert "option --thunder-lock is accepted for uWSGI compatibility and has no effect" in pm.log()
    pm = Pymaster(["--http-enable-proxy-protocol", "-s", f"127.0.0.1:{free_port()}",
                   "--wsgi-file", APP], tmp_path)
    assert pm.wait(10) == 1
    assert "--http-enable-proxy-protocol: uWSGI's PROXY protocol v1 on the router is not part of pymaster" in pm.log()
    pm.stop()


def test_daemonize_detaches_and_logs_to_the_file(tmp_path):
    import psutil
    port = free_port()
    logfile = tmp_path / "daemon.log"
    pidfile = tmp_path / "pid"
    proc = subprocess.run([sys.executable, "-m", "pymaster", "-s", f"127.0.0.1:{port}",
                           "--wsgi-file", APP, "-M", "--daemonize", str(logfile),
                           "--pidfile", str(pidfile)], cwd=ROOT, timeout=30)
    assert proc.returncode == 0               # the parent returns at once
    wait_port(port)
    pid = int(pidfile.read_text())
    try:
        assert psutil.Process(pid).ppid() != os.getpid()
        assert one_uwsgi(port, "/hello").startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while "GET /hello" not in logfile.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.05)

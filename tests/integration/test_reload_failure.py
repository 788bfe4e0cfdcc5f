"""Issue 13 item 5: a reload into a broken app must not end the instance.

SIGHUP, fifo `r` or a touch first runs a reload check (the new image's start-up up to the app
import, in a child process); while it fails the old workers keep serving the code they have,
the error is logged once per attempt, and the next reload tries again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import textwrap
import time

import pytest

from tests.pm import (
    Background,
    Pymaster,
    free_port,
    split_response,
    uwsgi_get,
    uwsgi_request,
    wait_port,
)

APP = textwrap.dedent('''
    import os
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s " + str(os.getpid()).encode()]
''')
BROKEN = "raise RuntimeError('broken deploy')\n"
ABORTED = r"\*\*\* reload aborted"
ERROR = "unable to load app from"  # the loader's error: one per failed attempt


def get(port):
    status, _, body = split_response(uwsgi_get(port, "/"))
    assert status.endswith("200 OK"), body
    return body.decode()


def start(tmp_path, *extra):
    app = tmp_path / "app.py"
    app.write_text(APP % "v1")
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "2", *extra],
                  tmp_path)
    wait_port(port)
    pm.wait_workers(2)
    pm.port, pm.app = port, app
    return pm


def break_reload_and_recover(pm, reload):
    """Break the app, reload: old code keeps answering (queued requests too), one error;
    fix it, reload: the new code answers."""
    old = pm.workers()
    assert get(pm.port).startswith("v1 ")
    pm.app.write_text(BROKEN)
    reload()
    during = [Background(get, pm.port) for _ in range(4)]  # queued while the check runs
    pm.wait_log(ABORTED, timeout=20)
    assert all(r.join(10).startswith("v1 ") for r in during)
    assert get(pm.port).startswith("v1 ")
    assert pm.proc.poll() is None and pm.workers() == old
    assert pm.log().count(ERROR) == 1
    assert "...gracefully killing workers..." not in pm.log()
    pm.app.write_text(APP % "v2")
    reload()
    pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
    pm.wait_workers(2, exclude=old, timeout=20)
    assert get(pm.port).startswith("v2 ")
    assert pm.log().count(ERROR) == 1


def test_sighup_into_broken_app_keeps_old_code(tmp_path):
    with start(tmp_path) as pm:
        break_reload_and_recover(pm, lambda: pm.signal(signal.SIGHUP))


def test_each_failed_attempt_logs_its_error_once(tmp_path):
    with start(tmp_path) as pm:
        pm.app.write_text(BROKEN)
        for attempt in (1, 2):
            pm.signal(signal.SIGHUP)
            pm.wait_log(ABORTED, count=attempt, timeout=20)
            assert pm.log().count(ERROR) == attempt
        assert get(pm.port).startswith("v1 ")


def test_touch_reload_into_broken_app_keeps_old_code(tmp_path):
    touch = tmp_path / "touchme"
    touch.write_text("")
    with start(tmp_path, "--touch-reload", touch) as pm:
        def reload():
            time.sleep(0.05)
            os.utime(touch, ns=(time.time_ns(), time.time_ns()))
        break_reload_and_recover(pm, reload)


def test_lazy_apps_reload_into_broken_app_keeps_old_code(tmp_path):
    with start(tmp_path, "--lazy-apps") as pm:
        pm.wait_log(r"ready in worker", count=2)
        break_reload_and_recover(pm, lambda: pm.signal(signal.SIGHUP))


def test_fifo_reload_into_broken_config_keeps_old_code(tmp_path):
    fifo = tmp_path / "fifo"
    ini = tmp_path / "app.ini"
    app = tmp_path / "app.py"
    app.write_text(APP % "v1")
    port = free_port()
    ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{port}\nwsgi-file = {app}\nmaster = true\n"
                   f"processes = 2\nmaster-fifo = {fifo}\n")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        old = pm.wait_workers(2)
        ini.write_text(ini.read_text() + "buffer-size = 0\n")  # the new INI is refused
        fifo.write_bytes(b"r")
        pm.wait_log(ABORTED, timeout=20)
        assert pm.log().count("option '--buffer-size' must be >= 1") == 1
        assert get(port).startswith("v1 ") and pm.workers() == old


def test_restarted_image_that_cannot_load_keeps_its_sockets(tmp_path):
    """The race the check cannot close (the file broken between the check and the re-exec):
    the re-exec'd master stays up with its sockets and no workers; queued connections wait
    and are answered once the app is fixed and the master reloaded."""
    app = tmp_path / "app.py"
    app.write_text(BROKEN)
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "2"], tmp_path,
                  env={"UWSGI_RELOADS": "1"}) as pm:
        pm.wait_log(r"\*\*\* the reloaded app does not load", timeout=20)
        wait_port(port)
        assert pm.proc.poll() is None and pm.workers() == []
        queued = Background(get, port)
        time.sleep(0.5)
        app.write_text(APP % "v2")
        pm.signal(signal.SIGHUP)
        assert queued.join(30).startswith("v2 ")
        assert pm.log().count(ERROR) == 1


PSGI = "my $v = '%s';\nsub { [200, ['Content-Type' => 'text/plain'], [\"$v $$\"]] };\n"


def psgi_get(port):
    vars_ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "REQUEST_URI": "/",
             "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "localhost", "SERVER_PORT": str(port)}
    status, _, body = split_response(uwsgi_request(port, vars_, modifier1=5))
    assert status.endswith("200 OK"), body
    return body.decode()


@pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing")
def test_psgi_reload_into_broken_app_keeps_old_code(tmp_path):
    app = tmp_path / "app.psgi"
    app.write_text(PSGI % "v1")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--psgi", app, "-M", "-p", "2"], tmp_path) as pm:
        wait_port(port)
        pm.wait_log(r"spawned pymaster worker 2")
        deadline = time.monotonic() + 15
        while not psgi_get(port).startswith("v1 "):
            assert time.monotonic() < deadline
        old = pm.workers()
        app.write_text("die 'broken perl deploy';\n")
        pm.signal(signal.SIGHUP)
        pm.wait_log(ABORTED, timeout=30)
        assert psgi_get(port).startswith("v1 ") and pm.workers() == old
        assert pm.log().count("broken perl deploy") == 1
        app.write_text(PSGI % "v2")
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=30)
        deadline = time.monotonic() + 15
        while not psgi_get(port).startswith("v2 "):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_no_socket_is_reset_by_a_failed_reload(tmp_path):
    """A connection accepted by the kernel during the failed attempt is served, not reset."""
    with start(tmp_path) as pm:
        pm.app.write_text(BROKEN)
        pm.signal(signal.SIGHUP)
        with socket.create_connection(("127.0.0.1", pm.port), timeout=10) as sock:
            pm.wait_log(ABORTED, timeout=20)
            from pymaster.protocols import uwsgi as codec
            sock.sendall(codec.encode_packet(0, {"PATH_INFO": "/", "REQUEST_METHOD": "GET",
                                                 "SERVER_PROTOCOL": "HTTP/1.1"}))
            assert sock.recv(100).startswith(b"HTTP/1.1 200 OK")

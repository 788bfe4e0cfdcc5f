"""uWSGI options real configs use that pymaster now honours at start-up, over real processes:
umask, max-fd, chown-socket, honour-stdin, http11-socket, and the table's declared fates
(an inert option logged with its reason, a refused one stopping the start with what to use)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys

import pytest

from tests.client import exchange, uwsgi_get
from tests.pm import Pymaster, free_port, wait_port

APP = "tests/apps/conformance.py"


def _unix_ready(path, pm, timeout=10.0):
    pm.wait_log(r"spawned pymaster worker 1|Operational MODE", timeout=timeout)
    assert os.path.exists(path)


def test_umask_applies_to_the_socket_file(tmp_path):
    sock = tmp_path / "app.sock"
    with Pymaster(["-s", str(sock), "--wsgi-file", APP, "--umask", "077"], tmp_path) as pm:
        _unix_ready(sock, pm)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o700
    with Pymaster(["-s", str(sock), "--wsgi-file", APP, "--umask", "002"], tmp_path) as pm:
        _unix_ready(sock, pm)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o775


def test_bad_umask_is_one_clear_error(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", APP, "--umask", "9x"],
                  tmp_path)
    assert pm.wait(10) == 1
    assert "invalid umask: 9x (expected an octal mode such as 022)" in pm.log()
    pm.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="raising the hard limit needs root")
def test_max_fd_sets_the_limit_of_master_and_workers(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "1",
                   "--max-fd", "2345"], tmp_path) as pm:
        wait_port(port)
        [worker] = pm.wait_workers(1)
        assert "detected max file descriptor number: 2345" in pm.log()
        for pid in (pm.pid, worker):
            limits = open(f"/proc/{pid}/limits").read()
            line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
            assert line.split()[3:5] == ["2345", "2345"], line


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_socket_gives_the_unix_socket_to_the_user(tmp_path):
    nobody = pwd.getpwnam("nobody")
    sock = tmp_path / "app.sock"
    with Pymaster(["-s", str(sock), "--wsgi-file", APP, "--chown-socket", "nobody:nogroup",
                   "--chmod-socket=660"], tmp_path) as pm:
        _unix_ready(sock, pm)
        st = os.stat(sock)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert f"chown() socket {sock} to nobody:nogroup" in pm.log()


def test_chown_socket_to_an_unknown_user_is_an_error(tmp_path):
    pm = Pymaster(["-s", str(tmp_path / "a.sock"), "--wsgi-file", APP,
                   "--chown-socket", "no-such-user-here"], tmp_path)
    assert pm.wait(10) == 1
    assert "--chown-socket no-such-user-here: unknown user 'no-such-user-here'" in pm.log()
    pm.stop()


def _stdin_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/0")


def test_stdin_is_dev_null_unless_honour_stdin(tmp_path):
    port = free_port()
    read, write = os.pipe()
    try:
        for extra, expect_null in (([], True), (["--honour-stdin"], False)):
            log = tmp_path / f"log{len(extra)}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "pymaster", "-s", f"127.0.0.1:{port}", "--wsgi-file",
                 APP, "--logto", str(log), *extra], stdin=read, cwd=os.getcwd())
            try:
                wait_port(port)
                target = _stdin_of(proc.pid)
                assert (target == "/dev/null") is expect_null, target
                if not expect_null:
                    assert target.startswith("pipe:")
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        os.close(read)
        os.close(write)


def test_http11_socket_serves_http_with_keep_alive(tmp_path):
    port = free_port()
    with Pymaster(["--http11-socket", f"127.0.0.1:{port}", "--wsgi-file", APP], tmp_path):
        wait_port(port)
        raw = exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert raw.count(b"HTTP/1.1 200 OK") == 2


def test_inert_options_are_logged_with_their_reason(tmp_path):
    ini = tmp_path / "app.ini"
    port = free_port()
    ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{port}\nwsgi-file = {os.path.abspath(APP)}\n"
                   "no-orphans = true\nclose-on-exec = true\nksm\nharakiri-verbose = true\n")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        assert uwsgi_get(port, "/hello").startswith(b"HTTP/1.1 200")
        log = pm.log()
        for line in (
            "option --no-orphans is accepted for uWSGI compatibility and has no effect: "
            "pymaster's workers and gateways always die with the master",
            "option --close-on-exec is accepted for uWSGI compatibility and has no effect: "
            "Python's descriptors are close-on-exec already (PEP 446)",
            "option --ksm is accepted for uWSGI compatibility and has no effect",
            "option --harakiri-verbose is accepted for uWSGI compatibility and has no effect",
        ):
            assert line in log
        assert "unknown option" not in log


def test_refused_option_says_what_to_use_instead(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", APP,
                   "--http", f"127.0.0.1:{free_port()}", "--http-raw-body"], tmp_path)
    assert pm.wait(10) == 1
    assert ("--http-raw-body: uWSGI's raw request body forwarding is not part of pymaster; "
            "the router de-chunks") in pm.log()
    pm.stop()


def test_protocol_http_makes_the_socket_an_http_socket(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--protocol", "http", "--wsgi-file", APP],
                  tmp_path):
        wait_port(port)
        raw = exchange(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK")


def test_py_autoreload_reloads_the_instance_when_a_module_changes(tmp_path):
    import time

    mod = tmp_path / "reloadmod.py"
    mod.write_text("VALUE = b'one'\n")
    app = tmp_path / "app.py"
    app.write_text("import reloadmod\n"
                   "def application(e, s):\n    s('200 OK', [])\n    return [reloadmod.VALUE]\n")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "--pythonpath", tmp_path,
                   "-M", "-p", "2", "--py-autoreload", "1"], tmp_path) as pm:
        wait_port(port)
        assert uwsgi_get(port, "/").endswith(b"one")
        pm.wait_log(r"Python auto-reloader enabled")
        time.sleep(1.5)  # the baseline scan has run
        mod.write_text("VALUE = b'two'\n")
        os.utime(mod, (time.time() + 5, time.time() + 5))
        pm.wait_log(rf"\[uwsgi-python-reloader\] module/file {mod} has been modified", timeout=10)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=15)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if uwsgi_get(port, "/").endswith(b"two"):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert uwsgi_get(port, "/").endswith(b"two")

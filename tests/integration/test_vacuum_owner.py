"""Issue 13 item 6: --vacuum removes only what is still ours.

Two instances on the same unix socket path and pidfile, in sequence: the second unlinks and
rebinds the path while the first still runs. Stopping the first with --vacuum must leave the
second's socket (it still answers) and pidfile alone, also after either was reloaded.
"""

from __future__ import annotations

import signal
import socket
import time

from pymaster.protocols import uwsgi as codec
from tests.pm import Pymaster

APP = "tests/apps/conformance.py"


def answers(path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(codec.encode_packet(0, {"PATH_INFO": "/hello", "REQUEST_METHOD": "GET",
                                             "SERVER_PROTOCOL": "HTTP/1.1"}))
        return sock.recv(100).startswith(b"HTTP/1.1 200 OK")


def instance(tmp_path, path, pidfile):
    pm = Pymaster(["-s", path, "--wsgi-file", APP, "-M", "--vacuum", "--pidfile", pidfile],
                  tmp_path)
    pm.wait_log(r"uwsgi socket 0 bound to UNIX address")
    pm.wait_workers(1)
    deadline = time.monotonic() + 10
    while not answers(path):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return pm


def reload(pm, times=1):
    before = pm.workers()
    pm.signal(signal.SIGHUP)
    pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", count=times, timeout=20)
    pm.wait_workers(1, exclude=before, timeout=20)


def test_vacuum_leaves_the_socket_and_pidfile_another_instance_took(tmp_path):
    path, pidfile = tmp_path / "app.sock", tmp_path / "app.pid"
    first = instance(tmp_path, path, pidfile)
    with first:
        with instance(tmp_path, path, pidfile) as second:   # takes the path over
            assert pidfile.read_text() == f"{second.pid}\n"
            first.signal(signal.SIGINT)
            assert first.wait(10) == 0
            log = first.log()
            assert f"VACUUM WARNING: unix socket {path} changed inode. Skip removal" in log
            assert f"VACUUM WARNING: pidfile {pidfile} now holds pid {second.pid}" in log
            assert "VACUUM: pidfile removed." not in log
            assert path.exists() and answers(path)
            assert pidfile.read_text() == f"{second.pid}\n"
            second.signal(signal.SIGINT)                    # its own: removed
            assert second.wait(10) == 0
            assert f"VACUUM: unix socket {path} removed." in second.log()
            assert "VACUUM: pidfile removed." in second.log()
            assert not path.exists() and not pidfile.exists()


def test_the_record_of_what_is_ours_survives_a_reload(tmp_path):
    path, pidfile = tmp_path / "app.sock", tmp_path / "app.pid"
    first = instance(tmp_path, path, pidfile)
    with first:
        reload(first)                                       # inherits its socket
        with instance(tmp_path, path, pidfile) as second:
            reload(second)
            first.signal(signal.SIGINT)
            assert first.wait(10) == 0
            assert "changed inode. Skip removal" in first.log()
            assert answers(path)
            reload(second, times=2)
            second.signal(signal.SIGINT)
            assert second.wait(10) == 0
            assert f"VACUUM: unix socket {path} removed." in second.log()
            assert not path.exists() and not pidfile.exists()

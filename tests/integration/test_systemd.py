"""systemd integration: sd_notify messages around start/reload/stop, and socket activation."""

import os
import signal
import socket
import subprocess
import sys
import time

from tests.load import one_uwsgi
from tests.pm import ROOT, Pymaster, free_port, wait_port

APP = "tests/apps/conformance.py"


def collect(sock, until: bytes, timeout: float = 15.0) -> list[bytes]:
    got = []
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            continue
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} in {got!r}")


def test_notify_ready_reloading_stopping(tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind(path)
        port = free_port()
        pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "2"], tmp_path,
                      env={"NOTIFY_SOCKET": path})
        try:
            first = collect(ns, b"READY=1")
            assert any(b"MAINPID=%d" % pm.pid in m for m in first)
            pm.signal(signal.SIGHUP)
            around = collect(ns, b"READY=1")
            assert any(b"RELOADING=1" in m for m in around)
            pm.signal(signal.SIGTERM)
            assert any(b"STOPPING=1" in m for m in collect(ns, b"STOPPING=1"))
            assert pm.wait(15) == 0
        finally:
            pm.stop()


def test_socket_activation_adopts_listen_fds(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    log = open(tmp_path / "log", "wb")

    def to_fd3():
        os.dup2(listener.fileno(), 3)
        os.set_inheritable(3, True)

    # LISTEN_PID must be the pid that execs pymaster: a shell sets it to its own pid, then execs
    cmd = ("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=uwsgi exec "
           f"{sys.executable} -m pymaster --wsgi-file {APP} -M -p 2")
    proc = subprocess.Popen(["sh", "-c", cmd], preexec_fn=to_fd3,
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, close_fds=False)
    try:
        listener.close()
        wait_port(port)
        assert one_uwsgi(port, "/hello").startswith(b"HTTP/1.1 200")
        text = (tmp_path / "log").read_text()
        assert "SystemD socket activation detected" in text
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "gracefully (RE)spawned" not in (tmp_path / "log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert one_uwsgi(port, "/hello").startswith(b"HTTP/1.1 200")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        log.close()

"""Regression tests for defects found in review: each reproduces the original failure."""

import os
import signal
import socket
import textwrap
import time

from tests.load import one_uwsgi
from tests.pm import Background, Pymaster, exchange, free_port, wait_port

LIAR = textwrap.dedent('''
    import time
    def application(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/short":
            start_response("200 OK", [("Content-Length", "2")])
            return [b"hello"]
        if path == "/long":
            start_response("200 OK", [("Content-Length", "10")])
            return [b"hi"]
        if path == "/headers":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [environ.get("HTTP_X_FORWARDED_FOR", "-").encode()]
        if path == "/slow":
            time.sleep(1.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
''')


def app(tmp_path):
    path = tmp_path / "liar.py"
    path.write_text(LIAR)
    return path


def test_app_content_length_is_enforced_on_keepalive(tmp_path):
    port = free_port()
    with Pymaster(["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", app(tmp_path)], tmp_path):
        wait_port(port)
        data = exchange(port, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first, second = data.split(b"HTTP/1.1 200 OK")[1:]
        assert first.endswith(b"\r\n\r\nhe") and second.endswith(b"\r\n\r\nok")
        # fewer bytes than announced: the connection closes instead of desynchronising
        data = exchange(port, b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
        assert data.endswith(b"\r\n\r\nhi")


def test_header_names_with_underscores_are_dropped(tmp_path):
    port = free_port()
    with Pymaster(["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", app(tmp_path)], tmp_path):
        wait_port(port)
        data = exchange(port, b"GET /headers HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\n"
                              b"Connection: close\r\n\r\n")
        assert data.endswith(b"\r\n\r\n-")


def test_pause_does_not_count_against_harakiri(tmp_path):
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app(tmp_path), "-M", "-p", "1",
                   "--harakiri", "2"], tmp_path) as pm:
        wait_port(port)
        pm.wait_workers(1)
        request = Background(one_uwsgi, port, "/slow")
        time.sleep(0.3)
        pm.signal(signal.SIGTSTP)
        time.sleep(3.0)
        pm.signal(signal.SIGTSTP)
        assert request.join(10).endswith(b"ok")
        time.sleep(1.2)
        assert "HARAKIRI" not in pm.log()


def test_a_socket_removed_from_the_config_is_closed_after_reload(tmp_path):
    a, b = free_port(), free_port()
    ini = tmp_path / "x.ini"
    target = app(tmp_path)
    ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{a}\nsocket = 127.0.0.1:{b}\n"
                   f"wsgi-file = {target}\nmaster\n")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(b)
        ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{b}\nwsgi-file = {target}\nmaster\n")
        for n in (1, 2):
            pm.signal(signal.SIGHUP)
            pm.wait_log(r"gracefully \(RE\)spawned", count=n)
            wait_port(b)
        try:
            socket.create_connection(("127.0.0.1", a), timeout=1).close()
            raise AssertionError(f"port {a} still accepts after it left the configuration")
        except ConnectionRefusedError:
            pass
        fds = os.listdir(f"/proc/{pm.pid}/fd")
        sockets = [f for f in fds if os.readlink(f"/proc/{pm.pid}/fd/{f}").startswith("socket:")]
        assert len(sockets) == 1


def test_reload_during_a_chain_reload_completes(tmp_path):
    port = free_port()
    fifo = tmp_path / "fifo"
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app(tmp_path), "-M", "-p", "3",
                   "--lazy-apps", "--master-fifo", fifo], tmp_path) as pm:
        wait_port(port)
        pm.wait_log(r"ready in worker", count=3)
        fifo.write_bytes(b"c")
        pm.wait_log(r"chain next victim")
        pm.signal(signal.SIGHUP)
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
        pm.wait_workers(3, timeout=15)
        assert one_uwsgi(port, "/ok").endswith(b"ok")

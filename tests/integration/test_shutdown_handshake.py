"""Graceful shutdown does not reset a connection whose handshake completed before it: the
client connected, the master then got SIGTERM, and the request arrives a moment later (a
router's connect followed by its packet; with TCP_DEFER_ACCEPT such a connection is not even
in the accept queue until its data arrives). Found by the cluster test under load."""

from __future__ import annotations

import signal
import socket
import time

from tests.client import uwsgi_packet, uwsgi_vars
from tests.pm import Pymaster, free_port, wait_port

APP = "tests/apps/conformance.py"


def test_a_request_sent_just_after_sigterm_on_an_open_connection_is_answered(tmp_path):
    port = free_port()
    pm = Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "2"], tmp_path)
    try:
        wait_port(port)
        pm.wait_workers(2)
        time.sleep(0.5)
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)
        pm.signal(signal.SIGTERM)
        time.sleep(0.1)
        answers = []
        for sock in socks:
            sock.settimeout(10)
            sock.sendall(uwsgi_packet(uwsgi_vars("/hello", port=port)))
        for sock in socks:
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError as exc:
                data = repr(exc).encode()
            sock.close()
            answers.append(data[:15])
        assert answers == [b"HTTP/1.1 200 OK"] * 4, answers
        assert pm.wait(20) == 0
    finally:
        pm.stop()

"""pymaster's fastrouter in front of REAL uWSGI backends that subscribe to it: rotation,
modifier rewriting, no node -> 503, kill -9 of a backend, unix-socket nodes, concurrent load.

Routers run as a user runs them: `pymaster --master --fastrouter ADDR
--fastrouter-subscription-server ADDR ...`, the master binding the sockets and supervising
the router processes. Everything is on loopback; every process tree is killed on exit
(tests.external)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import textwrap
import threading
import time

import psutil
import pytest

from pymaster.config import parse
from tests.external import (
    free_port,
    parse_http_response,
    pymaster,
    tmpdir,
    uwsgi,
    uwsgi_plugin_available,
    uwsgi_request,
    uwsgi_vars,
)

pytestmark = pytest.mark.skipif(not uwsgi_plugin_available("python3"),
                                reason="uWSGI python3 plugin not installed")

APP = textwrap.dedent('''
    import os
    def application(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"PID: %d LEN: %d KEY: %s" % (os.getpid(), len(body),
                environ.get("HTTP_HOST", "").encode())]
''')


@pytest.fixture(scope="module")
def app_file():
    with tmpdir("fr-app") as tmp:
        path = tmp / "app.py"
        path.write_text(APP)
        yield str(path)


@contextlib.contextmanager
def router(*extra: str, port: int | None = None, sub_port: int | None = None,
           tolerance: int = 17, runtime_dir=None):
    """pymaster with a fastrouter under its master; yields the Server with .port, .sub_port
    and .rundir (the router's state directory base, $PYMASTER_RUNTIME_DIR)."""
    port = port or free_port()
    sub_port = sub_port or free_port()
    with contextlib.ExitStack() as stack:
        rundir = runtime_dir or stack.enter_context(tmpdir("fr-run"))
        args = ["--master", "--fastrouter", f"127.0.0.1:{port}",
                "--fastrouter-subscription-server", f"127.0.0.1:{sub_port}",
                "--subscription-tolerance", str(tolerance), *extra]
        server = stack.enter_context(pymaster(args, ports=[port],
                                              env={"PYMASTER_RUNTIME_DIR": str(rundir)}))
        server.sub_port = sub_port
        server.rundir = rundir
        yield server


def backend(app_file: str, port: int | str, *extra: str, processes: int = 1):
    sock = f"127.0.0.1:{port}" if isinstance(port, int) else port
    return uwsgi(["--socket", sock, "--wsgi-file", app_file, "--master", "-p", str(processes),
                  "--need-app", "--subscribe-freq", "1", *extra],
                 ports=[port] if isinstance(port, int) else [])


def request(port: int, key: str, body: bytes = b"", modifier1: int = 0, **extra):
    env = uwsgi_vars("/", UWSGI_FASTROUTER_KEY=key, CONTENT_LENGTH=str(len(body)) if body else "",
                     **extra)
    return parse_http_response(uwsgi_request(port, env, body, modifier1=modifier1))


def pid_of(resp) -> int:
    return int(resp.text.split("PID: ")[1].split()[0])


def stats(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data)


def wait_until(predicate, timeout: float = 10.0, what: str = "condition", step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def worker_pids(server) -> set[int]:
    return {p.pid for p in psutil.Process(server.pid).children(recursive=True)}


def wait_pids(port: int, key: str, want: int, timeout: float = 10.0) -> set[int]:
    """Ask until `want` distinct backend PIDs answered for `key`."""
    seen: set[int] = set()

    def enough():
        with contextlib.suppress(ValueError, OSError, IndexError):
            resp = request(port, key)
            if resp.status == 200:
                seen.add(pid_of(resp))
        return len(seen) >= want
    wait_until(enough, timeout, f"{want} backends for {key!r}")
    return seen


def subscribe_once(sub_port: int, key: str, address: str, *options: str):
    """One subscription datagram from pymaster's Subscriber (no heartbeats afterwards);
    `options` are more pymaster options, e.g. "--subscriptions-sign-secret", FILE."""
    from pymaster.master.subscriber import Subscriber
    cfg = parse(["--subscribe-to", f"127.0.0.1:{sub_port}:{key}", *options], {})
    sub = Subscriber(cfg, address, 1)
    sub.start()
    return sub


# --------------------------------------------------------------------------- tests

def test_rotation_modifier_rewrite_and_503(app_file):
    with router() as fr:
        ports = [free_port(), free_port()]
        with backend(app_file, ports[0], "--subscribe-to", f"127.0.0.1:{fr.sub_port}:app.test") \
                as b1, backend(app_file, ports[1], "--subscribe-to",
                               f"127.0.0.1:{fr.sub_port}:app.test") as b2:
            seen = wait_pids(fr.port, "app.test", 2)
            assert seen <= worker_pids(b1) | worker_pids(b2)  # read once both answered
            # equal weights: strict alternation
            got = [pid_of(request(fr.port, "app.test")) for _ in range(6)]
            assert got[0::2] == [got[0]] * 3 and got[1::2] == [got[1]] * 3 and got[0] != got[1]
            # the client's modifier1 5 is rewritten to the node's 0 (python answers)
            resp = request(fr.port, "app.test", body=b"x" * 1000, modifier1=5)
            assert resp.status == 200 and "LEN: 1000" in resp.text
            # key precedence: UWSGI_FASTROUTER_KEY > HTTP_HOST > SERVER_NAME
            env = uwsgi_vars("/", host="nope.test", SERVER_NAME="app.test")
            del env["HTTP_HOST"]
            assert parse_http_response(uwsgi_request(fr.port, env)).status == 200
            # no node for a key: 503 naming the key, and one log line
            resp = request(fr.port, "missing.test")
            assert resp.status == 503 and b"missing.test" in resp.body
            assert 'no node available for key "missing.test"' in fr.logtext()
            env = uwsgi_vars("/", host="", SERVER_NAME="")
            assert parse_http_response(uwsgi_request(fr.port, env)).status == 503
        log = fr.logtext()
        assert "new pool: app.test" in log and log.count("app.test => new node") == 2


def test_kill_9_backend_fails_over(app_file):
    with router() as fr:
        ports = [free_port(), free_port()]
        sub = ["--subscribe-to", f"127.0.0.1:{fr.sub_port}:k9.test"]
        with backend(app_file, ports[0], *sub) as b1, backend(app_file, ports[1], *sub) as b2:
            wait_pids(fr.port, "k9.test", 2)
            victim = b1
            for proc in [psutil.Process(victim.pid)] + psutil.Process(victim.pid).children(True):
                proc.kill()
            victim.proc.wait(timeout=5)
            survivors = worker_pids(b2)
            results = [request(fr.port, "k9.test") for _ in range(10)]
            assert all(r.status == 200 and pid_of(r) in survivors for r in results), results
            log = fr.logtext()
            assert f'unable to connect() to node "127.0.0.1:{ports[0]}" (0 retries): ' \
                   f'Connection refused' in log
            assert f"k9.test => marking 127.0.0.1:{ports[0]} as failed" in log


def test_unix_socket_nodes_and_dead_unix_node(app_file):
    with router() as fr, tmpdir("fr-unix") as tmp:
        path = str(tmp / "b.sock")
        with backend(app_file, path, "--subscribe-to", f"127.0.0.1:{fr.sub_port}:u.test") as b:
            wait_until(lambda: os.path.exists(path), 10, "unix backend socket")
            assert wait_pids(fr.port, "u.test", 1) <= worker_pids(b)
            # a node whose unix path is missing: marked failed, the next node serves
            missing = str(tmp / "missing.sock")
            subscribe_once(fr.sub_port, "u.test", missing)
            wait_until(lambda: "u.test => new node: " + missing in fr.logtext(), 5, "new node")
            for _ in range(4):
                resp = request(fr.port, "u.test")
                assert resp.status == 200 and pid_of(resp) in worker_pids(b)
            log = fr.logtext()
            assert f'unable to connect() to node "{missing}" (0 retries): No such file or ' \
                   f'directory' in log
            assert f"u.test => marking {missing} as failed" in log
        # the only node gone and refusing: 502 after the retries, never a hang
        resp = request(fr.port, "u.test")
        assert resp.status in (502, 503)


def test_concurrent_load_zero_errors(app_file):
    threads_n, per_thread = 8, 40
    with router("--fastrouter-processes", "2") as fr:
        ports = [free_port(), free_port()]
        sub = ["--subscribe-to", f"127.0.0.1:{fr.sub_port}:load.test"]
        with backend(app_file, ports[0], *sub, processes=2), \
                backend(app_file, ports[1], *sub, processes=2):
            wait_pids(fr.port, "load.test", 2)
            errors: list = []
            count = [0]

            def client(n):
                for i in range(per_thread):
                    size = (i * 7919 + n * 104729) % 300_000 if i % 4 == 0 else i
                    try:
                        resp = request(fr.port, "load.test", body=os.urandom(size))
                        if resp.status != 200 or f"LEN: {size} " not in resp.text:
                            errors.append(resp.text[:100])
                        count[0] += 1
                    except Exception as exc:        # noqa: BLE001 - collected for the assert
                        errors.append(repr(exc))
            started = time.monotonic()
            threads = [threading.Thread(target=client, args=(n,)) for n in range(threads_n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            elapsed = time.monotonic() - started
            assert errors == [] and count[0] == threads_n * per_thread
            print(f"{count[0]} requests (25% with bodies up to 300 kB) in {elapsed:.2f} s "
                  f"through 2 router processes")


STREAM_APP = textwrap.dedent('''
    import time
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first-chunk;"
        time.sleep(0.6)
        yield b"second-chunk"
''')


def test_timeout_garbage_datagrams_bad_vars_and_streaming():
    with tmpdir("fr-stream") as tmp, router("--fastrouter-timeout", "1") as fr:
        app = tmp / "stream.py"
        app.write_text(STREAM_APP)
        port = free_port()
        with backend(str(app), port, "--subscribe-to", f"127.0.0.1:{fr.sub_port}:s.test"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for i in range(200):                # hostile datagrams do not hurt the router
                    udp.sendto(os.urandom(i * 3) if i % 2 else b"\xe0\xff\xff\x00" + b"\x03\x00key"
                               + b"\xff\xff", ("127.0.0.1", fr.sub_port))
            wait_until(lambda: "s.test => new node" in fr.logtext(), 5, "subscription")
            # the response is streamed: the first chunk arrives before the app sends the second
            with socket.create_connection(("127.0.0.1", fr.port), timeout=5) as sock:
                from tests.external import uwsgi_packet
                started = time.monotonic()
                sock.sendall(uwsgi_packet(uwsgi_vars("/", UWSGI_FASTROUTER_KEY="s.test")))
                data = b""
                while b"first-chunk;" not in data:
                    data += sock.recv(65536)
                first_at = time.monotonic() - started
                while chunk := sock.recv(65536):
                    data += chunk
                total = time.monotonic() - started
            assert data.endswith(b"first-chunk;second-chunk"), data
            assert first_at < 0.5 <= total, (first_at, total)
            # malformed vars: closed without an answer; an idle client: closed after ~1 s
            with socket.create_connection(("127.0.0.1", fr.port), timeout=5) as sock:
                sock.sendall(b"\x00\x06\x00\x00\x05\x00ab")
                assert sock.recv(100) == b""
            with socket.create_connection(("127.0.0.1", fr.port), timeout=5) as sock:
                started = time.monotonic()
                assert sock.recv(100) == b""
                assert 0.8 < time.monotonic() - started < 3
            assert request(fr.port, "s.test").status == 200
        assert "rejected subscription datagram from 127.0.0.1" in fr.logtext()


def test_sighup_finishes_in_flight_sessions():
    with tmpdir("fr-hup") as tmp, router() as fr:
        app = tmp / "stream.py"
        app.write_text(STREAM_APP)
        port = free_port()
        with backend(str(app), port, "--subscribe-to", f"127.0.0.1:{fr.sub_port}:h.test"):
            wait_until(lambda: "h.test => new node" in fr.logtext(), 5, "subscription")
            old = set(fr.children())
            with socket.create_connection(("127.0.0.1", fr.port), timeout=5) as sock:
                from tests.external import uwsgi_packet
                sock.sendall(uwsgi_packet(uwsgi_vars("/", UWSGI_FASTROUTER_KEY="h.test")))
                data = sock.recv(65536)
                os.kill(fr.pid, signal.SIGHUP)      # the router stops accepting, finishes this
                while chunk := sock.recv(65536):
                    data += chunk
            assert data.endswith(b"first-chunk;second-chunk"), data
            assert "stops accepting, waiting for 1 session(s)" in fr.logtext()
            wait_until(lambda: set(fr.children()) and not set(fr.children()) & old, 5,
                       "a new router process")
            assert request(fr.port, "h.test").status == 200

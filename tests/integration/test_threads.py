"""--threads N over real processes: N request threads (cores) per Python worker.

A slow request holds back no other in the same worker, `wsgi.multithread` says so, harakiri
watches each core's request, SIGHUP and max-requests recycling finish every request in
flight on every thread, the stats `cores` array has one entry per thread, and an app keeping
per-request state in thread-locals (as Django does) sees its own request only."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from tests.client import http_get, uwsgi_get
from tests.pm import Background, Pymaster, free_port, wait_port

APP = r'''
import json
import os
import threading
import time

local = threading.local()  # what Django keeps per request (the active request, the db link)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    if path == "/sleep":
        time.sleep(float(query or "1"))
        body = b"slept"
    elif path == "/env":
        body = json.dumps({
            "multithread": environ["wsgi.multithread"],
            "core": environ.get("uwsgi.core"),
            "thread": threading.current_thread().name,
            "pid": os.getpid(),
        }).encode()
    elif path == "/local":
        local.request = query
        time.sleep(0.2)  # other requests run on other threads meanwhile
        body = f"{query}={getattr(local, 'request', None)}".encode()
    elif path == "/echo":
        body = environ["wsgi.input"].read()
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def start(tmp_path, *extra, processes=1, threads=4):
    app = tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    args = ["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", str(processes)]
    if threads is not None:
        args += ["--threads", str(threads)]
    pm = Pymaster([*args, *extra], tmp_path)
    wait_port(port)
    pm.wait_workers(processes)
    pm.port = port
    return pm


def get(port, path, timeout=20.0):
    return http_get(port, path, timeout=timeout)


def test_four_slow_requests_run_at_once_in_one_worker(tmp_path):
    with start(tmp_path) as pm:
        pm.wait_log(r"\*\*\* Operational MODE: threaded \*\*\*")
        pm.wait_log(r"spawned pymaster worker 1 \(pid: \d+, cores: 4\)")
        get(pm.port, "/hello")
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as ex:
            answers = list(ex.map(lambda _: get(pm.port, "/sleep?1"), range(4)))
        elapsed = time.monotonic() - t0
        assert [a.body for a in answers] == [b"slept"] * 4
        assert elapsed < 1.8, f"4 x 1 s on 4 threads took {elapsed:.2f} s"
        # the request log is unchanged, with the core that ran each request
        lines = pm.wait_log(r"GET /sleep\?1 => generated 5 bytes in \d+ msecs "
                            r"\(HTTP/1.1 200\) 2 headers in \d+ bytes \(1 switches on core (\d)\)",
                            count=4)
        assert len(set(lines)) == 4


def test_wsgi_multithread_true_with_threads_false_without(tmp_path):
    with start(tmp_path) as pm:
        env = json.loads(get(pm.port, "/env").body)
        assert env["multithread"] is True
        assert env["core"] in range(4)
        assert re.fullmatch(r"uWSGIWorker1Core[0-3]", env["thread"])
    for threads in (None, 1):
        with start(tmp_path, threads=threads) as pm:
            env = json.loads(get(pm.port, "/env").body)
            assert env["multithread"] is False and env["core"] is None
            pm.wait_log(r"\*\*\* Operational MODE: single process \*\*\*")
            assert "cores: 1)" in pm.log()


def test_preforking_threaded_mode_line(tmp_path):
    with start(tmp_path, processes=2, threads=2) as pm:
        pm.wait_log(r"\*\*\* Operational MODE: preforking\+threaded \*\*\*")


def test_harakiri_names_the_slow_request_and_spares_nothing_else(tmp_path):
    with start(tmp_path, "--harakiri", "2") as pm:
        first = pm.workers()[0]
        slow = Background(lambda: get(pm.port, "/sleep?10"))
        time.sleep(0.3)
        # short requests keep completing on the other cores: the slow one is still killed
        for _ in range(5):
            assert get(pm.port, "/hello").body == b"hello"
            time.sleep(0.3)
        pm.wait_log(r"HARAKIRI \[core \d\] 127\.0\.0\.1 - GET /sleep\?10 since \d+|"
                    r"HARAKIRI \[core \d\] GET /sleep\?10 since \d+", timeout=10)
        pm.wait_log(r"HARAKIRI !!! end of worker 1 status !!!")
        pm.wait_log(r'File ".*app\.py", line \d+ in application')  # the threads' stacks
        assert "HARAKIRI [core" in pm.log() and pm.log().count("GET /hello") >= 5
        try:
            slow.join(10)
        except OSError:
            pass  # the connection died with the worker, as in uWSGI
        pm.wait_workers(1, exclude=[first])
        assert get(pm.port, "/hello").body == b"hello"


def test_sighup_finishes_the_requests_in_flight_on_every_thread(tmp_path):
    with start(tmp_path) as pm:
        first = pm.workers()[0]
        inflight = [Background(get, pm.port, f"/sleep?{1 + i * 0.3}") for i in range(4)]
        time.sleep(0.4)
        pm.signal(signal.SIGHUP)
        assert [r.join(20).body for r in inflight] == [b"slept"] * 4
        pm.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=15)
        wait_port(pm.port)
        pm.wait_workers(1, exclude=[first], timeout=15)
        assert get(pm.port, "/hello").body == b"hello"


def test_max_requests_recycles_after_the_requests_in_flight(tmp_path):
    with start(tmp_path, "--max-requests", "3", "--min-worker-lifetime", "0") as pm:
        first = pm.workers()[0]
        get(pm.port, "/hello")
        with ThreadPoolExecutor(6) as ex:
            answers = list(ex.map(lambda i: get(pm.port, f"/sleep?{0.5 + 0.1 * i}"), range(6)))
        assert [a.body for a in answers] == [b"slept"] * 6
        pm.wait_log(r"\.\.\.The work of process \d+ is done\. Seeya!")
        pm.wait_workers(1, exclude=[first], timeout=15)
        assert get(pm.port, "/hello").body == b"hello"


def _stats(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return json.loads(data)


def test_stats_cores_one_per_thread_with_requests_and_in_request(tmp_path):
    sport = free_port()
    with start(tmp_path, "--stats", f"127.0.0.1:{sport}", threads=3) as pm:
        wait_port(sport)
        for _ in range(3):
            get(pm.port, "/hello")
        slow = Background(get, pm.port, "/sleep?1.5")
        time.sleep(0.5)
        cores = _stats(sport)["workers"][0]["cores"]
        assert [c["id"] for c in cores] == [0, 1, 2]
        assert sum(c["in_request"] for c in cores) == 1
        busy = next(c for c in cores if c["in_request"])
        assert busy["req_info"]["request_start"] > 0
        slow.join(10)
        cores = _stats(sport)["workers"][0]["cores"]
        assert sum(c["requests"] for c in cores) == 4
        assert sum(c["in_request"] for c in cores) == 0


def test_thread_locals_stay_with_their_request(tmp_path):
    with start(tmp_path) as pm:
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda i: get(pm.port, f"/local?r{i}").body, range(16)))
        assert answers == [f"r{i}=r{i}".encode() for i in range(16)]


def test_keep_alive_connection_is_served_by_any_free_thread(tmp_path):
    """A kept-alive client is not pinned to the thread that served it: its next request runs
    while that thread is busy with another client's slow request."""
    import http.client

    with start(tmp_path, "--http-keepalive", "5", threads=2) as pm:
        conn = http.client.HTTPConnection("127.0.0.1", pm.port, timeout=10)
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"hello"
        slow = Background(get, pm.port, "/sleep?2")
        time.sleep(0.3)
        t0 = time.monotonic()
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"hello"
        assert time.monotonic() - t0 < 1.0
        conn.close()
        assert slow.join(10).body == b"slept"


def test_thread_stacksize_is_applied(tmp_path):
    with start(tmp_path, "--thread-stacksize", "512", threads=2) as pm:
        pm.wait_log(r"threads stack size set to 512k")
        assert get(pm.port, "/hello").body == b"hello"


def test_uwsgi_socket_and_request_bodies_on_threads(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", app, "-M", "-p", "1",
                   "--threads", "3"], tmp_path) as pm:
        wait_port(port)
        t0 = time.monotonic()
        with ThreadPoolExecutor(4) as ex:
            slow = [ex.submit(uwsgi_get, port, "/sleep", QUERY_STRING="1") for _ in range(2)]
            posted = ex.submit(uwsgi_get, port, "/echo", "POST", b"x" * 300000)
            assert posted.result(10).endswith(b"x" * 300000)
            assert time.monotonic() - t0 < 0.9  # not behind the sleeping requests
            assert all(f.result(10).endswith(b"slept") for f in slow)
        assert time.monotonic() - t0 < 1.8
        pm.wait_log(r"POST /echo => generated 300000 bytes")

"""The ASGI worker on its sockets: the scope, HTTP/1.1 (keep-alive, pipelining, chunked both
ways, 100-continue, the error answers), uwsgi, uploads, disconnects, WebSockets, lifespan,
the request log. Real processes, a raw ASGI app (tests/apps/asgi_raw.py)."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import psutil
import pytest
import websockets

from tests.client import uwsgi_request, uwsgi_vars
from tests.integration.asgi_helpers import dechunk, get, http_exchange, scope_of, serve

LOG_LINE = re.compile(
    r"\[pid: \d+\|app: 0\|req: \d+/\d+\] 127\.0\.0\.1 \(\) \{\d+ vars in \d+ bytes\} "
    r"\[.+\] GET /pid => generated \d+ bytes in \d+ msecs \(HTTP/1\.1 200\) 1 headers in "
    r"\d+ bytes \(1 switches on core 0\)"
)


def test_http_scope_is_the_spec_one(tmp_path):
    with serve(tmp_path) as s:
        scope = scope_of(s.http, "/caf%C3%A9/x%20y?a=1&b=%20", "X-Custom-Thing: Value\r\n")
        assert scope["type"] == "http"
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
        assert scope["http_version"] == "1.1"
        assert scope["method"] == "GET"
        assert scope["scheme"] == "http"
        assert scope["path"] == "/café/x y"
        assert scope["raw_path"] == "/caf%C3%A9/x%20y"
        assert scope["query_string"] == "a=1&b=%20"
        assert scope["root_path"] == ""
        assert ["x-custom-thing", "Value"] in scope["headers"]
        assert all(name == name.lower() for name, _ in scope["headers"])
        assert scope["client"][0] == "127.0.0.1"
        assert scope["server"] == ["127.0.0.1", s.http]
        assert scope["state"]["greeting"] == "hello from lifespan"


def test_uwsgi_scope_https_root_path_and_status_line(tmp_path):
    with serve(tmp_path) as s:
        env = uwsgi_vars("/mnt/x%20y?q=1", HTTPS="on", SCRIPT_NAME="/mnt", HTTP_X_THING="v")
        env["PATH_INFO"] = "/mnt/x y"
        raw = uwsgi_request(s.uwsgi, env)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection" not in head.lower()  # as the WSGI worker: the close frames it
        import json

        scope = json.loads(body)
        assert scope["scheme"] == "https"
        assert scope["root_path"] == "/mnt"
        assert scope["path"] == "/mnt/x y"
        assert scope["raw_path"] == "/mnt/x%20y"
        assert scope["query_string"] == "q=1"
        assert ["x-thing", "v"] in scope["headers"]
        assert scope["server"] == ["localhost", 80]
        # without SCRIPT_NAME in PATH_INFO (no modifier1 30), the path is both
        env = uwsgi_vars("/y", SCRIPT_NAME="/app")
        scope = json.loads(uwsgi_request(s.uwsgi, env).partition(b"\r\n\r\n")[2])
        assert scope["path"] == "/app/y" and scope["root_path"] == "/app"
        # a body on the uwsgi socket
        env = uwsgi_vars("/count", method="POST", CONTENT_LENGTH="300000")
        raw = uwsgi_request(s.uwsgi, env, b"z" * 300000)
        assert raw.endswith(b"\r\n\r\n300000")


def test_keepalive_and_pipelining_answer_in_order(tmp_path):
    with serve(tmp_path) as s:
        reqs = b"".join(
            f"GET /slow?s=0.{3 - i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(3)
        )
        reqs += b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        raw = http_exchange(s.http, reqs)
        assert raw.count(b"HTTP/1.1 200 OK") == 4
        assert raw.count(b"slow done") == 3
        assert raw.index(b"slow done") < raw.rindex(b"Connection: close")
        # two requests on one kept-alive connection
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            for _ in range(2):
                sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
                data = b""
                while not re.search(rb"\r\n\r\n\d+$", data):
                    data += sock.recv(65536)
                assert data.startswith(b"HTTP/1.1 200 OK")


def test_chunked_both_ways_and_expect_continue(tmp_path):
    with serve(tmp_path) as s:
        body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        raw = http_exchange(
            s.http,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + body,
        )
        assert raw.endswith(b"\r\n\r\nhello world")
        status, streamed = get(s.http, "/stream?n=4")
        assert status == 200 and streamed == b"".join(b"chunk %d\n" % i for i in range(4))
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(b"GET /stream?n=2 HTTP/1.1\r\nHost: t\r\n\r\n")  # kept alive
            raw = b""
            while not raw.endswith(b"0\r\n\r\n"):
                raw += sock.recv(65536)
        assert b"Transfer-Encoding: chunked" in raw
        assert dechunk(raw.partition(b"\r\n\r\n")[2]) == b"chunk 0\nchunk 1\n"
        # with Connection: close the body is delimited by the close
        raw = http_exchange(
            s.http, b"GET /stream?n=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert raw.endswith(b"\r\n\r\nchunk 0\nchunk 1\n")
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"ping")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"ping")


def test_error_answers_as_the_wsgi_worker(tmp_path):
    with serve(tmp_path, "--limit-post", "1000", "--buffer-size", "4096") as s:
        raw = http_exchange(
            s.http, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 413 Content Too Large")
        raw = http_exchange(
            s.http, b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
        )
        assert raw.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        raw = http_exchange(s.http, b"NOT HTTP AT ALL\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 Bad Request")
        # a chunked body over the limit, while the app reads it
        raw = http_exchange(
            s.http,
            b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"x" * 1024
            + b"\r\n0\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 413 Content Too Large")
        env = uwsgi_vars("/echo", method="POST", CONTENT_LENGTH="5000")
        assert uwsgi_request(s.uwsgi, env).startswith(b"HTTP/1.1 413 Content Too Large")
        s.pm.wait_log(
            r"HTTP error from 127\.0\.0\.1: 413 Content Too Large: Content-Length 5000 over the limit of 1000",
            count=2,
        )
        s.pm.wait_log(r"HTTP error from 127\.0\.0\.1: 431")
        # the app failing: 500, its traceback, and the worker goes on
        status, body = get(s.http, "/boom")
        assert status == 500 and body == b"Internal Server Error"
        s.pm.wait_log(
            r"Traceback of the exception in GET /boom:[\s\S]+RuntimeError: the app failed on purpose"
        )
        status, _ = get(s.http, "/none")
        assert status == 500
        s.pm.wait_log("ASGI app returned without a response for GET /none")
        assert get(s.http, "/pid")[0] == 200


def test_request_log_line_is_the_wsgi_one(tmp_path):
    with serve(tmp_path) as s:
        get(s.http, "/pid")
        s.pm.wait_log(LOG_LINE.pattern)


def test_upload_of_10_mb_is_streamed_not_held(tmp_path):
    with serve(tmp_path) as s:
        (worker,) = s.pm.wait_workers(1)
        get(s.http, "/pid")
        before = psutil.Process(worker).memory_info().rss
        size = 10 * 1024 * 1024
        with socket.create_connection(("127.0.0.1", s.http), timeout=30) as sock:
            sock.sendall(
                f"POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            block = b"u" * 65536
            for _ in range(size // len(block)):
                sock.sendall(block)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.endswith(b"\r\n\r\n%d" % size), data[:200]
        grown = psutil.Process(worker).memory_info().rss - before
        assert grown < 5 * 1024 * 1024, f"worker RSS grew by {grown} bytes"


def test_http_disconnect_reaches_the_app(tmp_path):
    with serve(tmp_path) as s:
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while b"waiting" not in data:
                data += sock.recv(65536)
        deadline = time.monotonic() + 10
        while not s.mark("disconnected") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.mark("disconnected") == ["/wait-disconnect"]


def _ws_url(port: int, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{port}{path}"


def test_websocket_echo_big_message_and_50_sockets(tmp_path):
    async def scenario(port):
        async with websockets.connect(_ws_url(port), max_size=None, subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            big = bytes(range(256)) * 4096  # 1 MiB
            await ws.send(big)
            assert await ws.recv() == big
            await ws.send("text ünïcode")
            assert await ws.recv() == "text ünïcode"
            # a fragmented message comes back whole
            await ws.send(["frag", "ment", "ed"])
            assert await ws.recv() == "fragmented"
            await asyncio.wait_for(await ws.ping(), 10)

        async def one(i):
            async with websockets.connect(_ws_url(port)) as ws:
                for k in range(3):
                    await ws.send(f"socket {i} message {k}")
                    assert await ws.recv() == f"socket {i} message {k}"
                await asyncio.sleep(0.5)  # all 50 open at once
            return i

        done = await asyncio.gather(*(one(i) for i in range(50)))
        assert sorted(done) == list(range(50))
        # over --websockets-max-size: closed with 1009
        async with websockets.connect(_ws_url(port), max_size=None) as ws:
            await ws.send(b"x" * (1024 * 1024 + 1))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009
        # an app that refuses the handshake: 403
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(_ws_url(port, "/ws/deny")):
                pass
        assert refused.value.response.status_code == 403

    with serve(tmp_path, "--websockets-max-size", "1024") as s:
        asyncio.run(scenario(s.http))
        s.pm.wait_log(r"GET /ws => generated \d+ bytes in \d+ msecs \(HTTP/1\.1 101\)")
        deadline = time.monotonic() + 10
        while len(s.mark("ws-closed")) < 51 and time.monotonic() < deadline:
            time.sleep(0.05)
        codes = s.mark("ws-closed")
        assert codes.count("1000") >= 50 and "1009" in codes


def test_concurrency_cap_is_backpressure(tmp_path):
    with serve(tmp_path, "--asgi-concurrency", "2") as s:
        finished: dict[str, float] = {}

        def fetch(name, path):
            status, _ = get(s.http, path, timeout=30)
            assert status == 200
            finished[name] = time.monotonic()

        slow = [threading.Thread(target=fetch, args=(f"slow{i}", "/slow?s=2")) for i in range(2)]
        for t in slow:
            t.start()
        time.sleep(0.8)  # both in flight: the worker is at its cap
        fast = threading.Thread(target=fetch, args=("fast", "/pid"))
        fast.start()
        for t in [*slow, fast]:
            t.join(30)
        assert finished["fast"] >= min(finished["slow0"], finished["slow1"]) - 0.05


def test_lifespan_state_copy_and_shutdown_on_reload(tmp_path):
    with serve(tmp_path) as s:
        (worker,) = s.pm.wait_workers(1)
        scope = scope_of(s.http, "/")
        assert scope["state"] == {"started_pid": worker, "greeting": "hello from lifespan"}
        import signal

        s.pm.signal(signal.SIGHUP)
        s.pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker", count=2, timeout=30)
        deadline = time.monotonic() + 10
        while not s.mark("shutdown") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.mark("shutdown") == [str(worker)]


def test_chunked_response_body_decodes(tmp_path):
    assert dechunk(b"3\r\nabc\r\n0\r\n\r\n") == b"abc"


def test_timeouts_and_garbage_never_kill_the_worker(tmp_path):
    with serve(tmp_path, "--header-timeout", "1", "--http-keepalive", "1") as s:
        (worker,) = s.pm.wait_workers(1)
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n")  # the head never ends
            started = time.monotonic()
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408 Request Timeout")
        assert time.monotonic() - started < 8
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\n\r\n")
            time.sleep(0.2)
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK")
            assert sock.recv(65536) == b""  # idle past --http-keepalive: closed
        for garbage in (b"\x00\xff\xff\x00" + b"x" * 10, b"\x00\x05\x00\x00\x01\x00a"):
            with socket.create_connection(("127.0.0.1", s.uwsgi), timeout=10) as sock:
                sock.sendall(garbage)
                assert sock.recv(65536) == b""
        with socket.create_connection(("127.0.0.1", s.http), timeout=10) as sock:
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 Bad Request")  # no Sec-WebSocket-Key
        assert get(s.http, "/pid") == (200, str(worker).encode())
        assert s.pm.workers() == [worker]


def test_from_an_ini_file_on_the_plain_asyncio_loop(tmp_path):
    from tests.integration.asgi_helpers import APPS
    from tests.pm import Pymaster, free_port, wait_port

    port = free_port()
    ini = tmp_path / "asgi.ini"
    ini.write_text(
        "[uwsgi]\nmaster = true\nprocesses = 1\n"
        f"http-socket = 127.0.0.1:{port}\npythonpath = {APPS}\n"
        "asgi = asgi_raw:application\nasgi-loop = asyncio\nasgi-concurrency = 50\n"
    )
    with Pymaster([str(ini)], tmp_path) as pm:
        pm.wait_log(r"ready in worker 1 \(pid: \d+, loop: asyncio, concurrency: 50\)", timeout=30)
        wait_port(port)
        assert scope_of(port, "/x?y=1")["query_string"] == "y=1"
        status, body = get(port, "/stream?n=3")
        assert status == 200 and body == b"chunk 0\nchunk 1\nchunk 2\n"

        async def ws():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as w:
                await w.send(b"a" * 200000)
                assert await w.recv() == b"a" * 200000

        asyncio.run(ws())

"""The ASGI worker under the master: SIGHUP under mixed HTTP + WebSocket load, harakiri of a
blocked event loop, a failing lifespan startup (exit 22), max-requests, the stats JSON."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import websockets

from tests.integration.asgi_helpers import APPS, get, read_stats, serve
from tests.pm import free_port, wait_port


def test_sighup_under_mixed_load_fails_no_request_and_closes_websockets_1012(tmp_path):
    with serve(tmp_path, "--worker-reload-mercy", "6", processes=2) as s:
        failures: list[str] = []
        statuses: list[int] = []
        stop = threading.Event()

        def http_load():
            while not stop.is_set():
                try:
                    status, _ = get(s.http, "/slow?s=0.2", timeout=30)
                    statuses.append(status)
                    if status != 200:
                        failures.append(f"status {status}")
                except OSError as exc:
                    failures.append(repr(exc))

        async def websockets_open(codes: list):
            async def one(i):
                async with websockets.connect(f"ws://127.0.0.1:{s.http}/ws") as ws:
                    await ws.send(f"hello {i}")
                    assert await ws.recv() == f"hello {i}"
                    opened.release()
                    try:
                        while True:
                            await ws.recv()
                    except websockets.ConnectionClosed as exc:
                        codes.append(exc.rcvd.code if exc.rcvd else None)

            await asyncio.gather(*(one(i) for i in range(10)))

        opened = threading.Semaphore(0)
        codes: list = []
        ws_thread = threading.Thread(target=lambda: asyncio.run(websockets_open(codes)))
        ws_thread.start()
        for _ in range(10):
            assert opened.acquire(timeout=20)
        threads = [threading.Thread(target=http_load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = len(statuses)
        s.pm.signal(signal.SIGHUP)
        s.pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker", count=4, timeout=40)
        ws_thread.join(30)
        time.sleep(1.0)  # requests keep flowing to the new workers
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures[:5]
        assert len(statuses) > before + 4
        assert codes == [1012] * 10
        assert "NO MERCY" not in s.pm.log()


def test_harakiri_kills_a_blocked_event_loop_and_names_its_requests(tmp_path):
    with serve(tmp_path, "--harakiri", "2") as s:
        (worker,) = s.pm.wait_workers(1)
        blocked = threading.Thread(target=lambda: _quiet_get(s.http, "/block?s=60"))
        blocked.start()
        s.pm.wait_log(r"HARAKIRI \[core 0\] GET /block\?s=60", timeout=30)
        s.pm.wait_log(rf"DAMN ! worker 1 \(pid: {worker}\) died, killed by signal 9", timeout=20)
        s.pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker", count=2, timeout=30)
        status, body = get(s.http, "/pid")
        assert status == 200 and int(body) != worker
        blocked.join(30)
        # a long request that lets the loop turn is not a harakiri
        status, body = get(s.http, "/slow?s=4", timeout=30)
        assert status == 200 and b"slow done" in body
        assert s.pm.log().count("HARAKIRI !!! worker 1 status !!!") == 1


def _quiet_get(port, path):
    try:
        get(port, path, timeout=60)
    except (OSError, IndexError):  # killed by harakiri: no answer
        pass


def test_failing_lifespan_startup_is_exit_22_with_one_clear_line(tmp_path):
    with serve(tmp_path, "--need-app", env={"ASGI_FAIL_STARTUP": "1"}, ready=False) as s:
        assert s.pm.wait(30) == 22
        log = s.pm.log()
        assert "ASGI lifespan startup failed in worker 1: database unreachable" in log
        assert "*** no app loaded in worker 1" in log
    with serve(tmp_path, "--asgi-lifespan", "off", env={"ASGI_FAIL_STARTUP": "1"}) as s:
        assert get(s.http, "/pid")[0] == 200  # lifespan off: never asked


def test_an_app_that_does_not_speak_lifespan_runs_in_auto_and_fails_in_on(tmp_path):
    app = tmp_path / "nolife.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    assert scope['type'] == 'http'\n"
        "    await send({'type': 'http.response.start', 'status': 204, 'headers': []})\n"
        "    await send({'type': 'http.response.body'})\n"
    )
    with serve(tmp_path, "--pythonpath", str(tmp_path), app="nolife:app") as s:
        s.pm.wait_log("ASGI 'lifespan' protocol appears unsupported")
        assert get(s.http, "/")[0] == 204
    with serve(
        tmp_path,
        "--pythonpath",
        str(tmp_path),
        "--asgi-lifespan",
        "on",
        "--need-app",
        app="nolife:app",
        ready=False,
    ) as s:
        assert s.pm.wait(30) == 22
        assert "ASGI lifespan startup failed in worker 1: AssertionError" in s.pm.log()


def test_max_requests_recycles_and_stats_count_requests(tmp_path):
    sport = free_port()
    with serve(
        tmp_path,
        "--max-requests",
        "3",
        "--min-worker-lifetime",
        "0",
        "--stats",
        f"127.0.0.1:{sport}",
    ) as s:
        wait_port(sport)
        pids = {int(get(s.http, "/pid")[1]) for _ in range(7)}
        assert len(pids) >= 2
        s.pm.wait_log(r"\.\.\.The work of process \d+ is done\. Seeya!")
        (worker,) = s.pm.wait_workers(1)
        held = threading.Thread(target=lambda: get(s.http, "/slow?s=2", timeout=30))
        held.start()
        deadline = time.monotonic() + 10
        stats = read_stats(sport)
        while stats["workers"][0]["status"] != "busy" and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = read_stats(sport)
        w = stats["workers"][0]
        assert w["status"] == "busy" and w["cores"][0]["in_request"] == 1
        held.join(30)
        stats = read_stats(sport)
        w = stats["workers"][0]
        assert w["pid"] == worker and w["status"] == "idle"
        assert w["requests"] >= 1 and w["tx"] > 0


def test_graceful_shutdown_finishes_requests_in_flight_and_runs_lifespan_shutdown(tmp_path):
    with serve(tmp_path, processes=2) as s:
        workers = s.pm.wait_workers(2)
        results: list = []
        held = [
            threading.Thread(target=lambda: results.append(get(s.http, "/slow?s=1.5", timeout=30)))
            for _ in range(3)
        ]
        for t in held:
            t.start()
        time.sleep(0.5)
        s.pm.signal(signal.SIGTERM)
        for t in held:
            t.join(30)
        assert s.pm.wait(30) == 0
        assert [status for status, _ in results] == [200, 200, 200]
        assert sorted(int(p) for p in s.mark("shutdown")) == sorted(workers)


def test_chain_reload_with_lazy_apps_replaces_every_worker(tmp_path):
    touch = tmp_path / "chain"
    touch.write_text("")
    with serve(tmp_path, "--lazy-apps", "--touch-chain-reload", str(touch), processes=2) as s:
        old = set(s.pm.wait_workers(2))
        time.sleep(1.1)
        touch.write_text("again")
        s.pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker", count=4, timeout=40)
        deadline = time.monotonic() + 30
        while set(s.pm.workers()) & old and time.monotonic() < deadline:
            assert get(s.http, "/pid")[0] == 200
            time.sleep(0.1)
        new = set(s.pm.wait_workers(2))
        assert not new & old
        assert {int(get(s.http, "/pid")[1]) for _ in range(6)} <= new


def test_without_a_master_the_process_is_the_worker(tmp_path):
    from tests.pm import Pymaster

    port = free_port()
    env = {"PYTHONPATH": f"{APPS}:{os.environ.get('PYTHONPATH', '')}"}
    args = ["--http-socket", f"127.0.0.1:{port}", "--asgi", "asgi_raw:application"]
    with Pymaster(args, tmp_path, env=env) as pm:
        pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker 1", timeout=30)
        wait_port(port)
        assert int(get(port, "/pid")[1]) == pm.pid


def test_reload_on_rss_recycles_after_the_request(tmp_path):
    with serve(tmp_path, "--reload-on-rss", "60", "--min-worker-lifetime", "0") as s:
        (worker,) = s.pm.wait_workers(1)
        assert get(s.http, "/grow?mb=80") == (200, b"grown")  # answered, then recycled
        s.pm.wait_log(
            rf"worker 1 \(pid: {worker}\) RSS \d+ bytes over reload-on-rss \d+ bytes, recycling"
        )
        s.pm.wait_log(r"ASGI app 0 \(mountpoint=''\) ready in worker", count=2, timeout=30)
        assert int(get(s.http, "/pid")[1]) != worker

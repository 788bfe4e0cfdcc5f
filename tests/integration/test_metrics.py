"""`GET /metrics` on the stats server (`--stats-http`), scraped as Prometheus scrapes it and
parsed by the official `prometheus_client` parsers, over a real pymaster that served real
requests: counts and bytes must equal what was sent and received, and the JSON beside it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.client import LOOPBACK, free_port, uwsgi_request, uwsgi_vars, wait_for_port
from tests.pm import Pymaster

APP = """\
def application(env, start):
    if env["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    body = b"metrics " * (int(env["QUERY_STRING"] or "1"))
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def scrape(port: int, accept: str | None = None, path: str = "/metrics"):
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read().decode()
    finally:
        conn.close()


def samples(text: str, parser=text_string_to_metric_families) -> dict:
    """{(sample name, frozenset(labels)): value} and the families' types."""
    out, types = {}, {}
    for fam in parser(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out, types


def total(found: dict, name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == name)


def raw_http(port: int, path: str) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def stats_json(port: int) -> dict:
    status, ctype, body = scrape(port, path="/")
    assert status == 200 and ctype == "application/json"
    return json.loads(body)


@pytest.fixture
def server(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    hport, uport, sport = free_port(), free_port(), free_port()
    args = [
        "--http-socket",
        f"127.0.0.1:{hport}",
        "-s",
        f"127.0.0.1:{uport}",
        "--wsgi-file",
        tmp_path / "app.py",
        "-M",
        "-p",
        "2",
        "--stats",
        f"127.0.0.1:{sport}",
        "--stats-http",
    ]
    with Pymaster(args, tmp_path) as pm:
        for port in (hport, uport, sport):
            wait_for_port(port, 15)
        pm.wait_log(r"spawned pymaster worker 2", 15)
        pm.ports = (hport, uport, sport)
        yield pm


def test_metrics_count_what_was_served(server):
    hport, uport, sport = server.ports
    received = 0
    for n in range(1, 8):  # 7 HTTP requests, bodies of 8..56 bytes
        data = raw_http(hport, f"/x?{n}")
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"metrics " * n)
        received += len(data)
    for _ in range(3):  # 3 on the uwsgi socket
        data = uwsgi_request(uport, uwsgi_vars("/u?2"))
        assert data.endswith(b"metrics metrics ")
        received += len(data)
    assert raw_http(hport, "/boom").startswith(b"HTTP/1.1 500")
    time.sleep(0.2)  # the slot is written just after the last byte is sent

    status, ctype, text = scrape(sport)
    assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
    found, types = samples(text)
    assert total(found, "pymaster_worker_requests_total") == 11
    assert total(found, "pymaster_worker_exceptions_total") == 1
    assert types["pymaster_worker_requests"] == "counter"
    assert types["pymaster_worker_busy"] == "gauge"
    for wid in ("1", "2"):
        assert found[("pymaster_worker_respawns_total", frozenset({("worker", wid)}))] == 1
        assert found[("pymaster_worker_harakiri_total", frozenset({("worker", wid)}))] == 0
        assert found[("pymaster_worker_busy", frozenset({("worker", wid)}))] == 0
        idle = frozenset({("worker", wid), ("status", "idle")})
        assert found[("pymaster_worker_status", idle)] == 1
        assert found[("pymaster_worker_rss_bytes", frozenset({("worker", wid)}))] > 1 << 20
        assert found[("pymaster_worker_vsz_bytes", frozenset({("worker", wid)}))] > 1 << 20
    assert found[("pymaster_build_info", frozenset({("version", "0.1.0")}))] == 1
    assert found[("pymaster_master_pid", frozenset())] == server.pid
    assert found[("pymaster_master_state", frozenset({("state", "running")}))] == 1
    assert found[("pymaster_workers_configured", frozenset())] == 2
    for port, proto in ((hport, "http"), (uport, "uwsgi")):
        sock = frozenset({("socket", f"127.0.0.1:{port}"), ("proto", proto)})
        assert found[("pymaster_listen_queue", sock)] == 0
        assert found[("pymaster_listen_queue_max", sock)] == 100
    # tx is every byte of every answer (head and body), as uWSGI counts it; the 500 too
    tx = total(found, "pymaster_worker_transmitted_bytes_total")
    boom = len(raw_http(hport, "/boom"))  # the same 500 again, not counted in the scrape
    assert tx == received + boom
    assert tx == sum(w["tx"] for w in stats_json(sport)["workers"]) - boom
    avg = total(found, "pymaster_worker_average_response_time_seconds")
    assert 0 < avg < 10


def test_openmetrics_when_asked_and_json_elsewhere(server):
    hport, _uport, sport = server.ports
    for _ in range(4):
        raw_http(hport, "/x")
    time.sleep(0.2)
    status, ctype, text = scrape(sport, PROM_ACCEPT)
    assert status == 200
    assert ctype == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert text.endswith("# EOF\n")
    found, types = samples(text, openmetrics_families)
    assert total(found, "pymaster_worker_requests_total") == 4
    assert types["pymaster_worker_requests"] == "counter"
    # a scraper asking for the text format only gets it
    _, ctype, _ = scrape(sport, "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert ctype.startswith("text/plain; version=0.0.4")
    # every other path is the uWSGI JSON, as uWSGI serves it whatever the request
    doc = stats_json(sport)
    assert sum(w["requests"] for w in doc["workers"]) == 4
    # a client that never sends a request gets the JSON too (uWSGI writes it at once)
    with socket.create_connection((LOOPBACK, sport), timeout=10) as s:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and json.loads(body)["pid"] == server.pid
    # the master kept serving meanwhile
    assert raw_http(hport, "/x").startswith(b"HTTP/1.1 200")


def test_metrics_include_the_fastrouter_pools(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    fport, subport, fsport, sport, bport = (free_port() for _ in range(5))
    router_args = [
        "--master",
        "--fastrouter",
        f"127.0.0.1:{fport}",
        "--fastrouter-subscription-server",
        f"127.0.0.1:{subport}",
        "--fastrouter-stats",
        f"127.0.0.1:{fsport}",
        "--stats",
        f"127.0.0.1:{sport}",
        "--stats-http",
    ]
    backend_args = [
        "-s",
        f"127.0.0.1:{bport}",
        "--wsgi-file",
        tmp_path / "app.py",
        "-M",
        "--subscribe-to",
        f"127.0.0.1:{subport}:m.test",
        "--subscribe-freq",
        "1",
    ]
    with Pymaster(router_args, tmp_path) as router, Pymaster(backend_args, tmp_path) as backend:
        for port in (fport, fsport, sport, bport):
            wait_for_port(port, 15)
        router.wait_log(r"m\.test => new node: 127\.0\.0\.1:%d" % bport, 15)
        for _ in range(5):
            assert uwsgi_request(fport, uwsgi_vars("/r", host="m.test")).endswith(b"metrics ")
        time.sleep(0.2)
        _, _, text = scrape(sport)
        found, _ = samples(text)
        assert found[("pymaster_fastrouter_up", frozenset())] == 1
        assert found[("pymaster_fastrouter_pool_nodes", frozenset({("key", "m.test")}))] == 1
        assert found[("pymaster_fastrouter_pool_hits_total", frozenset({("key", "m.test")}))] == 5
        node = frozenset({("key", "m.test"), ("node", f"127.0.0.1:{bport}")})
        assert found[("pymaster_fastrouter_node_requests_total", node)] == 5
        assert found[("pymaster_fastrouter_node_failures_total", node)] == 0
        assert found[("pymaster_fastrouter_node_dead", node)] == 0
        assert backend.proc.poll() is None


def test_metrics_say_when_the_router_does_not_answer(tmp_path):
    """A router whose stats socket does not answer: the scrape still answers (the instance's
    metrics, `pymaster_fastrouter_up 0`) within the router wait, and the master serves on."""
    fport, fsport, sport = free_port(), free_port(), free_port()
    args = [
        "--master",
        "--fastrouter",
        f"127.0.0.1:{fport}",
        "--fastrouter-to",
        "127.0.0.1:1",
        "--fastrouter-stats",
        f"127.0.0.1:{fsport}",
        "--stats",
        f"127.0.0.1:{sport}",
        "--stats-http",
    ]
    with Pymaster(args, tmp_path) as pm:
        wait_for_port(sport, 15)
        wait_for_port(fsport, 15)
        router = pm.workers()
        assert router
        os.kill(router[0], signal.SIGSTOP)  # the router is alive but answers nothing
        try:
            started = time.monotonic()
            _, _, text = scrape(sport)
            assert time.monotonic() - started < 8
            found, _ = samples(text)
            assert found[("pymaster_fastrouter_up", frozenset())] == 0
            assert found[("pymaster_master_pid", frozenset())] == pm.pid
        finally:
            os.kill(router[0], signal.SIGCONT)
        _, _, text = scrape(sport)
        found, _ = samples(text)
        assert found[("pymaster_fastrouter_up", frozenset())] == 1
        static = frozenset({("node", "127.0.0.1:1")})
        assert found[("pymaster_fastrouter_static_node_requests_total", static)] == 0

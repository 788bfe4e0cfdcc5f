"""The seed's cluster with pymaster everywhere: a fastrouter under its master, backends that
subscribe with heartbeats, and the reliability promises under concurrent load."""

import os
import signal
import textwrap
import time

import pytest

from pymaster.protocols import uwsgi
from tests.load import Load
from tests.pm import Pymaster, free_port, uwsgi_request, wait_port

APP = textwrap.dedent('''
    import os, time
    def application(environ, start_response):
        time.sleep(0.002)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("pid=" + str(os.getpid())).encode()]
''')


def routed(port, key="wsgi_cluster", timeout=15.0):
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REQUEST_URI": "/", "QUERY_STRING": "",
           "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "x", "SERVER_PORT": "80",
           "UWSGI_FASTROUTER_KEY": key}
    data = uwsgi_request(port, env, timeout=timeout)
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"bad response {data[:60]!r}")
    return data


def via_router(port, path="/"):
    return routed(port)


class Cluster:
    def __init__(self, tmp_path, tolerance=17):
        self.tmp = tmp_path
        self.app = tmp_path / "app.py"
        self.app.write_text(APP)
        self.fport, self.sport = free_port(), free_port()
        self.router = Pymaster(["--plugins", "fastrouter", "--fastrouter", f"127.0.0.1:{self.fport}",
                                "--fastrouter-subscription-server", f"127.0.0.1:{self.sport}",
                                "--subscription-tolerance", str(tolerance), "-M"], tmp_path)
        wait_port(self.fport)
        self.backends = []

    def add_backend(self, *extra, key="wsgi_cluster"):
        port = free_port()
        pm = Pymaster(["--plugins", "python", "-s", f"127.0.0.1:{port}", "--file", self.app, "-M",
                       "-p", "2", "--subscribe-to", f"127.0.0.1:{self.sport}:{key}", *extra],
                      self.tmp)
        wait_port(port)
        pm.wait_workers(2)
        pm.port = port
        self.backends.append(pm)
        return pm

    def wait_routed_to(self, backend, timeout=10.0):
        pids = {str(p).encode() for p in backend.workers()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if routed(self.fport).split(b"pid=")[1] in pids:
                    return
            except RuntimeError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"router never reached backend {backend.pid}")

    def close(self):
        for pm in self.backends:
            pm.stop()
        self.router.stop()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def test_seed_form_subscription_routes_and_rotates_over_backends(cluster):
    a, b = cluster.add_backend(), cluster.add_backend()
    a.wait_log(r"subscribing to 127\.0\.0\.1:\d+:wsgi_cluster")
    cluster.wait_routed_to(a)
    cluster.wait_routed_to(b)
    pids = {routed(cluster.fport).split(b"pid=")[1].decode() for _ in range(40)}
    owners = {pm.pid for pm in (a, b) for p in pm.workers() if str(p) in pids}
    assert owners == {a.pid, b.pid}
    cluster.router.wait_log(r"fastrouter 1")


def test_psgi_seed_form_key_and_modifier(cluster):
    pm = cluster.add_backend(key="psgi_cluster:5")
    pm.wait_log(r"key 'psgi_cluster', .*modifier1 5")


def test_no_node_is_a_503_naming_the_key(cluster):
    raw = uwsgi_request(cluster.fport, {"UWSGI_FASTROUTER_KEY": "nobody_here", "PATH_INFO": "/"})
    assert raw.startswith(b"HTTP/1.0 503 ")
    cluster.router.wait_log(r"no node available for key \"nobody_here\"")


def test_kill9_backend_pool_keeps_serving(cluster):
    a, b = cluster.add_backend(), cluster.add_backend()
    cluster.wait_routed_to(a)
    cluster.wait_routed_to(b)
    with Load(cluster.fport, threads=6, request=lambda port, path: via_router(port)) as load:
        load.wait_ok(100)
        workers = a.workers()
        a.proc.kill()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)                    # what was in flight has failed by now
        in_flight = len(load.failures)
        load.wait_ok(200)
    assert in_flight <= 6                  # at most one per load thread
    assert len(load.failures) == in_flight, load.failures[in_flight:]   # none after


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_backend_reload_or_shutdown_fails_nothing_through_the_router(cluster, sig):
    a, b = cluster.add_backend(), cluster.add_backend()
    cluster.wait_routed_to(a)
    cluster.wait_routed_to(b)
    with Load(cluster.fport, threads=6, request=lambda port, path: via_router(port)) as load:
        load.wait_ok(100)
        a.signal(sig)
        if sig == signal.SIGHUP:
            a.wait_log(r"gracefully \(RE\)spawned pymaster master process", timeout=20)
        else:
            a.wait(20)
            a.wait_log(r"unsubscribing from")
        load.wait_ok(200)
    assert load.failures == []


def test_backend_that_stops_heartbeating_leaves_the_pool(tmp_path):
    c = Cluster(tmp_path, tolerance=3)
    try:
        a = c.add_backend("--subscribe-freq", "1")
        c.wait_routed_to(a)
        a.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        c.router.wait_log(r"no announce received in 3 seconds|marking .* as failed", timeout=10)
        assert time.monotonic() - t0 <= 4.5
        raw = uwsgi_request(c.fport, {"UWSGI_FASTROUTER_KEY": "wsgi_cluster", "PATH_INFO": "/"})
        assert raw.startswith(b"HTTP/1.0 503 ")
        a.signal(signal.SIGCONT)
    finally:
        c.close()


def test_router_reload_keeps_its_pools(cluster):
    a = cluster.add_backend()
    cluster.wait_routed_to(a)
    cluster.router.signal(signal.SIGHUP)
    cluster.router.wait_log(r"gracefully \(RE\)spawned pymaster master process")
    wait_port(cluster.fport)
    with Load(cluster.fport, threads=4, budget=200,
              request=lambda port, path: via_router(port)) as load:
        load.wait_ok(200, timeout=20)
    assert load.failures == []          # no "no node" answer after the reload


def test_hostile_datagrams_do_not_hurt_the_router(cluster):
    import socket
    a = cluster.add_backend()
    cluster.wait_routed_to(a)
    junk = [b"", b"\xe0", b"\xe0\xff\xff\x00", b"\xe0\x05\x00\x00\x03\x00key", b"\x00" * 5000,
            uwsgi.encode_packet(224, [("key", "x" * 300), ("address", "")]),
            uwsgi.encode_packet(224, [("address", "127.0.0.1:1")])]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for j in junk * 3:
            s.sendto(j, ("127.0.0.1", cluster.sport))
    time.sleep(0.3)
    assert routed(cluster.fport).startswith(b"HTTP/1.1 200")
    assert cluster.router.proc.poll() is None


def test_nginx_uwsgi_pass_in_front_of_the_pymaster_fastrouter(cluster):
    from tests.external import have, http_get, nginx
    if not have("nginx"):
        pytest.skip("nginx missing")
    a = cluster.add_backend()
    cluster.wait_routed_to(a)
    with nginx(f"127.0.0.1:{cluster.fport}", extra_params={"UWSGI_FASTROUTER_KEY": "wsgi_cluster"}) as ng:
        resp = http_get(ng.port, "/")
        assert resp.status == 200
        assert int(resp.body.split(b"pid=")[1]) in a.workers()


def test_start_unsubscribed_then_fifo_s_subscribes(cluster, tmp_path):
    fifo = tmp_path / "fifo"
    a = cluster.add_backend("--start-unsubscribed", "--master-fifo", fifo, "--subscribe-freq", "1")
    time.sleep(1.5)
    raw = uwsgi_request(cluster.fport, {"UWSGI_FASTROUTER_KEY": "wsgi_cluster", "PATH_INFO": "/"})
    assert raw.startswith(b"HTTP/1.0 503 ")
    fifo.write_bytes(b"S")
    cluster.wait_routed_to(a)

"""The subscription table of pymaster's fastrouter across processes and time: one datagram
shared by every router process, pools surviving a router reload, heartbeat expiry of a
SIGSTOPped uWSGI master, signing and --subscription-allow; and pymaster's Subscriber
announcing a node to uWSGI's OWN fastrouter."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.external import (
    free_port,
    parse_http_response,
    uwsgi,
    uwsgi_plugin_available,
    uwsgi_request,
    uwsgi_vars,
)
from tests.integration.test_fastrouter import (  # noqa: F401
    app_file,
    backend,
    pid_of,
    request,
    router,
    stats,
    subscribe_once,
    wait_pids,
    wait_until,
    worker_pids,
)

pytestmark = pytest.mark.skipif(not uwsgi_plugin_available("python3"),
                                reason="uWSGI python3 plugin not installed")


def test_one_datagram_reaches_every_router_process(app_file):
    port = free_port()
    with router("--fastrouter-processes", "3", "--fastrouter-stats",
                f"127.0.0.1:{(stats_port := free_port())}") as fr, \
            backend(app_file, port) as b:
        wait_until(lambda: os.listdir(fr.rundir), 5, "state dir")
        state = os.path.join(fr.rundir, next(iter(os.listdir(fr.rundir))))
        wait_until(lambda: len([f for f in os.listdir(state) if f.startswith("relay-")]) == 3,
                   5, "3 relay sockets")
        assert os.stat(state).st_mode & 0o777 == 0o700
        subscribe_once(fr.sub_port, "shared.test", f"127.0.0.1:{port}")
        wait_until(lambda: fr.logtext().count("shared.test => new node") == 3, 5,
                   "the node in all 3 router processes")
        pids = worker_pids(b)
        for _ in range(30):                          # spread over the 3 processes by the kernel
            resp = request(fr.port, "shared.test")
            assert resp.status == 200 and pid_of(resp) in pids
        doc = stats(stats_port)
        assert list(doc)[:7] == ["version", "pid", "uid", "gid", "cwd", "active_sessions",
                                 "fastrouter"]
        assert doc["fastrouter"] == [f"127.0.0.1:{fr.port}", f"127.0.0.1:{fr.sub_port}"]
        assert doc["subscriptions"][0]["key"] == "shared.test"
        assert doc["subscriptions"][0]["nodes"][0]["name"] == f"127.0.0.1:{port}"


def test_pools_survive_a_router_reload(app_file):
    port = free_port()
    with router() as fr, backend(app_file, port) as b:
        subscribe_once(fr.sub_port, "reload.test", f"127.0.0.1:{port}")
        assert wait_pids(fr.port, "reload.test", 1) <= worker_pids(b)
        old = [c for c in fr.children()]
        os.kill(fr.pid, signal.SIGHUP)              # the master reloads, routers too
        wait_until(lambda: fr.logtext().count("spawned pymaster fastrouter 1") == 2, 10,
                   "router respawn")
        assert not set(old) & set(fr.children())
        resp = request(fr.port, "reload.test")      # no heartbeat was sent since
        assert resp.status == 200 and pid_of(resp) in worker_pids(b)
        assert "restored 1 node(s) in 1 pool(s)" in fr.logtext()


def test_sigstopped_master_leaves_pool_within_tolerance(app_file):
    tolerance = 3
    ports = [free_port(), free_port()]
    with router(tolerance=tolerance, *("--fastrouter-stats",
                                       f"127.0.0.1:{(stats_port := free_port())}")) as fr:
        sub = ["--subscribe-to", f"127.0.0.1:{fr.sub_port}:stop.test"]
        with backend(app_file, ports[0], *sub) as b1, backend(app_file, ports[1], *sub):
            wait_pids(fr.port, "stop.test", 2)
            os.kill(b1.pid, signal.SIGSTOP)         # the master only: workers still serve
            stopped = time.monotonic()
            try:
                def gone():
                    nodes = stats(stats_port)["subscriptions"][0]["nodes"]
                    return [n["name"] for n in nodes] == [f"127.0.0.1:{ports[1]}"]
                wait_until(gone, tolerance + 3, "expiry", step=0.1)
                elapsed = time.monotonic() - stopped
            finally:
                os.kill(b1.pid, signal.SIGCONT)
            print(f"node expired {elapsed:.2f} s after SIGSTOP (tolerance {tolerance} s)")
            assert elapsed <= tolerance + 1.2
            assert (f"stop.test => marking 127.0.0.1:{ports[0]} as failed (no announce "
                    f"received in {tolerance} seconds)") in fr.logtext()


def test_signing_and_allow(app_file, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-shared-secret\n")
    port = free_port()
    with router("--subscriptions-sign-secret", str(secret)) as fr, \
            backend(app_file, port, "--subscribe-to", f"127.0.0.1:{fr.sub_port}:signed.test"):
        wait_until(lambda: "unsigned" in fr.logtext(), 5, "unsigned uWSGI packets rejected")
        assert request(fr.port, "signed.test").status == 503
        subscribe_once(fr.sub_port, "signed.test", f"127.0.0.1:{port}",
                       "--subscriptions-sign-secret", str(secret))
        wait_pids(fr.port, "signed.test", 1, timeout=5)
    with router("--subscription-allow", "10.0.0.0/8") as fr:
        subscribe_once(fr.sub_port, "allow.test", "127.0.0.1:1")
        wait_until(lambda: "source not in --subscription-allow" in fr.logtext(), 5, "reject")
        assert request(fr.port, "allow.test").status == 503


@pytest.mark.skipif(not uwsgi_plugin_available("fastrouter"), reason="no uWSGI fastrouter")
def test_pymaster_subscriber_to_uwsgi_fastrouter(app_file):
    fr_port, sub_port, port = free_port(), free_port(), free_port()
    with uwsgi(["--master", "--fastrouter", f"127.0.0.1:{fr_port}",
                "--fastrouter-subscription-server", f"127.0.0.1:{sub_port}"],
               plugins=["fastrouter"]) as fr, backend(app_file, port) as b:
        # the seed's colon form: key 'seed_cluster', modifier1 0 (uWSGI itself would
        # register a pool named 'seed_cluster:0')
        sub = subscribe_once(sub_port, "seed_cluster:0", f"127.0.0.1:{port}")

        def routed():
            raw = uwsgi_request(fr_port, uwsgi_vars("/", UWSGI_FASTROUTER_KEY="seed_cluster"))
            return raw.startswith(b"HTTP/1.1 200") and parse_http_response(raw)
        resp = wait_until(routed, 5, "uWSGI fastrouter routing to the node")
        assert pid_of(resp) in worker_pids(b)
        assert "seed_cluster => new node: 127.0.0.1:" in fr.logtext()
        sub.unsubscribe()
        wait_until(lambda: f"marking 127.0.0.1:{port} as failed" in fr.logtext(), 5,
                   "uWSGI honouring the unsubscribe")

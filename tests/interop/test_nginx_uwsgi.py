"""nginx (uwsgi_pass) in front of a uwsgi-protocol backend: real uWSGI 2.0 first, to prove
the harness on its own, then pymaster serving the seed's examples/app.wsgi."""

import psutil
import pytest

from tests.external import (
    EXAMPLES,
    free_port,
    have,
    http_get,
    nginx,
    pid_in_page,
    pymaster,
    uwsgi,
    uwsgi_plugin_available,
)

needs_nginx = pytest.mark.skipif(not have("nginx"), reason="nginx not installed")
needs_uwsgi_python = pytest.mark.skipif(not uwsgi_plugin_available("python3"),
                                        reason="uWSGI python3 plugin not installed")
APP = str(EXAMPLES / "app.wsgi")


def assert_pages_from_workers(front_port: int, master_pid: int, requests: int = 20) -> set[int]:
    """GET the seed page `requests` times; every PID shown is a worker of `master_pid`."""
    seen = set()
    for _ in range(requests):
        resp = http_get(front_port, "/")
        assert resp.status == 200, resp
        assert '<img src="/static/python.png">' in resp.text
        seen.add(pid_in_page(resp.text))
    workers = {p.pid for p in psutil.Process(master_pid).children(recursive=True)}
    assert seen <= workers, f"PIDs {seen} are not all workers of {master_pid} ({workers})"
    assert master_pid not in seen
    return seen


@needs_nginx
@needs_uwsgi_python
def test_harness_nginx_to_real_uwsgi():
    port = free_port()
    with uwsgi(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "2",
                "--need-app"]) as backend, \
         nginx(f"127.0.0.1:{port}", "uwsgi_pass") as front:
        assert_pages_from_workers(front.port, backend.pid)


@needs_nginx
def test_nginx_uwsgi_pass_to_pymaster():
    port = free_port()
    with pymaster(["-s", f"127.0.0.1:{port}", "--file", APP, "-M", "-p", "2"]) as backend, \
         nginx(f"127.0.0.1:{port}", "uwsgi_pass") as front:
        assert_pages_from_workers(front.port, backend.pid)
        resp = http_get(front.port, "/some/path?x=1")
        assert resp.status == 200 and "PID:" in resp.text

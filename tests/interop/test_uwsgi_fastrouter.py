"""uWSGI 2.0's own fastrouter in front of uwsgi backends: static routing (--fastrouter-to),
subscriptions (--fastrouter-subscription-server / --subscribe-to), and nginx -> fastrouter.

The uWSGI-backend tests prove the harness; the pymaster ones prove pymaster interoperates."""

import contextlib
import time

import pytest

from tests.external import (
    EXAMPLES,
    free_port,
    have,
    http_get,
    nginx,
    parse_http_response,
    pid_in_page,
    pymaster,
    uwsgi,
    uwsgi_fastrouter,
    uwsgi_plugin_available,
    uwsgi_request,
    uwsgi_vars,
)

pytestmark = pytest.mark.skipif(not uwsgi_plugin_available("fastrouter"),
                                reason="uWSGI fastrouter plugin not installed")
needs_nginx = pytest.mark.skipif(not have("nginx"), reason="nginx not installed")
needs_uwsgi_python = pytest.mark.skipif(not uwsgi_plugin_available("python3"),
                                        reason="uWSGI python3 plugin not installed")
APP = str(EXAMPLES / "app.wsgi")
PSGI_APP = str(EXAMPLES / "app.psgi")


def pymaster_backend(port: int, *extra: str):
    return pymaster(["-s", f"127.0.0.1:{port}", "--file", APP, "-M", "-p", "2", *extra])


def uwsgi_backend(port: int, *extra: str):
    return uwsgi(["-s", f"127.0.0.1:{port}", "--wsgi-file", APP, "-M", "-p", "2",
                  "--need-app", *extra])


def routed_page(router_port: int, key: str = "localhost", timeout: float = 10.0):
    """Ask the fastrouter for the page with UWSGI_FASTROUTER_KEY=key; retry until a node
    has subscribed (an unknown key gets an empty reply or a 5xx)."""
    deadline = time.monotonic() + timeout
    while True:
        raw = uwsgi_request(router_port, uwsgi_vars("/", UWSGI_FASTROUTER_KEY=key))
        with contextlib.suppress(ValueError):
            resp = parse_http_response(raw)
            if resp.status == 200:
                return resp
        if time.monotonic() > deadline:
            raise AssertionError(f"no 200 through the fastrouter for key {key!r}: {raw[:300]!r}")
        time.sleep(0.2)


def assert_page_from(resp, backend) -> None:
    assert "PID:" in resp.text
    assert pid_in_page(resp.text) in backend.children()


@needs_uwsgi_python
def test_harness_fastrouter_to_real_uwsgi():
    backend_port, router_port = free_port(), free_port()
    with uwsgi_backend(backend_port) as backend, uwsgi_fastrouter(router_port, to=backend_port):
        assert_page_from(routed_page(router_port), backend)


@needs_uwsgi_python
def test_harness_fastrouter_subscription_real_uwsgi():
    backend_port, router_port, sub_port = free_port(), free_port(), free_port()
    with uwsgi_fastrouter(router_port, subscription_port=sub_port), \
         uwsgi_backend(backend_port, "--subscribe-to", f"127.0.0.1:{sub_port}:wsgi_cluster") as backend:
        assert_page_from(routed_page(router_port, "wsgi_cluster"), backend)


def test_fastrouter_to_pymaster():
    backend_port, router_port = free_port(), free_port()
    with pymaster_backend(backend_port) as backend, uwsgi_fastrouter(router_port, to=backend_port):
        for _ in range(5):
            assert_page_from(routed_page(router_port), backend)


@needs_nginx
def test_nginx_to_fastrouter_to_pymaster():
    backend_port, router_port = free_port(), free_port()
    with pymaster_backend(backend_port) as backend, \
         uwsgi_fastrouter(router_port, to=backend_port), \
         nginx(f"127.0.0.1:{router_port}", "uwsgi_pass",
               {"UWSGI_FASTROUTER_KEY": "wsgi_cluster"}) as front:
        for _ in range(5):
            resp = http_get(front.port, "/")
            assert resp.status == 200, resp
            assert_page_from(resp, backend)


def test_pymaster_subscribes_to_uwsgi_fastrouter():
    """The seed's WSGI half: `--subscribe-to 127.0.0.1:SUB:wsgi_cluster`."""
    backend_port, router_port, sub_port = free_port(), free_port(), free_port()
    with uwsgi_fastrouter(router_port, subscription_port=sub_port), \
         pymaster_backend(backend_port, "--subscribe-to",
                          f"127.0.0.1:{sub_port}:wsgi_cluster") as backend:
        assert_page_from(routed_page(router_port, "wsgi_cluster"), backend)


def test_pymaster_psgi_subscribes_with_modifier1_5():
    """The seed's PSGI half: `--subscribe-to ...:psgi_cluster:5` registers key
    psgi_cluster (modifier1 5), and the seed's app.psgi renders through the router."""
    backend_port, router_port, sub_port = free_port(), free_port(), free_port()
    with uwsgi_fastrouter(router_port, subscription_port=sub_port), \
         pymaster(["--plugins", "psgi", "-s", f"127.0.0.1:{backend_port}", "--psgi", PSGI_APP,
                   "-M", "-p", "2", "--subscribe-to",
                   f"127.0.0.1:{sub_port}:psgi_cluster:5"]) as backend:
        resp = routed_page(router_port, "psgi_cluster")
        assert "hokkaidopm.gif" in resp.text
        assert_page_from(resp, backend)

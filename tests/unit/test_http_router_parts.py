"""Pieces of the HTTP router that need no process: PATH_INFO normalisation, the router's own
answers, `--https` / `--http-to-https` / `--http-var` parsing, node settings."""

from __future__ import annotations

import pytest

from pymaster.routers.httprouter import (
    HttpConfigError,
    extra_vars,
    parse_https,
    parse_redirect,
    settings,
)
from pymaster.routers.httpsession import error_answer, normalize_path
from tests.conftest import config_with


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"//a//b", b"/a/b"),
        (b"/a/./b", b"/a/b"),
        (b"/a/../b", b"/b"),
        (b"/static/../secret.txt", b"/secret.txt"),
        (b"/../../etc/passwd", b"/etc/passwd"),
        (b"/a/b/..", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/a/b/", b"/a/b/"),
        (b"/a#frag", b"/a"),
        (b"/static/%2e%2e/x", b"/static/%2e%2e/x"),  # decoded after: survives as ..
    ],
)
def test_normalize_path(raw, clean):
    assert normalize_path(raw) == clean


def test_error_answer_is_complete_and_closes():
    data = error_answer(503, 'no node available for host "x"')
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b'503 Service Unavailable: no node available for host "x"\n'
    assert error_answer(504, "t").startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")


def test_parse_https():
    spec = parse_https("127.0.0.1:443,c.pem,k.pem,HIGH")
    assert (spec.address, spec.cert, spec.key, spec.ciphers) == (
        "127.0.0.1:443",
        "c.pem",
        "k.pem",
        "HIGH",
    )
    with pytest.raises(HttpConfigError, match="ADDR,CERT,KEY"):
        parse_https("127.0.0.1:443,c.pem")
    with pytest.raises(HttpConfigError, match="client certificates"):
        parse_https("a:1,c,k,HIGH,ca.pem")


def test_parse_redirect_and_vars():
    assert parse_redirect(":80,8443") == (":80", "8443")
    assert parse_redirect(":80") == (":80", "")
    with pytest.raises(HttpConfigError):
        parse_redirect(":80,https")
    assert extra_vars(config_with(http_var=["FOO=bar", "E="])) == [(b"FOO", b"bar"), (b"E", b"")]
    with pytest.raises(HttpConfigError, match="KEY=VALUE"):
        extra_vars(config_with(http_var=["nope"]))


def test_settings_pick_the_worker_socket_only_without_http_to():
    cfg = config_with(http_timeout=7)
    s = settings(cfg, "127.0.0.1:5000")
    assert (s.name, s.to, s.timeout, s.connect_timeout) == ("http", ["127.0.0.1:5000"], 7.0, 7.0)
    cfg = config_with(http_to=["10.0.0.1:1"], http_connect_timeout=2)
    s = settings(cfg, "127.0.0.1:5000")
    assert (s.to, s.connect_timeout) == (["10.0.0.1:1"], 2.0)

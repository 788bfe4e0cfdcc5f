"""The ASGI worker behind real nginx: `uwsgi_pass` to its uwsgi socket and `proxy_pass` to
its HTTP socket, including a WebSocket upgrade through nginx."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
import websockets

from tests import external
from tests.integration.asgi_helpers import get, serve

pytestmark = pytest.mark.skipif(not shutil.which("nginx"), reason="nginx missing")


def test_behind_nginx_uwsgi_pass(tmp_path):
    with (
        serve(tmp_path) as s,
        external.nginx(f"127.0.0.1:{s.uwsgi}", "uwsgi_pass", {"HTTPS": "on"}) as ngx,
    ):
        status, body = get(ngx.port, "/caf%C3%A9?x=1", "X-Thing: yes\r\n")
        assert status == 200
        scope = json.loads(body)
        assert scope["path"] == "/café" and scope["query_string"] == "x=1"
        assert scope["scheme"] == "https"  # uwsgi var HTTPS=on
        assert ["x-thing", "yes"] in scope["headers"]
        status, body = get(ngx.port, "/stream?n=3")
        assert status == 200 and body == b"chunk 0\nchunk 1\nchunk 2\n"


def test_behind_nginx_proxy_pass_with_websocket(tmp_path):
    with (
        serve(tmp_path) as s,
        external.nginx(f"127.0.0.1:{s.http}", "proxy_pass", upgrade=True) as ngx,
    ):
        for _ in range(3):
            status, body = get(ngx.port, "/pid")
            assert status == 200 and body.isdigit()
        status, body = get(ngx.port, "/stream?n=3")
        assert status == 200 and body == b"chunk 0\nchunk 1\nchunk 2\n"

        async def ws():
            async with websockets.connect(f"ws://127.0.0.1:{ngx.port}/ws", max_size=None) as w:
                await w.send("through nginx")
                assert await w.recv() == "through nginx"
                await w.send(b"n" * 200000)
                assert await w.recv() == b"n" * 200000

        asyncio.run(ws())

"""Starlette and FastAPI under the ASGI worker: streaming responses, background tasks, an
upload, WebSockets and lifespan state (tests/apps/asgi_frameworks.py)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from tests.integration.asgi_helpers import serve

pytest.importorskip("starlette")
pytest.importorskip("fastapi")


def _wait_mark(s, name, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while s.mark(name) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return s.mark(name)


def test_starlette(tmp_path):
    with serve(tmp_path, app="asgi_frameworks:starlette_app", processes=2) as s:
        base = f"http://127.0.0.1:{s.http}"
        with httpx.Client(base_url=base, timeout=20) as client:
            r = client.get("/")
            assert r.status_code == 200 and r.text.startswith("starlette connection-of-")
            with client.stream("GET", "/stream?n=50") as r:
                assert r.headers["transfer-encoding"] == "chunked"
                lines = list(r.iter_lines())
            assert lines == [f"line {i}" for i in range(50)]
            r = client.get("/background", params={"tag": "bg-starlette"})
            assert r.text == "queued"
            assert _wait_mark(s, "background", ["bg-starlette"]) == ["bg-starlette"]

            def body():
                for _ in range(64):
                    yield b"y" * 65536

            r = client.post("/upload", content=body())  # chunked upload
            assert r.json() == {"received": 64 * 65536}

        async def ws():
            async with websockets.connect(f"ws://127.0.0.1:{s.http}/ws", max_size=None) as w:
                await w.send("hi starlette")
                assert await w.recv() == "hi starlette"
                await w.send(b"\x00" * 300000)
                assert await w.recv() == b"\x00" * 300000

        asyncio.run(ws())


def test_fastapi(tmp_path):
    with serve(tmp_path, app="asgi_frameworks:fastapi_app") as s:
        base = f"http://127.0.0.1:{s.http}"
        with httpx.Client(base_url=base, timeout=20) as client:
            r = client.get("/items/42", params={"q": "x y"})
            assert r.status_code == 200
            data = r.json()
            assert data["item_id"] == 42 and data["q"] == "x y"
            assert data["db"].startswith("connection-of-") and data["root"] == ""
            assert client.get("/items/notanumber").status_code == 422
            assert client.get("/missing").status_code == 404
            r = client.post("/tasks", params={"tag": "bg-fastapi"})
            assert r.json() == {"queued": "bg-fastapi"}
            assert _wait_mark(s, "background", ["bg-fastapi"]) == ["bg-fastapi"]
            r = client.get("/openapi.json")
            assert "/items/{item_id}" in json.loads(r.text)["paths"]

        async def ws():
            async with websockets.connect(f"ws://127.0.0.1:{s.http}/ws") as w:
                for i in range(20):
                    await w.send(f"fast {i}")
                    assert await w.recv() == f"fast {i}"

        asyncio.run(ws())
        s.pm.wait_log(
            r"GET /items/42\?q=x\+y => generated \d+ bytes in \d+ msecs \(HTTP/1\.1 200\)"
        )


DJANGO_PROJECT = """
import os

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="asgi-test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)


async def hello(request):
    return JsonResponse({
        "path": request.path,
        "script_name": request.META.get("SCRIPT_NAME", ""),
        "secure": request.is_secure(),
        "method": request.method,
        "body": len(request.body),
    })


def stream(request):
    return StreamingHttpResponse(f"part {i}\\n" for i in range(5))


urlpatterns = [path("hello/", hello), path("stream/", stream)]
application = get_asgi_application()
"""


def test_django_asgi_app(tmp_path):
    pytest.importorskip("django")
    (tmp_path / "djproject.py").write_text(DJANGO_PROJECT)
    with serve(tmp_path, "--pythonpath", str(tmp_path), app="djproject:application") as s:
        s.pm.wait_log("ASGI 'lifespan' protocol appears unsupported")  # Django has none
        with httpx.Client(base_url=f"http://127.0.0.1:{s.http}", timeout=20) as client:
            r = client.post("/hello/", content=b"d" * 5000)
            assert r.status_code == 200
            assert r.json() == {
                "path": "/hello/",
                "script_name": "",
                "secure": False,
                "method": "POST",
                "body": 5000,
            }
            r = client.get("/stream/")
            assert r.text == "".join(f"part {i}\n" for i in range(5))
        from tests.client import uwsgi_request, uwsgi_vars

        env = uwsgi_vars("/app/hello/", SCRIPT_NAME="/app", HTTPS="on")
        raw = uwsgi_request(s.uwsgi, env)
        data = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert data["script_name"] == "/app" and data["path"] == "/app/hello/"
        assert data["secure"] is True

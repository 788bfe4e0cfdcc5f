"""Starlette and FastAPI apps for the ASGI worker tests: streaming, background tasks,
uploads, WebSockets and lifespan state, each written the way the framework documents."""

import asyncio
import contextlib
import os

from fastapi import BackgroundTasks, FastAPI
from fastapi import WebSocket as FastWebSocket
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MARKS = os.environ.get("ASGI_TEST_MARKS", "")


def _mark(name: str, text: str) -> None:
    with open(os.path.join(MARKS, name), "a") as fh:
        fh.write(text + "\n")


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"db": f"connection-of-{os.getpid()}"}


async def home(request: Request):
    return PlainTextResponse(f"starlette {request.state.db}")


async def stream(request: Request):
    async def numbers():
        for i in range(int(request.query_params.get("n", "10"))):
            yield f"line {i}\n"
            await asyncio.sleep(0.005)

    return StreamingResponse(numbers(), media_type="text/plain")


async def background(request: Request):
    tag = request.query_params["tag"]
    return PlainTextResponse("queued", background=BackgroundTask(_later, tag))


async def _later(tag: str) -> None:
    await asyncio.sleep(0.2)
    _mark("background", tag)


async def upload(request: Request):
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
    return JSONResponse({"received": total})


async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


starlette_app = Starlette(
    routes=[
        Route("/", home),
        Route("/stream", stream),
        Route("/background", background),
        Route("/upload", upload, methods=["POST"]),
        WebSocketRoute("/ws", echo),
    ],
    lifespan=lifespan,
)

fastapi_app = FastAPI(lifespan=lifespan)


@fastapi_app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None, request: Request = None):  # type: ignore[assignment]
    return {"item_id": item_id, "q": q, "db": request.state.db, "root": request.scope["root_path"]}


@fastapi_app.post("/tasks")
async def tasks(tag: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(_later, tag)
    return {"queued": tag}


@fastapi_app.websocket("/ws")
async def fast_echo(websocket: FastWebSocket):
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        return

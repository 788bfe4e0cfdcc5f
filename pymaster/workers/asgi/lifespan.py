"""The ASGI lifespan protocol: `startup` once per worker before it accepts, `shutdown` on
every graceful exit. The app's `state` dict is kept here and copied into every scope.

`--asgi-lifespan auto` runs it and, when the app raises before answering the startup (it
does not speak lifespan), goes on without it; `on` makes that an app-load failure, as is
`lifespan.startup.failed` in both modes; `off` never calls the app with a lifespan scope.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from pymaster.log import log
from pymaster.workers.asgi.scope import ASGI_VERSION


class LifespanFailed(Exception):
    """The app's startup failed: the message says why (the worker exits 22)."""


class Lifespan:
    def __init__(self, app, mode: str, state: dict):
        self.app = app
        self.mode = mode
        self.state = state
        self.events: asyncio.Queue = asyncio.Queue()
        self.started: asyncio.Future | None = None
        self.stopped: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.answered = False  # the app sent a lifespan message: it speaks the protocol
        self.supported = True

    async def startup(self) -> None:
        """Run the startup; LifespanFailed when it fails."""
        if self.mode == "off":
            self.supported = False
            return
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.stopped = loop.create_future()
        self.task = loop.create_task(self._main())
        await self.events.put({"type": "lifespan.startup"})
        error = await self.started
        if error is not None:
            raise LifespanFailed(error)

    async def shutdown(self, timeout: float) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        assert self.stopped is not None
        await self.events.put({"type": "lifespan.shutdown"})
        try:
            error = await asyncio.wait_for(asyncio.shield(self.stopped), timeout)
        except TimeoutError:
            log(f"ASGI lifespan shutdown did not complete in {timeout:.0f} seconds")
            return
        if error:
            log(f"ASGI lifespan shutdown failed: {error}")

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if not self.answered and self.mode == "auto":
                self.supported = False
                log("ASGI 'lifespan' protocol appears unsupported: running without it")
                self._settle(self.started, None)
            else:
                self._settle(
                    self.started,
                    f"{exc.__class__.__name__}: {exc}\n" + traceback.format_exc().rstrip(),
                )
                self._settle(self.stopped, f"{exc.__class__.__name__}: {exc}")
            return
        if self.started is not None and not self.started.done():
            if self.mode == "on":
                self._settle(self.started, "the app returned without answering lifespan.startup")
            else:
                self.supported = False
                self._settle(self.started, None)
        self._settle(self.stopped, None)

    @staticmethod
    def _settle(future: asyncio.Future | None, value: str | None) -> None:
        if future is not None and not future.done():
            future.set_result(value)

    async def receive(self) -> dict[str, Any]:
        return await self.events.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.answered = True
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._settle(self.started, None)
        elif kind == "lifespan.startup.failed":
            self._settle(self.started, message.get("message") or "lifespan.startup.failed")
        elif kind == "lifespan.shutdown.complete":
            self._settle(self.stopped, None)
        elif kind == "lifespan.shutdown.failed":
            self._settle(self.stopped, message.get("message") or "lifespan.shutdown.failed")
        else:
            raise RuntimeError(f"ASGI: unexpected message {kind!r} in a lifespan scope")

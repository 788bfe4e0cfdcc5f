#!/usr/bin/env python3
"""WebSocket echo load client for the benchmarks (wrk speaks no WebSocket).

    .venv/bin/python benchmarks/ws_load.py --port 8000 --connections 50 --duration 5

Opens N connections to ws://127.0.0.1:PORT/PATH (the `websockets` asyncio client, no
per-message deflate, uvloop when installed); each one sends a SIZE-byte binary message,
waits for its echo, checks it is the same bytes, and sends the next, until DURATION seconds
have passed or it has sent MESSAGES. Prints one line `WS_JSON {...}`: echoes received,
the measured seconds, round-trip latency percentiles in microseconds and the errors
(connections that failed to open, echoes that differed, connections closed under load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException


class Tally:
    def __init__(self, connections: int) -> None:
        self.latencies: list[float] = []
        self.errors = {"connect": 0, "mismatch": 0, "closed": 0}
        self.pending = connections
        self.settled = asyncio.Event()  # set once every connection is open or has failed

    def opened(self) -> None:
        self.pending -= 1
        if self.pending <= 0:
            self.settled.set()


async def one_connection(
    url: str,
    payload: bytes,
    start: asyncio.Event,
    deadline: list[float],
    messages: int,
    tally: Tally,
) -> None:
    try:
        ws = await connect(
            url,
            compression=None,
            max_size=max(2**20, 2 * len(payload)),
            ping_interval=None,
            open_timeout=30,
        )
    except (TimeoutError, OSError, WebSocketException):
        tally.errors["connect"] += 1
        tally.opened()
        return
    tally.opened()
    async with ws:
        await start.wait()
        sent = 0
        clock = time.perf_counter
        try:
            while clock() < deadline[0] and (messages <= 0 or sent < messages):
                t0 = clock()
                await ws.send(payload)
                echo = await ws.recv()
                tally.latencies.append(clock() - t0)
                sent += 1
                if echo != payload:
                    tally.errors["mismatch"] += 1
        except (OSError, WebSocketException):
            tally.errors["closed"] += 1


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(opts: argparse.Namespace) -> dict:
    url = f"ws://{opts.host}:{opts.port}{opts.path}"
    payload = os.urandom(opts.size)
    tally, start, deadline = Tally(opts.connections), asyncio.Event(), [0.0]
    tasks = [
        asyncio.create_task(one_connection(url, payload, start, deadline, opts.messages, tally))
        for _ in range(opts.connections)
    ]
    # every connection opens (or fails) before the clock starts
    await asyncio.wait_for(tally.settled.wait(), timeout=60)
    began = time.perf_counter()
    deadline[0] = began + opts.duration
    start.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    lat = sorted(tally.latencies)
    return {
        "url": url,
        "connections": opts.connections,
        "size": opts.size,
        "messages": len(lat),
        "duration_us": elapsed * 1e6,
        "latency_p50_us": percentile(lat, 0.50) * 1e6,
        "latency_p99_us": percentile(lat, 0.99) * 1e6,
        "latency_max_us": (lat[-1] if lat else 0.0) * 1e6,
        **{f"errors_{k}": v for k, v in tally.errors.items()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load (5)")
    p.add_argument(
        "--messages",
        type=int,
        default=0,
        help="stop each connection after this many messages (0: duration only)",
    )
    p.add_argument("--size", type=int, default=1024, help="message size in bytes (1024)")
    opts = p.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    report = asyncio.run(run(opts))
    print("WS_JSON " + json.dumps(report), flush=True)
    return 0 if report["messages"] else 1


if __name__ == "__main__":
    sys.exit(main())

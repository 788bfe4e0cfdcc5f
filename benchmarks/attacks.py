"""Attacks side by side: pymaster and uWSGI 2.0 under the same bounded, loopback-only attacks,
reporting how many real requests ("probes") each served while the attack ran.

    .venv/bin/python benchmarks/attacks.py                 # every attack, both servers
    .venv/bin/python benchmarks/attacks.py --only slowloris --seconds 5 --servers pymaster

Both servers get the same app (benchmarks/apps/hello.py) on `--http-socket` with `-M -p 2
--disable-logging --listen 100`. During each attack a prober opens a fresh connection every
50 ms, sends one GET and waits at most 1 s for the whole answer; a probe counts as served when
a 200 arrived in time. Attacks (all bounded in connections, bytes and time):

- `idle-flood`: 300 connections that send nothing and stay open.
- `slowloris`: 8 connections each sending a request head one byte every 0.5 s, never ending it
  (4 per worker: more than the workers).
- `upload`: 10 clients in a row announce `Content-Length: 2147483648`, send 20 MB, disconnect;
  afterwards the workers' open deleted files are counted (what the aborted uploads left).

The output is one Markdown table (attack, server, probes sent, served, p50/max ms) and, for
the upload attack, the deleted files still held. Numbers are from this machine, this run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.external import free_port, pymaster, uwsgi  # noqa: E402

APP = ROOT / "benchmarks" / "apps" / "hello.py"
PROBE = b"GET /probe HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"


def server(name: str, port: int):
    common = ["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(APP), "-M", "-p", "2",
              "--disable-logging", "--listen", "100"]
    if name == "pymaster":
        return pymaster(common)
    return uwsgi([*common, "--need-app"])


def probe_once(port: int, timeout: float = 1.0) -> float | None:
    """Seconds for one GET, or None when it was not served within `timeout`."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(PROBE)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                if time.monotonic() - start > timeout:
                    return None
    except OSError:
        return None
    return time.monotonic() - start if data.startswith(b"HTTP/1.1 200") else None


class Prober(threading.Thread):
    def __init__(self, port: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.results: list[float | None] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.results.append(probe_once(self.port))
            self.stopping.wait(self.interval)


@contextlib.contextmanager
def idle_flood(port: int, count: int = 300) -> Iterator[None]:
    socks = []
    try:
        for _ in range(count):
            with contextlib.suppress(OSError):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        yield
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def slowloris(port: int, count: int = 8, every: float = 0.5) -> Iterator[None]:
    stop = threading.Event()
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 10_000

    def one() -> None:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for byte in head:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    stop.wait(every)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(5)


@contextlib.contextmanager
def upload(port: int, clients: int = 10, megabytes: int = 20) -> Iterator[None]:
    stop = threading.Event()
    chunk = b"x" * 65536

    def run() -> None:
        for _ in range(clients):
            if stop.is_set():
                return
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 2147483648\r\n\r\n")
                    for _ in range(megabytes * 16):
                        if stop.is_set():
                            break
                        sock.sendall(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


ATTACKS: dict[str, Callable[[int], contextlib.AbstractContextManager[None]]] = {
    "idle-flood": idle_flood,
    "slowloris": slowloris,
    "upload": upload,
}


def deleted_files(pid: int) -> int:
    count = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(OSError, psutil.Error):
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                    if target.endswith("(deleted)") and not target.startswith("/memfd:"):
                        count += 1
    return count


def run_one(attack: str, name: str, seconds: float) -> dict:
    port = free_port()
    with server(name, port) as srv:
        assert probe_once(port, 5) is not None, f"{name} does not answer"
        prober = Prober(port)
        with ATTACKS[attack](port):
            prober.start()
            time.sleep(seconds)
            prober.stopping.set()
            prober.join(5)
        served = [r for r in prober.results if r is not None]
        row = {
            "attack": attack,
            "server": name,
            "probes": len(prober.results),
            "served": len(served),
            "p50_ms": statistics.median(served) * 1000 if served else None,
            "max_ms": max(served) * 1000 if served else None,
        }
        if attack == "upload":
            time.sleep(1)
            row["deleted_files_held"] = deleted_files(srv.pid)
        return row


def markdown(rows: list[dict]) -> str:
    lines = ["| attack | server | probes | served | p50 ms | max ms | deleted files held |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"| {r['attack']} | {r['server']} | {r['probes']} | {r['served']} | "
                     f"{fmt(r['p50_ms'])} | {fmt(r['max_ms'])} | "
                     f"{r.get('deleted_files_held', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(ATTACKS))
    parser.add_argument("--servers", default="pymaster,uwsgi")
    parser.add_argument("--seconds", type=float, default=8.0, help="attack length per case")
    opts = parser.parse_args(argv)
    rows = []
    for attack in opts.only.split(","):
        for name in opts.servers.split(","):
            rows.append(run_one(attack, name, opts.seconds))
            print(rows[-1], file=sys.stderr, flush=True)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

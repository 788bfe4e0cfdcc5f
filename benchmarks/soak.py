"""Soak: a long mixed load on a small pymaster cluster while the operator's day happens to it.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes
    .venv/bin/python benchmarks/soak.py --seconds 60     # a short rehearsal

Topology (loopback): a backend instance (`-M -p 2 --max-requests 200`, uwsgi and HTTP sockets,
a master FIFO, subscribed to the router) and a router instance (`--fastrouter` with a
subscription server). Load: 4 threads through the router (one uwsgi request per connection,
as nginx sends them) and 4 threads straight to the backend's HTTP socket (one request per
connection). Events on a fixed schedule: SIGHUP to the backend every 10 s, a chain reload
(FIFO `c`) every 15 s, SIGTTIN / SIGTTOU every 20 s, and kill -9 of the router process every
60 s (its master respawns it with the pools it persisted).

Reported: requests served, errors (and how many fell within 2 s after a router kill, where the
requests in flight through the killed router are lost by design), RSS and open descriptors of
both masters and of each whole process tree at the start (after a 10 s warm-up) and the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tests.external import free_port, pymaster  # noqa: E402
from tests.load import one_uwsgi  # noqa: E402

APP = ROOT / "benchmarks" / "apps" / "hello.py"


def http_once(port: int, path: str = "/") -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        return body
    finally:
        conn.close()


class Loader(threading.Thread):
    def __init__(self, fn, port: int, stats: dict, lock: threading.Lock, stop: threading.Event):
        super().__init__(daemon=True)
        self.fn, self.port, self.stats, self.lock, self.stop = fn, port, stats, lock, stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.fn(self.port, "/")
                with self.lock:
                    self.stats["ok"] += 1
            except Exception as exc:  # counted, with when it happened
                with self.lock:
                    self.stats["errors"].append((time.monotonic(), f"{type(exc).__name__}: {exc}"))


def tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def footprint(pid: int) -> dict:
    procs = tree(pid)
    master = procs[0]
    total_rss = total_fds = 0
    for p in procs:
        try:
            total_rss += p.memory_info().rss
            total_fds += p.num_fds()
        except psutil.Error:
            pass
    return {"master_rss_mb": round(master.memory_info().rss / 2**20, 1),
            "master_fds": master.num_fds(), "tree_rss_mb": round(total_rss / 2**20, 1),
            "tree_fds": total_fds, "processes": len(procs)}


def router_child(master_pid: int) -> int | None:
    for child in psutil.Process(master_pid).children():
        with_title = " ".join(child.cmdline())
        if "fastrouter" in with_title:
            return child.pid
    kids = psutil.Process(master_pid).children()
    return kids[0].pid if kids else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    opts = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pymaster-soak-"))
    fifo = tmp / "backend.fifo"
    rport, sport, bport, hport = free_port(), free_port(), free_port(), free_port()
    os.environ["PYMASTER_RUNTIME_DIR"] = str(tmp)
    router_args = ["--fastrouter", f"127.0.0.1:{rport}", "--fastrouter-subscription-server",
                   f"127.0.0.1:{sport}", "-M", "--disable-logging"]
    backend_args = ["-s", f"127.0.0.1:{bport}", "--http-socket", f"127.0.0.1:{hport}",
                    "--wsgi-file", str(APP), "-M", "-p", "2", "--max-requests", "200",
                    "--min-worker-lifetime", "0", "--master-fifo", str(fifo),
                    "--subscribe-to", f"127.0.0.1:{sport}:localhost", "--subscribe-freq", "2",
                    "--disable-logging"]
    stats: dict = {"ok": 0, "errors": []}
    lock, stop = threading.Lock(), threading.Event()
    kills: list[float] = []
    events = {"sighup": 0, "chain": 0, "ttin": 0, "ttou": 0, "router_kill": 0}
    with pymaster(router_args, ports=[rport]) as router, \
            pymaster(backend_args, ports=[bport, hport]) as backend:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the first heartbeat reached the router
            try:
                one_uwsgi(rport, "/", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
        loaders = [Loader(one_uwsgi, rport, stats, lock, stop) for _ in range(4)]
        loaders += [Loader(http_once, hport, stats, lock, stop) for _ in range(4)]
        for t in loaders:
            t.start()
        time.sleep(10)
        start = {"backend": footprint(backend.pid), "router": footprint(router.pid)}
        began = time.monotonic()
        second = 0
        while time.monotonic() - began < opts.seconds:
            time.sleep(max(0.0, began + second + 1 - time.monotonic()))
            second += 1
            if second % 10 == 0:
                os.kill(backend.pid, signal.SIGHUP)
                events["sighup"] += 1
            if second % 15 == 7:
                try:  # never block the schedule on a FIFO nobody reads (mid re-exec)
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    try:
                        os.write(fd, b"c")
                    finally:
                        os.close(fd)
                    events["chain"] += 1
                except OSError as exc:
                    events["chain_not_delivered"] = events.get("chain_not_delivered", 0) + 1
                    print(f"t={second}s: fifo not open for reading ({exc.strerror})",
                          file=sys.stderr, flush=True)
            if second % 20 == 3:
                os.kill(backend.pid, signal.SIGTTIN)
                events["ttin"] += 1
            if second % 20 == 13:
                os.kill(backend.pid, signal.SIGTTOU)
                events["ttou"] += 1
            if second % 60 == 0:
                with lock:
                    print(f"t={second}s served={stats['ok']} errors={len(stats['errors'])} "
                          f"backend={footprint(backend.pid)}", file=sys.stderr, flush=True)
            if second % 60 == 30:
                child = router_child(router.pid)
                if child:
                    kills.append(time.monotonic())
                    os.kill(child, signal.SIGKILL)
                    events["router_kill"] += 1
        time.sleep(5)  # the last reload settles
        end = {"backend": footprint(backend.pid), "router": footprint(router.pid)}
        stop.set()
        for t in loaders:
            t.join(20)
    near_kill = [e for e in stats["errors"] if any(0 <= e[0] - k <= 2 for k in kills)]
    other = [e for e in stats["errors"] if e not in near_kill]
    report = {"seconds": opts.seconds, "served": stats["ok"], "errors": len(stats["errors"]),
              "errors_within_2s_of_a_router_kill": len(near_kill),
              "other_errors": len(other), "first_other_errors": [m for _, m in other[:5]],
              "events": events, "start": start, "end": end}
    print(json.dumps(report, indent=2))
    return 0 if not other else 1


if __name__ == "__main__":
    sys.exit(main())

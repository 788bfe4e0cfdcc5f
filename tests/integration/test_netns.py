"""A backend host lost, as in production: two backend "hosts" in their own network
namespaces, each joined to the root namespace (where the router runs) by a veth pair, each
running a pymaster backend that subscribes across its link. Under a bounded load through
the router, one host's link is cut (`ip link set DEV down` inside that host): the router must
stop sending to it within the connect timeout (not the subscription tolerance), only the
requests in flight on that host may fail, and the host rejoins once its link is back and its
heartbeats resume.

Namespaces, links and addresses are created by the test with unique names (198.18.0.0/15,
the benchmarking range, checked to be unused) and always removed. Skipped when namespaces
cannot be created (not root, no `ip`, no CAP_SYS_ADMIN)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

import pytest

from tests.external import (
    ROOT,
    free_port,
    pymaster,
    run_server,
    tmpdir,
    uwsgi_request,
    uwsgi_vars,
    wait_for_port,
)

CONNECT_TIMEOUT = 2      # --fastrouter-connect-timeout (the default is 3)
TIMEOUT = 6              # --fastrouter-timeout: bounds what was in flight on the lost host
TOLERANCE = 17           # --subscription-tolerance, the default: must NOT be what bounds it
THREADS = 6

APP = textwrap.dedent('''
    import os, time
    def application(environ, start_response):
        time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [os.environ["PM_HOST"].encode()]
''')


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=10)


def namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` (apt-get install iproute2)"
    probe = f"pmtprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


pytestmark = pytest.mark.skipif(bool(reason := namespaces_unavailable()),
                                reason=reason or "")


@dataclass
class Host:
    name: str        # PM_HOST, what its app answers
    ns: str          # network namespace
    outside: str     # veth end in the root namespace (the router's side)
    inside: str      # veth end in the host's namespace
    net: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:        # the router's address on this link
        return str(self.net.network_address + 1)

    @property
    def addr(self) -> str:           # the host's address
        return str(self.net.network_address + 2)


def free_networks(count: int) -> list[ipaddress.IPv4Network]:
    """/24s of 198.18.0.0/15 that no address or route of the root namespace touches."""
    used = ip("-4", "-o", "addr").stdout + ip("-4", "route", "show", "table", "all").stdout
    taken = set()
    for word in used.split():
        with contextlib.suppress(ValueError):
            taken.add(ipaddress.ip_network(word, strict=False))
    start = os.getpid() % 500
    out: list[ipaddress.IPv4Network] = []
    for i in range(512):
        n = (start + i) % 512
        net = ipaddress.ip_network(f"198.{18 + n // 256}.{n % 256}.0/24")
        if not any(net.overlaps(t) for t in taken if t.version == 4 and t.prefixlen > 0):
            out.append(net)
            if len(out) == count:
                return out
    raise RuntimeError("no free /24 in 198.18.0.0/15")


@contextlib.contextmanager
def hosts(*names: str):
    """One namespace + veth pair + /24 per name; everything removed on the way out."""
    tag = f"{os.getpid() % 100000}{int(time.monotonic() * 10) % 100:02d}"
    made: list[Host] = []
    try:
        for name, net in zip(names, free_networks(len(names))):
            h = Host(name, f"pmt{tag}{name}", f"pm{tag}{name}r", f"pm{tag}{name}h", net)
            ip("netns", "add", h.ns)
            made.append(h)
            ip("link", "add", h.outside, "type", "veth", "peer", "name", h.inside,
               "netns", h.ns)
            ip("addr", "add", f"{h.gateway}/24", "dev", h.outside)
            ip("link", "set", h.outside, "up")
            ip("link", "set", "lo", "up", ns=h.ns)
            ip("addr", "add", f"{h.addr}/24", "dev", h.inside, ns=h.ns)
            ip("link", "set", h.inside, "up", ns=h.ns)
        yield made
    finally:
        for h in made:
            pids = subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "link", "del", h.outside], capture_output=True)
            subprocess.run(["ip", "netns", "del", h.ns], capture_output=True)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(h.ns in left for h in made), left


@contextlib.contextmanager
def backend(h: Host, port: int, app: str, sub_port: int):
    cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "pymaster",
           "-s", f"{h.addr}:{port}", "--wsgi-file", app, "-M", "-p", "2",
           "--subscribe-to", f"{h.gateway}:{sub_port}:lost.test", "--subscribe-freq", "1"]
    env = {"PM_HOST": h.name, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    with run_server(f"backend-{h.name}", cmd, env=env) as server:
        wait_for_port(port, 15, server.proc, host=h.addr)
        yield server


class Recorder:
    """THREADS clients looping through the router until stopped (bounded by a deadline):
    (start, end, answer or error) per request."""

    def __init__(self, port: int, seconds: float = 60.0):
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, float, str, bool]] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(THREADS)]

    def run(self) -> None:
        env = uwsgi_vars("/", UWSGI_FASTROUTER_KEY="lost.test")
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            started = time.monotonic()
            try:
                raw = uwsgi_request(self.port, env, timeout=TIMEOUT + 10)
                ok = raw.startswith(b"HTTP/1.1 200 ")
                what = raw.rpartition(b"\r\n\r\n")[2].decode() if ok else repr(raw[:60])
            except OSError as exc:
                ok, what = False, repr(exc)
            with self.lock:
                self.results.append((started, time.monotonic(), what, ok))

    def since(self, t: float) -> list[tuple[float, float, str, bool]]:
        with self.lock:
            return [r for r in self.results if r[0] >= t]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(TIMEOUT + 15)


def wait_for(predicate, timeout: float, what: str, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mac(h: Host) -> str:
    return ip("-o", "link", "show", h.inside, ns=h.ns).stdout.split("link/ether ")[1].split()[0]


@pytest.mark.parametrize("how", ["same-segment", "blackhole"])
def test_lost_host_leaves_within_the_connect_timeout_and_rejoins(how):
    """same-segment: the router's kernel also gives up ARP for the host after ~3 s (the
    connect then fails with 'No route to host'); blackhole: a permanent neighbour entry, as
    across a routed or cloud network where nothing ever answers (only the connect timeout
    can tell)."""
    with tmpdir("netns") as tmp, hosts("a", "b") as (a, b):
        app = tmp / "app.py"
        app.write_text(APP)
        if how == "blackhole":
            ip("neigh", "replace", a.addr, "lladdr", mac(a), "dev", a.outside, "nud", "permanent")
        fport, sport = free_port(), free_port()
        args = ["--master", "--fastrouter", f"127.0.0.1:{fport}",
                "--fastrouter-subscription-server", f"{a.gateway}:{sport}",
                "--fastrouter-subscription-server", f"{b.gateway}:{sport}",
                "--fastrouter-connect-timeout", str(CONNECT_TIMEOUT),
                "--fastrouter-timeout", str(TIMEOUT),
                "--subscription-tolerance", str(TOLERANCE)]
        with pymaster(args, ports=[fport], env={"PYMASTER_RUNTIME_DIR": str(tmp)}) as fr, \
                backend(a, free_port(), str(app), sport), \
                backend(b, free_port(), str(app), sport):
            lost = f"lost.test => marking {a.addr}:"
            with Recorder(fport) as load:
                wait_for(lambda: {r[2] for r in load.since(0) if r[3]} >= {"a", "b"}, 15,
                         "both hosts serving through the router")
                time.sleep(1.0)
                cut = time.monotonic()
                ip("link", "set", a.inside, "down", ns=a.ns)        # host a is gone
                cut_done = time.monotonic()
                wait_for(lambda: lost in fr.logtext(), TOLERANCE, "the router marking host a")
                bound = time.monotonic() - cut
                # what was in flight on host a fails after --fastrouter-timeout; wait it out
                time.sleep(TIMEOUT + 2.5)
                after_cut = load.since(cut_done)
                settled = time.monotonic()
                ip("link", "set", a.inside, "up", ns=a.ns)          # host a is back
                back = time.monotonic()
                wait_for(lambda: "a" in {r[2] for r in load.since(back) if r[3]}, 10,
                         "host a serving again")
                rejoin = time.monotonic() - back
                time.sleep(1.0)
                end = time.monotonic()
            before = [r for r in load.results if r[0] < cut_done]
            in_flight = [r for r in before if r[1] > cut]
            failed_before = [r for r in before if not r[3]]
            failed_after = [r for r in after_cut if not r[3]]
            slow_after = max((r[1] - r[0] for r in after_cut if r[3]), default=0.0)
            rejoined = load.since(back)
            print(f"\n{how}: host a marked failed {bound:.2f} s after its link was cut "
                  f"(connect timeout {CONNECT_TIMEOUT} s, tolerance {TOLERANCE} s); "
                  f"{len(in_flight)} request(s) in flight at the cut, "
                  f"{len(failed_before)} failed; {len(after_cut)} started after the cut, "
                  f"{len(failed_after)} failed, slowest {slow_after:.2f} s; "
                  f"host a serving again {rejoin:.2f} s after its link came back; "
                  f"{len(load.results)} requests in {end - cut + 1:.0f} s")
            log = fr.logtext()
            assert bound <= CONNECT_TIMEOUT + 1.0, (bound, log[-3000:])
            assert f'unable to connect() to node "{a.addr}:' in log
            assert "no announce received" not in log           # not the tolerance
            # only the requests in flight on host a at the cut failed
            assert failed_after == [], failed_after[:5]
            assert len(failed_before) <= THREADS and all(r in in_flight for r in failed_before)
            assert all(r[2] == "b" for r in after_cut if r[0] < settled - TIMEOUT)
            # the connect timeout is what a request started after the cut could cost
            assert slow_after <= CONNECT_TIMEOUT + 1.5, slow_after
            # back: its heartbeats resume, it serves again, nothing fails
            assert rejoin <= 1 + 3, rejoin
            assert all(r[3] for r in rejoined), [r for r in rejoined if not r[3]][:5]
            assert {r[2] for r in rejoined} == {"a", "b"}

"""The fastrouter's state directory over real processes: replay protection that survives a
kill -9 of the router (the master respawns it), the directory kept across respawns and
reloads and removed when the instance stops for good, and the threat model's spoofed
unsubscribe (takes a key's traffic unsigned, refused signed).

No uWSGI needed: nodes are tiny threaded servers in the test, subscriptions are datagrams
built with pymaster's own encoder (exactly what a Subscriber sends)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import threading
import time

import pytest

from pymaster.protocols.subscription import build_packet
from tests.external import free_port, parse_http_response, tmpdir, uwsgi_request, uwsgi_vars
from tests.integration.test_fastrouter import router, stats, wait_until

SECRET = b"a-long-enough-shared-secret"


def send(port: int, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(data, ("127.0.0.1", port))


def router_children(fr) -> list[int]:
    return sorted(fr.children())


def state_dirs(base) -> list[str]:
    return [os.path.join(base, n) for n in os.listdir(base)
            if n.startswith("pymaster-fastrouter-")]


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


# --------------------------------------------------------------------------- replay

def test_replay_after_router_kill_9_is_refused(secret_file):
    stats_port = free_port()
    node = "127.0.0.1:9"                             # never connected to: stats tell
    with router("--subscriptions-sign-secret", secret_file,
                "--fastrouter-stats", f"127.0.0.1:{stats_port}") as fr:
        signed_at = time.time()
        subscribe = build_packet(0, "replay.test", node, secret=SECRET, now=signed_at)
        send(fr.sub_port, subscribe)
        wait_until(lambda: f"replay.test => new node: {node}" in fr.logtext(), 5, "new node")
        send(fr.sub_port, build_packet(1, "replay.test", node, secret=SECRET))
        wait_until(lambda: f"replay.test => marking {node} as failed" in fr.logtext(), 5,
                   "the unsubscribe")
        old = router_children(fr)
        assert len(old) == 1
        os.kill(old[0], signal.SIGKILL)             # no exit handler runs: nothing saved now
        wait_until(lambda: (new := router_children(fr)) and new != old, 10, "a respawned router")
        wait_until(lambda: "Respawned pymaster fastrouter 1" in fr.logtext(), 5, "respawn log")
        assert stats(stats_port)["subscriptions"] == []
        time.sleep(max(0.0, signed_at + 6 - time.time()))
        send(fr.sub_port, subscribe)                # the sniffed datagram, 6 s old, replayed
        wait_until(lambda: "replayed signature" in fr.logtext(), 5, "the replay refused")
        assert "invalid (sniffed ?) packet for slot 'replay.test': replayed signature" \
            in fr.logtext()
        assert stats(stats_port)["subscriptions"] == []
        assert fr.logtext().count("replay.test => new node") == 1
        assert "last-seen signature timestamp(s)" in fr.logtext()
        # the node itself, announcing again, is taken
        send(fr.sub_port, build_packet(0, "replay.test", node, secret=SECRET))
        wait_until(lambda: fr.logtext().count("replay.test => new node") == 2, 5, "rejoin")


# --------------------------------------------------------------------------- directory

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_state_directory_kept_on_respawn_and_reload_removed_on_shutdown(sig):
    with tmpdir("fr-state") as base:
        with router("--fastrouter-processes", "2", runtime_dir=base) as fr:
            wait_until(lambda: state_dirs(base), 5, "the state directory")
            state, = state_dirs(base)
            send(fr.sub_port, build_packet(0, "dir.test", "127.0.0.1:9"))
            table = os.path.join(state, "table.json")
            wait_until(lambda: os.path.exists(table), 5, "the table snapshot")
            victim = router_children(fr)[0]
            os.kill(victim, signal.SIGKILL)         # a router respawn keeps it
            wait_until(lambda: len(router_children(fr)) == 2
                       and victim not in router_children(fr), 10, "the respawn")
            assert os.path.exists(table)
            os.kill(fr.pid, signal.SIGHUP)          # so does a reload of the instance
            wait_until(lambda: "gracefully (RE)spawned pymaster master process" in fr.logtext(),
                       10, "the reload")
            wait_until(lambda: len(router_children(fr)) == 2, 10, "routers after the reload")
            assert state_dirs(base) == [state] and os.path.exists(table)
            assert sorted(n for n in os.listdir(state) if n.startswith("relay-")) == \
                ["relay-1.sock", "relay-2.sock"]
            fr.proc.send_signal(sig)                # stopping for good removes it
            assert fr.proc.wait(15) == 0
            assert state_dirs(base) == [], os.listdir(base)


# --------------------------------------------------------------------------- threat model

class Node(socketserver.ThreadingTCPServer):
    """A uwsgi 'node' answering every request with its name."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str):
        self.name = name.encode()

        class Handler(socketserver.BaseRequestHandler):
            def handle(inner):
                with contextlib.suppress(OSError):
                    inner.request.settimeout(5)
                    inner.request.recv(65536)
                    inner.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                                          + self.name)
        super().__init__(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.shutdown()
        self.server_close()


def answers(port: int, key: str, n: int = 10) -> list[str]:
    out = []
    for _ in range(n):
        raw = uwsgi_request(port, uwsgi_vars("/", UWSGI_FASTROUTER_KEY=key))
        resp = parse_http_response(raw)
        out.append(resp.text if resp.status == 200 else str(resp.status))
    return out


@pytest.mark.parametrize("signed", [False, True])
def test_spoofed_unsubscribe_takes_the_key_unsigned_only(signed, secret_file):
    real, rogue = Node("real"), Node("rogue")
    try:
        extra = ["--subscriptions-sign-secret", secret_file] if signed else []
        with router(*extra) as fr:
            secret = SECRET if signed else None
            send(fr.sub_port, build_packet(0, "bank.test", real.address, secret=secret))
            wait_until(lambda: "bank.test => new node" in fr.logtext(), 5, "the real node")
            assert set(answers(fr.port, "bank.test", 4)) == {"real"}
            # any local process: one unsubscribe of the real node, one rogue subscribe
            # (unsigned: it has no secret)
            send(fr.sub_port, build_packet(1, "bank.test", real.address))
            send(fr.sub_port, build_packet(0, "bank.test", rogue.address))
            if signed:
                wait_until(lambda: fr.logtext().count("unsigned") >= 1, 5, "the refusals")
                assert set(answers(fr.port, "bank.test")) == {"real"}
                assert "new node: " + rogue.address not in fr.logtext()
            else:
                wait_until(lambda: "new node: " + rogue.address in fr.logtext(), 5, "the rogue")
                assert set(answers(fr.port, "bank.test")) == {"rogue"}   # 100% of the traffic
    finally:
        real.close()
        rogue.close()

"""Server::Starter interop (Debian libserver-starter-perl): `start_server --port ... --
pymaster --psgi app.psgi ...` serves on the socket start_server bound (SERVER_STARTER_PORT),
and start_server's hot deploy (SIGHUP: a new generation, then SIGTERM to the old one, as
with Starman) loses no request under a steady loop of requests: the old master stops
gracefully (SIGTERM), the new generation takes over on the same, shared, socket."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.external import LOOPBACK, free_port, wait_for_port

pytestmark = [
    pytest.mark.skipif(
        not shutil.which("start_server"), reason="start_server (libserver-starter-perl) missing"
    ),
    pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing"),
]

APP = """\
sub { [200, ['Content-Type' => 'text/plain'], [$$ . ' ' . getppid() . "\\n"]] };
"""


def get(port: int) -> tuple[int, int]:
    """(worker pid, master pid) from one request on a new connection."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=20)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        worker, master = body.split()
        return int(worker), int(master)
    finally:
        conn.close()


def server_starter(tmp_path, port: int, *pymaster_args: str, signal_on_hup: str = "TERM"):
    log = open(tmp_path / "start_server.log", "wb")
    cmd = [
        "start_server",
        f"--port={LOOPBACK}:{port}",
        "--interval=3",
        f"--signal-on-hup={signal_on_hup}",
        "--",
        sys.executable,
        "-m",
        "pymaster",
        *pymaster_args,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    tree = []
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        pass
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    for p in tree:
        try:
            p.kill()
        except psutil.Error:
            pass


def wait_serving(port: int, want_master=None, exclude=(), timeout: float = 60.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = get(port)
            if last[1] not in exclude and (want_master is None or last[1] == want_master):
                return last
        except (OSError, AssertionError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"no answer from a new generation on {port} (last {last})")


@pytest.mark.parametrize("signal_on_hup", ["TERM", "QUIT"])
def test_start_server_socket_and_hot_deploy_lose_no_request(tmp_path, signal_on_hup):
    """TERM (start_server's default) and QUIT (what Starman's docs tell start_server to
    send) are both a graceful stop under Server::Starter."""
    app = tmp_path / "app.psgi"
    app.write_text(APP)
    port = free_port()
    proc, log = server_starter(
        tmp_path,
        port,
        "--psgi",
        str(app),
        "--master",
        "--processes",
        "2",
        "--disable-logging",
        signal_on_hup=signal_on_hup,
    )
    logpath = tmp_path / "start_server.log"
    try:
        wait_for_port(port, 30)
        first_worker, first_master = wait_serving(port)
        assert psutil.Process(first_master).ppid() == proc.pid  # start_server's child
        text = logpath.read_text(errors="replace")
        assert "- Server::Starter socket detected -" in text
        assert re.search(rf"http socket 0 inherited TCP address 127\.0\.0\.1:{port} fd \d+", text)

        failures: list[str] = []
        masters: set[int] = set()
        done = threading.Event()
        count = [0]

        def load() -> None:
            while not done.is_set():
                try:
                    masters.add(get(port)[1])
                    count[0] += 1
                except Exception as exc:  # every failure is reported
                    failures.append(repr(exc))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGHUP)  # hot deploy
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and psutil.pid_exists(first_master):
            try:
                if psutil.Process(first_master).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        time.sleep(1.0)
        done.set()
        for t in threads:
            t.join(30)
        assert not failures, failures[:5]
        assert count[0] > 20
        new_worker, new_master = wait_serving(port, exclude={first_master})
        assert new_master != first_master and new_master in masters
        assert psutil.Process(new_master).ppid() == proc.pid
        assert (
            not psutil.pid_exists(first_master)
            or psutil.Process(first_master).status() == psutil.STATUS_ZOMBIE
        )
        text = logpath.read_text(errors="replace")
        old = text[text.index(f"sending {signal_on_hup} to old workers:{first_master}") :]
        assert "graceful shutdown triggered" in old.split(f"old worker {first_master} died")[0]
        assert re.search(rf"old worker {first_master} died, status:0", text), text[-3000:]
    finally:
        stop(proc)
        log.close()


def test_pymaster_own_reload_keeps_the_shared_socket(tmp_path):
    """SIGHUP to pymaster itself (its own graceful reload, a re-exec) under start_server:
    the socket goes through LISTEN_FDS, still shared, and is served after the reload."""
    app = tmp_path / "app.psgi"
    app.write_text(APP)
    port = free_port()
    proc, log = server_starter(tmp_path, port, "--psgi", str(app), "-M", "-p", "1")
    logpath = tmp_path / "start_server.log"
    try:
        wait_for_port(port, 30)
        worker, master = wait_serving(port)
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline and "binary reloading pymaster" not in logpath.read_text()
        ):
            time.sleep(0.1)
        new_worker = worker
        while time.monotonic() < deadline and new_worker == worker:
            try:
                new_worker, same_master = get(port)
            except OSError:
                time.sleep(0.1)
                continue
            assert same_master == master  # a re-exec keeps the pid
            time.sleep(0.1)
        assert new_worker != worker
        text = logpath.read_text(errors="replace")
        assert re.search(rf"found fd 3 mapped to socket 0 \(127\.0\.0\.1:{port}\)", text), text
        assert text.count("- Server::Starter socket detected -") == 2, text
    finally:
        stop(proc)
        log.close()

"""The Emperor (`pymaster --emperor`), with real processes: vassal masters started from a
directory or a glob, reloaded on touch, respawned after a crash (throttled while broken),
stopped on removal, signals to the Emperor, the stats JSON, and no orphan ever left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.client import http_get, port_open
from tests.pm import Background, Pymaster, free_port

APP = """\
import json, os, time

def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ.get("QUERY_STRING") or 30))
    body = json.dumps({"pid": os.getpid(), "ppid": os.getppid(),
                       "name": os.environ.get("VASSAL_NAME", ""),
                       "uid": os.getuid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


class Vassals:
    """A vassal directory, the INI every vassal inherits (the app) and a running Emperor."""

    def __init__(self, root: Path, tmp_path: Path):
        self.root = root
        self.tmp_path = tmp_path
        self.dir = root / "vassals"
        self.dir.mkdir()
        (root / "app.py").write_text(APP)
        self.base = root / "base.ini"
        self.base.write_text(f"[uwsgi]\nwsgi-file = {root / 'app.py'}\n")
        self.stats_port = free_port()
        self.emperor: Pymaster | None = None
        self.ports: dict[str, int] = {}

    def write(self, name: str, extra: str = "", port: int | None = None) -> int:
        port = port or free_port()
        self.ports[name] = port
        (self.dir / f"{name}.ini").write_text(
            "[uwsgi]\n"
            f"http-socket = 127.0.0.1:{port}\n"
            "env = VASSAL_NAME=%n\n"
            "procname-prefix-spaced = [%n]\n" + extra
        )
        return port

    def start(self, *extra: str, spec: str | None = None) -> Pymaster:
        self.emperor = Pymaster(
            [
                "--emperor", spec or str(self.dir),
                "--emperor-freq", "1",
                "--vassals-inherit", str(self.base),
                "--vassal-set", "processes=2",
                "--emperor-stats", f"127.0.0.1:{self.stats_port}",
                *extra,
            ],
            self.tmp_path,
        )  # fmt: skip
        return self.emperor

    def stats(self) -> dict:
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=10) as sock:
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))

    def vassal(self, vid: str) -> dict | None:
        return next((v for v in self.stats()["vassals"] if v["id"] == vid), None)

    def wait_vassal(self, vid: str, timeout: float = 30.0, **want) -> dict:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.vassal(vid)
            if seen and all(seen[k] == v for k, v in want.items()):
                return seen
            time.sleep(0.1)
        assert self.emperor is not None
        raise AssertionError(f"vassal {vid} {want}: last seen {seen}\n{self.emperor.log()}")

    def descendants(self) -> list[psutil.Process]:
        assert self.emperor is not None
        try:
            return psutil.Process(self.emperor.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def close(self) -> None:
        if self.emperor is None:
            return
        kids = self.descendants()
        self.emperor.stop()
        for kid in kids:
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def vassals(tmp_path):
    v = Vassals(tmp_path, tmp_path)
    yield v
    v.close()


def get(port: int) -> dict:
    return json.loads(http_get(port, "/", timeout=10).body)


def wait_serving(port: int, timeout: float = 30.0, emperor: Pymaster | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return get(port)
        except OSError:
            time.sleep(0.1)
    log = emperor.log() if emperor else ""
    raise AssertionError(f"nothing serves on {port} after {timeout}s\n{log}")


def wait_closed(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(port):
            return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still open after {timeout}s")


def wait_gone(procs: list[psutil.Process], timeout: float = 30.0) -> None:
    """Every process exited (and was reaped by someone): no orphan left running."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"still running: {[(p.pid, _cmd(p)) for p in alive]}"


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return "?"


def worker_pids(master_pid: int) -> set[int]:
    return {c.pid for c in psutil.Process(master_pid).children() if _running(c)}


def new_worker_pid(port: int, old: set[int], timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = get(port)["pid"]
        except OSError:
            pid = None
        if pid is not None and pid not in old:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no new worker on {port} after {timeout}s")


# --------------------------------------------------------------------------------- start-up


def test_vassals_start_with_the_emperor_options_and_their_names(vassals):
    pa = vassals.write("a")
    pb = vassals.write("b")
    (vassals.dir / "readme.txt").write_text("not a vassal\n")
    (vassals.dir / "c.xml").write_text("<uwsgi/>\n")
    emperor = vassals.start()
    assert wait_serving(pa, emperor=emperor)["name"] == "a"  # %n in the vassal file
    assert wait_serving(pb, emperor=emperor)["name"] == "b"
    emperor.wait_log(r"\[emperor\] vassal a\.ini is ready to accept requests", 30)
    emperor.wait_log(r"\[emperor\] vassal b\.ini is now loyal", 30)
    log = emperor.log()
    assert "*** starting pymaster Emperor ***" in log
    assert f"*** Emperor stats server enabled on 127.0.0.1:{vassals.stats_port} fd: " in log
    assert "[emperor] vassal a.ini has been spawned" in log
    assert "[emperor] c.xml is not an INI file: pymaster's vassals are *.ini files" in log
    assert "readme.txt" not in log
    # the vassal's own file, then the inherited one
    files = re.findall(r"\[pymaster\] getting INI configuration from (\S+)", log)
    assert str(vassals.dir / "a.ini") in files and str(vassals.base) in files

    doc = vassals.stats()
    assert doc["emperor"] == [str(vassals.dir)] and doc["emperor_tyrant"] == 0
    assert doc["pid"] == emperor.pid and doc["throttle_level"] == 0 and doc["blacklist"] == []
    by_id = {v["id"]: v for v in vassals.stats()["vassals"]}
    assert set(by_id) == {"a.ini", "b.ini"}
    for vid in ("a.ini", "b.ini"):
        v = vassals.wait_vassal(vid, loyal=1, ready=1, accepting=1)
        assert v["monitor"] == str(vassals.dir) and v["respawns"] == 0 and v["cursed"] == 0
        master = psutil.Process(v["pid"])
        assert master.ppid() == emperor.pid
        assert master.cwd() == str(vassals.dir)  # dir monitor: vassals run in the directory
        assert len(worker_pids(v["pid"])) == 2  # --vassal-set processes=2
        name = vid.removesuffix(".ini")
        assert " ".join(master.cmdline()).startswith(f"[{name}] pymaster master")
    title = " ".join(psutil.Process(emperor.pid).cmdline())
    assert title.startswith("pymaster emperor")


def test_glob_monitor_names_vassals_by_path(vassals):
    pa = vassals.write("a")
    (vassals.dir / "skip.conf").write_text("[uwsgi]\n")
    spec = str(vassals.dir / "*.ini")
    emperor = vassals.start(spec=spec)
    assert wait_serving(pa, emperor=emperor)["name"] == "a"
    path = str(vassals.dir / "a.ini")
    emperor.wait_log(rf"\[emperor\] vassal {path} has been spawned")
    v = vassals.wait_vassal(path, loyal=1)
    assert v["monitor"] == spec
    assert [x["id"] for x in vassals.stats()["vassals"]] == [path]


def test_emperor_refuses_what_it_cannot_do(tmp_path):
    cases = [
        (["--emperor", str(tmp_path), "--http-socket", "127.0.0.1:1"],
         "--emperor runs only the Emperor; --http-socket configures an instance"),
        (["--emperor", str(tmp_path / "missing")], "no such directory or file"),
        (["--emperor", "zmq://127.0.0.1:5000"], "zmq:// monitors are not part of pymaster"),
        (["--emperor", str(tmp_path), "--emperor-on-demand-dir", str(tmp_path)],
         "--emperor-on-demand-directory: uWSGI's on-demand vassals"),
        (["--emperor", str(tmp_path), "--emperor-freq", "0"],
         "option '--emperor-freq' must be >= 1, got '0'"),
    ]  # fmt: skip
    for args, message in cases:
        pm = Pymaster(args, tmp_path)
        try:
            assert pm.wait(20) == 1, pm.log()
            assert message in pm.log()
        finally:
            pm.stop()


# ------------------------------------------------------------------------------ lifecycle


def test_touch_reloads_gracefully_in_place(vassals):
    pa = vassals.write("a")
    pb = vassals.write("b")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    wait_serving(pb, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    b = vassals.wait_vassal("b.ini", loyal=1)
    old_a, old_b = worker_pids(a["pid"]), worker_pids(b["pid"])
    later = time.time() + 2
    os.utime(vassals.dir / "a.ini", (later, later))
    emperor.wait_log(r"\[emperor\] reload the pymaster instance a\.ini", 15)
    new_worker_pid(pa, old_a)
    emperor.wait_log(r"gracefully \(RE\)spawned pymaster master process", 30)
    again = vassals.wait_vassal("a.ini", ready=1)
    assert again["pid"] == a["pid"]  # the vassal master re-exec'd in place, as uWSGI's
    assert again["respawns"] == 1 and again["last_mod"] == int(later)
    assert not (worker_pids(a["pid"]) & old_a)
    wait_gone([psutil.Process(p) for p in old_a if psutil.pid_exists(p)])
    # b was not touched
    assert vassals.vassal("b.ini")["pid"] == b["pid"] and worker_pids(b["pid"]) == old_b
    assert "reload the pymaster instance b.ini" not in emperor.log()


def test_a_broken_edit_keeps_the_vassal_serving_its_previous_configuration(vassals):
    pa = vassals.write("a")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    workers = worker_pids(a["pid"])
    path = vassals.dir / "a.ini"
    path.write_text(path.read_text() + "[broken\n")
    later = time.time() + 2
    os.utime(path, (later, later))
    emperor.wait_log(r"\[emperor\] reload the pymaster instance a\.ini", 15)
    emperor.wait_log(r"\*\*\* reload aborted: the workers keep serving", 30)
    assert get(pa)["name"] == "a"
    assert vassals.vassal("a.ini")["pid"] == a["pid"] and worker_pids(a["pid"]) == workers
    assert "curse the pymaster instance a.ini" not in emperor.log()


def test_a_vassal_that_outlives_the_mercy_is_killed(vassals):
    pa = vassals.write("a")
    emperor = vassals.start("--emperor-graceful-shutdown", "--reload-mercy", "2")
    wait_serving(pa, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    procs = vassals.descendants()
    slow = threading.Thread(target=lambda: _ignore(http_get, pa, "/slow", timeout=60), daemon=True)
    slow.start()
    time.sleep(1)  # the request is in a worker: a graceful stop waits for it
    (vassals.dir / "a.ini").unlink()
    emperor.wait_log(r"\[emperor\] stop the pymaster instance a\.ini", 15)
    emperor.wait_log(r"graceful shutdown triggered", 15)
    emperor.wait_log(r"\[emperor\] NO MERCY for vassal a\.ini !!!", 15)
    emperor.wait_log(r"\[emperor\] removed pymaster instance a\.ini", 15)
    wait_gone(procs)
    assert not psutil.pid_exists(a["pid"]) or not _running(psutil.Process(a["pid"]))


def _ignore(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError:
        pass


def test_a_killed_vassal_is_respawned_and_leaves_no_orphan(vassals):
    pa = vassals.write("a")
    pb = vassals.write("b")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    wait_serving(pb, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    b = vassals.wait_vassal("b.ini", loyal=1)
    a_workers = worker_pids(a["pid"])
    old = psutil.Process(b["pid"])
    old_workers = [psutil.Process(p) for p in worker_pids(b["pid"])]
    old.kill()
    emperor.wait_log(rf"\[emperor\] curse the pymaster instance b\.ini \(pid: {b['pid']}\)", 15)
    emperor.wait_log(r"\[emperor\] removed pymaster instance b\.ini", 15)
    wait_gone(old_workers)  # the workers died with their master
    back = vassals.wait_vassal("b.ini", loyal=1, timeout=30)
    assert back["pid"] != b["pid"]
    assert wait_serving(pb, emperor=emperor)["ppid"] == back["pid"]
    # a was not affected
    assert vassals.vassal("a.ini")["pid"] == a["pid"] and worker_pids(a["pid"]) == a_workers


def test_removed_file_stops_its_vassal_and_a_new_file_starts_one(vassals):
    pa = vassals.write("a")
    pb = vassals.write("b")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    wait_serving(pb, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    b = vassals.wait_vassal("b.ini", loyal=1)
    b_procs = [psutil.Process(b["pid"])] + [psutil.Process(p) for p in worker_pids(b["pid"])]
    (vassals.dir / "b.ini").unlink()
    emperor.wait_log(r"\[emperor\] stop the pymaster instance b\.ini", 15)
    emperor.wait_log(r"\[emperor\] removed pymaster instance b\.ini", 30)
    wait_closed(pb)
    wait_gone(b_procs)
    assert "curse the pymaster instance b.ini" not in emperor.log()
    assert [v["id"] for v in vassals.stats()["vassals"]] == ["a.ini"]
    pc = vassals.write("c")
    assert wait_serving(pc, emperor=emperor)["name"] == "c"
    emperor.wait_log(r"\[emperor\] vassal c\.ini has been spawned")
    assert vassals.vassal("a.ini")["pid"] == a["pid"]
    assert get(pa)["name"] == "a"


def test_a_broken_vassal_is_throttled_and_retried_without_touching_the_others(vassals):
    pa = vassals.write("a")
    (vassals.dir / "bad.ini").write_text(
        f"[uwsgi]\nhttp-socket = 127.0.0.1:{free_port()}\n[broken\n"
    )
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    a = vassals.wait_vassal("a.ini", loyal=1)
    a_workers = worker_pids(a["pid"])
    emperor.wait_log(
        r"\[emperor\] unloyal bad behaving vassal found: bad\.ini throttling it\.\.\.", 40
    )
    log = emperor.log()
    assert log.count("[emperor] curse the pymaster instance bad.ini") >= 3
    assert "bad.ini line 3: expected '[section]', got '[broken'" in log  # the vassal's own error
    listed = {item["id"]: item for item in vassals.stats()["blacklist"]}
    assert listed["bad.ini"]["attempt"] >= 2 and listed["bad.ini"]["throttle_level"] >= 1000
    assert get(pa)["name"] == "a"
    assert vassals.vassal("a.ini")["pid"] == a["pid"] and worker_pids(a["pid"]) == a_workers
    # fixed: started at the next allowed scan, and out of the blacklist once ready
    port = free_port()
    (vassals.dir / "bad.ini").write_text(
        f"[uwsgi]\nhttp-socket = 127.0.0.1:{port}\nenv = VASSAL_NAME=%n\n"
    )
    assert wait_serving(port, timeout=40, emperor=emperor)["name"] == "bad"
    vassals.wait_vassal("bad.ini", loyal=1)
    assert vassals.stats()["blacklist"] == []


def test_usr1_lists_vassals_and_urg_clears_the_blacklist(vassals):
    pa = vassals.write("a")
    (vassals.dir / "bad.ini").write_text("[uwsgi]\nhttp-socket = 127.0.0.1:99999\n")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    vassals.wait_vassal("a.ini", loyal=1)
    emperor.wait_log(r"removed pymaster instance bad\.ini", 30)
    emperor.signal(signal.SIGUSR1)
    emperor.wait_log(r"vassal instance a\.ini \(last modified \d+\) status 0 loyal 1 zerg 0")
    deadline = time.monotonic() + 20
    while not vassals.stats()["blacklist"] and time.monotonic() < deadline:
        time.sleep(0.1)
    (vassals.dir / "bad.ini").unlink()  # nothing respawns it into the blacklist again
    emperor.wait_log(r"removed pymaster instance bad\.ini", 30)
    time.sleep(1.5)
    assert vassals.stats()["blacklist"]
    emperor.signal(signal.SIGURG)
    emperor.wait_log(r"\[emperor\] cleaning up blacklist \.\.\.")
    deadline = time.monotonic() + 10
    while vassals.stats()["blacklist"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert vassals.stats()["blacklist"] == []


# -------------------------------------------------------------------- signals to the Emperor


def test_sighup_reloads_every_vassal_and_fails_no_request(vassals):
    ports = [vassals.write("a"), vassals.write("b")]
    emperor = vassals.start()
    for port in ports:
        wait_serving(port, emperor=emperor)
    masters = {vid: vassals.wait_vassal(vid, loyal=1)["pid"] for vid in ("a.ini", "b.ini")}
    old = {vid: worker_pids(pid) for vid, pid in masters.items()}
    failures: list[str] = []
    served: dict[int, set[int]] = {port: set() for port in ports}
    stop = threading.Event()

    def load(port: int) -> None:
        while not stop.is_set():
            try:
                served[port].add(get(port)["pid"])
            except Exception as exc:  # every failure counts
                failures.append(f"{port}: {exc!r}")
            time.sleep(0.02)

    threads = [threading.Thread(target=load, args=(port,), daemon=True) for port in ports]
    for t in threads:
        t.start()
    time.sleep(0.5)
    emperor.signal(signal.SIGHUP)
    emperor.wait_log(r"\[emperor\] reload the pymaster instance a\.ini")
    emperor.wait_log(r"\[emperor\] reload the pymaster instance b\.ini")
    emperor.wait_log(r"gracefully \(RE\)spawned pymaster master process", 40, count=2)
    deadline = time.monotonic() + 40
    old_all = old["a.ini"] | old["b.ini"]
    while time.monotonic() < deadline and not all(served[p] - old_all for p in ports):
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(20)
    assert not failures, failures[:5]
    for port in ports:
        assert served[port] - old_all, f"no new worker served on {port}"
    for vid, pid in masters.items():
        assert vassals.wait_vassal(vid, ready=1)["pid"] == pid  # same vassal masters


def test_sighup_while_a_vassal_starts_is_a_reload_not_its_death(vassals):
    vassals.write("a")
    emperor = vassals.start()
    emperor.wait_log(r"\[emperor\] vassal a\.ini has been spawned", 15)
    emperor.signal(signal.SIGHUP)  # the vassal is still importing pymaster
    emperor.wait_log(r"\[emperor\] reload the pymaster instance a\.ini")
    pc = vassals.write("c")
    emperor.wait_log(r"\[emperor\] vassal c\.ini has been spawned", 15)
    emperor.signal(signal.SIGHUP)
    assert wait_serving(pc, emperor=emperor)["name"] == "c"
    assert wait_serving(vassals.ports["a"], emperor=emperor)["name"] == "a"
    vassals.wait_vassal("a.ini", ready=1)
    vassals.wait_vassal("c.ini", ready=1)
    assert "curse the pymaster instance" not in emperor.log()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGQUIT])
def test_stop_signals_bury_the_emperor_and_every_vassal(vassals, sig):
    ports = [vassals.write("a"), vassals.write("b")]
    emperor = vassals.start()
    for port in ports:
        wait_serving(port, emperor=emperor)
    vassals.wait_vassal("a.ini", loyal=1)
    vassals.wait_vassal("b.ini", loyal=1)
    procs = vassals.descendants()
    assert len(procs) >= 6  # 2 masters, 4 workers
    emperor.signal(sig)
    assert emperor.wait(40) == 0
    log = emperor.log()
    assert "[emperor] *** RAGNAROK EVOKED ***" in log
    assert "[emperor] stop the pymaster instance a.ini" in log
    assert "[emperor] removed pymaster instance b.ini" in log
    assert log.rstrip().endswith("The Emperor is buried.")
    if sig == signal.SIGTERM:  # graceful for every vassal
        assert log.count("graceful shutdown triggered") == 2
    else:  # at once, as uWSGI's Ragnarok
        assert log.count("SIGINT/SIGTERM received...killing workers...") == 2
    wait_gone(procs)
    for port in ports:
        assert not port_open(port)


def test_graceful_ragnarok_lets_requests_finish_and_waits_without_spinning(vassals):
    pa = vassals.write("a")
    emperor = vassals.start()
    wait_serving(pa, emperor=emperor)
    vassals.wait_vassal("a.ini", loyal=1)
    procs = vassals.descendants()
    slow = Background(http_get, pa, "/slow?5", None, 60)
    time.sleep(1)  # the request is in a worker
    me = psutil.Process(emperor.pid)
    before = sum(me.cpu_times()[:2])
    emperor.signal(signal.SIGTERM)
    emperor.wait_log(r"graceful shutdown triggered", 15)
    time.sleep(2)  # the Emperor waits for its vassal, which waits for the request
    spent = sum(me.cpu_times()[:2]) - before
    assert spent < 0.5, f"the Emperor used {spent:.2f} s of CPU while it waited"
    response = slow.join(30)
    assert response.status == 200  # the in-flight request finished
    assert emperor.wait(30) == 0
    assert "NO MERCY" not in emperor.log()
    wait_gone(procs)


def test_sigkill_of_the_emperor_takes_the_vassals_down(vassals):
    ports = [vassals.write("a"), vassals.write("b")]
    emperor = vassals.start()
    for port in ports:
        wait_serving(port, emperor=emperor)
    vassals.wait_vassal("a.ini", loyal=1)
    vassals.wait_vassal("b.ini", loyal=1)
    procs = vassals.descendants()
    emperor.proc.kill()
    emperor.wait(10)
    wait_gone(procs)
    for port in ports:
        wait_closed(port)


def test_emperor_pidfile_and_notify(vassals, tmp_path):
    pa = vassals.write("a")
    pidfile = tmp_path / "emperor.pid"
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind(path)
        ns.settimeout(30)
        vassals.emperor = Pymaster(
            ["--emperor", str(vassals.dir), "--emperor-freq", "1",
             "--vassals-inherit", str(vassals.base), "--emperor-pidfile", str(pidfile),
             "--emperor-stats", f"127.0.0.1:{vassals.stats_port}"],
            tmp_path, env={"NOTIFY_SOCKET": path},
        )  # fmt: skip
        emperor = vassals.emperor
        first = ns.recv(4096)
        assert b"READY=1" in first and b"STATUS=The Emperor is governing 1 vassals" in first
        wait_serving(pa, emperor=emperor)
        assert pidfile.read_text() == f"{emperor.pid}\n"
        # the vassal's READY went to the Emperor, never to systemd's socket
        vassals.wait_vassal("a.ini", ready=1)
        emperor.signal(signal.SIGTERM)
        got = []
        while b"STATUS=The Emperor is buried." not in b"".join(got):
            got.append(ns.recv(4096))
        assert any(b"STOPPING=1" in m for m in got)
        assert not any(b"pymaster is ready" in m for m in [first, *got])
        assert emperor.wait(30) == 0
    assert not pidfile.exists()


# ------------------------------------------------------------------ root: tyrant, vassal --uid

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ids change)")


@pytest.fixture
def open_vassals(tmp_path):
    """Vassals under a directory `nobody` can read (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="pymaster-emperor-"))
    root.chmod(0o755)
    v = Vassals(root, tmp_path)
    v.dir.chmod(0o755)
    yield v
    v.close()
    shutil.rmtree(root, ignore_errors=True)


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    import subprocess
    import sys

    def as_nobody():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    try:
        return (
            subprocess.run(
                [sys.executable, "-c", "pass"],
                preexec_fn=as_nobody,
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        )
    except OSError:
        return False


@needs_root
@pytest.mark.skipif(
    not _nobody_can_run_python(),
    reason="uid 65534 cannot run this interpreter (it lives under a root-only "
    "directory); a tyrant's vassal execs it as the file's owner",
)
def test_tyrant_runs_each_vassal_as_its_file_owner(open_vassals):
    v = open_vassals
    nobody = (65534, 65534)
    pa = v.write("a")
    os.chown(v.dir / "a.ini", *nobody)
    v.write("root")  # owned by root: refused
    emperor = v.start("--emperor-tyrant")
    assert wait_serving(pa, emperor=emperor)["uid"] == 65534
    emperor.wait_log(r"\[emperor-tyrant\] dropping privileges to 65534 65534 for instance a\.ini")
    emperor.wait_log(r"\[emperor-tyrant\] invalid permissions for vassal root\.ini")
    a = v.wait_vassal("a.ini", loyal=1)
    assert psutil.Process(a["pid"]).uids().real == 65534
    assert a["uid"] == 65534 and v.stats()["emperor_tyrant"] == 1
    time.sleep(2.5)  # refused once, not at every scan
    assert emperor.log().count("invalid permissions for vassal root.ini") == 1
    assert [x["id"] for x in v.stats()["vassals"]] == ["a.ini"]
    procs = v.descendants()
    os.chown(v.dir / "a.ini", 65534, 0)
    emperor.wait_log(
        r"!!! permissions of file a\.ini changed\. stopping the instance\.\.\. !!!", 15
    )
    wait_gone(procs)


@needs_root
def test_a_vassal_that_drops_privileges_still_dies_with_the_emperor(open_vassals):
    v = open_vassals
    pa = v.write("a", "uid = 65534\ngid = 65534\n")
    emperor = v.start()
    assert wait_serving(pa, emperor=emperor)["uid"] == 65534
    a = v.wait_vassal("a.ini", loyal=1)
    assert psutil.Process(a["pid"]).uids().real == 65534
    procs = v.descendants()
    emperor.proc.kill()
    emperor.wait(10)
    wait_gone(procs)
    wait_closed(pa)

"""uWSGI's logging options over real processes: the log master (`--log-master` and what implies
it), `logger = file:`, `req-logger` for both worker kinds, `log-route`, the JSON encoder,
`log-date`, rotation at `log-maxsize`, `log-reopen` on SIGHUP, and whole lines under bursts
of several workers (pymaster/master/logmaster.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.client import uwsgi_packet, uwsgi_vars
from tests.conftest import app_args as make_app_args
from tests.pm import Pymaster, exchange, free_port, uwsgi_request, wait_port

WSGI_APP = r'''
import os
import sys
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    if path == "/say":  # one line on stderr, as an app's logging does
        sys.stderr.write(query.get("text", "APP hello") + "\n")
        sys.stderr.flush()
    elif path == "/tricky":
        sys.stderr.write('APP "quoted"\ttab \\ backslash \x01 ctl caf\u00e9\n')
        sys.stderr.flush()
    elif path == "/burst":  # numbered lines: one big write, then lines cut in two writes
        n, size, tag = int(query["n"]), int(query["size"]), query["tag"]
        lines = [f"BURST {tag} {i:06d} " + tag[0] * size + "\n" for i in range(n)]
        half = n // 2
        os.write(2, "".join(lines[:half]).encode())
        for line in lines[half:]:
            data = line.encode()
            os.write(2, data[:7])
            time.sleep(0.0005)
            os.write(2, data[7:])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''

PSGI_APP = r'''
use strict;
use warnings;

sub {
    my $env = shift;
    my %q = map { split /=/, $_, 2 } grep { /=/ } split /&/, $env->{QUERY_STRING} // '';
    if ($env->{PATH_INFO} eq '/say') {
        syswrite STDERR, ($q{text} // 'APP hello') . "\n";
    }
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => 2], ['ok']];
};
'''

REQUEST_LINE = re.compile(r"^\[pid: \d+\|app: 0\|req: \d+/\d+\] .* => generated .*$")
CTIME = r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}"


class Served:
    def __init__(self, pm: Pymaster, port: int):
        self.pm, self.port = pm, port

    def get(self, path: str = "/say", query: str = "") -> bytes:
        env = uwsgi_vars(path, port=self.port)
        env["QUERY_STRING"] = query
        env["REQUEST_URI"] = path + (f"?{query}" if query else "")
        return uwsgi_request(self.port, env, b"", timeout=30)


@pytest.fixture
def serve(tmp_path):
    started: list[Pymaster] = []

    def start(*options, kind: str = "wsgi", processes: int = 1) -> Served:
        app_args = make_app_args(tmp_path, kind, WSGI_APP, PSGI_APP)
        port = free_port()
        pm = Pymaster(["-M", "-p", str(processes), "-s", f"127.0.0.1:{port}", *app_args,
                       *[str(o) for o in options]], tmp_path)
        started.append(pm)
        wait_port(port, timeout=20)
        pm.wait_workers(processes, timeout=20)
        return Served(pm, port)

    yield start
    for pm in started:
        pm.stop()


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_file(path: Path, pattern: str, count: int = 1, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = read(path)
        if len(re.findall(pattern, text, re.M)) >= count:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} has no {count}x {pattern!r}:\n{read(path)}")


def test_logger_file_gets_the_master_and_worker_lines(serve, tmp_path):
    main = tmp_path / "main.log"
    served = serve("--logger", f"file:{main}", processes=2)
    served.get("/say", "text=APP-from-the-worker")
    text = wait_file(main, r"GET /say\?text=APP-from-the-worker")
    assert "spawned pymaster master process" in text
    assert re.search(r"^spawned pymaster worker 2 \(pid: \d+", text, re.M)
    assert re.search(r"^APP-from-the-worker$", text, re.M)
    assert "APP-from-the-worker" not in served.pm.log()  # nothing left on stderr
    served.pm.signal(signal.SIGINT)
    served.pm.wait(10)
    assert read(main).rstrip().endswith("goodbye to pymaster.")


def test_req_logger_gets_only_the_request_lines(serve, tmp_path, kind):
    main, requests = tmp_path / "main.log", tmp_path / "req.log"
    served = serve("--req-logger", f"file:{requests}", "--logger", f"file:{main}", kind=kind)
    for i in range(3):
        served.get("/say", f"text=APP-line-{i}")
    text = wait_file(requests, r"GET /say", count=3)
    lines = text.splitlines()
    assert len(lines) == 3 and all(REQUEST_LINE.match(line) for line in lines), text
    assert [re.search(r"text=(APP-line-\d)", line).group(1) for line in lines] == [
        "APP-line-0", "APP-line-1", "APP-line-2"]
    log = wait_file(main, r"^APP-line-2$")
    assert "spawned pymaster master process" in log
    assert not [line for line in log.splitlines() if REQUEST_LINE.match(line)], log


def test_log_route_splits_lines_by_regex(serve, tmp_path):
    main, app = tmp_path / "main.log", tmp_path / "app.log"
    served = serve("--logger", f"applog file:{app}", "--logger", f"file:{main}",
                   "--log-route", "applog ^APP ", "--req-logger", f"file:{tmp_path / 'r.log'}")
    for i in range(3):
        served.get("/say", f"text=APP line {i}")
        served.get("/say", f"text=other line {i}")
    app_text = wait_file(app, r"^APP line 2$")
    main_text = wait_file(main, r"^other line 2$")
    assert app_text.splitlines() == ["APP line 0", "APP line 1", "APP line 2"]
    assert "APP line" not in main_text
    assert "spawned pymaster master process" in main_text


def test_json_encoder_writes_valid_json_per_line(serve, tmp_path):
    out = tmp_path / "json.log"
    served = serve("--logger", f"file:{out}",
                   "--log-encoder", 'json {"time":${unix}, "source":"uwsgi", "message":"${msg}"}',
                   "--log-encoder", "nl")
    served.get("/tricky")
    wait_file(out, r"quoted")
    served.pm.signal(signal.SIGINT)
    served.pm.wait(10)
    records = [json.loads(line) for line in read(out).splitlines()]  # every line parses
    assert all(set(r) == {"time", "source", "message"} for r in records)
    assert all(abs(r["time"] - time.time()) < 60 for r in records)
    messages = [r["message"] for r in records]
    assert 'APP "quoted"\ttab \\ backslash \x01 ctl caf\u00e9' in messages
    assert any(m.startswith("spawned pymaster master process") for m in messages)
    assert messages[-1] == "goodbye to pymaster."


def test_log_date_prefixes_the_servers_lines_not_requests_or_apps(serve, tmp_path, kind):
    served = serve("--log-date", kind=kind)
    served.get("/say", "text=APP-undated")
    # a packet for a modifier nobody serves: the worker (Python or Perl) logs it
    exchange(served.port, uwsgi_packet(uwsgi_vars("/x", port=served.port), modifier1=99))
    served.pm.wait_log(r"unavailable modifier requested: 99")
    log = served.pm.log()
    assert re.search(rf"^{CTIME} - spawned pymaster master process", log, re.M)
    assert re.search(rf"^{CTIME} - -- unavailable modifier requested: 99 --$", log, re.M), log
    assert re.search(r"^APP-undated$", log, re.M)
    assert re.search(r"^\[pid: \d+\|app: 0\|req: 1/1\] .* GET /say", log, re.M)


def test_log_date_format_is_strftime_and_dated_events_use_it(serve, tmp_path):
    served = serve("--log-date=[%Y-%m-%d %H:%M:%S]")
    served.pm.signal(signal.SIGTSTP)
    served.pm.wait_log(r"PAUSE")
    log = served.pm.log()
    day = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]"
    assert re.search(rf"^{day} - spawned pymaster master process", log, re.M)
    assert re.search(rf"^{day} - \*\*\* PAUSE", log, re.M), log  # log_verbose: one stamp
    served.pm.signal(signal.SIGTSTP)


def test_rotation_at_log_maxsize_loses_and_splits_no_line(serve, tmp_path):
    logfile, backup = tmp_path / "app.log", tmp_path / "app.log.backup"
    served = serve("--logto", logfile, "--log-maxsize", "20000", "--log-backupname", backup,
                   processes=2)
    threads = [threading.Thread(target=served.get, args=("/burst", f"n=150&size=90&tag={t}"))
               for t in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    wait_file(logfile, r"GET /burst", count=2)
    old, new = read(backup), read(logfile)
    assert re.search(rf"^{CTIME} - logsize: \d+, triggering rotation to {re.escape(str(backup))}"
                     r"\.\.\.$", old, re.M), old[-500:]
    assert len(old.encode()) > 20000
    burst = [line for line in (old + new).splitlines() if line.startswith("BURST")]
    expected = {f"BURST {t} {i:06d} " + t * 90 for t in ("a", "b") for i in range(150)}
    assert set(burst) == expected and len(burst) == len(expected)
    assert "spawned pymaster master process" in old


@pytest.mark.parametrize("reopen", [True, False], ids=["log-reopen", "no-log-reopen"])
def test_log_reopen_after_the_file_is_moved_away_and_sighup(serve, tmp_path, reopen):
    logfile, moved = tmp_path / "app.log", tmp_path / "app.log.1"
    served = serve("--logto", logfile, *(["--log-reopen"] if reopen else []))
    wait_file(logfile, r"spawned pymaster worker 1")
    logfile.rename(moved)
    served.pm.signal(signal.SIGHUP)
    respawned = r"gracefully \(RE\)spawned pymaster master process"
    if reopen:
        wait_file(logfile, r"spawned pymaster worker 1")
        assert re.search(respawned, read(logfile)) and not re.search(respawned, read(moved))
    else:
        wait_file(moved, respawned)
        wait_file(moved, r"Respawned pymaster worker 1|spawned pymaster worker 1", count=2)
        assert not logfile.exists()
    served.get("/say", "text=APP-after-reload")
    wait_file(logfile if reopen else moved, r"^APP-after-reload$")


def test_bursts_of_several_workers_never_interleave_mid_line(serve, tmp_path):
    logfile = tmp_path / "app.log"
    served = serve("--logto", logfile, "--log-master", processes=3)
    tags = ("x", "y", "z")
    threads = [threading.Thread(target=served.get, args=("/burst", f"n=400&size=300&tag={t}"))
               for t in tags]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    text = wait_file(logfile, r"GET /burst", count=3)
    burst = [line for line in text.splitlines() if "BURST" in line]
    expected = {f"BURST {t} {i:06d} " + t * 300 for t in tags for i in range(400)}
    assert len(burst) == len(expected) and set(burst) == expected
    for tag in tags:  # each worker's lines in the order it wrote them
        mine = [line for line in burst if line.startswith(f"BURST {tag} ")]
        assert mine == sorted(mine)


def test_unknown_logger_plugin_is_refused_naming_what_exists(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", "tests/apps/conformance.py",
                   "--logger", "redislog:127.0.0.1:6379"], tmp_path)
    assert pm.wait(10) == 1
    assert "unable to find logger 'redislog'" in pm.log()
    assert "file, fd, stdio, syslog" in pm.log()
    pm.stop()


def test_a_worker_exit_line_comes_after_its_last_words(serve, tmp_path):
    """The master reads the children's pipes before writing a line of its own."""
    served = serve("--log-master", "--max-requests", "1", "--min-worker-lifetime", "0")
    served.get("/say", "text=APP-last-words")
    served.pm.wait_log(r"Respawned pymaster worker 1")
    log = served.pm.log()
    assert log.index("APP-last-words") < log.index("The work of process") < log.index(
        "Respawned pymaster worker 1")
    assert os.path.exists(served.pm.logpath)


def test_a_reload_into_a_broken_logger_keeps_the_instance(tmp_path):
    """The reload check builds the new loggers too: an unknown plugin aborts the reload."""
    main = tmp_path / "main.log"
    app = tmp_path / "app.py"
    app.write_text(WSGI_APP)
    ini = tmp_path / "app.ini"
    port = free_port()
    ini.write_text(f"[uwsgi]\nsocket = 127.0.0.1:{port}\nwsgi-file = {app}\nmaster = true\n"
                   f"logger = file:{main}\n")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        wait_file(main, r"spawned pymaster worker 1")
        ini.write_text(ini.read_text().replace(f"file:{main}", "zeromq:tcp://127.0.0.1:9"))
        pm.signal(signal.SIGHUP)
        text = wait_file(main, r"reload aborted")
        assert "unable to find logger 'zeromq'" in text
        served = Served(pm, port)
        served.get("/say", "text=APP-still-here")
        wait_file(main, r"^APP-still-here$")

"""The worker options (`worker=True` in the option table) over real processes, the same test
for both worker kinds: `pymaster -M -p N -s ADDR` (or `--http-socket`) serving a small WSGI
app (`--wsgi-file`) or the equivalent PSGI app (`--psgi`, the Perl worker), asserting on the
exact request log lines of pymaster/workers/wsgi/reqlog.py and the recycling lines of
pymaster/workers/contract.Recycling."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import psutil
import pytest

from tests.client import http_get, parse_http_response, uwsgi_packet, uwsgi_request, uwsgi_vars
from tests.conftest import app_args as make_app_args
from tests.pm import Pymaster, exchange, free_port, wait_port

WSGI_APP = r'''
import os
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    status = "200 OK"
    if path == "/hello":
        body = b"hello"
    elif path == "/pid":
        if query.startswith("t="):
            time.sleep(float(query[2:]))
        body = str(os.getpid()).encode()
    elif path == "/slow":
        time.sleep(float(query[2:]))
        body = b"slept"
    elif path == "/error":
        status, body = "500 Internal Server Error", b"error"
    elif path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
    else:
        status, body = "404 Not Found", b"not found"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

PSGI_APP = r'''
use strict;
use warnings;
use Time::HiRes ();

sub {
    my $env = shift;
    my $path = $env->{PATH_INFO};
    my $query = $env->{QUERY_STRING} // '';
    my ($status, $body) = (200);
    if ($path eq '/hello') { $body = 'hello' }
    elsif ($path eq '/pid') {
        Time::HiRes::sleep($1) if $query =~ /^t=([\d.]+)/;
        $body = $$;
    }
    elsif ($path eq '/slow') {
        my ($t) = $query =~ /^t=([\d.]+)/;
        Time::HiRes::sleep($t);
        $body = 'slept';
    }
    elsif ($path eq '/error') { ($status, $body) = (500, 'error') }
    elsif ($path eq '/echo') {
        my $in = $env->{'psgi.input'};
        $body = '';
        while ($in->read(my $buf, 65536)) { $body .= $buf }
    }
    else { ($status, $body) = (404, 'not found') }
    return [$status, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
'''

REQUEST_LINE = re.compile(r"^(?:\{address space usage.*?\} )?\[pid: \d+\|app: 0\|req: .*$", re.M)
PAGE = 4096


class Served:
    """A running `pymaster -M` and how to talk to it."""

    def __init__(self, pm: Pymaster, port: int):
        self.pm, self.port = pm, port

    def uwsgi_raw(self, path: str = "/hello", method: str = "GET", body: bytes = b"",
                  **extra: str) -> tuple[bytes, dict[str, str]]:
        env = uwsgi_vars(path, method, port=self.port, **extra)
        if body:
            env["CONTENT_LENGTH"] = str(len(body))
        return uwsgi_request(self.port, env, body, timeout=20), env

    def get(self, path: str = "/hello", **extra: str):
        return parse_http_response(self.uwsgi_raw(path, **extra)[0])

    def pid(self, path: str = "/pid") -> int:
        return int(self.get(path).body)

    def request_lines(self) -> list[str]:
        return REQUEST_LINE.findall(self.pm.log())


@pytest.fixture
def serve(tmp_path, kind):
    started: list[Pymaster] = []

    def start(*options: str, http: bool = False, processes: int = 1) -> Served:
        app_args = make_app_args(tmp_path, kind, WSGI_APP, PSGI_APP)
        port = free_port()
        pm = Pymaster(["-M", "-p", str(processes), "--http-socket" if http else "-s",
                       f"127.0.0.1:{port}", *app_args, *options], tmp_path)
        started.append(pm)
        wait_port(port, timeout=20)
        return Served(pm, port)

    yield start
    for pm in started:
        pm.stop()


def default_line(pid: int, req: str, env: dict[str, str], raw: bytes, *, addr: str | None = None,
                 unit: str = "msecs") -> re.Pattern:
    """uWSGI's default request line for a uwsgi request `env` answered with `raw`, as a regex
    where only the request's start time and its duration are free."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split()[1].decode()
    pktsize = len(uwsgi_packet(env)) - 4
    text = (f"[pid: {pid}|app: 0|req: {req}] {env['REMOTE_ADDR'] if addr is None else addr} () "
            f"{{{len(env) * 2} vars in {pktsize} bytes}} [CTIME] {env['REQUEST_METHOD']} "
            f"{env['REQUEST_URI']} => generated {len(body)} bytes in DURATION {unit} "
            f"({env['SERVER_PROTOCOL']} {status}) {len(lines) - 1} headers in {len(head) + 4} "
            f"bytes (1 switches on core 0)")
    pattern = re.escape(text).replace("CTIME", r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}")
    return re.compile("^" + pattern.replace("DURATION", r"(\d+)") + "$")


def forked_at(pid: int) -> float:
    """When process `pid` was forked (wall clock, to ~20 ms; psutil's create_time() adds the
    boot time, which /proc/stat truncates to a whole second)."""
    with open(f"/proc/{pid}/stat") as fh:
        ticks = int(fh.read().rpartition(")")[2].split()[19])
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def pid_of(raw: bytes) -> int:
    return int(raw.partition(b"\r\n\r\n")[2])


# -- the request log ---------------------------------------------------------------------------

def test_logformat_fields_on_a_uwsgi_socket(serve):
    fields = ("method uri status rsize hsize size addr user host proto uagent referer cl pid "
              "wid vars pktsize headers switches core var.HTTP_X_TEST var.NOPE nosuch "
              "time epoch ctime ltime micros msecs secs rss vsz rssM vszM").split()
    server = serve("--logformat", "LOG " + "|".join(f"%({name})" for name in fields))
    before = int(time.time())
    raw, env = server.uwsgi_raw("/echo?a=1", "POST", b"12345", REMOTE_USER="alice",
                                HTTP_USER_AGENT="ua/1", HTTP_REFERER="http://ref.example/",
                                HTTP_X_TEST="x1", HTTP_HOST="site.example")
    after = int(time.time())
    response = parse_http_response(raw)
    assert response.body == b"12345"
    server.pm.wait_log(r"LOG POST", timeout=20)
    [line] = re.findall(r"^LOG .*$", server.pm.log(), re.M)
    values = dict(zip(fields, line[4:].split("|"), strict=True))
    pid = int(values["pid"])
    head = raw.partition(b"\r\n\r\n")[0]
    assert values == values | {
        "method": "POST", "uri": "/echo?a=1", "status": "200", "rsize": "5",
        "hsize": str(len(head) + 4), "size": str(len(head) + 4 + 5), "addr": "127.0.0.1",
        "user": "alice", "host": "site.example", "proto": "HTTP/1.1", "uagent": "ua/1",
        "referer": "http://ref.example/", "cl": "5", "pid": str(pid), "wid": "1",
        "vars": str(len(env) * 2), "pktsize": str(len(uwsgi_packet(env)) - 4), "headers": "2",
        "switches": "1", "core": "0", "var.HTTP_X_TEST": "x1", "var.NOPE": "-", "nosuch": "-",
    }
    start = int(values["time"])
    assert before <= start <= after and start <= int(values["epoch"]) <= after + 1
    assert values["ctime"] == time.ctime(start)
    assert values["ltime"] == time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(start))
    micros = int(values["micros"])
    assert int(values["msecs"]) == micros // 1000 and 0 < micros < 10_000_000
    assert re.fullmatch(r"\d+\.\d{6}", values["secs"])
    assert abs(float(values["secs"]) * 1e6 - micros) <= 1 + 1e-6  # rounding vs truncation, in floats
    rss, vsz = int(values["rss"]), int(values["vsz"])
    assert rss % PAGE == 0 and vsz % PAGE == 0 and 1 << 20 < rss < vsz
    assert abs(int(values["rssM"]) - (rss >> 20)) <= 1 and int(values["vszM"]) == vsz >> 20


def test_logformat_on_an_http_socket(serve):
    server = serve("--logformat", "LOG %(method) %(uri) %(status) %(rsize) %(hsize) %(size) "
                   "%(addr) %(host) %(proto) %(uagent) %(cl) %(headers)", http=True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /echo?a=1 HTTP/1.1\r\nHost: site.example\r\nUser-Agent: ua/2\r\n"
                     b"Content-Length: 3\r\n\r\nabc")
        raw = b""
        while not raw.endswith(b"\r\n\r\nabc"):
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.count(b"\r\n") == 2               # keep-alive: the app's 2 headers, no more
    hsize = len(head) + 4
    server.pm.wait_log(r"LOG POST", timeout=20)
    [line] = re.findall(r"^LOG .*$", server.pm.log(), re.M)
    assert line == (f"LOG POST /echo?a=1 200 3 {hsize} {hsize + 3} 127.0.0.1 site.example "
                    f"HTTP/1.1 ua/2 3 2")


@pytest.mark.parametrize("option, path, other", [("--log-4xx", "/missing", "/error"),
                                                 ("--log-5xx", "/error", "/missing")])
def test_log_4xx_5xx_with_logging_disabled(serve, option, path, other):
    server = serve("--disable-logging", option)
    assert server.get("/hello").status == 200
    assert server.get(other).status in (404, 500)
    raw, env = server.uwsgi_raw(path)
    pid = server.pid("/pid")
    expected = default_line(pid, "3/3", env, raw)
    server.pm.wait_log(expected.pattern[1:-1], timeout=20)
    assert len(server.request_lines()) == 1, server.pm.log()   # not /hello, /pid, nor `other`


def test_log_slow_with_logging_disabled(serve):
    server = serve("--disable-logging", "--log-slow", "300")
    assert server.get("/slow?t=0.02").body == b"slept"
    assert server.get("/hello").status == 200
    raw, env = server.uwsgi_raw("/slow?t=0.5")
    assert server.get("/slow?t=0").body == b"slept"
    pid = server.pid("/pid")
    expected = default_line(pid, "3/3", env, raw)
    server.pm.wait_log(expected.pattern[1:-1], timeout=20)
    [line] = server.request_lines()
    assert int(expected.match(line).group(1)) >= 500


def test_log_micros_and_log_x_forwarded_for(serve):
    server = serve("--log-micros", "--log-x-forwarded-for")
    first, env1 = server.uwsgi_raw("/pid", REMOTE_ADDR="192.0.2.1")
    second, env2 = server.uwsgi_raw("/pid", REMOTE_ADDR="192.0.2.1",
                                    HTTP_X_FORWARDED_FOR="203.0.113.7")
    pid = pid_of(first)
    server.pm.wait_log(r"req: 2/2\]", timeout=20)
    lines = server.request_lines()
    assert len(lines) == 2
    assert default_line(pid, "1/1", env1, first, unit="micros").match(lines[0]), lines
    assert default_line(pid, "2/2", env2, second, addr="203.0.113.7",
                        unit="micros").match(lines[1]), lines


def test_memory_report(serve):
    server = serve("--memory-report")
    raw, env = server.uwsgi_raw("/pid")
    pid = pid_of(raw)
    server.pm.wait_log(r"req: 1/1\]", timeout=20)
    [line] = server.request_lines()
    match = re.match(r"\{address space usage: (\d+) bytes/(\d+)MB\} \{rss usage: (\d+) "
                     r"bytes/(\d+)MB\} (.*)$", line)
    assert match, line
    vsz, vsz_mb, rss, rss_mb = (int(g) for g in match.groups()[:4])
    assert vsz_mb == vsz >> 20 and rss_mb == rss >> 20
    assert rss % PAGE == 0 and rss < vsz
    assert 0.5 < rss / psutil.Process(pid).memory_info().rss < 2
    assert default_line(pid, "1/1", env, raw).match(match.group(5)), line


# -- limit-post --------------------------------------------------------------------------------

def too_large(detail: str) -> bytes:
    body = f"413 Content Too Large\n{detail}\n".encode()
    return (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body))


def test_limit_post_on_uwsgi_and_http_sockets(serve):
    server = serve("--limit-post", "100")
    raw, _ = server.uwsgi_raw("/echo", "POST", b"x" * 101)
    assert raw == too_large("Content-Length 101 over the limit of 100")
    server.pm.wait_log(r"HTTP error from 127\.0\.0\.1: 413 Content Too Large: Content-Length 101 "
                       r"over the limit of 100\n", timeout=20)
    assert server.get("/echo", method="POST", body=b"y" * 100).body == b"y" * 100

    http = serve("--limit-post", "100", http=True)
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\n"
    raw = exchange(http.port, head + b"Content-Length: 150\r\n\r\n" + b"z" * 150, timeout=20)
    assert raw == too_large("Content-Length 150 over the limit of 100")
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n" + (b"3c\r\n" + b"c" * 60 + b"\r\n") * 2
    raw = exchange(http.port, chunked + b"0\r\n\r\n", timeout=20)
    assert raw == too_large("request body over the limit of 100 bytes")
    http.pm.wait_log(r"HTTP error from 127\.0\.0\.1: 413 Content Too Large: request body over "
                     r"the limit of 100 bytes\n", timeout=20)
    raw = exchange(http.port, head + b"Content-Length: 100\r\nConnection: close\r\n\r\n"
                   + b"w" * 100, timeout=20)
    assert parse_http_response(raw).body == b"w" * 100
    http.pm.wait_log(r"POST /echo => generated 100 bytes", timeout=20)
    lines = server.request_lines() + http.request_lines()     # refused: no request line
    assert len(lines) == 2 and all("(HTTP/1.1 200)" in line for line in lines), lines


# -- recycling ---------------------------------------------------------------------------------

def seeya(pid: int) -> str:
    return rf"\.\.\.The work of process {pid} is done\. Seeya!\n"


def rss_line(pid: int, wid: int = 1, limit: int = 1 << 20) -> str:
    return rf"worker {wid} \(pid: {pid}\) RSS (\d+) bytes over reload-on-rss {limit} bytes, recycling\n"


def test_max_requests_delta_recycles_each_worker_at_its_own_count(serve):
    """max-requests 2 + worker id x delta 2: worker 1 recycles after 4 requests, worker 2
    after 6 (each pid serves exactly that many, and says so)."""
    server = serve("--max-requests", "2", "--max-requests-delta", "2",
                   "--min-worker-lifetime", "0", "--logformat", "REQ %(pid) %(wid) %(uri)",
                   processes=2)
    answered: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def recycled_wids() -> set[str]:
        log = server.pm.log()
        done = set(re.findall(r"The work of process (\d+) is done", log))
        return {wid for pid, wid in re.findall(r"^REQ (\d+) (\d+) ", log, re.M) if pid in done}

    def client():
        while time.monotonic() < deadline and len(answered) < 300:
            if recycled_wids() == {"1", "2"}:
                return
            pid = server.pid("/pid?t=0.03")
            with lock:
                answered.append(pid)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert recycled_wids() == {"1", "2"}, server.pm.log()
    server.pm.wait_log(r"(?m)^REQ ", count=len(answered), timeout=20)
    log = server.pm.log()
    served: dict[str, list[str]] = {}
    for pid, wid in re.findall(r"^REQ (\d+) (\d+) /pid\?t=0\.03$", log, re.M):
        served.setdefault(pid, []).append(wid)
    assert sum(map(len, served.values())) == len(answered)
    for pid, wids in served.items():
        [wid] = set(wids)
        assert len(wids) <= 2 + 2 * int(wid), (pid, wid, log)
        if len(wids) == 2 + 2 * int(wid):             # its last request: it says so
            server.pm.wait_log(seeya(int(pid)), timeout=20)
    log = server.pm.log()
    done = set(re.findall(r"The work of process (\d+) is done\. Seeya!", log))
    assert done <= set(served)
    for pid in done:
        [wid] = set(served[pid])
        assert len(served[pid]) == 2 + 2 * int(wid), (pid, wid, log)


def test_reload_on_rss_recycles_after_the_first_request(serve):
    server = serve("--reload-on-rss", "1", "--min-worker-lifetime", "0")
    first = server.pid()
    [used] = server.pm.wait_log(rss_line(first), timeout=20)
    assert int(used) > 1 << 20 and int(used) % PAGE == 0
    second = server.pid()
    assert second != first
    server.pm.wait_log(rss_line(second), timeout=20)
    assert "Seeya" not in server.pm.log()


def test_reload_on_as_recycles_after_the_first_request(serve):
    server = serve("--reload-on-as", "1", "--min-worker-lifetime", "0")
    first = server.pid()
    line = rf"worker 1 \(pid: {{}}\) address space (\d+) bytes over reload-on-as {1 << 20} bytes, recycling\n"
    [used] = server.pm.wait_log(line.format(first), timeout=20)
    assert int(used) > 1 << 20 and int(used) % PAGE == 0
    second = server.pid()
    assert second != first
    server.pm.wait_log(line.format(second), timeout=20)
    assert "Seeya" not in server.pm.log() and "reload-on-rss" not in server.pm.log()


def test_min_worker_lifetime_zero_recycles_at_once(serve):
    server = serve("--max-requests", "1", "--min-worker-lifetime", "0")
    pids = [server.pid() for _ in range(3)]
    assert len(set(pids)) == 3
    for pid in pids:
        server.pm.wait_log(seeya(pid), timeout=20)


@pytest.mark.parametrize("trigger", [("--max-requests", "1"), ("--reload-on-rss", "1")])
def test_min_worker_lifetime_delays_recycling(serve, trigger):
    """With --min-worker-lifetime 3 nothing recycles the worker in its first 3 seconds, even
    when max-requests (or the RSS limit) is reached at its first request; once it is older,
    the next request recycles it."""
    server = serve(*trigger, "--min-worker-lifetime", "3")
    pid = server.pid()
    first_answer = time.time()
    born = forked_at(pid) - 0.05                    # before the worker starts counting its age
    young = 1
    while time.time() < born + 2.5:
        assert server.pid() == pid
        young += 1
        time.sleep(0.2)
    assert young >= 2 and "Seeya" not in server.pm.log() and "reload-on-rss" not in server.pm.log()
    time.sleep(max(0.0, first_answer + 3.2 - time.time()))
    assert server.pid() == pid                      # now old enough: recycled after this one
    if trigger[0] == "--max-requests":
        server.pm.wait_log(seeya(pid), timeout=20)
    else:
        server.pm.wait_log(rss_line(pid), timeout=20)
    assert server.pid() != pid


# -- options real deployments use (issue 9) ----------------------------------------------------

def test_add_header_on_every_response(serve):
    server = serve("--add-header", "X-Frame-Options: DENY", "--add-header", "X-Served-By:pm")
    for path in ("/hello", "/error", "/nope"):
        raw, env = server.uwsgi_raw(path)
        response = parse_http_response(raw)
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["x-served-by"] == "pm"
    server.pm.wait_log(r"GET /nope => generated", timeout=20)
    line = server.request_lines()[-1]
    head_size = len(raw.partition(b"\r\n\r\n")[0]) + 4
    assert line.endswith(f"4 headers in {head_size} bytes (1 switches on core 0)")
    http = serve("--add-header", "X-Frame-Options: DENY", http=True)  # the general path
    response = http_get(http.port, "/hello")
    assert response.status == 200 and response.headers["x-frame-options"] == "DENY"


def test_add_header_malformed_is_refused(tmp_path, kind):
    app = ["--wsgi-file", str(tmp_path / "a.py")] if kind == "wsgi" else ["--psgi",
                                                                          str(tmp_path / "a.psgi")]
    (tmp_path / "a.py").write_text(WSGI_APP)
    (tmp_path / "a.psgi").write_text(PSGI_APP)
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", *app, "--add-header", "no colon"], tmp_path)
    assert pm.wait(timeout=20) != 0
    assert "--add-header 'no colon': expected `Name: value`" in pm.log()


def test_route_donotlog_leaves_out_matching_requests(serve):
    server = serve("--route", "^/pid donotlog:", "--route-uri", r"\?quiet donotlog:")
    for path in ("/pid", "/pidfoo", "/hello?quiet=1", "/hello", "/error"):
        assert server.get(path).status in (200, 404, 500)
    server.pm.wait_log(r"GET /error => generated", timeout=20)
    time.sleep(0.2)
    uris = [re.search(r"\] GET (\S+) =>", line).group(1) for line in server.request_lines()]
    assert uris == ["/hello", "/error"]
    log = server.pm.log()
    assert ("*** dumping internal routing table ***\n"
            "[rule: 0] subject: path_info regexp: ^/pid action: donotlog:\n"
            "[rule: 1] subject: request_uri regexp: \\?quiet action: donotlog:\n"
            "*** end of the internal routing table ***") in log


def test_route_other_actions_are_refused(tmp_path):
    (tmp_path / "a.py").write_text(WSGI_APP)
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--wsgi-file", str(tmp_path / "a.py"),
                   "--route", "^/old redirect:/new"], tmp_path)
    assert pm.wait(timeout=20) != 0
    assert ("--route '^/old redirect:/new': the routing action `redirect` is not part of "
            "pymaster;") in pm.log()
    assert "nginx" in pm.log()


def test_wsgi_disable_file_wrapper(tmp_path):
    app = tmp_path / "fw.py"
    app.write_text(
        "def application(environ, start_response):\n"
        "    body = repr('wsgi.file_wrapper' in environ).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    for options, expected in (((), b"True"), (("--wsgi-disable-file-wrapper",), b"False")):
        port = free_port()
        with Pymaster(["--http-socket", f"127.0.0.1:{port}", "--wsgi-file", str(app), *options],
                      tmp_path):
            wait_port(port, timeout=20)
            assert http_get(port, "/").body == expected

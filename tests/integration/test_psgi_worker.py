"""The Perl worker (Plack::Handler::Pymaster under plackup) on its own: a launcher binds the
sockets, creates the scoreboard and starts plackup the way the master does (worker_argv +
worker_env + pass_fds, or fork + exec_worker), then talks uwsgi and HTTP to it on loopback."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from pymaster.workers.psgi import bridge as psgi
from pymaster.workers.scoreboard import BUSY, IDLE, Scoreboard
from tests.conftest import config_with
from tests.external import parse_http_response, uwsgi_packet, uwsgi_vars

pytestmark = pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing")

SEED_APP = Path(__file__).resolve().parents[2] / "examples" / "app.psgi"
if not SEED_APP.exists():
    SEED_APP = Path("/work/shared/seed/demo/app.psgi")

TEST_APP = r'''
use strict;
use warnings;
use Plack::Util;

my %routes = (
    '/hello' => sub { [200, ['Content-Type' => 'text/plain', 'X-Pid' => $$], ["hello $$"]] },
    '/echo' => sub {
        my $env = shift;
        my $in = $env->{'psgi.input'};
        my $body = '';
        while ($in->read(my $buf, 65536)) { $body .= $buf }
        $in->seek(0, 0);
        $in->read(my $again, 5);
        [200, ['Content-Type' => 'application/octet-stream', 'X-Again' => unpack('H*', $again),
               'X-Length' => $env->{CONTENT_LENGTH} // 'none',
               'X-TE' => $env->{HTTP_TRANSFER_ENCODING} // 'none'], [$body]];
    },
    '/env' => sub {
        my $env = shift;
        my @keys = grep { !ref $env->{$_} } sort keys %$env;
        my $out = join '', map { "$_=$env->{$_}\n" } @keys;
        $out .= join '', map { "$_=" . ref($env->{$_}) . "\n" } grep { ref $env->{$_} } sort keys %$env;
        $out .= "version=@{$env->{'psgi.version'}}\n";
        [200, ['Content-Type' => 'text/plain'], [$out]];
    },
    '/stream' => sub {
        return sub {
            my $w = shift->([200, ['Content-Type' => 'text/plain']]);
            $w->write("chunk$_\n") for 1 .. 3;
            $w->close;
        };
    },
    '/delayed' => sub {
        return sub { shift->([200, ['Content-Type' => 'text/plain'], ['delayed']]) };
    },
    '/never' => sub { return sub { 1 } },
    '/die' => sub { die "boom at the app\n" },
    '/wide' => sub { [200, ['Content-Type' => 'text/plain'], ["caf\x{e9} \x{263a}"]] },
    '/latin' => sub { my $s = "caf\x{e9}"; utf8::upgrade($s); [200, ['Content-Type' => 'text/plain'], [$s]] },
    '/badheader' => sub { [200, ['Content-Type' => "text/plain\r\nX-Injected: 1"], ['x']] },
    '/slow' => sub {
        my $env = shift;
        my ($t) = $env->{QUERY_STRING} =~ /t=([\d.]+)/;
        select undef, undef, undef, $t || 1;
        [200, ['Content-Type' => 'text/plain'], ["slept $$"]];
    },
    '/file' => sub {
        open my $fh, '<:raw', __FILE__ or die __FILE__ . ": $!";
        Plack::Util::set_io_path($fh, __FILE__);
        [200, ['Content-Type' => 'text/plain'], $fh];
    },
    '/getline' => sub {
        my @parts = ('one ', '', 'two ', 'three');
        [200, ['Content-Type' => 'text/plain'],
         Plack::Util::inline_object(getline => sub { shift @parts }, close => sub { 1 })];
    },
    '/nocontent' => sub { [204, [], ['should not be sent']] },
    '/shortbody' => sub { [200, ['Content-Type' => 'text/plain', 'Content-Length' => 100], ['short']] },
    '/longbody' => sub { [200, ['Content-Type' => 'text/plain', 'Content-Length' => 3], ['toolong']] },
    '/shortstream' => sub {
        return sub {
            my $w = shift->([200, ['Content-Type' => 'text/plain', 'Content-Length' => 50]]);
            $w->write('only this');
            $w->close;
        };
    },
    '/harakiri' => sub {
        my $env = shift;
        $env->{'psgix.harakiri.commit'} = 1 if $env->{'psgix.harakiri'};
        [200, ['Content-Type' => 'text/plain'], ["bye $$"]];
    },
    '/cleanup' => sub {
        my $env = shift;
        my ($file) = $env->{QUERY_STRING} =~ /f=(.*)/;
        push @{ $env->{'psgix.cleanup.handlers'} }, sub {
            open my $fh, '>', $file or die; print $fh "cleaned $_[0]{PATH_INFO}"; close $fh;
        };
        [200, ['Content-Type' => 'text/plain'], ['ok']];
    },
    '/logger' => sub {
        my $env = shift;
        $env->{'psgix.logger'}->({level => 'warn', message => 'logged by the app'});
        $env->{'psgi.errors'}->print("printed to psgi.errors\n");
        [200, ['Content-Type' => 'text/plain'], ['ok']];
    },
);

sub {
    my $env = shift;
    my $route = $routes{$env->{PATH_INFO}} or return [404, ['Content-Type' => 'text/plain'], ['not found']];
    $route->($env);
};
'''


def cfg_for(app, **kw):
    return config_with(psgi=str(app), **kw)


def _listen() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class PerlWorker:
    """One Perl worker on a uwsgi and an HTTP listener, supervised by this test."""

    def __init__(self, tmp_path: Path, app, slots: int = 2, worker_id: int = 1,
                 use_fork: bool = False, master_pid: int | None = None, **cfgkw):
        self.cfg = cfg_for(app, **cfgkw)
        self.usock, self.hsock = _listen(), _listen()
        self.uport, self.hport = self.usock.getsockname()[1], self.hsock.getsockname()[1]
        self.scoreboard = Scoreboard(slots)
        self.slot = self.scoreboard.slot(worker_id - 1)
        self.logpath = tmp_path / f"worker{worker_id}.log"
        fds = [(self.usock.fileno(), "uwsgi"), (self.hsock.fileno(), "http")]
        master = os.getpid() if master_pid is None else master_pid
        with open(self.logpath, "ab") as log:
            if use_fork:
                pid = os.fork()
                if pid == 0:
                    os.dup2(log.fileno(), 2)
                    psgi.exec_worker(self.cfg, worker_id, fds, self.scoreboard.fd, master)
                self.pid, self.proc = pid, None
            else:
                self.proc = subprocess.Popen(
                    psgi.worker_argv(self.cfg),
                    env=psgi.worker_env(self.cfg, worker_id, fds, self.scoreboard.fd, master),
                    pass_fds=[fd for fd, _ in fds] + [self.scoreboard.fd],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                self.pid = self.proc.pid
        self.code = None

    def wait_ready(self, timeout: float = 15.0) -> PerlWorker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.slot.read()
            if info["pid"] == self.pid and info["state"] == IDLE:
                return self
            assert self.poll() is None, f"worker exited with {self.code}: {self.log()}"
            time.sleep(0.02)
        raise AssertionError(f"worker not idle after {timeout} s: {self.log()}")

    def poll(self):
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker still running after {timeout} s: {self.log()}")
            time.sleep(0.02)
        return self.code

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in log:\n{self.log()}")
            time.sleep(0.02)

    def uwsgi_raw(self, path="/hello", method="GET", body=b"", modifier1=5, **extra) -> bytes:
        env = uwsgi_vars(path, method, **extra)
        if body:
            env["CONTENT_LENGTH"] = str(len(body))
        return self.send_raw(uwsgi_packet(env, body, modifier1))

    def send_raw(self, data: bytes, half_close: bool = False) -> bytes:
        with socket.create_connection(("127.0.0.1", self.uport), timeout=10) as sock:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def uwsgi(self, path="/hello", **kw):
        return parse_http_response(self.uwsgi_raw(path, **kw))

    def http(self, path="/hello", method="GET", body=None, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.hport, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self):
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()
        self.usock.close()
        self.hsock.close()
        self.scoreboard.close()


@pytest.fixture
def test_app(tmp_path):
    path = tmp_path / "test.psgi"
    path.write_text(TEST_APP)
    return path


@pytest.fixture
def launch(tmp_path):
    workers = []

    def start(app, **kw) -> PerlWorker:
        worker = PerlWorker(tmp_path, app, **kw)
        workers.append(worker)
        return worker.wait_ready()

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def worker(launch, test_app):
    return launch(test_app)


# -- the seed app ---------------------------------------------------------------------------

@pytest.mark.skipif(not SEED_APP.exists(), reason="seed app.psgi missing")
def test_seed_app_as_written_renders_pid(launch):
    worker = launch(SEED_APP)
    resp = worker.uwsgi("/")
    assert resp.status == 200
    assert f"PID: {worker.pid}</div>" in resp.text
    assert '<img src="/static/hokkaidopm.gif">' in resp.text
    status, _, body = worker.http("/")
    assert status == 200 and f"PID: {worker.pid}".encode() in body


def test_data_section_apps_keep_their_behaviour(launch, tmp_path):
    data_app = tmp_path / "data.psgi"
    data_app.write_text("my $t = do { local $/; <DATA> };\n"
                        "sub { [200, ['Content-Type' => 'text/plain'], [$t . __FILE__ . ':' . __LINE__]] };\n"
                        "__DATA__\nfrom data\n")
    resp = launch(data_app).uwsgi("/")
    assert resp.text == f"from data\n{data_app}:2"


def test_end_section_in_a_declared_package(launch, tmp_path):
    app = tmp_path / "pkg.psgi"
    app.write_text("package My::App;\nuse utf8;\nmy $t = do { local $/; <DATA> };\n"
                   "sub { [200, ['Content-Type' => 'text/plain'], [(utf8::is_utf8($t) ? 'chars:' : 'bytes:') . length($t)]] };\n"
                   "__END__\ncaf\u00e9\n")
    assert launch(app).uwsgi("/").text == "chars:5"


# -- requests -------------------------------------------------------------------------------

def test_uwsgi_response_bytes_and_log_line(worker):
    raw = worker.uwsgi_raw("/hello?x=1")
    assert raw == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Pid: %d\r\n"
                   b"Content-Length: %d\r\n\r\nhello %d" % (worker.pid, len(f"hello {worker.pid}"), worker.pid))
    worker.wait_log(r"\[pid: %d\|app: 0\|req: 1/1\] 127\.0\.0\.1 \(\) \{28 vars in \d+ bytes\} "
                    r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET /hello\?x=1 => generated \d+ bytes "
                    r"in \d+ msecs \(HTTP/1\.1 200\) 3 headers in \d+ bytes \(1 switches on core 0\)"
                    % worker.pid)


@pytest.mark.parametrize("options", [
    {},
    {"disable_logging": True, "log_4xx": True, "log_5xx": True},
    {"logformat": "%(method) %(uri) %(status) %(rsize) %(hsize) %(size) %(headers) %(vars) "
                  "%(pktsize) %(addr) %(user) %(cl) %(var.HTTPS) %(nosuch)"},
    {"log_micros": True, "log_x_forwarded_for": True, "limit_post": 2000},
], ids=["default", "log-4xx-5xx", "logformat", "micros-xff-limit-post"])
def test_fast_path_and_general_path_answer_alike(launch, test_app, options):
    """The uwsgi fast path (the default) and the general path it hands unusual requests to
    (all requests with PYMASTER_NO_FAST_PATH=1) send the same bytes and log the same lines,
    with the worker options that change what is logged or answered too."""
    fast = launch(test_app, **options)
    general = launch(test_app, env=["PYMASTER_NO_FAST_PATH=1"], worker_id=2, **options)
    requests = [dict(path="/hello?x=1"), dict(path="/hello", method="HEAD"), dict(path="/env"),
                dict(path="/echo", method="POST", body=b"abc" * 1000),
                dict(path="/echo", method="POST", body=b"x" * 200_000), dict(path="/stream"),
                dict(path="/delayed"), dict(path="/getline"), dict(path="/never"),
                dict(path="/die"), dict(path="/wide"), dict(path="/latin"),
                dict(path="/badheader"), dict(path="/nocontent"), dict(path="/missing"),
                dict(path="/hello", REMOTE_ADDR="", SERVER_NAME="", HTTP_CONTENT_TYPE="x"),
                dict(path="/hello", HTTP_X_FORWARDED_FOR="203.0.113.7"),
                dict(path="/env", HTTPS="on", SCRIPT_NAME="/", CONTENT_LENGTH="0")]

    no_peer = uwsgi_vars("/env")                     # REMOTE_ADDR from the socket
    del no_peer["REMOTE_ADDR"], no_peer["REMOTE_PORT"]

    def answers(worker):
        out = []
        for kw in requests + [no_peer]:
            raw = (worker.uwsgi_raw(**kw) if "path" in kw else worker.send_raw(uwsgi_packet(kw)))
            raw = raw.replace(str(worker.pid).encode(), b"PID")
            out.append(re.sub(rb"REMOTE_PORT=\d*\n", b"", raw))
        assert b"REMOTE_ADDR=127.0.0.1" in out[-1]
        return out

    assert answers(fast) == answers(general)
    for worker in fast, general:        # logged (a 404) once every request before it is
        assert worker.uwsgi("/missing?end").status == 404
        worker.wait_log(r"/missing\?end")

    def lines(worker):
        text = worker.log().replace(str(worker.pid), "PID")
        return [re.sub(r"\[\w{3} \w{3} .*?\d{4}\]|in \d+ m\w+s", "", line)
                for line in text.splitlines() if "PYMASTER" not in line]

    assert lines(fast) == lines(general)
    assert len(lines(fast)) >= (3 if options.get("disable_logging") else len(requests))


def test_modifier1_zero_accepted_other_modifiers_closed(worker):
    assert worker.uwsgi(modifier1=0).status == 200
    assert worker.uwsgi_raw(modifier1=7) == b""
    worker.wait_log(r"-- unavailable modifier requested: 7 --")
    assert worker.uwsgi().status == 200


def test_env_hygiene_and_psgi_keys(worker):
    text = worker.uwsgi("/env").text
    env = dict(line.split("=", 1) for line in text.splitlines())
    assert env["SCRIPT_NAME"] == ""
    assert "CONTENT_LENGTH" not in env and "CONTENT_TYPE" not in env
    assert env["psgi.url_scheme"] == "http" and env["version"] == "1 1"
    for key in ("psgi.multiprocess", "psgi.streaming", "psgix.input.buffered", "psgix.harakiri",
                "psgix.cleanup"):
        assert env[key] == "1", key
    for key in ("psgi.multithread", "psgi.run_once", "psgi.nonblocking"):
        assert env[key] == "", key
    assert env["psgix.logger"] == "CODE" and env["psgix.cleanup.handlers"] == "ARRAY"
    assert env["PLACK_ENV"] if "PLACK_ENV" in env else True
    https = dict(line.split("=", 1) for line in worker.uwsgi("/env", UWSGI_SCHEME="https").text.splitlines())
    assert https["psgi.url_scheme"] == "https"


def test_post_bodies_uwsgi_small_and_large(worker):
    resp = worker.uwsgi("/echo", method="POST", body=b"hello world")
    assert resp.body == b"hello world" and resp.headers["x-again"] == b"hello".hex()
    big = os.urandom(3 * 1024 * 1024 + 17)            # spills to a temporary file
    resp = worker.uwsgi("/echo", method="POST", body=big)
    assert resp.status == 200 and resp.body == big and resp.headers["x-length"] == str(len(big))


def test_body_is_bounded_by_content_length(worker):
    env = uwsgi_vars("/echo", "POST", CONTENT_LENGTH="5")
    resp = parse_http_response(worker.send_raw(uwsgi_packet(env, b"12345EXTRA", 5)))
    assert resp.body == b"12345"


def test_http_post_content_length_and_chunked(worker):
    status, headers, body = worker.http("/echo", "POST", body=b"x" * 70000)
    assert status == 200 and body == b"x" * 70000 and "connection" not in headers  # kept alive
    chunks = iter([b"abc", b"defgh", b"i" * 100000])
    status, headers, body = worker.http("/echo", "POST", body=chunks,
                                        headers={"Transfer-Encoding": "chunked"}, chunked=True)
    assert status == 200 and body == b"abcdefgh" + b"i" * 100000
    assert headers["x-length"] == str(8 + 100000) and headers["x-te"] == "none"


def test_streaming_delayed_getline_and_file_bodies(worker):
    assert worker.uwsgi("/stream").body == b"chunk1\nchunk2\nchunk3\n"
    assert worker.http("/stream")[2] == b"chunk1\nchunk2\nchunk3\n"
    assert worker.uwsgi("/delayed").body == b"delayed"
    assert worker.uwsgi("/getline").body == b"one two three"
    resp = worker.uwsgi("/file")
    source = Path(worker.cfg.psgi).read_bytes()
    assert resp.body == source and resp.headers["content-length"] == str(len(source))
    worker.wait_log(r"GET /file => generated %d bytes in \d+ msecs via sendfile\(\) " % len(source))


def test_head_and_no_content_bodies_stripped(worker):
    raw = worker.uwsgi_raw("/hello", method="HEAD")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"" and b"Content-Length: %d" % len(f"hello {worker.pid}") in head
    assert worker.uwsgi_raw("/stream", method="HEAD").endswith(b"\r\n\r\n")
    status, headers, body = worker.http("/hello", "HEAD")
    assert status == 200 and body == b""
    raw = worker.uwsgi_raw("/nocontent")
    assert raw.startswith(b"HTTP/1.1 204 No Content\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in raw


def test_app_die_gives_500_and_worker_lives(worker):
    resp = worker.uwsgi("/die")
    assert resp.status == 500 and resp.body == b"Internal Server Error"
    worker.wait_log(r"\[pymaster-perl error\] GET /die: boom at the app")
    assert worker.uwsgi().text == f"hello {worker.pid}"
    assert worker.slot.read()["exceptions"] == 1
    for path in ("/never", "/badheader"):
        assert worker.uwsgi(path).status == 500
    worker.wait_log(r"never called the responder")
    worker.wait_log(r"invalid value for header Content-Type")
    assert worker.poll() is None


def test_wide_characters_refused_latin1_sent_as_bytes(worker):
    resp = worker.uwsgi("/wide")
    assert resp.status == 500
    worker.wait_log(r"GET /wide: wide character in the response body")
    assert worker.uwsgi("/latin").body == b"caf\xe9"


def test_logger_and_errors_go_to_the_log(worker):
    assert worker.uwsgi("/logger").status == 200
    worker.wait_log(r"\[pymaster-perl warn\] logged by the app")
    worker.wait_log(r"printed to psgi.errors")


def test_oversized_packet_closed_logged_next_served(worker):
    raw = worker.uwsgi_raw("/hello", HTTP_COOKIE="c" * 5000)
    assert raw == b""
    worker.wait_log(r"invalid request block size: \d{4} \(max 4096\)\.\.\.skip")
    assert worker.uwsgi().status == 200


def test_bigger_buffer_size_accepts_big_packet(launch, test_app):
    worker = launch(test_app, buffer_size=8192)
    assert worker.uwsgi("/hello", HTTP_COOKIE="c" * 5000).status == 200


def test_truncated_and_garbage_packets_do_not_kill_the_worker(worker):
    assert worker.send_raw(b"\x05\x10", half_close=True) == b""
    worker.wait_log(r"uwsgi_proto_uwsgi_parser\(\): Success")
    assert worker.send_raw(b"\x05\x05\x00\x00\x05\x00abc", half_close=True) == b""  # var overruns
    worker.wait_log(r"invalid uwsgi request \(current strsize: 5\)\. skip\.")
    assert worker.uwsgi().status == 200


def test_scoreboard_counters_move(worker):
    before = worker.slot.read()
    assert before["pid"] == worker.pid and before["state"] == IDLE and before["requests"] == 0
    assert before["last_spawn"] > time.time() - 60
    for _ in range(3):
        worker.uwsgi()
    worker.uwsgi("/die")
    deadline = time.monotonic() + 5             # the slot is written just after the close
    while worker.slot.read()["requests"] < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    after = worker.slot.read()
    assert after["requests"] == 4 and after["exceptions"] == 1 and after["state"] == IDLE
    assert after["tx"] > 0 and after["running_time"] > 0 and after["avg_rt"] > 0
    assert after["request"] == "GET /die"


def test_scoreboard_busy_during_request(worker):
    with socket.create_connection(("127.0.0.1", worker.uport)) as sock:
        sock.sendall(uwsgi_packet(uwsgi_vars("/slow", QUERY_STRING="t=1", REQUEST_URI="/slow?t=1"), b"", 5))
        deadline = time.monotonic() + 5
        while worker.slot.read()["state"] != BUSY and time.monotonic() < deadline:
            time.sleep(0.01)
        info = worker.slot.read()
        assert info["state"] == BUSY and info["request"] == "GET /slow?t=1"
        assert time.time() - 5 < info["req_start"] <= time.time()
        assert b"slept" in sock.recv(65536) + sock.recv(65536)


# -- lifecycle ------------------------------------------------------------------------------

def test_sighup_mid_request_completes_then_exits_0(worker):
    with socket.create_connection(("127.0.0.1", worker.uport), timeout=10) as sock:
        sock.sendall(uwsgi_packet(uwsgi_vars("/slow", QUERY_STRING="t=1"), b"", 5))
        while worker.slot.read()["state"] != BUSY:
            time.sleep(0.01)
        os.kill(worker.pid, signal.SIGHUP)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert parse_http_response(data).text == f"slept {worker.pid}"
    assert worker.wait() == 0


def test_sighup_when_idle_exits_0(worker):
    os.kill(worker.pid, signal.SIGHUP)
    assert worker.wait() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_stop_signals_exit_at_once(worker, sig):
    with socket.create_connection(("127.0.0.1", worker.uport), timeout=10) as sock:
        sock.sendall(uwsgi_packet(uwsgi_vars("/slow", QUERY_STRING="t=5"), b"", 5))
        while worker.slot.read()["state"] != BUSY:
            time.sleep(0.01)
        start = time.monotonic()
        os.kill(worker.pid, sig)
        assert worker.wait() == 30
        assert time.monotonic() - start < 2


def test_max_requests_exits_0(launch, test_app):
    worker = launch(test_app, max_requests=3, min_worker_lifetime=0)
    for _ in range(3):
        assert worker.uwsgi().status == 200
    assert worker.wait() == 0
    worker.wait_log(r"\.\.\.The work of process %d is done\. Seeya!" % worker.pid)


def test_harakiri_commit_and_cleanup_handlers(worker, tmp_path):
    marker = tmp_path / "cleaned"
    assert worker.uwsgi("/cleanup", QUERY_STRING=f"f={marker}").text == "ok"
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.read_text() == "cleaned /cleanup"
    assert worker.uwsgi("/harakiri").text == f"bye {worker.pid}"
    assert worker.wait() == 0
    worker.wait_log(r"psgix.harakiri.commit requested")


def test_disable_logging(launch, test_app):
    worker = launch(test_app, disable_logging=True)
    worker.uwsgi()
    worker.uwsgi("/die")
    worker.wait_log(r"boom at the app")
    assert "[pid: " not in worker.log()


def test_exits_when_master_is_not_the_parent(tmp_path, test_app):
    worker = PerlWorker(tmp_path, test_app, master_pid=1)
    try:
        assert worker.wait() == 30
        assert "master 1 is gone" in worker.log()
    finally:
        worker.stop()


def test_exec_worker_from_a_fork_sets_title_and_serves(launch, test_app):
    worker = launch(test_app, use_fork=True, worker_id=2, procname_prefix="pmtest ")
    assert worker.uwsgi().text == f"hello {worker.pid}"
    with open(f"/proc/{worker.pid}/cmdline", "rb") as fh:
        assert fh.read().split(b"\0")[0] == b"pmtest pymaster worker 2"


def test_app_load_failure_exits_22(tmp_path):
    bad = tmp_path / "bad.psgi"
    bad.write_text("die 'cannot start: no database';\n")
    worker = PerlWorker(tmp_path, bad)
    try:
        assert worker.wait() == 22
        log = worker.log()
        assert "failed loading PSGI app" in log and "cannot start: no database" in log
    finally:
        worker.stop()


def test_no_master_pid_means_no_parent_check(launch, test_app):
    worker = launch(test_app, master_pid=0)        # single-process mode: nobody to watch
    time.sleep(1.2)
    assert worker.uwsgi().text == f"hello {worker.pid}"


# -- HTTP keep-alive ------------------------------------------------------------------------

def _request(path="/hello", method="GET", version="1.1", headers=(), body=b"") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: t", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class HttpClient:
    """A raw HTTP connection that reads responses one by one, by their framing."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> HttpClient:
        self.sock.sendall(data)
        return self

    def response(self, head: bool = False):
        """(status, headers, body, framing); framing is 'length', 'chunked', 'eof' or 'none'
        (`head`: the answer to a HEAD request, which has no body whatever its headers say)."""
        status_line = self.file.readline()
        assert status_line, "connection closed before a response"
        status = int(status_line.split()[1])
        headers = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head or status in (204, 304):
            return status, headers, b"", "none"
        if "content-length" in headers:
            return status, headers, self.file.read(int(headers["content-length"])), "length"
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self.file.readline().split(b";")[0], 16):
                body += self.file.read(size)
                assert self.file.read(2) == b"\r\n"
            assert self.file.readline() == b"\r\n"
            return status, headers, body, "chunked"
        return status, headers, self.file.read(), "eof"

    def closed_by_server(self) -> bool:
        """True when the server closed the connection cleanly (EOF, nothing pending)."""
        try:
            return self.file.read(1) == b""
        except ConnectionResetError:
            return False

    def close(self):
        self.file.close()
        self.sock.close()


@pytest.fixture
def client():
    clients = []

    def connect(worker) -> HttpClient:
        clients.append(HttpClient(worker.hport))
        return clients[-1]

    yield connect
    for c in clients:
        c.close()


def test_keepalive_several_requests_on_one_connection(worker, client):
    conn = client(worker)
    for path in ("/hello", "/echo", "/hello"):
        body = b"payload" if path == "/echo" else b""
        status, headers, data, framing = conn.send(
            _request(path, "POST" if body else "GET", body=body)).response()
        assert status == 200 and framing == "length" and "connection" not in headers
        assert data == (body or f"hello {worker.pid}".encode())
    status, headers, data, _ = conn.send(_request(headers=["Connection: close"])).response()
    assert status == 200 and headers["connection"] == "close" and conn.closed_by_server()
    worker.wait_log(r"req: 4/4\] .* GET /hello")
    assert "internal error" not in worker.log()


def test_keepalive_http10_only_when_asked(worker, client):
    conn = client(worker)
    status, headers, data, _ = conn.send(
        _request(version="1.0", headers=["Connection: keep-alive"])).response()
    assert status == 200 and headers["connection"] == "keep-alive"
    status, headers, data, _ = conn.send(_request(version="1.0")).response()
    assert status == 200 and headers["connection"] == "close" and conn.closed_by_server()


def test_keepalive_streaming_is_chunked_for_11_and_closed_for_10(worker, client):
    conn = client(worker)
    status, headers, body, framing = conn.send(_request("/stream")).response()
    assert framing == "chunked" and body == b"chunk1\nchunk2\nchunk3\n"
    status, headers, body, framing = conn.send(_request("/getline")).response()
    assert framing == "chunked" and body == b"one two three"
    assert conn.send(_request("/nocontent")).response()[3] == "none"
    status, headers, body, framing = conn.send(_request("/hello", "HEAD")).response(head=True)
    assert status == 200 and headers["content-length"] == str(len(f"hello {worker.pid}"))
    assert conn.send(_request("/hello")).response()[2] == f"hello {worker.pid}".encode()
    conn = client(worker)
    status, headers, body, framing = conn.send(
        _request("/stream", version="1.0", headers=["Connection: keep-alive"])).response()
    assert framing == "eof" and headers["connection"] == "close"
    assert body == b"chunk1\nchunk2\nchunk3\n"


def test_pipelined_requests_answered_in_order(worker, client):
    conn = client(worker)
    conn.send(_request("/echo", "POST", body=b"first") + _request("/hello")
              + _request("/echo", "POST", body=b"x" * 70000)
              + _request("/stream") + _request("/hello", headers=["Connection: close"]))
    assert conn.response()[2] == b"first"
    assert conn.response()[2] == f"hello {worker.pid}".encode()
    assert conn.response()[2] == b"x" * 70000
    assert conn.response()[2:] == (b"chunk1\nchunk2\nchunk3\n", "chunked")
    status, headers, _, _ = conn.response()
    assert status == 200 and headers["connection"] == "close" and conn.closed_by_server()


def test_pipelined_chunked_request_body(worker, client):
    chunked = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
    conn = client(worker).send(chunked + _request("/hello"))
    assert conn.response()[2] == b"abc"
    assert conn.response()[2] == f"hello {worker.pid}".encode()


def test_keepalive_idle_timeout_closes(launch, test_app, client):
    worker = launch(test_app, http_keepalive=1)
    conn = client(worker)
    assert conn.send(_request()).response()[0] == 200
    start = time.monotonic()
    assert conn.closed_by_server()                   # blocks until the worker closes it
    assert 0.9 < time.monotonic() - start < 3.5
    assert worker.http()[0] == 200                   # and serves the next client


def test_keepalive_zero_disables(launch, test_app, client):
    worker = launch(test_app, http_keepalive=0)
    conn = client(worker)
    status, headers, _, _ = conn.send(_request()).response()
    assert headers["connection"] == "close" and conn.closed_by_server()


def test_idle_connections_do_not_block_other_clients(worker, client):
    idle = [client(worker) for _ in range(5)]
    for conn in idle:
        assert conn.send(_request()).response()[0] == 200
    assert worker.uwsgi().status == 200              # the listeners are still served
    assert worker.http()[0] == 200
    for conn in reversed(idle):                      # and so is every idle connection
        assert conn.send(_request()).response()[0] == 200


def test_max_requests_closes_the_keepalive_connection(launch, test_app, client):
    worker = launch(test_app, max_requests=2, min_worker_lifetime=0)
    conn = client(worker)
    assert "connection" not in conn.send(_request()).response()[1]
    assert conn.send(_request()).response()[1]["connection"] == "close"
    assert conn.closed_by_server()
    assert worker.wait() == 0


def test_sighup_while_keepalive_idle_exits_0_clean_close(worker, client):
    conn = client(worker)
    assert conn.send(_request()).response()[0] == 200
    os.kill(worker.pid, signal.SIGHUP)
    assert worker.wait() == 0
    assert conn.closed_by_server()


def test_sighup_answers_a_request_waiting_on_an_idle_connection(worker, client):
    waiting = client(worker)
    assert waiting.send(_request()).response()[0] == 200        # now idle, kept alive
    other = client(worker)
    assert other.send(_request()).response()[0] == 200
    busy = client(worker).send(_request("/slow?t=1"))
    while worker.slot.read()["state"] != BUSY:
        time.sleep(0.01)
    waiting.send(_request("/hello"))                            # arrives while the worker is busy
    time.sleep(0.1)
    os.kill(worker.pid, signal.SIGHUP)
    status, headers, body, _ = busy.response()
    assert body == f"slept {worker.pid}".encode() and headers["connection"] == "close"
    status, headers, body, _ = waiting.response()
    assert status == 200 and body == f"hello {worker.pid}".encode()
    assert headers["connection"] == "close" and waiting.closed_by_server()
    assert other.closed_by_server()                             # idle, nothing asked: closed
    assert worker.wait() == 0


def test_wrong_app_content_length_keeps_the_connection_framed(worker, client):
    conn = client(worker)
    status, headers, body, _ = conn.send(_request("/longbody")).response()
    assert headers["content-length"] == "3" and body == b"too"       # cut to what it said
    assert conn.send(_request()).response()[2] == f"hello {worker.pid}".encode()
    for path, body in (("/shortbody", b"short"), ("/shortstream", b"only this")):
        conn = client(worker).send(_request(path))
        raw = conn.file.read()                  # short: the server closes after the body
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n" + body)

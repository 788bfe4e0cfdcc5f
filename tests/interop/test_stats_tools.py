"""The stats figures mean what uWSGI's mean, and the tools written for uWSGI read them.

* The same requests through real uWSGI 2.0 and through pymaster give the same `tx` in the
  stats JSON (head + body of every answer) and the same `{N vars in M bytes}` on uwsgi
  sockets; on HTTP sockets both servers log the size of the vars block the app was given,
  and so does pymaster's Perl worker (the same figure as the Python worker's).
* uwsgitop (PyPI `uwsgitop`, under tmux) and the Prometheus exporter `uwsgi_exporter.py`
  (PyPI `uwsgi-exporter`) run against pymaster unchanged.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.client import LOOPBACK, free_port, uwsgi_packet, uwsgi_vars, wait_for_port
from tests.external import have, pymaster, uwsgi, uwsgi_plugin_available

APP = """\
import json

def application(env, start):
    cgi = {k: v for k, v in env.items() if isinstance(v, str) and not k.startswith(("wsgi.", "uwsgi."))}
    if env["PATH_INFO"] == "/env":
        body = json.dumps(cgi).encode()
    else:
        body = b"x" * int(env["QUERY_STRING"] or "10")
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("X-A", "b")])
    return [body]
"""

VARS_RE = re.compile(r"\{(\d+) vars in (\d+) bytes\} \[[^]]+\] GET (\S+)")

needs_uwsgi = pytest.mark.skipif(
    not uwsgi_plugin_available("python3"), reason="uWSGI with the python3 plugin not installed"
)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def http_once(port: int, path: str) -> bytes:
    """One HTTP/1.1 request (no Connection header, as curl sends it), read to its end."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: t/1\r\n"
                  f"Accept: */*\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        while len(body) < length:
            body += s.recv(65536)
    return head + b"\r\n\r\n" + body


def uwsgi_once(port: int, path: str) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(uwsgi_packet(uwsgi_vars(path, port=port, SCRIPT_NAME="")))
        return read_all(s)


def stats(port: int) -> dict:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        return json.loads(read_all(s))


def vars_block_size(env: dict) -> int:
    return sum(4 + len(k.encode("latin-1")) + len(v.encode("latin-1")) for k, v in env.items())


def exercise(server_cls, tmp: Path) -> dict:
    """Run the same requests through one server; what it counted and logged."""
    hport, uport, sport = free_port(), free_port(), free_port()
    args = ["--http-socket", f"127.0.0.1:{hport}", "-s", f"127.0.0.1:{uport}",
            "--wsgi-file", str(tmp / "app.py"), "-M", "-p", "1", "--stats", f"127.0.0.1:{sport}"]
    with server_cls(args) as srv:
        answers = []
        for n in (10, 200, 3000):
            answers.append(http_once(hport, f"/h?{n}"))
            answers.append(uwsgi_once(uport, f"/u?{n}"))
        env_raw = http_once(hport, "/env")
        time.sleep(0.3)
        doc = stats(sport)
        deadline = time.monotonic() + 10
        while len(VARS_RE.findall(srv.logtext())) < 7 and time.monotonic() < deadline:
            time.sleep(0.1)
        logged = {uri: (int(n), int(m)) for n, m, uri in VARS_RE.findall(srv.logtext())}
    return {"answers": answers, "tx": doc["workers"][0]["tx"], "logged": logged,
            "env_raw": env_raw, "requests": doc["workers"][0]["requests"],
            "env_http": json.loads(env_raw.partition(b"\r\n\r\n")[2])}


@needs_uwsgi
def test_tx_and_vars_mean_what_uwsgi_means(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    ours = exercise(pymaster, tmp_path)
    theirs = exercise(uwsgi, tmp_path)
    assert ours["answers"] == theirs["answers"], "the comparison needs byte-identical answers"
    assert ours["requests"] == theirs["requests"] == 7
    # tx: every byte of every answer, head and body (the /env answers differ: the vars do)
    for result in (ours, theirs):
        assert result["tx"] == sum(map(len, result["answers"])) + len(result["env_raw"])
    assert ours["tx"] - len(ours["env_raw"]) == theirs["tx"] - len(theirs["env_raw"])
    # uwsgi sockets: the packet's own vars block, identical packets give identical figures
    for n in (10, 200, 3000):
        assert ours["logged"][f"/u?{n}"] == theirs["logged"][f"/u?{n}"]
    # HTTP sockets: the size the vars block the app was given takes as a uwsgi packet
    for result in (ours, theirs):
        env = result["env_http"]
        assert result["logged"]["/env"] == (2 * len(env), vars_block_size(env)), result["logged"]


def test_uwsgitop_shows_pymaster(tmp_path):
    if not have("tmux"):
        pytest.skip("tmux not installed")
    uwsgitop = Path(sys.executable).with_name("uwsgitop")
    if not uwsgitop.exists():
        pytest.skip("uwsgitop (test extra) not installed")
    (tmp_path / "app.py").write_text(APP)
    hport, sport = free_port(), free_port()
    args = ["--http-socket", f"127.0.0.1:{hport}", "--wsgi-file", str(tmp_path / "app.py"),
            "-M", "-p", "2", "--stats", f"127.0.0.1:{sport}", "--stats-http"]
    tmux = ["tmux", "-L", f"pymaster-{uuid.uuid4().hex[:12]}"]
    with pymaster(args) as srv:
        sent = sum(len(http_once(hport, "/h?10")) for _ in range(6))  # under 1 K: shown exactly
        time.sleep(0.3)
        doc = stats_http(sport)
        subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "20",
                        f"{uwsgitop} http://127.0.0.1:{sport}", ";",
                        "set-option", "-g", "window-size", "manual", ";",
                        "resize-window", "-x", "160", "-y", "20"], check=True)
        try:
            screen = ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "0"],
                                        capture_output=True, text=True).stdout
                if "WID" in screen:
                    break
                time.sleep(0.2)
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
        assert "req: 6 - RPS" in screen and f"tx: {sent}" in screen, screen
        assert f"masterpid: {srv.pid}" in screen, screen
        rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^ (\d)\s+\S+\s+(\d+).*$", screen, re.M)}
        assert sorted(rows) == [1, 2], screen
        for w in doc["workers"]:
            assert str(w["pid"]) in rows[w["id"]] and "idle" in rows[w["id"]]


def stats_http(port: int) -> dict:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return json.loads(read_all(s).partition(b"\r\n\r\n")[2])


def test_uwsgi_exporter_reads_pymaster(tmp_path):
    exporter = Path(sys.executable).with_name("uwsgi_exporter.py")
    if not exporter.exists():
        pytest.skip("uwsgi-exporter (test extra) not installed")
    (tmp_path / "app.py").write_text(APP)
    hport, sport, eport = free_port(), free_port(), free_port()
    args = ["--http-socket", f"127.0.0.1:{hport}", "--wsgi-file", str(tmp_path / "app.py"),
            "-M", "-p", "2", "--stats", f"127.0.0.1:{sport}", "--stats-http"]
    with pymaster(args):
        sent = sum(len(http_once(hport, "/h?50")) for _ in range(9))
        time.sleep(0.3)
        proc = subprocess.Popen([sys.executable, str(exporter), "--stats_addr",
                                 f"http://127.0.0.1:{sport}", "-p", str(eport),
                                 "--bind_address", "127.0.0.1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(eport, 15, proc)
            with socket.create_connection((LOOPBACK, eport), timeout=10) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                text = read_all(s).partition(b"\r\n\r\n")[2].decode()
        finally:
            proc.terminate()
            proc.wait(10)
        found = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                found.setdefault(s.name, []).append((s.labels, s.value))
        assert sum(v for _, v in found["uwsgi_workers_requests"]) == 9
        assert sum(v for _, v in found["uwsgi_workers_tx"]) == sent
        assert sorted(lab["worker"] for lab, _ in found["uwsgi_workers_requests"]) == ["1", "2"]
        assert found["uwsgi_listen_queue"][0][1] == 0



STREAM_WSGI = """\
def application(env, start):
    start("200 OK", [("Content-Type", "text/plain")])
    n = int(env["QUERY_STRING"] or "10")
    return [b"a" * (n // 2), b"b" * (n - n // 2)]
"""

STREAM_PSGI = """\
my $app = sub {
    my $env = shift;
    my $n = $env->{QUERY_STRING} || 10;
    return sub {
        my $w = $_[0]->([200, ['Content-Type' => 'text/plain']]);
        $w->write('a' x int($n / 2));
        $w->write('b' x ($n - int($n / 2)));
        $w->close;
    };
};
"""


STREAM_ASGI = """\
async def application(scope, receive, send):
    if scope["type"] != "http":
        return
    n = int(scope["query_string"] or b"10")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"a" * (n // 2), "more_body": True})
    await send({"type": "http.response.body", "body": b"b" * (n - n // 2)})
"""


@pytest.mark.parametrize("worker", ["wsgi", "psgi", "asgi"])
def test_tx_is_every_byte_sent_for_every_worker_kind(tmp_path, worker):
    """Streamed (unframed) answers of Python, Perl and ASGI workers, on both socket kinds."""
    from tests.conftest import app_args

    if worker == "psgi" and not have("plackup"):
        pytest.skip("plackup (libplack-perl) missing")
    hport, uport, sport = free_port(), free_port(), free_port()
    if worker == "asgi":
        (tmp_path / "stream_asgi.py").write_text(STREAM_ASGI)
        app = ["--pythonpath", str(tmp_path), "--asgi", "stream_asgi:application"]
    else:
        app = app_args(tmp_path, worker, STREAM_WSGI, STREAM_PSGI)
    plugins = ["--plugins", "psgi"] if worker == "psgi" else []
    args = [*plugins, "--http-socket", f"127.0.0.1:{hport}", "-s", f"127.0.0.1:{uport}",
            *app, "-M", "-p", "1", "--stats", f"127.0.0.1:{sport}"]
    with pymaster(args):
        received = 0
        for n in (10, 999, 70000):
            with socket.create_connection((LOOPBACK, hport), timeout=10) as s:
                s.sendall(f"GET /h?{n} HTTP/1.0\r\n\r\n".encode())
                data = read_all(s)
            assert data.endswith(b"b" * (n - n // 2))
            received += len(data)
            data = uwsgi_once(uport, f"/u?{n}")
            assert data.endswith(b"b" * (n - n // 2))
            received += len(data)
        time.sleep(0.3)
        worker = stats(sport)["workers"][0]
    assert worker["requests"] == 6 and worker["tx"] == received


ENV_PSGI = r"""
use JSON::PP;
my $app = sub {
    my $env = shift;
    my %cgi = map { $_ => '' . ($env->{$_} // '') } grep { !/\./ } keys %$env;
    my $body = JSON::PP->new->canonical->latin1->encode(\%cgi);
    return [200, ['Content-Type' => 'text/plain', 'Content-Length' => length $body], [$body]];
};
"""


def test_psgi_http_vars_figure_is_the_python_workers(tmp_path):
    """On HTTP sockets the Perl worker logs `{N vars in M bytes}` as the Python worker does:
    the uwsgi vars block of the CGI vars its app was given, for the same request."""
    if not have("plackup"):
        pytest.skip("plackup (libplack-perl) missing")
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.psgi").write_text(ENV_PSGI)
    seen = {}
    for worker, app in (("wsgi", ["--wsgi-file", str(tmp_path / "app.py")]),
                        ("psgi", ["--plugins", "psgi", "--psgi", str(tmp_path / "app.psgi")])):
        port = free_port()
        with pymaster(["--http-socket", f"127.0.0.1:{port}", *app, "-M", "-p", "1"]) as srv:
            raw = http_once(port, "/env?q=%41b&x")
            deadline = time.monotonic() + 10
            while not VARS_RE.findall(srv.logtext()) and time.monotonic() < deadline:
                time.sleep(0.1)
            (n, m, uri), = VARS_RE.findall(srv.logtext())
        assert uri == "/env?q=%41b&x"
        env = json.loads(raw.partition(b"\r\n\r\n")[2].decode("latin-1"))
        assert (int(n), int(m)) == (2 * len(env), vars_block_size(env)), (worker, env)
        seen[worker] = (env, int(m))
    (py_env, py_size), (pl_env, pl_size) = seen["wsgi"], seen["psgi"]
    # the same vars, but for the ports (the client's, each server's own)
    ports = ("REMOTE_PORT", "SERVER_PORT", "HTTP_HOST")
    assert {k: v for k, v in py_env.items() if k not in ports} == \
        {k: v for k, v in pl_env.items() if k not in ports}
    assert py_env.keys() == pl_env.keys()
    assert py_size - sum(len(py_env[k]) for k in ports) == pl_size - sum(len(pl_env[k]) for k in ports)

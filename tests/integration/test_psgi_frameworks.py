"""Perl frameworks under pymaster's Perl workers, each app answering the same as under
Starman: Catalyst, Dancer2 and Mojolicious apps (tests/apps/perl/) over HTTP
(--http-socket) and behind nginx (uwsgi_pass): routes, a form POST, a ~1 MB multipart
upload, a streamed response; Catalyst's WebSocket on $c->req->io_fh (psgix.io) over HTTP.
Catalyst puts an encoding layer on STDERR: 100 requests with no worker death, and a
Catalyst app with a missing module shows Perl's own `Can't locate ...`."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests import websocket_client as ws
from tests.external import LOOPBACK, free_port, have, nginx, pymaster, starman
from tests.integration.test_psgi_master import wait_idle_pids
from tests.pm import Pymaster, wait_port

APPS = Path(__file__).resolve().parents[1] / "apps" / "perl"


def perl_has(module: str) -> bool:
    return subprocess.run(["perl", f"-M{module}", "-e1"], capture_output=True).returncode == 0


FRAMEWORKS = {  # name: (app, the module it needs, Debian package)
    "catalyst": (APPS / "catalyst.psgi", "Catalyst", "libcatalyst-perl"),
    "dancer2": (APPS / "dancer2.psgi", "Dancer2", "libdancer2-perl"),
    "mojo": (APPS / "mojo.psgi", "Mojolicious", "libmojolicious-perl"),
}

pytestmark = [
    pytest.mark.skipif(not shutil.which("plackup"), reason="plackup (libplack-perl) missing"),
    pytest.mark.skipif(not have("starman"), reason="starman missing"),
]

UPLOAD = os.urandom(1_000_000)


def multipart(fields: dict[str, str], name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def exchanges(port: int) -> dict[str, tuple[int, bytes, dict[str, str]]]:
    """The requests every framework app answers, over one keep-alive connection each."""
    body, ctype = multipart({"note": "hi there"}, "file", "up.bin", UPLOAD)
    requests = {
        "index": ("GET", "/", None, {}),
        "route": ("GET", "/hello/bob", None, {}),
        "form": (
            "POST",
            "/form",
            b"a=1&b=x+y&c=%C3%A9",
            {"Content-Type": "application/x-www-form-urlencoded"},
        ),
        "upload": ("POST", "/upload", body, {"Content-Type": ctype}),
        "stream": ("GET", "/stream", None, {}),
        "missing": ("GET", "/no/such/page", None, {}),
    }
    out = {}
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        for name, (method, path, data, headers) in requests.items():
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            out[name] = (resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    finally:
        conn.close()
    return out


# Mojo::Server::PSGI sends its own `Transfer-Encoding: chunked` and chunk-encoded body;
# Starman (0.4016) chunks it a second time on HTTP/1.1 (pymaster passes it through as is)
STARMAN_DOUBLE_CHUNKS = {("mojo", "stream")}


def check_answers(name: str, got: dict, starman: bool = False) -> None:
    md5 = hashlib.md5(UPLOAD).hexdigest()
    index = {
        "catalyst": b"catalyst index\n",
        "dancer2": b"dancer2 index\n",
        "mojo": b"mojo index\n",
    }
    assert got["index"][:2] == (200, index[name])
    assert got["route"][:2] == (200, b"hello bob\n")
    assert got["form"][:2] == (200, "a=1\nb=x y\nc=é\n".encode())
    assert got["upload"][:2] == (200, f"up.bin 1000000 {md5} hi there\n".encode())
    if not (starman and (name, "stream") in STARMAN_DOUBLE_CHUNKS):
        assert got["stream"][:2] == (200, b"".join(b"line %d\n" % i for i in range(1, 6)))
    assert got["missing"][0] == 404


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def framework(request):
    name = request.param
    app, module, package = FRAMEWORKS[name]
    if not perl_has(module):
        pytest.skip(f"{module} ({package}) missing")
    http_port, uwsgi_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        pm = stack.enter_context(
            pymaster(
                [
                    "--http-socket",
                    f"{LOOPBACK}:{http_port}",
                    "-s",
                    f"{LOOPBACK}:{uwsgi_port}",
                    "--psgi",
                    str(app),
                    "-M",
                    "-p",
                    "2",
                ],
                timeout=60,
            )
        )
        front = stack.enter_context(nginx(f"{LOOPBACK}:{uwsgi_port}", "uwsgi_pass"))
        sm = stack.enter_context(starman(app, workers=2, timeout=60))
        yield name, pm, http_port, front, sm


def test_framework_over_http_and_nginx_as_under_starman(framework):
    name, pm, http_port, front, sm = framework
    starman_answers = exchanges(sm.port)
    check_answers(name, starman_answers, starman=True)
    for port in (http_port, front.port):
        ours = exchanges(port)
        check_answers(name, ours)
        for key, (status, body, _) in ours.items():
            if key == "missing" or (name, key) in STARMAN_DOUBLE_CHUNKS:
                assert status == starman_answers[key][0]  # error pages name the address
            else:
                assert (status, body) == starman_answers[key][:2], key
    # streamed over HTTP/1.1 straight to pymaster: chunked, as Starman does
    direct = exchanges(http_port)
    assert direct["stream"][2].get("transfer-encoding") == "chunked"
    log = pm.logtext()
    assert "pymaster-perl error" not in log and "internal error" not in log, log[-3000:]


def test_catalyst_websocket_on_io_fh_as_under_starman(framework):
    name, pm, http_port, _, sm = framework
    if name != "catalyst":
        pytest.skip(
            "only Catalyst does a blocking WebSocket under PSGI ($c->req->io_fh); "
            "Dancer2's plugin needs Twiggy, Mojolicious none under PSGI"
        )
    for port in (http_port, sm.port):
        s = ws.session(port, "/ws")
        assert s.head.startswith(b"HTTP/1.1 101 ") and s.accept_ok, s.head
        assert (s.echo, s.close, s.trailing) == (ws.text_frame(b"hello ws"), ws.CLOSE_1000, b"")
        assert s.eof
    assert "never called the responder" not in pm.logtext()


@pytest.mark.skipif(not perl_has("Catalyst"), reason="Catalyst (libcatalyst-perl) missing")
def test_catalyst_100_requests_no_worker_death(tmp_path):
    """Catalyst's :encoding(UTF-8) layer on STDERR and a wide character logged on every
    request (the index action): the workers stay the same processes."""
    port = free_port()
    with Pymaster(
        ["--http-socket", f"{LOOPBACK}:{port}", "--psgi", APPS / "catalyst.psgi", "-M", "-p", "2"],
        tmp_path,
    ) as pm:
        wait_port(port, 60)
        before = sorted(wait_idle_pids(pm, 2, timeout=60))
        for _ in range(100):
            conn = http.client.HTTPConnection(LOOPBACK, port, timeout=20)
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"catalyst index\n")
            conn.close()
        assert sorted(wait_idle_pids(pm, 2)) == before
        log = pm.log()
        assert "syswrite" not in log and "respawn" not in log.lower(), log[-3000:]
        assert log.count("café ☺ logged through Catalyst") == 100


@pytest.mark.skipif(not perl_has("Catalyst"), reason="Catalyst (libcatalyst-perl) missing")
def test_catalyst_missing_module_shows_the_real_error(tmp_path):
    proc = subprocess.run(
        [
            *pymaster_cmd(),
            "--http-socket",
            f"{LOOPBACK}:{free_port()}",
            "--psgi",
            str(APPS / "catalyst_broken.psgi"),
            "-M",
            "-p",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Pymaster::Test::No::Such::Module" in out, out
    assert "needs the Perl module Pymaster::Test::No::Such::Module" in out, out  # preflight
    assert "syswrite" not in out, out
    # a worker's own load (what a reload runs): the loader's line carries Perl's error
    from pymaster.workers.psgi.bridge import PERL_DIR

    worker = subprocess.run(
        [
            "plackup",
            "-I",
            PERL_DIR,
            "-E",
            "deployment",
            "-s",
            "Pymaster",
            "-L",
            "Pymaster",
            str(APPS / "catalyst_broken.psgi"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYMASTER_PSGI="catalyst_broken.psgi", PYMASTER_WORKER_ID="1"),
    )
    assert worker.returncode == 22, worker.stderr
    assert re.search(
        r"\*\*\* failed loading PSGI app catalyst_broken.psgi in worker 1 \(pid: \d+\): "
        r"Error while loading .*catalyst_broken.psgi: Can't locate Pymaster/Test/No/Such/Module.pm in @INC",
        worker.stderr,
    ), worker.stderr


def pymaster_cmd() -> list[str]:
    from tests.external import pymaster_command

    return pymaster_command()

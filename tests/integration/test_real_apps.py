"""Real apps served as their users would serve them, each with its own framework's idioms:

- a Django project made by `django-admin startproject`, migrated on sqlite, with a superuser
  from `createsuperuser --noinput`, served with the INI of Django's "How to use Django with
  uWSGI" page (chdir, module, env DJANGO_SETTINGS_MODULE, master, pidfile, processes,
  harakiri, max-requests, vacuum, home) plus `threads = 4`;
- a Flask app (tests/apps/flask_checks.py) served the same way.

Each is reached over `http-socket` directly, and over `socket` (the uwsgi protocol) behind
a real nginx `uwsgi_pass`, with the checks a user would make: the Django admin login with
its CSRF token and session cookie, a 5 MB multipart upload answered with its sha256, a
streamed response whose first part arrives before the last is made (StreamingHttpResponse;
Flask's stream_with_context), a 20 MB file (FileResponse; send_file), and 4 concurrent 1 s
requests under `threads = 4` finishing in about the time of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.cookies
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import external
from tests.pm import Pymaster, free_port, wait_port

APPS = Path(__file__).resolve().parents[1] / "apps"
VENV = Path(sys.prefix)  # the venv the tests run in: Django and Flask are installed there
BLOB_SIZE = 20 * 2**20
UPLOAD_SIZE = 5 * 2**20
ADMIN = {"DJANGO_SUPERUSER_USERNAME": "admin", "DJANGO_SUPERUSER_PASSWORD": "s3cret-Pa55",
         "DJANGO_SUPERUSER_EMAIL": "admin@example.com"}

# Django's "How to use Django with uWSGI" INI: its options, with a test's paths and port
# (`daemonize` left out: the test reads the log), plus `threads = 4`.
DJANGO_INI = """\
[uwsgi]
chdir = {root}
module = mysite.wsgi:application
env = DJANGO_SETTINGS_MODULE=mysite.settings
env = CHECK_BLOB={blob}
env = CHECK_TRUSTED_ORIGINS={origins}
master = True
pidfile = {tmp}/project-master.pid
{socket} = 127.0.0.1:{port}
processes = 1
threads = 4
harakiri = 20
max-requests = 5000
vacuum = True
home = {venv}
"""

# Flask's uWSGI page runs `uwsgi --http-socket ... --master -p N -w app:app`: the same as an INI.
FLASK_INI = """\
[uwsgi]
chdir = {root}
module = flask_checks:app
env = CHECK_BLOB={blob}
master = true
pidfile = {tmp}/flask-master.pid
{socket} = 127.0.0.1:{port}
processes = 1
threads = 4
harakiri = 20
vacuum = true
virtualenv = {venv}
"""


def run(cmd, cwd, env=None):
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    path = tmp_path_factory.mktemp("blob") / "blob.bin"
    data = os.urandom(BLOB_SIZE)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def django_project(tmp_path_factory):
    """`django-admin startproject mysite`, the check views added to its urls, `migrate`,
    `createsuperuser --noinput`: what a user has before writing the uWSGI INI."""
    root = tmp_path_factory.mktemp("django")
    admin = shutil.which("django-admin", path=str(VENV / "bin")) or "django-admin"
    run([admin, "startproject", "mysite", root], cwd=root)
    shutil.copy(APPS / "django_checks.py", root / "mysite" / "checks.py")
    with open(root / "mysite" / "urls.py", "a") as urls:
        urls.write("\nfrom mysite.checks import urlpatterns as check_urls\n"
                   "urlpatterns += check_urls\n")
    # Behind nginx, Debian's uwsgi_params pass `HTTP_HOST $host` (no port): a site on a port
    # other than 80 must trust its origin, as Django's CSRF docs say.
    with open(root / "mysite" / "settings.py", "a") as settings:
        settings.write("\nimport os\n"
                       "CSRF_TRUSTED_ORIGINS = os.environ.get('CHECK_TRUSTED_ORIGINS', '').split()\n")
    run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=root)
    run([sys.executable, "manage.py", "createsuperuser", "--noinput"], cwd=root, env=ADMIN)
    return root


@pytest.fixture(scope="module")
def flask_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flask")
    shutil.copy(APPS / "flask_checks.py", root / "flask_checks.py")
    return root


@dataclass
class Site:
    app: str
    front: str
    port: int
    pm: Pymaster
    pidfile: Path
    blob_sha: str

    def clean_log(self) -> None:
        log = self.pm.log()
        assert "Traceback" not in log, log[-3000:]


@contextlib.contextmanager
def serve(app, front, root, blob, tmp):
    """pymaster with the app's INI, on http-socket, or on socket behind nginx uwsgi_pass."""
    port, web_port = free_port(), free_port()
    template, pidname = (DJANGO_INI, "project") if app == "django" else (FLASK_INI, "flask")
    ini = tmp / f"{app}-{front}.ini"
    ini.write_text(template.format(root=root, blob=blob[0], tmp=tmp, port=port, venv=VENV,
                                   origins=f"http://127.0.0.1:{web_port}" if front == "nginx" else "",
                                   socket="http-socket" if front == "http" else "socket"))
    with Pymaster(["--ini", ini], tmp, cwd=tmp) as pm:
        wait_port(port, timeout=30)
        pm.wait_workers(1, timeout=30)
        site = Site(app, front, port, pm, tmp / f"{pidname}-master.pid", blob[1])
        if front == "http":
            yield site
            return
        with external.nginx(f"127.0.0.1:{port}", "uwsgi_pass", port=web_port,
                            directives=["client_max_body_size 50m;"]) as web:
            site.port = web.port
            yield site


@pytest.fixture(scope="module", params=[("django", "http"), ("django", "nginx"),
                                        ("flask", "http"), ("flask", "nginx")],
                ids=lambda p: "-".join(p))
def site(request, blob, tmp_path_factory):
    app, front = request.param
    root = (request.getfixturevalue("django_project") if app == "django"
            else request.getfixturevalue("flask_root"))
    tmp = tmp_path_factory.mktemp(f"{app}-{front}")
    with serve(app, front, root, blob, tmp) as running:
        yield running
    assert not running.pidfile.exists(), "vacuum = true: the pidfile is removed at exit"


# --------------------------------------------------------------------------- a browser

@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Browser:
    """Keeps cookies and sends what a browser sends for a form (Origin, Referer)."""

    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=b"", headers=None, timeout=60.0) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            answer = Answer(resp.status, resp.msg, resp.read())
        finally:
            conn.close()
        for line in answer.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                self.cookies[name] = morsel.value
        return answer

    def get(self, path, **kw) -> Answer:
        return self.request("GET", path, **kw)

    def post_form(self, path, fields, referer) -> Answer:
        return self.request("POST", path, urllib.parse.urlencode(fields).encode(), {
            "Content-Type": "application/x-www-form-urlencoded",
            "Origin": self.origin, "Referer": self.origin + referer})


def multipart(name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----pymaster" + hashlib.sha1(data[:64]).hexdigest()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n")
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- checks

def test_django_admin_login_with_csrf(site):
    if site.app != "django":
        pytest.skip("the admin is Django's")
    browser = Browser(site.port)
    page = browser.get("/admin/login/?next=/admin/")
    assert page.status == 200, page.text[:500]
    assert "csrftoken" in browser.cookies
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token, page.text[:2000]
    # without the token, Django's CSRF protection answers 403
    refused = Browser(site.port, dict(browser.cookies)).post_form(
        "/admin/login/?next=/admin/", {"username": "admin", "password": "x"}, "/admin/login/")
    assert refused.status == 403
    done = browser.post_form("/admin/login/?next=/admin/", {
        "csrfmiddlewaretoken": token.group(1), "username": ADMIN["DJANGO_SUPERUSER_USERNAME"],
        "password": ADMIN["DJANGO_SUPERUSER_PASSWORD"], "next": "/admin/"}, "/admin/login/")
    assert done.status == 302, done.text[:2000]
    assert done.headers["Location"] == "/admin/"
    assert "sessionid" in browser.cookies
    index = browser.get("/admin/")
    assert index.status == 200
    assert "Site administration" in index.text
    assert "admin" in index.text and "Log out" in index.text
    site.clean_log()


def test_upload_of_5_mb_is_answered_with_its_sha256(site):
    data = os.urandom(UPLOAD_SIZE)
    body, ctype = multipart("file", "upload.bin", data)
    answer = Browser(site.port).request("POST", "/upload/", body, {"Content-Type": ctype})
    assert answer.status == 200, answer.text[:2000]
    assert answer.text == f"{UPLOAD_SIZE} {hashlib.sha256(data).hexdigest()}"
    site.clean_log()


def test_a_streamed_response_arrives_part_by_part(site):
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
    try:
        started = time.monotonic()
        conn.request("GET", "/stream/?name=pm")
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.readline()
        first_at = time.monotonic() - started
        rest = resp.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first + rest == b"".join(f"part {i} of pm\n".encode() for i in range(5))
    assert "content-length" not in {k.lower() for k in resp.headers}
    # the app sleeps 0.3 s after each part: the first one comes before the others are made
    assert total >= 1.2
    assert first_at < total - 0.6, f"first part after {first_at:.2f} s of {total:.2f} s"
    site.clean_log()


def test_a_20_mb_file_response(site):
    answer = Browser(site.port).get("/blob/")
    assert answer.status == 200
    assert int(answer.headers["Content-Length"]) == BLOB_SIZE
    assert answer.headers["Content-Disposition"].startswith("attachment;")
    assert len(answer.body) == BLOB_SIZE
    assert hashlib.sha256(answer.body).hexdigest() == site.blob_sha
    site.clean_log()


def test_four_slow_requests_under_threads_4_take_the_time_of_one(site):
    browser = Browser(site.port)
    assert browser.get("/slow/").text == "slept"  # the app is loaded, the threads are up
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: Browser(site.port).get("/slow/"), range(4)))
    elapsed = time.monotonic() - started
    assert [a.text for a in answers] == ["slept"] * 4
    # one worker process: without its 4 threads, this takes 4 s
    assert elapsed < 2.5, f"4 x 1 s requests on 4 threads took {elapsed:.2f} s"
    site.clean_log()


def test_the_ini_is_taken_whole(site):
    """Every option of the INI is one pymaster knows and applies: none ignored or inert,
    the pidfile holds the master's pid, the mode is threaded."""
    log = site.pm.log()
    assert site.pidfile.read_text().strip() == str(site.pm.pid)
    assert "*** Operational MODE: threaded ***" in log
    assert "cores: 4)" in log
    for word in ("unknown", "ignored", "inert", "no effect"):
        assert word not in log.lower(), log
    site.clean_log()

"""`--mount` + `--manage-script-name` (+ `--no-default-app`) over a real instance, against the
table uWSGI 2.0.21 was observed to follow (reference 5.7), for both an arXiv-style INI (mounts
only, no default app) and a main app with a mount."""

from __future__ import annotations

import pytest

from tests.client import parse_http_response, uwsgi_get, uwsgi_request, uwsgi_vars
from tests.pm import Pymaster, free_port, wait_port

APP = '''
def application(environ, start_response):
    body = ("%s|%s|%s" % (NAME, environ.get("SCRIPT_NAME"), environ.get("PATH_INFO"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


def _apps(tmp_path, *names):
    for name in names:
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n" + APP)


def _get(port, path, **extra):
    return parse_http_response(uwsgi_get(port, path, **extra))


@pytest.mark.parametrize("path, expected", [
    ("/prefix/x", "mod|/prefix|/x"),
    ("/prefix", "mod|/prefix|"),
    ("/prefixfoo", "main||/prefixfoo"),  # not on a '/' boundary: the default app
    ("/other", "main||/other"),
])
def test_manage_script_name_as_uwsgi(tmp_path, path, expected):
    _apps(tmp_path, "main", "mod")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "main.py",
                   "--mount", f"/prefix={tmp_path / 'mod.py'}", "--manage-script-name"],
                  tmp_path) as pm:
        wait_port(port)
        assert _get(port, path).text == expected
        log = pm.log()
        assert f"mounting {tmp_path / 'mod.py'} on /prefix" in log
        assert "WSGI app 0 (mountpoint='') ready" in log
        assert "WSGI app 1 (mountpoint='/prefix') ready" in log


def test_without_manage_script_name_the_frontend_sends_script_name(tmp_path):
    _apps(tmp_path, "main", "mod")
    port = free_port()
    with Pymaster(["-s", f"127.0.0.1:{port}", "--wsgi-file", tmp_path / "main.py",
                   "--mount", f"/prefix={tmp_path / 'mod.py'}"], tmp_path):
        wait_port(port)
        assert _get(port, "/prefix/x").text == "main||/prefix/x"
        env = uwsgi_vars("/prefix/x", port=port, SCRIPT_NAME="/prefix", PATH_INFO="/x")
        assert parse_http_response(uwsgi_request(port, env)).text == "mod|/prefix|/x"
        env = uwsgi_vars("/x", port=port, UWSGI_APPID="/prefix")
        assert parse_http_response(uwsgi_request(port, env)).text.startswith("mod|")


def test_arxiv_style_ini_longest_prefix_and_no_default_app(tmp_path):
    _apps(tmp_path, "about", "help", "helpdesk")
    port = free_port()
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(f"""[uwsgi]
http-socket = 127.0.0.1:{port}
chdir = {tmp_path}
callable = application
master = true
manage-script-name = true
no-default-app = true
mount = /about={tmp_path}/about.py
mount = /help={tmp_path}/help.py
mount = /help/desk/={tmp_path}/helpdesk.py
""")
    with Pymaster(["--ini", ini], tmp_path) as pm:
        wait_port(port)
        import http.client
        def get(path):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        assert get("/about/team") == (200, "about|/about|/team")
        assert get("/help/x") == (200, "help|/help|/x")
        assert get("/help/desk/ticket") == (200, "helpdesk|/help/desk/|ticket")
        assert get("/nowhere")[0] == 500
        pm.wait_log(r"--- no python application found, check your startup logs for errors ---")
        assert "WSGI app 0 (mountpoint='/about') ready" in pm.log()
        assert "unknown option" not in pm.log()


def test_a_bad_mount_is_one_clear_error(tmp_path):
    pm = Pymaster(["-s", f"127.0.0.1:{free_port()}", "--mount", "/nothing"], tmp_path)
    assert pm.wait(10) == 1
    assert "invalid --mount '/nothing': expected MOUNTPOINT=APP (e.g. /app=app.py)" in pm.log()
    pm.stop()
